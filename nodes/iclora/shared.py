"""Names and helpers shared by the IC-LoRA node modules (no ComfyUI model machinery here)."""
from __future__ import annotations

import torch

import comfy.utils

try:  # LTX-2 combined audio-video latents (ComfyUI v0.14+); older hosts have none
    from comfy.nested_tensor import NestedTensor
except ImportError:  # pragma: no cover - depends on the host
    NestedTensor = None

HAS_AV_LATENTS = NestedTensor is not None

STATE_KEY = "patchbay_iclora_guides"              # our guide record, in conditioning and latent dicts
PANEL_LATENT_KEY = "patchbay_panel"               # panel crop description, in a panel LATENT dict
PANEL_ATTR = "_patchbay_panel"                    # the same, as an attribute of the panel latent tensor
LOADED_ATTACHMENT_KEY = "patchbay_iclora_loaded"  # ModelPatcher attachment: [(lora name, factor)] loaded
CORE_METADATA_ATTACHMENT = "lora_metadata"        # read by core's GetICLoRAParameters where it exists
GUIDE_WRAPPER_KEY = "patchbay_iclora_guide_crop"  # sampling wrappers of the guides' automatic crop
PANEL_WRAPPER_KEY = "patchbay_iclora_panel_crop"  # OUTER_SAMPLE wrapper of the panels' automatic crop
GUIDE_COND_KEYS = ("keyframe_idxs", "guide_attention_entries", STATE_KEY)  # what a guide adds to a conditioning
LATENT_CHANNELS = 128
CROP_MODES = ("stretch", "center")
CROP_CHOICES = ("auto", "manual")
# Workflows saved by earlier builds had one "mode" widget meaning the crop.
LEGACY_CROP_MODES = {"auto crop": "auto", "manual crop": "manual"}


def cond_value(cond, key, default=None):
    """The first value of ``key`` in a conditioning's entries."""
    for entry in cond or []:
        if key in entry[1]:
            return entry[1][key]
    return default


def av_parts(samples) -> list | None:
    """The parts (video, audio, ...) of a combined audio-video latent, or None for a plain tensor."""
    return list(samples.unbind()) if getattr(samples, "is_nested", False) else None


def av_join(parts):
    """A combined audio-video latent (``LTXVConcatAVLatent``'s type) of ``parts``, video first."""
    return NestedTensor(list(parts))


def resize_images(images: torch.Tensor, width: int, height: int, crop: str) -> torch.Tensor:
    """IMAGE batch (B, H, W, C) resized to width×height: stretched, or center-cropped first."""
    if images.shape[1] == height and images.shape[2] == width:
        return images
    return comfy.utils.common_upscale(images.movedim(-1, 1), width, height, "bilinear",
                                      "center" if crop == "center" else "disabled").movedim(1, -1)
