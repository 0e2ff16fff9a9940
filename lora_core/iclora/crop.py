"""Counting and removing appended guide frames.

Every guide node records what it appended (:class:`GuideRecord`), so the
crop never has to guess from positions: two guides starting on the same
frame, or a guide placed from a negative index, are counted exactly.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from .errors import ICLoraError


@dataclass(frozen=True)
class GuideRecord:
    """One appended guide.

    ``offset`` is the guide's first frame counted from the end of the
    original timeline (0 = first appended frame); ``tokens`` the number of
    ``keyframe_idxs`` tokens it added (F_g·h·w).
    """
    frame_idx: int
    latent_idx: int
    frames: int
    offset: int
    tokens: int
    k: int = 1
    strength: float = 1.0
    attention_strength: float = 1.0
    start_percent: float = 0.0
    end_percent: float = 1.0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "GuideRecord":
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


def count_appended_frames(records=None, *, keyframe_tokens: int | None = None,
                          tokens_per_frame: int | None = None, entries=None) -> int:
    """How many latent frames guides appended.

    Order of trust: our own records (sum of ``frames``); else the
    ``keyframe_idxs`` token count ÷ tokens per latent frame; else the sum of
    ``latent_shape[0]`` of attention entries; else 0.
    """
    if records:
        return sum(int(r.frames if isinstance(r, GuideRecord) else r["frames"]) for r in records)
    if keyframe_tokens is not None and tokens_per_frame:
        if keyframe_tokens % tokens_per_frame:
            raise ICLoraError(
                f"{keyframe_tokens} guide tokens are not a whole number of latent frames of "
                f"{tokens_per_frame} tokens", fix="crop the guides before resizing or upscaling the latent")
        return keyframe_tokens // tokens_per_frame
    if entries:
        return sum(int(e["latent_shape"][0]) for e in entries)
    return 0


def crop_guides(samples: torch.Tensor, count: int, noise_mask: torch.Tensor | None = None,
                base_frames: int | None = None):
    """Remove ``count`` appended frames from the end of ``samples`` (and the mask).

    If ``base_frames`` is given and ``samples`` already has exactly that many
    frames (it was cropped automatically), only the mask is cropped.
    Returns ``(samples, noise_mask)``.
    """
    if count < 0:
        raise ICLoraError(f"cannot crop a negative number of frames ({count})")
    total = samples.shape[2]
    if base_frames is not None and total == base_frames:
        s = samples
    else:
        if base_frames is not None and total != base_frames + count:
            raise ICLoraError(
                f"the latent has {total} frames, expected {base_frames + count} (video {base_frames} + "
                f"guides {count}) or {base_frames}",
                fix="crop the guides directly after sampling, before any node that changes the latent length")
        if count > total - 1:
            raise ICLoraError(f"cannot crop {count} guide frames from a latent of {total} frames")
        s = samples[:, :, :total - count] if count else samples
    m = noise_mask
    if m is not None and m.ndim == 5 and m.shape[2] > s.shape[2]:
        m = m[:, :, :s.shape[2]]
    return s, m


def keep_index_for_window(base_frames: int, records, active) -> tuple[list[int], list[bool]]:
    """Frames and guides to keep when some guides are outside their step window.

    ``active[i]`` says whether guide ``records[i]`` is present at this step.
    Returns (latent frame indices to keep, per-guide keep flags); the video's
    own frames are always kept.  Guides are laid out in record order.
    """
    keep = list(range(base_frames))
    for rec, on in zip(records, active):
        r = rec if isinstance(rec, GuideRecord) else GuideRecord.from_dict(rec)
        if on:
            keep.extend(range(base_frames + r.offset, base_frames + r.offset + r.frames))
    return keep, list(active)


def step_active(step: int, total_steps: int, start_percent: float, end_percent: float) -> bool:
    """Is a guide present at sampling step ``step`` (0-based) of ``total_steps``?

    The step's position is ``step / total_steps`` (always < 1); a guide is
    present when ``start ≤ position < end``.
    Example: 10 steps, window 0.2–0.6 → steps 2, 3, 4, 5; window 0–1 → all.
    """
    if total_steps <= 0:
        return True
    pos = step / total_steps
    return start_percent <= pos < end_percent


def next_record(records, plan, **extra) -> GuideRecord:
    """The record for a guide planned with ``plan`` appended after ``records``."""
    offset = count_appended_frames(records)
    return GuideRecord(frame_idx=plan.frame_idx, latent_idx=plan.latent_idx, frames=plan.latent_frames,
                       offset=offset, tokens=plan.tokens, k=plan.k, **extra)


# ----------------------------------------------------------------- per-step selection

def step_of_sigma(sigmas: torch.Tensor, sigma: torch.Tensor) -> tuple[int, int]:
    """(step, number of steps) of the model call at ``sigma`` in the schedule ``sigmas``.

    The step is the index of the nearest sigma; a schedule of n+1 sigmas has
    n steps (at least 1).
    """
    s = sigmas.to(sigma.device, torch.float32)
    step = int(torch.argmin((s - sigma.flatten()[0].float()).abs()))
    return step, max(len(s) - 1, 1)


def guides_active(records, step: tuple[int, int] | None) -> list[bool]:
    """Per guide: is it present at ``step`` (``(step, steps)``, None = unknown: all present)?"""
    recs = [r if isinstance(r, GuideRecord) else GuideRecord.from_dict(r) for r in records]
    if step is None:
        return [True] * len(recs)
    return [step_active(step[0], step[1], r.start_percent, r.end_percent) for r in recs]


@dataclass(frozen=True)
class WindowSelection:
    """What one model call keeps when some guides are outside their step window.

    ``frames``: latent frame indices along time (the video's own frames, then
    each present guide's frames, :func:`keep_index_for_window`); ``tokens``:
    indices into the guides' ``keyframe_idxs`` tokens (guides laid out in
    record order, ``tokens`` each); ``guides``: indices of the present guides
    (for their attention entries).
    """
    frames: tuple[int, ...]
    tokens: tuple[int, ...]
    guides: tuple[int, ...]


def window_selection(base_frames: int, records, active) -> WindowSelection:
    """The frames, keyframe tokens and guides kept at a step (see :class:`WindowSelection`)."""
    recs = [r if isinstance(r, GuideRecord) else GuideRecord.from_dict(r) for r in records]
    frames, _ = keep_index_for_window(base_frames, recs, active)
    tokens: list[int] = []
    guides: list[int] = []
    start = 0
    for i, (r, on) in enumerate(zip(recs, active)):
        if on:
            tokens.extend(range(start, start + r.tokens))
            guides.append(i)
        start += r.tokens
    return WindowSelection(tuple(frames), tuple(tokens), tuple(guides))


def present_guide_weights(records, active, stored, height: int, width: int) -> list[torch.Tensor]:
    """Attention weights (one 1-D tensor per present guide, F·(h/k)·(w/k) tokens each).

    ``stored[i]`` is guide i's mask-derived weights or None, in which case
    its ``attention_strength`` applies to every token.
    """
    recs = [r if isinstance(r, GuideRecord) else GuideRecord.from_dict(r) for r in records]
    stored = list(stored or [None] * len(recs))
    out = []
    for i, (r, on) in enumerate(zip(recs, active)):
        if not on:
            continue
        wt = stored[i] if i < len(stored) else None
        if wt is None:
            wt = torch.full((r.frames * (height // r.k) * (width // r.k),), float(r.attention_strength))
        out.append(wt)
    return out
