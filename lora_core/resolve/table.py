"""The alias table: every spelling a file may use for each module of one model.

Built once per model (cached by its key set and shapes) from

1. the model's own module paths (each component's paths, container stripped);
2. family tables (``unet``, ``clip``, ``sd3``, ``flux``, ``ltx``, ``wan``,
   ``qwen``), which add the *other* naming of the same module (diffusers ↔
   original), with a :class:`~lora_core.ir.Slice` for fused targets, and
   :class:`Hint` entries for names they recognise but cannot place;
3. the file-prefix rules (:mod:`.prefixes`), applied at lookup time: a file
   name is split into a known prefix and the rest, and the rest is looked up
   dotted or flattened.

The entry types live in :mod:`.entries`; :func:`lora_core.resolve.build_table`
fills a table from the family modules.
"""
from __future__ import annotations

import functools
import re
from typing import Iterable, Optional

from .entries import Alias, Entry, Hint, Target
from .model import DIFFUSION, TEXT_ENCODER, ModelIndex
from .prefixes import DOTTED, FILE_PREFIXES, FLAT, TE_FILE_PREFIXES

__all__ = ["AliasTable", "split_prefix", "file_component_class", "DOTTED", "FLAT", "Target", "Hint", "Entry",
           "Alias"]

_RULES = {row.prefix: (row.style, row.components) for row in FILE_PREFIXES}
_HEAD = re.compile(r"[^._]*")
# first word of a prefix → its prefixes, longest first (a cheap dispatch per name)
_BY_HEAD: dict[str, list[str]] = {}
for _row in FILE_PREFIXES:
    if _row.prefix:
        _BY_HEAD.setdefault(_HEAD.match(_row.prefix).group(0), []).append(_row.prefix)


@functools.lru_cache(maxsize=1 << 16)
def split_prefix(name: str) -> tuple[tuple[str, str, tuple[str, ...]], ...]:
    """Every (rest, style, components) a known file prefix of ``name`` allows, longest prefix first."""
    out = []
    for prefix in _BY_HEAD.get(_HEAD.match(name).group(0), ()):
        if name.startswith(prefix) and len(name) > len(prefix):
            style, comps = _RULES[prefix]
            out.append((name[len(prefix):], style, comps))
    style, comps = _RULES[""]
    out.append((name, style, comps))
    return tuple(out)


@functools.lru_cache(maxsize=1 << 16)
def file_component_class(name: str) -> str:
    """"text_encoder" or "diffusion": which part of a pipeline a file name addresses."""
    if name.startswith(TE_FILE_PREFIXES):
        return TEXT_ENCODER
    rest = name
    for prefix in ("base_model.model.", "lycoris_"):
        if rest.startswith(prefix):
            rest = rest[len(prefix):]
    if rest.startswith(("text_model.", "text_model_", "encoder.block.", "encoder_block_")):
        return TEXT_ENCODER
    return DIFFUSION


class AliasTable:
    """Exact model names, plus per (style, component) tables of alias paths."""

    def __init__(self, index: ModelIndex):
        self.index = index
        self.exact: dict[str, Entry] = {}
        self.tables: dict[tuple[str, str], dict[str, Entry]] = {}

    def add(self, component: str, path: str, entry: Entry) -> None:
        """Register ``path`` (dotted) for ``component``; the first entry for a name wins."""
        force = isinstance(entry, Hint) and entry.shadows
        dotted = self.tables.setdefault((DOTTED, component), {})
        if force or path not in dotted:
            dotted[path] = entry
        flat = self.tables.setdefault((FLAT, component), {})
        key = path.replace(".", "_")
        if force or key not in flat:
            flat[key] = entry

    def add_all(self, aliases: Iterable[Alias]) -> None:
        for component, path, entry in aliases:
            self.add(component, path, entry)

    def lookup(self, name: str, components: Optional[Iterable[str]] = None) -> Optional[Entry]:
        allowed = set(components) if components is not None else None
        hint: Optional[Hint] = None
        entry = self.exact.get(name)
        if entry is not None and (allowed is None or _comp(entry) in allowed):
            return entry
        if name.startswith("text_encoders."):
            # ComfyUI-native text-encoder LoRAs: "text_encoders." + the model's own key
            entry = self.exact.get(name[len("text_encoders."):])
            if entry is not None and (allowed is None or _comp(entry) in allowed):
                return entry
        for rest, style, comps in split_prefix(name):
            for comp in comps:
                if allowed is not None and comp not in allowed:
                    continue
                table = self.tables.get((style, comp))
                if not table:
                    continue
                entry = table.get(rest)
                if isinstance(entry, Target):
                    return entry
                if entry is not None and hint is None:
                    hint = entry
        return hint


def _comp(entry: Entry) -> Optional[str]:
    return entry.module.component if isinstance(entry, Target) else None
