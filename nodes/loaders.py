"""PatchbayLoraLoader, and the stack application shared with the stack nodes.

A stack becomes one plan per part (model, CLIP) and one registration on a
clone of each part (nodes/host.py).  Disabled rows, strength 0 and an empty
stack return the input objects themselves: no file is read, nothing is
cloned, and ComfyUI keeps its loaded weights.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Optional

from ..lora_core.errors import ModelMismatchError, StackError
from ..lora_core.ir import CoverageReport, LoraFile
from ..lora_core.plan import build_plan
from ..lora_core.stack import LoraStack, StackEntry
from . import files, host

log = logging.getLogger("lora-patchbay")

CATEGORY = "loaders/LoRA Patchbay"
MODE_TOOLTIP = ("merge: add the LoRA into the weights (fastest sampling). bypass: run the LoRA next to each "
                "layer without touching the weights (quantized/offloaded models, instant strength changes). "
                "auto: bypass for fp8/quantized/GGUF or offloaded models, merge otherwise.")
# A slider is only usable over a small range (the frontend clamps typed values
# to it too): ±4 covers ordinary LoRAs and "slider" LoRAs; stacks (JSON rows)
# accept any finite strength.
STRENGTH_LIMIT = 4.0


def strength_input(tooltip: str) -> tuple:
    return ("FLOAT", {"default": 1.0, "min": -STRENGTH_LIMIT, "max": STRENGTH_LIMIT, "step": 0.01,
                      "round": 0.001, "display": "slider", "tooltip": tooltip})


@dataclass
class Applied:
    """What a stack did: for the text outputs and the tests."""
    names: list[tuple[str, float, float]]
    trigger_words: list[str]


def _entry_strength(entry: StackEntry, part: str) -> float:
    s = entry.strength_model if part == "model" else entry.strength_clip
    if part == "model" and entry.schedule is not None and _constant(entry.schedule):
        from ..lora_core.schedule import strength_at
        s *= strength_at(entry.schedule, 0.0)
    return float(s)


def _constant(schedule) -> bool:
    from ..lora_core.schedule import is_constant
    return is_constant(schedule)


def _scheduled(entry: StackEntry) -> bool:
    return entry.schedule is not None and not _constant(entry.schedule)


def _part_plan(entries: list[tuple[int, StackEntry, LoraFile]], patcher, part: str, bypass_strengths: bool):
    """(plan, strengths, reports) for one part; strengths None in merge mode."""
    plan_entries, reports, strengths = [], [], {}
    for i, entry, lora in entries:
        s = _entry_strength(entry, part)
        report = host.resolve_for(lora, patcher)
        reports.append((i, entry, report))
        multiplier = _block_multiplier(entry, report)
        if bypass_strengths:
            strengths[len(plan_entries)] = s
            plan_entries.append((report, 1.0, multiplier))
        else:
            plan_entries.append((report, s, multiplier))
    return build_plan(plan_entries), strengths, reports


def _block_multiplier(entry: StackEntry, report: CoverageReport):
    """Per-key multiplier from the entry's block weights (lora_core.blocks)."""
    if entry.block_weights is None:
        return None
    from ..lora_core.blocks import make_multiplier
    return make_multiplier(entry.block_weights, report.model_family)


def _family_error(entry: StackEntry, report: CoverageReport, part: str) -> ModelMismatchError:
    fam = f" (it looks made for {report.lora_family})" if report.lora_family else ""
    model = f" the {report.model_family} model" if report.model_family else f" this {part}"
    return ModelMismatchError(f"LoRA {entry.lora!r}{fam} matches nothing in{model}", file=report.file,
                              fix="pick a LoRA made for this model, or check the model input")


def _mode_for(mode: str, patcher, plan) -> str:
    if mode == "auto":
        return "bypass" if host.HAS_INJECTIONS and host.prefers_bypass(patcher, plan) else "merge"
    if mode == "bypass" and not host.HAS_INJECTIONS:
        log.warning("[LoRA Patchbay] this ComfyUI cannot run bypass mode; merging instead")
        return "merge"
    return mode


def apply_stack(model, clip, stack: LoraStack, mode: str = "merge"):
    """Apply every enabled row; returns (model, clip, Applied)."""
    if mode not in host.MODES:
        raise StackError(f"unknown mode {mode!r}; use one of {', '.join(host.MODES)}")
    want_model = model is not None
    want_clip = clip is not None
    rows = [(i, e) for i, e in enumerate(stack.entries)
            if e.enabled and ((want_model and e.strength_model != 0.0) or (want_clip and e.strength_clip != 0.0))]
    if not rows:
        return model, clip, Applied([], [])
    loaded: list[tuple[int, StackEntry, LoraFile]] = []
    for i, entry in rows:
        path = files.resolve_path(entry.lora, entry.file_hash, index=i if len(stack.entries) > 1 else None)
        lora = files.load(path)
        host.check_finite(lora)
        loaded.append((i, entry, lora))

    out_model, out_clip = model, clip
    model_rows = [x for x in loaded if want_model and x[1].strength_model != 0.0]
    clip_rows = [x for x in loaded if want_clip and x[1].strength_clip != 0.0]
    matched_any: dict[int, bool] = {i: False for i, _, _ in loaded}
    reports_by_part = {}
    if model_rows:
        reports_by_part["model"] = [(i, e, host.resolve_for(l, model)) for i, e, l in model_rows]
    if clip_rows:
        reports_by_part["clip"] = [(i, e, host.resolve_for(l, clip.patcher)) for i, e, l in clip_rows]
    for part, reports in reports_by_part.items():
        for i, entry, report in reports:
            files.log_coverage(report, part)
            if report.matched:
                matched_any[i] = True
    for i, entry, lora in loaded:
        if not matched_any[i]:
            part = "model" if i in {x[0] for x in model_rows} else "clip"
            report = dict((x[0], x[2]) for x in reports_by_part.get(part, []))[i]
            if part == "model" and not clip_rows and report.elsewhere and not want_clip:
                raise ModelMismatchError(f"LoRA {entry.lora!r} only changes the text encoder",
                                         file=report.file, fix="connect a CLIP input")
            raise _family_error(entry, report, part)

    if model_rows:
        plan, _, _ = _part_plan(model_rows, model, "model", False)
        m = _mode_for(mode, model, plan)
        if m == "merge" and host.HAS_INJECTIONS and any(_scheduled(e) for _, e, _ in model_rows):
            log.info("[LoRA Patchbay] strength schedules run in bypass mode")
            m = "bypass"
        if m == "bypass":
            plan, strengths, _ = _part_plan(model_rows, model, "model", True)
            out_model = host.apply_plan(model, plan, "bypass", strengths)
            if any(_scheduled(e) for _, e, _ in model_rows):
                _attach_schedules(out_model, model_rows)
        elif plan:
            out_model = host.apply_plan(model, plan, "merge")
    if clip_rows:
        plan, _, _ = _part_plan(clip_rows, clip.patcher, "clip", False)
        if plan:
            out_clip = clip.clone()
            host.add_merge_patches(out_clip.patcher, plan)

    names = [(e.lora, e.strength_model if want_model else 0.0, e.strength_clip if want_clip else 0.0)
             for _, e, _ in loaded]
    words: list[str] = []
    try:
        from ..lora_core.metadata import read_metadata
        for _, e, lora in loaded:
            for w in read_metadata(lora.metadata).trigger_words:
                if w not in words:
                    words.append(w)
    except Exception as ex:  # metadata is a convenience; never fail a run for it
        log.warning("[LoRA Patchbay] trigger words unavailable: %s", ex)
    return out_model, out_clip, Applied(names, words)


def _attach_schedules(patcher, rows) -> None:
    try:
        from .schedule import attach_schedules
    except ImportError as e:
        log.warning("[LoRA Patchbay] strength schedules unavailable (%s); base strengths used", e)
        return
    attach_schedules(patcher, [(e.strength_model, e.schedule if _scheduled(e) else None) for _, e, _ in rows])


def lora_tag(name: str, strength: float, strength_clip: Optional[float] = None) -> str:
    stem = name.replace("\\", "/").rsplit("/", 1)[-1]
    for ext in (".safetensors", ".pt", ".ckpt", ".bin", ".pth"):
        if stem.lower().endswith(ext):
            stem = stem[: -len(ext)]
            break
    s = f"{strength:g}"
    if strength_clip is not None and strength_clip != strength:
        return f"<lora:{stem}:{s}:{strength_clip:g}>"
    return f"<lora:{stem}:{s}>"


class PatchbayLoraLoader:
    DESCRIPTION = ("Applies one LoRA to a model and (optionally) its text encoder. Strength 0 or disabled "
                   "returns the inputs untouched at no cost. The LoRA's keys are matched against this model "
                   "whatever the file's naming (kohya, PEFT/diffusers, LyCORIS, …); what does not apply is "
                   "reported in one log line.")
    CATEGORY = CATEGORY
    FUNCTION = "load"
    RETURN_TYPES = ("MODEL", "CLIP")
    RETURN_NAMES = ("model", "clip")
    OUTPUT_TOOLTIPS = ("The model with the LoRA applied.",
                       "The text encoder with the LoRA applied (None if no CLIP was connected).")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "The diffusion model the LoRA is applied to."}),
                "lora_name": (files.lora_names(), {"tooltip": "The LoRA file (models/loras)."}),
                "strength_model": strength_input("How strongly the LoRA changes the diffusion model. "
                                                 "0 = off; negative values invert it."),
                "strength_clip": strength_input("How strongly the LoRA changes the text encoder "
                                                "(ignored without a CLIP input)."),
                "enabled": ("BOOLEAN", {"default": True,
                                        "tooltip": "Off: the model and CLIP pass through untouched."}),
                "mode": (list(host.MODES), {"default": "merge", "tooltip": MODE_TOOLTIP}),
            },
            "optional": {
                "clip": ("CLIP", {"tooltip": "Optional text encoder; leave unconnected for model-only LoRAs."}),
            },
        }

    @classmethod
    def VALIDATE_INPUTS(cls, lora_name=None):
        if lora_name is None:  # linked from another node: checked when it runs
            return True
        err = files.validation_error(lora_name)
        return True if err is None else err

    def load(self, model, lora_name, strength_model, strength_clip, enabled, mode, clip=None):
        if not enabled:
            return (model, clip)
        stack = LoraStack((StackEntry(lora=lora_name, strength_model=float(strength_model),
                                      strength_clip=float(strength_clip)),))
        out_model, out_clip, _ = apply_stack(model, clip, stack, mode)
        return (out_model, out_clip)


NODE_CLASS_MAPPINGS = {"PatchbayLoraLoader": PatchbayLoraLoader}
NODE_DISPLAY_NAME_MAPPINGS = {"PatchbayLoraLoader": "LoRA Loader"}
