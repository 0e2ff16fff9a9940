"""Per-step strength schedules: keyframes over the sampling run.

A :class:`lora_core.stack.Schedule` holds keyframes ``(start, value)``:
``start`` is the fraction of sampling (0 = first step, highest noise; 1 = the
end, as ComfyUI's ``start_percent``) and ``value`` multiplies the row's
strength.  The effective strength at sampling fraction ``p`` is::

    strength(p) = base_strength · strength_at(schedule, p)

Between two keyframes ``(s0, v0)`` and ``(s1, v1)`` with ``t = (p − s0) / (s1 − s0)``:

* ``linear``       v0 + (v1 − v0)·t
* ``ease_in``      v0 + (v1 − v0)·t²            (slow start)
* ``ease_out``     v0 + (v1 − v0)·(1 − (1 − t)²) (slow end)
* ``ease_in_out``  v0 + (v1 − v0)·(3t² − 2t³)   (smoothstep)
* ``hold``         v0 until s1 (a step function; v1 from s1 on)

Before the first keyframe the first value holds; after the last, the last.
Two keyframes at the same start make a jump (the later one wins from there).

Text form: ``"0:1.0, 0.5:0.3, 1:0"`` (``start:value``; a start may be written
``50%``), or loractl style ``"1@0, 0.3@0.5, 0@1"`` (``value@start``).
"""
from __future__ import annotations

import bisect
import math
import re
from typing import Callable, Iterable, Optional

from .errors import StackError
from .stack import Keyframe, Schedule

INTERPOLATIONS = ("linear", "ease_in", "ease_out", "ease_in_out", "hold")

_EASE: dict[str, Callable[[float], float]] = {
    "linear": lambda t: t,
    "ease_in": lambda t: t * t,
    "ease_out": lambda t: 1.0 - (1.0 - t) * (1.0 - t),
    "ease_in_out": lambda t: t * t * (3.0 - 2.0 * t),
    "hold": lambda t: 0.0,
}


# Keyframe multipliers are bounded like the schedule node's start/end fields, so
# that strength × multiplier can never overflow a weight on its own.
SCHEDULE_LIMIT = 10.0


def make_schedule(keyframes: Iterable[tuple[float, float]] | Iterable[Keyframe],
                  interpolation: str = "linear") -> Schedule:
    """A validated schedule, keyframes sorted by start (stable for equal starts)."""
    if interpolation not in _EASE:
        raise StackError(f"unknown interpolation {interpolation!r}",
                         fix=f"use one of {', '.join(INTERPOLATIONS)}")
    frames = []
    for i, kf in enumerate(keyframes):
        start, value = (kf.start, kf.value) if isinstance(kf, Keyframe) else kf
        start, value = float(start), float(value)
        if not (math.isfinite(start) and math.isfinite(value)):
            raise StackError(f"keyframe {i + 1}: start and value must be finite numbers")
        if abs(value) > SCHEDULE_LIMIT:
            raise StackError(f"keyframe {i + 1}: multiplier {value:g} is outside ±{SCHEDULE_LIMIT:g}",
                             fix=f"use multipliers between -{SCHEDULE_LIMIT:g} and {SCHEDULE_LIMIT:g} "
                                 "(the row's strength sets the scale)")
        if not 0.0 <= start <= 1.0:
            raise StackError(f"keyframe {i + 1}: start {start} is outside 0..1",
                             fix="starts are fractions of sampling: 0 = first step, 1 = end (or write 50%)")
        frames.append(Keyframe(start, value))
    if not frames:
        raise StackError("a schedule needs at least one keyframe", fix='write e.g. "0:1, 1:0"')
    frames.sort(key=lambda k: k.start)
    return Schedule(keyframes=tuple(frames), interpolation=interpolation)


def ramp(start_value: float, end_value: float, start_percent: float = 0.0, end_percent: float = 1.0,
         interpolation: str = "linear") -> Schedule:
    """From ``start_value`` at ``start_percent`` to ``end_value`` at ``end_percent``."""
    if end_percent < start_percent:
        raise StackError(f"end percent {end_percent} is before start percent {start_percent}",
                         fix="swap them")
    return make_schedule([(start_percent, start_value), (end_percent, end_value)], interpolation)


def strength_at(schedule: Optional[Schedule], percent: float) -> float:
    """The strength multiplier at sampling fraction ``percent`` (None → 1.0)."""
    if schedule is None:
        return 1.0
    frames = schedule.keyframes
    if not frames:
        return 1.0
    p = float(percent)
    if math.isnan(p):
        return float(frames[0].value)
    starts = [k.start for k in frames]
    # Index of the last keyframe whose start is ≤ p (later duplicates win).
    i = bisect.bisect_right(starts, p) - 1
    if i < 0:
        return float(frames[0].value)
    if i >= len(frames) - 1:
        return float(frames[-1].value)
    k0, k1 = frames[i], frames[i + 1]
    span = k1.start - k0.start
    if span <= 0.0:  # pragma: no cover - bisect_right skips equal starts
        return float(k1.value)
    t = (p - k0.start) / span
    ease = _EASE.get(schedule.interpolation, _EASE["linear"])
    return float(k0.value + (k1.value - k0.value) * ease(t))


def is_constant(schedule: Optional[Schedule]) -> bool:
    """True when the schedule gives the same value everywhere (no per-step work needed)."""
    if schedule is None:
        return True
    values = {k.value for k in schedule.keyframes}
    return len(values) <= 1


# ----------------------------------------------------------------- text form

_NUM = r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?"
_COLON = re.compile(rf"^({_NUM})(%?)\s*:\s*({_NUM})$")
_AT = re.compile(rf"^({_NUM})\s*@\s*({_NUM})(%?)$")


def _start(number: str, percent_sign: str) -> float:
    value = float(number)
    return value / 100.0 if percent_sign else value


def parse_schedule(text: Optional[str], interpolation: str = "linear") -> Optional[Schedule]:
    """Parse ``"0:1.0, 0.5:0.3, 1:0"`` or ``"1@0, 0.3@0.5"``; empty → None.

    An interpolation name may also be given as an item, e.g. ``"0:1, 1:0, ease_in_out"``.
    """
    if text is None or not text.strip():
        return None
    frames: list[tuple[float, float]] = []
    for raw in re.split(r"[,;\n]", text):
        item = raw.strip()
        if not item:
            continue
        if item.lower() in _EASE:
            interpolation = item.lower()
            continue
        m = _COLON.match(item)
        if m:
            frames.append((_start(m.group(1), m.group(2)), float(m.group(3))))
            continue
        m = _AT.match(item)
        if m:
            frames.append((_start(m.group(2), m.group(3)), float(m.group(1))))
            continue
        raise StackError(f"schedule item {item!r} is not start:value",
                         fix='write keyframes as "0:1.0, 0.5:0.3, 1:0" (start fraction : strength)')
    return make_schedule(frames, interpolation)


def format_schedule(schedule: Optional[Schedule]) -> str:
    if schedule is None:
        return ""
    items = [f"{_g(k.start)}:{_g(k.value)}" for k in schedule.keyframes]
    if schedule.interpolation != "linear":
        items.append(schedule.interpolation)
    return ", ".join(items)


def _g(x: float) -> str:
    return format(float(x), ".6g")


# ----------------------------------------------------------------- sigma → fraction

def percent_for_sigma(sigma: float, percent_to_sigma: Callable[[float], float], iterations: int = 40) -> float:
    """Invert a host's decreasing ``percent_to_sigma`` by bisection.

    ComfyUI keyframes convert start fractions to sigmas the same way, so a
    schedule evaluated at this fraction switches where core's hooks would.
    """
    s = float(sigma)
    lo, hi = 0.0, 1.0
    if s >= float(percent_to_sigma(0.0)):
        return 0.0
    if s <= float(percent_to_sigma(1.0)):
        return 1.0
    for _ in range(iterations):
        mid = (lo + hi) / 2.0
        if float(percent_to_sigma(mid)) > s:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2.0


def percent_from_step(sigma: float, sigmas: Iterable[float]) -> Optional[float]:
    """Fraction of a run from its sigma list: step i of n steps → i / n.

    None when ``sigma`` is not (within 1e-4 relative) one of the run's sigmas.
    """
    values = [float(s) for s in sigmas]
    if len(values) < 2:
        return None
    steps = len(values) - 1  # the last sigma is the end point, not a step
    for i, s in enumerate(values[:-1]):
        if abs(s - float(sigma)) <= 1e-4 * max(abs(s), 1e-8):
            return i / steps
    return None
