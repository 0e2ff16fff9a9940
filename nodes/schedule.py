"""PatchbayLoraSchedule: a per-step strength schedule for one stack row, and
the per-step application on the bypass path.

The node only sets the row's ``schedule``.  Applying it needs the bypass
side path (merged weights cannot change per step without a full re-patch):
:func:`attach_schedules` adds an APPLY_MODEL wrapper to a patcher that
carries our bypass injection; before every model call it converts the
current sigma to a sampling fraction (inverting the model's own
``percent_to_sigma``, as core's hook keyframes do) and sets each scheduled
entry's live strength to ``base · strength_at(schedule, fraction)``.
"""
from __future__ import annotations

import logging
from typing import Optional, Sequence

from ..lora_core.schedule import (INTERPOLATIONS, format_schedule, parse_schedule, percent_for_sigma, ramp,
                                  strength_at)
from ..lora_core.stack import Schedule
from .blocks import CATEGORY, as_stack, row_index, row_inputs

log = logging.getLogger("lora-patchbay")

WRAPPER_KEY = "lora_patchbay_schedule"


class PatchbayLoraSchedule:
    """Set a strength schedule (keyframes over the sampling run) on one row of a LoRA stack."""

    CATEGORY = CATEGORY
    RETURN_TYPES = ("LORA_STACK", "STRING")
    RETURN_NAMES = ("lora_stack", "schedule")
    OUTPUT_TOOLTIPS = ("The stack with the row's schedule set.",
                       "The schedule as keyframe text (start:value, …).")
    FUNCTION = "execute"
    DESCRIPTION = (
        "Per-step strength for one LoRA in a stack: keyframes give a multiplier of the row's strength by "
        "sampling progress (0 = first step, 1 = end), e.g. '0:1, 0.5:0.3, 1:0'. Without keyframes the "
        "strength goes from start_strength to end_strength between start_percent and end_percent. "
        "Schedules run on the bypass path (the LoRA is computed next to each layer), so strength changes "
        "per step cost no re-patching.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "lora_stack": ("LORA_STACK", {"tooltip": "The stack to change (from LoRA Stack or another stack node)."}),
                **row_inputs(),
                "keyframes": ("STRING", {"default": "", "multiline": True, "tooltip":
                              "Keyframes 'start:multiplier, …' with start a fraction of sampling (0..1, or 50%), "
                              "e.g. '0:1, 0.5:0.3, 1:0'. loractl style '1@0, 0@0.5' also works. "
                              "When set, the start/end fields below are ignored."}),
                "start_strength": ("FLOAT", {"default": 1.0, "min": -10.0, "max": 10.0, "step": 0.01,
                                             "tooltip": "Multiplier at start_percent (and before it)."}),
                "end_strength": ("FLOAT", {"default": 0.0, "min": -10.0, "max": 10.0, "step": 0.01,
                                           "tooltip": "Multiplier at end_percent (and after it)."}),
                "start_percent": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.01,
                                            "tooltip": "Where the change begins, as a fraction of sampling."}),
                "end_percent": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01,
                                          "tooltip": "Where the change ends, as a fraction of sampling."}),
                "interpolation": (list(INTERPOLATIONS), {"default": "linear", "tooltip":
                                  "Curve between keyframes: linear, ease_in (slow start), ease_out (slow end), "
                                  "ease_in_out (smooth), hold (steps)."}),
            },
        }

    def execute(self, lora_stack, row, lora_name, keyframes, start_strength, end_strength,
                start_percent, end_percent, interpolation):
        stack = as_stack(lora_stack)
        index = row_index(stack, row, lora_name)
        schedule = parse_schedule(keyframes, interpolation)
        if schedule is None:
            schedule = ramp(float(start_strength), float(end_strength), float(start_percent),
                            float(end_percent), interpolation)
        return stack.with_entry(index, schedule=schedule), format_schedule(schedule)


# ----------------------------------------------------------------- per-step application

class _ScheduleWrapper:
    """APPLY_MODEL wrapper: sets the scheduled entries' strengths from the current sigma."""

    def __init__(self, injection, scheduled: dict[int, tuple[float, Schedule]]):
        self.injection = injection
        self.scheduled = scheduled
        self._percent_cache: dict[float, float] = {}
        self.last_percent: Optional[float] = None
        self._warned: set[int] = set()

    def percent(self, model, sigma: float) -> float:
        hit = self._percent_cache.get(sigma)
        if hit is None:
            ms = getattr(model, "model_sampling", None)
            hit = percent_for_sigma(sigma, ms.percent_to_sigma) if ms is not None else 0.0
            if len(self._percent_cache) > 4096:
                self._percent_cache.clear()
            self._percent_cache[sigma] = hit
        return hit

    def __call__(self, executor, x, t, *args, **kwargs):
        # A schedule must never break sampling: on any failure the entry keeps its last strength.
        try:
            sigma = float(t.detach().flatten().max()) if hasattr(t, "flatten") else float(t)
            p = self.percent(getattr(executor, "class_obj", None), sigma)
        except Exception as e:
            log.warning("[LoRA Patchbay] schedule not applied this step: %s", e)
            return executor(x, t, *args, **kwargs)
        self.last_percent = p
        for entry, (base, schedule) in self.scheduled.items():
            try:
                self.injection.set_strength(entry, base * strength_at(schedule, p))
            except Exception as e:  # e.g. an entry whose keys all had to merge
                if entry not in self._warned:
                    self._warned.add(entry)
                    log.warning("[LoRA Patchbay] schedule of entry %d not applied: %s", entry, e)
        return executor(x, t, *args, **kwargs)


def attach_schedules(patcher, schedules: Sequence[Optional[tuple[float, Optional[Schedule]]]]) -> bool:
    """Make the entries just added to ``patcher``'s bypass injection follow their schedules.

    ``schedules``: one item per entry of the last ``add_bypass`` call, in
    order: ``(base strength, schedule)`` or None.  Returns False (and logs)
    when the patcher has no Patchbay bypass injection.
    """
    wanted = [(i, s) for i, s in enumerate(schedules) if s is not None and s[1] is not None]
    if not wanted:
        return True
    from . import host
    injection = host.bypass_injection(patcher)
    if injection is None or not getattr(injection, "strengths", None):
        log.warning("[LoRA Patchbay] schedules need bypass mode; the scheduled rows use their base strength")
        return False
    # add_bypass numbers the newest entries last (earlier side paths keep theirs).
    offset = max(injection.strengths) + 1 - len(schedules)
    scheduled = {offset + i: (float(base), sched) for i, (base, sched) in wanted}
    import comfy.patcher_extension as pe
    kind = pe.WrappersMP.APPLY_MODEL
    # An earlier stack's wrapper points at the injection add_bypass just replaced: fold its
    # entries (their numbers are unchanged) into one wrapper on the current injection.
    merged: dict[int, tuple[float, Schedule]] = {}
    for old in patcher.get_wrappers(kind, WRAPPER_KEY):
        if isinstance(old, _ScheduleWrapper):
            merged.update(old.scheduled)
    merged.update(scheduled)
    patcher.remove_wrappers_with_key(kind, WRAPPER_KEY)
    patcher.add_wrapper_with_key(kind, WRAPPER_KEY, _ScheduleWrapper(injection, merged))
    return True


NODE_CLASS_MAPPINGS = {"PatchbayLoraSchedule": PatchbayLoraSchedule}
NODE_DISPLAY_NAME_MAPPINGS = {"PatchbayLoraSchedule": "LoRA Schedule"}
