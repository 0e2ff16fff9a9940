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
# Spellings written by PEFT-based tools, which keep alpha in a config instead of the file.
PEFT_UPS = frozenset({".lora_B.weight", ".lora_B.default.weight", ".lora_B"})
MID = ".lora_mid.weight"
BIAS = (".lora_B.bias", ".lora_B.default.bias")
MAGNITUDE = (".lora_magnitude_vector", ".lora_magnitude_vector.weight",
             ".lora_magnitude_vector.default.weight", ".lora_magnitude_vector.default")
RESHAPE = ".reshape_weight"
# Prefixes under which an alpha-less lora_A/lora_B file really means scale 1
# (ComfyUI-native and official LTX-2 exports carry no alpha by design).
NATIVE_PREFIXES = ("diffusion_model.", "text_encoders.")

UNKNOWN_SCALE_NOTE = ("scale unknown: PEFT/diffusers-style tensors without alpha and without an "
                      "adapter config (lora_adapter_metadata header or adapter_config.json beside "
                      "the file); using alpha/rank = 1.0, which may be too weak or too strong")
RANK_ABOVE_FULL_NOTE = ("some modules have a rank above their full rank min(out, in); they are "
                        "applied as stored, the file is just larger than it needs to be")


def scalar(ctx: ParseContext, module: str, parts: Mapping[str, torch.Tensor], suffix: str) -> Optional[float]:
    """A 0-d (or one-element) tensor as a finite float, or None if absent."""
    t = parts.get(suffix)
    if t is None:
        return None
    if t.numel() != 1:
        raise FormatError(f"{suffix[1:]} must be a scalar, got shape {tuple(t.shape)}",
                          file=ctx.path, key=module + suffix)
    value = float(t.reshape(()).float().item())
    if not math.isfinite(value):
        raise FormatError(f"{suffix[1:]} is not finite ({value})", file=ctx.path, key=module + suffix,
                          fix="the file is damaged; re-export it")
    return value


# ---------------------------------------------------------------- PEFT config

def config_for(cfg: Optional[Mapping], module: str, peft_type: str = "LORA") -> Optional[Mapping]:
    """The PEFT config of type ``peft_type`` that applies to ``module``.

    diffusers pipeline saves pack several configs into one header, each key
    prefixed with its component (``unet.r``, ``text_encoder.lora_alpha``); a
    model-level save or a PEFT ``adapter_config.json`` is flat.
    """
    if not cfg:
        return None
    if any(k in cfg for k in FLAT_CONFIG_KEYS):
        return cfg if _is_type(cfg, peft_type) else None
    component = module.split(".", 1)[0]
    prefix = component + "."
    sub = {k[len(prefix):]: v for k, v in cfg.items() if k.startswith(prefix)}
    if any(k in sub for k in FLAT_CONFIG_KEYS) and _is_type(sub, peft_type):
        return sub
    return None


FLAT_CONFIG_KEYS = ("r", "peft_type", "lora_alpha", "alpha")


def _is_type(cfg: Mapping, peft_type: str) -> bool:
    # A config of another PEFT tuner (LoHa, OFT…) says nothing about this kind's scale.
    # diffusers headers always name the type; a config without one is taken as LoRA.
    return str(cfg.get("peft_type") or "LORA").upper() == peft_type.upper()


def pattern_value(patterns: Optional[Mapping[str, object]], module: str) -> Optional[object]:
    """PEFT's rule: a pattern matches when it is a dotted suffix of the module path."""
    for key, value in (patterns or {}).items():
        try:
            if re.match(rf"(.*\.)?({key})$", module):
                return value
        except re.error:
            if module == key or module.endswith("." + key):
                return value
    return None


def peft_scale(ctx: ParseContext, module: str, rank: int, peft_type: str = "LORA",
               alpha_key: str = "lora_alpha") -> Optional[float]:
    """``alpha / r`` (or ``/ √r`` with rsLoRA) from the PEFT/diffusers config, or None.

    LoRA configs call alpha ``lora_alpha``; PEFT's LoHa/LoKr configs call it ``alpha``.
    """
    cfg = config_for(ctx.peft_config, module, peft_type)
    if cfg is None:
        return None
    r = pattern_value(cfg.get("rank_pattern"), module)
    if r is None:
        r = cfg.get("r", rank)
    alpha = pattern_value(cfg.get("alpha_pattern"), module)
    if alpha is None:
        alpha = cfg.get(alpha_key, r)
    try:
        r, alpha = float(r), float(alpha)
    except (TypeError, ValueError):
        ctx.note(f"adapter config has a non-numeric r or lora_alpha; ignoring it for {module!r}")
        return None
    if r != rank:
        # The tensors are what is applied; PEFT itself could not load this file.
        ctx.note(f"adapter config says r={r:g} but some modules have rank {rank} in their "
                 f"tensors; alpha is divided by the tensor rank")
        r = float(rank)
    if r <= 0 or not math.isfinite(alpha):
        return None
    if cfg.get("use_rslora"):
        return alpha / math.sqrt(r)
    return alpha / r


def resolve_scale(ctx: ParseContext, module: str, parts: Mapping[str, torch.Tensor], rank: int,
                  consumed: set[str], peft_style: bool = False, peft_type: str = "LORA",
                  alpha_key: str = "lora_alpha") -> float:
    """The scale rule shared by the factorised kinds (see module docstring).

    Other kinds pass their PEFT type and alpha key (e.g. ``"LOHA"``, ``"alpha"``).
    """
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
    from_config = peft_scale(ctx, module, rank, peft_type, alpha_key)
    if from_config is not None:
        return from_config
    if peft_style and not module.startswith(NATIVE_PREFIXES):
        ctx.note(UNKNOWN_SCALE_NOTE)
    return 1.0


# ---------------------------------------------------------------- DoRA, bias, reshape

def dora_magnitude(ctx: ParseContext, module: str, parts: Mapping[str, torch.Tensor],
                   out_features: int, in_features: int, consumed: set[str]) -> Optional[DoraMagnitude]:
    """Read a DoRA magnitude; its axis comes from its shape (nothing else in a file says it).

    PEFT ``lora_magnitude_vector`` (out,) and new LyCORIS ``dora_scale``
    (out, 1, …) are per output row; kohya / old LyCORIS ``dora_scale``
    (1, in, …) is per input column.  A (1, 1, …) magnitude on a module with
    one output is taken as the output axis.
    """
    for suffix in MAGNITUDE:
        if suffix in parts:
            consumed.add(suffix)
            m = parts[suffix]
            if m.numel() != out_features:
                raise FormatError(f"DoRA magnitude has {m.numel()} entries, expected {out_features}",
                                  file=ctx.path, key=module + suffix)
            return DoraMagnitude(m, "out")
    if ".dora_scale" not in parts:
        return None
    consumed.add(".dora_scale")
    m = parts[".dora_scale"]
    shape = tuple(m.shape)
    if len(shape) == 1 and shape[0] == out_features:
        return DoraMagnitude(m, "out")
    if len(shape) >= 2:
        rest_ones = all(d == 1 for d in shape[2:])
        if rest_ones and shape[0] == out_features and shape[1] == 1:
            return DoraMagnitude(m, "out")
        if rest_ones and shape[0] == 1 and shape[1] == in_features:
            return DoraMagnitude(m, "in")
    raise FormatError(f"dora_scale shape {shape} fits neither the output ({out_features}) "
                      f"nor the input ({in_features}) axis", file=ctx.path, key=module + ".dora_scale")


def bias_delta(parts: Mapping[str, torch.Tensor], consumed: set[str]) -> tuple[Optional[torch.Tensor], bool]:
    """(bias delta, whether it is a LoRA bias that takes the module scale)."""
    for suffix in BIAS:
        if suffix in parts:
            consumed.add(suffix)
            return parts[suffix], True
    if ".diff_b" in parts:
        consumed.add(".diff_b")
        return parts[".diff_b"], False
    return None, False


def reshape_target(ctx: ParseContext, module: str, parts: Mapping[str, torch.Tensor],
                   consumed: set[str]) -> Optional[tuple[int, ...]]:
    """A ``reshape_weight`` shape list (BFL control ``img_in``): pad the target to it."""
    t = parts.get(RESHAPE)
    if t is None:
        return None
    consumed.add(RESHAPE)
    if t.dim() != 1 or t.numel() == 0 or t.is_floating_point() and not torch.isfinite(t).all():
        raise FormatError(f"reshape_weight must be a list of sizes, got shape {tuple(t.shape)}",
                          file=ctx.path, key=module + RESHAPE)
    shape = tuple(int(v) for v in t.tolist())
    if any(d <= 0 for d in shape):
        raise FormatError(f"reshape_weight {shape} has a non-positive size", file=ctx.path,
                          key=module + RESHAPE)
    return shape


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
        bias, lora_bias = bias_delta(parts, consumed)
        reshape = reshape_target(ctx, module, parts, consumed)
        return (ModulePatch(name=module, weight=LoraWeights(up=up, down=down, mid=mid), scale=scale,
                            dora=dora, bias=bias, bias_scale=scale if lora_bias else 1.0,
                            reshape=reshape, keys=tuple(module + s for s in sorted(consumed))),
                consumed)


register_parser(LoraParser())
