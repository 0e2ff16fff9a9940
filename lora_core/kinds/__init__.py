"""Adapter maths: one module per kind, pure functions of tensors.

Contract of each kind module: ``delta_weight(weights, base) -> Tensor`` gives
the kind's ΔW at scale 1 and strength 1, in fp32, shaped like ``base`` (the
fp32 original weight, or its fused-qkv slice).  Multiplicative kinds return
``W_kind(W) − W``.  :func:`patch_delta` adds the module's scale and DoRA.
"""
from __future__ import annotations

import importlib

import torch

from ..errors import FormatError
from ..ir import Kind, ModulePatch
from .dora import dora_delta

_MODULES = {
    Kind.LORA: "lora", Kind.LOHA: "loha", Kind.LOKR: "lokr", Kind.GLORA: "glora",
    Kind.OFT: "oft", Kind.BOFT: "oft", Kind.IA3: "ia3", Kind.FULL: "full", Kind.SET: "full",
}


def kind_module(kind: Kind):
    return importlib.import_module(f"{__name__}.{_MODULES[kind]}")


def delta_weight(patch: ModulePatch, base: torch.Tensor) -> torch.Tensor:
    """The module's full ΔW at strength 1 (scale and DoRA applied), fp32, base-shaped."""
    if patch.weight is None:
        raise FormatError("module patch has no weight adapter", key=patch.name)
    base = base.float()
    module = kind_module(patch.weight.kind)
    fn = getattr(module, f"delta_{patch.weight.kind.value}", None) or module.delta_weight
    delta = fn(patch.weight, base)
    if delta.shape != base.shape:
        delta = delta.reshape(base.shape)
    if patch.scale != 1.0:
        delta = delta * patch.scale
    if patch.dora is not None:
        delta = dora_delta(base, delta, patch.dora)
    return delta
