"""IC-LoRA Panel (image models, e.g. Flux) and IC-LoRA Crop Panel.

Reference and target(s) share one canvas; the noise mask keeps the
reference panel and the crop (automatic through the loader's OUTER_SAMPLE
wrapper, or this module's crop node) returns only the targets
(``lora_core.iclora.panel``).
"""
from __future__ import annotations

import logging

import torch

from ...lora_core.iclora import LAYOUTS, ICLoraError, PanelLayout, crop_panels, panel_layout, panel_noise_mask
from ..common import IC_CATEGORY
from .shared import CROP_MODES, PANEL_ATTR, PANEL_LATENT_KEY, resize_images

log = logging.getLogger("lora-patchbay.iclora")


def panel_outer_sample_wrapper(executor, *args, **kwargs):
    """Model wrapper (installed by the loader): crop a panel canvas to its target panels."""
    latent = args[1] if len(args) > 1 else kwargs.get("latent_image")
    desc = getattr(latent, PANEL_ATTR, None)
    out = executor(*args, **kwargs)
    if desc is None or not torch.is_tensor(out):
        return out
    lay = PanelLayout.from_dict(desc)
    try:
        cropped = crop_panels(out if out.ndim == 4 else out.squeeze(2), lay, channels_last=False)
    except ICLoraError as e:
        log.warning("IC-LoRA panel automatic crop skipped: %s", e)
        return out
    return cropped if out.ndim == 4 else cropped.unsqueeze(2)


class PatchbayICLoraPanel:
    DESCRIPTION = ("In-context panel for image models (Flux IC-LoRA): the reference image and the target(s) "
                   "share one canvas. Outputs the encoded canvas with a noise mask that keeps the reference "
                   "panel, the mask, and a crop description. With an IC-LoRA loaded by PatchbayICLoraLoader "
                   "with the loader's crop = auto the sampler returns only the target panel(s); otherwise use "
                   "PatchbayICLoraCropPanel.")
    CATEGORY = IC_CATEGORY
    FUNCTION = "execute"
    RETURN_TYPES = ("LATENT", "MASK", "PANEL_CROP")
    RETURN_NAMES = ("latent", "mask", "panel_crop")
    OUTPUT_TOOLTIPS = ("Canvas latent; noise mask 0 on the reference panel, 1 on the targets.",
                       "Canvas mask (1 = target).", "Where the target panels are, for the crop.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "vae": ("VAE", {"tooltip": "The image model's VAE (e.g. Flux)."}),
            "reference": ("IMAGE", {"tooltip": "Reference image placed in the first panel."}),
            "width": ("INT", {"default": 512, "min": 16, "max": 8192, "step": 16,
                              "tooltip": "Width of one panel (the target size), multiple of 16."}),
            "height": ("INT", {"default": 512, "min": 16, "max": 8192, "step": 16,
                               "tooltip": "Height of one panel, multiple of 16."}),
            "layout": (list(LAYOUTS), {"default": "side-by-side",
                                       "tooltip": "side-by-side (reference left), top-bottom (reference top) "
                                                  "or grid (reference first, row by row)."}),
            "panels": ("INT", {"default": 2, "min": 2, "max": 16,
                               "tooltip": "Number of panels for the grid layout (reference + targets)."}),
            "crop": (list(CROP_MODES), {"default": "center",
                                        "tooltip": "How the reference is fitted to the panel size."}),
        }}

    def execute(self, vae, reference, width, height, layout, panels, crop):
        if vae is None:
            raise ICLoraError("No VAE connected", fix="connect the image model's VAE")
        if not torch.is_tensor(reference) or reference.ndim != 4:
            raise ICLoraError("The reference must be an IMAGE (1, H, W, 3)")
        lay = panel_layout(layout, int(width), int(height), int(panels))
        canvas = torch.full((1, lay.canvas_height, lay.canvas_width, 3), 0.5, dtype=torch.float32)
        ref = resize_images(reference[:1].float(), lay.panel_width, lay.panel_height, crop)[..., :3]
        x, y, pw, ph = lay.rects[lay.reference]
        canvas[:, y:y + ph, x:x + pw] = ref.to(canvas.device)
        samples = vae.encode(canvas)
        mask = panel_noise_mask(lay)
        desc = lay.to_dict()
        desc["latent_scale"] = lay.canvas_height // samples.shape[-2]
        setattr(samples, PANEL_ATTR, desc)
        latent = {"samples": samples, "noise_mask": mask.reshape(1, 1, *mask.shape), PANEL_LATENT_KEY: desc}
        return latent, mask.unsqueeze(0), desc


class PatchbayICLoraCropPanel:
    DESCRIPTION = ("Returns only the target panel(s) of an in-context panel canvas, as a latent and/or image "
                   "batch. Safe on a latent the sampler already cropped.")
    CATEGORY = IC_CATEGORY
    FUNCTION = "execute"
    RETURN_TYPES = ("LATENT", "IMAGE")
    RETURN_NAMES = ("latent", "image")
    OUTPUT_TOOLTIPS = ("Target panel latent(s).", "Target panel image(s).")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"panel_crop": ("PANEL_CROP", {"tooltip": "Crop description from PatchbayICLoraPanel."})},
                "optional": {"latent": ("LATENT", {"tooltip": "Sampled canvas latent."}),
                             "image": ("IMAGE", {"tooltip": "Decoded canvas image."})}}

    def execute(self, panel_crop, latent=None, image=None):
        lay = PanelLayout.from_dict(panel_crop)
        out_latent = out_image = None
        if latent is not None:
            s = latent["samples"]
            d = int(panel_crop.get("latent_scale") or 8)
            if (s.shape[-2] * d, s.shape[-1] * d) == (lay.panel_height, lay.panel_width) and \
                    (s.shape[-2] * d, s.shape[-1] * d) != (lay.canvas_height, lay.canvas_width):
                cropped = s  # already cropped by the automatic crop
            else:
                cropped = crop_panels(s, lay, channels_last=False)
            out_latent = {k: v for k, v in latent.items() if k not in ("samples", "noise_mask", PANEL_LATENT_KEY)}
            out_latent["samples"] = cropped
        if image is not None:
            if image.shape[1] == lay.panel_height and image.shape[2] == lay.panel_width:
                out_image = image
            else:
                out_image = crop_panels(image, lay, channels_last=True)
        return out_latent, out_image

