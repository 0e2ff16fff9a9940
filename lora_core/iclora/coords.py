"""Token positions ("keyframe_idxs") of a guide, in pixel units.

Layout: (B, 3, tokens, 2) — axis 1 is (t, h, w), the last axis [start, end).
Tokens are ordered frame-major, then row, then column, one per latent cell
(patch size 1), like the LTX patchifier.
"""
from __future__ import annotations

import torch

from .geometry import VAE_SCALE


def latent_token_intervals(frames: int, height: int, width: int, batch: int = 1,
                           device=None) -> torch.Tensor:
    """Latent-unit intervals [i, i+1) of every cell, shape (B, 3, F·H·W, 2), int64."""
    ft, hh, ww = torch.meshgrid(torch.arange(frames, device=device), torch.arange(height, device=device),
                                torch.arange(width, device=device), indexing="ij")
    start = torch.stack([ft.reshape(-1), hh.reshape(-1), ww.reshape(-1)], dim=0)  # (3, T)
    coords = torch.stack([start, start + 1], dim=-1)  # (3, T, 2)
    return coords.unsqueeze(0).repeat(batch, 1, 1, 1)


def guide_keyframe_coords(*, latent_frames: int, latent_height: int, latent_width: int, frame_idx: int,
                          causal: bool, k: int = 1, scale: tuple[int, int, int] = VAE_SCALE,
                          batch: int = 1, device=None, intervals: bool = True) -> torch.Tensor:
    """Pixel positions of a (dilated) guide placed at pixel frame ``frame_idx``.

    * time: latent ×t; in causal mode shifted by ``max(x + 1 − t, 0)`` so frame 0
      spans [0, 1) and frame j spans [t(j−1)+1, tj+1); then + ``frame_idx``;
    * height/width: latent ×32, and for k > 1 the *end* grows by (k−1)·32 so
      the interval of a real cell covers the k×k area it represents.

    ``intervals=False`` returns the starts only, (B, 3, tokens), the layout of
    hosts whose LTX model uses start positions (ComfyUI v0.3.x).
    """
    t, sh, sw = scale
    lat = latent_token_intervals(latent_frames, latent_height, latent_width, batch, device)
    px = lat * torch.tensor([t, sh, sw], dtype=lat.dtype, device=lat.device).view(1, 3, 1, 1)
    if causal:
        px[:, 0] = (px[:, 0] + 1 - t).clamp(min=0)
    px[:, 0] += frame_idx
    if k > 1:
        px[:, 1, :, 1] += (k - 1) * sh
        px[:, 2, :, 1] += (k - 1) * sw
    return px if intervals else px[..., 0].contiguous()
