"""The pack's HTTP routes (all GET, under ``/patchbay/``) that the stack editor reads.

    /patchbay/loras                 every listed LoRA: folder, family badge, format, size, mtime, preview
    /patchbay/inspect?name=N[&hash=1]   the CLI's ``inspect --json`` object of one file
    /patchbay/coverage?name=N       the last run's coverage of that file (404 before any run)
    /patchbay/resolve?name=N&hash=H the installed name a saved row refers to (exact, hash, basename)
    /patchbay/preview?name=N        the file's sibling preview image

Only names that ``folder_paths`` lists in the ``loras`` folders are read, and
only after the one name gate (:func:`files.unsafe_name_reason`): a bad name is
a 400 with a one-line reason, an unknown one a 404.  Files are read through
their headers (memory-mapped parse, no tensor data) in a worker thread, and
the results are cached by path, mtime and size.  Every answer is JSON data
with ``<``, ``>`` and ``&`` escaped, so hostile file names and metadata can
never become markup, whoever renders the response.

The handlers' logic is plain functions (``list_loras``, ``inspect_lora``,
``coverage_of``, ``resolve_row``, ``preview_file``) returning data or raising
:class:`RouteError`; :func:`register` wires them onto ComfyUI's route table
once, and does nothing when the pack is imported without a server.
"""
from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import sys
import urllib.parse
from typing import Any, Optional

from ..lora_core.api import open_lora
from ..lora_core.cache import ByteLRU, env_bytes
from ..lora_core.errors import PatchbayError, StackError
from ..lora_core.resolve import guess_lora_family
from ..lora_core.resolve.family import label
from . import files
from .coverage import LAST_RUN, normalize_name

log = logging.getLogger("lora-patchbay")

PREFIX = "/patchbay"
MAX_ERROR_CHARS = 300
# Sibling images, most specific first (A1111 and ComfyUI's model library use these).
PREVIEW_TYPES = (("png", "image/png"), ("jpg", "image/jpeg"), ("jpeg", "image/jpeg"), ("webp", "image/webp"))
# Only safetensors are summarised in the list: a pickle has no header to read.
HEADER_SUFFIXES = (".safetensors", ".sft")


class RouteError(Exception):
    """An answer other than 200: ``status`` and a one-line ``message``."""

    def __init__(self, status: int, message: str):
        self.status = status
        self.message = one_line(message)
        super().__init__(self.message)


def one_line(text: Any) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 1] + "…"


# ----------------------------------------------------------------- JSON out

def _finite(value: Any) -> Any:
    """JSON without NaN/Infinity (which browsers' JSON.parse refuses)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def json_text(data: Any) -> str:
    """Compact JSON whose text holds no ``<``, ``>`` or ``&`` (escaped as \\u003c …)."""
    text = json.dumps(_finite(data), ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


# ----------------------------------------------------------------- the name gate

def _listed() -> dict[str, str]:
    """'/'-separated name → the name as ComfyUI lists it."""
    return {normalize_name(n): n for n in files.lora_names()}


def gate(name: Optional[str]) -> tuple[str, str]:
    """(listed name, absolute path) of a ``name`` from a request.

    400 for a missing, absolute, traversing or NUL name; 404 for a name the
    ``loras`` folders do not list.
    """
    if name is None or not str(name).strip():
        raise RouteError(400, "the 'name' parameter is missing")
    reason = files.unsafe_name_reason(name)
    if reason:
        raise RouteError(400, f"{reason}: {name!r}")
    listed = _listed().get(normalize_name(name))
    if listed is None:
        raise RouteError(404, f"LoRA {name!r} is not in the loras folder")
    try:
        path = files.resolve_path(listed)
    except StackError as e:  # listed a moment ago, deleted since
        raise RouteError(404, str(e)) from None
    return normalize_name(listed), path


def _file_error(e: Exception, path: str, name: str) -> RouteError:
    return RouteError(422, str(e).replace(path, name))


# ----------------------------------------------------------------- cache

class JsonLRU(ByteLRU):
    """Route answers (plain JSON data) by (kind, path, mtime, size), bounded by their JSON bytes."""
    _size = staticmethod(lambda value: len(json_text(value)))


CACHE = JsonLRU(env_bytes("PATCHBAY_ROUTE_CACHE_MB", 32))


def _stamp(path: str) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_mtime_ns, st.st_size


def _cached(kind: str, path: str, compute):
    key = (kind, path, *_stamp(path))
    hit = CACHE.get(key)
    if hit is None:
        hit = compute()
        CACHE.put(key, hit)
    return hit


# ----------------------------------------------------------------- /patchbay/loras

def preview_path(path: str) -> Optional[tuple[str, str]]:
    """(image path, content type) of a LoRA's sibling preview, or None:
    ``x.preview.png``, ``x.png``, ``x.jpg``, ``x.jpeg``, ``x.webp`` (first found)."""
    stem = os.path.splitext(path)[0]
    for pattern in ("{stem}.preview.{ext}", "{stem}.{ext}"):
        for ext, ctype in PREVIEW_TYPES:
            candidate = pattern.format(stem=stem, ext=ext)
            if os.path.isfile(candidate):
                return candidate, ctype
    return None


def header_summary(path: str) -> dict:
    """Format and trained-for family of a safetensors LoRA, from its header
    (cached by path, mtime and size); an unreadable file gets ``error``."""
    def compute() -> dict:
        try:
            # parsed outside the run-time file cache: listing a large library must
            # not evict the files a prompt is using (the summary itself is cached)
            lora = open_lora(path, cache=None)
            return {"format": lora.format, "family": guess_lora_family(lora)}
        except Exception as e:  # one bad file must not hide the others
            message = e.message if isinstance(e, PatchbayError) else f"{type(e).__name__}: {e}"
            return {"format": None, "family": None,
                    "error": one_line(message.replace(path, os.path.basename(path)))}
    return _cached("summary", path, compute)


def preview_url(name: str) -> str:
    return f"{PREFIX}/preview?name={urllib.parse.quote(name, safe='')}"


def list_loras() -> dict:
    out = []
    for name in sorted(_listed()):
        try:
            path = files.resolve_path(name)
            st = os.stat(path)
        except (StackError, OSError):
            continue  # deleted while listing
        summary = header_summary(path) if path.lower().endswith(HEADER_SUFFIXES) else \
            {"format": None, "family": None}
        item = {"name": name, "folder": name.rpartition("/")[0], "family": summary["family"],
                "family_label": label(summary["family"]) if summary["family"] else None,
                "format": summary["format"], "size": st.st_size, "mtime": st.st_mtime,
                "preview": preview_url(name) if preview_path(path) else None}
        if "error" in summary:
            item["error"] = summary["error"]
        out.append(item)
    return {"loras": out}


# ----------------------------------------------------------------- inspect / coverage / resolve / preview

def inspect_lora(name: Optional[str], with_hash: bool = False) -> dict:
    """``lora_core.api.inspect`` of a listed file (the CLI's ``inspect --json``),
    with ``file`` the listed name instead of the server path, plus ``name``,
    ``family`` and ``family_label``.  Hashes only when asked (they read the file)."""
    from ..lora_core.api import inspect
    listed, path = gate(name)

    def compute() -> dict:
        try:
            info = inspect(path, with_hash=with_hash)
            family = guess_lora_family(files.load(path))
        except PatchbayError as e:
            raise _file_error(e, path, listed) from None
        info.update(file=listed, name=listed, family=family, family_label=label(family) if family else None)
        return info
    return _cached("inspect+hash" if with_hash else "inspect", path, compute)


def coverage_of(name: Optional[str]) -> dict:
    """The last run's coverage of a file; 404 before it ran (or when it is not installed)."""
    listed, _ = gate(name)
    found = LAST_RUN.get(listed) or LAST_RUN.get(str(name))
    if found is None:
        raise RouteError(404, f"LoRA {listed!r} has not run since the server started")
    return found


def resolve_row(name: Optional[str], file_hash: Optional[str] = None) -> dict:
    """The installed name a saved row's ``name`` (and ``hash``) refers to:
    ``by`` is ``exact``, ``hash`` or ``basename``; both None when nothing fits."""
    if name is None or not str(name).strip():
        raise RouteError(400, "the 'name' parameter is missing")
    reason = files.unsafe_name_reason(name)
    if reason:
        raise RouteError(400, f"{reason}: {name!r}")
    found, by = files.locate_name(name, (file_hash or "").strip() or None)
    return {"name": normalize_name(found) if found else None, "by": by}


def preview_file(name: Optional[str]) -> tuple[str, str]:
    """(image path, content type) of a listed file's preview; 404 when it has none."""
    listed, path = gate(name)
    found = preview_path(path)
    if found is None:
        raise RouteError(404, f"LoRA {listed!r} has no preview image")
    return found


# ----------------------------------------------------------------- aiohttp wiring

SECURITY_HEADERS = {"X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache"}


def _json_response(web, data: Any, status: int = 200):
    return web.Response(text=json_text(data), status=status, content_type="application/json",
                        charset="utf-8", headers=SECURITY_HEADERS)


def _handler(web, compute):
    async def handle(request):
        query = request.rel_url.query
        try:
            result = await asyncio.to_thread(compute, query)
        except RouteError as e:
            return _json_response(web, {"error": e.message}, e.status)
        except Exception as e:  # never a server traceback page; the log keeps the details
            log.exception("[LoRA Patchbay] %s failed", request.path)
            return _json_response(web, {"error": one_line(f"{type(e).__name__}: {e}")}, 500)
        if isinstance(result, tuple):  # (file, content type)
            path, ctype = result
            return web.FileResponse(path, headers={**SECURITY_HEADERS, "Content-Type": ctype,
                                                   "Content-Security-Policy": "default-src 'none'"})
        return _json_response(web, result)
    return handle


def _flag(query, key: str) -> bool:
    return str(query.get(key, "")).strip().lower() in ("1", "true", "yes")


ROUTES = {
    "loras": lambda q: list_loras(),
    "inspect": lambda q: inspect_lora(q.get("name"), _flag(q, "hash")),
    "coverage": lambda q: coverage_of(q.get("name")),
    "resolve": lambda q: resolve_row(q.get("name"), q.get("hash")),
    "preview": lambda q: preview_file(q.get("name")),
}


def register(routes=None) -> bool:
    """Add the routes to ComfyUI's table (``PromptServer.instance.routes``) once.

    Returns False, and does nothing, when no server is running (the pack
    imported by a script or test) or the routes are already there.  ComfyUI
    copies the table under ``/api`` when it starts serving, so both
    ``/patchbay/…`` and ``/api/patchbay/…`` answer.
    """
    from aiohttp import web
    if routes is None:
        # ComfyUI's main.py imported ``server`` and made the instance before
        # loading packs; importing it here ourselves would start nothing.
        server = sys.modules.get("server")
        instance = getattr(getattr(server, "PromptServer", None), "instance", None)
        routes = getattr(instance, "routes", None)
        if routes is None:
            return False
    first = f"{PREFIX}/loras"
    if any(getattr(r, "path", None) == first for r in routes):
        return False
    for suffix, compute in ROUTES.items():
        routes.get(f"{PREFIX}/{suffix}")(_handler(web, compute))
    return True
