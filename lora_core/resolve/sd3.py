"""SD3 / SD3.5 (MMDiT, ComfyUI / original names) ↔ diffusers names.

One-to-one renames (joint block N ↔ transformer_blocks.N)::

    x_block.attn.proj / context_block.attn.proj    attn.to_out.0 / attn.to_add_out
    x_block.attn2.proj                             attn2.to_out.0            (SD3.5 MMDiT-X)
    x_block.mlp.fc1 / fc2                          ff.net.0.proj / ff.net.2
    context_block.mlp.fc1 / fc2                    ff_context.net.0.proj / ff_context.net.2
    x_block.adaLN_modulation.1                     norm1.linear
    context_block.adaLN_modulation.1               norm1_context.linear  (not the last block)
    x_block.attn.ln_q / ln_k                       attn.norm_q / norm_k  (context: norm_added_q/k)
    x_embedder.proj, context_embedder, t_embedder.mlp.0/2, y_embedder.mlp.0/2, final_layer.linear
        pos_embed.proj, context_embedder, time_text_embed.timestep_embedder.linear_1/2,
        time_text_embed.text_embedder.linear_1/2, proj_out

Fused (h = qkv rows / 3): ``x_block.attn.qkv`` ← ``attn.to_q/to_k/to_v``;
``context_block.attn.qkv`` ← ``attn.add_q_proj/add_k_proj/add_v_proj``;
``x_block.attn2.qkv`` ← ``attn2.to_q/to_k/to_v``.  The last block's
``norm1_context.linear`` and the top ``norm_out.linear`` swap scale and shift
halves in diffusers, so they are reported, not applied.
"""
from __future__ import annotations

from typing import Iterator, Optional

from .model import DIFFUSION, ModelIndex
from .entries import Alias, Hint, Target
from .rules import SPLIT_UNSUPPORTED, Renames, fused_slices, renamed_aliases

_J = "joint_blocks.{n}."
_T = "transformer_blocks.{n}."
RENAMES = Renames([
    (_J + "x_block.attn.proj", _T + "attn.to_out.0"),
    (_J + "context_block.attn.proj", _T + "attn.to_add_out"),
    (_J + "x_block.attn2.proj", _T + "attn2.to_out.0"),
    (_J + "x_block.mlp.fc1", _T + "ff.net.0.proj"),
    (_J + "x_block.mlp.fc2", _T + "ff.net.2"),
    (_J + "context_block.mlp.fc1", _T + "ff_context.net.0.proj"),
    (_J + "context_block.mlp.fc2", _T + "ff_context.net.2"),
    (_J + "x_block.adaLN_modulation.1", _T + "norm1.linear"),
    (_J + "x_block.attn.ln_q", _T + "attn.norm_q"),
    (_J + "x_block.attn.ln_k", _T + "attn.norm_k"),
    (_J + "context_block.attn.ln_q", _T + "attn.norm_added_q"),
    (_J + "context_block.attn.ln_k", _T + "attn.norm_added_k"),
    (_J + "x_block.attn2.ln_q", _T + "attn2.norm_q"),
    (_J + "x_block.attn2.ln_k", _T + "attn2.norm_k"),
    ("x_embedder.proj", "pos_embed.proj"),
    ("context_embedder", "context_embedder"),
    ("t_embedder.mlp.0", "time_text_embed.timestep_embedder.linear_1"),
    ("t_embedder.mlp.2", "time_text_embed.timestep_embedder.linear_2"),
    ("y_embedder.mlp.0", "time_text_embed.text_embedder.linear_1"),
    ("y_embedder.mlp.2", "time_text_embed.text_embedder.linear_2"),
    ("final_layer.linear", "proj_out"),
])
SWAPPED = ("diffusers stores the scale and shift halves of this adaLN modulation in swapped order; "
           "this patch is not applied")
_FUSED = {
    "x_block.attn.qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
    "context_block.attn.qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
    "x_block.attn2.qkv": ("attn2.to_q", "attn2.to_k", "attn2.to_v"),
}


def is_sd3_original(index: ModelIndex) -> bool:
    return "joint_blocks.0.x_block.attn.qkv" in index.component(DIFFUSION)


def is_sd3_diffusers(index: ModelIndex) -> bool:
    paths = index.component(DIFFUSION)
    return "pos_embed.proj" in paths and "transformer_blocks.0.attn.to_add_out" in paths


def _last_block(paths) -> int:
    blocks = [int(p.split(".")[1]) for p in paths if p.startswith(("joint_blocks.", "transformer_blocks."))]
    return max(blocks) if blocks else -1


def aliases(index: ModelIndex, family: Optional[str]) -> Iterator[Alias]:
    paths = index.component(DIFFUSION)
    if is_sd3_original(index):
        yield from renamed_aliases(index, RENAMES, model_is_original=True)
        last = _last_block(paths)
        for path, mod in paths.items():
            parts = path.split(".", 2)
            if parts[0] != "joint_blocks" or len(parts) < 3:
                continue
            n, inner = parts[1], parts[2]
            if inner in _FUSED:
                for name, target in zip(_FUSED[inner], fused_slices(mod, 3)):
                    yield DIFFUSION, f"transformer_blocks.{n}.{name}", target
            elif inner == "context_block.adaLN_modulation.1":
                entry = Hint("unsupported kind", SWAPPED) if int(n) == last else Target(mod)
                yield DIFFUSION, f"transformer_blocks.{n}.norm1_context.linear", entry
        if "final_layer.adaLN_modulation.1" in paths:
            yield DIFFUSION, "norm_out.linear", Hint("unsupported kind", SWAPPED)
    elif is_sd3_diffusers(index):
        yield from renamed_aliases(index, RENAMES, model_is_original=False)
        last = _last_block(paths)
        for path, mod in paths.items():
            parts = path.split(".", 2)
            if parts[0] != "transformer_blocks" or len(parts) < 3:
                continue
            if parts[2] == "norm1_context.linear":
                entry = Hint("unsupported kind", SWAPPED) if int(parts[1]) == last else Target(mod)
                yield DIFFUSION, f"joint_blocks.{parts[1]}.context_block.adaLN_modulation.1", entry
            for fused, separate in _FUSED.items():
                if parts[2] == separate[0]:
                    yield DIFFUSION, f"joint_blocks.{parts[1]}.{fused}", SPLIT_UNSUPPORTED
