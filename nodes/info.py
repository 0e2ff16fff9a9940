"""PatchbayLoraInfo: what a LoRA file holds, and how it fits a model.

Shows the header highlights (trigger words, trained base, network type),
ranks/alphas/kinds from the parsed file, the content hash, and with a model
connected the coverage: modules matched, modules not applied grouped by
reason, the family check, and which blocks the LoRA touches (the numbers to
use in LoRA Block Weights).  The text is returned and shown on the node.
"""
from __future__ import annotations

import logging
import os
from collections import Counter, defaultdict

from ..lora_core.blocks import classify_key
from ..lora_core.errors import PatchbayError
from ..lora_core.ir import CoverageReport
from . import files, host
from .common import CATEGORY

log = logging.getLogger("lora-patchbay")

MAX_TRIGGER_WORDS_SHOWN = 20
MAX_EXAMPLES = 3


def _fmt_list(values, limit: int = 8) -> str:
    values = [str(v) for v in values]
    if not values:
        return "—"
    more = f" … (+{len(values) - limit})" if len(values) > limit else ""
    return ", ".join(values[:limit]) + more


def _num(x) -> str:
    return format(float(x), "g")


def _ranges(numbers) -> str:
    """[0, 1, 2, 5, 7, 8] → '0-2, 5, 7-8'."""
    nums = sorted(set(numbers))
    parts, start, prev = [], None, None
    for n in nums:
        if start is None:
            start = prev = n
        elif n == prev + 1:
            prev = n
        else:
            parts.append(f"{start}" if start == prev else f"{start}-{prev}")
            start = prev = n
    if start is not None:
        parts.append(f"{start}" if start == prev else f"{start}-{prev}")
    return ", ".join(parts)


def file_section(name: str, path: str) -> list[str]:
    from ..lora_core.api import inspect
    info = inspect(path, with_hash=False)
    meta = info["metadata"]
    size_mb = os.path.getsize(path) / (1 << 20)
    lines = [f"{name}  ({size_mb:.1f} MB)"]
    if meta.get("title"):
        lines.append(f"title: {meta['title']}")
    kinds = ", ".join(f"{k} {n}" for k, n in sorted(info["kinds"].items())) or "—"
    lines.append(f"format: {info['format']} · {info['modules']} modules · kinds: {kinds}")
    if info.get("dora"):
        lines.append(f"DoRA magnitudes: {info['dora']} modules")
    lines.append(f"ranks: {_fmt_list(info['ranks'])} · alphas: {_fmt_list(_num(a) for a in info['alphas'])}")
    scale = info.get("scale")
    if scale:
        lines.append(f"scale (alpha/rank): min {_num(scale['min'])}, median {_num(scale['median'])}, "
                     f"max {_num(scale['max'])}")
    base = meta.get("trained_base")
    net = meta.get("network_module")
    algo = meta.get("algo")
    if base or net or algo:
        lines.append("trained for: " + (base or "?") + (f" · network: {net}" if net else "")
                     + (f" ({algo})" if algo else ""))
    if meta.get("network_dim") is not None or meta.get("network_alpha") is not None:
        lines.append(f"metadata dim/alpha: {meta.get('network_dim')}/{meta.get('network_alpha')}")
    words = meta.get("trigger_words") or []
    lines.append("trigger words: " + (_fmt_list(words, MAX_TRIGGER_WORDS_SHOWN) if words else "none in metadata"))
    if meta.get("iclora_reference_downscale_factor"):
        lines.append(f"IC-LoRA reference downscale factor: {_num(meta['iclora_reference_downscale_factor'])}")
    for w in meta.get("warnings") or []:
        lines.append(f"metadata warning: {w}")
    if info["unused"]:
        reasons = Counter(u["reason"] for u in info["unused"])
        lines.append("unused tensors: " + ", ".join(f"{n} {r}" for r, n in sorted(reasons.items())))
    for note in info.get("notes") or []:
        lines.append(f"note: {note}")
    sha, autov2 = files.HASHES.get(path)
    lines.append(f"sha256: {sha}")
    lines.append(f"AutoV2: {autov2}")
    return lines


def coverage_section(report: CoverageReport) -> list[str]:
    from ..lora_core.resolve.family import label
    total = len(report.matched) + len(report.unmatched)
    lines = [f"model: {label(report.model_family)} · LoRA looks made for: {label(report.lora_family)}"]
    lines.append(f"coverage: {len(report.matched)}/{total} modules applied"
                 + (f" ({len(report.elsewhere)} more for the text encoder / other part)" if report.elsewhere else ""))
    if report.family_warning:
        lines.append(f"WARNING: {report.family_warning}")
    groups: dict[str, list] = defaultdict(list)
    for u in report.unmatched:
        groups[u.reason].append(u)
    for reason, items in sorted(groups.items()):
        examples = ", ".join(u.name for u in items[:MAX_EXAMPLES])
        detail = f" — {items[0].detail}" if items[0].detail else ""
        lines.append(f"not applied, {reason}: {len(items)} (e.g. {examples}){detail}")
    blocks: dict[str, set] = defaultdict(set)
    outside = 0
    for r in report.matched:
        where = classify_key(r.weight_key or r.bias_key or "", report.model_family)
        if where is None:
            outside += 1
        else:
            blocks[where[0]].add(where[1])
    if blocks:
        parts = [f"{g} {_ranges(n)}" for g, n in sorted(blocks.items())]
        lines.append("blocks touched: " + "; ".join(parts) + (f"; {outside} modules outside blocks (BASE)"
                                                               if outside else ""))
    for note in report.notes:
        lines.append(f"note: {note}")
    return lines


def lora_info(name: str, model=None) -> str:
    path = files.resolve_path(name)
    lines = file_section(name, path)
    if model is not None:
        lines.append("")
        lines += coverage_section(host.resolve_for(files.load(path), model))
    return "\n".join(lines)


class PatchbayLoraInfo:
    """Show what a LoRA file holds and, with a model, how much of it applies."""

    CATEGORY = CATEGORY
    RETURN_TYPES = ("STRING",)
    RETURN_NAMES = ("info",)
    OUTPUT_TOOLTIPS = ("The same text as shown on the node.",)
    FUNCTION = "execute"
    OUTPUT_NODE = True
    DESCRIPTION = (
        "Shows a LoRA's metadata highlights (trigger words, trained base), its ranks, alphas and adapter "
        "kinds, its sha256/AutoV2 hash and, when a model is connected, how many modules apply to that "
        "model, which do not and why, and which blocks it touches.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "lora_name": (files.lora_names(), {"tooltip": "The LoRA file to describe (from models/loras)."}),
            },
            "optional": {
                "model": ("MODEL", {"tooltip": "Optional: a model to check the LoRA against (coverage report)."}),
            },
        }

    @classmethod
    def IS_CHANGED(cls, lora_name, model=None):
        # Re-read when the file changes under the same name (ComfyUI caches output nodes by inputs).
        try:
            st = os.stat(files.resolve_path(lora_name))
        except (PatchbayError, OSError):
            return ""
        return f"{st.st_mtime_ns}:{st.st_size}"

    def execute(self, lora_name, model=None):
        try:
            info = lora_info(lora_name, model)
        except PatchbayError as e:
            info = f"{lora_name}\nERROR: {e}"
        return {"ui": {"text": [info]}, "result": (info,)}


NODE_CLASS_MAPPINGS = {"PatchbayLoraInfo": PatchbayLoraInfo}
NODE_DISPLAY_NAME_MAPPINGS = {"PatchbayLoraInfo": "LoRA Info"}
