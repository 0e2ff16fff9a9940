"""The immutable, hashable LoRA stack type shared by nodes, CLI and patcher.

A stack is a tuple of entries; equal stacks hash equally, so a stack is a
cache key for parsed plans and for patched weights.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field, replace
from typing import Any, Iterable, Optional

from .errors import StackError
from .jsontext import JsonNestingError, loads_bounded

# The row editor's JSON (the ``rows`` widget): {"version": 2, "options": {"separate_clip": bool},
# "rows": [{"id", "on", "lora", "strength", "strength_clip" (null = same), "hash"}]}.
STACK_VERSION = 2
# The editor's slider range; v2 values are written by it, so a strength beyond is a hand edit gone wrong.
V2_STRENGTH_LIMIT = 4.0
# Plain row lists, A1111 tags and other packs' (name, model, clip) tuples are typed or generated
# by hand: they may go beyond the sliders, up to core's LoraLoader range, never to an overflow.
ROW_STRENGTH_LIMIT = 100.0


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
    # The editor's stable row id: kept for round trips, not part of equality
    # (two stacks that differ only in ids apply the same LoRAs).
    row_id: Optional[str] = field(default=None, compare=False)

    def as_row(self) -> dict[str, Any]:
        row: dict[str, Any] = {"on": self.enabled, "lora": self.lora,
                               "strength": self.strength_model, "strength_clip": self.strength_clip}
        if self.iclora:
            row["iclora"] = True
        if self.file_hash:
            row["hash"] = self.file_hash
        if self.row_id:
            row["id"] = self.row_id
        return row


@dataclass(frozen=True)
class LoraStack:
    entries: tuple[StackEntry, ...] = ()

    def __add__(self, other: "LoraStack") -> "LoraStack":
        return LoraStack(self.entries + other.entries)

    def with_entry(self, index: int, **changes: Any) -> "LoraStack":
        entries = list(self.entries)
        entries[index] = replace(entries[index], **changes)
        return LoraStack(tuple(entries))

    def to_rows(self) -> list[dict[str, Any]]:
        return [e.as_row() for e in self.entries]


def _number(row: dict, name: str, default: float, index: int) -> float:
    value = row.get(name, default)
    if value is None:  # null: "same as the default" (strength_clip null = strength)
        value = default
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
            rows = loads_bounded(text)
        except json.JSONDecodeError as e:
            raise StackError(f"stack rows are not valid JSON ({e.msg} at char {e.pos})",
                             fix='write rows as [{"on": true, "lora": "x.safetensors", "strength": 1.0}]') from None
        except JsonNestingError as e:
            raise StackError(f"stack rows are not valid JSON ({e})",
                             fix='write rows as [{"on": true, "lora": "x.safetensors", "strength": 1.0}]') from None
    if isinstance(rows, dict) and "version" in rows:
        return _parse_versioned(rows)
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
        strength = _bounded(row, "strength", 1.0, i, ROW_STRENGTH_LIMIT)
        clip = _bounded(row, "strength_clip", strength, i, ROW_STRENGTH_LIMIT) if "strength_clip" in row else \
            _bounded(row, "strengthTwo", strength, i, ROW_STRENGTH_LIMIT)
        entries.append(StackEntry(lora=str(name), strength_model=strength, strength_clip=clip,
                                  enabled=bool(row.get("on", row.get("active", True))),
                                  iclora=bool(row.get("iclora", False)),
                                  file_hash=row.get("hash") or None))
    return LoraStack(tuple(entries))


def _parse_versioned(value: dict) -> LoraStack:
    """The editor's v2 value: ``options.separate_clip`` false makes every row's
    CLIP strength its model strength; ``strength_clip`` null means the same;
    ids, hashes and ``iclora`` are kept, unknown fields ignored, empty rows skipped."""
    version = value.get("version")
    if version != STACK_VERSION:
        raise StackError(f"stack value version {version!r} is not one this LoRA Patchbay reads "
                         f"(it reads {STACK_VERSION} and plain row lists)",
                         fix="update LoRA Patchbay, or re-create the stack in this version")
    options = value.get("options")
    options = {} if options is None else options
    if not isinstance(options, dict):
        raise StackError("stack options must be an object such as {\"separate_clip\": false}")
    separate = options.get("separate_clip", False)
    if not isinstance(separate, bool):
        raise StackError(f"stack option separate_clip must be true or false, got {separate!r}")
    rows = value.get("rows")
    rows = [] if rows is None else rows
    if not isinstance(rows, list):
        raise StackError("stack rows must be a list", fix='write {"version": 2, "rows": [...]}')
    entries = []
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise StackError(f"row {i + 1} must be an object, got {type(row).__name__}")
        name = row.get("lora")
        if name in (None, "", "None"):
            continue
        if not isinstance(name, str):
            raise StackError(f"row {i + 1}: lora must be a file name, got {name!r}",
                             fix="pick the LoRA from the list")
        on = row.get("on", True)
        if not isinstance(on, bool):
            raise StackError(f"row {i + 1}: on must be true or false, got {on!r}")
        strength = _bounded(row, "strength", 1.0, i)
        clip = _bounded(row, "strength_clip", strength, i) if separate else strength
        file_hash = row.get("hash") or None
        if file_hash is not None and not isinstance(file_hash, str):
            raise StackError(f"row {i + 1}: hash must be a sha256 hex string, got {file_hash!r}",
                             fix="remove the hash or copy it from the file's info")
        row_id = row.get("id")
        entries.append(StackEntry(lora=name, strength_model=strength, strength_clip=clip, enabled=on,
                                  iclora=row.get("iclora") is True, file_hash=file_hash,
                                  row_id=str(row_id) if row_id not in (None, "") else None))
    return LoraStack(tuple(entries))


def _bounded(row: dict, name: str, default: float, index: int, limit: float = V2_STRENGTH_LIMIT) -> float:
    value = _number(row, name, default, index)
    if abs(value) > limit:
        what = "the editor's range" if limit == V2_STRENGTH_LIMIT else "the range rows accept"
        raise StackError(f"row {index + 1}: {name} {value:g} is outside {what} ±{limit:g}",
                         fix=f"use a strength between -{limit:g} and {limit:g}")
    return value


def default_row_id(index: int, lora: str) -> str:
    """A stable ``r-<8 hex>`` id for a row that has none (same row, same id)."""
    return "r-" + hashlib.sha1(f"{index}:{lora}".encode()).hexdigest()[:8]


def stack_value(stack: LoraStack) -> dict:
    """The v2 value of a stack (what the editor writes): one strength column
    unless some row's CLIP strength differs from its model strength."""
    separate = any(e.strength_clip != e.strength_model for e in stack.entries)
    rows = []
    for i, e in enumerate(stack.entries):
        row: dict[str, Any] = {"id": e.row_id or default_row_id(i, e.lora), "on": e.enabled, "lora": e.lora,
                               "strength": e.strength_model, "strength_clip": e.strength_clip if separate else None}
        if e.file_hash:
            row["hash"] = e.file_hash
        if e.iclora:
            row["iclora"] = True
        rows.append(row)
    return {"version": STACK_VERSION, "options": {"separate_clip": separate}, "rows": rows}
