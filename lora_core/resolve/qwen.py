"""Qwen-Image and Z-Image / Lumina2.

Qwen-Image: ComfyUI keeps the diffusers module names
(``transformer_blocks.N.attn.to_q``, ``img_mlp.net.0.proj``, ``img_mod.1`` …),
so the generic prefixes (bare, ``transformer.``, ``diffusion_model.``,
``lycoris_``, ``lora_unet_``) are all it needs; the PEFT ``.default`` adapter
spelling is removed by the parser.

Z-Image / Lumina2 (ComfyUI ``NextDiT`` names ↔ diffusers, in ``layers``,
``noise_refiner`` and ``context_refiner`` blocks)::

    attention.qkv        ← attention.to_q · to_k · to_v   (row slices: q = heads·head_dim,
                                                          k = v = kv_heads·head_dim)
    attention.out          attention.to_out.0
    attention.q_norm/k_norm  attention.norm_q / norm_k
    x_embedder             all_x_embedder.2-1
    final_layer.*          all_final_layer.2-1.*
"""
from __future__ import annotations

from typing import Iterator, Optional

from .entries import Alias
from .model import DIFFUSION, ModelIndex
from .rules import SPLIT_UNSUPPORTED, Renames, fused_slices, renamed_aliases, rows

_REFINED = ("layers", "noise_refiner", "context_refiner")
Z_RENAMES = Renames(
    [(f"{b}.{{n}}.attention.out", f"{b}.{{n}}.attention.to_out.0") for b in _REFINED]
    + [(f"{b}.{{n}}.attention.q_norm", f"{b}.{{n}}.attention.norm_q") for b in _REFINED]
    + [(f"{b}.{{n}}.attention.k_norm", f"{b}.{{n}}.attention.norm_k") for b in _REFINED]
    + [("x_embedder", "all_x_embedder.2-1"), ("final_layer.*", "all_final_layer.2-1.*")]
)


def is_qwen_image(index: ModelIndex) -> bool:
    paths = index.component(DIFFUSION)
    return "transformer_blocks.0.img_mod.1" in paths and "transformer_blocks.0.txt_mlp.net.2" in paths


def is_z_image_original(index: ModelIndex) -> bool:
    paths = index.component(DIFFUSION)
    return "layers.0.attention.qkv" in paths and "noise_refiner.0.attention.qkv" in paths


def is_z_image_diffusers(index: ModelIndex) -> bool:
    paths = index.component(DIFFUSION)
    return "layers.0.attention.to_q" in paths and any(p.startswith("all_x_embedder.") for p in paths)


def aliases(index: ModelIndex, family: Optional[str]) -> Iterator[Alias]:
    paths = index.component(DIFFUSION)
    if is_z_image_original(index):
        yield from renamed_aliases(index, Z_RENAMES, model_is_original=True)
        for path, mod in paths.items():
            if not path.endswith(".attention.qkv"):
                continue
            block = path[: -len(".qkv")]
            out = paths.get(block + ".out")
            total = rows(mod)
            q = int(out.weight_shape[1]) if out is not None and out.weight_shape and len(out.weight_shape) == 2 \
                else total // 3
            kv = (total - q) // 2
            for name, target in zip(("to_q", "to_k", "to_v"), fused_slices(mod, (q, kv, kv))):
                yield DIFFUSION, f"{block}.{name}", target
    elif is_z_image_diffusers(index):
        yield from renamed_aliases(index, Z_RENAMES, model_is_original=False)
        for path in paths:
            if path.endswith(".attention.to_q"):
                yield DIFFUSION, path[: -len(".to_q")] + ".qkv", SPLIT_UNSUPPORTED
