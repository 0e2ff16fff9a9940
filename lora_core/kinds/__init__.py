"""Adapter maths: one module per kind, pure functions of tensors, and ONE table.

Each kind module exports ``delta_weight(weights, base) -> Tensor``: the kind's
ΔW at scale 1 and strength 1, in fp32, shaped like ``base`` (the fp32 original
weight, or its fused-qkv slice); multiplicative kinds return ``W_kind(W) − W``.
Where a cheaper bypass form exists it exports ``side_path`` next to it, with the
formula in its docstring.

:data:`KINDS` says, per kind, everything the engine needs to know; the merge
patcher, ``stack_delta`` and the bypass ask it (through the helpers below)
instead of testing kind names.  A new kind is one module plus one line here.

* ``delta_weight``: ΔW(W₀) as above.
* ``reads_base``: ΔW depends on W₀ (so a computed ΔW is only valid for that
  base, and a bypass must compute it against the original weight).
* ``factors``: low-rank kinds give ``(B, A)`` with ``ΔW.flatten(1) == B·A``, so a
  stack rank-concatenates into one GEMM and the bypass runs ``B·(A·x)``.
* ``side_path``: ``side_path(weights) -> OutputMap | None``, Δy as a map of the
  layer's output on the channel axis (``kinds/side.py``); None means the bypass
  uses the dense ΔW.
* ``bias_rule``: what the kind does to the layer's *own* bias (None: nothing;
  a bias tensor in the file always adds as ``s·bias_scale·b``).

DoRA is a modifier over any kind (:data:`DORA`): it always reads W₀, is never
low-rank and has no side path.
"""
from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Callable, Mapping, Optional

import torch

from ..errors import FormatError
from ..ir import Kind, ModulePatch
from . import dora, full, glora, ia3, loha, lokr, lora, oft
from .side import OutputMap, Scaled

Tensor = torch.Tensor


@dataclass(frozen=True)
class BiasRule:
    """A kind that changes the layer's own bias: ``applies(weights)`` → Δb = ``delta(weights, b₀)``."""
    applies: Callable[[Any], bool]
    delta: Callable[[Any, Tensor], Tensor]


@dataclass(frozen=True)
class KindSpec:
    """What one adapter kind is (see the module docstring)."""
    delta_weight: Callable[[Any, Tensor], Tensor]
    reads_base: bool
    factors: Optional[Callable[[Any, Any], tuple[Tensor, Tensor]]] = None
    side_path: Optional[Callable[[Any], Optional[OutputMap]]] = None
    bias_rule: Optional[BiasRule] = None


KINDS: Mapping[Kind, KindSpec] = MappingProxyType({
    Kind.LORA: KindSpec(lora.delta_weight, reads_base=False, factors=lora.factors),
    Kind.LOHA: KindSpec(loha.delta_weight, reads_base=False),
    Kind.LOKR: KindSpec(lokr.delta_weight, reads_base=False),
    Kind.GLORA: KindSpec(glora.delta_weight, reads_base=True),
    Kind.OFT: KindSpec(oft.delta_weight, reads_base=True, side_path=oft.side_path),
    Kind.BOFT: KindSpec(oft.delta_weight, reads_base=True, side_path=oft.side_path),
    Kind.IA3: KindSpec(ia3.delta_weight, reads_base=True, side_path=ia3.side_path,
                       bias_rule=BiasRule(ia3.scales_bias, ia3.bias_delta)),
    Kind.FULL: KindSpec(full.delta_weight, reads_base=False),
    Kind.SET: KindSpec(full.delta_weight, reads_base=True),
})

# The DoRA modifier: W_dora = m ⊙ (W + ΔW)/‖W + ΔW‖ over any kind's ΔW.
DORA = KindSpec(dora.dora_delta, reads_base=True)


def spec(kind: Kind) -> KindSpec:
    try:
        return KINDS[kind]
    except KeyError:
        raise FormatError(f"no maths for adapter kind {kind!r}") from None


def delta_weight(patch: ModulePatch, base: Tensor) -> Tensor:
    """The module's full ΔW at strength 1 (scale and DoRA applied), fp32, base-shaped."""
    if patch.weight is None:
        raise FormatError("module patch has no weight adapter", key=patch.name)
    base = base.float()
    delta = spec(patch.weight.kind).delta_weight(patch.weight, base)
    if delta.shape != base.shape:
        delta = delta.reshape(base.shape)
    if patch.scale != 1.0:
        delta = delta * patch.scale
    if patch.dora is not None:
        delta = DORA.delta_weight(base, delta, patch.dora)
    return delta


def reads_base(patch: ModulePatch) -> bool:
    """True when the weight part's ΔW depends on W₀ (the kind, or DoRA)."""
    if patch.weight is None:
        return False
    return patch.dora is not None or spec(patch.weight.kind).reads_base


def is_low_rank(patch: ModulePatch) -> bool:
    """True when ΔW is one ``B·A`` pair (:func:`factors`): plain LoRA without DoRA."""
    return patch.weight is not None and patch.dora is None and spec(patch.weight.kind).factors is not None


def factors(patch: ModulePatch, shape) -> tuple[Tensor, Tensor]:
    """``(B, A)`` in fp32 at scale 1 with ``ΔW.flatten(1) == B·A`` (only for :func:`is_low_rank`)."""
    fn = spec(patch.weight.kind).factors if patch.weight is not None else None
    if fn is None or patch.dora is not None:
        raise FormatError(f"module {patch.name!r} is not a low-rank patch", key=patch.name)
    return fn(patch.weight, shape)


def side_path(patch: ModulePatch) -> Optional[OutputMap]:
    """The weight part as a map of the layer's output (scale folded), or None (use the dense ΔW)."""
    if patch.weight is None or patch.dora is not None:
        return None
    fn = spec(patch.weight.kind).side_path
    out = fn(patch.weight) if fn is not None else None
    if out is not None and patch.scale != 1.0:
        out = Scaled(out, patch.scale)
    return out


def _bias_rule(patch: ModulePatch) -> Optional[BiasRule]:
    if patch.weight is None:
        return None
    rule = spec(patch.weight.kind).bias_rule
    return rule if rule is not None and rule.applies(patch.weight) else None


def changes_bias(patch: ModulePatch) -> bool:
    """True when the patch changes the layer's bias (a bias tensor, or the kind's bias rule)."""
    return patch.bias is not None or _bias_rule(patch) is not None


def bias_reads_base(patch: ModulePatch) -> bool:
    """True when the bias change depends on the layer's original bias b₀."""
    return _bias_rule(patch) is not None


def bias_delta(patch: ModulePatch, base_bias: Optional[Tensor]) -> Tensor:
    """Δb at strength 1 in fp32: ``bias_scale·b`` of the file plus the kind's rule on b₀.

    ``base_bias`` (b₀, any float dtype) is read only when :func:`bias_reads_base`.
    """
    rule = _bias_rule(patch)
    out: Optional[Tensor] = None
    if patch.bias is not None:
        out = patch.bias.float().reshape(-1) * patch.bias_scale
    if rule is not None:
        if base_bias is None:
            raise FormatError(f"module {patch.name!r} scales the layer's bias, which is missing",
                              key=patch.name)
        d = rule.delta(patch.weight, base_bias.float().reshape(-1))
        if out is not None:
            d = d.to(out.device)
        out = d if out is None else out + d
    if out is None:
        raise FormatError(f"module {patch.name!r} does not change a bias", key=patch.name)
    return out


__all__ = ["KINDS", "DORA", "KindSpec", "BiasRule", "spec", "delta_weight", "reads_base", "is_low_rank",
           "factors", "side_path", "changes_bias", "bias_reads_base", "bias_delta"]
