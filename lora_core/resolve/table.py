"""The alias table: every spelling a file may use for each module of one model.

Built once per model (cached by its key set and shapes) from

1. the model's own module paths (each component's paths, container stripped);
2. family tables (``unet``, ``clip``, ``sd3``, ``flux``, ``ltx``, ``wan``,
   ``qwen``), which add the *other* naming of the same module (diffusers ↔
   original), with a :class:`~lora_core.ir.Slice` for fused targets, and
   :class:`Hint` entries for names they recognise but cannot place;
3. the file-prefix rules below, applied at lookup time: a file name is split
   into a known prefix and the rest, and the rest is looked up dotted
   (``unet.``, ``transformer.``, ``diffusion_model.``…) or flattened
   (``lora_unet_``, ``lycoris_``…: the path with ``.`` → ``_``).  Flattened
   names are only ever matched against flattened aliases, never reversed.
"""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Iterable, Optional, Union

from ..ir import Slice
from .model import DIFFUSION, OTHER, TEXT_ENCODER, ModelIndex, Module

DOTTED = "dotted"
FLAT = "flat"
ALL_TE = ("clip_l", "clip_g", "clip_h", "t5", TEXT_ENCODER)


@dataclass(frozen=True)
class Target:
    module: Module
    slice: Optional[Slice] = None


@dataclass(frozen=True)
class Hint:
    """A name a family recognises but cannot place on this model.

    ``shadows``: the hint wins over the model's own module of the same name
    (OpenCLIP's ``text_projection`` is spelled like HF's but stored transposed).
    """
    reason: str
    detail: str
    shadows: bool = False


Entry = Union[Target, Hint]
# What a family module yields: (component, alias path, entry).
Alias = tuple[str, str, Entry]

# (file prefix, style, components it may address).  Longest prefix first; a
# prefix that matches but finds nothing falls through to the next one.
FILE_PREFIXES: tuple[tuple[str, str, tuple[str, ...]], ...] = tuple(sorted((
    ("lora_unet__", FLAT, (DIFFUSION,)),  # Wan-Fun's double underscore
    ("lora_unet_", FLAT, (DIFFUSION,)),
    ("lora_prior_unet_", FLAT, (DIFFUSION,)),
    ("lora_transformer_", FLAT, (DIFFUSION,)),
    ("lycoris_", FLAT, (DIFFUSION,) + ALL_TE),
    ("oft_unet_", FLAT, (DIFFUSION,)),
    ("lora_te_", FLAT, ("clip_l", "clip_h", "clip_g")),
    ("lora_te1_", FLAT, ("clip_l", "t5")),
    ("lora_te2_", FLAT, ("clip_g", "t5")),
    ("lora_te3_", FLAT, ("t5",)),
    ("lora_prior_te_", FLAT, ("clip_g",)),
    ("model.diffusion_model.", DOTTED, (DIFFUSION,)),
    ("diffusion_model.", DOTTED, (DIFFUSION,)),
    ("unet.base_model.model.", DOTTED, (DIFFUSION,)),
    ("base_model.model.", DOTTED, (DIFFUSION,) + ALL_TE),
    ("unet.", DOTTED, (DIFFUSION,)),
    ("transformer.", DOTTED, (DIFFUSION,)),
    ("model.", DOTTED, (DIFFUSION,)),
    ("text_encoder.", DOTTED, ("clip_l", "clip_h", TEXT_ENCODER)),
    ("text_encoder_2.", DOTTED, ("clip_g", "t5", TEXT_ENCODER)),
    ("text_encoder_3.", DOTTED, ("t5", TEXT_ENCODER)),
    ("text_encoders.clip_l.transformer.", DOTTED, ("clip_l",)),
    ("text_encoders.clip_g.transformer.", DOTTED, ("clip_g",)),
    ("text_encoders.clip_h.transformer.", DOTTED, ("clip_h",)),
    ("text_encoders.t5xxl.transformer.", DOTTED, ("t5",)),
    ("text_encoders.t5base.transformer.", DOTTED, ("t5",)),
    ("", DOTTED, (DIFFUSION,) + ALL_TE),
), key=lambda r: len(r[0]), reverse=True))

TE_FILE_PREFIXES = ("lora_te", "lora_prior_te_", "text_encoder", "text_encoders.")
_RULES = {prefix: (style, comps) for prefix, style, comps in FILE_PREFIXES}
_HEAD = re.compile(r"[^._]*")
# first word of a prefix → its prefixes, longest first (a cheap dispatch per name)
_BY_HEAD: dict[str, list[str]] = {}
for _prefix, _, _ in FILE_PREFIXES:
    if _prefix:
        _BY_HEAD.setdefault(_HEAD.match(_prefix).group(0), []).append(_prefix)


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


def build_table(index: ModelIndex, family: Optional[str]) -> AliasTable:
    from . import clip, flux, ltx, qwen, sd3, unet, wan

    table = AliasTable(index)
    for mod in index.modules.values():
        table.exact[mod.name] = Target(mod)
    # The model's own naming first, so a family alias never shadows a real path.
    for component, paths in index.by_component.items():
        if component == OTHER:
            continue
        for path, mod in paths.items():
            table.add(component, path, Target(mod))
    for provider in (unet, sd3, flux, ltx, wan, qwen):
        table.add_all(provider.aliases(index, family))
    table.add_all(clip.aliases(index, family))
    return table
