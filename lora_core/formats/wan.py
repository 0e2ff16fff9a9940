"""Wan 2.1 / 2.2 file quirks.

**Wan-Fun** (alibaba-pai VideoX-Fun) LoRAs spell the kohya prefix with a
double underscore, ``lora_unet__blocks_0_cross_attn_k.lora_down.weight``,
because the trainer flattened a module path that began with a dot.  The
rewrite drops the extra underscore so they read as ordinary musubi/kohya Wan
files (``lora_unet_blocks_0_…``).

Everything else Wan files carry is ordinary layout: ``diff_b`` on biases and
norm ``diff`` keys (full-diff parser), ``lora_A``/``lora_down`` pairs with or
without alpha, I2V-only ``k_img``/``v_img`` modules (a resolver matter: a
T2V model simply has no such parameter).
"""
from __future__ import annotations

from typing import Iterable, Mapping

import torch

from . import ParseContext, register_converter

WAN_FUN_PREFIX = "lora_unet__"
KOHYA_PREFIX = "lora_unet_"


class WanFunConverter:
    name = "wan-fun"

    def detect(self, keys: Iterable[str], metadata: Mapping[str, str]) -> bool:
        return any(k.startswith(WAN_FUN_PREFIX) for k in keys)

    def rewrite(self, ctx: ParseContext, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for key, value in tensors.items():
            if key.startswith(WAN_FUN_PREFIX):
                key = KOHYA_PREFIX + key[len(WAN_FUN_PREFIX):]
            out[key] = value
        return out


register_converter(WanFunConverter())
