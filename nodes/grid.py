"""PatchbayXYGrid: images (or video frames) of a sweep → one labelled grid, or a labelled comparison video.

``INPUT_IS_LIST``: the images of every cell arrive together, whether they
came as a list (Strength Sweep: one sampler run per cell) or as one batch
(Batched Sweep: cells × images, cell by cell).  A cell of one image makes a
grid image; a cell of several images (video frames) makes a comparison video:
frame f of the output tiles frame f of every cell, an IMAGE batch that core's
video save nodes write.  The layout (labels, axis titles, each cell's stack)
comes from the sweep's ``grid`` output; without it the cells are numbered.
"""
from __future__ import annotations

import math
from dataclasses import replace

from ..lora_core.errors import ShapeMismatchError
from ..lora_core.grid import GridLayout, grid_image, grid_video, split_batch
from .common import CATEGORY


def _first(value, default=None):
    if isinstance(value, list):
        return value[0] if value else default
    return value if value is not None else default


def _cells(images: list, cells: int) -> list:
    if len(images) == cells:
        return images
    if len(images) == 1:
        return split_batch(images[0], cells)
    raise ShapeMismatchError(f"the grid has {cells} cells but {len(images)} image batches came in",
                             fix="connect the images of the sweep this grid layout came from")


def layout_for(count: int, layout, columns: int, title_x: str, title_y: str, labels: str, show_stack: bool,
               font_size: int) -> GridLayout:
    if layout is None:
        cols = columns if columns > 0 else max(1, math.ceil(math.sqrt(count)))
        layout = GridLayout(columns=cols, rows=max(1, math.ceil(count / cols)))
    elif columns > 0 and columns != layout.columns:
        raise ShapeMismatchError(f"columns is {columns} but the sweep's grid has {layout.columns}",
                                 fix="set columns to 0 to use the sweep's layout")
    changes = {"font_size": int(font_size)}
    if title_x.strip():
        changes["title_x"] = title_x.strip()
    if title_y.strip():
        changes["title_y"] = title_y.strip()
    if labels.strip():
        changes["labels_x"] = tuple(t.strip() for t in labels.split(","))
    if not show_stack:
        changes["cell_text"] = ()
    return replace(layout, **changes)


class PatchbayXYGrid:
    DESCRIPTION = ("Tiles a sweep's images into one labelled grid (axis titles, column and row labels, each "
                   "cell's stack as text). Video frames (several images per cell) become a labelled comparison "
                   "video: one grid per frame, as an IMAGE batch for the video save nodes.")
    CATEGORY = CATEGORY + "/sweeps"
    FUNCTION = "tile"
    INPUT_IS_LIST = True
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("image",)
    OUTPUT_TOOLTIPS = ("The grid (one image), or the comparison video (one grid per frame).",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "images": ("IMAGE", {"tooltip": "The sweep's images: a list (one per cell) or one batch."}),
                "font_size": ("INT", {"default": 16, "min": 6, "max": 96, "tooltip": "Label text height."}),
                "show_stack": ("BOOLEAN", {"default": True, "tooltip": "Write each cell's stack under it."}),
            },
            "optional": {
                "grid": ("PATCHBAY_GRID", {"tooltip": "The layout from Strength Sweep or Batched Sweep."}),
                "columns": ("INT", {"default": 0, "min": 0, "max": 256,
                                    "tooltip": "Columns when no grid layout is connected (0 = square)."}),
                "title_x": ("STRING", {"default": "", "tooltip": "Overrides the X axis title."}),
                "title_y": ("STRING", {"default": "", "tooltip": "Overrides the Y axis title."}),
                "labels": ("STRING", {"default": "", "tooltip": "Overrides the column labels (comma-separated)."}),
            },
        }

    def tile(self, images, font_size, show_stack, grid=None, columns=None, title_x=None, title_y=None,
             labels=None):
        imgs = list(images)
        layout = _first(grid)
        # without a layout a single batch is one cell per image; a list is one cell per item
        count = len(imgs) if len(imgs) > 1 else imgs[0].shape[0]
        layout = layout_for(count, layout, int(_first(columns, 0)), _first(title_x, ""), _first(title_y, ""),
                            _first(labels, ""), bool(_first(show_stack, True)), int(_first(font_size, 16)))
        cells = _cells(imgs, layout.cells)
        frames = max(c.shape[0] for c in cells)
        out = grid_image(cells, layout) if frames == 1 else grid_video(cells, layout)
        info = {"columns": layout.columns, "rows": layout.rows, "labels_x": list(layout.labels_x),
                "labels_y": list(layout.labels_y), "title_x": layout.title_x, "title_y": layout.title_y,
                "frames": int(out.shape[0])}
        return {"ui": {"patchbay_grid": [info]}, "result": (out,)}


NODE_CLASS_MAPPINGS = {"PatchbayXYGrid": PatchbayXYGrid}
NODE_DISPLAY_NAME_MAPPINGS = {"PatchbayXYGrid": "LoRA XY Grid"}
