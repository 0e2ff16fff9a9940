"""IA3: elementwise scaling of the weight along one axis.

    W' = W ⊙ v         v along the output axis (rows) or the input axis (columns)
    ΔW = W ⊙ (v − 1)   so strength s gives W ⊙ (1 + s·(v − 1)); s = 0 is exactly W

PEFT stores v itself (``ia3_l``); LyCORIS stores the increment w with
v = 1 + w, which its parser keeps in float64 so that v − 1 gives w back
exactly.

Side path (output axis only): the merged layer computes (W ⊙ v)·x = v ⊙ (W·x),
so Δy = (v − 1) ⊙ (y₀ − b), an elementwise product on the base output
(:class:`ChannelScale`).  The input axis needs a second pass through the
layer, so it has no side path (the bypass uses the dense ΔW).

Bias rule: PEFT's merge also scales the layer's *bias* on the output axis,
Δb = b ⊙ (v − 1) (``Ia3Weights.scales_bias``, set by the PEFT parser);
LyCORIS' merge leaves the bias alone (see :func:`scales_bias`).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import ShapeMismatchError
from ..ir import Ia3Weights


def increment(weights: Ia3Weights) -> torch.Tensor:
    """v − 1 as fp32, computed in the vector's own precision (fp64 for LyCORIS)."""
    v = weights.vector
    if not v.is_floating_point():
        v = v.float()
    return (v - 1).float().flatten()


def _broadcast(inc: torch.Tensor, base: torch.Tensor, on_input: bool) -> torch.Tensor:
    axis = 1 if on_input else 0
    if base.dim() <= axis or inc.numel() != base.shape[axis]:
        side = "input" if on_input else "output"
        raise ShapeMismatchError(f"IA3 vector has {inc.numel()} entries, the weight {tuple(base.shape)} "
                                 f"has {base.shape[axis] if base.dim() > axis else 0} {side} channels",
                                 fix="the LoRA was made for another model")
    shape = [1] * base.dim()
    shape[axis] = -1
    return inc.reshape(shape)


def delta_weight(weights: Ia3Weights, base: torch.Tensor) -> torch.Tensor:
    """ΔW at scale 1 in fp32, shaped like ``base``."""
    return base * _broadcast(increment(weights), base, weights.on_input)


def scales_bias(weights: Ia3Weights) -> bool:
    """True when the adapter also scales the layer's own bias (PEFT, output axis)."""
    return weights.scales_bias and not weights.on_input


def bias_delta(weights: Ia3Weights, bias: torch.Tensor) -> torch.Tensor:
    """Δb = b ⊙ (v − 1) in fp32, PEFT's bias rule on the output axis."""
    inc = increment(weights)
    if inc.numel() != bias.numel():
        raise ShapeMismatchError(f"IA3 vector has {inc.numel()} entries, the bias {bias.numel()}",
                                 fix="the LoRA was made for another model")
    return bias.float() * inc.reshape(bias.shape)


@dataclass(frozen=True, eq=False)
class ChannelScale:
    """Δy = (v − 1) ⊙ y on the channel axis (see the module docstring)."""
    increment: torch.Tensor  # (out,) fp32

    def __call__(self, y: torch.Tensor, channel_axis: int) -> torch.Tensor:
        shape = [1] * y.dim()
        shape[channel_axis] = -1
        return y.float() * self.increment.reshape(shape)

    def to(self, device: torch.device) -> "ChannelScale":
        return ChannelScale(self.increment.to(device))


def side_path(weights: Ia3Weights) -> ChannelScale | None:
    """The output-axis side path, or None on the input axis."""
    if weights.on_input:
        return None
    return ChannelScale(increment(weights))
