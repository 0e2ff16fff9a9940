"""What a stack does to a model, per parameter, before any tensor is read.

A :class:`PatchPlan` maps a parameter key to the ordered tuple of
:class:`Contribution` objects that change it.  A contribution is a resolved
module patch, the effective strength (stack strength × block multiplier) and
which part of the module it changes (``weight`` or ``bias``).

Plans are plain data: building one reads no tensor, and two plans are compared
key by key (``==`` on the contribution tuples) to find what an incremental
re-patch must recompute.  Resolved patches compare by identity, which is stable
because parsed files and their resolutions are cached.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal, Mapping, Optional, Sequence

from .ir import CoverageReport, ResolvedPatch
from .kinds import changes_bias

Part = Literal["weight", "bias"]


@dataclass(frozen=True)
class Contribution:
    """One resolved patch applied to one parameter at one effective strength.

    ``entry`` is the index of the stack entry it came from (the bypass path
    keys live strength sliders on it); ``file`` names the LoRA file for
    error messages.
    """
    resolved: ResolvedPatch  # eq=False dataclass: compared and hashed by identity
    strength: float
    part: Part = "weight"
    entry: int = 0
    file: str = ""


PatchPlan = Mapping[str, tuple[Contribution, ...]]

Multiplier = Callable[[str], float]
PlanEntry = tuple[CoverageReport, float, Optional[Multiplier]]


def build_plan(entries: Sequence[PlanEntry]) -> dict[str, tuple[Contribution, ...]]:
    """Collect every entry's resolved patches per parameter key, in stack order.

    ``entries``: ``(coverage report, strength, multiplier or None)``; the
    multiplier gives a per-parameter factor (block weights) from the key.
    An entry with strength 0, or a key whose multiplier is 0, contributes
    nothing, so it costs nothing later (no tensor is read for it).
    """
    plan: dict[str, list[Contribution]] = {}
    for index, (report, strength, multiplier) in enumerate(entries):
        strength = float(strength)
        if strength == 0.0:
            continue
        for resolved in report.matched:
            patch = resolved.patch
            targets: list[tuple[Optional[str], Part]] = []
            if patch.weight is not None and resolved.weight_key:
                targets.append((resolved.weight_key, "weight"))
            if changes_bias(patch) and resolved.bias_key:
                targets.append((resolved.bias_key, "bias"))
            for key, part in targets:
                factor = float(multiplier(key)) if multiplier is not None else 1.0
                effective = strength * factor
                if effective == 0.0:
                    continue
                plan.setdefault(key, []).append(
                    Contribution(resolved, effective, part, index, report.file))
    return {key: tuple(items) for key, items in plan.items()}


def normalized(plan: PatchPlan) -> dict[str, tuple[Contribution, ...]]:
    """The plan without zero-strength contributions and empty keys."""
    out: dict[str, tuple[Contribution, ...]] = {}
    for key, items in plan.items():
        kept = tuple(c for c in items if c.strength != 0.0)
        if kept:
            out[key] = kept
    return out
