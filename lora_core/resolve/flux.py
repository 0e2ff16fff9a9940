"""Flux (BFL names in ComfyUI / kohya) ↔ diffusers names (ai-toolkit, OneTrainer, SimpleTuner).

One-to-one renames (original ↔ diffusers, per double block N)::

    double_blocks.N.img_attn.proj        transformer_blocks.N.attn.to_out.0
    double_blocks.N.txt_attn.proj        transformer_blocks.N.attn.to_add_out
    double_blocks.N.img_mlp.0 / .2       transformer_blocks.N.ff.net.0.proj / ff.net.2
    double_blocks.N.txt_mlp.0 / .2       transformer_blocks.N.ff_context.net.0.proj / .net.2
    double_blocks.N.img_mod.lin          transformer_blocks.N.norm1.linear
    double_blocks.N.txt_mod.lin          transformer_blocks.N.norm1_context.linear
    …img_attn.norm.query_norm/key_norm   …attn.norm_q / norm_k  (txt: norm_added_q / norm_added_k)
    single_blocks.N.linear2              single_transformer_blocks.N.proj_out
    single_blocks.N.modulation.lin       single_transformer_blocks.N.norm.linear
    img_in, txt_in, time_in, vector_in, guidance_in, final_layer.linear
                                         x_embedder, context_embedder, time_text_embed.*, proj_out

Fused targets (h = hidden size = qkv rows / 3), row slices of the original weight::

    img_attn.qkv   ← attn.to_q [0,h) · attn.to_k [h,2h) · attn.to_v [2h,3h)
    txt_attn.qkv   ← attn.add_q_proj · add_k_proj · add_v_proj
    linear1        ← attn.to_q · to_k · to_v · proj_mlp [3h, end);  ``linear1_qkv`` = [0, 3h)

Flux.2 adds ``ff.linear_in/out``, ``attn.to_qkv_mlp_proj`` (all of
``linear1``), ``attn.to_out`` (``linear2``), ``time_guidance_embed`` and the
shared ``*_modulation*.lin`` ↔ ``.linear`` spellings.

``final_layer.adaLN_modulation.1`` ↔ ``norm_out.linear`` swaps its scale and
shift halves, which a row slice cannot express: reported, not applied.  A
model in diffusers naming cannot take a file's fused qkv (it would need
splitting): reported too.
"""
from __future__ import annotations

from typing import Iterator, Optional

from ..ir import Slice
from .entries import Alias, Hint, Target
from .model import DIFFUSION, ModelIndex
from .rules import SPLIT_UNSUPPORTED, Renames, fused_slices, renamed_aliases, rows

RENAMES = Renames([
    ("double_blocks.{n}.img_attn.proj", "transformer_blocks.{n}.attn.to_out.0"),
    ("double_blocks.{n}.txt_attn.proj", "transformer_blocks.{n}.attn.to_add_out"),
    ("double_blocks.{n}.img_mlp.0", "transformer_blocks.{n}.ff.net.0.proj"),
    ("double_blocks.{n}.img_mlp.2", "transformer_blocks.{n}.ff.net.2"),
    ("double_blocks.{n}.txt_mlp.0", "transformer_blocks.{n}.ff_context.net.0.proj"),
    ("double_blocks.{n}.txt_mlp.2", "transformer_blocks.{n}.ff_context.net.2"),
    ("double_blocks.{n}.img_mod.lin", "transformer_blocks.{n}.norm1.linear"),
    ("double_blocks.{n}.txt_mod.lin", "transformer_blocks.{n}.norm1_context.linear"),
    ("double_blocks.{n}.img_attn.norm.query_norm", "transformer_blocks.{n}.attn.norm_q"),
    ("double_blocks.{n}.img_attn.norm.key_norm", "transformer_blocks.{n}.attn.norm_k"),
    ("double_blocks.{n}.txt_attn.norm.query_norm", "transformer_blocks.{n}.attn.norm_added_q"),
    ("double_blocks.{n}.txt_attn.norm.key_norm", "transformer_blocks.{n}.attn.norm_added_k"),
    ("single_blocks.{n}.linear2", "single_transformer_blocks.{n}.proj_out"),
    ("single_blocks.{n}.modulation.lin", "single_transformer_blocks.{n}.norm.linear"),
    ("single_blocks.{n}.norm.query_norm", "single_transformer_blocks.{n}.attn.norm_q"),
    ("single_blocks.{n}.norm.key_norm", "single_transformer_blocks.{n}.attn.norm_k"),
    ("img_in", "x_embedder"),
    ("txt_in", "context_embedder"),
    ("time_in.in_layer", "time_text_embed.timestep_embedder.linear_1"),
    ("time_in.out_layer", "time_text_embed.timestep_embedder.linear_2"),
    ("vector_in.in_layer", "time_text_embed.text_embedder.linear_1"),
    ("vector_in.out_layer", "time_text_embed.text_embedder.linear_2"),
    ("guidance_in.in_layer", "time_text_embed.guidance_embedder.linear_1"),
    ("guidance_in.out_layer", "time_text_embed.guidance_embedder.linear_2"),
    ("final_layer.linear", "proj_out"),
])

# Flux.2 (BFL names as in Flux.1, plus shared modulations) ↔ diffusers Flux2
# names, after diffusers' Flux2 LoRA conversion table.  Applied next to the
# Flux.1 table; a Flux.1 model simply has none of these modules.
FLUX2_RENAMES = Renames([
    ("double_blocks.{n}.img_mlp.0", "transformer_blocks.{n}.ff.linear_in"),
    ("double_blocks.{n}.img_mlp.2", "transformer_blocks.{n}.ff.linear_out"),
    ("double_blocks.{n}.txt_mlp.0", "transformer_blocks.{n}.ff_context.linear_in"),
    ("double_blocks.{n}.txt_mlp.2", "transformer_blocks.{n}.ff_context.linear_out"),
    ("single_blocks.{n}.linear1", "single_transformer_blocks.{n}.attn.to_qkv_mlp_proj"),
    ("single_blocks.{n}.linear2", "single_transformer_blocks.{n}.attn.to_out"),
    ("time_in.in_layer", "time_guidance_embed.timestep_embedder.linear_1"),
    ("time_in.out_layer", "time_guidance_embed.timestep_embedder.linear_2"),
    ("guidance_in.in_layer", "time_guidance_embed.guidance_embedder.linear_1"),
    ("guidance_in.out_layer", "time_guidance_embed.guidance_embedder.linear_2"),
    ("single_stream_modulation.lin", "single_stream_modulation.linear"),
    ("double_stream_modulation_img.lin", "double_stream_modulation_img.linear"),
    ("double_stream_modulation_txt.lin", "double_stream_modulation_txt.linear"),
])

SWAPPED = Hint("unsupported kind", "diffusers norm_out.linear stores the scale and shift halves of "
               "final_layer.adaLN_modulation.1 in swapped order; this patch is not applied")


def is_flux_original(index: ModelIndex) -> bool:
    paths = index.component(DIFFUSION)
    return "double_blocks.0.img_attn.qkv" in paths or "single_blocks.0.linear1" in paths


def is_flux_diffusers(index: ModelIndex) -> bool:
    paths = index.component(DIFFUSION)
    return "single_transformer_blocks.0.proj_out" in paths or (
        "transformer_blocks.0.attn.to_add_out" in paths and "x_embedder" in paths
        and "time_text_embed.timestep_embedder.linear_1" in paths and "pos_embed.proj" not in paths)


def aliases(index: ModelIndex, family: Optional[str]) -> Iterator[Alias]:
    paths = index.component(DIFFUSION)
    if is_flux_original(index):
        yield from renamed_aliases(index, RENAMES, model_is_original=True)
        yield from renamed_aliases(index, FLUX2_RENAMES, model_is_original=True)
        final = paths.get("final_layer.adaLN_modulation.1")
        if final is not None:
            yield DIFFUSION, "norm_out.linear", SWAPPED
        for path, mod in paths.items():
            parts = path.split(".")
            if len(parts) != 4 and not (len(parts) == 3 and parts[2] == "linear1"):
                continue
            if parts[0] == "double_blocks" and parts[2] in ("img_attn", "txt_attn") and parts[3] == "qkv":
                n = parts[1]
                names = (("to_q", "to_k", "to_v") if parts[2] == "img_attn"
                         else ("add_q_proj", "add_k_proj", "add_v_proj"))
                for name, target in zip(names, fused_slices(mod, 3)):
                    yield DIFFUSION, f"transformer_blocks.{n}.attn.{name}", target
            elif parts[0] == "single_blocks" and parts[2] == "linear1":
                n = parts[1]
                # linear1 is (3h + mlp, h): [q; k; v; mlp-in] over the block's input
                total = rows(mod)
                h = int(mod.weight_shape[1]) if mod.weight_shape and len(mod.weight_shape) == 2 else 0
                if not h:
                    continue
                names = ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp")
                for name, target in zip(names, fused_slices(mod, (h, h, h, total - 3 * h))):
                    yield DIFFUSION, f"single_transformer_blocks.{n}.{name}", target
                yield DIFFUSION, f"single_blocks.{n}.linear1_qkv", Target(mod, Slice(0, 0, 3 * h))
    elif is_flux_diffusers(index):
        yield from renamed_aliases(index, RENAMES, model_is_original=False)
        yield from renamed_aliases(index, FLUX2_RENAMES, model_is_original=False)
        for path in paths:
            parts = path.split(".")
            if parts[0] == "transformer_blocks" and len(parts) == 4 and parts[2:] == ["attn", "to_q"]:
                for which in ("img_attn", "txt_attn"):
                    yield DIFFUSION, f"double_blocks.{parts[1]}.{which}.qkv", SPLIT_UNSUPPORTED
            if parts[0] == "single_transformer_blocks" and len(parts) == 4 and parts[2:] == ["attn", "to_q"]:
                yield DIFFUSION, f"single_blocks.{parts[1]}.linear1", SPLIT_UNSUPPORTED
                yield DIFFUSION, f"single_blocks.{parts[1]}.linear1_qkv", SPLIT_UNSUPPORTED

