"""IA3: elementwise scaling of the weight along one axis.

    W' = W ⊙ v         v along the output axis (rows) or the input axis (columns)
    ΔW = W ⊙ (v − 1)   so strength s gives W ⊙ (1 + s·(v − 1)); s = 0 is exactly W

PEFT stores v itself (``ia3_l``); LyCORIS stores the increment w with
v = 1 + w, which its parser keeps in float64 so that v − 1 gives w back
exactly.

Side path (output axis only): the merged layer computes (W ⊙ v)·x + b =
b + v ⊙ (W·x), so the residual is (v − 1) ⊙ (y − b) scaled by s: an
elementwise product on the base output, far cheaper than a dense ΔW.  The
input axis needs a second pass through the layer, so it uses the dense ΔW.
PEFT also scales the *bias* by v on the output axis; see :func:`bias_delta`.
"""
from __future__ import annotations

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


def bias_delta(weights: Ia3Weights, bias: torch.Tensor) -> torch.Tensor | None:
    """PEFT's merge also scales the bias on the output axis: Δb = b ⊙ (v − 1).

    LyCORIS' merge leaves the bias alone.  Returns None on the input axis.
    """
    if weights.on_input:
        return None
    inc = increment(weights)
    if inc.numel() != bias.numel():
        raise ShapeMismatchError(f"IA3 vector has {inc.numel()} entries, the bias {bias.numel()}")
    return bias.float() * inc.reshape(bias.shape)


def side_forward(weights: Ia3Weights, output_without_bias: torch.Tensor, strength: float = 1.0,
                 channel_axis: int = -1) -> torch.Tensor:
    """Residual Δy for an output-axis IA3: s·(v − 1) ⊙ (W·x), channels on ``channel_axis``."""
    if weights.on_input:
        raise ValueError("input-axis IA3 has no cheap side path; use the dense delta_weight")
    inc = increment(weights).to(output_without_bias.dtype)
    shape = [1] * output_without_bias.dim()
    shape[channel_axis] = -1
    return output_without_bias * (inc.reshape(shape) * strength)
