"""Reading the host's model: parameter shapes, resolved reports, quantized or offloaded weights."""
from __future__ import annotations

import weakref
from collections import OrderedDict
from typing import Iterable, Optional

import torch

import comfy.model_management
import comfy.model_patcher

from ...lora_core.dtypes import is_quantized_dtype
from ...lora_core.ir import CoverageReport, LoraFile
from ...lora_core.resolve import resolve_targets

_SHAPES: "weakref.WeakKeyDictionary[torch.nn.Module, dict]" = weakref.WeakKeyDictionary()
_REPORTS: "weakref.WeakKeyDictionary[torch.nn.Module, OrderedDict]" = weakref.WeakKeyDictionary()
_REPORTS_PER_MODEL = 64


def model_shapes(patcher) -> dict[str, tuple[int, ...]]:
    """Parameter key → shape of the patcher's module (cached per module)."""
    module = patcher.model
    shapes = _SHAPES.get(module)
    if shapes is None:
        shapes = {k: tuple(v.shape) for k, v in module.state_dict().items()}
        _SHAPES[module] = shapes
    return shapes


def resolve_for(lora: LoraFile, patcher) -> CoverageReport:
    """Resolve a parsed file against the patcher's module; cached per (file object, module).

    Reusing the report keeps ResolvedPatch identities stable across runs,
    which is what makes the ΔW and factor caches hit on a slider change.
    """
    module = patcher.model
    per_model = _REPORTS.get(module)
    if per_model is None:
        per_model = _REPORTS[module] = OrderedDict()
    hit = per_model.get(id(lora))
    if hit is not None and hit[0] is lora:
        per_model.move_to_end(id(lora))
        return hit[1]
    report = resolve_targets(lora, model_shapes(patcher))
    per_model[id(lora)] = (lora, report)
    while len(per_model) > _REPORTS_PER_MODEL:
        per_model.popitem(last=False)
    return report


def _weight_of(patcher, key: str):
    try:
        weight, _, _ = comfy.model_patcher.get_key_weight(patcher.model, key)
        return weight
    except Exception:
        return None


def module_at(root: torch.nn.Module, key: str) -> tuple[Optional[torch.nn.Module], str]:
    """(module holding parameter ``key``, leaf name), or (None, leaf) when the path does not exist."""
    path, _, leaf = key.rpartition(".")
    module = root
    for part in path.split(".") if path else ():
        module = getattr(module, part, None)
        if module is None:
            return None, leaf
    return module, leaf


def is_quantized(weight) -> bool:
    """fp8, integer storage, or a tensor subclass (QuantizedTensor, GGMLTensor, …)."""
    if weight is None:
        return False
    if type(weight) not in (torch.Tensor, torch.nn.Parameter):
        data = getattr(weight, "data", weight)
        if type(data) is not torch.Tensor:
            return True
    return is_quantized_dtype(weight.dtype)


def prefers_bypass(patcher, keys: Iterable[str]) -> bool:
    """``auto`` mode: quantized weights (fp8, QuantizedTensor, GGUF) or an offloaded model."""
    for key in keys:
        if is_quantized(_weight_of(patcher, key)):
            return True
        module, _ = module_at(patcher.model, key)
        if module is not None and "GGML" in type(module).__name__.upper():
            return True
    mm = comfy.model_management
    vram_state = getattr(mm, "vram_state", None)
    if vram_state is not None and vram_state in (getattr(mm.VRAMState, "LOW_VRAM", None),
                                                 getattr(mm.VRAMState, "NO_VRAM", None)):
        return True
    return bool(getattr(patcher.model, "model_lowvram", False))
