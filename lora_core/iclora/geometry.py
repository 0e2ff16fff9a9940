"""Timeline geometry of an LTX-style guide: trimming, index resolution,
snapping, the causal first-frame fix and the placement check.

Units: *pixel frames* are frames of the decoded video; *latent frames* are
time steps of the latent.  With the causal VAE (time factor t = 8), latent
frame 0 encodes pixel frame 0 and latent frame j ≥ 1 encodes pixel frames
8(j−1)+1 … 8j.  A video of N = 8n+1 frames has n+1 latent frames.
"""
from __future__ import annotations

from dataclasses import dataclass

from .errors import ICLoraError

VAE_SCALE = (8, 32, 32)  # (time, height, width) compression of the LTX VAE


def trim_to_8n1(n_frames: int, t: int = VAE_SCALE[0]) -> int:
    """Largest ``t·n + 1`` not above ``n_frames`` (1 → 1, 8 → 1, 9 → 9, 16 → 9, 17 → 17)."""
    if n_frames < 1:
        raise ICLoraError("The guide has no frames", fix="connect an IMAGE with at least one frame")
    return ((n_frames - 1) // t) * t + 1


def latent_frames_for_pixels(n_frames: int, t: int = VAE_SCALE[0]) -> int:
    """Latent frames a causal VAE makes from ``n_frames`` pixel frames: (N−1)//t + 1."""
    return (n_frames - 1) // t + 1


def pixel_frames_for_latent(latent_frames: int, t: int = VAE_SCALE[0]) -> int:
    """Pixel frames a latent of F frames decodes to: (F−1)·t + 1."""
    return (latent_frames - 1) * t + 1


def resolve_frame_idx(frame_idx: int, base_latent_frames: int, t: int = VAE_SCALE[0]) -> int:
    """Negative indices count from the end of the original timeline.

    −1 is the last pixel frame: ``max((F₀−1)·t + 1 + frame_idx, 0)``.
    """
    if frame_idx >= 0:
        return frame_idx
    return max(pixel_frames_for_latent(base_latent_frames, t) + frame_idx, 0)


def snap_frame_idx(frame_idx: int, guide_pixel_frames: int, t: int = VAE_SCALE[0]) -> int:
    """A multi-frame guide must start at 0 or on a latent-frame boundary (1 mod t).

    Non-zero indices are snapped down to ``((i−1)//t)·t + 1``; single frames
    are never snapped.
    """
    if guide_pixel_frames > 1 and frame_idx != 0:
        return ((frame_idx - 1) // t) * t + 1
    return frame_idx


def latent_index_for(frame_idx: int, t: int = VAE_SCALE[0]) -> int:
    """Latent frame that holds pixel frame ``frame_idx``: ceil(i / t)."""
    return (frame_idx + t - 1) // t


@dataclass(frozen=True)
class GuidePlan:
    """Everything decided about one guide before any pixel is touched.

    ``source_frames`` lists the guide's pixel frames to encode, in order
    (with the duplicated first frame when the causal fix applies), and
    ``drop_first_latent`` says to discard the first encoded latent frame.
    """
    frame_idx: int            # resolved and snapped pixel frame of the first guide frame
    latent_idx: int           # latent frame of the target timeline it lies over
    causal: bool              # True: first guide latent is a 1-frame causal latent
    source_frames: tuple[int, ...]
    drop_first_latent: bool
    latent_frames: int        # latent frames appended (F_g)
    k: int                    # spatial reference downscale factor
    encode_width: int         # pixel size to encode at (full size / k)
    encode_height: int
    latent_height: int        # full latent grid the guide is dilated onto
    latent_width: int

    @property
    def tokens(self) -> int:
        """Tokens the guide adds before fillers are removed: F_g·h·w."""
        return self.latent_frames * self.latent_height * self.latent_width


def plan_guide(*, guide_frames: int, frame_idx: int, base_latent_frames: int, latent_height: int,
               latent_width: int, k: int = 1, scale: tuple[int, int, int] = VAE_SCALE,
               causal_fix: bool = True) -> GuidePlan:
    """Plan one guide.

    ``guide_frames`` is the raw number of frames given, ``base_latent_frames``
    (F₀) the length of the timeline without earlier guides.  Raises
    :class:`ICLoraError` if the guide cannot be placed.  ``causal_fix=False``
    reproduces hosts that lack the mid-video fix (for comparisons only).
    """
    t, sh, sw = scale
    if not isinstance(k, int) or k < 1:
        raise ICLoraError(f"reference_downscale_factor must be an integer ≥ 1, got {k!r}",
                          fix="check the IC-LoRA parameters")
    if base_latent_frames < 1:
        raise ICLoraError("The latent has no frames of its own to guide",
                          fix="connect the video latent, not one that holds only guides")
    if latent_height % k or latent_width % k:
        raise ICLoraError(
            f"The latent grid {latent_height}×{latent_width} (pixels {latent_height * sh}×"
            f"{latent_width * sw}) is not divisible by the IC-LoRA reference_downscale_factor {k}",
            fix=f"use a width and height that are multiples of {sh * k} pixels")
    n_trim = trim_to_8n1(guide_frames, t)
    resolved = resolve_frame_idx(frame_idx, base_latent_frames, t)
    causal = (resolved == 0) or (n_trim == 1) or not causal_fix
    snapped = snap_frame_idx(resolved, n_trim, t)
    latent_idx = latent_index_for(snapped, t)
    if causal:
        source = tuple(range(n_trim))
        drop_first = False
        latent_frames = latent_frames_for_pixels(n_trim, t)
    else:
        # duplicate the first frame, keep 8n+1 frames, drop the first latent:
        # n latent frames, each standing for a full group of t pixel frames.
        source = (0,) + tuple(range(n_trim - 1))
        drop_first = True
        latent_frames = latent_frames_for_pixels(n_trim, t) - 1
    if latent_idx + latent_frames > base_latent_frames:
        raise ICLoraError(
            f"The guide does not fit in the timeline: it starts at pixel frame {snapped} (latent "
            f"frame {latent_idx}) and covers {latent_frames} latent frame(s), but the video has only "
            f"{base_latent_frames} latent frames ({pixel_frames_for_latent(base_latent_frames, t)} "
            f"pixel frames)",
            fix="use fewer guide frames, an earlier frame index, or a longer video latent")
    return GuidePlan(frame_idx=snapped, latent_idx=latent_idx, causal=causal, source_frames=source,
                     drop_first_latent=drop_first, latent_frames=latent_frames, k=k,
                     encode_width=latent_width * sw // k, encode_height=latent_height * sh // k,
                     latent_height=latent_height, latent_width=latent_width)
