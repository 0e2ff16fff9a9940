"""IC-LoRA nodes, one module per node family.

* ``loader``: IC-LoRA Loader (weights through ``nodes.apply``, IC_LORA from the header);
* ``guide``: IC-LoRA Guide (LTX video) and Crop Guides; ``sampling``: their automatic-crop wrappers;
* ``panel``: IC-LoRA Panel (image models) and Crop Panel;
* ``shared``: the dict keys, attachment and wrapper names, image resize.

The maths lives in ``lora_core.iclora``; ComfyUI's hooks, wrappers and
attachments are reached only through the door (``nodes.host``).
"""
from __future__ import annotations

from ..host import ltx_drops_filler_tokens as host_drops_filler_tokens
from ..host import ltx_positions_are_intervals as host_uses_intervals
from ..ic_params import ic_lora_for_rows
from .guide import PatchbayICLoraCropGuides, PatchbayICLoraGuide, add_guide, crop_guides_from
from .loader import PatchbayICLoraLoader
from .panel import PatchbayICLoraCropPanel, PatchbayICLoraPanel

NODE_CLASS_MAPPINGS = {
    "PatchbayICLoraLoader": PatchbayICLoraLoader,
    "PatchbayICLoraGuide": PatchbayICLoraGuide,
    "PatchbayICLoraCropGuides": PatchbayICLoraCropGuides,
    "PatchbayICLoraPanel": PatchbayICLoraPanel,
    "PatchbayICLoraCropPanel": PatchbayICLoraCropPanel,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "PatchbayICLoraLoader": "IC-LoRA Loader",
    "PatchbayICLoraGuide": "IC-LoRA Guide (video)",
    "PatchbayICLoraCropGuides": "IC-LoRA Crop Guides",
    "PatchbayICLoraPanel": "IC-LoRA Panel (image)",
    "PatchbayICLoraCropPanel": "IC-LoRA Crop Panel",
}

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "add_guide", "crop_guides_from",
           "host_drops_filler_tokens", "host_uses_intervals", "ic_lora_for_rows", "PatchbayICLoraLoader"]
