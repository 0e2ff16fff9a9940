"""Format detection and conversion into the IR.

A file is parsed in two passes:

1. **Family converters** (``FileConverter``, one module per family such as
   XLabs or BFL-control Flux files) rewrite whole-file quirks into ordinary
   keys.  Each has ``detect`` and ``rewrite``.
2. **Module parsers** (``ModuleParser``, one per adapter spelling) turn the
   tensors sharing a module prefix into one :class:`~lora_core.ir.ModulePatch`.
   Keys are split into ``module + suffix`` with the longest suffix any parser
   declares, so a new spelling is one new parser.

Nothing is dropped silently: every key no parser consumes becomes an
:class:`~lora_core.ir.UnusedKey` with a reason.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Optional, Protocol

import torch

from ..errors import FormatError, LoraFileError
from ..io import load_state_dict
from ..jsontext import loads_bounded
from ..ir import LoraFile, ModulePatch, UnusedKey
from ..resolve.prefixes import prefix_label


@dataclass
class ParseContext:
    """What parsers may consult besides the tensors."""
    path: str
    metadata: Mapping[str, str]
    # PEFT/diffusers LoraConfig (from ``lora_adapter_metadata`` or an
    # ``adapter_config.json`` beside the file); None when the file has none.
    peft_config: Optional[dict] = None
    notes: list[str] = field(default_factory=list)

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)


class ModuleParser(Protocol):
    """Turns the tensors of one module into a patch.

    ``suffixes``: every suffix it understands (with the leading dot).
    ``marker``: suffixes whose presence means the module is this parser's.
    ``parse`` returns the patch and the set of suffixes it consumed.
    """
    name: str
    suffixes: frozenset[str]
    marker: frozenset[str]

    def parse(self, ctx: ParseContext, module: str,
              parts: Mapping[str, torch.Tensor]) -> tuple[ModulePatch, set[str]]: ...


class FileConverter(Protocol):
    name: str

    def detect(self, keys: Iterable[str], metadata: Mapping[str, str]) -> bool: ...

    def rewrite(self, ctx: ParseContext,
                tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]: ...


MODULE_PARSERS: list[ModuleParser] = []
FILE_CONVERTERS: list[FileConverter] = []


def register_parser(parser: ModuleParser) -> ModuleParser:
    MODULE_PARSERS.append(parser)
    return parser


def register_converter(converter: FileConverter) -> FileConverter:
    FILE_CONVERTERS.append(converter)
    return converter


# Suffixes that belong to no adapter kind on their own but to the module
# (shared by several parsers).
SHARED_SUFFIXES = frozenset({".alpha", ".scale", ".dora_scale", ".lora_magnitude_vector",
                             ".lora_magnitude_vector.weight",
                             ".lora_magnitude_vector.default.weight",
                             ".lora_magnitude_vector.default",
                             ".diff_b", ".b_norm", ".lora_B.bias", ".lora_B.default.bias",
                             ".reshape_weight"})


def _all_suffixes() -> list[str]:
    out = set(SHARED_SUFFIXES)
    for p in MODULE_PARSERS:
        out |= p.suffixes
    return sorted(out, key=len, reverse=True)


def split_key(key: str, suffixes: list[str]) -> Optional[tuple[str, str]]:
    for s in suffixes:
        if key.endswith(s) and len(key) > len(s):
            return key[: -len(s)], s
    return None


def _load_peft_config(path: str, metadata: Mapping[str, str]) -> Optional[dict]:
    raw = metadata.get("lora_adapter_metadata")
    if raw:
        try:
            cfg = loads_bounded(raw)
            if isinstance(cfg, dict):
                return cfg
        except ValueError:  # bad syntax or hostile nesting: metadata.py already warns
            pass
    if path and os.path.isfile(path):
        side = os.path.join(os.path.dirname(path), "adapter_config.json")
        if os.path.isfile(side):
            try:
                with open(side, "r", encoding="utf-8") as f:
                    cfg = loads_bounded(f.read())
                if isinstance(cfg, dict):
                    return cfg
            except (OSError, ValueError):
                pass
    return None


def parse_state_dict(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None,
                     path: str = "<memory>", peft_config: Optional[dict] = None) -> LoraFile:
    _ensure_registered()
    metadata = dict(metadata or {})
    ctx = ParseContext(path=path, metadata=metadata,
                       peft_config=peft_config if peft_config is not None
                       else _load_peft_config(path, metadata))
    tensors = dict(tensors)
    applied = []
    for conv in FILE_CONVERTERS:
        if conv.detect(tensors.keys(), metadata):
            tensors = conv.rewrite(ctx, tensors)
            applied.append(conv.name)

    suffixes = _all_suffixes()
    groups: dict[str, dict[str, str]] = {}
    unused: list[UnusedKey] = []
    for key in tensors:
        split = split_key(key, suffixes)
        if split is None:
            unused.append(UnusedKey(key, "unknown name", "no known LoRA tensor suffix"))
            continue
        module, suffix = split
        groups.setdefault(module, {})[suffix] = key

    patches: list[ModulePatch] = []
    for module, by_suffix in groups.items():
        present = set(by_suffix)
        parser = next((p for p in MODULE_PARSERS if p.marker & present), None)
        parts = {s: tensors[k] for s, k in by_suffix.items()}
        if parser is None:
            if present & {".diff_b", ".b_norm", ".lora_B.bias"}:
                parser = next(p for p in MODULE_PARSERS if p.name == "full")
            else:
                for s, k in by_suffix.items():
                    unused.append(UnusedKey(k, "unsupported kind",
                                            f"module {module!r} has only {sorted(present)}"))
                continue
        try:
            patch, consumed = parser.parse(ctx, module, parts)
        except FormatError as e:
            for s, k in by_suffix.items():
                unused.append(UnusedKey(k, "invalid tensor", e.message))
            continue
        patches.append(patch)
        for s in present - consumed:
            unused.append(UnusedKey(by_suffix[s], "unsupported kind",
                                    f"{parser.name} parser does not use {s!r}"))
    fmt = describe_format(patches, applied, metadata, ctx)
    return LoraFile(path=path, format=fmt, patches=tuple(patches), metadata=metadata,
                    unused=tuple(unused), notes=tuple(ctx.notes))


def parse_file(path: str) -> LoraFile:
    tensors, metadata = load_state_dict(path)
    if not tensors:
        raise LoraFileError("file holds no tensors", file=path, fix="this is not a LoRA file")
    return parse_state_dict(tensors, metadata, path=os.fspath(path))


def describe_format(patches: list[ModulePatch], converters: list[str], metadata: Mapping[str, str],
                    ctx: ParseContext) -> str:
    """A short human label such as ``kohya/lora+dora`` or ``xlabs-flux/lora``."""
    counts: dict[str, int] = {}
    for p in patches:
        label = prefix_label(p.name)
        counts[label] = counts.get(label, 0) + 1
    family = "+".join(converters) if converters else (max(counts, key=counts.get) if counts else "empty")
    kinds = sorted({p.kind.value for p in patches if p.kind})
    if any(p.dora is not None for p in patches):
        kinds.append("dora")
    return f"{family}/{'+'.join(kinds) or 'none'}"


_registered = False


def _ensure_registered() -> None:
    """Import the parser and converter modules once (they register themselves)."""
    global _registered
    if _registered:
        return
    _registered = True
    import importlib
    import pkgutil
    for info in pkgutil.iter_modules(__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")
