"""LoHa (Hadamard product of two low-rank matrices), LyCORIS and PEFT alike.

    ΔW = (w1a · w1b) ⊙ (w2a · w2b)                       plain: w?a (out, r), w?b (r, in·k…)
    ΔW = rebuild(t1, w1a, w1b) ⊙ rebuild(t2, w2a, w2b)    Tucker: w?a (r, out), w?b (r, in),
         rebuild(t, a, b)[p, q, …] = Σ_ij t[i, j, …]·a[i, p]·b[j, q]   t (r, r, kh, kw)

The module scale (``alpha / r``) is applied by the caller.  No side path: the
Hadamard product does not factor through the input, so the dense ΔW is the
cheapest form.
"""
from __future__ import annotations

import torch

from ..errors import ShapeMismatchError
from ..ir import LohaWeights


def tucker_rebuild(core: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Contract a Tucker core with its two mode matrices: (r, r, *k) → (out, in, *k)."""
    return torch.einsum("ij...,ip,jq->pq...", core.float(), a.float().flatten(1), b.float().flatten(1))


def _half(wa: torch.Tensor, wb: torch.Tensor, t: torch.Tensor | None) -> torch.Tensor:
    if t is not None:
        return tucker_rebuild(t, wa, wb)
    return wa.float().flatten(1) @ wb.float().flatten(1)


def delta_weight(weights: LohaWeights, base: torch.Tensor) -> torch.Tensor:
    """ΔW at scale 1 in fp32, shaped like ``base``."""
    first = _half(weights.w1a, weights.w1b, weights.t1)
    second = _half(weights.w2a, weights.w2b, weights.t2)
    if first.numel() != base.numel() or second.numel() != base.numel():
        raise ShapeMismatchError(f"LoHa factors build {tuple(first.shape)} and {tuple(second.shape)}, "
                                 f"the weight is {tuple(base.shape)}",
                                 fix="the LoRA was made for another model")
    return (first.reshape(base.shape) * second.reshape(base.shape))
