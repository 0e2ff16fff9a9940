"""LoKr (Kronecker product), LyCORIS and PEFT alike.

    ΔW = kron(w1, w2)            reshaped to the weight's shape
    w1 = lokr_w1  or  w1a · w1b                          (a, b)
    w2 = lokr_w2  or  w2a · w2b  or  rebuild(t2, w2a, w2b)   (c, d[, kh, kw]) or (c, d·kh·kw)

For a conv, ``kron(w1, w2.flatten(1))`` laid out as (a·c, b·d·kh·kw) is the
same tensor as the 4-D Kronecker product flattened, so one code path serves
linear and conv weights.  The scale (``alpha / r`` only when a factor is
decomposed, for LyCORIS files) is applied by the caller.  No side path: the
dense ΔW is what every consumer needs and is cheap to build.
"""
from __future__ import annotations

import torch

from ..errors import FormatError, ShapeMismatchError
from ..ir import LokrWeights
from .loha import tucker_rebuild


def factor_one(weights: LokrWeights) -> torch.Tensor:
    if weights.w1 is not None:
        return weights.w1.float().flatten(1)
    if weights.w1a is None or weights.w1b is None:
        raise FormatError("LoKr w1 is missing (neither lokr_w1 nor lokr_w1_a/b)")
    return weights.w1a.float().flatten(1) @ weights.w1b.float().flatten(1)


def factor_two(weights: LokrWeights) -> torch.Tensor:
    """w2 as a matrix (c, d·kh·kw)."""
    if weights.w2 is not None:
        return weights.w2.float().flatten(1)
    if weights.w2a is None or weights.w2b is None:
        raise FormatError("LoKr w2 is missing (neither lokr_w2 nor lokr_w2_a/b)")
    if weights.t2 is not None:
        return tucker_rebuild(weights.t2, weights.w2a, weights.w2b).flatten(1)
    return weights.w2a.float().flatten(1) @ weights.w2b.float().flatten(1)


def delta_weight(weights: LokrWeights, base: torch.Tensor) -> torch.Tensor:
    """ΔW at scale 1 in fp32, shaped like ``base``."""
    w1 = factor_one(weights)
    w2 = factor_two(weights)
    rows = w1.shape[0] * w2.shape[0]
    cols = w1.shape[1] * w2.shape[1]
    base_cols = base.numel() // base.shape[0] if base.dim() else 0
    if rows != base.shape[0] or cols != base_cols:
        raise ShapeMismatchError(f"LoKr factors {tuple(w1.shape)} ⊗ {tuple(w2.shape)} build "
                                 f"({rows}, {cols}), the weight is {tuple(base.shape)}",
                                 fix="the LoRA was made for another model")
    return torch.kron(w1, w2).reshape(base.shape)
