"""Direct tests of the one per-parameter ΔW function both merge paths share
(``lora_core.stack_delta.stack_delta``): rank concatenation, slices, strength 0,
base-dependent kinds against W₀, bias rules, dtypes and fp32 accumulation."""
from __future__ import annotations

import pytest
import torch

from lora_core import kinds
from lora_core.errors import ShapeMismatchError
from lora_core.ir import (DoraMagnitude, FullWeights, Ia3Weights, LohaWeights, LoraWeights, ModulePatch, OftWeights,
                          ResolvedPatch, Slice)
from lora_core.plan import Contribution
from lora_core.stack_delta import base_independent, is_plain_lora, merged_weight, stack_delta

G = torch.Generator().manual_seed(17)
KEY = "layer.weight"


def rnd(*shape, s=0.2):
    return torch.randn(*shape, generator=G) * s


def contrib(patch, strength=1.0, part="weight", slice_=None, entry=0):
    return Contribution(ResolvedPatch(patch, KEY, "layer.bias", slice_), strength, part, entry, "f.safetensors")


def lora(out=24, inp=16, r=4, scale=0.5, **kw):
    return ModulePatch(f"l{r}", weight=LoraWeights(up=rnd(out, r), down=rnd(r, inp)), scale=scale, **kw)


def separately(contribs, base):
    """Σ sᵢ·ΔWᵢ(W₀), one module at a time (the definition)."""
    total = torch.zeros(base.shape)
    for c in contribs:
        s = c.resolved.slice
        view = base if s is None else base.narrow(s.dim, s.start, s.length)
        d = kinds.delta_weight(c.resolved.patch, view.float()) * c.strength
        (total if s is None else total.narrow(s.dim, s.start, s.length)).add_(d)
    return total


def test_rank_concatenation_equals_the_sum_of_per_lora_deltas():
    base = rnd(24, 16, s=1.0)
    cs = (contrib(lora(r=4), 0.8), contrib(lora(r=2, scale=2.0), -1.3), contrib(lora(r=8, scale=0.125), 0.4))
    assert all(is_plain_lora(c) for c in cs) and base_independent(cs)
    d = stack_delta(KEY, cs, base)
    assert d.dtype == torch.float32 and d.shape == base.shape
    torch.testing.assert_close(d, separately(cs, base), rtol=1e-5, atol=1e-6)


def test_factor_source_serves_the_factors():
    seen = []

    def source(c, view, device):
        seen.append(c)
        return kinds.factors(c.resolved.patch, view)

    cs = (contrib(lora(r=3)), contrib(lora(r=5)))
    stack_delta(KEY, cs, torch.zeros(24, 16), factor_source=source)
    assert seen == list(cs)


def test_slices_write_only_their_rows():
    base = rnd(48, 16, s=1.0)
    q = contrib(lora(out=16, r=2), 1.0, slice_=Slice(0, 0, 16))
    v = contrib(lora(out=16, r=3), 0.5, slice_=Slice(0, 32, 16))
    v_dense = contrib(ModulePatch("k", weight=FullWeights(rnd(16, 16))), 2.0, slice_=Slice(0, 32, 16))
    d = stack_delta(KEY, (q, v, v_dense), base)
    assert torch.equal(d[16:32], torch.zeros(16, 16))
    torch.testing.assert_close(d, separately((q, v, v_dense), base), rtol=1e-5, atol=1e-6)
    with pytest.raises(ShapeMismatchError):
        stack_delta(KEY, (contrib(lora(out=16), slice_=Slice(0, 40, 16)),), base)


def test_strength_zero_gives_exactly_w0():
    base = rnd(24, 16, s=1.0)
    cs = (contrib(lora(), 0.0), contrib(ModulePatch("o", weight=OftWeights(rnd(6, 4, 4))), 0.0))
    d = stack_delta(KEY, cs, base)
    assert torch.equal(d, torch.zeros_like(d))
    assert torch.equal(base + d, base)


def test_base_dependent_kinds_are_taken_against_w0_not_chained():
    base = rnd(24, 16, s=1.0)
    oft = contrib(ModulePatch("o", weight=OftWeights(rnd(6, 4, 4, s=0.3))), 0.7)
    ia3 = contrib(ModulePatch("i", weight=Ia3Weights(rnd(24, s=0.5) + 1, on_input=False)), -0.5)
    dora = contrib(lora(dora=DoraMagnitude(torch.rand(24, generator=G) + 0.5, "out")), 1.2)
    plain = contrib(lora(), 0.9)
    cs = (plain, oft, ia3, dora)
    assert not base_independent(cs) and base_independent((plain,))
    d = stack_delta(KEY, cs, base)
    torch.testing.assert_close(d, separately(cs, base), rtol=1e-5, atol=1e-5)
    # chaining (each against the previous result) would be another model
    chained = base.clone()
    for c in cs:
        chained = chained + kinds.delta_weight(c.resolved.patch, chained) * c.strength
    assert (chained - (base + d)).abs().max() > 1e-3
    # every kind reads W₀: another base gives another D
    assert not torch.allclose(stack_delta(KEY, cs, base * 2), d * 2, atol=1e-3)


def test_bias_patches_and_bias_rules():
    b0 = rnd(24, s=1.0)
    peft = ModulePatch("p", weight=Ia3Weights(rnd(24, 1, s=0.5) + 1, on_input=False, scales_bias=True))
    extra = ModulePatch("b", bias=rnd(24), bias_scale=0.5)
    cs = (contrib(peft, 0.5, "bias"), contrib(extra, 2.0, "bias"))
    assert not base_independent(cs) and base_independent(cs[1:])
    d = stack_delta("layer.bias", cs, b0)
    want = 0.5 * b0 * (peft.weight.vector.flatten() - 1) + 2.0 * 0.5 * extra.bias
    torch.testing.assert_close(d, want, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
def test_any_base_dtype_gives_fp32_d_accumulated_in_fp32(dtype):
    base32 = rnd(24, 16, s=1.0)
    base = base32.to(dtype)
    loha = ModulePatch("h", weight=LohaWeights(rnd(24, 2), rnd(2, 16), rnd(24, 2), rnd(2, 16)), scale=0.5)
    cs = (contrib(lora(), 1e-3), contrib(lora(r=2), 1e-3), contrib(loha, 0.5),
          contrib(ModulePatch("o", weight=OftWeights(rnd(6, 4, 4))), 0.3))
    d = stack_delta(KEY, cs, base)
    assert d.dtype == torch.float32
    # base-dependent kinds see W₀ as stored, upcast once
    torch.testing.assert_close(d, separately(cs, base.float()), rtol=1e-5, atol=1e-6)
    # tiny deltas survive: D is not rounded to the storage dtype
    small = stack_delta(KEY, cs[:2], base)
    assert 0 < small.abs().max() < 1e-2
    assert base.dtype == dtype  # never written
    # the merged weight rounds once, from fp32 W₀ + D
    merged = merged_weight(KEY, cs, base, out_dtype=dtype)
    assert torch.equal(merged, (base.float() + d).to(dtype))


def test_reshape_pads_the_base():
    base = rnd(24, 16, s=1.0)
    grow = ModulePatch("g", weight=FullWeights(rnd(24, 20)), reshape=(24, 20))
    d = stack_delta(KEY, (contrib(grow),), base, shape=torch.Size((24, 20)))
    assert d.shape == (24, 20)
    torch.testing.assert_close(d, grow.weight.diff)
