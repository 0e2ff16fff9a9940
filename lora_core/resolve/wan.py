"""Wan 2.1 / 2.2: original names (ComfyUI ``comfy/ldm/wan/model.py`` module
tree, official checkpoints, musubi-tuner ``lora_unet_blocks_N_…``) ↔ diffusers
``WanTransformer3DModel`` names (``transformer.blocks.N.attn1.to_q``).

Per block (``blocks.N`` and VACE ``vace_blocks.N``)::

    self_attn.q/k/v/o           attn1.to_q/to_k/to_v/to_out.0
    cross_attn.q/k/v/o          attn2.to_q/to_k/to_v/to_out.0
    {self,cross}_attn.norm_q/k  attn{1,2}.norm_q/norm_k
    cross_attn.k_img / v_img    attn2.add_k_proj / add_v_proj          (I2V only)
    cross_attn.norm_k_img       attn2.norm_added_k                     (I2V only)
    ffn.0 / ffn.2               ffn.net.0.proj / ffn.net.2
    norm3 / norm2               norm2 / norm3   (the cross-attention norm is norm3 originally)
    modulation                  scale_shift_table
    before_proj / after_proj    proj_in / proj_out                     (VACE)

Top level: ``head.head`` ↔ ``proj_out``, ``head.modulation`` ↔
``scale_shift_table``, ``time_embedding.0/2`` / ``text_embedding.0/2`` ↔
``condition_embedder.{time,text}_embedder.linear_1/2``, ``time_projection.1``
↔ ``condition_embedder.time_proj``, ``img_emb.proj.0/1/3/4`` ↔
``condition_embedder.image_embedder.norm1/ff.net.0.proj/ff.net.2/norm2``.

An I2V LoRA's image-conditioning keys on a T2V model (no ``k_img``) are
reported with the reason ``"I2V-only key; the model is T2V"``.
"""
from __future__ import annotations

from typing import Iterator, Optional

from .entries import Alias, Hint
from .model import DIFFUSION, ModelIndex
from .rules import Renames, renamed_aliases

I2V_ONLY = "I2V-only key; the model is T2V"

_BLOCK = [
    ("self_attn.q", "attn1.to_q"), ("self_attn.k", "attn1.to_k"), ("self_attn.v", "attn1.to_v"),
    ("self_attn.o", "attn1.to_out.0"), ("self_attn.norm_q", "attn1.norm_q"),
    ("self_attn.norm_k", "attn1.norm_k"),
    ("cross_attn.q", "attn2.to_q"), ("cross_attn.k", "attn2.to_k"), ("cross_attn.v", "attn2.to_v"),
    ("cross_attn.o", "attn2.to_out.0"), ("cross_attn.norm_q", "attn2.norm_q"),
    ("cross_attn.norm_k", "attn2.norm_k"),
    ("cross_attn.k_img", "attn2.add_k_proj"), ("cross_attn.v_img", "attn2.add_v_proj"),
    ("cross_attn.norm_k_img", "attn2.norm_added_k"),
    ("ffn.0", "ffn.net.0.proj"), ("ffn.2", "ffn.net.2"),
    ("norm3", "norm2"), ("norm2", "norm3"),
    ("modulation", "scale_shift_table"),
    ("before_proj", "proj_in"), ("after_proj", "proj_out"),
]
_I2V_BLOCK = ("cross_attn.k_img", "cross_attn.v_img", "cross_attn.norm_k_img")
_TOP = [
    ("head.head", "proj_out"), ("head.modulation", "scale_shift_table"),
    ("time_embedding.0", "condition_embedder.time_embedder.linear_1"),
    ("time_embedding.2", "condition_embedder.time_embedder.linear_2"),
    ("text_embedding.0", "condition_embedder.text_embedder.linear_1"),
    ("text_embedding.2", "condition_embedder.text_embedder.linear_2"),
    ("time_projection.1", "condition_embedder.time_proj"),
    ("img_emb.proj.0", "condition_embedder.image_embedder.norm1"),
    ("img_emb.proj.1", "condition_embedder.image_embedder.ff.net.0.proj"),
    ("img_emb.proj.3", "condition_embedder.image_embedder.ff.net.2"),
    ("img_emb.proj.4", "condition_embedder.image_embedder.norm2"),
]
_I2V_TOP = ("img_emb.proj.0", "img_emb.proj.1", "img_emb.proj.3", "img_emb.proj.4")
RENAMES = Renames([(f"{b}.{{n}}.{o}", f"{b}.{{n}}.{d}") for b in ("blocks", "vace_blocks") for o, d in _BLOCK]
                  + _TOP)
_DIFFUSERS = dict(_BLOCK + _TOP)


def is_wan_original(index: ModelIndex) -> bool:
    paths = index.component(DIFFUSION)
    return "blocks.0.self_attn.q" in paths and "patch_embedding" in paths


def is_wan_diffusers(index: ModelIndex) -> bool:
    paths = index.component(DIFFUSION)
    return "blocks.0.attn1.to_q" in paths and "condition_embedder.time_proj" in paths


def is_i2v(index: ModelIndex) -> bool:
    paths = index.component(DIFFUSION)
    return "blocks.0.cross_attn.k_img" in paths or "blocks.0.attn2.add_k_proj" in paths


def aliases(index: ModelIndex, family: Optional[str]) -> Iterator[Alias]:
    original = is_wan_original(index)
    if not original and not is_wan_diffusers(index):
        return
    yield from renamed_aliases(index, RENAMES, model_is_original=original)
    if is_i2v(index):
        return
    hint = Hint(I2V_ONLY, "this key conditions on a reference image (Wan I2V); a T2V model has no such weight")
    blocks = {p.split(".")[1] for p in index.component(DIFFUSION) if p.startswith("blocks.")}
    for n in blocks:
        for inner in _I2V_BLOCK:
            yield DIFFUSION, f"blocks.{n}.{inner}", hint
            yield DIFFUSION, f"blocks.{n}.{_DIFFUSERS[inner]}", hint
    for top in _I2V_TOP:
        yield DIFFUSION, top, hint
        yield DIFFUSION, _DIFFUSERS[top], hint
