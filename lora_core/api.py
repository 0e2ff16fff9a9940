"""The engine's public face, shared by the CLI and the ComfyUI nodes.

``open_lora`` parses (and caches) a file; ``inspect`` summarises it from its
header; ``check`` resolves it against a model's parameter names; ``apply``
bakes a stack into a copy of a model file.
"""
from __future__ import annotations

import os
import statistics
from dataclasses import dataclass
from typing import Callable, Mapping, Optional, Sequence

from .cache import ParsedFileCache
from .errors import PatchbayError
from .io import hash_file, load_state_dict, read_header
from .ir import CoverageReport, LoraFile, LoraWeights

# ----------------------------------------------------------------- file cache

FILE_CACHE = ParsedFileCache()


def open_lora(path: str, cache: Optional[ParsedFileCache] = FILE_CACHE) -> LoraFile:
    """Parse a LoRA file into the IR (cached by path, mtime and size)."""
    from .formats import parse_file
    if cache is None:
        return parse_file(os.fspath(path))
    return cache.get(path, parse_file)


# ----------------------------------------------------------------- inspect


def _rank_of(patch) -> Optional[int]:
    w = patch.weight
    rank = getattr(w, "rank", None)
    return int(rank) if rank else None


def inspect(path: str, *, with_hash: bool = True) -> dict:
    """A JSON-ready summary.  Reads the header and the scalar ``alpha``
    tensors only (tensor data stays untouched); the hash streams the file's
    bytes without decoding them."""
    from .metadata import read_metadata
    path = os.fspath(path)
    lora = open_lora(path)
    meta = read_metadata(lora.metadata)
    ranks = sorted({r for r in (_rank_of(p) for p in lora.patches) if r})
    scales = [p.scale for p in lora.patches if p.weight is not None]
    alphas = sorted({round(p.scale * r, 6) for p in lora.patches
                     for r in [_rank_of(p)] if r and isinstance(p.weight, LoraWeights)})
    out = {
        "file": path,
        "format": lora.format,
        "kinds": lora.kinds,
        "modules": len(lora.patches),
        "tensors": sum(len(p.keys) for p in lora.patches) + len(lora.unused),
        "ranks": ranks,
        "alphas": alphas,
        "scale": {"min": min(scales), "max": max(scales),
                  "median": statistics.median(scales)} if scales else None,
        "dora": sum(1 for p in lora.patches if p.dora is not None),
        "unused": [{"key": u.key, "reason": u.reason, "detail": u.detail} for u in lora.unused],
        "notes": list(lora.notes),
        "metadata": {
            "trigger_words": list(meta.trigger_words),
            "trained_base": meta.trained_base,
            "network_module": meta.network_module,
            "network_dim": meta.network_dim,
            "network_alpha": meta.network_alpha,
            "algo": meta.algo,
            "title": meta.title,
            "iclora_reference_downscale_factor": meta.iclora_downscale,
            "iclora_reference_temporal_scale_factor": meta.iclora_temporal,
            "warnings": list(meta.warnings),
            "keys": sorted(lora.metadata),
        },
    }
    if with_hash:
        h = hash_file(path)
        out["hash"] = {"sha256": h.sha256, "autov2": h.autov2, "addnet": h.addnet}
    return out


# ----------------------------------------------------------------- check


def model_shapes_from_file(path: str) -> dict[str, tuple[int, ...]]:
    """Parameter names and shapes of a safetensors model, from its header only."""
    header = read_header(path)
    return {k: v.shape for k, v in header.tensors.items()}


def check(lora_path: str, model: str | Mapping[str, tuple[int, ...]]) -> CoverageReport:
    from .resolve import resolve_targets
    shapes = model_shapes_from_file(model) if isinstance(model, (str, os.PathLike)) else model
    return resolve_targets(open_lora(lora_path), shapes)


def report_to_json(report: CoverageReport) -> dict:
    return {
        "file": report.file,
        "matched": len(report.matched),
        "unmatched": len(report.unmatched),
        "lora_family": report.lora_family,
        "model_family": report.model_family,
        "family_warning": report.family_warning,
        "targets": [{"module": r.patch.name, "weight": r.weight_key, "bias": r.bias_key,
                     "slice": [r.slice.dim, r.slice.start, r.slice.length] if r.slice else None,
                     "kind": r.patch.kind.value if r.patch.kind else None}
                    for r in report.matched],
        "unmatched_keys": [{"module": u.name, "keys": list(u.keys), "reason": u.reason,
                            "detail": u.detail} for u in report.unmatched],
        # patches for another component (e.g. text-encoder keys met by a UNet):
        # not errors, since a loader resolves those against the text encoder
        "elsewhere": [{"module": u.name, "keys": list(u.keys), "reason": u.reason,
                       "detail": u.detail} for u in report.elsewhere],
        "notes": list(report.notes),
    }


# ----------------------------------------------------------------- apply


@dataclass(frozen=True)
class ApplyResult:
    out: str
    reports: tuple[CoverageReport, ...]
    changed: int


def apply(model_path: str, loras: Sequence[tuple[str, float]], out: str, *, force: bool = False,
          progress: Optional[Callable[[int, int], None]] = None) -> ApplyResult:
    """Bake ``loras`` (path, strength) into a copy of ``model_path`` at ``out``.

    Output tensors keep the input's names and dtypes; the file is written to a
    temporary name in the target folder and renamed, so a failure never leaves
    a partial file and an existing ``out`` is refused unless ``force``.
    """
    from .patcher import MergePatcher
    from .plan import build_plan
    from .resolve import resolve_targets
    from .tools.writer import check_target, save_atomic

    inputs = [model_path] + [p for p, _ in loras]
    out = check_target(out, force=force, inputs=inputs)  # refuse before reading anything
    params, metadata = load_state_dict(model_path)
    shapes = {k: tuple(v.shape) for k, v in params.items()}
    reports = []
    entries = []
    for path, strength in loras:
        report = resolve_targets(open_lora(path), shapes)
        reports.append(report)
        entries.append((report, float(strength), None))
    plan = build_plan(entries)
    # mmap'd tensors are copy-on-write: patching them never touches the input
    # file.  No originals are kept: on a failure this in-memory copy is simply
    # discarded and nothing is written, which halves the memory of a bake.
    patcher = MergePatcher(params, keep_originals=False)
    patcher.apply(plan, progress=progress)
    save_atomic(params, out, metadata=metadata, force=force, inputs=inputs)
    return ApplyResult(out=out, reports=tuple(reports), changed=len(plan))
