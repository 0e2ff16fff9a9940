"""Which architecture a model is, and which one a LoRA was trained for.

Model families come from marker module paths (both namings) and a few shapes
(UNet cross-attention width tells SD1 768 / SD2 1024 / SDXL 2048).  A LoRA's
family is a guess from its module names with the prefix stripped (substring
tests are fine here: the guess only decides whether to print a warning, never
where a patch goes) and, where names are shared, from its ΔW widths.
"""
from __future__ import annotations

import re
import weakref
from typing import Iterable, Optional

from ..ir import LoraFile, ModulePatch
from . import flux, ltx, qwen, sd3, unet, wan
from .model import DIFFUSION, TE_IDENTITIES, ModelIndex
from .shapes import delta_shape
from .table import split_prefix

LABELS = {
    "sd1": "SD1.5", "sd2": "SD2", "sdxl": "SDXL", "unet": "an SD UNet", "sd3": "SD3",
    "flux": "Flux", "flux2": "Flux.2", "chroma": "Chroma", "ltxv": "LTX-Video", "ltx2": "LTX-2",
    "wan": "Wan", "qwen_image": "Qwen-Image", "z_image": "Z-Image", "lumina2": "Lumina 2",
    "clip_l": "CLIP-L", "clip_g": "CLIP-G", "clip_h": "CLIP-H", "t5": "T5",
}
_CONTEXT_DIM = {768: "sd1", 1024: "sd2", 2048: "sdxl"}


def label(family: Optional[str]) -> str:
    if not family:
        return "unknown"
    return " + ".join(LABELS.get(f, f) for f in family.split("+"))


def detect_index_family(index: ModelIndex) -> Optional[str]:
    paths = index.component(DIFFUSION)
    if paths:
        if unet.is_unet(index):
            for path, mod in paths.items():
                if path.endswith("attn2.to_k") and mod.weight_shape and len(mod.weight_shape) >= 2:
                    return _CONTEXT_DIM.get(int(mod.weight_shape[1]), "unet")
            return "unet"
        if sd3.is_sd3_original(index) or sd3.is_sd3_diffusers(index):
            return "sd3"
        if flux.is_flux_original(index):
            if any(p.startswith("double_stream_modulation") for p in paths):
                return "flux2"
            if any(p.startswith("distilled_guidance_layer") for p in paths):
                return "chroma"
            return "flux"
        if flux.is_flux_diffusers(index):
            return "flux"
        if ltx.is_ltx_original(index) or ltx.is_ltx_diffusers(index):
            return "ltx2" if ltx.is_ltx2(index) else "ltxv"
        if wan.is_wan_original(index) or wan.is_wan_diffusers(index):
            return "wan"
        if qwen.is_qwen_image(index):
            return "qwen_image"
        if qwen.is_z_image_original(index) or qwen.is_z_image_diffusers(index):
            emb = paths.get("x_embedder") or paths.get("all_x_embedder.2-1")
            width = int(emb.weight_shape[0]) if emb is not None and emb.weight_shape else 0
            return "lumina2" if width == 2304 else "z_image"
    tes = [t for t in TE_IDENTITIES if index.component(t)]
    if tes and not paths:
        return "+".join(tes)
    return None


# ---------------------------------------------------------------- LoRA side

_TE_PREFIXES = ("lora_te_", "lora_te1_", "lora_te2_", "lora_te3_", "lora_prior_te_", "text_encoder.",
                "text_encoder_2.", "text_encoder_3.", "text_encoders.")


def _stripped(name: str) -> str:
    """The name without its file prefix, flattened (guessing only)."""
    return split_prefix(name)[0][0].replace(".", "_")


def _in_width(patches: Iterable[ModulePatch], pattern: re.Pattern) -> Optional[int]:
    for p in patches:
        if pattern.search(_stripped(p.name)):
            ds = delta_shape(p)
            if ds and ds[1]:
                return int(ds[1])
    return None


_UNET = re.compile(r"^(input_blocks|output_blocks|middle_block|down_blocks|up_blocks|mid_block)_")
_ATTN2_K = re.compile(r"attn2_(processor_)?to_k$")
_JOINT_Q = re.compile(r"^transformer_blocks_(\d+)_attn_(to_q|to_k|add_q_proj|add_k_proj)$")
_LTX_BLOCK = re.compile(r"^transformer_blocks_\d+_(attn1|attn2|ff)_")
_CLIP_Q = re.compile(r"(text_model_)?encoder_layers_\d+_self_attn_q_proj$")
_CLIP_WIDTH = {768: "clip_l", 1024: "clip_h", 1280: "clip_g"}


_guesses: "weakref.WeakKeyDictionary[LoraFile, Optional[str]]" = weakref.WeakKeyDictionary()


def guess_family(lora: LoraFile) -> Optional[str]:
    """The architecture ``lora`` was trained for, or None (cached per parsed file)."""
    try:
        return _guesses[lora]
    except (KeyError, TypeError):
        pass
    family = _guess(lora)
    try:
        _guesses[lora] = family
    except TypeError:
        pass
    return family


def _guess(lora: LoraFile) -> Optional[str]:
    diffusion = [p for p in lora.patches if not p.name.startswith(_TE_PREFIXES)]
    rests = [_stripped(p.name) for p in diffusion]
    joined = "\n".join(rests)
    if diffusion:
        if "double_blocks_" in joined or "single_blocks_" in joined or "single_transformer_blocks_" in joined:
            return "flux"
        if "joint_blocks_" in joined:
            return "sd3"
        if re.search(r"audio_(attn|ff|patchify|proj_in|to_video)|video_to_audio", joined):
            return "ltx2"
        if any(r.startswith(("blocks_", "vace_blocks_", "_blocks_")) for r in rests):
            return "wan"
        if "noise_refiner_" in joined or "context_refiner_" in joined or any(
                r.startswith("layers_") and "_attention_" in r for r in rests):
            return "z_image"
        if re.search(r"^transformer_blocks_\d+_(img_mod|txt_mod|img_mlp|txt_mlp)", joined, re.M):
            return "qwen_image"
        if any(_UNET.match(r) for r in rests):
            width = _in_width(diffusion, _ATTN2_K)
            if width in _CONTEXT_DIM:
                return _CONTEXT_DIM[width]
            if any(p.name.startswith(("lora_te2_", "text_encoder_2.")) for p in lora.patches):
                return "sdxl"
            if re.search(r"^(down_blocks_3|up_blocks_3|input_blocks_(9|10|11)_)", joined, re.M):
                return "sd1"
            if re.search(r"^(input_blocks|output_blocks|middle_block)_\d*_?\d+_transformer_blocks_[1-9]", joined, re.M):
                return "sdxl"
            return None
        if any(_JOINT_Q.match(r) for r in rests):
            width = _in_width(diffusion, re.compile(r"^transformer_blocks_\d+_attn_to_q$"))
            if width in (1536, 2432):
                return "sd3"
            blocks = [int(m.group(1)) for r in rests for m in [_JOINT_Q.match(r)] if m]
            if blocks and max(blocks) >= 24:
                return "qwen_image"
            return "flux" if width in (None, 3072) else None
        if any(_LTX_BLOCK.match(r) for r in rests):
            # video-only LTX-2 LoRAs have no audio keys; LTX-2's video width is 4096, LTX-Video's 2048
            width = _in_width(diffusion, re.compile(r"^transformer_blocks_\d+_attn1_to_q$"))
            return "ltx2" if width == 4096 else "ltxv"
        return None
    # Text-encoder-only file.
    te = [p for p in lora.patches if p.name.startswith(_TE_PREFIXES)]
    if any(p.name.startswith(("lora_te2_", "text_encoder_2.")) for p in te) and \
            any(p.name.startswith(("lora_te1_", "text_encoder.")) for p in te):
        return "clip_l+clip_g"
    width = _in_width(te, _CLIP_Q)
    if width in _CLIP_WIDTH:
        return _CLIP_WIDTH[width]
    if any("encoder_block_" in _stripped(p.name) for p in te):
        return "t5"
    return None
