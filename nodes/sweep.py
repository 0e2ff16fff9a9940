"""Strength sweeps: PatchbayStrengthSweep (one model per value) and PatchbayBatchedSweep (one pass).

* Strength Sweep outputs ComfyUI LISTS (``OUTPUT_IS_LIST``): one model (and
  CLIP, label, seed) per cell, so a KSampler downstream runs once per cell.
  Each model is a clone of the input with the same Patchbay patch keys and
  only the swept row's strength changed, so the host's ΔW cache serves every
  weight the row does not touch and N values cost far less than N patches.
* Batched Sweep renders the cells in ONE sampling pass: bypass side paths
  with a per-sample strength vector (``host.with_per_sample_strengths``),
  and the input latent repeated once per cell with the same ``batch_index``
  so every sample starts from the noise of a single render.

Both also output a PATCHBAY_GRID layout (columns, rows, labels, titles, each
cell's stack as tags) for the XY Grid node.
"""
from __future__ import annotations

from typing import Optional

import torch

from ..lora_core.errors import SweepError
from ..lora_core.grid import GridLayout
from ..lora_core.stack import LoraStack
from ..lora_core.sweep import SweepAxis, SweepCell, SweepSpec, axis, parse_values
from ..lora_core.tags import format_tag
from . import host
from .apply import apply_stack
from .common import CATEGORY, MODE_TOOLTIP, MODES, as_stack, row_index

SWEEP_CATEGORY = CATEGORY + "/sweeps"
Y_AXES = ("none", "strength", "lora", "seed")
VALUES_TOOLTIP = ('The values, comma-separated ("0, 0.25, 0.5, 1"), or start:stop:count ("0:1:5"). '
                  "At most 256 per axis.")


def stack_tags(stack: LoraStack) -> str:
    return " ".join(format_tag(e.lora, e.strength_model, e.strength_clip) for e in stack.entries if e.enabled)


def grid_layout(spec: SweepSpec, stack: LoraStack, cells: tuple[SweepCell, ...]) -> GridLayout:
    title_x, title_y = spec.titles(stack)
    return GridLayout(columns=spec.columns, rows=spec.rows,
                      labels_x=tuple(spec.x.label(i) for i in range(spec.columns)),
                      labels_y=tuple(spec.y.label(i) for i in range(spec.rows)) if spec.y is not None else (),
                      title_x=title_x, title_y=title_y, cell_text=tuple(stack_tags(c.stack) for c in cells))


def _y_axis(stack: LoraStack, y_axis: str, y_row: int, y_values: str) -> Optional[SweepAxis]:
    if y_axis == "none":
        return None
    if y_axis not in Y_AXES:
        raise SweepError(f"unknown second axis {y_axis!r}; use one of {', '.join(Y_AXES)}")
    row = row_index(stack, y_row) if y_axis != "seed" else 0
    return axis(y_axis, y_values, row=row)


def _spec(stack: LoraStack, row: int, lora_name: str, values: str, part: str,
          y_axis: str = "none", y_row: int = 1, y_values: str = "") -> SweepSpec:
    x = axis("strength", values, row=row_index(stack, row, lora_name), part=part)
    return SweepSpec(x, _y_axis(stack, y_axis, y_row, y_values))


def validate_values(values=None, y_axis=None, y_values=None):
    """``VALIDATE_INPUTS`` of the sweep nodes: bad values fail at queue time, naming the limit."""
    try:
        if values is not None:
            parse_values(values, "strength")
        if y_axis not in (None, "none") and y_values is not None:
            parse_values(y_values, y_axis)
    except SweepError as e:
        return str(e)
    return True


def _inputs(batched: bool) -> dict:
    required = {
        "model": ("MODEL", {"tooltip": "The diffusion model the stack is applied to."}),
        "stack": ("LORA_STACK", {"tooltip": "The LoRA stack; one of its rows is swept."}),
        "row": ("INT", {"default": 1, "min": 1, "max": 999,
                        "tooltip": "Which stack row to sweep, counting from 1 (ignored when lora_name is set)."}),
        "lora_name": ("STRING", {"default": "", "tooltip": "Optional: pick the row by its LoRA name instead."}),
        "values": ("STRING", {"default": "0, 0.25, 0.5, 0.75, 1", "tooltip": VALUES_TOOLTIP}),
    }
    if batched:
        required["latent"] = ("LATENT", {"tooltip": "The latent to render; it is repeated once per cell."})
        required["part"] = (["model", "both"], {"default": "model", "tooltip":
                             "model: the sweep changes the diffusion model only. both: also the text encoder, "
                             "which one batch cannot do when a CLIP is connected (use Strength Sweep)."})
    else:
        required["part"] = (["both", "model", "clip"], {"default": "both", "tooltip":
                             "Which strengths of the row the values set: model and CLIP, or one of them."})
        required["mode"] = (list(MODES), {"default": "merge", "tooltip": MODE_TOOLTIP})
    optional = {
        "clip": ("CLIP", {"tooltip": "Optional text encoder (one per cell when CLIP strengths are swept)."}),
        "y_axis": ((["none", "strength"] if batched else list(Y_AXES)), {
            "default": "none", "tooltip": "A second axis for an X×Y sweep: another row's strength"
                                          + ("" if batched else ", another LoRA in that row, or seeds")}),
        "y_row": ("INT", {"default": 2, "min": 1, "max": 999, "tooltip": "The second axis' row (from 1)."}),
        "y_values": ("STRING", {"default": "", "tooltip": "The second axis' values (numbers, LoRA names or "
                                                          "seeds), comma-separated."}),
    }
    if not batched:
        optional["seed"] = ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF,
                                    "tooltip": "The seed output of every cell when seeds are not swept."})
    return {"required": required, "optional": optional}


class PatchbayStrengthSweep:
    DESCRIPTION = ("Sweeps one stack row's strength over a list of values (and optionally a second axis: another "
                   "row, another LoRA, or seeds). Outputs LISTS: one model, CLIP, label and seed per cell, so the "
                   "sampler after it runs once per cell; feed the images and 'grid' to XY Grid. Successive "
                   "strengths re-patch only the weights the row touches.")
    CATEGORY = SWEEP_CATEGORY
    FUNCTION = "sweep"
    RETURN_TYPES = ("MODEL", "CLIP", "STRING", "INT", "PATCHBAY_GRID")
    RETURN_NAMES = ("model", "clip", "label", "seed", "grid")
    OUTPUT_IS_LIST = (True, True, True, True, False)
    OUTPUT_TOOLTIPS = ("One model per cell (a list: downstream nodes run once per cell).",
                       "One text encoder per cell (None without a CLIP input).",
                       "Each cell's label.",
                       "Each cell's seed (connect to the sampler's seed for a seed axis).",
                       "The grid layout (labels, titles, stacks) for XY Grid.")

    @classmethod
    def INPUT_TYPES(cls):
        return _inputs(batched=False)

    @classmethod
    def VALIDATE_INPUTS(cls, values=None, y_axis=None, y_values=None):
        return validate_values(values, y_axis, y_values)

    def sweep(self, model, stack, row, lora_name, values, part, mode, clip=None, y_axis="none", y_row=2,
              y_values="", seed=0):
        stack = as_stack(stack)
        spec = _spec(stack, row, lora_name, values, part, y_axis, y_row, y_values)
        cells = spec.cells(stack, int(seed))
        applied: dict[LoraStack, tuple] = {}
        models, clips, labels, seeds = [], [], [], []
        for cell in cells:
            hit = applied.get(cell.stack)
            if hit is None:  # a seed axis reuses each stack's model: no re-patch between its cells
                a = apply_stack(model, clip, cell.stack, mode)
                hit = applied[cell.stack] = (a.model, a.clip)
            models.append(hit[0])
            clips.append(hit[1])
            labels.append(cell.label)
            seeds.append(int(cell.seed))
        return (models, clips, labels, seeds, grid_layout(spec, stack, cells))


def repeat_latent(latent: dict, cells: int) -> dict:
    """The latent repeated once per cell (cell-major); every copy keeps the noise of a single render."""
    samples = latent["samples"]
    b = samples.shape[0]
    out = {k: v for k, v in latent.items() if k not in ("samples", "batch_index", "noise_mask")}
    out["samples"] = torch.cat([samples] * cells, 0)
    index = latent.get("batch_index") or list(range(b))
    out["batch_index"] = list(index) * cells  # same index → same noise for every cell (prepare_noise)
    mask = latent.get("noise_mask")
    if mask is not None:
        out["noise_mask"] = torch.cat([mask] * cells, 0) if mask.shape[0] == b else mask
    return out


class PatchbayBatchedSweep:
    DESCRIPTION = ("The Strength Sweep in ONE sampling pass: the latent is repeated once per value and each "
                   "sample runs with its own strength of the swept row (bypass side paths with a per-sample "
                   "strength vector). Connect 'model' and 'latent' to one KSampler; the decoded batch goes to "
                   "XY Grid with 'grid'. Text-encoder strengths cannot differ per sample.")
    CATEGORY = SWEEP_CATEGORY
    FUNCTION = "sweep"
    RETURN_TYPES = ("MODEL", "CLIP", "LATENT", "PATCHBAY_GRID", "STRING")
    RETURN_NAMES = ("model", "clip", "latent", "grid", "labels")
    OUTPUT_TOOLTIPS = ("The model whose side paths run one strength per sample.",
                       "The text encoder with the stack at its own strengths (None without a CLIP input).",
                       "The input latent repeated once per cell (same noise for every cell).",
                       "The grid layout for XY Grid.",
                       "The cell labels, one per line.")

    @classmethod
    def INPUT_TYPES(cls):
        return _inputs(batched=True)

    @classmethod
    def VALIDATE_INPUTS(cls, values=None, y_axis=None, y_values=None):
        return validate_values(values, y_axis, y_values)

    def sweep(self, model, stack, row, lora_name, values, latent, part, clip=None, y_axis="none", y_row=2,
              y_values=""):
        stack = as_stack(stack)
        spec = _spec(stack, row, lora_name, values, "model" if part == "model" else "both", y_axis, y_row,
                     y_values)
        axes = [a for a in (spec.x, spec.y) if a is not None]
        if clip is not None and part != "model" and any(len(set(a.values)) > 1 for a in axes):
            raise SweepError("text-encoder strengths that differ per sample cannot share one conditioning",
                             fix="set part to 'model' (the text encoder keeps the stack's strength), or use "
                                 "Strength Sweep, which renders each cell on its own")
        if not host.HAS_INJECTIONS:
            raise SweepError("this ComfyUI cannot run bypass side paths, which the batched sweep needs",
                             fix="use Strength Sweep, or update ComfyUI")
        cells = spec.cells(stack)
        swept = [a.row for a in axes]
        # The swept rows run at strength 1 with the per-sample vector on top; the other rows as they are.
        base = stack
        for r in swept:
            base = base.with_entry(r, enabled=True, strength_model=1.0)
        applied = apply_stack(model, clip, base, "bypass")
        if applied.model_mode != "bypass":
            raise SweepError("the swept LoRA could not be installed as side paths", fix="use Strength Sweep")
        model_rows = [i for i, e in enumerate(base.entries) if e.enabled and e.strength_model != 0.0]
        offset = host.entry_offset(model)
        keys = [k for i, part_name, rep in applied.reports if part_name == "model" and i in swept
                for m in rep.matched for k in (m.weight_key, m.bias_key) if k]
        _, merged = host.bypass_supported_keys(model, keys)
        if merged:
            raise SweepError(f"{len(merged)} weights of the swept LoRA are on layers the side path cannot run "
                             f"(e.g. {merged[0]}), so they cannot change per sample",
                             fix="use Strength Sweep for this LoRA")
        batch = latent["samples"].shape[0]
        per_sample = {}
        for r in swept:
            entry = offset + model_rows.index(r)
            vals = [float(c.stack.entries[r].strength_model) for c in cells]
            per_sample[entry] = [v for v in vals for _ in range(batch)]
        out_model = host.with_per_sample_strengths(applied.model, per_sample)
        return (out_model, applied.clip, repeat_latent(latent, len(cells)), grid_layout(spec, stack, cells),
                "\n".join(c.label for c in cells))


NODE_CLASS_MAPPINGS = {
    "PatchbayStrengthSweep": PatchbayStrengthSweep,
    "PatchbayBatchedSweep": PatchbayBatchedSweep,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "PatchbayStrengthSweep": "LoRA Strength Sweep",
    "PatchbayBatchedSweep": "LoRA Batched Sweep (one pass)",
}
