"""Conditioning hooks and model attachments (used by the IC-LoRA nodes).

The automatic guide crop rides on ONE ``TransformerOptionsHook`` attached to
both conditionings: when a sampler uses them, the hook adds two sampling
wrappers for that run only (OUTER_SAMPLE and APPLY_MODEL).  Our hooks carry
a marker attribute, so they are found and removed without touching others.
"""
from __future__ import annotations

from typing import Any, Callable

import comfy.hooks
import comfy.patcher_extension

HOOK_MARKER_ATTR = "_patchbay_guide_crop_hook"   # attribute set on our TransformerOptionsHook


def _cond_value(cond, key, default=None):
    for entry in cond or []:
        if key in entry[1]:
            return entry[1][key]
    return default


def is_our_hook(hook) -> bool:
    return bool(getattr(hook, HOOK_MARKER_ATTR, False))


def has_our_hook(cond) -> bool:
    hooks = _cond_value(cond, "hooks")
    return hooks is not None and any(is_our_hook(h) for h in hooks.hooks)


def sampling_hook_group(key: str, outer_sample: Callable, apply_model: Callable):
    """A HookGroup whose one hook adds ``outer_sample`` and ``apply_model`` wrappers under ``key``."""
    wmp = comfy.patcher_extension.WrappersMP
    hook = comfy.hooks.TransformerOptionsHook(
        transformers_dict={"wrappers": {wmp.OUTER_SAMPLE: {key: [outer_sample]},
                                        wmp.APPLY_MODEL: {key: [apply_model]}}},
        hook_scope=comfy.hooks.EnumHookScope.AllConditioning)
    setattr(hook, HOOK_MARKER_ATTR, True)
    group = comfy.hooks.HookGroup()
    group.add(hook)
    return group


def with_sampling_hook(positive, negative, key: str, outer_sample: Callable, apply_model: Callable):
    """Both conditionings with one shared :func:`sampling_hook_group` attached (once)."""
    if has_our_hook(positive) and has_our_hook(negative):
        return positive, negative
    ours = sampling_hook_group(key, outer_sample, apply_model)
    out = []
    for cond in (positive, negative):
        new = []
        for entry in cond:
            d = entry[1].copy()
            old = d.get("hooks")
            if old is None:
                d["hooks"] = ours
            elif not any(is_our_hook(h) for h in old.hooks):
                merged = old.clone()
                for h in ours.hooks:
                    merged.add(h)
                d["hooks"] = merged
            new.append([entry[0], d])
        out.append(new)
    return out[0], out[1]


def without_our_hook(entry_dict: dict) -> dict:
    """A conditioning entry's dict (copied by the caller) with our hook removed, others kept."""
    hooks = entry_dict.get("hooks")
    if hooks is not None and any(is_our_hook(h) for h in hooks.hooks):
        rest = comfy.hooks.HookGroup()
        for h in hooks.hooks:
            if not is_our_hook(h):
                rest.add(h)
        if len(rest):
            entry_dict["hooks"] = rest
        else:
            entry_dict.pop("hooks")
    return entry_dict


# ----------------------------------------------------------------- attachments

def attachment(patcher, key: str, default: Any = None) -> Any:
    """The patcher's attachment ``key`` (None on hosts without attachments)."""
    get = getattr(patcher, "get_attachment", None)
    if get is None:
        return default
    value = get(key)
    return default if value is None else value


def decorated_model(patcher, original, *, attachments: dict[str, Any] | None = None,
                    outer_sample: tuple[str, Callable] | None = None):
    """``patcher`` with attachments set and an OUTER_SAMPLE wrapper added; cloned first when it is
    still ``original`` (so the caller's input model is never changed)."""
    out = patcher.clone() if patcher is original else patcher
    if attachments and hasattr(out, "set_attachments"):
        for key, value in attachments.items():
            out.set_attachments(key, value)
    if outer_sample is not None:
        out.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.OUTER_SAMPLE, outer_sample[0], outer_sample[1])
    return out
