"""Noise masks for appended guides.

The sampler keeps a cell clean where the mask is 0, denoises it fully where
it is 1, and the LTX model drops tokens whose mask is negative.
"""
from __future__ import annotations

import torch

from .errors import ICLoraError


def base_noise_mask(batch: int, frames: int, existing: torch.Tensor | None = None,
                    device=None) -> torch.Tensor:
    """The latent's own mask: a clone of ``existing`` or ones (B, 1, F, 1, 1)."""
    if existing is not None:
        m = existing.clone()
        if m.ndim != 5:
            raise ICLoraError(f"the latent's noise_mask must be 5-D (B, 1, F, H, W), got {tuple(m.shape)}",
                              fix="remove the noise mask node before the guide or make it a video mask")
        if m.shape[2] != frames:
            raise ICLoraError(f"the latent's noise_mask has {m.shape[2]} frames but the latent has {frames}",
                              fix="set the noise mask after all frame-changing nodes")
        return m
    return torch.ones((batch, 1, frames, 1, 1), dtype=torch.float32, device=device)


def guide_noise_mask(base: torch.Tensor, guide_frames: int, strength: float,
                     guide_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask part for an appended guide; returns ``(base, guide_part)``.

    * no dilation: ``max(0, 1 − s)`` with the base mask's spatial shape;
    * dilation (``guide_mask`` given, 1 real / −1 filler): base is expanded
      to the full grid if it is (1, 1), and the part is ``guide_mask − s``.
      Real cells get 1 − s, fillers −1 − s (< 0, dropped by the model).
      ``s`` must be ≤ 1 here, otherwise real cells would be dropped too.
    """
    if not 0.0 <= strength <= 1.0:
        raise ICLoraError(f"guide strength must be between 0 and 1, got {strength}",
                          fix="use attention strength to weaken or amplify a guide")
    if guide_mask is None:
        part = torch.full((base.shape[0], 1, guide_frames, base.shape[3], base.shape[4]),
                          max(0.0, 1.0 - strength), dtype=base.dtype, device=base.device)
        return base, part
    h, w = guide_mask.shape[3], guide_mask.shape[4]
    if base.shape[3] == 1 and base.shape[4] == 1:
        base = base.expand(-1, -1, -1, h, w).clone()
    elif (base.shape[3], base.shape[4]) != (h, w):
        raise ICLoraError(f"the latent's noise mask is {base.shape[3]}×{base.shape[4]} but the latent grid "
                          f"is {h}×{w}", fix="use a noise mask at latent resolution or none")
    part = (guide_mask.to(base.dtype) - strength)
    if part.shape[0] != base.shape[0]:
        if part.shape[0] == 1:
            part = part.expand(base.shape[0], -1, -1, -1, -1)
        elif base.shape[0] == 1:
            base = base.expand(part.shape[0], -1, -1, -1, -1).clone()
    return base, part.to(base.device)
