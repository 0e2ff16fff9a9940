"""Finiteness of a LoRA's tensors: the one check shared by the merge patcher and the ComfyUI host.

A module holding NaN or Inf poisons every weight it touches, so it is refused
before anything is patched (host) or named when a merged weight comes out
non-finite (patcher).
"""
from __future__ import annotations

import weakref
from typing import Optional

import torch

from .errors import NonFiniteError
from .ir import LoraFile, ModulePatch

BROKEN_FIX = "the LoRA is broken (often an fp16 overflow in training); re-export it or use another version"


def patch_tensors(patch: ModulePatch, part: Optional[str] = None) -> list[torch.Tensor]:
    """The tensors of ``patch`` that reach ``part`` ("weight": ΔW factors and DoRA magnitude,
    "bias": the bias patch, None: both)."""
    out: list[torch.Tensor] = []
    if part in (None, "weight"):
        if patch.weight is not None:
            out.extend(v for v in vars(patch.weight).values() if isinstance(v, torch.Tensor))
        if patch.dora is not None:
            out.append(patch.dora.magnitude)
    if part in (None, "bias") and patch.bias is not None:
        out.append(patch.bias)
    return out


def has_non_finite(patch: ModulePatch, part: Optional[str] = None) -> bool:
    """True when a float tensor of ``patch`` (for ``part``) holds NaN or ±Inf."""
    return any(t.is_floating_point() and t.numel() and not bool(torch.isfinite(t).all())
               for t in patch_tensors(patch, part))


_CHECKED: "weakref.WeakSet[LoraFile]" = weakref.WeakSet()


def check_file_finite(lora: LoraFile) -> None:
    """Raise :class:`NonFiniteError` naming the first module with NaN/Inf (checked once per parsed file)."""
    if lora in _CHECKED:
        return
    for patch in lora.patches:
        if has_non_finite(patch):
            raise NonFiniteError(f"LoRA module {patch.name!r} holds NaN or Inf values", file=lora.path,
                                 fix=BROKEN_FIX)
    _CHECKED.add(lora)


__all__ = ["patch_tensors", "has_non_finite", "check_file_finite", "BROKEN_FIX"]
