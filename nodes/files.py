"""LoRA files as ComfyUI sees them: names in the ``loras`` folder, safe path
resolution, hash-based recovery of moved or renamed files, the parsed-file
cache and the one-line coverage summary.

Names are the relative paths ``folder_paths.get_filename_list("loras")``
lists.  A name never reaches the file system before it has passed
:func:`unsafe_name_reason` (no absolute paths, no ``..``), so a workflow or an
API prompt cannot read files outside the model folders.
"""
from __future__ import annotations

import logging
import os
import threading
from typing import Optional

import folder_paths

from ..lora_core.api import FILE_CACHE, open_lora
from ..lora_core.errors import StackError
from ..lora_core.io import hash_file
from ..lora_core.ir import CoverageReport, LoraFile
from ..lora_core.stack import LoraStack, StackEntry
from .common import parse_stack_text

log = logging.getLogger("lora-patchbay")

FOLDER = "loras"


# ----------------------------------------------------------------- names

def lora_names() -> list[str]:
    """Every LoRA file ComfyUI lists (relative paths, subfolders included)."""
    try:
        return list(folder_paths.get_filename_list(FOLDER))
    except Exception:  # pragma: no cover - folder not registered in an odd install
        return []


def unsafe_name_reason(name: str) -> Optional[str]:
    """Why ``name`` may not be used as a LoRA name, or None when it is safe."""
    if not isinstance(name, str) or not name.strip():
        return "the LoRA name is empty"
    if "\x00" in name:
        return "the LoRA name contains a NUL character"
    norm = name.replace("\\", "/")
    if os.path.isabs(name) or norm.startswith("/") or (len(norm) > 1 and norm[1] == ":"):
        return "absolute paths are not allowed; use a name from the loras folder"
    if any(part == ".." for part in norm.split("/")):
        return "'..' in a LoRA name is not allowed (path traversal)"
    return None


# ----------------------------------------------------------------- hashes

class _HashCache:
    """Content hashes by (path, mtime, size); computed only when needed."""

    def __init__(self):
        self._hashes: dict[str, tuple[tuple[int, int], str, str]] = {}
        self._lock = threading.Lock()

    def get(self, path: str) -> tuple[str, str]:
        st = os.stat(path)
        stamp = (st.st_mtime_ns, st.st_size)
        with self._lock:
            hit = self._hashes.get(path)
            if hit is not None and hit[0] == stamp:
                return hit[1], hit[2]
        h = hash_file(path)
        with self._lock:
            self._hashes[path] = (stamp, h.sha256, h.autov2)
        return h.sha256, h.autov2


HASHES = _HashCache()


def _hash_matches(wanted: str, path: str) -> bool:
    wanted = wanted.strip().lower()
    if wanted.startswith("sha256:"):
        wanted = wanted[7:]
    if not wanted:
        return False
    try:
        sha, autov2 = HASHES.get(path)
    except OSError:
        return False
    if len(wanted) == 64:
        return sha == wanted
    return autov2 == wanted[:10] and sha.startswith(wanted)


# ----------------------------------------------------------------- resolution

def _full_path(name: str) -> Optional[str]:
    path = folder_paths.get_full_path(FOLDER, name)
    if path and os.path.isfile(path):
        return path
    return None


def _by_basename(name: str, names: list[str]) -> Optional[str]:
    base = os.path.basename(name.replace("\\", "/"))
    stem = os.path.splitext(base)[0]
    hits = [n for n in names if os.path.basename(n.replace("\\", "/")) == base]
    if not hits:
        hits = [n for n in names if os.path.splitext(os.path.basename(n.replace("\\", "/")))[0] == stem]
    return hits[0] if len(hits) == 1 else None


def _by_hash(wanted: str, name: str, names: list[str]) -> Optional[str]:
    base = os.path.basename(name.replace("\\", "/"))
    # Same file name first (moved to another subfolder), then everything else.
    ordered = sorted(names, key=lambda n: os.path.basename(n.replace("\\", "/")) != base)
    for candidate in ordered:
        path = _full_path(candidate)
        if path and _hash_matches(wanted, path):
            return candidate
    return None


def locate_name(name: str, file_hash: Optional[str] = None) -> tuple[Optional[str], Optional[str]]:
    """(listed name, how it was found) for a safe ``name``: ``"exact"``; ``"hash"``,
    a file whose content hash matches (renamed); ``"basename"``, a unique file
    with the same base name in another subfolder (moved); or ``(None, None)``."""
    if _full_path(name):
        return name, "exact"
    names = lora_names()
    if file_hash:
        found = _by_hash(file_hash, name, names)
        if found:
            return found, "hash"
    found = _by_basename(name, names)
    return (found, "basename") if found else (None, None)


def resolve_name(name: str, file_hash: Optional[str] = None, *, index: Optional[int] = None) -> str:
    """The listed name that ``name`` (and optionally its content hash) refers to.

    Order (:func:`locate_name`): the exact name; a file whose content hash
    matches (renamed); a unique file with the same base name in another
    subfolder (moved).  Raises :class:`StackError` naming the row.
    """
    row = f"row {index + 1}: " if index is not None else ""
    reason = unsafe_name_reason(name)
    if reason:
        raise StackError(f"{row}{reason}: {name!r}", fix="pick the LoRA from the list")
    found, by = locate_name(name, file_hash)
    if by == "exact":
        return name
    if found:
        why = "same content hash" if by == "hash" else "same file name"
        log.info("[LoRA Patchbay] %r not found; using %r (%s)", name, found, why)
        return found
    hint = " and no file in the loras folder has its hash" if file_hash else ""
    raise StackError(f"{row}LoRA {name!r} is not in the loras folder{hint}",
                     fix="put the file in models/loras or pick another LoRA")


def resolve_path(name: str, file_hash: Optional[str] = None, *, index: Optional[int] = None) -> str:
    """Absolute path of a LoRA name (see :func:`resolve_name`)."""
    listed = resolve_name(name, file_hash, index=index)
    path = _full_path(listed)
    if path is None:  # pragma: no cover - raced with a delete
        raise StackError(f"LoRA {name!r} disappeared from the loras folder")
    return path


def validation_error(name: str, file_hash: Optional[str] = None, index: Optional[int] = None) -> Optional[str]:
    """A queue-time message for a bad LoRA name, or None."""
    try:
        resolve_name(name, file_hash, index=index)
    except StackError as e:
        return str(e)
    return None


def stack_errors(stack: LoraStack) -> list[str]:
    """Queue-time messages for the enabled rows whose LoRA cannot be found."""
    errs = []
    for i, e in enumerate(stack.entries):
        if not e.enabled:
            continue
        err = validation_error(e.lora, e.file_hash, index=i)
        if err:
            errs.append(err)
    return errs


def validate_rows(rows: Optional[str]):
    """``VALIDATE_INPUTS`` of a ``rows`` widget: True, or every problem in one message."""
    if rows is None:  # linked from another node: checked when it runs
        return True
    try:
        stack = parse_stack_text(rows)
    except StackError as e:
        return str(e)
    errs = stack_errors(stack)
    return True if not errs else "; ".join(errs)


def is_missing(entry: StackEntry) -> bool:
    """True when a row's LoRA is in no loras folder (by name, hash or base name)."""
    if unsafe_name_reason(entry.lora):
        return True
    return locate_name(entry.lora, entry.file_hash)[0] is None


# ----------------------------------------------------------------- parsing

def load(path: str) -> LoraFile:
    """Parse a LoRA file through the shared byte-bounded LRU (mtime/size aware)."""
    return open_lora(path, FILE_CACHE)


# ----------------------------------------------------------------- coverage log

_LOGGED: set = set()
_LOGGED_LOCK = threading.Lock()


def coverage_summary(report: CoverageReport) -> Optional[str]:
    """One line describing what did not apply, or None when everything did.

    Damaged modules (ranks that disagree, tensors of the wrong shape for their
    kind) never reach the report, which holds resolved patches only; they are
    the parsed file's ``invalid tensor`` keys, read back from the file cache.
    """
    try:
        damaged = [u for u in load(report.file).unused if u.reason == "invalid tensor"]
    except Exception:  # a report not made from a file on disk, or a file gone since
        damaged = []
    if report.ok and not damaged:
        return None
    parts = [f"{len(report.matched)} modules applied"]
    if damaged:
        sample = ", ".join(u.key for u in damaged[:3])
        more = "…" if len(damaged) > 3 else ""
        parts.append(f"{len(damaged)} damaged keys skipped ({damaged[0].detail}; e.g. {sample}{more})")
    if report.unmatched:
        reasons: dict[str, int] = {}
        for u in report.unmatched:
            reasons[u.reason] = reasons.get(u.reason, 0) + 1
        detail = ", ".join(f"{n} {r}" for r, n in sorted(reasons.items()))
        sample = ", ".join(u.name for u in report.unmatched[:3])
        more = "…" if len(report.unmatched) > 3 else ""
        parts.append(f"{len(report.unmatched)} not applied ({detail}; e.g. {sample}{more})")
    if report.family_warning:
        parts.append(report.family_warning)
    return f"[LoRA Patchbay] {os.path.basename(report.file)}: " + "; ".join(parts)


def log_coverage(report: CoverageReport, target: str = "model") -> None:
    """Log the coverage summary once per (file, target part, result)."""
    line = coverage_summary(report)
    if line is None:
        return
    key = (report.file, target, line)
    with _LOGGED_LOCK:
        if key in _LOGGED:
            return
        _LOGGED.add(key)
    log.warning("%s [%s]", line, target)
