"""Spreading a 1/k reference latent over the full latent grid."""
from __future__ import annotations

import torch

from .errors import ICLoraError


def dilate_latent(small: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Place ``small`` (B, C, F, h/k, w/k) on every k-th cell of a zero (B, C, F, h, w) grid.

    Returns ``(dilated, guide_mask)``; the mask (B, 1, F, h, w) is 1.0 at real
    cells (rows and columns 0, k, 2k, …) and −1.0 at filler cells, whose
    tokens the model drops.  For k = 1 the latent is returned as is, mask None.
    """
    if k == 1:
        return small, None
    if k < 1:
        raise ICLoraError(f"dilation factor must be ≥ 1, got {k}")
    if small.ndim != 5:
        raise ICLoraError(f"expected a 5-D video latent (B, C, F, H, W), got shape {tuple(small.shape)}")
    b, c, f, hs, ws = small.shape
    dilated = torch.zeros((b, c, f, hs * k, ws * k), dtype=small.dtype, device=small.device)
    dilated[:, :, :, ::k, ::k] = small
    mask = torch.full((b, 1, f, hs * k, ws * k), -1.0, dtype=torch.float32, device=small.device)
    mask[:, :, :, ::k, ::k] = 1.0
    return dilated, mask
