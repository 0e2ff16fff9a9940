"""Applying a LoRA stack to a model and its text encoder: one pass, one decision per part.

For each enabled row with a non-zero strength the file is resolved by name
(``files``, the one name gate) and parsed ONCE, checked for NaN/Inf ONCE,
and resolved against each part ONCE.  The model's mode is decided ONCE
(merge, bypass, or auto → bypass for quantized/offloaded weights; a
strength schedule needs bypass), and its plan is built ONCE, in the form
that mode needs.  The text encoder always merges.  Disabled rows, strength
0 and an empty stack return the input objects themselves: no file is read,
nothing is cloned, and ComfyUI keeps its loaded weights.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Optional

from ..lora_core.blocks import make_multiplier
from ..lora_core.errors import ModelMismatchError, StackError
from ..lora_core.finite import check_file_finite
from ..lora_core.ir import CoverageReport, LoraFile
from ..lora_core.metadata import read_metadata
from ..lora_core.plan import build_plan
from ..lora_core.schedule import is_constant, strength_at
from ..lora_core.stack import LoraStack, StackEntry
from . import files, host
from .common import MODES

log = logging.getLogger("lora-patchbay")


@dataclass(frozen=True)
class Applied:
    """What applying a stack gave: the patched parts, and what the text outputs show."""
    model: Any
    clip: Any
    names: tuple[tuple[str, float, float], ...] = ()   # (LoRA name, model strength, clip strength) per row
    trigger_words: tuple[str, ...] = ()
    model_mode: Optional[str] = None                    # "merge" or "bypass" when the model was patched
    # (row index in the stack, "model" | "clip", coverage) per file and part, for the coverage route
    reports: tuple[tuple[int, str, CoverageReport], ...] = ()


@dataclass(frozen=True)
class _Row:
    index: int
    entry: StackEntry
    lora: LoraFile


def _scheduled(entry: StackEntry) -> bool:
    return entry.schedule is not None and not is_constant(entry.schedule)


def _row_strength(entry: StackEntry, part: str) -> float:
    """The row's strength on ``part``; a constant schedule folds into it."""
    if part == "clip":
        return float(entry.strength_clip)
    s = float(entry.strength_model)
    if entry.schedule is not None and is_constant(entry.schedule):
        s *= strength_at(entry.schedule, 0.0)
    return s


def _family_error(entry: StackEntry, report: CoverageReport, part: str) -> ModelMismatchError:
    fam = f" (it looks made for {report.lora_family})" if report.lora_family else ""
    model = f" the {report.model_family} model" if report.model_family else f" this {part}"
    return ModelMismatchError(f"LoRA {entry.lora!r}{fam} matches nothing in{model}", file=report.file,
                              fix="pick a LoRA made for this model, or check the model input")


def _load_rows(stack: LoraStack, rows: list[tuple[int, StackEntry]]) -> list[_Row]:
    loaded = []
    for i, entry in rows:
        path = files.resolve_path(entry.lora, entry.file_hash, index=i if len(stack.entries) > 1 else None)
        lora = files.load(path)
        check_file_finite(lora)
        loaded.append(_Row(i, entry, lora))
    return loaded


def _decide_model_mode(mode: str, patcher, reports: list[CoverageReport], scheduled: bool) -> str:
    """merge or bypass, decided once for the model part."""
    if mode == "auto":
        keys = [k for r in reports for m in r.matched for k in (m.weight_key, m.bias_key) if k]
        mode = "bypass" if host.HAS_INJECTIONS and host.prefers_bypass(patcher, keys) else "merge"
    if mode == "bypass" and not host.HAS_INJECTIONS:
        log.warning("[LoRA Patchbay] this ComfyUI cannot run bypass mode; merging instead")
        return "merge"
    if mode == "merge" and scheduled and host.HAS_INJECTIONS:
        log.info("[LoRA Patchbay] strength schedules run in bypass mode")
        return "bypass"
    return mode


def _apply_model(model, rows: list[_Row], reports: list[CoverageReport], mode: str):
    multipliers = [make_multiplier(r.entry.block_weights, rep.model_family) if r.entry.block_weights else None
                   for r, rep in zip(rows, reports)]
    strengths = [_row_strength(r.entry, "model") for r in rows]
    if mode == "bypass":
        # side paths read live strengths per entry: the plan carries strength 1 (block multipliers only)
        plan = build_plan([(rep, 1.0, mul) for rep, mul in zip(reports, multipliers)])
        out = host.bypass_into(model, plan, dict(enumerate(strengths)))
        if any(_scheduled(r.entry) for r in rows):
            host.attach_schedules(out, [(r.entry.strength_model, r.entry.schedule if _scheduled(r.entry) else None)
                                        for r in rows])
        return out
    plan = build_plan([(rep, s, mul) for rep, s, mul in zip(reports, strengths, multipliers)])
    return host.merge_into(model, plan) if plan else model


def _apply_clip(clip, rows: list[_Row], reports: list[CoverageReport]):
    plan = build_plan([(rep, _row_strength(r.entry, "clip"),
                        make_multiplier(r.entry.block_weights, rep.model_family) if r.entry.block_weights else None)
                       for r, rep in zip(rows, reports)])
    return host.merge_into_clip(clip, plan) if plan else clip


def _trigger_words(rows: list[_Row]) -> tuple[str, ...]:
    words: list[str] = []
    try:
        for r in rows:
            for w in read_metadata(r.lora.metadata).trigger_words:
                if w not in words:
                    words.append(w)
    except Exception as ex:  # metadata is a convenience; never fail a run for it
        log.warning("[LoRA Patchbay] trigger words unavailable: %s", ex)
    return tuple(words)


def apply_stack(model, clip, stack: LoraStack, mode: str = "merge") -> Applied:
    """Apply every enabled row of ``stack`` to ``model`` and (when given) ``clip``."""
    if mode not in MODES:
        raise StackError(f"unknown mode {mode!r}; use one of {', '.join(MODES)}")
    want_model, want_clip = model is not None, clip is not None
    picked = [(i, e) for i, e in enumerate(stack.entries)
              if e.enabled and ((want_model and e.strength_model != 0.0) or (want_clip and e.strength_clip != 0.0))]
    if not picked:
        return Applied(model, clip)
    rows = _load_rows(stack, picked)
    model_rows = [r for r in rows if want_model and r.entry.strength_model != 0.0]
    clip_rows = [r for r in rows if want_clip and r.entry.strength_clip != 0.0]
    model_reports = [host.resolve_for(r.lora, model) for r in model_rows]
    clip_reports = [host.resolve_for(r.lora, host.clip_patcher(clip)) for r in clip_rows] if clip_rows else []

    matched: dict[int, bool] = {r.index: False for r in rows}
    first_report: dict[int, tuple[str, CoverageReport]] = {}
    for part, part_rows, reports in (("model", model_rows, model_reports), ("clip", clip_rows, clip_reports)):
        for r, report in zip(part_rows, reports):
            files.log_coverage(report, part)
            matched[r.index] = matched[r.index] or bool(report.matched)
            first_report.setdefault(r.index, (part, report))
    for r in rows:
        if not matched[r.index]:
            part, report = first_report[r.index]
            if part == "model" and not want_clip and report.elsewhere:
                raise ModelMismatchError(f"LoRA {r.entry.lora!r} only changes the text encoder",
                                         file=report.file, fix="connect a CLIP input")
            raise _family_error(r.entry, report, part)

    out_model, out_clip, model_mode = model, clip, None
    if model_rows:
        model_mode = _decide_model_mode(mode, model, model_reports, any(_scheduled(r.entry) for r in model_rows))
        out_model = _apply_model(model, model_rows, model_reports, model_mode)
    if clip_rows:
        out_clip = _apply_clip(clip, clip_rows, clip_reports)
    names = tuple((r.entry.lora, r.entry.strength_model if want_model else 0.0,
                   r.entry.strength_clip if want_clip else 0.0) for r in rows)
    reports = tuple((r.index, part, rep) for part, part_rows, part_reports in
                    (("model", model_rows, model_reports), ("clip", clip_rows, clip_reports))
                    for r, rep in zip(part_rows, part_reports))
    return Applied(out_model, out_clip, names, _trigger_words(rows), model_mode, reports)
