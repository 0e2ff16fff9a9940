"""The immutable, hashable LoRA stack type shared by nodes, CLI and patcher.

A stack is a tuple of entries; equal stacks hash equally, so a stack is a
cache key for parsed plans and for patched weights.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from typing import Any, Iterable, Optional

from .errors import StackError


@dataclass(frozen=True)
class BlockWeights:
    """Per-block multipliers: ``rules`` are (block selector, multiplier) pairs,
    applied in order, the last match wins; ``default`` covers the rest.

    Selectors are resolved by ``lora_core.blocks``; values multiply the
    strength (they never replace alpha).
    """
    rules: tuple[tuple[str, float], ...] = ()
    default: float = 1.0


@dataclass(frozen=True)
class Keyframe:
    """Strength multiplier from ``start`` (fraction of sampling, 0..1) on."""
    start: float
    value: float


@dataclass(frozen=True)
class Schedule:
    keyframes: tuple[Keyframe, ...]
    interpolation: str = "linear"  # "linear", "ease_in", "ease_out", "ease_in_out", "hold"


@dataclass(frozen=True)
class StackEntry:
    lora: str
    strength_model: float = 1.0
    strength_clip: float = 1.0
    enabled: bool = True
    block_weights: Optional[BlockWeights] = None
    schedule: Optional[Schedule] = None
    iclora: bool = False
    file_hash: Optional[str] = None

    @property
    def active_model(self) -> bool:
        return self.enabled and self.strength_model != 0.0

    @property
    def active_clip(self) -> bool:
        return self.enabled and self.strength_clip != 0.0

    def as_row(self) -> dict[str, Any]:
        row: dict[str, Any] = {"on": self.enabled, "lora": self.lora,
                               "strength": self.strength_model, "strength_clip": self.strength_clip}
        if self.iclora:
            row["iclora"] = True
        if self.file_hash:
            row["hash"] = self.file_hash
        return row


@dataclass(frozen=True)
class LoraStack:
    entries: tuple[StackEntry, ...] = ()

    def __add__(self, other: "LoraStack") -> "LoraStack":
        return LoraStack(self.entries + other.entries)

    def active(self, part: str = "model") -> tuple[StackEntry, ...]:
        pick = (lambda e: e.active_model) if part == "model" else (lambda e: e.active_clip)
        return tuple(e for e in self.entries if pick(e))

    def with_entry(self, index: int, **changes: Any) -> "LoraStack":
        entries = list(self.entries)
        entries[index] = replace(entries[index], **changes)
        return LoraStack(tuple(entries))

    def to_rows(self) -> list[dict[str, Any]]:
        return [e.as_row() for e in self.entries]

    def to_json(self) -> str:
        return json.dumps(self.to_rows())


def _number(row: dict, name: str, default: float, index: int) -> float:
    value = row.get(name, default)
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise StackError(f"row {index + 1}: {name} must be a number, got {value!r}",
                         fix="type a number such as 1.0") from None
    if not math.isfinite(value):
        raise StackError(f"row {index + 1}: {name} must be finite, got {value!r}")
    return value


def parse_rows(rows: Any) -> LoraStack:
    """Build a stack from the plain row format used in workflows and API prompts.

    Accepts a JSON string or a list of dicts ``{"on", "lora", "strength",
    "strength_clip", "iclora", "hash"}``; ``strength_clip`` defaults to
    ``strength``.  Rows without a LoRA name are skipped (an empty new row).
    """
    if isinstance(rows, str):
        text = rows.strip()
        if not text:
            return LoraStack()
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as e:
            raise StackError(f"stack rows are not valid JSON ({e.msg} at char {e.pos})",
                             fix='write rows as [{"on": true, "lora": "x.safetensors", "strength": 1.0}]') from None
    if isinstance(rows, dict):
        rows = rows.get("rows", rows.get("__value__", []))
    if not isinstance(rows, Iterable):
        raise StackError("stack rows must be a list")
    entries = []
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise StackError(f"row {i + 1} must be an object, got {type(row).__name__}")
        name = row.get("lora") or row.get("name")
        if not name or name == "None":
            continue
        strength = _number(row, "strength", 1.0, i)
        clip = _number(row, "strength_clip", strength, i) if "strength_clip" in row else \
            _number(row, "strengthTwo", strength, i)
        entries.append(StackEntry(lora=str(name), strength_model=strength, strength_clip=clip,
                                  enabled=bool(row.get("on", row.get("active", True))),
                                  iclora=bool(row.get("iclora", False)),
                                  file_hash=row.get("hash") or None))
    return LoraStack(tuple(entries))
