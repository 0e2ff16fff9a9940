"""IA3 biases end to end (issue 8): a PEFT IA3 file scales the layer's bias on the
output axis exactly as PEFT's own merge does, in the merge patcher AND in bypass;
a LyCORIS IA3 file leaves the bias alone, as LyCORIS' merge does.

Files are written by the libraries themselves (``fixtures.peft_tuner_files``,
``fixtures.lycoris_files``); the oracle is their merge.
"""
from __future__ import annotations

import copy

import pytest
import torch

from fixtures.lycoris_files import Plain, relative_error, standalone_file
from fixtures.peft_tuner_files import Small, peft_file
from lora_core.bypass import install_bypass
from lora_core.formats import parse_file
from lora_core.patcher import MergePatcher
from lora_core.plan import build_plan
from lora_core.resolve import resolve_targets

TOL = 1e-5


@pytest.fixture(scope="module")
def peft_ia3(tmp_path_factory):
    return peft_file("ia3", str(tmp_path_factory.mktemp("peft_ia3")))


def _model(cls, originals):
    torch.manual_seed(0)
    m = cls()
    with torch.no_grad():
        for name, (w, b) in originals.items():
            getattr(m, name).weight.copy_(w)
            getattr(m, name).bias.copy_(b)
    return m


def _plan(path, model, strength=1.0):
    report = resolve_targets(parse_file(path), {k: tuple(v.shape) for k, v in model.state_dict().items()})
    assert report.matched and not report.unmatched
    return build_plan([(report, strength, None)])


def test_peft_ia3_merge_scales_bias_like_peft(peft_ia3):
    model = _model(Small, peft_ia3.originals)
    plan = _plan(peft_ia3.path, model)
    MergePatcher(dict(model.named_parameters())).apply(plan)
    for name, (wm, bm) in peft_ia3.merged.items():
        mod = getattr(model, name)
        assert relative_error(mod.weight.detach(), wm) <= TOL, name
        assert relative_error(mod.bias.detach(), bm) <= TOL, name
    # fc1 and conv scale outputs (bias scaled); fc2 is a feed-forward input scale (bias kept)
    assert not torch.allclose(peft_ia3.merged["fc1"][1], peft_ia3.originals["fc1"][1])
    assert torch.equal(peft_ia3.merged["fc2"][1], peft_ia3.originals["fc2"][1])


def test_peft_ia3_bypass_equals_peft_merge(peft_ia3):
    s = 0.6
    model = _model(Small, peft_ia3.originals)
    handle = install_bypass(model, _plan(peft_ia3.path, model, 1.0), strengths={0: s})
    merged = _model(Small, peft_ia3.originals)
    with torch.no_grad():
        for name, (w0, b0) in peft_ia3.originals.items():  # PEFT's merge at strength s, by linearity
            wm, bm = peft_ia3.merged[name]
            getattr(merged, name).weight.copy_(w0 + s * (wm - w0))
            getattr(merged, name).bias.copy_(b0 + s * (bm - b0))
    xs = {"fc1": torch.randn(4, 32), "fc2": torch.randn(4, 64), "conv": torch.randn(2, 8, 5, 5)}
    with torch.no_grad():
        for name, x in xs.items():
            want, got = getattr(merged, name)(x), getattr(model, name)(x)
            assert relative_error(got, want) <= TOL, name
    handle.remove()


def test_peft_ia3_peft_forward_is_the_oracle_too(peft_ia3):
    """PEFT's unmerged forward (which scales the whole output) agrees with our bypass."""
    model = _model(Small, peft_ia3.originals)
    install_bypass(model, _plan(peft_ia3.path, model))
    peft_model = copy.deepcopy(peft_ia3.model)
    x = torch.randn(3, 32)
    with torch.no_grad():
        want = peft_model.base_model.model.fc1(x)
        got = model.fc1(x)
    assert relative_error(got, want) <= TOL


def test_lycoris_ia3_keeps_the_bias(tmp_path):
    gen = standalone_file("ia3", str(tmp_path))
    torch.manual_seed(0)
    model = Plain()
    targets = {"fc": "lycoris_fc", "conv": "lycoris_conv", "pw": "lycoris_pw"}
    with torch.no_grad():
        for child, lora_name in targets.items():
            w0, b0 = gen.originals[lora_name]
            getattr(model, child).weight.copy_(w0)
            getattr(model, child).bias.copy_(b0)
    plan = _plan(gen.path, model)
    assert not any(k.endswith(".bias") for k in plan)
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    MergePatcher(dict(model.named_parameters())).apply(plan)
    for child in targets:
        assert torch.equal(getattr(model, child).bias, before[f"{child}.bias"])
        assert not torch.equal(getattr(model, child).weight, before[f"{child}.weight"])
