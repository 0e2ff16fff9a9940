"""PatchbayLoraSchedule: a per-step strength schedule for one stack row.

The node only sets the row's ``schedule``.  Applying it needs the bypass
side path; the per-step wrapper lives in the door (``host.wrappers``).
"""
from __future__ import annotations

from ..lora_core.schedule import INTERPOLATIONS, format_schedule, parse_schedule, ramp
from .common import CATEGORY, as_stack, row_index, row_inputs


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


NODE_CLASS_MAPPINGS = {"PatchbayLoraSchedule": PatchbayLoraSchedule}
NODE_DISPLAY_NAME_MAPPINGS = {"PatchbayLoraSchedule": "LoRA Schedule"}
