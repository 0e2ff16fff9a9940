"""PatchbayLoraLoader: one LoRA on a model and (optionally) its text encoder.

The node is a one-row stack handed to :func:`nodes.apply.apply_stack`.
"""
from __future__ import annotations

from ..lora_core.stack import LoraStack, StackEntry
from . import files
from .apply import apply_stack
from .common import (CATEGORY, MODE_TOOLTIP, MODES, finite_number, number_inputs_error, strength_input,
                     validation_result)


class PatchbayLoraLoader:
    DESCRIPTION = ("Applies one LoRA to a model and (optionally) its text encoder. Strength 0 or disabled "
                   "returns the inputs untouched at no cost. The LoRA's keys are matched against this model "
                   "whatever the file's naming (kohya, PEFT/diffusers, LyCORIS, …); what does not apply is "
                   "reported in one log line.")
    CATEGORY = CATEGORY
    FUNCTION = "load"
    RETURN_TYPES = ("MODEL", "CLIP")
    RETURN_NAMES = ("model", "clip")
    OUTPUT_TOOLTIPS = ("The model with the LoRA applied.",
                       "The text encoder with the LoRA applied (None if no CLIP was connected).")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "The diffusion model the LoRA is applied to."}),
                "lora_name": (files.lora_names(), {"tooltip": "The LoRA file (models/loras)."}),
                "strength_model": strength_input("How strongly the LoRA changes the diffusion model. "
                                                 "0 = off; negative values invert it."),
                "strength_clip": strength_input("How strongly the LoRA changes the text encoder "
                                                "(ignored without a CLIP input)."),
                "enabled": ("BOOLEAN", {"default": True,
                                        "tooltip": "Off: the model and CLIP pass through untouched."}),
                "mode": (list(MODES), {"default": "merge", "tooltip": MODE_TOOLTIP}),
            },
            "optional": {
                "clip": ("CLIP", {"tooltip": "Optional text encoder; leave unconnected for model-only LoRAs."}),
            },
        }

    @classmethod
    def VALIDATE_INPUTS(cls, lora_name=None, strength_model=None, strength_clip=None):
        # None = linked from another node: checked when it runs
        return validation_result(None if lora_name is None else files.validation_error(lora_name),
                                 number_inputs_error(cls, strength_model=strength_model, strength_clip=strength_clip))

    def load(self, model, lora_name, strength_model, strength_clip, enabled, mode, clip=None):
        if not enabled:
            return (model, clip)
        stack = LoraStack((StackEntry(lora=lora_name, strength_model=finite_number("strength_model", strength_model),
                                      strength_clip=finite_number("strength_clip", strength_clip)),))
        applied = apply_stack(model, clip, stack, mode)
        return (applied.model, applied.clip)


NODE_CLASS_MAPPINGS = {"PatchbayLoraLoader": PatchbayLoraLoader}
NODE_DISPLAY_NAME_MAPPINGS = {"PatchbayLoraLoader": "LoRA Loader"}
