"""Packed audio-video latents (LTX-2): the video part of a flat sampler latent.

A sampler that runs a combined latent flattens each part and joins them:
``flat = cat([p.reshape(B, 1, -1) for p in parts], dim=-1)`` with
``shapes = [p.shape for p in parts]``, video first.  Guides live on the
video part only (appended along its time axis, dim 2); the audio part is
never touched.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch

from .errors import ICLoraError


def split_packed(flat: torch.Tensor, shapes: Sequence[Sequence[int]]) -> list[torch.Tensor]:
    """The parts of a flat (B, 1, N) latent, each reshaped to (B, *shape[1:])."""
    sizes = [math.prod(s[1:]) for s in shapes]
    if flat.ndim != 3 or flat.shape[-1] != sum(sizes):
        raise ICLoraError(f"packed latent of shape {tuple(flat.shape)} does not hold parts of shapes "
                          f"{[tuple(s) for s in shapes]}")
    chunks = torch.split(flat, sizes, dim=-1)
    return [c.reshape(flat.shape[0], *s[1:]) for c, s in zip(chunks, shapes)]


def pack(parts: Sequence[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Size]]:
    """``(flat, shapes)``: the parts flattened to (B, 1, ·) and joined on the last axis."""
    return torch.cat([p.reshape(p.shape[0], 1, -1) for p in parts], dim=-1), [p.shape for p in parts]


def video_frames(shapes: Sequence[Sequence[int]]) -> int | None:
    """Latent frames of the packed video part (None when part 0 is not a 5-D video latent)."""
    return int(shapes[0][2]) if shapes and len(shapes[0]) == 5 else None


def crop_packed_video(flat: torch.Tensor, shapes: Sequence[Sequence[int]],
                      keep_frames: int) -> tuple[torch.Tensor, list[torch.Size]]:
    """The flat latent with its video part cut to the first ``keep_frames`` frames; other parts unchanged."""
    video, *rest = split_packed(flat, shapes)
    return pack([video[:, :, :keep_frames], *rest])


def select_packed_video(flat: torch.Tensor, shapes: Sequence[Sequence[int]],
                        frames: torch.Tensor) -> tuple[torch.Tensor, list[torch.Size]]:
    """The flat latent with only the video frames ``frames`` (an index tensor) kept."""
    video, *rest = split_packed(flat, shapes)
    return pack([video.index_select(2, frames.to(video.device)), *rest])


def scatter_packed_video(full: torch.Tensor, shapes: Sequence[Sequence[int]], run: torch.Tensor,
                         run_shapes: Sequence[Sequence[int]], frames: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`select_packed_video` for a model output: ``full``'s video frames
    ``frames`` and every other part are taken from ``run``; the remaining video frames keep
    ``full``'s values."""
    video, *_ = split_packed(full.to(run.dtype), shapes)
    run_video, *run_rest = split_packed(run, run_shapes)
    video = video.clone()
    video[:, :, frames.to(video.device)] = run_video
    return pack([video, *run_rest])[0]
