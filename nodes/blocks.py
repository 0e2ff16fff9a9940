"""PatchbayLoraBlockWeights: per-block multipliers for one stack row.

The node only edits the stack (a frozen value): applying it multiplies the
row's strength by ``lora_core.blocks.block_multiplier`` for every parameter
it patches.
"""
from __future__ import annotations

import math
from typing import Optional

from ..lora_core.blocks import LAYOUT_NAMES, PRESETS, format_block_weights, parse_block_weights
from ..lora_core.errors import StackError
from ..lora_core.stack import BlockWeights
from .common import (CATEGORY, as_stack, finite_number, number_inputs_error, row_index, row_inputs,
                     validation_result)

CUSTOM = "custom (use block_vector)"


def block_weights_from_inputs(preset: str, block_vector: str, a, b) -> Optional[BlockWeights]:
    """The node's block weights (None clears them); StackError naming the input at fault."""
    a, b = finite_number("A", a), finite_number("B", b)
    where = "block_vector" if preset == CUSTOM else "preset"
    try:
        spec = parse_block_weights(block_vector if preset == CUSTOM else preset, a=a, b=b)
    except StackError as e:
        raise StackError(f"{where}: {e.message}", fix=e.fix) from None
    if spec is not None:
        bad = [(sel, v) for sel, v in (("default", spec.default),) + spec.rules if not math.isfinite(v)]
        if bad:
            raise StackError(f"{where}: the weight of {bad[0][0]} is {bad[0][1]!r}, not a finite number",
                             fix="write finite numbers (or A/a/B/b)")
    return spec


class PatchbayLoraBlockWeights:
    """Set per-block multipliers on one row of a LoRA stack."""

    CATEGORY = CATEGORY
    RETURN_TYPES = ("LORA_STACK", "STRING")
    RETURN_NAMES = ("lora_stack", "block_weights")
    OUTPUT_TOOLTIPS = ("The stack with the row's block weights set.",
                       "The block weights as rules (default=…, in4=…), one canonical text.")
    FUNCTION = "execute"
    DESCRIPTION = (
        "Per-block weights for one LoRA in a stack: each value multiplies the row's strength for the "
        "parameters of that block (it never replaces alpha). Write an LBW-style vector (element 0 = BASE; "
        "17 values for SD1.5, 12 for SDXL, 58 for Flux, 41 for Wan 14B, 49 for LTX-2), or rules such as "
        "'default=1, double=1, single0-10=0.5, blocks20-39=0' with the model's own 0-based block numbers, "
        "or pick a preset. Text encoders and layers outside the blocks take BASE.")

    @classmethod
    def INPUT_TYPES(cls):
        lengths = ", ".join(f"{n} {LAYOUT_NAMES[n]}" for n in sorted(LAYOUT_NAMES))
        return {
            "required": {
                "lora_stack": ("LORA_STACK", {"tooltip": "The stack to change (from LoRA Stack or another stack node)."}),
                **row_inputs(),
                "preset": ([CUSTOM] + list(PRESETS), {"default": CUSTOM, "tooltip":
                           "A named preset; 'custom' uses the block_vector text."}),
                "block_vector": ("STRING", {"default": "", "multiline": True, "tooltip":
                                 "Vector '1,0,0.5,…' (element 0 = BASE; lengths: " + lengths + ") or rules "
                                 "'default=0, base=1, in=1, out3-5=0.2, double=1, single0-10=0.5, blocks20-39=0' "
                                 "where numbers are the model's own 0-based block numbers (input_blocks.4 = in4; "
                                 "Inspire's %-form counts only the blocks a LoRA has). The last matching rule wins. "
                                 "Empty clears the row's block weights."}),
                "A": ("FLOAT", {"default": 4.0, "min": -10.0, "max": 10.0, "step": 0.01,
                                "tooltip": "Value of the letter A in a vector (a = A/2)."}),
                "B": ("FLOAT", {"default": 1.0, "min": -10.0, "max": 10.0, "step": 0.01,
                                "tooltip": "Value of the letter B in a vector (b = B/2)."}),
            },
        }

    @classmethod
    def VALIDATE_INPUTS(cls, preset=None, block_vector=None, A=None, B=None):
        numbers = number_inputs_error(cls, A=A, B=B)
        if numbers or None in (preset, block_vector, A, B):  # None = linked: checked when it runs
            return validation_result(numbers)
        if preset != CUSTOM and preset not in PRESETS:
            return f"preset {preset!r} is not one of this pack's presets"
        try:
            block_weights_from_inputs(preset, block_vector, A, B)
        except StackError as e:
            return str(e)
        return True

    def execute(self, lora_stack, row, lora_name, preset, block_vector, A, B):
        stack = as_stack(lora_stack)
        index = row_index(stack, row, lora_name)
        spec = block_weights_from_inputs(preset, block_vector, A, B)
        return stack.with_entry(index, block_weights=spec), format_block_weights(spec)


NODE_CLASS_MAPPINGS = {"PatchbayLoraBlockWeights": PatchbayLoraBlockWeights}
NODE_DISPLAY_NAME_MAPPINGS = {"PatchbayLoraBlockWeights": "LoRA Block Weights"}
