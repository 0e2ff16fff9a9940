"""In-context ("IC") LoRA maths, host-agnostic.

Two families:

* LTX-style video guides (``geometry``, ``dilation``, ``coords``, ``masks``,
  ``crop``): a reference latent is appended to the video latent along time,
  kept clean, positioned over the target frames and removed after sampling.
* Packed audio-video latents (``av``): the video part of LTX-2's flat
  sampler latent, where the guides live.
* Image panels (``panel``): reference and target share one canvas; the
  reference panel is kept by the noise mask and cropped away afterwards.

``metadata`` reads the IC parameters from a LoRA file header and builds the
typed ``ICLora`` value the nodes pass around.
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
from .crop import (GuideRecord, WindowSelection, count_appended_frames, crop_guides, guides_active,
                   keep_index_for_window, next_record, present_guide_weights, step_active, step_of_sigma,
                   window_selection)
from .panel import LAYOUTS, PanelLayout, panel_layout, crop_panels, panel_noise_mask
from .metadata import ICLora, ICParams, ic_lora_for_file, ic_lora_for_stack_rows, merge_factors, parse_ic_metadata
from .attention import mask_to_token_weights, token_bias, biased_attention
from .av import crop_packed_video, pack, scatter_packed_video, select_packed_video, split_packed, video_frames

__all__ = [
    "ICLoraError", "VAE_SCALE", "GuidePlan", "plan_guide", "trim_to_8n1", "resolve_frame_idx",
    "snap_frame_idx", "latent_index_for", "pixel_frames_for_latent", "latent_frames_for_pixels",
    "dilate_latent", "latent_token_intervals", "guide_keyframe_coords", "base_noise_mask",
    "guide_noise_mask", "GuideRecord", "count_appended_frames", "crop_guides",
    "keep_index_for_window", "next_record", "step_active", "WindowSelection", "window_selection",
    "guides_active", "step_of_sigma", "present_guide_weights", "LAYOUTS", "PanelLayout", "panel_layout", "crop_panels", "panel_noise_mask",
    "ICParams", "parse_ic_metadata", "merge_factors", "ICLora", "ic_lora_for_file", "ic_lora_for_stack_rows", "mask_to_token_weights", "token_bias",
    "biased_attention", "crop_packed_video", "pack", "scatter_packed_video", "select_packed_video",
    "split_packed", "video_frames",
]
