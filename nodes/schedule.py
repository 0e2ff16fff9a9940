"""PatchbayLoraSchedule: a per-step strength schedule for one stack row.

The node only sets the row's ``schedule``.  Applying it needs the bypass
side path; the per-step wrapper lives in the door (``host.wrappers``).
"""
from __future__ import annotations

from typing import Optional

from ..lora_core.errors import StackError
from ..lora_core.schedule import INTERPOLATIONS, format_schedule, parse_schedule, ramp
from ..lora_core.stack import Schedule
from .common import (CATEGORY, as_stack, finite_number, number_inputs_error, row_index, row_inputs,
                     validation_result)


def schedule_from_inputs(keyframes: str, start_strength, end_strength, start_percent, end_percent,
                         interpolation: str) -> Schedule:
    """The node's schedule: its keyframes text, else the ramp of the four number fields.

    Raises StackError naming the input at fault (non-finite numbers, multipliers beyond ±10).
    """
    try:
        schedule = parse_schedule(keyframes, interpolation)
    except StackError as e:
        raise StackError(f"keyframes: {e.message}", fix=e.fix) from None
    if schedule is not None:
        return schedule
    return ramp(finite_number("start_strength", start_strength), finite_number("end_strength", end_strength),
                finite_number("start_percent", start_percent), finite_number("end_percent", end_percent),
                interpolation)


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
                              "e.g. '0:1, 0.5:0.3, 1:0'. loractl-style keyframes (multiplier, at-sign, start) also work. "
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

    @classmethod
    def VALIDATE_INPUTS(cls, keyframes=None, start_strength=None, end_strength=None, start_percent=None,
                        end_percent=None):
        numbers = number_inputs_error(cls, start_strength=start_strength, end_strength=end_strength,
                                      start_percent=start_percent, end_percent=end_percent)
        text: Optional[str] = None
        if keyframes is not None:  # None = linked from another node: checked when it runs
            try:
                parse_schedule(keyframes)
            except StackError as e:
                text = f"keyframes: {e}"
        return validation_result(numbers, text)

    def execute(self, lora_stack, row, lora_name, keyframes, start_strength, end_strength,
                start_percent, end_percent, interpolation):
        stack = as_stack(lora_stack)
        index = row_index(stack, row, lora_name)
        schedule = schedule_from_inputs(keyframes, start_strength, end_strength, start_percent, end_percent,
                                        interpolation)
        return stack.with_entry(index, schedule=schedule), format_schedule(schedule)


NODE_CLASS_MAPPINGS = {"PatchbayLoraSchedule": PatchbayLoraSchedule}
NODE_DISPLAY_NAME_MAPPINGS = {"PatchbayLoraSchedule": "LoRA Schedule"}
