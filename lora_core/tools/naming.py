"""The three target namings and how a model module is spelled in each.

==========  ===================================  ====================================  ==========================
naming      diffusion model                      text encoders                         tensors
==========  ===================================  ====================================  ==========================
kohya       ``lora_unet_`` + path, ``.``→``_``    ``lora_te_`` / ``lora_te1_`` (CLIP-L),  ``lora_up`` / ``lora_down``
                                                 ``lora_te2_`` (CLIP-G), ``lora_te3_`` (T5)   / ``alpha``
peft        ``unet.`` (UNets) / ``transformer.``  ``text_encoder.`` / ``text_encoder_2.``  ``lora_B`` / ``lora_A``; scale in
            + dotted path                        / ``text_encoder_3.``                   ``lora_adapter_metadata``
comfy       ``diffusion_model.`` + path          ``text_encoders.<clip_l…>.transformer.``  ``lora_up`` / ``lora_down``
                                                 + path                                  / ``alpha``
==========  ===================================  ====================================  ==========================

The path is the model's own module path, except for SD UNets, where kohya and
PEFT files use the diffusers block names and ComfyUI the original (ldm) ones:
both spellings come from the resolver's alias table, so the model may be given
in either naming.  Other families keep the model's naming (give a ComfyUI
checkpoint for ComfyUI-style files, a diffusers one for PEFT-style files).
"""
from __future__ import annotations

from typing import Iterable, Optional

from ..errors import PatchbayError
from ..resolve import model_context
from ..resolve.model import DIFFUSION, Module
from ..resolve.table import DOTTED, Target

NAMINGS = ("kohya", "peft", "comfy")
UNET_FAMILIES = ("sd1", "sd2", "sdxl", "unet")
_DIFFUSERS_UNET_HEADS = ("down_blocks.", "up_blocks.", "mid_block.", "conv_in", "conv_out", "conv_norm_out",
                         "time_embedding.", "add_embedding.")
COMFY_TE_CONTAINERS = {"clip_l": "clip_l.transformer.", "clip_g": "clip_g.transformer.",
                       "clip_h": "clip_h.transformer.", "t5": "t5xxl.transformer."}

# Tensor suffixes per naming: (up, down).
PAIR_SUFFIXES = {"kohya": (".lora_up.weight", ".lora_down.weight"),
                 "comfy": (".lora_up.weight", ".lora_down.weight"),
                 "peft": (".lora_B.weight", ".lora_A.weight")}


def detect_naming(names: Iterable[str]) -> str:
    """The naming most of ``names`` (module names of a file) use."""
    counts = {n: 0 for n in NAMINGS}
    for name in names:
        if name.startswith(("lora_", "lycoris_", "oft_unet_")):
            counts["kohya"] += 1
        elif name.startswith(("diffusion_model.", "text_encoders.", "model.diffusion_model.")):
            counts["comfy"] += 1
        else:
            counts["peft"] += 1
    return max(NAMINGS, key=lambda n: counts[n])


def check_naming(naming: str) -> str:
    if naming not in NAMINGS:
        raise PatchbayError(f"unknown naming {naming!r}", fix=f"use one of {', '.join(NAMINGS)}")
    return naming


class ModelNames:
    """Spells the modules of one model (given by its parameter shapes) in each naming."""

    def __init__(self, model_shapes):
        self.ctx = model_context(model_shapes)
        self.index = self.ctx.index
        self.family = self.ctx.family
        self._aliases: dict[int, list[str]] = {}
        for path, entry in self.ctx.table.tables.get((DOTTED, DIFFUSION), {}).items():
            if isinstance(entry, Target) and entry.slice is None and ".processor." not in path:
                self._aliases.setdefault(id(entry.module), []).append(path)
        self.by_weight_key = {m.weight_key: m for m in self.index.modules.values() if m.weight_key}
        self.by_bias_key = {m.bias_key: m for m in self.index.modules.values() if m.bias_key}

    def _unet_path(self, mod: Module, diffusers: bool) -> str:
        for path in [mod.path] + self._aliases.get(id(mod), []):
            if path.startswith(_DIFFUSERS_UNET_HEADS) == diffusers:
                return path
        return mod.path

    def name(self, mod: Module, naming: str) -> str:
        """The module's name in ``naming`` (without a tensor suffix)."""
        comp = mod.component
        if comp == DIFFUSION:
            unet = self.family in UNET_FAMILIES
            if naming == "comfy":
                return "diffusion_model." + (self._unet_path(mod, False) if unet else mod.path)
            path = self._unet_path(mod, True) if unet else mod.path
            if naming == "kohya":
                return "lora_unet_" + path.replace(".", "_")
            return ("unet." if unet else "transformer.") + path
        has_g = bool(self.index.component("clip_g"))
        if comp in ("clip_l", "clip_h", "clip_g", "t5"):
            if naming == "comfy":
                return "text_encoders." + COMFY_TE_CONTAINERS[comp] + mod.path
            if naming == "kohya":
                prefix = {"clip_l": "lora_te1_" if has_g else "lora_te_", "clip_h": "lora_te_",
                          "clip_g": "lora_te2_", "t5": "lora_te3_"}[comp]
                return prefix + mod.path.replace(".", "_")
            prefix = {"clip_l": "text_encoder.", "clip_h": "text_encoder.", "clip_g": "text_encoder_2.",
                      "t5": "text_encoder_3." if has_g else "text_encoder_2."}[comp]
            return prefix + mod.path
        raise PatchbayError(f"module {mod.name!r} belongs to no diffusion model or known text encoder, so it "
                            f"has no {naming} name", fix="pass a model whose components are recognised")

    def module_of(self, weight_key: Optional[str], bias_key: Optional[str] = None) -> Module:
        mod = self.by_weight_key.get(weight_key) if weight_key else None
        if mod is None and bias_key:
            mod = self.by_bias_key.get(bias_key)
        if mod is None:
            raise PatchbayError("parameter belongs to no module of the model", key=weight_key or bias_key)
        return mod
