"""Fidelity of PEFT's OFT, BOFT, IA3, LoHa and LoKr files against PEFT 0.21's merge.

Files come from ``save_pretrained`` (``peft_tuner_files.py``): tensors plus the
``adapter_config.json`` beside them, which our parser reads for the scale
(LoHa/LoKr ``alpha / r`` with ``rank_pattern``), the OFT Cayley–Neumann
settings and IA3's ``feedforward_modules``.  Oracle: ``merge_and_unload()``.
Tolerance: merged weight ≤ 1e-5 relative (fp32), ΔW alone ≤ 1e-4.
"""
from __future__ import annotations

import json
import os

import pytest
import torch

from fixtures.lycoris_files import relative_error
from fixtures.peft_tuner_files import VARIANTS, module_of, peft_file, unsupported_file
from lora_core.formats import parse_file, parse_state_dict
from lora_core.ir import BoftWeights, Ia3Weights, LohaWeights, LokrWeights, OftWeights
from lora_core.kinds import bias_delta, changes_bias, delta_weight, side_path
from safetensors.torch import load_file

MERGED_TOL = 1e-5
DELTA_TOL = 1e-4


@pytest.fixture(scope="session")
def peft_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("peft"))


_cache: dict = {}


def generated(variant, directory):
    if variant not in _cache:
        _cache[variant] = peft_file(variant, directory)
    return _cache[variant]


KIND = {"oft": OftWeights, "boft": BoftWeights, "ia3": Ia3Weights, "loha": LohaWeights, "lokr": LokrWeights}


@pytest.mark.parametrize("variant", VARIANTS)
def test_fidelity_against_peft_merge(variant, peft_dir):
    gen = generated(variant, peft_dir)
    lf = parse_file(gen.path)
    assert not lf.unused, lf.unused
    assert lf.patches
    expected_type = KIND[variant.split("_")[0]]
    for patch in lf.patches:
        assert isinstance(patch.weight, expected_type)
        name = module_of(patch.name)
        w0, b0 = gen.originals[name]
        wm, bm = gen.merged[name]
        delta = delta_weight(patch, w0)
        assert (wm - w0).norm() > 1e-3 * w0.norm()  # the adapter really changes W
        assert relative_error(w0 + delta, wm) <= MERGED_TOL, name
        assert relative_error(delta, wm - w0) <= DELTA_TOL, name
        if isinstance(patch.weight, Ia3Weights):
            # PEFT also scales the bias on the output axis (the kinds table's bias rule).
            assert changes_bias(patch) == (not patch.weight.on_input), name
            b = b0 + bias_delta(patch, b0).reshape(b0.shape) if changes_bias(patch) else b0
            assert relative_error(b, bm) <= MERGED_TOL, name
        else:
            assert torch.equal(bm, b0)


def test_config_drives_the_oft_series(peft_dir):
    """The same oft_R tensors read with the wrong Cayley setting are far off
    (formats.md §10), so following adapter_config.json is what makes it right."""
    gen = generated("oft", peft_dir)
    cfg = json.load(open(os.path.join(os.path.dirname(gen.path), "adapter_config.json")))
    assert cfg["use_cayley_neumann"] is True
    sd = load_file(gen.path)
    right = parse_state_dict(sd, peft_config=cfg)
    wrong = parse_state_dict(sd, peft_config=dict(cfg, use_cayley_neumann=False))
    p_right = {p.name: p for p in right.patches}["base_model.model.fc1"]
    p_wrong = {p.name: p for p in wrong.patches}["base_model.model.fc1"]
    w0, _ = gen.originals["fc1"]
    wm, _ = gen.merged["fc1"]
    assert relative_error(delta_weight(p_right, w0), wm - w0) < DELTA_TOL
    assert relative_error(delta_weight(p_wrong, w0), wm - w0) > 0.1


def test_loha_scale_comes_from_config(peft_dir):
    gen = generated("loha_effective", peft_dir)  # alpha 2, rank_pattern conv: 2
    patch = parse_file(gen.path).patches[0]
    assert patch.scale == pytest.approx(1.0)
    assert patch.weight.t1 is not None
    gen = generated("loha", peft_dir)  # alpha 8, r 4
    assert {p.scale for p in parse_file(gen.path).patches} == {2.0}


def test_ia3_axis_from_config_and_shape(peft_dir):
    gen = generated("ia3", peft_dir)
    by = {module_of(p.name): p for p in parse_file(gen.path).patches}
    assert by["fc2"].weight.on_input and not by["fc1"].weight.on_input and not by["conv"].weight.on_input
    # Without a config a Linear vector's shape still tells the axis.
    sd = load_file(gen.path)
    bare = {p.name: p for p in parse_state_dict(sd, peft_config={}).patches}
    assert bare["base_model.model.fc2"].weight.on_input
    assert not bare["base_model.model.fc1"].weight.on_input
    conv_ff = generated("ia3_conv_ff", peft_dir)
    by = {module_of(p.name): p for p in parse_file(conv_ff.path).patches}
    assert by["conv"].weight.on_input


def test_ia3_side_forward_matches_merged_layer(peft_dir):
    """Output-axis IA3 side path: y_merged = y_base + s·(v − 1) ⊙ (W·x) (+ PEFT's bias rule)."""
    gen = generated("ia3", peft_dir)
    patch = {module_of(p.name): p for p in parse_file(gen.path).patches}["fc1"]
    w0, b0 = gen.originals["fc1"]
    x = torch.randn(5, w0.shape[1])
    s = 0.7
    delta = delta_weight(patch, w0)
    merged_out = x @ (w0 + s * delta).T + b0
    side = s * side_path(patch)(x @ w0.T, -1)
    assert relative_error(x @ w0.T + b0 + side, merged_out) < 1e-6


@pytest.mark.parametrize("variant", ["oft", "boft", "ia3", "lokr"])
def test_strength_zero_exact_and_linear(variant, peft_dir):
    gen = generated(variant, peft_dir)
    for patch in parse_file(gen.path).patches:
        w0, _ = gen.originals[module_of(patch.name)]
        delta = delta_weight(patch, w0)
        assert torch.equal(w0 + 0.0 * delta, w0)
        assert delta.abs().max() > 1e-4


@pytest.mark.parametrize("kind", ["vera", "fourierft"])
def test_unsupported_tuners_are_reported(kind, peft_dir):
    path = unsupported_file(kind, peft_dir)
    lf = parse_file(path)
    assert not lf.patches
    keys = set(load_file(path))
    assert {u.key for u in lf.unused} == keys
    assert all(u.reason == "unsupported kind" for u in lf.unused)


def test_peft_oft_without_config_notes_the_assumption(peft_dir):
    gen = generated("oft", peft_dir)
    lf = parse_state_dict(load_file(gen.path), peft_config={})
    assert any("Cayley" in n for n in lf.notes)


def test_coft_projection_is_applied(peft_dir):
    """COFT files saved before any forward hold unprojected blocks; PEFT projects
    them at merge time, and so do we (without it the result is off)."""
    gen = generated("oft_coft", peft_dir)
    cfg = json.load(open(os.path.join(os.path.dirname(gen.path), "adapter_config.json")))
    sd = load_file(gen.path)
    off = {p.name: p for p in parse_state_dict(sd, peft_config=dict(cfg, coft=False)).patches}
    w0, _ = gen.originals["fc1"]
    wm, _ = gen.merged["fc1"]
    assert relative_error(delta_weight(off["base_model.model.fc1"], w0), wm - w0) > 0.1


@pytest.mark.parametrize("block_size,blocks,factor", [(2, 8, 1), (4, 8, 2), (4, 16, 3), (8, 4, 1), (6, 8, 2),
                                                      (4, 12, 1), (8, 8, 0)])
def test_butterfly_permutation_matches_peft(block_size, blocks, factor):
    """Our index form of PEFT's block-butterfly permutation, stage by stage."""
    from peft.tuners.boft.layer import BOFTLayer
    from lora_core.kinds.oft import peft_butterfly_index
    n = block_size * blocks
    for i in range(factor + 1):
        if blocks % (2 ** i):
            continue
        ref = BOFTLayer.block_butterfly_perm(None, n, blocks // (2 ** i), block_size // 2, factor)
        ours = peft_butterfly_index(n, blocks // (2 ** i), block_size // 2, factor)
        assert torch.equal(ours, torch.as_tensor(ref)), (i, ours, ref)
