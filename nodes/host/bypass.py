"""Bypass mode: ``lora_core.bypass`` side paths installed through ``ModelPatcher.set_injections``.

One injection per patcher, under a key unique to this pack, holds the
combined plan of every chained Patchbay node; inject and eject are
idempotent.  Keys the side path cannot run (no supported module) merge.
"""
from __future__ import annotations

import hashlib
from typing import Any, Iterable, Mapping, Optional

import torch

import comfy.patcher_extension

from ...lora_core.bypass import install_bypass, module_kind
from ...lora_core.plan import Contribution, PatchPlan, normalized
from .capabilities import HAS_INJECTIONS
from .merge import add_merge_patches
from .probe import module_at

BYPASS_KEY_PREFIX = "lora-patchbay/bypass"


class _BypassInjection(comfy.patcher_extension.PatcherInjection):
    """One patcher's side paths: inject installs, eject removes; both idempotent."""

    def __init__(self, plan: dict, strengths: dict[int, float]):
        self.plan = plan
        self.strengths = strengths
        self.handles: dict[int, Any] = {}  # id(root module) -> BypassHandle
        super().__init__(self._inject, self._eject)

    def _inject(self, patcher) -> None:
        root = patcher.model
        if id(root) in self.handles:
            return
        self.handles[id(root)] = install_bypass(root, self.plan, strengths=self.strengths,
                                                originals=_originals(patcher, self.plan))

    def _eject(self, patcher) -> None:
        handle = self.handles.pop(id(patcher.model), None)
        if handle is not None:
            handle.remove()

    def set_strength(self, entry: int, value: float) -> None:
        self.strengths[entry] = float(value)
        for handle in self.handles.values():
            handle.set_strength(entry, value)


def _originals(patcher, plan: Mapping[str, tuple[Contribution, ...]]) -> dict:
    """W₀/b₀ of the plan's modules whose live tensors hold merged rows (any patch on the key).

    ComfyUI injects after it has patched the weights, so a side path computed
    from the live weight would stack on the merged rows.  The original is the
    patcher's backup, or, when the patch runs per forward (lowvram's
    LowVramPatch), the module's own tensor, which is then unpatched.
    """
    out = {}
    prefixes = {key.rpartition(".")[0] for key in plan}
    backup = getattr(patcher, "backup", {}) or {}
    for prefix in prefixes:
        for key in (f"{prefix}.weight", f"{prefix}.bias") if prefix else ("weight", "bias"):
            if not patcher.patches.get(key):
                continue
            saved = backup.get(key)
            if saved is not None:
                out[key] = saved.weight
                continue
            module, leaf = module_at(patcher.model, key)
            tensor = getattr(module, leaf, None) if module is not None else None
            if isinstance(tensor, torch.Tensor):
                out[key] = tensor
    return out


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
    ok, merge = [], []
    for key in keys:
        module, leaf = module_at(patcher.model, key)
        if module is not None and leaf in ("weight", "bias") and module_kind(module) is not None:
            ok.append(key)
        else:
            merge.append(key)
    return ok, merge


def with_strengths(plan: PatchPlan, strengths: Mapping[int, float]) -> PatchPlan:
    """``plan`` (built at entry strength 1) with each contribution scaled by its entry's strength."""
    return {k: tuple(Contribution(c.resolved, c.strength * float(strengths.get(c.entry, 1.0)),
                                  c.part, c.entry, c.file) for c in v) for k, v in plan.items()}


def _shift(c: Contribution, shift: int) -> Contribution:
    return Contribution(c.resolved, c.strength, c.part, c.entry + shift, c.file)


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
        renumbered = {e + shift: v for e, v in all_strengths.items()}
        all_strengths = dict(old.strengths)
        all_strengths.update(renumbered)
        for k, contribs in list(combined.items()):
            combined[k] = tuple(_shift(c, shift) for c in contribs)
        for k, contribs in old.plan.items():
            combined[k] = tuple(contribs) + combined.get(k, ())
        patcher.remove_injections(key)
    injection = _BypassInjection(combined, all_strengths)
    patcher.set_injections(_bypass_key(combined, all_strengths), [injection])
    leftovers = with_strengths({k: plan[k] for k in merge_keys}, strengths)
    if leftovers:
        add_merge_patches(patcher, leftovers)
    return merge_keys


def bypass_into(patcher, plan: PatchPlan, strengths: Mapping[int, float]):
    """A clone of ``patcher`` with ``plan`` installed as side paths (see :func:`add_bypass`)."""
    out = patcher.clone()
    add_bypass(out, plan, strengths)
    return out


def bypass_injection(patcher) -> Optional[_BypassInjection]:
    for key, injections in getattr(patcher, "injections", {}).items():
        if key.startswith(BYPASS_KEY_PREFIX):
            return injections[0]
    return None
