"""Sweep specifications: which stack row varies, over which values, on one or two axes.

A sweep is X values (and optionally Y values) of one axis each:

* ``strength``: row ``row`` of the stack takes each value as its strength
  (``part`` = ``both`` sets model and clip strength, ``model`` or ``clip``
  only that one);
* ``lora``: row ``row`` takes each value as its LoRA name (strengths kept);
* ``seed``: the sampler seed takes each value (the stack is unchanged).

Cells are ordered row-major (Y outer, X inner), the order in which images
come back from a list output and the order of the grid.  Values come as a
list (``"0, 0.25, 0.5, 1"``), or as start/stop/count (``"0:1:5"`` in text,
or :func:`range_values`).  Limits: at least one value, at most
``MAX_VALUES`` per axis and ``MAX_CELLS`` cells, each refused naming the
limit.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace
from typing import Optional, Sequence, Union

from .errors import SweepError
from .stack import LoraStack
from .tags import lora_stem

MAX_VALUES = 256
MAX_CELLS = 1024
MAX_SEED = (1 << 64) - 1
AXIS_KINDS = ("strength", "lora", "seed")
PARTS = ("both", "model", "clip")

Value = Union[float, int, str]


def range_values(start: float, stop: float, count: int) -> tuple[float, ...]:
    """``count`` evenly spaced values from ``start`` to ``stop`` inclusive (rounded to 6 decimals)."""
    try:
        count = int(count)
        start, stop = float(start), float(stop)
    except (TypeError, ValueError):
        raise SweepError(f"start/stop/count must be numbers, got {start!r}/{stop!r}/{count!r}") from None
    if not (math.isfinite(start) and math.isfinite(stop)):
        raise SweepError(f"start and stop must be finite, got {start!r} and {stop!r}")
    _check_count(count)
    if count == 1:
        return (start,)
    step = (stop - start) / (count - 1)
    return tuple(round(start + i * step, 6) for i in range(count))


def _check_count(count: int) -> None:
    if count < 1:
        raise SweepError("the sweep has no values", fix="give at least one value, e.g. \"0, 0.5, 1\"")
    if count > MAX_VALUES:
        raise SweepError(f"the sweep has {count} values; the limit is {MAX_VALUES} values per axis",
                         fix=f"use at most {MAX_VALUES} values (a coarser step)")


_RANGE = re.compile(r"^\s*([^:,\s]+)\s*:\s*([^:,\s]+)\s*:\s*([^:,\s]+)\s*$")


def parse_values(text: Union[str, Sequence], kind: str = "strength") -> tuple[Value, ...]:
    """Values of one axis from text (comma/space/newline separated, or ``start:stop:count``) or a list.

    ``kind`` decides the type: strength → finite floats, seed → integers in
    [0, 2⁶⁴), lora → names (comma or newline separated, spaces kept).
    """
    if kind not in AXIS_KINDS:
        raise SweepError(f"unknown sweep axis {kind!r}; use one of {', '.join(AXIS_KINDS)}")
    if isinstance(text, str):
        if kind != "lora":
            m = _RANGE.match(text)
            if m:
                values = range_values(_number(m.group(1), "start"), _number(m.group(2), "stop"),
                                      int(_number(m.group(3), "count")))
                return tuple(int(v) for v in values) if kind == "seed" else values
        sep = r"[,\n;]+" if kind == "lora" else r"[,\s;]+"
        tokens = [t.strip() for t in re.split(sep, text) if t.strip()]
    else:
        tokens = list(text)
    _check_count(len(tokens))
    if kind == "strength":
        return tuple(_number(t, "value") for t in tokens)
    if kind == "seed":
        return tuple(_seed(t) for t in tokens)
    return tuple(_name(t) for t in tokens)


def _number(token, what: str) -> float:
    try:
        value = float(token)
    except (TypeError, ValueError):
        raise SweepError(f"sweep {what} {str(token)[:40]!r} is not a number",
                         fix="write numbers such as 0, 0.25, 0.5, 1") from None
    if not math.isfinite(value):
        raise SweepError(f"sweep {what} {token!r} must be finite")
    return value


def _seed(token) -> int:
    try:
        f = float(token)
        value = int(f)
    except (TypeError, ValueError, OverflowError):
        raise SweepError(f"seed {str(token)[:40]!r} is not a whole number") from None
    if value != f or not 0 <= value <= MAX_SEED:
        raise SweepError(f"seed {str(token)[:40]!r} must be a whole number from 0 to {MAX_SEED}")
    return value


def _name(token) -> str:
    name = str(token).strip()
    if not name or any(ord(ch) < 32 for ch in name):
        raise SweepError(f"LoRA name {name[:40]!r} in the sweep is empty or holds control characters")
    return name


@dataclass(frozen=True)
class SweepAxis:
    kind: str                          # strength | lora | seed
    values: tuple[Value, ...]
    row: int = 0                       # stack row (0-based) for strength/lora axes
    part: str = "both"                 # strength axes: both | model | clip
    labels: tuple[str, ...] = ()       # one per value; empty = made from the values
    title: str = ""                    # axis title; empty = made from the kind and row

    def __post_init__(self):
        if self.kind not in AXIS_KINDS:
            raise SweepError(f"unknown sweep axis {self.kind!r}; use one of {', '.join(AXIS_KINDS)}")
        if self.part not in PARTS:
            raise SweepError(f"unknown strength part {self.part!r}; use one of {', '.join(PARTS)}")
        _check_count(len(self.values))
        if self.labels and len(self.labels) != len(self.values):
            raise SweepError(f"the sweep has {len(self.values)} values but {len(self.labels)} labels",
                             fix="give one label per value, or none")
        if self.row < 0:
            raise SweepError(f"sweep row {self.row + 1} does not exist", fix="rows count from 1")

    def check_stack(self, stack: LoraStack) -> None:
        if self.kind != "seed" and self.row >= len(stack.entries):
            raise SweepError(f"the sweep varies row {self.row + 1} but the stack has "
                             f"{len(stack.entries)} row(s)", fix="pick a row that exists (rows count from 1)")

    def label(self, i: int) -> str:
        if self.labels:
            return self.labels[i]
        v = self.values[i]
        if self.kind == "strength":
            return f"{v:g}"
        if self.kind == "seed":
            return f"seed {v}"
        return lora_stem(str(v))

    def axis_title(self, stack: Optional[LoraStack] = None) -> str:
        if self.title:
            return self.title
        if self.kind == "seed":
            return "seed"
        name = f"row {self.row + 1}"
        if stack is not None and self.row < len(stack.entries):
            name = lora_stem(stack.entries[self.row].lora)
        if self.kind == "lora":
            return f"LoRA of row {self.row + 1}"
        return f"{name} strength" + ("" if self.part == "both" else f" ({self.part})")

    def apply(self, stack: LoraStack, seed: int, i: int) -> tuple[LoraStack, int]:
        """(stack, seed) with value ``i`` of this axis put in."""
        v = self.values[i]
        if self.kind == "seed":
            return stack, int(v)
        self.check_stack(stack)
        if self.kind == "lora":
            return stack.with_entry(self.row, lora=str(v), file_hash=None, enabled=True), seed
        changes = {}
        if self.part in ("both", "model"):
            changes["strength_model"] = float(v)
        if self.part in ("both", "clip"):
            changes["strength_clip"] = float(v)
        return stack.with_entry(self.row, enabled=True, **changes), seed


@dataclass(frozen=True)
class SweepCell:
    ix: int
    iy: int
    stack: LoraStack
    seed: int
    label_x: str
    label_y: str

    @property
    def label(self) -> str:
        return self.label_x if not self.label_y else f"{self.label_y} · {self.label_x}"


def _overlap(a: SweepAxis, b: SweepAxis) -> bool:
    """Whether two axes set the same thing (then the second would overwrite the first)."""
    if a.kind == "seed" or b.kind == "seed":
        return a.kind == b.kind
    if a.row != b.row:
        return False
    split_parts = a.kind == b.kind == "strength" and {a.part, b.part} == {"model", "clip"}
    return not split_parts


@dataclass(frozen=True)
class SweepSpec:
    x: SweepAxis
    y: Optional[SweepAxis] = None

    def __post_init__(self):
        if self.y is not None:
            if len(self.x.values) * len(self.y.values) > MAX_CELLS:
                raise SweepError(f"the sweep has {len(self.x.values)}×{len(self.y.values)} = "
                                 f"{len(self.x.values) * len(self.y.values)} cells; the limit is {MAX_CELLS}",
                                 fix="use fewer values on one axis")
            if _overlap(self.x, self.y):
                raise SweepError("both sweep axes change the same thing",
                                 fix="vary another row (or seeds) on the second axis")

    @property
    def columns(self) -> int:
        return len(self.x.values)

    @property
    def rows(self) -> int:
        return len(self.y.values) if self.y is not None else 1

    def __len__(self) -> int:
        return self.columns * self.rows

    def check_stack(self, stack: LoraStack) -> None:
        self.x.check_stack(stack)
        if self.y is not None:
            self.y.check_stack(stack)

    def cells(self, stack: LoraStack, seed: int = 0) -> tuple[SweepCell, ...]:
        """Every cell, Y outer and X inner (the grid's reading order)."""
        self.check_stack(stack)
        out = []
        for iy in range(self.rows):
            base, base_seed = (stack, seed) if self.y is None else self.y.apply(stack, seed, iy)
            label_y = "" if self.y is None else self.y.label(iy)
            for ix in range(self.columns):
                s, sd = self.x.apply(base, base_seed, ix)
                out.append(SweepCell(ix, iy, s, sd, self.x.label(ix), label_y))
        return tuple(out)

    def titles(self, stack: Optional[LoraStack] = None) -> tuple[str, str]:
        return self.x.axis_title(stack), ("" if self.y is None else self.y.axis_title(stack))


def axis(kind: str, values: Union[str, Sequence], row: int = 0, part: str = "both",
         labels: Union[str, Sequence[str], None] = None, title: str = "") -> SweepAxis:
    """A :class:`SweepAxis` from user input (text values, optional comma-separated labels)."""
    vals = parse_values(values, kind)
    if isinstance(labels, str):
        labels = [t.strip() for t in labels.split(",")] if labels.strip() else []
    return SweepAxis(kind=kind, values=vals, row=row, part=part, labels=tuple(labels or ()), title=title)


def with_values(ax: SweepAxis, values: Sequence[Value]) -> SweepAxis:
    return replace(ax, values=tuple(values), labels=())


__all__ = ["MAX_VALUES", "MAX_CELLS", "SweepAxis", "SweepSpec", "SweepCell", "axis", "parse_values",
           "range_values"]
