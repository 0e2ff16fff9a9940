"""The weights a ModelPatcher samples with, read without changing it (for LoRA extraction).

ComfyUI keeps pending patches (LoRAs, model merges, our merge adapters) on the
patcher and applies them at load time; ``get_key_patches`` hands back each
key's original weight (from the patcher's backup when the module is loaded
patched) plus those patches, and ``comfy.lora.calculate_weight`` applies them
to a CPU fp32 copy.  Side paths (bypass injections, hooks) are not weights and
are not seen here.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Iterator

import torch

import comfy.lora

DIFFUSION_PREFIX = "diffusion_model."


class SampledWeights(Mapping):
    """Parameter key → the patched fp32 CPU weight, computed on access (one tensor at a time)."""

    def __init__(self, patcher, prefix: str = DIFFUSION_PREFIX):
        self._entries = patcher.get_key_patches(filter_prefix=prefix)

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {k: tuple(v[0][0].shape) for k, v in self._entries.items()}

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def __getitem__(self, key: str) -> torch.Tensor:
        entry = self._entries[key]
        weight, patches = entry[0][0], entry[1:]
        w = weight.detach().to(device="cpu", dtype=torch.float32, copy=True)
        if patches:
            w = comfy.lora.calculate_weight(list(patches), w, key)
        return w

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)


def sampled_weights(patcher, prefix: str = DIFFUSION_PREFIX) -> SampledWeights:
    """The diffusion model's weights as sampled (pending patches applied), lazily."""
    return SampledWeights(patcher, prefix)
