"""The render index: what was rendered with which stack, as JSON (resumable) and HTML.

``index.json`` is rewritten atomically (temporary file + rename) after every
finished prompt, so an interrupted run always leaves a readable index whose
``done`` cells have their images on disk; the next run reads it and renders
only the rest.  Cells are matched by ``key``, a hash of the exact prompt
sent, so editing the workflow or the sweep renders again what changed.

``index.html`` shows the same table; every name and label in it comes from
the user's files and is escaped (``html.escape``), never trusted as markup.
"""
from __future__ import annotations

import html
import json
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Optional

from ..errors import RenderError
from ..grid import write_atomic

INDEX_VERSION = 1
STATUSES = ("pending", "done", "failed")


@dataclass
class CellRecord:
    key: str
    ix: int
    iy: int
    label_x: str
    label_y: str
    stack: list
    tags: str
    seed: Optional[int]
    status: str = "pending"
    server: str = ""
    prompt_id: str = ""
    images: list = field(default_factory=list)   # paths relative to the output folder
    error: str = ""
    seconds: float = 0.0


@dataclass
class RenderIndex:
    workflow: str
    stack_node: str
    columns: int
    rows: int
    title_x: str
    title_y: str
    cells: list
    contact_sheet: str = ""
    version: int = INDEX_VERSION
    updated: str = ""

    def counts(self) -> dict:
        out = {s: 0 for s in STATUSES}
        for c in self.cells:
            out[c.status] = out.get(c.status, 0) + 1
        return out

    def to_json(self) -> str:
        data = asdict(self)
        return json.dumps(data, indent=1, ensure_ascii=False)


def load_index(path: str) -> Optional[RenderIndex]:
    """The index at ``path``, or None when there is none (a damaged one is an error, not ignored)."""
    if not os.path.exists(path):
        return None
    try:
        with open(path, "r", encoding="utf-8") as f:
            data = json.load(f)
        cells = [CellRecord(**c) for c in data.pop("cells")]
        if data.get("version") != INDEX_VERSION:
            raise ValueError(f"version {data.get('version')!r}")
        return RenderIndex(cells=cells, **data)
    except (OSError, ValueError, TypeError, KeyError) as e:
        raise RenderError(f"the existing render index cannot be read ({str(e)[:120]})", file=path,
                          fix="move it away (or pick another --out folder) to start a new run") from None


def resume_from(old: Optional[RenderIndex], new: RenderIndex, out_dir: str) -> int:
    """Copy finished cells of ``old`` whose images still exist into ``new``; returns how many."""
    if old is None:
        return 0
    done = {c.key: c for c in old.cells if c.status == "done"}
    kept = 0
    for cell in new.cells:
        prev = done.get(cell.key)
        if prev is None or not prev.images:
            continue
        if all(os.path.isfile(os.path.join(out_dir, p)) for p in prev.images):
            cell.status, cell.server, cell.prompt_id = "done", prev.server, prev.prompt_id
            cell.images, cell.seconds = list(prev.images), prev.seconds
            kept += 1
    return kept


def write_index(index: RenderIndex, out_dir: str) -> None:
    index.updated = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    write_atomic(os.path.join(out_dir, "index.json"), index.to_json().encode("utf-8"))
    write_atomic(os.path.join(out_dir, "index.html"), index_html(index).encode("utf-8"))


def _e(text) -> str:
    return html.escape(str(text), quote=True)


def index_html(index: RenderIndex) -> str:
    counts = index.counts()
    head = (f"<!doctype html><html><head><meta charset='utf-8'><title>LoRA Patchbay render</title>"
            "<style>body{font-family:sans-serif}table{border-collapse:collapse}td,th{border:1px solid #ccc;"
            "padding:4px;vertical-align:top}img{max-width:256px;display:block}.failed{color:#b00}"
            "code{white-space:pre-wrap}</style></head><body>")
    parts = [head, f"<h1>Render of {_e(index.workflow)}</h1>",
             f"<p>{counts['done']} done, {counts['failed']} failed, {counts['pending']} pending "
             f"of {len(index.cells)} cells. X: {_e(index.title_x)}"
             + (f"; Y: {_e(index.title_y)}" if index.title_y else "") + "</p>"]
    if index.contact_sheet:
        parts.append(f"<p><a href='{_e(index.contact_sheet)}'><img src='{_e(index.contact_sheet)}' "
                     "alt='contact sheet' style='max-width:100%'></a></p>")
    parts.append("<table><tr><th></th>" + "".join(
        f"<th>{_e(c.label_x)}</th>" for c in index.cells[:index.columns]) + "</tr>")
    for r in range(index.rows):
        row = index.cells[r * index.columns:(r + 1) * index.columns]
        parts.append(f"<tr><th>{_e(row[0].label_y) if row else ''}</th>")
        for c in row:
            body = "".join(f"<a href='{_e(p)}'><img src='{_e(p)}' alt='{_e(c.label_x)}'></a>" for p in c.images)
            if c.status == "failed":
                body += f"<p class='failed'>failed: {_e(c.error)}</p>"
            elif c.status == "pending":
                body += "<p>pending</p>"
            body += (f"<code>{_e(c.tags)}</code><br>seed {_e(c.seed)}"
                     + (f" · {_e(c.server)}" if c.server else ""))
            parts.append(f"<td>{body}</td>")
        parts.append("</tr>")
    parts.append("</table></body></html>")
    return "".join(parts)


__all__ = ["CellRecord", "RenderIndex", "load_index", "resume_from", "write_index", "index_html"]
