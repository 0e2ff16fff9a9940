"""IC-LoRA Loader: an IC-LoRA's weights on the model, and its IC_LORA parameters for the guides.

The weights go through the same stack application as every other LoRA
(``nodes.apply``); the parameters are read from the file's header
(``nodes.ic_params``) whatever the strength.
"""
from __future__ import annotations

from ...lora_core.iclora import merge_factors
from ...lora_core.stack import LoraStack, StackEntry
from .. import files, host
from ..apply import apply_stack
from ..common import (IC_CATEGORY, MODE_TOOLTIP, MODES, finite_number, number_inputs_error, strength_input,
                      validation_result)
from ..ic_params import file_ic_lora
from .panel import panel_outer_sample_wrapper
from .shared import CORE_METADATA_ATTACHMENT, CROP_CHOICES, LEGACY_CROP_MODES, LOADED_ATTACHMENT_KEY, PANEL_WRAPPER_KEY


class PatchbayICLoraLoader:
    DESCRIPTION = ("Loads an in-context (IC) LoRA and outputs its parameters (reference downscale factor) read "
                   "from the file's header, whatever the strength. Disabled or at strength 0 the model is "
                   "returned unchanged and the guide nodes fed by it add nothing.")
    CATEGORY = IC_CATEGORY
    FUNCTION = "execute"
    RETURN_TYPES = ("MODEL", "IC_LORA", "IC_LORA_PARAMETERS")
    RETURN_NAMES = ("model", "ic_lora", "iclora_parameters")
    OUTPUT_TOOLTIPS = ("Model with the IC-LoRA applied.", "IC-LoRA parameters for PatchbayICLoraGuide.",
                       "Parameters for core's LTXVAddGuide on ComfyUI versions that accept them.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("MODEL", {"tooltip": "The diffusion model (LTX-Video, LTX-2 or an image model)."}),
            "lora_name": (files.lora_names(), {"tooltip": "The IC-LoRA file."}),
            "strength": strength_input("LoRA strength. 0 disables the LoRA and its guides."),
            "enabled": ("BOOLEAN", {"default": True,
                                    "tooltip": "Off: no LoRA weights and no guides (base result)."}),
            "mode": (list(MODES), {"default": "merge", "tooltip": MODE_TOOLTIP}),
            "crop": (list(CROP_CHOICES), {"default": "auto", "tooltip": (
                "auto: guide frames and reference panels are removed after sampling without an extra "
                "node. manual: use IC-LoRA Crop Guides / Crop Panel yourself (two-stage pipelines).")}),
        }}

    @classmethod
    def VALIDATE_INPUTS(cls, lora_name=None, strength=None):
        # None = linked from another node: checked when it runs
        return validation_result(None if lora_name is None else files.validation_error(lora_name),
                                 number_inputs_error(cls, strength=strength))

    def execute(self, model, lora_name, strength, enabled, mode="merge", crop="auto"):
        if mode in LEGACY_CROP_MODES:
            mode, crop = "merge", LEGACY_CROP_MODES[mode]
        auto = crop == "auto"
        strength = finite_number("strength", strength)
        params, meta = file_ic_lora(lora_name, strength, enabled, auto)
        k = params.reference_downscale_factor
        loaded = list(host.attachment(model, LOADED_ATTACHMENT_KEY, []))
        out, attachments = model, None
        if params.enabled:
            merge_factors(loaded + [(lora_name, k)])
            row = StackEntry(lora=lora_name, strength_model=float(strength))
            out = apply_stack(model, None, LoraStack((row,)), mode).model
            attachments = {LOADED_ATTACHMENT_KEY: loaded + [(lora_name, k)], CORE_METADATA_ATTACHMENT: meta}
        out = host.decorated_model(out, model, attachments=attachments,
                                   outer_sample=(PANEL_WRAPPER_KEY, panel_outer_sample_wrapper) if auto else None)
        return out, params, {"reference_downscale_factor": k}

