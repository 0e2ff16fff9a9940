"""DoRA (weight-decomposed LoRA), as a wrapper over any additive kind.

    W_dora = m ⊙ (W + ΔW) / ‖W + ΔW‖
    delta  = W_dora − W          (so strength s gives W + s·(W_dora − W); s = 0 is W)

The norm is taken per output row (``axis="out"``: over every dim but 0) or per
input column (``axis="in"``: over every dim but 1); it is treated as a
constant, as in PEFT and LyCORIS.  Side path: the same dense delta, since the
rescale mixes every rank.
"""
from __future__ import annotations

import torch

from ..ir import DoraMagnitude


def dora_delta(base: torch.Tensor, delta: torch.Tensor, dora: DoraMagnitude) -> torch.Tensor:
    """``W_dora − W`` in fp32 given fp32 ``base`` W and the scaled kind ``delta``."""
    merged = base + delta
    if dora.axis == "out":
        dims = tuple(range(1, merged.dim()))
        norm = torch.linalg.vector_norm(merged, dim=dims, keepdim=True) if dims else merged.abs()
        m = dora.magnitude.float().reshape(-1, *([1] * (merged.dim() - 1)))
    else:
        dims = (0,) + tuple(range(2, merged.dim()))
        norm = torch.linalg.vector_norm(merged, dim=dims, keepdim=True)
        m = dora.magnitude.float().reshape(1, -1, *([1] * (merged.dim() - 2)))
    # A zero row/column of W + ΔW stays zero instead of turning into NaN.
    norm = norm.clamp_min(torch.finfo(norm.dtype).tiny)
    return merged * (m / norm) - base
