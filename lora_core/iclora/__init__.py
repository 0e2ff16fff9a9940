"""In-context ("IC") LoRA maths, host-agnostic.

Two families:

* LTX-style video guides (``geometry``, ``dilation``, ``coords``, ``masks``,
  ``crop``): a reference latent is appended to the video latent along time,
  kept clean, positioned over the target frames and removed after sampling.
* Image panels (``panel``): reference and target share one canvas; the
  reference panel is kept by the noise mask and cropped away afterwards.

``metadata`` reads the IC parameters from a LoRA file header.
Only torch is used here; nothing in this package imports ComfyUI.
"""
from .errors import ICLoraError
from .geometry import (
    VAE_SCALE, GuidePlan, plan_guide, trim_to_8n1, resolve_frame_idx, snap_frame_idx,
    latent_index_for, pixel_frames_for_latent, latent_frames_for_pixels,
)
from .dilation import dilate_latent
from .coords import latent_token_intervals, guide_keyframe_coords
from .masks import base_noise_mask, guide_noise_mask
from .crop import (GuideRecord, count_appended_frames, crop_guides, keep_index_for_window,
                   next_record, step_active)
from .panel import LAYOUTS, PanelLayout, panel_layout, crop_panels, panel_noise_mask
from .metadata import ICParams, parse_ic_metadata, merge_factors, stack_ic_params
from .attention import mask_to_token_weights, token_bias, biased_attention

__all__ = [
    "ICLoraError", "VAE_SCALE", "GuidePlan", "plan_guide", "trim_to_8n1", "resolve_frame_idx",
    "snap_frame_idx", "latent_index_for", "pixel_frames_for_latent", "latent_frames_for_pixels",
    "dilate_latent", "latent_token_intervals", "guide_keyframe_coords", "base_noise_mask",
    "guide_noise_mask", "GuideRecord", "count_appended_frames", "crop_guides",
    "keep_index_for_window", "next_record", "step_active", "LAYOUTS", "PanelLayout", "panel_layout", "crop_panels", "panel_noise_mask",
    "ICParams", "parse_ic_metadata", "merge_factors", "stack_ic_params", "mask_to_token_weights", "token_bias",
    "biased_attention",
]
