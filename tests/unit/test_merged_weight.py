"""lora_core.stack_delta.merged_weight: W' = W₀ + s·f(D), fp32 accumulation, one rounding."""
from __future__ import annotations

import pytest
import torch

from lora_core.ir import CoverageReport, LoraWeights, ModulePatch, ResolvedPatch
from lora_core.plan import build_plan
from lora_core.stack_delta import add_scaled_, merged_weight, stack_delta


def plan_for(*specs, key="m.weight", out=16, inp=24):
    """specs: (rank, scale, strength) per LoRA on one weight."""
    entries = []
    for i, (rank, scale, strength) in enumerate(specs):
        g = torch.Generator().manual_seed(100 + i)
        patch = ModulePatch(name=f"l{i}", weight=LoraWeights(up=torch.randn(out, rank, generator=g) * 0.1,
                                                             down=torch.randn(rank, inp, generator=g) * 0.1),
                            scale=scale)
        entries.append((CoverageReport(file=f"f{i}.safetensors", matched=(ResolvedPatch(patch, key),),
                                       unmatched=()), strength, None))
    return build_plan(entries)[key]


def reference(w0: torch.Tensor, contribs) -> torch.Tensor:
    """W₀ + Σ sᵢ·cᵢ·BᵢAᵢ in float64."""
    d = torch.zeros(w0.shape, dtype=torch.float64)
    for c in contribs:
        p = c.resolved.patch
        d += c.strength * p.scale * (p.weight.up.double() @ p.weight.down.double())
    return w0.double() + d


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_matches_the_formula_with_one_rounding(dtype):
    contribs = plan_for((4, 0.5, 1.0), (8, 0.25, -0.7))
    w0 = (torch.randn(16, 24, generator=torch.Generator().manual_seed(1)) * 0.2).to(dtype)
    out = merged_weight("m.weight", contribs, w0)
    assert out.dtype == torch.float32  # the caller rounds once
    ref = reference(w0, contribs)
    assert torch.allclose(out.double(), ref, atol=1e-5, rtol=1e-5)
    # one rounding of the fp32 sum to the storage dtype: within one ulp of the exact value
    err = (out.to(dtype).double() - ref).abs().max()
    assert err <= torch.finfo(dtype).eps * ref.abs().max()


def test_strength_function_and_out_dtype():
    contribs = plan_for((4, 1.0, 1.0))
    w0 = torch.randn(16, 24, generator=torch.Generator().manual_seed(2))
    d = stack_delta("m.weight", contribs, w0)
    out = merged_weight("m.weight", contribs, w0, strength=0.5, function=lambda x: x * 2.0)
    assert torch.allclose(out, w0 + 0.5 * (d * 2.0), atol=1e-6)
    half = merged_weight("m.weight", contribs, w0.half(), out_dtype=torch.float16)
    assert half.dtype == torch.float16


def test_cached_delta_gives_a_bit_identical_weight():
    contribs = plan_for((4, 0.5, 1.0), (2, 1.0, 0.3))
    w0 = torch.randn(16, 24, generator=torch.Generator().manual_seed(3)).half()
    fresh = merged_weight("m.weight", contribs, w0)
    cached = stack_delta("m.weight", contribs, w0)
    again = merged_weight("m.weight", contribs, w0, delta=cached)
    assert torch.equal(fresh.view(torch.int32), again.view(torch.int32))


def test_in_place_only_on_fp32_weights_of_the_final_shape():
    contribs = plan_for((4, 1.0, 1.0))
    w32 = torch.randn(16, 24, generator=torch.Generator().manual_seed(4))
    keep = w32.clone()
    out = merged_weight("m.weight", contribs, w32)
    assert out is not w32 and torch.equal(w32, keep)  # default: the input is never written
    out = merged_weight("m.weight", contribs, w32, in_place=True)
    assert out is w32 and not torch.equal(w32, keep)
    w16 = keep.half()
    before = w16.clone()
    merged_weight("m.weight", contribs, w16, in_place=True)
    assert torch.equal(w16, before)  # not fp32: a new tensor, the input untouched


def test_empty_contributions_return_the_weight_in_fp32():
    w0 = torch.randn(3, 5).half()
    out = merged_weight("m.weight", (), w0)
    assert out.dtype == torch.float32 and torch.equal(out, w0.float())


def test_add_scaled_is_the_same_bits_whole_or_in_row_blocks():
    """The host's slider sync rewrites weights in row blocks; its bits must be a whole-tensor merge's."""
    g = torch.Generator().manual_seed(7)
    for rows, cols in ((37, 53), (129, 7), (64, 1280)):
        w0 = torch.randn(rows, cols, generator=g)
        p = torch.randn(rows, cols, generator=g) * 1e-2
        scale = 0.7123456789
        whole = add_scaled_(w0.clone(), p, scale)
        blocks = w0.clone()
        scratch = torch.empty(rows, cols)
        for r0 in range(0, rows, 5):
            add_scaled_(blocks[r0:r0 + 5], p[r0:r0 + 5], scale, scratch=scratch[r0:r0 + 5])
        assert torch.equal(whole.view(torch.int32), blocks.view(torch.int32))
        assert torch.equal(whole, w0 + torch.mul(p, scale))  # two roundings, never a fused multiply-add


def test_a_scaled_product_merges_like_the_delta_it_stands_for():
    contribs = plan_for((4, 0.5, 0.8))
    w0 = torch.randn(16, 24, generator=torch.Generator().manual_seed(8)).half()
    c = contribs[0]
    product = c.resolved.patch.weight.up @ c.resolved.patch.weight.down
    scale = c.strength * c.resolved.patch.scale
    out = merged_weight("m.weight", contribs, w0, delta=product, delta_scale=scale)
    assert torch.equal(out, w0.float() + torch.mul(product, scale))
    assert torch.allclose(out, reference(w0, contribs).float(), atol=1e-5)
    # ComfyUI's patch strength and function see the scaled delta, not the bare product
    shaped = merged_weight("m.weight", contribs, w0, strength=0.5, function=lambda x: x * 2.0,
                           delta=product, delta_scale=scale)
    assert torch.allclose(shaped, w0.float() + 0.5 * (torch.mul(product, scale) * 2.0), atol=1e-6)
