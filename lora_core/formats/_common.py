"""Helpers every parser shares: scalars, the scale rule and PEFT configs, DoRA
magnitudes, bias tensors, ``reshape_weight``, and error/key helpers.

The scale rule (documented in ``formats/lora.py`` and the README), the PEFT
config lookup (flat configs, diffusers' per-component packing, ``rank_pattern`` /
``alpha_pattern``) and the DoRA axis-from-shape rule live here once, for the
plain-LoRA parser, the LyCORIS parsers and PEFT's own tuners alike.
"""
from __future__ import annotations

import math
import re
from typing import Mapping, Optional

import torch

from ..errors import FormatError
from ..ir import DoraMagnitude
from . import ParseContext

Parts = Mapping[str, torch.Tensor]

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
FACTOR_TUNERS = {"LOHA", "LOKR"}

DORA_OUT_AXIS_NOTE = ("output-axis DoRA (dora_scale per output row): normalised by ‖W + ΔW‖ as the DoRA "
                      "paper, PEFT and LyCORIS do; ComfyUI core v0.14.2 divides by ‖W‖ on this axis (its "
                      "open PR #15458), so core renders this file differently (docs/formats.md)")


def bad(ctx: ParseContext, module: str, message: str) -> FormatError:
    """A damaged module: the error names the file and the module."""
    return FormatError(message, file=ctx.path, key=module,
                       fix="the file is damaged or was written by an unknown tool")


def consumed_keys(module: str, consumed: set[str]) -> tuple[str, ...]:
    """The file keys a module patch was built from (``ModulePatch.keys``)."""
    return tuple(module + s for s in sorted(consumed))


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
        ctx.note(DORA_OUT_AXIS_NOTE)
        return DoraMagnitude(m, "out")
    if len(shape) >= 2:
        rest_ones = all(d == 1 for d in shape[2:])
        if rest_ones and shape[0] == out_features and shape[1] == 1:
            ctx.note(DORA_OUT_AXIS_NOTE)
            return DoraMagnitude(m, "out")
        if rest_ones and shape[0] == 1 and shape[1] == in_features:
            return DoraMagnitude(m, "in")
    raise FormatError(f"dora_scale shape {shape} fits neither the output ({out_features}) "
                      f"nor the input ({in_features}) axis", file=ctx.path, key=module + ".dora_scale")


def bias_tensor(parts: Mapping[str, torch.Tensor], consumed: set[str]) -> tuple[Optional[torch.Tensor], bool]:
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


def peft_type(ctx: ParseContext) -> str:
    cfg = ctx.peft_config or {}
    return str(cfg.get("peft_type") or "").upper()


def tuner_config_scale(ctx: ParseContext, module: str, rank: int) -> Optional[float]:
    """``alpha / r`` from a PEFT LoHa/LoKr config (their keys are ``alpha`` and ``r``)."""
    cfg = ctx.peft_config
    if not cfg or peft_type(ctx) not in FACTOR_TUNERS:
        return None
    short = module_path(module)
    r = pattern_value(cfg.get("rank_pattern") or {}, short) or cfg.get("r") or rank
    alpha = pattern_value(cfg.get("alpha_pattern") or {}, short)
    if alpha is None:
        alpha = cfg.get("alpha", r)
    if not r or float(r) <= 0:
        return None
    return float(alpha) / float(r)


def module_path(module: str) -> str:
    for prefix in ("base_model.model.",):
        if module.startswith(prefix):
            return module[len(prefix):]
    return module
