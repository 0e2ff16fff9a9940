"""PatchbayLoraStack (rows → LORA_STACK) and PatchbayApplyLoraStack.

All rows live in ONE multiline ``rows`` widget holding JSON
``[{"on": true, "lora": "x.safetensors", "strength": 1.0, "strength_clip": 1.0,
"iclora": false, "hash": "…"}]``, so workflow JSON and API prompts carry them
plainly and 30 rows never become hundreds of widgets.  A1111 tags
``<lora:name:strength[:clip]>`` (one or more per line) are accepted too.
"""
from __future__ import annotations

from . import files
from .apply import apply_stack
from .common import CATEGORY, MODE_TOOLTIP, MODES, as_stack, lora_tag, parse_stack_text
from .coverage import record_run, stack_summary, ui_result
from .ic_params import stack_ic_lora


class PatchbayLoraStack:
    DESCRIPTION = ("A list of LoRAs with per-row on/off and model/CLIP strengths, kept in one text widget "
                   "(JSON rows, or <lora:name:strength> tags pasted from A1111). Chain stacks through "
                   "'stack'; feed the result to Apply LoRA Stack.")
    CATEGORY = CATEGORY
    FUNCTION = "build"
    RETURN_TYPES = ("LORA_STACK",)
    RETURN_NAMES = ("stack",)
    OUTPUT_TOOLTIPS = ("The incoming stack followed by these rows.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "rows": ("STRING", {"multiline": True, "default": "[]",
                                    "tooltip": "The rows, as a JSON list of rows with on, lora, strength and "
                                               "strength_clip (see docs/nodes.md). 'on' toggles a row, "
                                               "'strength_clip' defaults to 'strength', 'hash' (sha256) finds "
                                               "a renamed or moved file. <lora:name:strength[:clip]> tags work too."}),
            },
            "optional": {
                "stack": ("LORA_STACK", {"tooltip": "Optional stack to extend (its rows come first)."}),
            },
        }

    @classmethod
    def VALIDATE_INPUTS(cls, rows=None):
        return files.validate_rows(rows)

    def build(self, rows, stack=None):
        own = parse_stack_text(rows)
        missing = sum(1 for e in own.entries if files.is_missing(e))
        return ui_result(stack_summary(own, (), missing), (as_stack(stack) + own,))


class PatchbayApplyLoraStack:
    DESCRIPTION = ("Applies a LORA_STACK to a model and (optionally) its text encoder in one step: every LoRA "
                   "on a weight is added in one fused computation against the original weight. Also outputs "
                   "the applied LoRAs as <lora:name:strength> text and the trigger words stored in the files.")
    CATEGORY = CATEGORY
    FUNCTION = "apply"
    RETURN_TYPES = ("MODEL", "CLIP", "STRING", "STRING", "IC_LORA")
    RETURN_NAMES = ("model", "clip", "lora_text", "trigger_words", "ic_lora")
    OUTPUT_TOOLTIPS = ("The model with the stack applied.",
                       "The text encoder with the stack applied (None if no CLIP was connected).",
                       "The applied LoRAs as <lora:name:strength> tags.",
                       "Trigger words of the enabled LoRAs, from their file metadata, comma-separated.",
                       "IC-LoRA parameters of the rows marked \"iclora\", each read from its own file "
                       "(for IC-LoRA Guide); a disabled or strength-0 IC row turns its guides off.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "The diffusion model the stack is applied to."}),
                "stack": ("LORA_STACK", {"tooltip": "The LoRAs to apply (from LoRA Stack)."}),
                "mode": (list(MODES), {"default": "merge", "tooltip": MODE_TOOLTIP}),
            },
            "optional": {
                "clip": ("CLIP", {"tooltip": "Optional text encoder; leave unconnected for model-only use."}),
            },
        }

    def apply(self, model, stack, mode, clip=None):
        stack = as_stack(stack)
        applied = apply_stack(model, clip, stack, mode)
        text = " ".join(lora_tag(n, s, c if clip is not None else None) for n, s, c in applied.names)
        return ui_result(record_run(stack, applied.reports),
                         (applied.model, applied.clip, text, ", ".join(applied.trigger_words), stack_ic_lora(stack)))


NODE_CLASS_MAPPINGS = {
    "PatchbayLoraStack": PatchbayLoraStack,
    "PatchbayApplyLoraStack": PatchbayApplyLoraStack,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "PatchbayLoraStack": "LoRA Stack",
    "PatchbayApplyLoraStack": "Apply LoRA Stack",
}
