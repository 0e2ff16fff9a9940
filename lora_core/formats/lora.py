"""Plain LoRA / LoCon in every spelling the community ships.

* kohya / LyCORIS: ``.lora_up.weight`` / ``.lora_down.weight`` (+ ``.lora_mid.weight``
  for Tucker conv), ``.alpha``, ``.dora_scale``;
* PEFT / diffusers: ``.lora_B.weight`` / ``.lora_A.weight`` (``.default`` adapter
  name too), ``.lora_B.bias``, ``.lora_magnitude_vector``; Mochi bare
  ``.lora_B`` / ``.lora_A``;
* old trainers: ``.lora.up.weight``; old diffusers attention processors
  ``_lora.up.weight``; transformers-style ``.lora_linear_layer.up.weight``.

Scale rule (documented in the README): a ``.scale`` tensor wins; otherwise
``alpha / rank`` when the file stores ``alpha`` (alpha 0 means rank, as in
LyCORIS); otherwise the PEFT/diffusers config (``lora_alpha / r`` with its
``alpha_pattern`` / ``rank_pattern``, ``alpha / √r`` for rsLoRA) when the file
carries ``lora_adapter_metadata`` or sits next to an ``adapter_config.json``;
otherwise 1.0.  Header metadata such as ``ss_network_alpha`` is never used for
the scale: per-module ``alpha`` tensors are authoritative.
"""
from __future__ import annotations

import math
import re
from typing import Mapping, Optional

import torch

from ..errors import FormatError
from ..ir import DoraMagnitude, LoraWeights, ModulePatch
from . import ParseContext, register_parser

UP_DOWN = (
    (".lora_up.weight", ".lora_down.weight"),
    (".lora_B.weight", ".lora_A.weight"),
    (".lora_B.default.weight", ".lora_A.default.weight"),
    (".lora_B", ".lora_A"),
    (".lora.up.weight", ".lora.down.weight"),
    ("_lora.up.weight", "_lora.down.weight"),
    (".lora_linear_layer.up.weight", ".lora_linear_layer.down.weight"),
)
MID = ".lora_mid.weight"
BIAS = (".lora_B.bias", ".lora_B.default.bias")
MAGNITUDE = (".lora_magnitude_vector", ".lora_magnitude_vector.weight",
             ".lora_magnitude_vector.default.weight", ".lora_magnitude_vector.default")


def scalar(ctx: ParseContext, module: str, parts: Mapping[str, torch.Tensor], suffix: str) -> Optional[float]:
    t = parts.get(suffix)
    if t is None:
        return None
    if t.numel() != 1:
        raise FormatError(f"{suffix[1:]} must be a scalar, got shape {tuple(t.shape)}",
                          file=ctx.path, key=module + suffix)
    value = float(t.reshape(()).float().item())
    if not math.isfinite(value):
        raise FormatError(f"{suffix[1:]} is not finite", file=ctx.path, key=module + suffix)
    return value


def _pattern_value(patterns: Mapping[str, object], module: str) -> Optional[object]:
    # PEFT matches a pattern against the end of the module path.
    name = module
    for key, value in patterns.items():
        if re.fullmatch(rf"(.*\.)?({key})", name) or name.endswith(key):
            return value
    return None


def peft_scale(ctx: ParseContext, module: str, rank: int) -> Optional[float]:
    cfg = ctx.peft_config
    if not cfg:
        return None
    r = _pattern_value(cfg.get("rank_pattern") or {}, module) or cfg.get("r") or rank
    alpha = _pattern_value(cfg.get("alpha_pattern") or {}, module)
    if alpha is None:
        alpha = cfg.get("lora_alpha", r)
    r = float(r)
    if r <= 0:
        return None
    if cfg.get("use_rslora"):
        return float(alpha) / math.sqrt(r)
    return float(alpha) / r


def resolve_scale(ctx: ParseContext, module: str, parts: Mapping[str, torch.Tensor], rank: int,
                  consumed: set[str]) -> float:
    """The scale rule shared by the factorised kinds (see module docstring)."""
    if rank <= 0:
        raise FormatError("rank is zero", file=ctx.path, key=module,
                          fix="the file is damaged; re-export it")
    explicit = scalar(ctx, module, parts, ".scale")
    if explicit is not None:
        consumed.add(".scale")
        return explicit
    alpha = scalar(ctx, module, parts, ".alpha")
    if alpha is not None:
        consumed.add(".alpha")
        return 1.0 if alpha == 0 else alpha / rank
    from_config = peft_scale(ctx, module, rank)
    if from_config is not None:
        return from_config
    return 1.0


def dora_magnitude(ctx: ParseContext, module: str, parts: Mapping[str, torch.Tensor],
                   out_features: int, in_features: int, consumed: set[str]) -> Optional[DoraMagnitude]:
    """Read a DoRA magnitude and infer its axis from its shape."""
    for suffix in MAGNITUDE:
        if suffix in parts:
            consumed.add(suffix)
            m = parts[suffix]
            if m.numel() != out_features:
                raise FormatError(f"DoRA magnitude has {m.numel()} entries, expected {out_features}",
                                  file=ctx.path, key=module + suffix)
            return DoraMagnitude(m, "out")
    if ".dora_scale" in parts:
        consumed.add(".dora_scale")
        m = parts[".dora_scale"]
        shape = tuple(m.shape)
        if len(shape) >= 2 and shape[0] == out_features and all(d == 1 for d in shape[1:]) \
                and not (shape[0] == 1 and out_features != 1):
            if out_features == 1 and in_features != 1 and len(shape) >= 2 and shape[1] == in_features:
                return DoraMagnitude(m, "in")
            return DoraMagnitude(m, "out")
        if len(shape) >= 2 and shape[0] == 1 and shape[1] == in_features:
            return DoraMagnitude(m, "in")
        if len(shape) == 1 and shape[0] == out_features:
            return DoraMagnitude(m, "out")
        raise FormatError(f"dora_scale shape {shape} fits neither the output ({out_features}) "
                          f"nor the input ({in_features}) axis", file=ctx.path, key=module + ".dora_scale")
    return None


def bias_delta(parts: Mapping[str, torch.Tensor], consumed: set[str]) -> Optional[torch.Tensor]:
    for suffix in BIAS:
        if suffix in parts:
            consumed.add(suffix)
            return parts[suffix]
    if ".diff_b" in parts:
        consumed.add(".diff_b")
        return parts[".diff_b"]
    return None


class LoraParser:
    name = "lora"
    suffixes = frozenset({s for pair in UP_DOWN for s in pair} | {MID})
    marker = frozenset({s for pair in UP_DOWN for s in pair})

    def parse(self, ctx: ParseContext, module: str, parts: Mapping[str, torch.Tensor]):
        for up_s, down_s in UP_DOWN:
            if up_s in parts or down_s in parts:
                break
        if up_s not in parts or down_s not in parts:
            missing = up_s if up_s not in parts else down_s
            raise FormatError(f"LoRA pair is incomplete: {missing!r} is missing", file=ctx.path,
                              key=module)
        consumed = {up_s, down_s}
        up, down = parts[up_s], parts[down_s]
        mid = parts.get(MID)
        if mid is not None:
            consumed.add(MID)
        if up.dim() < 2 or down.dim() < 2:
            raise FormatError(f"LoRA factors must be matrices, got {tuple(up.shape)} and "
                              f"{tuple(down.shape)}", file=ctx.path, key=module)
        rank = int(down.shape[0])
        inner = int(mid.shape[1]) if mid is not None else int(up.shape[1])
        if (mid is None and up.shape[1] != rank) or (mid is not None and
                                                     (mid.shape[0] != up.shape[1] or inner != rank)):
            raise FormatError(f"LoRA ranks disagree: up {tuple(up.shape)}, down {tuple(down.shape)}",
                              file=ctx.path, key=module)
        scale = resolve_scale(ctx, module, parts, rank, consumed)
        out_features = int(up.shape[0])
        in_features = int(down.shape[1])
        dora = dora_magnitude(ctx, module, parts, out_features, in_features, consumed)
        bias = bias_delta(parts, consumed)
        bias_scale = scale if bias is not None and ".diff_b" not in consumed else 1.0
        return (ModulePatch(name=module, weight=LoraWeights(up=up, down=down, mid=mid), scale=scale,
                            dora=dora, bias=bias, bias_scale=bias_scale,
                            keys=tuple(module + s for s in sorted(consumed))),
                consumed)


register_parser(LoraParser())
