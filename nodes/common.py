"""The shared vocabulary of the node modules: categories, modes, the strength slider, stack rows.

Every node module imports from here (never from another node module), so
``nodes/`` has no import loops.  Nothing here touches ComfyUI.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Optional, Union

from ..lora_core.errors import StackError
from ..lora_core.stack import LoraStack, StackEntry, parse_rows
from ..lora_core.tags import parse_prompt_tags

CATEGORY = "loaders/LoRA Patchbay"
IC_CATEGORY = "conditioning/LoRA Patchbay"

MODES = ("merge", "bypass", "auto")
MODE_TOOLTIP = ("merge: add the LoRA into the weights (fastest sampling). bypass: run the LoRA next to each "
                "layer without touching the weights (quantized/offloaded models, instant strength changes). "
                "auto: bypass for fp8/quantized/GGUF or offloaded models, merge otherwise.")

# A slider is only usable over a small range (the frontend clamps typed values
# to it too): ±4 covers ordinary LoRAs and "slider" LoRAs.
STRENGTH_LIMIT = 4.0

LORA_EXTENSIONS = (".safetensors", ".pt", ".ckpt", ".bin", ".pth")
ROWS_EXAMPLE = '[{"on": true, "lora": "example.safetensors", "strength": 1.0, "strength_clip": 1.0}]'


def strength_input(tooltip: str) -> tuple:
    """The pack's strength slider (−STRENGTH_LIMIT … STRENGTH_LIMIT)."""
    return ("FLOAT", {"default": 1.0, "min": -STRENGTH_LIMIT, "max": STRENGTH_LIMIT, "step": 0.01,
                      "round": 0.001, "display": "slider", "tooltip": tooltip})


# ----------------------------------------------------------------- number inputs
# ComfyUI's JSON parser reads NaN and ±Infinity, and its min/max check is false
# for NaN; and once an input is named by VALIDATE_INPUTS ComfyUI skips its own
# min/max check for it.  So the pack's validators check both, naming the input.

def number_problem(name: str, value: Any, spec: Optional[Mapping] = None) -> Optional[str]:
    """Why ``value`` may not be used for the FLOAT/INT input ``name`` (None when it may)."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        return f"{name} must be a number, got {value!r}"
    if not math.isfinite(v):
        return f"{name} must be a finite number, got {value!r}"
    spec = spec or {}
    lo, hi = spec.get("min"), spec.get("max")
    if lo is not None and v < lo:
        return f"{name} {v:g} is below its minimum {lo:g}"
    if hi is not None and v > hi:
        return f"{name} {v:g} is above its maximum {hi:g}"
    return None


def input_spec(node_cls, name: str) -> Mapping:
    """The options dict of input ``name`` in ``node_cls.INPUT_TYPES()`` ({} when it has none)."""
    types = node_cls.INPUT_TYPES()
    for group in ("required", "optional"):
        entry = types.get(group, {}).get(name)
        if entry is not None:
            return entry[1] if len(entry) > 1 and isinstance(entry[1], Mapping) else {}
    return {}


def number_inputs_error(node_cls, **values: Any) -> Optional[str]:
    """Queue-time message for the number inputs of ``node_cls`` among ``values``, or None.

    Inputs whose value is None (linked from another node) are checked when the node runs.
    """
    problems = [p for name, value in values.items() if value is not None
                for p in [number_problem(name, value, input_spec(node_cls, name))] if p]
    return "; ".join(problems) or None


def finite_number(name: str, value: Any) -> float:
    """``value`` as a float; a StackError naming ``name`` when it is not a finite number (run time)."""
    problem = number_problem(name, value)
    if problem:
        raise StackError(problem, fix="use a finite number (check the node or value feeding this input)")
    return float(value)


def validation_result(*messages: Optional[str]) -> Union[bool, str]:
    """``True`` when every message is None, else the messages joined (for VALIDATE_INPUTS)."""
    found = [m for m in messages if m]
    return True if not found else "; ".join(found)


# ----------------------------------------------------------------- names and tags

def file_stem(name: str) -> str:
    """``folder/x.safetensors`` → ``x``."""
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    return base.rsplit(".", 1)[0] if "." in base else base


def lora_tag(name: str, strength: float, strength_clip: Optional[float] = None) -> str:
    """The A1111 tag ``<lora:stem:strength[:clip]>`` of one applied LoRA."""
    stem = name.replace("\\", "/").rsplit("/", 1)[-1]
    for ext in LORA_EXTENSIONS:
        if stem.lower().endswith(ext):
            stem = stem[: -len(ext)]
            break
    s = f"{strength:g}"
    if strength_clip is not None and strength_clip != strength:
        return f"<lora:{stem}:{s}:{strength_clip:g}>"
    return f"<lora:{stem}:{s}>"


# ----------------------------------------------------------------- stacks

def parse_stack_text(text: str) -> LoraStack:
    """JSON rows, or A1111 ``<lora:name:strength[:clip]>`` tags."""
    stripped = (text or "").strip()
    if not stripped or stripped[0] in "[{":
        return parse_rows(stripped)
    tags = parse_prompt_tags(stripped)  # the pack's one tag parser
    tags.raise_problems()
    rows = [t.as_row() for t in tags.rows]
    if not rows:
        raise StackError("stack rows are neither JSON rows nor <lora:name:strength> tags",
                         fix=f"write rows as {ROWS_EXAMPLE}")
    return parse_rows(rows)


def as_stack(value) -> LoraStack:
    """A LORA_STACK from us, or the (name, model, clip) tuple list other packs pass around."""
    if value is None:
        return LoraStack()
    if isinstance(value, LoraStack):
        return value
    if isinstance(value, (list, tuple)):
        entries = []
        for item in value:
            if isinstance(item, StackEntry):
                entries.append(item)
            elif isinstance(item, (list, tuple)) and len(item) >= 2:
                clip = item[2] if len(item) > 2 else item[1]
                # through the row parser, so other packs' strengths get the same checks as ours
                entries.extend(parse_rows([{"lora": str(item[0]), "strength": item[1],
                                            "strength_clip": clip}]).entries)
            else:
                raise StackError(f"LORA_STACK item {item!r} is not (name, strength[, clip strength])")
        return LoraStack(tuple(entries))
    raise StackError(f"LORA_STACK input of type {type(value).__name__} is not a LoRA stack")


def row_index(stack: LoraStack, row: int, lora_name: str = "") -> int:
    """0-based index of the row to edit: by LoRA name when given, else by 1-based number."""
    if not stack.entries:
        raise StackError("the LoRA stack is empty", fix="connect a stack with at least one row")
    name = (lora_name or "").strip()
    if name:
        for i, e in enumerate(stack.entries):
            if e.lora == name:
                return i
        for i, e in enumerate(stack.entries):
            if file_stem(e.lora).lower() == file_stem(name).lower():
                return i
        listed = ", ".join(e.lora for e in stack.entries)
        raise StackError(f"no row of the stack uses LoRA {name!r} (rows: {listed})",
                         fix="type the LoRA name as it appears in the stack, or clear lora_name and use row")
    if not 1 <= int(row) <= len(stack.entries):
        raise StackError(f"row {row} does not exist; the stack has {len(stack.entries)} row(s)",
                         fix=f"pick a row between 1 and {len(stack.entries)}")
    return int(row) - 1


def row_inputs() -> dict:
    """The two inputs of a stack-editing node that pick its row."""
    return {
        "row": ("INT", {"default": 1, "min": 1, "max": 999,
                        "tooltip": "Which stack row to change, counting from 1 (ignored when lora_name is set)."}),
        "lora_name": ("STRING", {"default": "", "tooltip":
                                 "Optional: pick the row by its LoRA name instead of its number "
                                 "(exact name or file name without extension)."}),
    }
