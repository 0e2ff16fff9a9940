"""The only door into ComfyUI's ModelPatcher.

Merge mode registers ONE :class:`PatchbayAdapter` (a ``WeightAdapterBase``)
per parameter key, holding every Patchbay contribution to that key.  ComfyUI
then calls our maths from ``comfy.lora.calculate_weight`` for the normal
load, for lowvram (``LowVramPatch`` per forward), for hooks and for model
merges, and keeps its own backups, clones, unpatching and model cache; we
never write into the shared base module ourselves.

Per parameter (``stack_delta``), on the weight's device, in fp32::

    D  = Σ over row groups (whole weight or one fused-qkv slice):
           mm([s₁c₁B₁ | s₂c₂B₂ | …], [A₁; A₂; …])      (all plain LoRAs, one GEMM)
         + Σ sᵢ·ΔWᵢ(W₀)                                 (other kinds, DoRA, against W₀)
         + Σ sᵢ·bᵢ                                       (bias patches)
    W' = W₀ + D

``D`` does not depend on W₀ unless a contribution is base-dependent (DoRA,
OFT/BOFT, IA3, GLoRA, set).  So base-independent ``D`` is cached by
(parameter key, contribution tuple, device, shape) in a byte-bounded LRU and
a cache hit is bit-identical to a fresh compute by construction: both add
the same ``D`` tensor to the incoming weight (no fingerprint of W₀ needed).
Base-dependent ``D`` is always recomputed.  LoRA factors are cached in fp32
on the weight's device, so a slider change costs one small ``B`` rescale,
one GEMM and one add per parameter.

Bypass mode installs ``lora_core.bypass`` side paths through
``ModelPatcher.set_injections`` under a key unique to this pack (one
injection per patcher holding the combined plan of every chained Patchbay
node); inject and eject are idempotent.  Design notes per host version:
docs/host.md.
"""
from __future__ import annotations

import hashlib
import logging
import os
import threading
import uuid
import weakref
from collections import OrderedDict
from typing import Any, Iterable, Mapping, Optional

import torch

import comfy.model_management
import comfy.model_patcher
import comfy.patcher_extension
import comfy.weight_adapter

from ..lora_core.errors import NonFiniteError
from ..lora_core.ir import CoverageReport, LoraFile
from ..lora_core.plan import Contribution, PatchPlan, build_plan, normalized
from ..lora_core.stack_delta import base_independent, plain_factors, target_shape
from ..lora_core.stack_delta import stack_delta as pure_stack_delta

log = logging.getLogger("lora-patchbay")

ADAPTER_NAME = "patchbay"
BYPASS_KEY_PREFIX = "lora-patchbay/bypass"
MODES = ("merge", "bypass", "auto")


def host_version() -> tuple[int, ...]:
    try:
        import comfyui_version
        return tuple(int(x) for x in comfyui_version.__version__.split(".")[:3])
    except Exception:  # pragma: no cover - very old installs have no version file
        return (0, 0, 0)


HOST_VERSION = host_version()
HAS_INJECTIONS = hasattr(comfy.model_patcher.ModelPatcher, "set_injections")

FLOAT8 = tuple(getattr(torch, n) for n in ("float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz",
                                            "float8_e5m2fnuz") if hasattr(torch, n))


# =============================================================== byte-bounded LRU

class ByteLRU:
    """LRU of tensors (or tuples of tensors) bounded by their bytes."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self._items: "OrderedDict[Any, tuple[Any, int]]" = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    @staticmethod
    def _size(value) -> int:
        if isinstance(value, torch.Tensor):
            return value.numel() * value.element_size()
        return sum(ByteLRU._size(v) for v in value)

    def get(self, key):
        with self._lock:
            hit = self._items.get(key)
            if hit is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return hit[0]

    def put(self, key, value) -> None:
        size = self._size(value)
        if size > self.max_bytes:
            return
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._bytes -= old[1]
            self._items[key] = (value, size)
            self._bytes += size
            while self._bytes > self.max_bytes and self._items:
                _, (_, dropped) = self._items.popitem(last=False)
                self._bytes -= dropped

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._bytes = 0

    @property
    def bytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._items)


def _env_mb(name: str, default: int) -> int:
    try:
        return int(float(os.environ.get(name, default)) * (1 << 20))
    except ValueError:
        return default << 20


class DeltaCache(ByteLRU):
    """ΔW sums keyed by (parameter key, …): at most ``per_param`` sums per parameter.

    ComfyUI re-patches every key in the same order on each load, a cyclic
    pattern under which plain LRU evicts exactly what the next pass needs
    once the budget is smaller than the patched parameters.  So when full,
    only superseded sums (not the newest of their parameter) are evicted,
    and otherwise a new parameter is simply not admitted: a stable subset
    of parameters keeps hitting.  Two sums per parameter cover "slider moved
    back" and two branches alternating on one base.
    """

    def __init__(self, max_bytes: int, per_param: int = 2):
        super().__init__(max_bytes)
        self.per_param = per_param
        self._by_param: dict[str, list] = {}

    def put(self, key, value) -> None:
        size = self._size(value)
        if size > self.max_bytes:
            return
        param = key[0]
        with self._lock:
            if key in self._items:
                return
            mine = self._by_param.setdefault(param, [])
            while len(mine) >= self.per_param:
                self._drop(mine[0])
            if self._bytes + size > self.max_bytes:
                for old in list(self._items):
                    if self._bytes + size <= self.max_bytes:
                        break
                    siblings = self._by_param.get(old[0], ())
                    if siblings and siblings[-1] != old:
                        self._drop(old)
            while self._bytes + size > self.max_bytes and mine:
                self._drop(mine[0])  # the new sum supersedes this parameter's older ones
                mine = self._by_param.setdefault(param, [])
            if self._bytes + size > self.max_bytes:
                if not mine:
                    self._by_param.pop(param, None)
                return
            self._items[key] = (value, size)
            self._bytes += size
            mine.append(key)

    def _drop(self, key) -> None:
        value = self._items.pop(key, None)
        if value is not None:
            self._bytes -= value[1]
        siblings = self._by_param.get(key[0])
        if siblings is not None:
            if key in siblings:
                siblings.remove(key)
            if not siblings:
                del self._by_param[key[0]]

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._by_param.clear()
            self._bytes = 0


# ΔW sums: on the CPU they save a GEMM per parameter; on accelerators the
# GEMM is cheap and memory belongs to ComfyUI's manager, so default off there.
DELTA_CACHES = {"cpu": DeltaCache(_env_mb("PATCHBAY_DELTA_CACHE_MB", 1024))}
DELTA_CACHE_ACCEL_BYTES = _env_mb("PATCHBAY_DELTA_CACHE_GPU_MB", 0)
FACTOR_CACHE = ByteLRU(_env_mb("PATCHBAY_FACTOR_CACHE_MB", 1024))


def _delta_cache(device: torch.device) -> Optional[ByteLRU]:
    cache = DELTA_CACHES.get(str(device))
    if cache is None and device.type != "cpu" and DELTA_CACHE_ACCEL_BYTES > 0:
        cache = DELTA_CACHES.setdefault(str(device), DeltaCache(DELTA_CACHE_ACCEL_BYTES))
    return cache


def clear_caches() -> None:
    for cache in DELTA_CACHES.values():
        cache.clear()
    FACTOR_CACHE.clear()


# =============================================================== per-parameter maths
# The maths itself is lora_core.stack_delta; the host only adds its caches.

def _factors_on(c: Contribution, view: torch.Size, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, A) fp32 on ``device`` at scale 1, cached per module patch and device."""
    key = (c.resolved.patch, device, tuple(view))
    hit = FACTOR_CACHE.get(key)
    if hit is not None:
        return hit
    b, a = plain_factors(c, view, device)
    FACTOR_CACHE.put(key, (b, a))
    return b, a


def stack_delta(key: str, contribs: tuple[Contribution, ...], base: torch.Tensor,
                shape: Optional[torch.Size] = None) -> torch.Tensor:
    return pure_stack_delta(key, contribs, base, shape, factor_source=_factors_on)


def cached_stack_delta(key: str, contribs: tuple[Contribution, ...], base: torch.Tensor,
                       shape: torch.Size) -> torch.Tensor:
    """:func:`stack_delta`, served from the ΔW cache when it cannot depend on W₀."""
    cache = _delta_cache(base.device) if base_independent(contribs) else None
    if cache is None:
        return stack_delta(key, contribs, base, shape)
    ckey = (key, contribs, str(base.device), tuple(shape))
    hit = cache.get(ckey)
    if hit is not None:
        return hit
    d = stack_delta(key, contribs, base, shape)
    cache.put(ckey, d)
    return d


def merged_weight(key: str, contribs: tuple[Contribution, ...], weight: torch.Tensor, *,
                  strength: float = 1.0, function=None, in_place: bool = False,
                  out_dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """``W₀ + strength·function(D)`` with fp32 accumulation (one rounding at the end).

    The pure per-parameter function of merge mode: ``weight`` is W₀ as the
    host hands it over; with ``in_place`` and an fp32 ``weight`` of the final
    shape the sum is written into it.
    """
    shape = target_shape(key, contribs, weight.shape)
    d = cached_stack_delta(key, contribs, weight, shape)
    if function is not None:
        d = function(d)
    if weight.dtype == torch.float32 and weight.shape == shape and in_place:
        out = weight
    elif weight.shape == shape:
        out = weight.to(torch.float32, copy=True)
    else:
        out = torch.zeros(shape, dtype=torch.float32, device=weight.device)
        out[tuple(slice(0, n) for n in weight.shape)].copy_(weight)
    if strength == 1.0:
        out.add_(d)
    else:
        out.add_(d, alpha=strength)
    if out_dtype is not None and out.dtype != out_dtype:
        out = out.to(out_dtype)
    return out


# =============================================================== ComfyUI adapter

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
            return merged_weight(key, self.contributions, weight, strength=float(strength),
                                 function=function, in_place=True, out_dtype=out_dtype)
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


def patchbay_keys(patcher) -> list[str]:
    return sorted(k for k, lst in patcher.patches.items() if any(_is_ours(p) for p in lst))


# =============================================================== model introspection

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
    from ..lora_core.resolve import resolve_targets
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


_CHECKED: "weakref.WeakSet" = weakref.WeakSet()


def check_finite(lora: LoraFile) -> None:
    """Refuse a file with NaN/Inf tensors before anything is patched (once per parsed file)."""
    if lora in _CHECKED:
        return
    for patch in lora.patches:
        tensors = []
        if patch.weight is not None:
            tensors += [v for v in vars(patch.weight).values() if isinstance(v, torch.Tensor)]
        if patch.dora is not None:
            tensors.append(patch.dora.magnitude)
        if patch.bias is not None:
            tensors.append(patch.bias)
        for t in tensors:
            if t.is_floating_point() and t.numel() and not bool(torch.isfinite(t).all()):
                raise NonFiniteError(f"LoRA module {patch.name!r} holds NaN or Inf values", file=lora.path,
                                     fix="the LoRA is broken (often an fp16 overflow in training); "
                                         "re-export it or use another version")
    _CHECKED.add(lora)


# =============================================================== quantized / offloaded

def _weight_of(patcher, key: str):
    try:
        weight, _, _ = comfy.model_patcher.get_key_weight(patcher.model, key)
        return weight
    except Exception:
        return None


def _module_of(root: torch.nn.Module, key: str) -> tuple[Optional[torch.nn.Module], str]:
    path, _, leaf = key.rpartition(".")
    module = root
    for part in path.split(".") if path else ():
        module = getattr(module, part, None)
        if module is None:
            return None, leaf
    return module, leaf


def is_quantized(weight) -> bool:
    if weight is None:
        return False
    if type(weight) not in (torch.Tensor, torch.nn.Parameter):
        data = getattr(weight, "data", weight)
        if type(data) is not torch.Tensor:  # QuantizedTensor, GGMLTensor, …
            return True
    return weight.dtype in FLOAT8 or not weight.dtype.is_floating_point


def prefers_bypass(patcher, keys: Iterable[str]) -> bool:
    """``auto`` mode: quantized weights (fp8, QuantizedTensor, GGUF) or an offloaded model."""
    for key in keys:
        w = _weight_of(patcher, key)
        if is_quantized(w):
            return True
        module, _ = _module_of(patcher.model, key)
        if module is not None and "GGML" in type(module).__name__.upper():
            return True
    mm = comfy.model_management
    vram_state = getattr(mm, "vram_state", None)
    if vram_state is not None and vram_state in (getattr(mm.VRAMState, "LOW_VRAM", None),
                                                 getattr(mm.VRAMState, "NO_VRAM", None)):
        return True
    return bool(getattr(patcher.model, "model_lowvram", False))


# =============================================================== bypass

class _BypassInjection(comfy.patcher_extension.PatcherInjection):
    """One patcher's side paths: inject installs, eject removes; both idempotent."""

    def __init__(self, plan: dict, strengths: dict[int, float]):
        self.plan = plan
        self.strengths = strengths
        self.handles: dict[int, Any] = {}  # id(root module) -> BypassHandle
        super().__init__(self._inject, self._eject)

    def _inject(self, patcher) -> None:
        from ..lora_core.bypass import install_bypass
        root = patcher.model
        if id(root) in self.handles:
            return
        self.handles[id(root)] = install_bypass(root, self.plan, strengths=self.strengths)

    def _eject(self, patcher) -> None:
        handle = self.handles.pop(id(patcher.model), None)
        if handle is not None:
            handle.remove()

    def set_strength(self, entry: int, value: float) -> None:
        self.strengths[entry] = float(value)
        for handle in self.handles.values():
            handle.set_strength(entry, value)


def _bypass_key(plan: Mapping[str, tuple[Contribution, ...]], strengths: Mapping[int, float]) -> str:
    h = hashlib.blake2b(digest_size=8)
    for key in sorted(plan):
        for c in plan[key]:
            h.update(f"{key}|{c.file}|{c.resolved.patch.name}|{c.strength!r}|{c.entry}|{c.part};".encode())
    for e in sorted(strengths):
        h.update(f"{e}={strengths[e]!r};".encode())
    return f"{BYPASS_KEY_PREFIX}/{h.hexdigest()}"


def bypass_supported_keys(patcher, keys: Iterable[str]) -> tuple[list[str], list[str]]:
    """Split keys into those the side path can run and those that must merge."""
    from ..lora_core.bypass import module_kind
    ok, merge = [], []
    for key in keys:
        module, leaf = _module_of(patcher.model, key)
        if module is not None and leaf in ("weight", "bias") and module_kind(module) is not None:
            ok.append(key)
        else:
            merge.append(key)
    return ok, merge


def add_bypass(patcher, plan: PatchPlan, strengths: Mapping[int, float]) -> list[str]:
    """Install ``plan`` as side paths on ``patcher`` (a fresh clone); returns merged leftovers.

    ``plan`` must be built with entry strengths 1 (block multipliers only);
    ``strengths`` holds the entry strengths.  Earlier Patchbay side paths on
    this patcher are combined with the new ones into one injection (entries
    renumbered so they stay distinct).
    """
    if not HAS_INJECTIONS:
        raise RuntimeError("this ComfyUI has no ModelPatcher.set_injections; use merge mode")
    plan = normalized(plan)
    ok, merge_keys = bypass_supported_keys(patcher, plan)
    combined = {k: plan[k] for k in ok}
    all_strengths = dict(strengths)
    for key in list(patcher.injections):
        if not key.startswith(BYPASS_KEY_PREFIX):
            continue
        old = patcher.injections[key][0]
        shift = (max(old.strengths) + 1) if old.strengths else 0
        renumbered = {}
        for e, v in all_strengths.items():
            renumbered[e + shift] = v
        all_strengths = dict(old.strengths)
        all_strengths.update(renumbered)
        for k, contribs in list(combined.items()):
            combined[k] = tuple(_shift(c, shift) for c in contribs)
        for k, contribs in old.plan.items():
            combined[k] = tuple(contribs) + combined.get(k, ())
        patcher.remove_injections(key)
    injection = _BypassInjection(combined, all_strengths)
    patcher.set_injections(_bypass_key(combined, all_strengths), [injection])
    leftovers = {}
    for k in merge_keys:
        leftovers[k] = tuple(Contribution(c.resolved, c.strength * float(strengths.get(c.entry, 1.0)),
                                          c.part, c.entry, c.file) for c in plan[k])
    if leftovers:
        add_merge_patches(patcher, leftovers)
    return merge_keys


def _shift(c: Contribution, shift: int) -> Contribution:
    return Contribution(c.resolved, c.strength, c.part, c.entry + shift, c.file)


def bypass_injection(patcher) -> Optional[_BypassInjection]:
    for key, injections in getattr(patcher, "injections", {}).items():
        if key.startswith(BYPASS_KEY_PREFIX):
            return injections[0]
    return None


# =============================================================== one-call helpers

def apply_plan(patcher, plan: PatchPlan, mode: str, strengths: Optional[Mapping[int, float]] = None):
    """Clone ``patcher`` and register ``plan`` in ``mode`` (merge/bypass/auto).

    For merge the plan carries the final strengths; for bypass pass the
    plan at entry strength 1 and ``strengths`` per entry.
    """
    out = patcher.clone()
    if mode == "auto":
        mode = "bypass" if HAS_INJECTIONS and prefers_bypass(patcher, plan) else "merge"
    if mode == "bypass":
        add_bypass(out, plan, strengths or {})
    else:
        if strengths:
            plan = {k: tuple(Contribution(c.resolved, c.strength * float(strengths.get(c.entry, 1.0)),
                                          c.part, c.entry, c.file) for c in v) for k, v in plan.items()}
        add_merge_patches(out, plan)
    return out


def apply_lora_to_model(model, path: str, strength: float, mode: str = "merge"):
    """One LoRA file on a MODEL (used by the IC-LoRA loader).  Strength 0 returns ``model``."""
    from . import files
    if float(strength) == 0.0:
        return model
    lora = files.load(path)
    check_finite(lora)
    report = resolve_for(lora, model)
    files.log_coverage(report, "model")
    plan = build_plan([(report, float(strength), None)])
    return apply_plan(model, plan, mode)
