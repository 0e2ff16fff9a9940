"""GLoRA (LyCORIS "new" layout; the parser rewrites the old layout into it).

    W' = W + W·(a1·a2) + b1·b2      ⇒   ΔW = W·(a1·a2) + b1·b2

a1 (in, r), a2 (r, in), b1 (out, r), b2 (r, in·kh·kw) (1×1 conv kernels are
flattened away).  For a conv the input-channel axis of W is multiplied by
a1·a2 at every kernel position: ΔW_a[o, j, …] = Σ_i W[o, i, …]·(a1·a2)[i, j].
The ΔW is linear in W, so strength s gives W + s·ΔW.  Scale ``alpha / r`` is
applied by the caller.  No side path: the dense ΔW is cheapest here.
"""
from __future__ import annotations

import torch

from ..errors import ShapeMismatchError
from ..ir import GloraWeights


def delta_weight(weights: GloraWeights, base: torch.Tensor) -> torch.Tensor:
    """ΔW at scale 1 in fp32, shaped like ``base``."""
    a1 = weights.a1.float().flatten(1)
    a2 = weights.a2.float().flatten(1)
    b1 = weights.b1.float().flatten(1)
    b2 = weights.b2.float().flatten(1)
    in_features = base.shape[1] if base.dim() > 1 else 0
    if a1.shape[0] != in_features or a2.shape[1] != in_features or a1.shape[1] != a2.shape[0]:
        raise ShapeMismatchError(f"GLoRA a1 {tuple(a1.shape)} / a2 {tuple(a2.shape)} do not fit the "
                                 f"weight {tuple(base.shape)}", fix="the LoRA was made for another model")
    if b1.shape[0] * b2.shape[1] != base.numel() or b1.shape[1] != b2.shape[0]:
        raise ShapeMismatchError(f"GLoRA b1 {tuple(b1.shape)} / b2 {tuple(b2.shape)} do not fit the "
                                 f"weight {tuple(base.shape)}", fix="the LoRA was made for another model")
    # (W·a1)·a2, never a1·a2 first: that (in, in) product costs in² memory and
    # out·in² time, the chained form out·in·r.
    narrow = torch.einsum("oi...,ir->or...", base, a1)
    weight_term = torch.einsum("or...,rj->oj...", narrow, a2)
    return weight_term + (b1 @ b2).reshape(base.shape)
