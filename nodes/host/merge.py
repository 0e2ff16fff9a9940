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
tensor to the incoming weight.  A parameter patched by one plain LoRA alone
caches the strength-free product ``P = B·A`` instead, and every path merges
it as ``W₀ + fl(s·P)`` (``stack_delta.add_scaled_``), so its slider moves
cost no GEMM at all: one scaled add per parameter.  Other plain-LoRA stacks
cache their fp32 factors on the weight's device, so a slider change costs
one small ``B`` rescale, one GEMM and one add per parameter.

A slider change touches only what changed (:func:`sync_merged`).  A clone
whose Patchbay keys are the same as its sibling's gets the same
``patches_uuid`` (derived from the upstream uuid and the key set, never from
strengths or files), so ComfyUI keeps the loaded weights instead of
unpatching and re-patching every key.  The clone carries one injection,
``MERGE_SYNC_KEY``, whose ``inject`` (run by ComfyUI after every load)
rewrites only the parameters whose Patchbay contributions differ from what
the module holds: from ComfyUI's own backup of W₀, with ComfyUI's own
``calculate_weight`` and rounding, so the bits equal a fresh load.  ComfyUI
keeps owning backups (its unpatch restores them untouched), lowvram (each
``LowVramPatch`` is pointed at the injecting clone's patches) and the model
cache.  Hooks, dynamic VRAM, quantized ops and reshaping patches keep a
fresh uuid (ComfyUI's full re-patch).
"""
from __future__ import annotations

import functools
import logging
import os
import uuid
import weakref
from dataclasses import dataclass
from typing import Any, Optional

import torch

import comfy.float
import comfy.lora
import comfy.model_management
import comfy.model_patcher
import comfy.patcher_extension
import comfy.utils
import comfy.weight_adapter

from ...lora_core.cache import ByteLRU, DeltaCache, FreeMemoryPolicy, env_bytes
from ...lora_core.errors import NonFiniteError
from ...lora_core.plan import Contribution, PatchPlan, normalized
from ...lora_core.stack_delta import (add_scaled_, base_independent, is_plain_lora, merged_weight, plain_factors,
                                      stack_delta, target_shape)

log = logging.getLogger("lora-patchbay")

ADAPTER_NAME = "patchbay"

# ΔW sums: on the CPU a fixed budget; on an accelerator a fraction of its free
# memory (re-read on every admission, given back first when ComfyUI's own
# allocations press below the reserve), so GPU users get the same incremental
# re-patch.  PATCHBAY_DELTA_CACHE_GPU_MB fixes a budget instead (0 = off).
DELTA_CACHES: dict[str, DeltaCache] = {"cpu": DeltaCache(env_bytes("PATCHBAY_DELTA_CACHE_MB", 1024))}
DELTA_CACHE_ACCEL_BYTES = (env_bytes("PATCHBAY_DELTA_CACHE_GPU_MB", 0)
                           if "PATCHBAY_DELTA_CACHE_GPU_MB" in os.environ else None)
DELTA_CACHE_ACCEL_FRACTION = float(os.environ.get("PATCHBAY_DELTA_CACHE_GPU_FRACTION", 0.25))
FACTOR_CACHE = ByteLRU(env_bytes("PATCHBAY_FACTOR_CACHE_MB", 1024))


def _accelerator_policy(device: torch.device) -> FreeMemoryPolicy:
    mm = comfy.model_management
    reserve = max(1 << 30, int(getattr(mm, "minimum_inference_memory", lambda: 0)()))
    return FreeMemoryPolicy(lambda: mm.get_free_memory(device), fraction=DELTA_CACHE_ACCEL_FRACTION,
                            reserve=reserve)


def _delta_cache(device: torch.device) -> Optional[DeltaCache]:
    cache = DELTA_CACHES.get(str(device))
    if cache is None and device.type != "cpu":
        if DELTA_CACHE_ACCEL_BYTES is not None:
            if DELTA_CACHE_ACCEL_BYTES <= 0:
                return None
            cache = DeltaCache(DELTA_CACHE_ACCEL_BYTES)
        elif DELTA_CACHE_ACCEL_FRACTION <= 0:
            return None
        else:
            cache = DeltaCache(0, policy=_accelerator_policy(device))
        cache = DELTA_CACHES.setdefault(str(device), cache)
        _release_before_unloading()
    return cache


def _holds_device(value, device: torch.device) -> bool:
    if isinstance(value, torch.Tensor):
        return value.device == device
    return any(_holds_device(v, device) for v in value)


def release_for(device, memory_required) -> int:
    """Give back cached ΔW sums and factors on an accelerator until ComfyUI sees
    ``memory_required`` bytes free (or nothing of ours is left there); returns the bytes dropped.

    Runs first in ComfyUI's ``free_memory``, so a model it is about to load is
    never offloaded to keep a cache: the caches are the first to give way.
    """
    device = torch.device(device)
    if device.type == "cpu":
        return 0
    if device.index is None and device.type == "cuda" and torch.cuda.is_available():
        device = torch.device("cuda", torch.cuda.current_device())
    cache = DELTA_CACHES.get(str(device))
    shortfall = int(memory_required) - int(comfy.model_management.get_free_memory(device))
    if shortfall <= 0:
        return 0
    freed = cache.release(shortfall) if cache is not None else 0
    if freed < shortfall:
        freed += FACTOR_CACHE.release(shortfall - freed, where=lambda v: _holds_device(v, device))
    if freed:
        log.info("[LoRA Patchbay] gave back %d MiB of cached LoRA deltas on %s for ComfyUI", freed >> 20, device)
    return freed


def _release_before_unloading() -> None:
    """Wrap ComfyUI's ``model_management.free_memory`` (once) so :func:`release_for` runs first."""
    mm = comfy.model_management
    current = mm.free_memory
    if getattr(current, "_patchbay_original", None) is not None:
        return

    @functools.wraps(current)
    def free_memory(memory_required, device, *args, **kwargs):
        try:
            release_for(device, memory_required)
        except Exception:  # our cache must never break ComfyUI's memory management
            log.debug("[LoRA Patchbay] could not release cached deltas on %s", device, exc_info=True)
        return current(memory_required, device, *args, **kwargs)

    free_memory._patchbay_original = current
    mm.free_memory = free_memory


def clear_caches() -> None:
    for cache in DELTA_CACHES.values():
        cache.clear()
    FACTOR_CACHE.clear()
    _WORKSPACES.clear()


def _cached_factors(c: Contribution, view: torch.Size, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, A) fp32 on ``device`` at scale 1, cached per module patch and device."""
    key = (c.resolved.patch, device, tuple(view))
    hit = FACTOR_CACHE.get(key)
    if hit is not None:
        return hit
    b, a = plain_factors(c, view, device)
    FACTOR_CACHE.put(key, (b, a))
    return b, a


def _whole_plain(contribs: tuple[Contribution, ...]) -> bool:
    return bool(contribs) and all(is_plain_lora(c) and c.resolved.slice is None for c in contribs)


def _plain_delta(key: str, contribs: tuple[Contribution, ...], shape: torch.Size,
                 device: torch.device, out: Optional[torch.Tensor] = None, unit: bool = False) -> torch.Tensor:
    """D = (B_cat·diag(s))·A_cat for plain LoRAs on the whole weight, in few kernels.

    ``[B₁ | B₂ | …]`` and ``[A₁; A₂; …]`` (fp32, scale 1) are cached per tuple
    of module patches, so a slider change is one column scaling and one GEMM;
    ``unit`` skips the scaling (the strength-free product of a lone LoRA).
    The GEMM is an in-place ``addmm_`` into zeros: with two CPU threads
    ``torch.mm`` of these shapes runs several times slower (measured 2–35 ms
    vs 2 ms for 1280×120×1280).
    """
    rows = shape[0]
    ckey = ("concat", tuple(c.resolved.patch for c in contribs), device, tuple(shape))
    hit = FACTOR_CACHE.get(ckey)
    if hit is None:
        pairs = [_cached_factors(c, shape, device) for c in contribs]
        cols = shape.numel() // rows
        for c, (b, a) in zip(contribs, pairs):
            if b.shape[0] != rows or a.shape[1] != cols or b.shape[1] != a.shape[0]:
                return stack_delta(key, contribs, torch.empty(0, device=device), shape,
                                   factor_source=_cached_factors)  # raises the engine's error
        b_cat = torch.cat([b for b, _ in pairs], 1) if len(pairs) > 1 else pairs[0][0]
        a_cat = torch.cat([a for _, a in pairs], 0) if len(pairs) > 1 else pairs[0][1]
        hit = (b_cat, a_cat, torch.tensor([a.shape[0] for _, a in pairs]))  # ranks (a tensor: cache bytes)
        FACTOR_CACHE.put(ckey, hit)
    b_cat, a_cat, ranks = hit[0], hit[1], hit[2].tolist()
    scales = [c.strength * c.resolved.patch.scale for c in contribs]
    if unit:
        b = b_cat
    elif len(scales) == 1:
        b = b_cat * scales[0]
    else:
        col = torch.tensor([s for s, r in zip(scales, ranks) for _ in range(r)], dtype=torch.float32)
        b = b_cat * col.to(device, non_blocking=True)
    # Memory made under inference_mode can only be written inside it (ComfyUI's executor runs there; a node
    # or script that patches outside it must not get such a tensor back).
    if out is not None and out.numel() == rows * a_cat.shape[1] \
            and (torch.is_inference_mode_enabled() or not out.is_inference()):
        d = out.view(rows, a_cat.shape[1]).zero_()  # a superseded sum's memory: no new allocation
    else:
        d = torch.zeros((rows, a_cat.shape[1]), dtype=torch.float32, device=device)
    return d.addmm_(b, a_cat).view(shape)


def lone_lora_scale(contribs: tuple[Contribution, ...]) -> Optional[float]:
    """``s·c`` when the parameter's only contribution is one plain LoRA on the whole weight, else None."""
    if len(contribs) != 1 or not _whole_plain(contribs):
        return None
    c = contribs[0]
    return c.strength * c.resolved.patch.scale


def cached_delta(key: str, contribs: tuple[Contribution, ...], base: torch.Tensor,
                 shape: torch.Size) -> tuple[torch.Tensor, float]:
    """``(T, scale)`` with ``D = scale·T`` (:func:`stack_delta` with cached factors), served from
    the ΔW cache when it cannot depend on W₀.

    A lone plain LoRA gives its strength-free product ``T = B·A`` (cached by
    module patch, so every strength of that LoRA hits) and ``scale = s·c``;
    anything else gives ``T = D`` and 1.  Merge ``T`` with
    ``add_scaled_``/``merged_weight(delta_scale=…)``: every path then rounds alike.
    """
    cache = _delta_cache(base.device) if base_independent(contribs) else None
    scale = lone_lora_scale(contribs)
    if scale is not None:
        ckey = (key, "product", contribs[0].resolved.patch, str(base.device), tuple(shape))
        hit = cache.get(ckey) if cache is not None else None
        if hit is None:
            hit = _plain_delta(key, contribs, torch.Size(shape), base.device, unit=True)
            if cache is not None:
                cache.put(ckey, hit)
        return hit, scale
    if cache is not None:
        ckey = (key, contribs, str(base.device), tuple(shape))
        hit = cache.get(ckey)
        if hit is not None:
            return hit, 1.0
    if _whole_plain(contribs):
        reuse = cache.recycle(key, shape, torch.float32, base.device) if cache is not None else None
        d = _plain_delta(key, contribs, torch.Size(shape), base.device, out=reuse)
    else:
        d = stack_delta(key, contribs, base, shape, factor_source=_cached_factors)
    if cache is not None:
        cache.put(ckey, d)
    return d, 1.0


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
            d, scale = cached_delta(key, self.contributions, weight,
                                    target_shape(key, self.contributions, weight.shape))
            out = merged_weight(key, self.contributions, weight, strength=float(strength), function=function,
                                in_place=True, out_dtype=out_dtype, delta=d, delta_scale=scale)
            if not bool(torch.isfinite(out).all()):
                # the last line of defence (rows and schedules are bounded, files checked for NaN/Inf):
                # an error naming the LoRAs, never a model with NaN/Inf weights
                raise self._non_finite(key)
            return out
        except Exception:
            log.exception("[LoRA Patchbay] could not merge into %s (files: %s)", key,
                          ", ".join(sorted({os.path.basename(c.file) for c in self.contributions if c.file})))
            raise


    def _non_finite(self, key: str) -> NonFiniteError:
        names = ", ".join(sorted({os.path.basename(c.file) for c in self.contributions if c.file})) or "the LoRA"
        return NonFiniteError(f"merging {names} into {key} gives NaN or Inf weights", key=key,
                              file=", ".join(sorted({c.file for c in self.contributions if c.file})) or None,
                              fix="lower the strengths of these LoRAs on this model; a LoRA whose weights "
                                  "overflow at strength 1 is broken (re-export it)")


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
    upstream_uuid = patcher.patches_uuid
    accepted = patcher.add_patches(new, 1.0, 1.0) if new else []
    if replaced and not new:
        patcher.patches_uuid = uuid.uuid4()
    if can_sync(patcher):
        patcher.patches_uuid = stable_uuid(upstream_uuid, patchbay_keys(patcher))
        patcher.set_injections(MERGE_SYNC_KEY, [MergeSync()])
    elif MERGE_SYNC_KEY in getattr(patcher, "injections", {}):
        patcher.remove_injections(MERGE_SYNC_KEY)
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


# =============================================================== slider change: touch only what changed

MERGE_SYNC_KEY = "lora-patchbay/merge-sync"
_UUID_NAMESPACE = uuid.UUID("6c3b1f0e-9a55-4f3e-9a8e-5ad2b7e0c7a1")


def patchbay_keys(patcher) -> list[str]:
    return sorted(k for k, lst in patcher.patches.items() if any(_is_ours(p) for p in lst))


def stable_uuid(upstream_uuid, keys) -> uuid.UUID:
    """The same for every clone of one upstream with the same Patchbay keys (strengths and files apart)."""
    return uuid.uuid5(_UUID_NAMESPACE, f"{upstream_uuid}|" + "|".join(sorted(keys)))


def can_sync(patcher) -> bool:
    """Whether :func:`sync_merged` can keep this clone's weights exact (else ComfyUI re-patches all)."""
    if not hasattr(patcher, "set_injections") or getattr(patcher, "hook_patches", None):
        return False
    is_dynamic = getattr(patcher, "is_dynamic", None)
    if is_dynamic is not None and is_dynamic():
        return False  # dynamic VRAM re-applies patches at cast time keyed on the uuid
    for key in patchbay_keys(patcher):
        for p in patcher.patches[key]:
            if _is_ours(p) and p[1].calculate_shape(key) is not None:
                return False
        try:
            weight, set_func, convert_func = comfy.model_patcher.get_key_weight(patcher.model, key)
        except Exception:
            return False
        if set_func is not None or convert_func is not None or type(getattr(weight, "data", None)) is not torch.Tensor:
            return False  # quantized ops: ComfyUI's own set/convert functions own the storage
    return True


@dataclass
class _Written:
    """What a parameter holds: Patchbay contributions, valid while the tensor is unchanged."""

    param: Any          # weakref to the parameter object
    stamp: tuple        # (data_ptr, _version) when recorded; inference tensors have no version
    contributions: tuple


_WRITTEN: "weakref.WeakKeyDictionary[torch.nn.Module, dict[str, _Written]]" = weakref.WeakKeyDictionary()


def _stamp(param: torch.Tensor) -> tuple:
    # ComfyUI patches under inference_mode, whose tensors keep no version counter.
    # Then only a new storage or object is seen; an in-place write that is not
    # ComfyUI's load of this clone would go unseen (none is known: its in-place
    # writes are loads, which write this clone's patches before our inject).
    return (param.data_ptr(), None if param.is_inference() else param._version)


def _record(model: torch.nn.Module, key: str, param: torch.Tensor, contributions: tuple) -> None:
    _WRITTEN.setdefault(model, {})[key] = _Written(weakref.ref(param), _stamp(param), contributions)


def _holds(model: torch.nn.Module, key: str, param: torch.Tensor) -> Optional[tuple]:
    """The contributions ``param`` is known to hold, or None when it changed since we looked."""
    rec = _WRITTEN.get(model, {}).get(key)
    if rec is None or rec.param() is not param or rec.stamp != _stamp(param):
        return None
    return rec.contributions


def _lowvram_patches(module) -> list:
    out = []
    for name in ("weight_function", "bias_function"):
        for f in getattr(module, name, None) or ():
            if hasattr(f, "patches") and hasattr(f, "key"):
                out.append(f)
    return out


@dataclass
class SyncStats:
    written: int = 0      # parameters recomputed from W₀ and written
    unchanged: int = 0    # parameters that already held this clone's contributions
    adopted: int = 0      # parameters ComfyUI just wrote for this clone (recorded, not rewritten)
    lowvram: int = 0      # per-forward patches pointed at this clone's patches


def sync_merged(patcher) -> SyncStats:
    """Make the loaded weights hold ``patcher``'s Patchbay contributions, writing only what differs.

    Runs from the ``MERGE_SYNC_KEY`` injection, which ComfyUI calls after
    every load of this clone.  Per Patchbay key of a fully loaded module:
    if the parameter is the very tensor we recorded (same object, same
    ``_version``) with the same contributions, nothing happens; if ComfyUI
    replaced it since (its own load wrote it with this clone's patches), it
    is recorded; otherwise it is recomputed from ComfyUI's backup of W₀
    exactly like ``ModelPatcher.patch_weight_to_device`` and written in place.
    Modules patched per forward (lowvram) get their ``LowVramPatch`` pointed
    at this clone's patches.
    """
    stats = SyncStats()
    model = patcher.model
    if getattr(model, "current_weight_patches_uuid", None) != patcher.patches_uuid:
        return stats  # the module holds another patch set; ComfyUI's load will patch it
    if getattr(patcher, "hook_patches", None) or getattr(patcher, "hook_backup", None):
        return stats
    for key in patchbay_keys(patcher):
        mine = next(p[1] for p in patcher.patches[key] if _is_ours(p))
        module_path, _, _ = key.rpartition(".")
        try:
            module = comfy.utils.get_attr(model, module_path) if module_path else model
            param = comfy.utils.get_attr(model, key)
        except AttributeError:
            continue
        lowvram = [f for f in _lowvram_patches(module) if f.key == key]
        if lowvram:
            for f in lowvram:
                if f.patches is not patcher.patches:
                    f.patches = patcher.patches
                    stats.lowvram += 1
            continue
        backup = patcher.backup.get(key)
        if backup is None or not getattr(module, "comfy_patched_weights", False):
            continue  # not patched by ComfyUI (yet): its own load will use this clone's patches
        w0 = backup.weight
        if param is w0 or param.data_ptr() == w0.data_ptr():
            continue  # never write through the backup
        held = _holds(model, key, param)
        if held is None:
            _record(model, key, param, mine.contributions)  # ComfyUI wrote it in this load
            stats.adopted += 1
            continue
        if held == mine.contributions:
            stats.unchanged += 1
            continue
        _rewrite(patcher, key, param, w0)
        _record(model, key, param, mine.contributions)
        stats.written += 1
    return stats


SYNC_BLOCK_ELEMENTS = 1 << 20  # fp32 row blocks of 4 MiB: W₀ block, ΔW block and result stay in cache


def _rewrite(patcher, key: str, param: torch.Tensor, w0: torch.Tensor) -> None:
    """``patch_weight_to_device`` for one key, reading W₀ from the backup, writing in place."""
    device = param.device
    compute_dtype = getattr(comfy.model_management, "lora_compute_dtype", None)
    temp_dtype = compute_dtype(device) if compute_dtype is not None else torch.float32
    if _rewrite_blocks(patcher, key, param, w0, temp_dtype):
        return
    with torch.inference_mode():  # as ComfyUI patches; the reused buffer is then always an inference tensor
        # = cast_to_device(w0, device, temp_dtype, copy=True), into a reused buffer (no page faults)
        temp = _workspace(device, temp_dtype, w0.numel()).view(w0.shape)
        temp.copy_(w0)
        out = comfy.lora.calculate_weight(patcher.patches[key], temp, key)
        if param.dtype in (torch.float32, torch.float16, torch.bfloat16):
            param.data.copy_(out)  # = stochastic_rounding for these dtypes (round to nearest)
        else:
            out = comfy.float.stochastic_rounding(out, param.dtype, seed=comfy.utils.string_to_seed(key))
            param.data.copy_(out)


def _rewrite_blocks(patcher, key: str, param: torch.Tensor, w0: torch.Tensor, temp_dtype: torch.dtype) -> bool:
    """The common case in one read of W₀ and one write of the weight: the key's only patch is
    our adapter with base-independent contributions, on an fp32/fp16/bf16 weight.

    Per row block ``W' = round(fp32(W₀) + fl(scale·T))`` — elementwise the very operations
    of the load path (ComfyUI's fp32 copy, our ``add_scaled_`` of the same cached ``T``, its
    rounding), so the bits agree; it only skips the full-size temporaries.  For a lone LoRA
    ``T`` is its cached product ``B·A``, so a slider move is this one pass and no GEMM.
    Returns False when the general path must run.
    """
    patches = patcher.patches.get(key) or ()
    if len(patches) != 1 or not _is_ours(patches[0]):
        return False
    strength, adapter, strength_model, offset, function = patches[0][:5]
    contribs = adapter.contributions
    if (strength != 1.0 or strength_model != 1.0 or offset is not None or function is not None
            or not base_independent(contribs)
            or param.dtype not in (torch.float32, torch.float16, torch.bfloat16)
            or temp_dtype not in (torch.float32, w0.dtype)  # a lossy temp cast: take ComfyUI's path
            or param.shape != w0.shape or not param.is_contiguous() or not w0.is_contiguous()
            or param.dim() == 0):
        return False
    shape = param.shape
    with torch.inference_mode():
        d, scale = cached_delta(key, contribs, param, target_shape(key, contribs, shape))
        if d.shape != shape:
            return False
        rows = shape[0]
        cols = param.numel() // rows
        block = max(1, SYNC_BLOCK_ELEMENTS // max(cols, 1))
        ws = _workspace(param.device, torch.float32, min(rows, block) * cols)
        scratch = _workspace(param.device, torch.float32, min(rows, block) * cols, slot=1) if scale != 1.0 else None
        src, dv, dst = w0.view(rows, cols), d.reshape(rows, cols), param.data.view(rows, cols)
        for r0 in range(0, rows, block):
            r1 = min(rows, r0 + block)
            n = (r1 - r0) * cols
            x = ws[:n].view(r1 - r0, cols)
            x.copy_(src[r0:r1])
            add_scaled_(x, dv[r0:r1], scale, scratch=None if scratch is None else scratch[:n].view(r1 - r0, cols))
            dst[r0:r1].copy_(x)
    return True


_WORKSPACES: dict[tuple[str, torch.dtype, int], torch.Tensor] = {}


def _workspace(device: torch.device, dtype: torch.dtype, numel: int, slot: int = 0) -> torch.Tensor:
    """A flat scratch tensor for one rewrite at a time (the largest weight seen so far); ``slot``
    tells apart the buffers one rewrite uses together."""
    key = (str(device), dtype, slot)
    ws = _WORKSPACES.get(key)
    if ws is None or ws.numel() < numel:
        ws = _WORKSPACES[key] = torch.empty(numel, dtype=dtype, device=device)
    return ws[:numel]


class MergeSync(comfy.patcher_extension.PatcherInjection):
    """ComfyUI calls ``inject`` after every load of the clone: bring the weights to its contributions."""

    def __init__(self):
        super().__init__(self._inject, self._eject)

    @staticmethod
    def _inject(patcher) -> None:
        sync_merged(patcher)

    @staticmethod
    def _eject(patcher) -> None:
        pass  # the weights stay ComfyUI's: its unpatch restores its backups
