"""IC_LORA values: the in-context parameters of a LoRA file or of a stack's IC rows.

Read from each file's own safetensors header (``lora_core.io``) through the
one name gate (``files``), whatever the strength.  Used by the IC-LoRA
loader and by Apply LoRA Stack; nothing here touches ComfyUI's models.
"""
from __future__ import annotations

import logging
from typing import Mapping, Optional

from ..lora_core.errors import PatchbayError
from ..lora_core.iclora import parse_ic_metadata, stack_ic_params
from ..lora_core.io import read_header
from ..lora_core.stack import LoraStack
from . import files

log = logging.getLogger("lora-patchbay.iclora")


def default_params() -> dict:
    """IC_LORA parameters used when none are connected: a normal (k = 1) IC-LoRA."""
    return {"reference_downscale_factor": 1, "reference_temporal_scale_factor": 1, "lora": None,
            "enabled": True, "strength": 1.0, "auto_crop": True}


def header_metadata(path: str) -> dict:
    """The file's safetensors metadata ({} with a warning when it has none or cannot be read)."""
    try:
        return dict(read_header(path).metadata)
    except PatchbayError as e:  # not a safetensors file, or a broken header
        log.warning("IC-LoRA %s: cannot read metadata (%s); assuming reference_downscale_factor 1", path, e)
        return {}


def make_ic_lora_params(name: Optional[str], metadata: Optional[Mapping[str, str]], strength: float = 1.0,
                        enabled: bool = True, auto_crop: bool = True) -> dict:
    """The ``IC_LORA`` dict for one file, read from its header whatever the strength."""
    p = parse_ic_metadata(metadata)
    for w in p.warnings:
        log.warning("%s: %s", name or "IC-LoRA", w)
    return {"reference_downscale_factor": p.reference_downscale_factor,
            "reference_temporal_scale_factor": p.reference_temporal_scale_factor,
            "lora": name, "enabled": bool(enabled) and float(strength) != 0.0, "strength": float(strength),
            "auto_crop": bool(auto_crop)}


def ic_params_for_stack_rows(rows) -> Optional[dict]:
    """``IC_LORA`` for the stack rows marked ``"iclora": true`` (None when there is none).

    Each row's own file header is read, whatever its strength, so the
    parameters never come from another LoRA of the stack.
    """
    picked = []
    for i, row in enumerate(rows or []):
        if not row.get("iclora"):
            continue
        name = row.get("lora")
        meta = {}
        if name:
            try:
                meta = header_metadata(files.resolve_path(name, row.get("hash"), index=i))
            except PatchbayError as e:  # a disabled row may name a file that is gone
                log.warning("IC-LoRA stack: %s", e)
        picked.append((name, meta, float(row.get("strength", 1.0)), bool(row.get("on", True))))
    params = stack_ic_params(picked)
    if params:
        for w in params.pop("warnings", []):
            log.warning("IC-LoRA stack: %s", w)
    return params


def stack_ic_lora(stack: LoraStack) -> dict:
    """IC_LORA for the stack: its IC rows' own metadata, never the last LoRA's (defaults without IC rows)."""
    return ic_params_for_stack_rows(stack.to_rows()) or default_params()
