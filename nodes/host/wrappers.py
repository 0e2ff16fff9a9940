"""Model and sampler wrappers: the per-step strength schedule and plain OUTER_SAMPLE wrappers.

Schedules need the bypass side path (merged weights cannot change per step
without a full re-patch): :func:`attach_schedules` adds an APPLY_MODEL
wrapper to a patcher that carries our bypass injection; before every model
call it converts the current sigma to a sampling fraction (inverting the
model's own ``percent_to_sigma``, as core's hook keyframes do) and sets each
scheduled entry's live strength to ``base · strength_at(schedule, fraction)``.
"""
from __future__ import annotations

import logging
from typing import Optional, Sequence

import comfy.patcher_extension

from ...lora_core.schedule import percent_for_sigma, strength_at
from ...lora_core.stack import Schedule
from .bypass import bypass_injection

log = logging.getLogger("lora-patchbay")

SCHEDULE_WRAPPER_KEY = "lora_patchbay_schedule"


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
    injection = bypass_injection(patcher)
    if injection is None or not getattr(injection, "strengths", None):
        log.warning("[LoRA Patchbay] schedules need bypass mode; the scheduled rows use their base strength")
        return False
    # add_bypass numbers the newest entries last (earlier side paths keep theirs).
    offset = max(injection.strengths) + 1 - len(schedules)
    scheduled = {offset + i: (float(base), sched) for i, (base, sched) in wanted}
    kind = comfy.patcher_extension.WrappersMP.APPLY_MODEL
    # An earlier stack's wrapper points at the injection add_bypass just replaced: fold its
    # entries (their numbers are unchanged) into one wrapper on the current injection.
    merged: dict[int, tuple[float, Schedule]] = {}
    for old in patcher.get_wrappers(kind, SCHEDULE_WRAPPER_KEY):
        if isinstance(old, _ScheduleWrapper):
            merged.update(old.scheduled)
    merged.update(scheduled)
    patcher.remove_wrappers_with_key(kind, SCHEDULE_WRAPPER_KEY)
    patcher.add_wrapper_with_key(kind, SCHEDULE_WRAPPER_KEY, _ScheduleWrapper(injection, merged))
    return True

