"""IC_LORA values (``lora_core.iclora.ICLora``) of a LoRA file or of a stack's IC rows.

Read from each file's own safetensors header (``lora_core.io``) through the
one name gate (``files``), whatever the strength.  Used by the IC-LoRA
loader and by Apply LoRA Stack; nothing here touches ComfyUI's models, so
the core stack node does not depend on the optional IC-LoRA nodes.
"""
from __future__ import annotations

import logging
from typing import Optional

from ..lora_core.errors import PatchbayError
from ..lora_core.iclora import ICLora, ic_lora_for_file, ic_lora_for_stack_rows
from ..lora_core.io import read_header
from ..lora_core.stack import LoraStack
from . import files

log = logging.getLogger("lora-patchbay.iclora")


def header_metadata(path: str) -> dict:
    """The file's safetensors metadata ({} with a warning when it has none or cannot be read)."""
    try:
        return dict(read_header(path).metadata)
    except PatchbayError as e:  # not a safetensors file, or a broken header
        log.warning("IC-LoRA %s: cannot read metadata (%s); assuming reference_downscale_factor 1", path, e)
        return {}


def _logged(value: Optional[ICLora], who: str) -> Optional[ICLora]:
    for w in (value.warnings if value is not None else ()):
        log.warning("%s: %s", who, w)
    return value


def file_ic_lora(name: str, strength: float = 1.0, enabled: bool = True, auto_crop: bool = True
                 ) -> tuple[ICLora, dict]:
    """(IC_LORA of the listed LoRA ``name``, its header metadata)."""
    meta = header_metadata(files.resolve_path(name))
    return _logged(ic_lora_for_file(name, meta, strength, enabled, auto_crop), name), meta


def ic_lora_for_rows(rows) -> Optional[ICLora]:
    """IC_LORA for the stack rows marked ``"iclora": true`` (None when there is none).

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
    return _logged(ic_lora_for_stack_rows(picked), "IC-LoRA stack")


def stack_ic_lora(stack: LoraStack) -> ICLora:
    """IC_LORA for the stack: its IC rows' own metadata, never the last LoRA's (a k = 1 default without)."""
    return ic_lora_for_rows(stack.to_rows()) or ICLora()
