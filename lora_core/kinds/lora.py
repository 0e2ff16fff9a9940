"""Plain LoRA / LoCon (with Tucker ``lora_mid``).

    ΔW = up · down                       (linear; conv flattened over kernel dims)
    ΔW = einsum(up, mid, down)           (Tucker conv: up (o,r), mid (r,r,k…), down (r,i))
    side path: h(x) = up(down(x))        (down runs as the conv with the layer's stride/padding)
"""
from __future__ import annotations

import torch

from ..ir import LoraWeights


def factors(weights: LoraWeights, shape: torch.Size | tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, A) in fp32 with ``ΔW.flatten(1) == B @ A``; B (out, r), A (r, in·k·k).

    A Tucker core is contracted into A, so every LoRA becomes one B·A pair and
    a stack can be rank-concatenated into a single GEMM.
    """
    up = weights.up.float().flatten(1)
    down = weights.down.float()
    if weights.mid is not None:
        mid = weights.mid.float()
        down2 = down.flatten(1)  # (r, in) from (r, in, 1, …)
        # ΔW[o,i,k…] = Σ_ab up[o,a]·mid[a,b,k…]·down[b,i]; any number of kernel dims.
        a = torch.einsum("ab...,bi->ai...", mid, down2).flatten(1)
    else:
        a = down.flatten(1)
    return up, a


def delta_weight(weights: LoraWeights, base: torch.Tensor) -> torch.Tensor:
    """ΔW at scale 1 in fp32, shaped like ``base``."""
    b, a = factors(weights, base.shape)
    return (b @ a).reshape(base.shape)
