"""Plain LoRA / LoCon / DoRA in every spelling the community ships.

Spellings (up = B (out, r), down = A (r, in)):

* kohya / LyCORIS: ``.lora_up.weight`` / ``.lora_down.weight`` (+ ``.lora_mid.weight``
  for Tucker conv), ``.alpha``, ``.dora_scale``;
* PEFT / diffusers: ``.lora_B.weight`` / ``.lora_A.weight`` (``.default`` adapter
  name too), ``.lora_B.bias``, ``.lora_magnitude_vector``; Mochi bare
  ``.lora_B`` / ``.lora_A``;
* old trainers: ``.lora.up.weight``; old diffusers attention processors
  ``_lora.up.weight``; transformers-style ``.lora_linear_layer.up.weight``.

Scale rule (documented in the README), first match wins:

1. a ``.scale`` tensor (A1111);
2. ``alpha / rank`` when the file stores ``alpha``; alpha 0 means rank, as in
   LyCORIS (rsLoRA files are saved as ``alpha·√r`` by LyCORIS, so this stays right);
3. the PEFT/diffusers ``LoraConfig`` (``lora_alpha / r`` with its
   ``alpha_pattern`` / ``rank_pattern``, ``alpha / √r`` for ``use_rslora``) when
   the file carries ``lora_adapter_metadata`` (flat, or packed per component as
   ``unet.r`` … by diffusers pipeline saves) or sits next to an ``adapter_config.json``;
4. otherwise 1.0; for PEFT/diffusers spellings this is a guess, and the file
   gets a note saying the scale is unknown.

Header metadata such as ``ss_network_alpha`` is never used for the scale: the
per-module ``alpha`` tensors are authoritative.

Validation: an incomplete up/down pair, ranks that disagree, a zero rank, a
non-scalar or non-finite alpha raise :class:`FormatError` (the module's keys
end up as ``UnusedKey(..., "invalid tensor")``).  A rank above the module's
full rank ``min(out, in·k)`` is legal (ΔW is still well defined) and only noted.
"""
from __future__ import annotations

import math
from typing import Mapping, Optional

import torch

from ..errors import FormatError
from ..ir import LoraWeights, ModulePatch
from . import ParseContext, register_parser
from ._common import UNKNOWN_SCALE_NOTE, bias_tensor, dora_magnitude, reshape_target, resolve_scale

__all__ = ["LoraParser", "UNKNOWN_SCALE_NOTE", "RANK_ABOVE_FULL_NOTE", "check_factors"]

UP_DOWN = (
    (".lora_up.weight", ".lora_down.weight"),
    (".lora_B.weight", ".lora_A.weight"),
    (".lora_B.default.weight", ".lora_A.default.weight"),
    (".lora_B", ".lora_A"),
    (".lora.up.weight", ".lora.down.weight"),
    ("_lora.up.weight", "_lora.down.weight"),
    (".lora_linear_layer.up.weight", ".lora_linear_layer.down.weight"),
)
# Spellings written by PEFT-based tools, which keep alpha in a config instead of the file.
PEFT_UPS = frozenset({".lora_B.weight", ".lora_B.default.weight", ".lora_B"})
MID = ".lora_mid.weight"
RANK_ABOVE_FULL_NOTE = ("some modules have a rank above their full rank min(out, in); they are "
                        "applied as stored, the file is just larger than it needs to be")


# ---------------------------------------------------------------- the parser

def _pick_pair(parts: Mapping[str, torch.Tensor]) -> tuple[str, str]:
    for up_s, down_s in UP_DOWN:
        if up_s in parts and down_s in parts:
            return up_s, down_s
    for up_s, down_s in UP_DOWN:
        if up_s in parts or down_s in parts:
            return up_s, down_s
    raise AssertionError("LoRA parser chosen without an up/down key")


def check_factors(ctx: ParseContext, module: str, up: torch.Tensor, down: torch.Tensor,
                  mid: Optional[torch.Tensor]) -> int:
    """Validate the shapes of an up/down(/mid) triple; return the rank."""
    if up.dim() < 2 or down.dim() < 2:
        raise FormatError(f"LoRA factors must be matrices, got up {tuple(up.shape)} and down "
                          f"{tuple(down.shape)}", file=ctx.path, key=module)
    rank = int(down.shape[0])
    if rank == 0 or up.shape[1] == 0:
        raise FormatError("rank is zero", file=ctx.path, key=module,
                          fix="the file is damaged; re-export it")
    if mid is None:
        if int(up.shape[1]) != rank:
            raise FormatError(f"LoRA ranks disagree: up {tuple(up.shape)}, down {tuple(down.shape)}",
                              file=ctx.path, key=module)
    else:
        if mid.dim() < 3 or int(mid.shape[0]) != int(up.shape[1]) or int(mid.shape[1]) != rank:
            raise FormatError(f"LoRA Tucker ranks disagree: up {tuple(up.shape)}, mid "
                              f"{tuple(mid.shape)}, down {tuple(down.shape)}", file=ctx.path, key=module)
        if any(d != 1 for d in down.shape[2:]):
            raise FormatError(f"Tucker down must be 1×1, got {tuple(down.shape)}", file=ctx.path,
                              key=module)
    if any(d != 1 for d in up.shape[2:]):
        raise FormatError(f"LoRA up must be 1×1 over kernel dims, got {tuple(up.shape)}",
                          file=ctx.path, key=module)
    return rank


class LoraParser:
    name = "lora"
    suffixes = frozenset({s for pair in UP_DOWN for s in pair} | {MID})
    marker = frozenset({s for pair in UP_DOWN for s in pair})

    def parse(self, ctx: ParseContext, module: str, parts: Mapping[str, torch.Tensor]):
        up_s, down_s = _pick_pair(parts)
        if up_s not in parts or down_s not in parts:
            missing = up_s if up_s not in parts else down_s
            raise FormatError(f"LoRA pair is incomplete: {module + missing!r} is missing",
                              file=ctx.path, key=module, fix="the file is damaged; re-export it")
        consumed = {up_s, down_s}
        up, down = parts[up_s], parts[down_s]
        mid = parts.get(MID)
        if mid is not None:
            consumed.add(MID)
        rank = check_factors(ctx, module, up, down, mid)
        scale = resolve_scale(ctx, module, parts, rank, consumed, peft_style=up_s in PEFT_UPS)
        out_features = int(up.shape[0])
        in_features = int(down.shape[1])
        kernel = math.prod(int(d) for d in (mid.shape[2:] if mid is not None else down.shape[2:]))
        if rank > min(out_features, in_features * kernel):
            ctx.note(RANK_ABOVE_FULL_NOTE)
        dora = dora_magnitude(ctx, module, parts, out_features, in_features, consumed)
        bias, lora_bias = bias_tensor(parts, consumed)
        reshape = reshape_target(ctx, module, parts, consumed)
        return (ModulePatch(name=module, weight=LoraWeights(up=up, down=down, mid=mid), scale=scale,
                            dora=dora, bias=bias, bias_scale=scale if lora_bias else 1.0,
                            reshape=reshape, keys=tuple(module + s for s in sorted(consumed))),
                consumed)


register_parser(LoraParser())
