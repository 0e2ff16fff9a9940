"""Text encoders: CLIP-L/G/H and T5 in ComfyUI, HF and kohya spellings.

Which file prefix reaches which encoder is decided in :mod:`.table`
(``lora_te_`` → CLIP-L/H, ``lora_te1_`` → CLIP-L, ``lora_te2_`` → CLIP-G or
T5, ``lora_te3_`` → T5, ``text_encoder{,_2,_3}.`` likewise, ``text_encoders.``
→ ComfyUI's own names).  Paths inside an encoder are HF transformers paths in
every one of these (``text_model.encoder.layers.N.self_attn.q_proj``,
``text_projection``, ``encoder.block.N.layer.0.SelfAttention.q``), so the
only extra spelling is the one transformers 5 uses for a bare
``CLIPTextModel``, without the leading ``text_model.``.

Original SDXL / SD2 checkpoints keep their big CLIP in OpenCLIP names
(``conditioner.embedders.1.model.``, ``cond_stage_model.model.``)::

    text_model.encoder.layers.N.self_attn.q/k/v_proj   transformer.resblocks.N.attn.in_proj  rows [0,h) [h,2h) [2h,3h)
    ….self_attn.out_proj                               transformer.resblocks.N.attn.out_proj
    ….mlp.fc1 / mlp.fc2                                transformer.resblocks.N.mlp.c_fc / c_proj
    ….layer_norm1 / layer_norm2                        transformer.resblocks.N.ln_1 / ln_2
    text_model.final_layer_norm                        ln_final

OpenCLIP's ``text_projection`` is the transpose of the HF Linear weight, so a
patch for it is reported instead of applied.
"""
from __future__ import annotations

from typing import Iterator, Optional

from .entries import Alias, Hint, Target
from .model import ModelIndex
from .rules import fused_slices

CLIPS = ("clip_l", "clip_g", "clip_h")
_OPENCLIP_CHILDREN = {"attn.out_proj": "self_attn.out_proj", "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2",
                      "ln_1": "layer_norm1", "ln_2": "layer_norm2"}
TRANSPOSED = Hint("unsupported kind", "OpenCLIP stores text_projection transposed relative to the HF "
                  "Linear weight the file patches; this patch is not applied", shadows=True)


def _with_short(comp: str, hf_path: str, entry) -> Iterator[Alias]:
    yield comp, hf_path, entry
    if hf_path.startswith("text_model."):
        yield comp, hf_path[len("text_model."):], entry


def _openclip(comp: str, path: str, mod) -> Iterator[Alias]:
    if path == "ln_final":
        yield from _with_short(comp, "text_model.final_layer_norm", Target(mod))
        return
    if path == "text_projection":
        yield comp, "text_projection", TRANSPOSED
        return
    if not path.startswith("transformer.resblocks."):
        return
    n, _, child = path[len("transformer.resblocks."):].partition(".")
    layer = f"text_model.encoder.layers.{n}"
    if child == "attn.in_proj":
        for proj, target in zip(("q_proj", "k_proj", "v_proj"), fused_slices(mod, 3)):
            yield from _with_short(comp, f"{layer}.self_attn.{proj}", target)
    elif child in _OPENCLIP_CHILDREN:
        yield from _with_short(comp, f"{layer}.{_OPENCLIP_CHILDREN[child]}", Target(mod))


# Old diffusers attention-processor files name the projections ``to_q`` … ``to_out``.
_PROCESSOR_NAMES = {"q_proj": "to_q", "k_proj": "to_k", "v_proj": "to_v", "out_proj": "to_out"}


def _hf_spellings(comp: str, path: str, entry) -> Iterator[Alias]:
    if path.startswith("text_model."):
        yield comp, path[len("text_model."):], entry
    head, _, leaf = path.rpartition(".")
    if head.endswith(".self_attn") and leaf in _PROCESSOR_NAMES:
        yield from _with_short(comp, f"{head}.{_PROCESSOR_NAMES[leaf]}", entry)


def aliases(index: ModelIndex, family: Optional[str]) -> Iterator[Alias]:
    for comp in CLIPS:
        paths = index.component(comp)
        openclip = "transformer.resblocks.0.attn.in_proj" in paths
        for path, mod in paths.items():
            if path.startswith("text_model."):
                yield from _hf_spellings(comp, path, Target(mod))
            elif openclip:
                for c, alias, entry in _openclip(comp, path, mod):
                    yield c, alias, entry
                    if alias.startswith("text_model."):
                        yield from _hf_spellings(c, alias, entry)
