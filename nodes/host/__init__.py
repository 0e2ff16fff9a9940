"""The only door into ComfyUI's model machinery.

Every call into ModelPatcher, ``comfy.hooks``, ``comfy.patcher_extension``
and ``comfy.weight_adapter`` (patches, injections, wrappers, attachments,
clones) lives in this package, one module per concern:

* ``capabilities``: host version, whether bypass injections exist, LTX model traits;
* ``probe``: parameter shapes, resolution against a model, quantized/offloaded weights;
* ``merge``: the ``PatchbayAdapter`` weight adapter, its ΔW/factor caches, ``add_patches``;
* ``bypass``: side paths through ``set_injections``;
* ``wrappers``: the per-step strength schedule (APPLY_MODEL wrapper);
* ``hooks``: conditioning hooks and model attachments (IC-LoRA);
* ``clip``: the text encoder's patcher;
* ``per_sample``: per-sample bypass strengths (one batch renders several strengths).
* ``weights``: the weights a patcher samples with, read without changing it (LoRA extraction).

Node modules translate widgets into engine calls and calls of the names
below, nothing else.  Design notes per host version: docs/host.md.
"""
from __future__ import annotations

from .bypass import BYPASS_KEY_PREFIX, add_bypass, bypass_injection, bypass_into, bypass_supported_keys, with_strengths
from .capabilities import HAS_INJECTIONS, HOST_VERSION, host_version, ltx_drops_filler_tokens, ltx_positions_are_intervals
from .clip import clip_patcher, merge_into_clip
from .hooks import attachment, decorated_model, has_our_hook, with_sampling_hook, without_our_hook
from .merge import (ADAPTER_NAME, DELTA_CACHES, FACTOR_CACHE, PatchbayAdapter, add_merge_patches, cached_delta,
                    clear_caches, merge_into)
from .per_sample import entry_offset, with_per_sample_strengths
from .probe import is_quantized, model_shapes, module_at, prefers_bypass, resolve_for
from .wrappers import SCHEDULE_WRAPPER_KEY, attach_schedules
from .weights import sampled_weights

__all__ = [
    "BYPASS_KEY_PREFIX", "add_bypass", "bypass_injection", "bypass_into", "bypass_supported_keys", "with_strengths",
    "HAS_INJECTIONS", "HOST_VERSION", "host_version", "ltx_drops_filler_tokens", "ltx_positions_are_intervals", "clip_patcher", "merge_into_clip",
    "attachment", "decorated_model", "has_our_hook", "with_sampling_hook", "without_our_hook",
    "ADAPTER_NAME", "DELTA_CACHES", "FACTOR_CACHE", "PatchbayAdapter", "add_merge_patches", "cached_delta",
    "clear_caches", "merge_into", "is_quantized", "model_shapes", "module_at", "prefers_bypass", "resolve_for",
    "SCHEDULE_WRAPPER_KEY", "attach_schedules", "sampled_weights", "entry_offset", "with_per_sample_strengths",
]
