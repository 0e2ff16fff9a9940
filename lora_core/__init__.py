"""lora_core: the host-agnostic LoRA engine of LoRA Patchbay.

File → format detection → intermediate representation (``ir``) → key
resolution against a model's parameter names (``resolve``) → maths
(``kinds``) → patcher (merge with exact restore) or bypass (side path).
Uses torch, safetensors and einops only; never imports ComfyUI.
"""
__version__ = "0.1.0"
