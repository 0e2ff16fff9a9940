"""PatchbayLoraStackLoader: a LoRA stack and its application in one node.

The same rows, modes and maths as LoRA Stack → Apply LoRA Stack (the rows
parse through ``common.parse_stack_text``, the stack applies through
``apply.apply_stack``); the node adds its rows to an optional incoming stack
and outputs the whole stack it applied, so loaders chain and feed the batch
nodes.  The ``rows`` widget holds the row editor's JSON (stack value v2), and
still takes the legacy row lists and ``<lora:name:strength>`` tags.
"""
from __future__ import annotations

import json

from ..lora_core.stack import STACK_VERSION
from . import files
from .apply import apply_stack
from .common import CATEGORY, MODE_TOOLTIP, MODES, as_stack, lora_tag, parse_stack_text
from .coverage import record_run, ui_result

EMPTY_ROWS = json.dumps({"version": STACK_VERSION, "options": {"separate_clip": False}, "rows": []})
# Tooltips are compiled by the frontend as vue-i18n messages: no braces, "@", "|" or "$" in them.
ROWS_TOOLTIP = ("The LoRA rows, edited on the node. Without the editor this is a JSON object with 'version' 2, "
                "'options' (separate_clip true or false) and 'rows', each row with id, on, lora, strength and "
                "strength_clip (null = follow the model strength); see docs/nodes.md. A LoRA Stack row list or "
                "pasted <lora:name:strength[:clip]> tags work too; 'hash' (sha256) finds a renamed or moved file.")


class PatchbayLoraStackLoader:
    DESCRIPTION = ("Applies a list of LoRAs to a model and (optionally) its text encoder in one node: per-row "
                   "on/off, strength and optional separate CLIP strength, all added in one fused step. Outputs "
                   "the applied LoRAs as <lora:name:strength> text, the files' trigger words, and the stack it "
                   "applied (incoming stack first) for further loaders or batch nodes.")
    CATEGORY = CATEGORY
    FUNCTION = "load"
    RETURN_TYPES = ("MODEL", "CLIP", "STRING", "STRING", "LORA_STACK")
    RETURN_NAMES = ("model", "clip", "lora_text", "trigger_words", "lora_stack")
    OUTPUT_TOOLTIPS = ("The model with the stack applied.",
                       "The text encoder with the stack applied (None if no CLIP was connected).",
                       "The applied LoRAs as <lora:name:strength> tags.",
                       "Trigger words of the enabled LoRAs, from their file metadata, comma-separated.",
                       "The stack this node applied: the incoming stack followed by these rows.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "The diffusion model the LoRAs are applied to."}),
                "rows": ("STRING", {"multiline": True, "default": EMPTY_ROWS, "dynamicPrompts": False,
                                    "tooltip": ROWS_TOOLTIP}),
                "mode": (list(MODES), {"default": "merge", "tooltip": MODE_TOOLTIP}),
            },
            "optional": {
                "clip": ("CLIP", {"tooltip": "Optional text encoder; leave unconnected for model-only use."}),
                "lora_stack": ("LORA_STACK", {"tooltip": "Optional stack applied first, then these rows (from "
                                                         "LoRA Stack or another loader's lora_stack). Its LoRAs "
                                                         "are applied here too: connect the unpatched model."}),
            },
        }

    @classmethod
    def VALIDATE_INPUTS(cls, rows=None):
        return files.validate_rows(rows)

    def load(self, model, rows, mode, clip=None, lora_stack=None):
        stack = as_stack(lora_stack) + parse_stack_text(rows)
        applied = apply_stack(model, clip, stack, mode)
        text = " ".join(lora_tag(n, s, c if clip is not None else None) for n, s, c in applied.names)
        return ui_result(record_run(stack, applied.reports),
                         (applied.model, applied.clip, text, ", ".join(applied.trigger_words), stack))


NODE_CLASS_MAPPINGS = {"PatchbayLoraStackLoader": PatchbayLoraStackLoader}
NODE_DISPLAY_NAME_MAPPINGS = {"PatchbayLoraStackLoader": "LoRA Stack Loader"}
