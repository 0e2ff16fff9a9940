"""Dense deltas.

    FULL:  ΔW = diff                       (``diff``, norm ``w_norm``)
    SET:   ΔW = value − W                  (``set_weight``: strength 1 replaces W)

Strength s gives W + s·ΔW; for SET that interpolates towards ``value``.
"""
from __future__ import annotations

import torch

from ..errors import ShapeMismatchError
from ..ir import FullWeights, SetWeights


def _fit(tensor: torch.Tensor, base: torch.Tensor, what: str) -> torch.Tensor:
    if tensor.numel() != base.numel():
        raise ShapeMismatchError(f"{what} has shape {tuple(tensor.shape)}, the weight is {tuple(base.shape)}",
                                 fix="the LoRA was made for another model")
    return tensor.float().reshape(base.shape)


def delta_full(weights: FullWeights, base: torch.Tensor) -> torch.Tensor:
    return _fit(weights.diff, base, "full diff")


def delta_set(weights: SetWeights, base: torch.Tensor) -> torch.Tensor:
    return _fit(weights.value, base, "set_weight") - base.float()


def delta_weight(weights, base: torch.Tensor) -> torch.Tensor:
    """ΔW at scale 1 in fp32 for either dense kind."""
    if isinstance(weights, SetWeights):
        return delta_set(weights, base)
    return delta_full(weights, base)
