"""Flux file families whose tensor layout differs from a plain LoRA.

Only layout is rewritten here; names that merely differ (diffusers,
ai-toolkit, OneTrainer, kohya) are the resolver's job.

**XLabs** (also ByteDance USO, which uses the same processor names):
``double_blocks.N.processor.{qkv,proj}_lora{1,2}.{down,up}.weight`` and
``single_blocks.N.processor.{qkv,proj}_lora.{down,up}.weight``, no alpha
(XLabs' loader applies them at scale 1, like diffusers).  Rewritten to BFL
module names with kohya suffixes:

====================  ===========================================
``qkv_lora1``         ``diffusion_model.double_blocks.N.img_attn.qkv``
``qkv_lora2``         ``diffusion_model.double_blocks.N.txt_attn.qkv``
``proj_lora1``        ``diffusion_model.double_blocks.N.img_attn.proj``
``proj_lora2``        ``diffusion_model.double_blocks.N.txt_attn.proj``
``proj_lora``         ``diffusion_model.single_blocks.N.linear2``
``qkv_lora``          ``diffusion_model.single_blocks.N.linear1_qkv``
====================  ===========================================

The single-block ``qkv_lora`` adds to the q/k/v part of ``linear1`` only
(``linear1`` is [q; k; v; mlp-in]).  ``linear1_qkv`` is the name ComfyUI and
our resolver give to rows [0, 3h) of ``linear1``, so the patch keeps its own
(3h, r) up matrix and lands on that slice; nothing is padded or read here.

**BFL Control LoRAs** (FLUX.1 Depth/Canny ``-lora``): bare BFL names with
PEFT ``lora_A``/``lora_B`` and no alpha (scale 1), plus

* ``lora_B.bias`` → a bias delta (kept as is; the LoRA parser reads it);
* ``…_norm.scale`` (RMSNorm weights in QK-norm) → ``…_norm.set_weight``,
  a :class:`~lora_core.ir.SetWeights` patch that replaces the weight.  The
  module name is the norm (``…query_norm``); its parameter is ``.scale``
  in BFL checkpoints, which the resolver must accept;
* ``img_in`` takes 128 input channels (latent + control latent) where the
  base model has 64: ``img_in.reshape_weight`` = (out, in) tells the patcher
  to zero-pad the target weight before adding ΔW.

Every name gets the ``diffusion_model.`` prefix so the file reads as a
ComfyUI-native Flux LoRA.
"""
from __future__ import annotations

import re
from typing import Iterable, Mapping

import torch

from ..errors import FormatError
from ..ir import ModulePatch, SetWeights
from . import ParseContext, register_converter, register_parser

PREFIX = "diffusion_model."

# ---------------------------------------------------------------- XLabs

XLABS_KEY = re.compile(r"^(?:diffusion_model\.)?(double_blocks|single_blocks)\.(\d+)\.processor\."
                       r"(qkv_lora1|qkv_lora2|proj_lora1|proj_lora2|qkv_lora|proj_lora)\.(down|up)\.weight$")
XLABS_TARGET = {
    ("double_blocks", "qkv_lora1"): "img_attn.qkv",
    ("double_blocks", "qkv_lora2"): "txt_attn.qkv",
    ("double_blocks", "proj_lora1"): "img_attn.proj",
    ("double_blocks", "proj_lora2"): "txt_attn.proj",
    ("single_blocks", "proj_lora"): "linear2",
    ("single_blocks", "qkv_lora"): "linear1_qkv",
}


class XLabsFluxConverter:
    name = "xlabs-flux"

    def detect(self, keys: Iterable[str], metadata: Mapping[str, str]) -> bool:
        return any(XLABS_KEY.match(k) for k in keys)

    def rewrite(self, ctx: ParseContext, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for key, value in tensors.items():
            m = XLABS_KEY.match(key)
            if m is None:
                out[key] = value
                continue
            blocks, index, lora, side = m.groups()
            target = XLABS_TARGET.get((blocks, lora))
            if target is None:  # e.g. qkv_lora1 under single_blocks: leave it to be reported
                out[key] = value
                continue
            module = f"{PREFIX}{blocks}.{index}.{target}"
            out[f"{module}.lora_{side}.weight"] = value
        ctx.note("XLabs Flux LoRA: processor names mapped to BFL modules (scale 1, as XLabs applies it)")
        return out


# ---------------------------------------------------------------- BFL control

NORM_SCALE = re.compile(r"_norm\.scale$")


class BflControlConverter:
    name = "bfl-control-flux"

    def detect(self, keys: Iterable[str], metadata: Mapping[str, str]) -> bool:
        keys = list(keys)
        has_img_in = any(k.removeprefix(PREFIX) == "img_in.lora_A.weight" for k in keys)
        has_norm_scale = any(k.endswith(("query_norm.scale", "key_norm.scale")) for k in keys)
        return has_img_in and has_norm_scale

    def rewrite(self, ctx: ParseContext, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for key, value in tensors.items():
            name = key if key.startswith(PREFIX) else PREFIX + key
            name = NORM_SCALE.sub("_norm.set_weight", name)
            out[name] = value
        up = out.get(f"{PREFIX}img_in.lora_B.weight")
        down = out.get(f"{PREFIX}img_in.lora_A.weight")
        if up is not None and down is not None:
            out[f"{PREFIX}img_in.reshape_weight"] = torch.tensor([int(up.shape[0]), int(down.shape[1])])
        ctx.note("BFL control LoRA: img_in widened for the control latent, QK-norm scales replaced")
        return out


# ---------------------------------------------------------------- set_weight

class SetWeightParser:
    """``.set_weight``: replace the target weight (ΔW = value − W)."""
    name = "set"
    suffixes = frozenset({".set_weight"})
    marker = frozenset({".set_weight"})

    def parse(self, ctx: ParseContext, module: str, parts: Mapping[str, torch.Tensor]):
        value = parts[".set_weight"]
        if value.is_floating_point() and not torch.isfinite(value.float()).all():
            raise FormatError("set_weight holds NaN or Inf", file=ctx.path, key=module + ".set_weight")
        return (ModulePatch(name=module, weight=SetWeights(value), keys=(module + ".set_weight",)),
                {".set_weight"})


register_converter(XLabsFluxConverter())
register_converter(BflControlConverter())
register_parser(SetWeightParser())
