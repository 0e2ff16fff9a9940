"""Merge mode: ONE :class:`PatchbayAdapter` (a ComfyUI ``WeightAdapterBase``) per parameter key.

The adapter holds every Patchbay contribution to that key.  ComfyUI calls
our maths from ``comfy.lora.calculate_weight`` for the normal load, for
lowvram (``LowVramPatch`` per forward), for hooks and for model merges, and
keeps its own backups, clones, unpatching and model cache; we never write
into the shared base module ourselves.

Per parameter the merged weight is ``lora_core.stack_delta.merged_weight``:
``W' = W₀ + D`` with ``D`` from ``stack_delta`` (fp32).  ``D`` does not depend
on W₀ unless a contribution is base-dependent (DoRA, OFT/BOFT, IA3, GLoRA,
set), so base-independent ``D`` is cached by (parameter key, contribution
tuple, device, shape) in a byte-bounded :class:`~lora_core.cache.DeltaCache`:
a hit is bit-identical to a fresh compute because both add the same ``D``
tensor to the incoming weight.  Plain LoRA factors are cached in fp32 on the
weight's device, so a slider change costs one small ``B`` rescale, one GEMM
and one add per parameter.
"""
from __future__ import annotations

import logging
import os
import uuid
from typing import Optional

import torch

import comfy.weight_adapter

from ...lora_core.cache import ByteLRU, DeltaCache, env_bytes
from ...lora_core.plan import Contribution, PatchPlan, normalized
from ...lora_core.stack_delta import base_independent, merged_weight, plain_factors, stack_delta, target_shape

log = logging.getLogger("lora-patchbay")

ADAPTER_NAME = "patchbay"

# ΔW sums: on the CPU they save a GEMM per parameter; on accelerators the
# GEMM is cheap and memory belongs to ComfyUI's manager, so default off there.
DELTA_CACHES: dict[str, DeltaCache] = {"cpu": DeltaCache(env_bytes("PATCHBAY_DELTA_CACHE_MB", 1024))}
DELTA_CACHE_ACCEL_BYTES = env_bytes("PATCHBAY_DELTA_CACHE_GPU_MB", 0)
FACTOR_CACHE = ByteLRU(env_bytes("PATCHBAY_FACTOR_CACHE_MB", 1024))


def _delta_cache(device: torch.device) -> Optional[DeltaCache]:
    cache = DELTA_CACHES.get(str(device))
    if cache is None and device.type != "cpu" and DELTA_CACHE_ACCEL_BYTES > 0:
        cache = DELTA_CACHES.setdefault(str(device), DeltaCache(DELTA_CACHE_ACCEL_BYTES))
    return cache


def clear_caches() -> None:
    for cache in DELTA_CACHES.values():
        cache.clear()
    FACTOR_CACHE.clear()


def _cached_factors(c: Contribution, view: torch.Size, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, A) fp32 on ``device`` at scale 1, cached per module patch and device."""
    key = (c.resolved.patch, device, tuple(view))
    hit = FACTOR_CACHE.get(key)
    if hit is not None:
        return hit
    b, a = plain_factors(c, view, device)
    FACTOR_CACHE.put(key, (b, a))
    return b, a


def cached_delta(key: str, contribs: tuple[Contribution, ...], base: torch.Tensor,
                 shape: torch.Size) -> torch.Tensor:
    """``stack_delta`` with cached factors, served from the ΔW cache when it cannot depend on W₀."""
    cache = _delta_cache(base.device) if base_independent(contribs) else None
    if cache is None:
        return stack_delta(key, contribs, base, shape, factor_source=_cached_factors)
    ckey = (key, contribs, str(base.device), tuple(shape))
    hit = cache.get(ckey)
    if hit is not None:
        return hit
    d = stack_delta(key, contribs, base, shape, factor_source=_cached_factors)
    cache.put(ckey, d)
    return d


class PatchbayAdapter(comfy.weight_adapter.WeightAdapterBase):
    """Every Patchbay contribution to one parameter key, as one ComfyUI patch."""

    name = ADAPTER_NAME

    def __init__(self, key: str, contributions: tuple[Contribution, ...]):
        self.key = key
        self.contributions = tuple(contributions)
        self.loaded_keys = set()
        self.weights = []

    @classmethod
    def load(cls, *args, **kwargs):  # never created from a raw state dict
        return None

    def calculate_shape(self, key):
        shapes = {tuple(c.resolved.patch.reshape) for c in self.contributions
                  if c.part == "weight" and c.resolved.patch.reshape}
        return next(iter(shapes)) if len(shapes) == 1 else None

    def calculate_weight(self, weight, key, strength, strength_model, offset, function,
                         intermediate_dtype=torch.float32, original_weight=None):
        # intermediate_dtype fp32 = the load path: hand back fp32 so ComfyUI
        # rounds once to the storage dtype.  Anything else = LowVramPatch per
        # forward: the result must keep the compute dtype of ``weight``.
        out_dtype = None if intermediate_dtype == torch.float32 else weight.dtype
        try:
            d = cached_delta(key, self.contributions, weight, target_shape(key, self.contributions, weight.shape))
            return merged_weight(key, self.contributions, weight, strength=float(strength), function=function,
                                 in_place=True, out_dtype=out_dtype, delta=d)
        except Exception:
            log.exception("[LoRA Patchbay] could not merge into %s (files: %s)", key,
                          ", ".join(sorted({os.path.basename(c.file) for c in self.contributions if c.file})))
            raise


def _is_ours(patch_tuple) -> bool:
    return len(patch_tuple) > 1 and isinstance(patch_tuple[1], PatchbayAdapter)


def add_merge_patches(patcher, plan: PatchPlan) -> int:
    """Register ``plan`` on ``patcher`` (a fresh clone), merging with earlier Patchbay patches.

    Chained Patchbay loaders share one adapter per key, so every ΔW is
    computed against the same W₀ and plain LoRAs stay one GEMM.  Returns the
    number of keys registered.
    """
    plan = normalized(plan)
    new: dict[str, PatchbayAdapter] = {}
    replaced = 0
    for key, contribs in plan.items():
        current = patcher.patches.get(key)
        index = next((i for i, p in enumerate(current or ()) if _is_ours(p)), None)
        if index is None:
            new[key] = PatchbayAdapter(key, contribs)
            continue
        old = current[index]
        merged = PatchbayAdapter(key, old[1].contributions + tuple(contribs))
        patcher.patches[key] = current[:index] + [(old[0], merged, old[2], old[3], old[4])] + current[index + 1:]
        replaced += 1
    accepted = patcher.add_patches(new, 1.0, 1.0) if new else []
    if replaced and not new:
        patcher.patches_uuid = uuid.uuid4()
    missing = set(new) - {k if isinstance(k, str) else k[0] for k in accepted}
    if missing:
        log.warning("[LoRA Patchbay] %d planned keys are not in the model (e.g. %s)", len(missing),
                    sorted(missing)[0])
    return len(accepted) + replaced


def merge_into(patcher, plan: PatchPlan):
    """A clone of ``patcher`` with ``plan`` registered in merge mode (``plan`` carries final strengths)."""
    out = patcher.clone()
    add_merge_patches(out, plan)
    return out
