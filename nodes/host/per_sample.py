"""Per-sample strengths for bypass side paths: one batch renders several strengths.

``lora_core.bypass`` handles take a (batch,) strength vector per entry
(``BypassHandle.set_strength(entry, tensor)``); sample ``i`` of every
forward then runs with strength ``values[i]`` (a batch of k·B — cond and
uncond stacked — tiles the B values).  Here that vector is set through a
second injection on the patcher, registered after the pack's bypass
injection: on inject it makes sure the side paths are installed (the bypass
injection's inject is idempotent) and sets the vectors on this root's
handle; on eject it clears them.  So the model clone carries its per-sample
strengths like any other patch, and a clone without them renders as usual.
"""
from __future__ import annotations

import hashlib
from typing import Mapping, Sequence

import torch

import comfy.patcher_extension

from .bypass import bypass_injection
from .capabilities import HAS_INJECTIONS

PER_SAMPLE_KEY_PREFIX = "lora-patchbay/per-sample"


def entry_offset(patcher) -> int:
    """How many side-path entries earlier Patchbay nodes already installed on ``patcher``.

    ``bypass_into`` numbers a new plan's entries after those, so entry ``e``
    of the new plan is entry ``entry_offset(before) + e`` of the result.
    """
    old = bypass_injection(patcher)
    return (max(old.strengths) + 1) if old is not None and old.strengths else 0


class _PerSampleInjection(comfy.patcher_extension.PatcherInjection):
    def __init__(self, values: Mapping[int, tuple[float, ...]]):
        self.values = {int(e): tuple(float(v) for v in vals) for e, vals in values.items()}
        super().__init__(self._inject, self._eject)

    def _handle(self, patcher):
        injection = bypass_injection(patcher)
        if injection is None:
            return None
        return injection.handles.get(id(patcher.model))

    def _inject(self, patcher) -> None:
        injection = bypass_injection(patcher)
        if injection is None:
            return
        injection.inject(patcher)  # idempotent: installs the side paths if they are not there yet
        handle = injection.handles.get(id(patcher.model))
        for entry, vals in self.values.items():
            handle.set_strength(entry, torch.tensor(vals, dtype=torch.float32))

    def _eject(self, patcher) -> None:
        handle = self._handle(patcher)
        if handle is not None:
            handle.clear_per_sample()


def with_per_sample_strengths(patcher, values: Mapping[int, Sequence[float]]):
    """A clone of ``patcher`` (which has Patchbay side paths) whose entries in ``values`` run per sample."""
    if not HAS_INJECTIONS or bypass_injection(patcher) is None:
        raise RuntimeError("per-sample strengths need the pack's bypass side paths (ComfyUI with injections)")
    out = patcher.clone()
    h = hashlib.blake2b(digest_size=8)
    for e in sorted(values):
        h.update(f"{e}:{','.join(repr(float(v)) for v in values[e])};".encode())
    for key in [k for k in out.injections if k.startswith(PER_SAMPLE_KEY_PREFIX)]:
        out.remove_injections(key)
    out.set_injections(f"{PER_SAMPLE_KEY_PREFIX}/{h.hexdigest()}", [_PerSampleInjection(values)])
    return out


__all__ = ["entry_offset", "with_per_sample_strengths", "PER_SAMPLE_KEY_PREFIX"]
