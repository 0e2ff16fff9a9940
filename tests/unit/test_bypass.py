"""Bypass side path: numerics against the merged model, per-sample and live
strengths, fused-qkv slices, exact removal and re-installation."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from lora_core.bypass import STATE_ATTR, install_bypass, module_kind
from lora_core.errors import StackError
from lora_core.ir import (CoverageReport, DoraMagnitude, FullWeights, LohaWeights, LoraWeights, ModulePatch,
                          ResolvedPatch, Slice)
from lora_core.patcher import MergePatcher
from lora_core.plan import build_plan


class CustomLinear(nn.Linear):
    """Like comfy.ops: a subclass with its own forward."""

    def forward(self, x):
        return nn.functional.linear(x, self.weight, self.bias)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(11)
        self.fc = nn.Linear(32, 24)
        self.qkv = CustomLinear(16, 48)
        self.conv = nn.Conv2d(4, 8, 3, padding=1, stride=2)
        self.conv1 = nn.Conv1d(6, 5, 3, padding=2, dilation=2, padding_mode="circular")
        self.norm = nn.LayerNorm(8)


def rnd(*shape, g, s=0.2):
    return torch.randn(*shape, generator=g) * s


def lora(out, inp, r, g, conv=None, scale=0.5, **kw):
    if conv:
        w = LoraWeights(up=rnd(out, r, *([1] * len(conv)), g=g), down=rnd(r, inp, *conv, g=g))
    else:
        w = LoraWeights(up=rnd(out, r, g=g), down=rnd(r, inp, g=g))
    return ModulePatch(name=f"l{out}x{inp}r{r}", weight=w, scale=scale, **kw)


@pytest.fixture(scope="module")
def stack():
    """Three files: plain LoRAs everywhere, dense kinds and biases, qkv slices."""
    g = torch.Generator().manual_seed(2)
    one = CoverageReport(file="one", unmatched=(), matched=(
        ResolvedPatch(lora(24, 32, 4, g), "fc.weight"),
        ResolvedPatch(lora(8, 4, 3, g, conv=(3, 3)), "conv.weight"),
        ResolvedPatch(lora(5, 6, 2, g, conv=(3,)), "conv1.weight"),
        ResolvedPatch(lora(16, 16, 2, g), "qkv.weight", slice=Slice(0, 0, 16)),
    ))
    two = CoverageReport(file="two", unmatched=(), matched=(
        ResolvedPatch(lora(24, 32, 8, g, scale=0.125), "fc.weight"),
        ResolvedPatch(ModulePatch(name="full", weight=FullWeights(rnd(24, 32, g=g, s=0.05)),
                                  bias=rnd(24, g=g), bias_scale=1.0), "fc.weight", "fc.bias"),
        ResolvedPatch(ModulePatch(name="loha", weight=LohaWeights(rnd(8, 2, g=g), rnd(2, 36, g=g),
                                                                   rnd(8, 2, g=g), rnd(2, 36, g=g)), scale=0.5),
                      "conv.weight"),
        ResolvedPatch(lora(16, 16, 3, g), "qkv.weight", slice=Slice(0, 32, 16)),
        ResolvedPatch(ModulePatch(name="vb", bias=rnd(16, g=g)), None, "qkv.bias", slice=Slice(0, 32, 16)),
    ))
    three = CoverageReport(file="three", unmatched=(), matched=(
        ResolvedPatch(lora(24, 32, 2, g, dora=DoraMagnitude(torch.rand(24, generator=g) + 0.5, "out")),
                      "fc.weight"),
        ResolvedPatch(ModulePatch(name="k", weight=FullWeights(rnd(16, 16, g=g, s=0.1))), "qkv.weight",
                      slice=Slice(0, 16, 16)),
        ResolvedPatch(ModulePatch(name="ln", weight=FullWeights(rnd(8, g=g))), "norm.weight"),
    ))
    return one, two, three


def inputs():
    g = torch.Generator().manual_seed(5)
    return {"fc": torch.randn(3, 7, 32, generator=g), "qkv": torch.randn(3, 5, 16, generator=g),
            "conv": torch.randn(3, 4, 9, 9, generator=g), "conv1": torch.randn(3, 6, 10, generator=g)}


def outputs(net, xs):
    with torch.no_grad():
        return {name: getattr(net, name)(x) for name, x in xs.items()}


def test_bypass_equals_merged_fp32(stack):
    strengths = (0.8, -1.1, 0.6)
    plan = build_plan([(r, s, None) for r, s in zip(stack, strengths)])
    merged = Net()
    MergePatcher(dict(merged.named_parameters())).apply(plan)
    net = Net()
    handle = install_bypass(net, plan)
    assert handle.unsupported == ("norm.weight",)
    xs = inputs()
    want, got = outputs(merged, xs), outputs(net, xs)
    for name in xs:
        torch.testing.assert_close(got[name], want[name], rtol=1e-5, atol=1e-5, msg=name)
    assert not torch.allclose(got["fc"], outputs(Net(), xs)["fc"])  # the side path does something


def test_live_strengths_equal_a_fresh_plan(stack):
    unit = build_plan([(r, 1.0, None) for r in stack])
    net = Net()
    handle = install_bypass(net, unit, strengths={0: 0.3, 1: 0.0, 2: 1.0})
    xs = inputs()
    for values in [(0.3, 0.0, 1.0), (-0.5, 1.25, 0.0), (1.0, 1.0, 1.0)]:
        for entry, v in enumerate(values):
            handle.set_strength(entry, v)
        merged = Net()
        MergePatcher(dict(merged.named_parameters())).apply(build_plan([(r, s, None) for r, s in zip(stack, values)]))
        want, got = outputs(merged, xs), outputs(net, xs)
        for name in xs:
            torch.testing.assert_close(got[name], want[name], rtol=1e-5, atol=1e-5)
    # a slider is fill_ on a 0-d tensor shared with the forward
    t = handle.strength(1)
    assert t.dim() == 0
    t.fill_(0.0)
    assert float(handle.strengths[handle.column(1)]) == 0.0
    with pytest.raises(StackError):
        handle.set_strength(9, 1.0)


def test_block_multipliers_scale_the_entry(stack):
    mult = {"fc.weight": 0.5, "conv.weight": 2.0}
    plan = build_plan([(stack[0], 1.0, lambda k: mult.get(k, 1.0))])
    net = Net()
    handle = install_bypass(net, plan)
    handle.set_strength(0, 0.7)
    merged = Net()
    MergePatcher(dict(merged.named_parameters())).apply(build_plan([(stack[0], 0.7, lambda k: mult.get(k, 1.0))]))
    xs = inputs()
    for name in xs:
        torch.testing.assert_close(outputs(net, xs)[name], outputs(merged, xs)[name], rtol=1e-5, atol=1e-5)


def test_per_sample_strengths_render_several_strengths_in_one_batch(stack):
    unit = build_plan([(r, 1.0, None) for r in stack])
    net = Net()
    handle = install_bypass(net, unit)
    per_sample = torch.tensor([0.0, 0.5, -1.0])
    handle.set_strength(0, per_sample)
    handle.set_strength(1, torch.tensor([1.0, 0.25, 0.0]))
    handle.set_strength(2, 0.75)
    xs = inputs()
    batch = outputs(net, xs)
    handle.clear_per_sample()
    for i in range(3):
        handle.set_strength(0, float(per_sample[i]))
        handle.set_strength(1, [1.0, 0.25, 0.0][i])
        single = outputs(net, {k: v[i:i + 1] for k, v in xs.items()})
        for name in xs:
            torch.testing.assert_close(batch[name][i:i + 1], single[name], rtol=1e-5, atol=1e-5)
    # cond and uncond stacked: strengths tile over a batch twice as large
    handle.set_strength(0, per_sample)
    doubled = outputs(net, {"fc": torch.cat([xs["fc"], xs["fc"]])})["fc"]
    torch.testing.assert_close(doubled[3:], doubled[:3])


def test_slices_add_into_their_rows_only(stack):
    plan = build_plan([(stack[0], 1.0, None)])  # q slice only
    net, plain = Net(), Net()
    install_bypass(net, plan)
    x = inputs()["qkv"]
    with torch.no_grad():
        diff = net.qkv(x) - plain.qkv(x)
    assert diff[..., :16].abs().max() > 1e-3
    assert diff[..., 16:].abs().max() == 0


def test_remove_restores_forward_exactly_and_is_idempotent(stack):
    net = Net()
    xs = inputs()
    before = outputs(net, xs)
    handle = install_bypass(net, build_plan([(r, 1.0, None) for r in stack]))
    assert "forward" in net.fc.__dict__ and STATE_ATTR in net.qkv.__dict__
    handle.remove()
    handle.remove()
    for name in ("fc", "qkv", "conv", "conv1"):
        module = getattr(net, name)
        assert "forward" not in module.__dict__ and STATE_ATTR not in module.__dict__
        assert module.forward.__func__ is type(module).forward
    after = outputs(net, xs)
    for name in xs:
        assert torch.equal(after[name], before[name])


def test_double_install_replaces_without_recursion(stack):
    net = Net()
    xs = inputs()
    base = outputs(net, xs)
    first = install_bypass(net, build_plan([(stack[0], 1.0, None)]))
    second = install_bypass(net, build_plan([(stack[0], 1.0, None)]))
    third = install_bypass(net, build_plan([(stack[0], 1.0, None)]))
    once = Net()
    install_bypass(once, build_plan([(stack[0], 1.0, None)]))
    got, want = outputs(net, xs), outputs(once, xs)
    for name in xs:
        assert torch.equal(got[name], want[name])  # one side path, not three chained
    first.remove()  # stale handle: must not undo the live one
    assert torch.equal(outputs(net, xs)["fc"], want["fc"])
    second.remove()
    third.remove()
    for name in xs:
        assert "forward" not in getattr(net, name).__dict__
        assert torch.equal(outputs(net, xs)[name], base[name])


def test_foreign_instance_forward_is_kept_and_restored(stack):
    net = Net()
    calls = []
    original = net.fc.forward

    def foreign(x):
        calls.append(1)
        return original(x)

    net.fc.forward = foreign
    handle = install_bypass(net, build_plan([(stack[0], 1.0, None)]))
    net.fc(inputs()["fc"])
    assert calls == [1]
    handle.remove()
    assert net.fc.__dict__["forward"] is foreign


def test_deepcopy_rebinds_the_wrapper(stack):
    net = Net()
    install_bypass(net, build_plan([(stack[0], 1.0, None)]))
    clone = copy.deepcopy(net)
    assert clone.fc.forward.__self__ is clone.fc
    xs = inputs()
    torch.testing.assert_close(outputs(clone, xs)["fc"], outputs(net, xs)["fc"])


def test_activation_dtype_casts_are_cached(stack):
    net = Net().to(torch.bfloat16)
    handle = install_bypass(net, build_plan([(stack[0], 1.0, None)]))
    ref = Net()
    install_bypass(ref, build_plan([(stack[0], 1.0, None)]))
    x = inputs()["fc"]
    y = net.fc(x.bfloat16())
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), ref.fc(x), rtol=3e-2, atol=3e-2)
    state = net.fc.__dict__[STATE_ATTR]
    n = len(state.cache)
    net.fc(x.bfloat16())
    assert len(state.cache) == n  # no re-cast per call
    handle.remove()


def test_module_kinds():
    assert module_kind(nn.Linear(2, 2)) == "linear"
    assert module_kind(CustomLinear(2, 2)) == "linear"
    assert module_kind(nn.Conv3d(2, 2, 1)) == "conv"
    assert module_kind(nn.ConvTranspose2d(2, 2, 1)) is None
    assert module_kind(nn.LayerNorm(2)) is None
