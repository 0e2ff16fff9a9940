"""The kinds table: every kind declared once; each side path equals its merged ΔW
applied to x (bypass = merge), directly and through install_bypass, for linear and
conv layers, fused-qkv slices, rescales and PEFT's IA3 bias rule."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from lora_core import kinds
from lora_core.bypass import install_bypass
from lora_core.ir import (BoftWeights, CoverageReport, DoraMagnitude, FullWeights, GloraWeights, Ia3Weights, Kind,
                          LohaWeights, LokrWeights, LoraWeights, ModulePatch, OftWeights, ResolvedPatch,
                          SetWeights, Slice)
from lora_core.patcher import MergePatcher
from lora_core.plan import build_plan

G = torch.Generator().manual_seed(7)


def rnd(*shape, s=0.2):
    return torch.randn(*shape, generator=G) * s


def test_every_kind_is_in_the_table():
    assert set(kinds.KINDS) == set(Kind)
    for kind, spec in kinds.KINDS.items():
        assert callable(spec.delta_weight), kind
    assert {k for k, s in kinds.KINDS.items() if not s.reads_base} == {Kind.LORA, Kind.LOHA, Kind.LOKR, Kind.FULL}
    assert {k for k, s in kinds.KINDS.items() if s.side_path} == {Kind.OFT, Kind.BOFT, Kind.IA3}
    assert {k for k, s in kinds.KINDS.items() if s.factors} == {Kind.LORA}


def test_dora_makes_any_kind_base_dependent_and_dense():
    p = ModulePatch("d", weight=LoraWeights(rnd(8, 2), rnd(2, 6)), dora=DoraMagnitude(torch.rand(8) + 0.5, "out"))
    assert kinds.reads_base(p) and not kinds.is_low_rank(p) and kinds.side_path(p) is None
    plain = ModulePatch("p", weight=LoraWeights(rnd(8, 2), rnd(2, 6)))
    assert not kinds.reads_base(plain) and kinds.is_low_rank(plain)


def oft(out, block, rescale=False, constraint=0.0):
    n = out // block
    return OftWeights(blocks=rnd(n, block, block, s=0.3), constraint=constraint,
                      rescale=(torch.rand(out, 1, generator=G) + 0.5) if rescale else None)


def boft(out, block, stages, rescale=False):
    return BoftWeights(blocks=rnd(stages, out // block, block, block, s=0.3),
                       rescale=(torch.rand(out, 1, generator=G) + 0.5) if rescale else None)


SIDE_CASES = {
    "oft": lambda out: oft(out, 4),
    "oft_rescale_constraint": lambda out: oft(out, 8, rescale=True, constraint=1e-3),
    "boft": lambda out: boft(out, 4, 2),
    "boft_rescale": lambda out: boft(out, 2, 3, rescale=True),
    "ia3_lycoris": lambda out: Ia3Weights(vector=rnd(out, s=0.5).double() + 1, on_input=False),
    "ia3_peft": lambda out: Ia3Weights(vector=rnd(out, 1, s=0.5) + 1, on_input=False, scales_bias=True),
}


@pytest.mark.parametrize("case", sorted(SIDE_CASES))
@pytest.mark.parametrize("layer", ["linear", "conv"])
def test_side_path_is_the_merged_delta_applied_to_x(case, layer):
    out = 16
    weights = SIDE_CASES[case](out)
    patch = ModulePatch("m", weight=weights, scale=1.0)
    side = kinds.side_path(patch)
    assert side is not None
    if layer == "linear":
        w0, x = rnd(out, 12, s=1.0), rnd(5, 3, 12, s=1.0)
        delta = kinds.delta_weight(patch, w0)
        want = x @ delta.T
        got = side(x @ w0.T, -1)
    else:
        w0, x = rnd(out, 3, 3, 3, s=1.0), rnd(2, 3, 7, 7, s=1.0)
        delta = kinds.delta_weight(patch, w0)
        want = nn.functional.conv2d(x, delta, padding=1)
        got = side(nn.functional.conv2d(x, w0, padding=1), 1)
    assert want.abs().max() > 1e-3
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_module_scale_is_folded_into_the_side_path():
    patch = ModulePatch("m", weight=oft(8, 4), scale=0.25)
    w0, x = rnd(8, 5, s=1.0), rnd(3, 5, s=1.0)
    torch.testing.assert_close(kinds.side_path(patch)(x @ w0.T, -1), x @ kinds.delta_weight(patch, w0).T,
                               rtol=1e-5, atol=1e-6)


def test_no_side_path_where_the_input_axis_turns():
    assert kinds.side_path(ModulePatch("i", weight=Ia3Weights(rnd(12) + 1, on_input=True))) is None
    peft = OftWeights(blocks=rnd(2, 6), layout="peft")
    assert kinds.side_path(ModulePatch("p", weight=peft)) is None


def test_bias_rule_only_for_peft_output_ia3():
    b0 = rnd(16, s=1.0)
    peft = ModulePatch("p", weight=SIDE_CASES["ia3_peft"](16))
    lyco = ModulePatch("l", weight=SIDE_CASES["ia3_lycoris"](16))
    ff = ModulePatch("f", weight=Ia3Weights(rnd(1, 16) + 1, on_input=True, scales_bias=True))
    assert kinds.changes_bias(peft) and kinds.bias_reads_base(peft)
    assert not kinds.changes_bias(lyco) and not kinds.changes_bias(ff)
    torch.testing.assert_close(kinds.bias_delta(peft, b0), b0 * (peft.weight.vector.flatten() - 1))
    extra = ModulePatch("e", weight=peft.weight, bias=rnd(16), bias_scale=0.5)
    torch.testing.assert_close(kinds.bias_delta(extra, b0),
                               0.5 * extra.bias + b0 * (peft.weight.vector.flatten() - 1))


# ---------------------------------------------------------------- through install_bypass

class Net(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.fc = nn.Linear(12, 16)
        self.qkv = nn.Linear(12, 48)
        self.conv = nn.Conv2d(3, 16, 3, padding=1)


def every_kind_stack():
    """One file per family of kinds, on a linear, a qkv slice and a conv."""
    side = CoverageReport(file="side", unmatched=(), matched=(
        ResolvedPatch(ModulePatch("o", weight=oft(16, 4, rescale=True)), "fc.weight"),
        ResolvedPatch(ModulePatch("b", weight=boft(16, 4, 2)), "qkv.weight", slice=Slice(0, 16, 16)),
        ResolvedPatch(ModulePatch("i", weight=SIDE_CASES["ia3_peft"](16)), "conv.weight", "conv.bias"),
    ))
    more = CoverageReport(file="more", unmatched=(), matched=(
        ResolvedPatch(ModulePatch("ip", weight=SIDE_CASES["ia3_peft"](16)), "qkv.weight", "qkv.bias",
                      slice=Slice(0, 32, 16)),
        ResolvedPatch(ModulePatch("il", weight=SIDE_CASES["ia3_lycoris"](16)), "qkv.weight",
                      slice=Slice(0, 0, 16)),
        ResolvedPatch(ModulePatch("ob", weight=boft(16, 2, 3, rescale=True)), "conv.weight"),
        ResolvedPatch(ModulePatch("l", weight=LoraWeights(rnd(16, 2), rnd(2, 12)), scale=0.5), "fc.weight"),
    ))
    dense = CoverageReport(file="dense", unmatched=(), matched=(
        ResolvedPatch(ModulePatch("g", weight=GloraWeights(rnd(12, 2), rnd(2, 12), rnd(16, 2), rnd(2, 12)),
                                  scale=0.5), "fc.weight"),
        ResolvedPatch(ModulePatch("h", weight=LohaWeights(rnd(16, 2), rnd(2, 27), rnd(16, 2), rnd(2, 27))),
                      "conv.weight"),
        ResolvedPatch(ModulePatch("k", weight=LokrWeights(w1=rnd(4, 3), w2=rnd(4, 4))), "qkv.weight",
                      slice=Slice(0, 0, 16)),
        ResolvedPatch(ModulePatch("s", weight=SetWeights(rnd(16, 12, s=0.5)), bias=rnd(16)), "qkv.weight",
                      "qkv.bias", slice=Slice(0, 32, 16)),
        ResolvedPatch(ModulePatch("f", weight=FullWeights(rnd(16, 12, s=0.05)),
                                  dora=DoraMagnitude(torch.rand(16, generator=G) + 0.5, "out")), "fc.weight"),
    ))
    return side, more, dense


def test_bypass_equals_merge_for_every_kind():
    stack = every_kind_stack()
    strengths = (0.7, -0.4, 1.3)
    plan = build_plan([(r, s, None) for r, s in zip(stack, strengths)])
    assert any(c.part == "bias" and c.resolved.patch.bias is None for c in plan["conv.bias"])  # IA3 rule
    merged = Net()
    MergePatcher(dict(merged.named_parameters())).apply(plan)
    net = Net()
    handle = install_bypass(net, plan)
    # the side-path kinds run on the output, not as dense ΔW
    states = {name: getattr(net, name).__dict__["_patchbay_bypass"] for name in ("fc", "qkv", "conv")}
    assert len(states["fc"].outputs) == 1 and len(states["qkv"].outputs) == 3 and len(states["conv"].outputs) == 2
    xs = {"fc": rnd(4, 12, s=1.0), "qkv": rnd(2, 3, 12, s=1.0), "conv": rnd(2, 3, 6, 6, s=1.0)}
    base = Net()
    with torch.no_grad():
        for name, x in xs.items():
            want, got = getattr(merged, name)(x), getattr(net, name)(x)
            assert (want - getattr(base, name)(x)).abs().max() > 1e-2
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5, msg=name)
    # live strengths move side paths too
    handle.set_strength(0, 0.0)
    handle.set_strength(2, 0.0)
    merged = Net()
    MergePatcher(dict(merged.named_parameters())).apply(build_plan([(stack[1], -0.4, None)]))
    with torch.no_grad():
        for name, x in xs.items():
            torch.testing.assert_close(getattr(net, name)(x), getattr(merged, name)(x), rtol=1e-5, atol=1e-5)
