"""The text encoder (CLIP) side: its ModelPatcher, and merge patches on a clone."""
from __future__ import annotations

from ...lora_core.plan import PatchPlan
from .merge import add_merge_patches


def clip_patcher(clip):
    """The ModelPatcher that holds the text encoder's weights."""
    return clip.patcher


def merge_into_clip(clip, plan: PatchPlan):
    """A clone of ``clip`` with ``plan`` registered in merge mode (text encoders always merge)."""
    out = clip.clone()
    add_merge_patches(out.patcher, plan)
    return out
