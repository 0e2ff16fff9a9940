"""What the last run of each LoRA did: per-file coverage for ``/patchbay/coverage``
and the one-line stack summary the stack nodes send to the frontend.

The stack nodes record the coverage reports of every file they applied
(``LAST_RUN.record``); the route reads them back by LoRA name.  Reports are
kept as plain JSON (no tensors, no server paths) and bounded by file count.
"""
from __future__ import annotations

import threading
import time
from collections import OrderedDict
from typing import Iterable, Mapping, Optional

from ..lora_core.api import report_to_json
from ..lora_core.errors import StackError
from ..lora_core.ir import CoverageReport
from ..lora_core.stack import LoraStack
from . import files

MAX_FILES = 512


def normalize_name(name: str) -> str:
    """Names are compared with '/' separators (ComfyUI lists OS separators on Windows)."""
    return str(name).replace("\\", "/")


def part_json(report: CoverageReport) -> dict:
    """One part's report as the CLI's ``check --json`` writes it, without the
    matched target list (large) and the absolute file path (the server's)."""
    data = report_to_json(report)
    data.pop("targets", None)
    data.pop("file", None)
    return data


def file_coverage(name: str, parts: Mapping[str, CoverageReport], at: Optional[float] = None) -> dict:
    """The ``/patchbay/coverage`` object of one file from its reports per part
    (``"model"``, ``"clip"``): counts summed over the parts, unmatched keys
    tagged with their part, families from the model part when there is one."""
    by_part = {part: part_json(r) for part, r in parts.items()}
    first = by_part.get("model") or next(iter(by_part.values()), {})
    unmatched_keys = [{**u, "part": part} for part, d in by_part.items() for u in d["unmatched_keys"]]
    warning = next((d["family_warning"] for d in by_part.values() if d["family_warning"]), None)
    notes = list(dict.fromkeys(n for d in by_part.values() for n in d["notes"]))
    return {
        "name": normalize_name(name),
        "matched": sum(d["matched"] for d in by_part.values()),
        "unmatched": sum(d["unmatched"] for d in by_part.values()),
        "unmatched_keys": unmatched_keys,
        "lora_family": first.get("lora_family"),
        "model_family": first.get("model_family"),
        "family_warning": warning,
        "notes": notes,
        "parts": by_part,
        "at": time.time() if at is None else at,
    }


class CoverageLog:
    """The last coverage of each LoRA name, newest ``max_files`` names kept."""

    def __init__(self, max_files: int = MAX_FILES):
        self.max_files = max_files
        self._items: "OrderedDict[str, dict]" = OrderedDict()
        self._lock = threading.Lock()

    def record(self, names: Iterable[str], parts: Mapping[str, CoverageReport]) -> dict:
        """Store one file's coverage under each of ``names`` (the row's name and,
        when it was resolved elsewhere, the installed name)."""
        names = list(dict.fromkeys(normalize_name(n) for n in names))
        entry = file_coverage(names[0], parts)
        with self._lock:
            for n in names:
                self._items.pop(n, None)
                self._items[n] = {**entry, "name": n}
            while len(self._items) > self.max_files:
                self._items.popitem(last=False)
        return entry

    def get(self, name: str) -> Optional[dict]:
        with self._lock:
            return self._items.get(normalize_name(name))

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


LAST_RUN = CoverageLog()


def stack_summary(stack: LoraStack, coverages: Iterable[Mapping], missing: int = 0) -> dict:
    """The frontend's one-line summary of a run, e.g.
    ``3 of 5 on · 612 of 624 keys matched · 1 missing``.

    ``coverages``: the :func:`file_coverage` objects of the files that ran;
    keys = matched + unmatched modules over the parts that ran; ``missing``:
    rows whose LoRA is not installed (only off rows can be: on rows fail
    validation)."""
    coverages = list(coverages)
    on = sum(1 for e in stack.entries if e.enabled)
    total = len(stack.entries)
    matched = sum(int(c["matched"]) for c in coverages)
    keys = matched + sum(int(c["unmatched"]) for c in coverages)
    parts = [f"{on} of {total} on"]
    if keys:
        parts.append(f"{matched} of {keys} keys matched")
    if missing:
        parts.append(f"{missing} missing")
    return {"on": on, "total": total, "matched": matched, "keys": keys, "missing": missing,
            "text": " · ".join(parts)}


def record_run(stack: LoraStack, reports: Iterable[tuple[int, str, CoverageReport]] = ()) -> dict:
    """Store the coverage of every file a stack just applied (``Applied.reports``)
    in :data:`LAST_RUN`, under the row's name and the installed name it resolved
    to, and return the run's summary for the node's ``ui``."""
    by_row: dict[int, dict[str, CoverageReport]] = {}
    for index, part, report in reports:
        by_row.setdefault(index, {})[part] = report
    coverages = []
    for index, parts in sorted(by_row.items()):
        entry = stack.entries[index]
        try:
            names = [entry.lora, files.resolve_name(entry.lora, entry.file_hash)]
        except StackError:  # applied a moment ago: only a concurrent delete gets here
            names = [entry.lora]
        coverages.append(LAST_RUN.record(names, parts))
    missing = sum(1 for e in stack.entries if files.is_missing(e))
    return stack_summary(stack, coverages, missing)


def ui_result(summary: dict, result: tuple) -> dict:
    """A node's return value that also sends the summary to the frontend
    (the ``executed`` event's ``output.patchbay_summary``)."""
    return {"ui": {"patchbay_summary": [summary]}, "result": result}
