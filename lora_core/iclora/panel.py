"""In-context panels for image models (Flux-style IC-LoRA).

A reference image and one or more targets share a canvas.  Panel 0 holds
the reference; the others are generated.  The noise mask keeps the
reference panel (0) and denoises the targets (1); the crop returns the
target panels as a batch, in panel order.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

from .errors import ICLoraError

LAYOUTS = ("side-by-side", "top-bottom", "grid")


@dataclass(frozen=True)
class PanelLayout:
    layout: str
    panel_width: int
    panel_height: int
    cols: int
    rows: int
    panels: int                       # panels in use (reference + targets)
    rects: tuple[tuple[int, int, int, int], ...]  # (x, y, w, h) per panel, pixels
    reference: int = 0

    @property
    def canvas_width(self) -> int:
        return self.cols * self.panel_width

    @property
    def canvas_height(self) -> int:
        return self.rows * self.panel_height

    @property
    def targets(self) -> tuple[int, ...]:
        return tuple(i for i in range(self.panels) if i != self.reference)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["rects"] = [list(r) for r in self.rects]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "PanelLayout":
        d = dict(d)
        d["rects"] = tuple(tuple(r) for r in d["rects"])
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


def panel_layout(layout: str, width: int, height: int, panels: int = 2, multiple: int = 16) -> PanelLayout:
    """Canvas geometry for ``panels`` panels of ``width``×``height`` pixels.

    side-by-side: 2 panels in a row (reference left); top-bottom: 2 panels in
    a column (reference top); grid: ``cols = ceil(√N)``, ``rows = ceil(N/cols)``,
    filled row by row.  Unused grid cells stay part of the kept area.
    """
    if layout not in LAYOUTS:
        raise ICLoraError(f"unknown panel layout {layout!r}", fix=f"use one of {', '.join(LAYOUTS)}")
    if width % multiple or height % multiple or width <= 0 or height <= 0:
        raise ICLoraError(f"panel size {width}×{height} must be positive multiples of {multiple} pixels",
                          fix=f"round width and height to a multiple of {multiple}")
    if layout == "side-by-side":
        cols, rows, n = 2, 1, 2
    elif layout == "top-bottom":
        cols, rows, n = 1, 2, 2
    else:
        if panels < 2:
            raise ICLoraError(f"a grid needs at least 2 panels (reference + target), got {panels}")
        n = panels
        cols = math.ceil(math.sqrt(n))
        rows = math.ceil(n / cols)
    rects = tuple(((i % cols) * width, (i // cols) * height, width, height) for i in range(n))
    return PanelLayout(layout=layout, panel_width=width, panel_height=height, cols=cols, rows=rows,
                       panels=n, rects=rects)


def panel_noise_mask(lay: PanelLayout, divisor: int = 1) -> torch.Tensor:
    """(H, W) mask at canvas resolution / ``divisor``: 1 on targets, 0 elsewhere."""
    m = torch.zeros((lay.canvas_height // divisor, lay.canvas_width // divisor), dtype=torch.float32)
    for i in lay.targets:
        x, y, w, h = (v // divisor for v in lay.rects[i])
        m[y:y + h, x:x + w] = 1.0
    return m


def crop_panels(t: torch.Tensor, lay: PanelLayout, *, channels_last: bool) -> torch.Tensor:
    """Cut the target panels out of canvas tensors and stack them on the batch axis.

    ``t`` is an IMAGE (B, H, W, C) with ``channels_last`` or a latent
    (B, C, H, W); its spatial size may be the canvas divided by an integer
    (latents are 1/8).  Output batch = B × targets, panel-major.
    """
    hh, ww = (t.shape[1], t.shape[2]) if channels_last else (t.shape[-2], t.shape[-1])
    if lay.canvas_height % hh or lay.canvas_width % ww or lay.canvas_height // hh != lay.canvas_width // ww:
        raise ICLoraError(f"cannot crop panels: tensor is {hh}×{ww} but the canvas is "
                          f"{lay.canvas_height}×{lay.canvas_width}",
                          fix="crop right after sampling or decoding, before resizing")
    d = lay.canvas_height // hh
    outs = []
    for i in lay.targets:
        x, y, w, h = (v // d for v in lay.rects[i])
        outs.append(t[:, y:y + h, x:x + w, :] if channels_last else t[..., y:y + h, x:x + w])
    return torch.cat(outs, dim=0)
