"""LTX-Video / LTX-2: original names (ComfyUI, ltx-core, official LoRAs under
``diffusion_model.``) ↔ diffusers / finetrainers names (``transformer.``).

The namings differ by whole path segments only, so the table renames
segments (after diffusers' ``lora_conversion_utils`` LTX-2 table)::

    patchify_proj / audio_patchify_proj          proj_in / audio_proj_in
    q_norm / k_norm                              norm_q / norm_k
    adaln_single.* / audio_adaln_single.*        time_embed.* / audio_time_embed.*   (top level)
    prompt_adaln_single / audio_prompt_adaln_single   prompt_adaln / audio_prompt_adaln   (LTX-2.3)
    av_ca_video_scale_shift_adaln_single         av_cross_attn_video_scale_shift
    av_ca_a2v_gate_adaln_single                  av_cross_attn_video_a2v_gate
    av_ca_audio_scale_shift_adaln_single         av_cross_attn_audio_scale_shift
    av_ca_v2a_gate_adaln_single                  av_cross_attn_audio_v2a_gate
    scale_shift_table_a2v_ca_video / _audio      video_a2v_cross_attn_scale_shift_table / audio_…

Everything else (``transformer_blocks.N.attn1.to_q``, ``audio_attn1``,
``audio_to_video_attn``, ``ff.net.0.proj``, ``caption_projection``…) is
spelled the same in both.
"""
from __future__ import annotations

from typing import Iterator, Optional

from .entries import Alias, Target
from .model import DIFFUSION, ModelIndex

SEGMENTS = {
    "patchify_proj": "proj_in",
    "audio_patchify_proj": "audio_proj_in",
    "q_norm": "norm_q",
    "k_norm": "norm_k",
    "prompt_adaln_single": "prompt_adaln",
    "audio_prompt_adaln_single": "audio_prompt_adaln",
    "av_ca_video_scale_shift_adaln_single": "av_cross_attn_video_scale_shift",
    "av_ca_a2v_gate_adaln_single": "av_cross_attn_video_a2v_gate",
    "av_ca_audio_scale_shift_adaln_single": "av_cross_attn_audio_scale_shift",
    "av_ca_v2a_gate_adaln_single": "av_cross_attn_audio_v2a_gate",
    "scale_shift_table_a2v_ca_video": "video_a2v_cross_attn_scale_shift_table",
    "scale_shift_table_a2v_ca_audio": "audio_a2v_cross_attn_scale_shift_table",
}
FIRST_SEGMENT = {"adaln_single": "time_embed", "audio_adaln_single": "audio_time_embed"}
_SEGMENTS_BACK = {v: k for k, v in SEGMENTS.items()}
_FIRST_BACK = {v: k for k, v in FIRST_SEGMENT.items()}


def _rename(path: str, segments: dict[str, str], first: dict[str, str]) -> str:
    parts = path.split(".")
    out = [first.get(parts[0], segments.get(parts[0], parts[0]))]
    out += [segments.get(p, p) for p in parts[1:]]
    return ".".join(out)


def to_diffusers(path: str) -> str:
    return _rename(path, SEGMENTS, FIRST_SEGMENT)


def to_original(path: str) -> str:
    return _rename(path, _SEGMENTS_BACK, _FIRST_BACK)


def is_ltx_original(index: ModelIndex) -> bool:
    paths = index.component(DIFFUSION)
    return "patchify_proj" in paths and any(p.startswith("adaln_single.") for p in paths)


def is_ltx_diffusers(index: ModelIndex) -> bool:
    paths = index.component(DIFFUSION)
    return ("proj_in" in paths and any(p.startswith("time_embed.") for p in paths)
            and "transformer_blocks.0.attn1.norm_q" in paths)


def is_ltx2(index: ModelIndex) -> bool:
    paths = index.component(DIFFUSION)
    return any(p.startswith(("audio_patchify_proj", "audio_proj_in", "audio_adaln_single",
                             "audio_time_embed")) for p in paths)


def aliases(index: ModelIndex, family: Optional[str]) -> Iterator[Alias]:
    if is_ltx_original(index):
        convert = to_diffusers
    elif is_ltx_diffusers(index):
        convert = to_original
    else:
        return
    for path, mod in index.component(DIFFUSION).items():
        other = convert(path)
        if other != path:
            yield DIFFUSION, other, Target(mod)
