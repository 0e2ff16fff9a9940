"""Text encoders: CLIP-L/G/H and T5 in ComfyUI, HF and kohya spellings.

Which file prefix reaches which encoder is decided in :mod:`.table`
(``lora_te_`` → CLIP-L/H, ``lora_te1_`` → CLIP-L, ``lora_te2_`` → CLIP-G or
T5, ``lora_te3_`` → T5, ``text_encoder{,_2,_3}.`` likewise, ``text_encoders.``
→ ComfyUI's own names).  Paths inside an encoder are HF transformers paths in
every one of these (``text_model.encoder.layers.N.self_attn.q_proj``,
``text_projection``, ``encoder.block.N.layer.0.SelfAttention.q``), so the
only extra spelling is the one transformers 5 uses for a bare
``CLIPTextModel``, without the leading ``text_model.``.
"""
from __future__ import annotations

from typing import Iterator, Optional

from .model import ModelIndex
from .table import Alias, Target

CLIPS = ("clip_l", "clip_g", "clip_h")


def aliases(index: ModelIndex, family: Optional[str]) -> Iterator[Alias]:
    for comp in CLIPS:
        for path, mod in index.component(comp).items():
            if path.startswith("text_model."):
                yield comp, path[len("text_model."):], Target(mod)
