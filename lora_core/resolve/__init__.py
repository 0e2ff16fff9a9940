"""Key resolution: bind each of a file's module patches to a model's parameters.

    resolve_targets(lora, model_shapes, *, model_family=None, namespace="auto") -> CoverageReport
    detect_model_family(model_shapes) -> str | None
    guess_lora_family(lora) -> str | None

``model_shapes`` maps parameter names to shapes in any naming (ComfyUI,
original checkpoints, diffusers folders, bare modules).  Per model an alias
table is built once and cached (see :mod:`.table`); each patch is then one
dictionary probe per plausible file prefix plus a shape check
(:mod:`.shapes`).  Nothing is dropped silently: every patch ends up in
``matched``, ``unmatched`` (with a reason) or ``elsewhere`` (addressed to a
text encoder when the model has none, or the reverse).

``namespace``: ``"auto"`` (every component the model holds),
``"diffusion"``, ``"text_encoder"``, or one encoder (``"clip_l"``,
``"clip_g"``, ``"clip_h"``, ``"t5"``); patches for other components go to
``elsewhere``.

Placement rules: a patch with a ``reshape`` (weight padding) cannot go on a
fused slice.  Every kind may otherwise land on a slice: the separate q/k/v
module the file was trained on *is* that slice, and each kind computes ΔW
against the weight it is given.  Two patches of one file reaching the same
parameter rows would add twice; the second is reported instead.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Mapping, Optional

from ..ir import CoverageReport, LoraFile, ModulePatch, ResolvedPatch, Unmatched
from ..kinds import changes_bias
from . import clip, flux, ltx, qwen, sd3, unet, wan
from .entries import Hint, Target
from .family import detect_index_family, guess_family, label
from .model import DIFFUSION, OTHER, TE_IDENTITIES, TEXT_ENCODER, ModelIndex, build_index
from .shapes import bias_misfit, target_shape, weight_misfit
from .table import AliasTable, file_component_class

__all__ = ["resolve_targets", "detect_model_family", "guess_lora_family", "model_context"]

_CACHE_SIZE = 8
_cache: "OrderedDict[frozenset, ModelContext]" = OrderedDict()
# Most of a file unmatched *and* another family: warn.
WARN_UNMATCHED_FRACTION = 0.5
BIAS_SUFFIXES = (".diff_b", ".b_norm", ".lora_B.bias", ".lora_B.default.bias")


@dataclass
class ModelContext:
    index: ModelIndex
    family: Optional[str]
    table: AliasTable


# The family tables, in the order their aliases are added (diffusion families, then
# the text encoders); a new family is one module here and in family.py's detection.
DIFFUSION_FAMILIES = (unet, sd3, flux, ltx, wan, qwen)
TEXT_ENCODER_FAMILIES = (clip,)


def build_table(index: ModelIndex, family: Optional[str]) -> AliasTable:
    """The alias table of one model: its own paths first (a family alias never shadows
    a real path), then every family's aliases."""
    table = AliasTable(index)
    for mod in index.modules.values():
        table.exact[mod.name] = Target(mod)
    for component, paths in index.by_component.items():
        if component == OTHER:
            continue
        for path, mod in paths.items():
            table.add(component, path, Target(mod))
    for provider in DIFFUSION_FAMILIES + TEXT_ENCODER_FAMILIES:
        table.add_all(provider.aliases(index, family))
    return table


def model_context(model_shapes: Mapping[str, tuple[int, ...]]) -> ModelContext:
    """The (cached) index, family and alias table of one model."""
    try:
        key = frozenset(model_shapes.items())  # shapes as tuples / torch.Size
    except TypeError:
        key = frozenset((k, tuple(v)) for k, v in model_shapes.items())
    ctx = _cache.get(key)
    if ctx is not None:
        _cache.move_to_end(key)
        return ctx
    index = build_index(model_shapes)
    family = detect_index_family(index)
    ctx = ModelContext(index=index, family=family, table=build_table(index, family))
    _cache[key] = ctx
    while len(_cache) > _CACHE_SIZE:
        _cache.popitem(last=False)
    return ctx


def detect_model_family(model_shapes: Mapping[str, tuple[int, ...]]) -> Optional[str]:
    """"sd1", "sd2", "sdxl", "unet", "sd3", "flux", "flux2", "chroma", "ltxv", "ltx2", "wan",
    "qwen_image", "z_image", "lumina2"; for a text-encoder-only model its encoders joined
    by "+" ("clip_l", "clip_l+clip_g", "clip_l+t5"); None when unknown."""
    return model_context(model_shapes).family


def guess_lora_family(lora: LoraFile) -> Optional[str]:
    """The family a LoRA was trained for (same names as :func:`detect_model_family`), or None."""
    return guess_family(lora)


def _allowed_components(index: ModelIndex, namespace: str) -> Optional[set[str]]:
    if namespace in ("auto", "", None):
        return None
    if namespace == DIFFUSION:
        return {DIFFUSION}
    if namespace == TEXT_ENCODER:
        return set(TE_IDENTITIES) | {TEXT_ENCODER}
    return {namespace}


def _bias_keys(patch: ModulePatch) -> tuple[str, ...]:
    return tuple(k for k in patch.keys if k.endswith(BIAS_SUFFIXES))


class _Claims:
    """Which rows of which parameters this file already patches (to catch double spellings)."""

    def __init__(self):
        self._by_key: dict[str, list[tuple[Optional[tuple[int, int]], str]]] = {}

    @staticmethod
    def _overlaps(a: Optional[tuple[int, int]], b: Optional[tuple[int, int]]) -> bool:
        return a is None or b is None or (a[0] < b[1] and b[0] < a[1])

    def clash(self, placed: ResolvedPatch) -> Optional[str]:
        rows = (placed.slice.start, placed.slice.start + placed.slice.length) if placed.slice else None
        for key in (placed.weight_key, placed.bias_key):
            if key is None:
                continue
            for other_rows, name in self._by_key.get(key, ()):
                if self._overlaps(rows, other_rows):
                    return (f"duplicate: {name!r} already patches the same rows of {key!r}; "
                            "applying both would add twice")
        return None

    def claim(self, placed: ResolvedPatch) -> None:
        rows = (placed.slice.start, placed.slice.start + placed.slice.length) if placed.slice else None
        for key in (placed.weight_key, placed.bias_key):
            if key is not None:
                self._by_key.setdefault(key, []).append((rows, placed.patch.name))


def _locate(patch: ModulePatch, ctx: ModelContext, allowed: Optional[set[str]],
            namespace: str) -> tuple[str, object]:
    """("target", Target) or ("unmatched" | "elsewhere", Unmatched)."""
    index, table = ctx.index, ctx.table

    def miss(bucket: str, detail: str, reason: str = "unknown name") -> tuple[str, Unmatched]:
        return bucket, Unmatched(patch.name, patch.keys, reason, detail)  # type: ignore[arg-type]

    cls = file_component_class(patch.name)
    if allowed is not None:
        if cls == DIFFUSION and DIFFUSION not in allowed:
            return miss("elsewhere", f"diffusion-model key; namespace {namespace!r}")
        if cls == TEXT_ENCODER and not (allowed - {DIFFUSION}):
            return miss("elsewhere", f"text-encoder key; namespace {namespace!r}")
    entry = table.lookup(patch.name, allowed)
    if entry is None and allowed is not None:
        other = table.lookup(patch.name)
        if isinstance(other, Target):
            return miss("elsewhere", f"belongs to {other.module.component}; namespace {namespace!r}")
    if entry is None:
        if cls == TEXT_ENCODER and not index.text_encoders:
            return miss("elsewhere", "text-encoder key; this model has no text encoder")
        if cls == DIFFUSION and not index.has_diffusion:
            return miss("elsewhere", "diffusion-model key; this model is a text encoder")
        return miss("unmatched", "no module of this model has this name")
    if isinstance(entry, Hint):
        return miss("unmatched", entry.detail, entry.reason)
    return "target", entry


def resolve_targets(lora: LoraFile, model_shapes: Mapping[str, tuple[int, ...]], *,
                    model_family: Optional[str] = None, namespace: str = "auto") -> CoverageReport:
    ctx = model_context(model_shapes)
    allowed = _allowed_components(ctx.index, namespace)
    matched: list[ResolvedPatch] = []
    unmatched: list[Unmatched] = []
    elsewhere: list[Unmatched] = []
    notes: list[str] = []
    claims = _Claims()
    for patch in lora.patches:
        bucket, found = _locate(patch, ctx, allowed, namespace)
        if bucket != "target":
            (elsewhere if bucket == "elsewhere" else unmatched).append(found)
            continue
        placed = _place(patch, found, unmatched, notes)
        if placed is None:
            continue
        clash = claims.clash(placed)
        if clash is not None:
            unmatched.append(Unmatched(patch.name, patch.keys, "unsupported kind", clash))
            continue
        claims.claim(placed)
        matched.append(placed)

    # dora_scale only: core applies no PEFT lora_magnitude_vector at all
    out_axis_dora = sum(1 for r in matched if r.patch.dora is not None and r.patch.dora.axis == "out"
                        and any(k.endswith(".dora_scale") for k in r.patch.keys))
    if out_axis_dora:
        notes.append(f"output-axis DoRA on {out_axis_dora} modules: normalised by ‖W + ΔW‖ (DoRA paper, PEFT, "
                     f"LyCORIS); ComfyUI core v0.14.2 uses ‖W‖ on this axis, so its result differs on purpose")
    lora_family = guess_family(lora)
    fam = model_family or ctx.family
    warning = None
    considered = len(matched) + len(unmatched)
    if (lora_family and fam and considered and not _compatible(lora_family, fam)
            and len(unmatched) / considered > WARN_UNMATCHED_FRACTION):
        warning = f"this LoRA targets {label(lora_family)}; the model is {label(fam)}"
    return CoverageReport(file=lora.path, matched=tuple(matched), unmatched=tuple(unmatched),
                          lora_family=lora_family, model_family=fam, family_warning=warning,
                          elsewhere=tuple(elsewhere), notes=tuple(notes))


def _compatible(lora_family: str, model_family: str) -> bool:
    if lora_family == model_family:
        return True
    # A text-encoder-only guess against a model holding that encoder.
    lf, mf = set(lora_family.split("+")), set(model_family.split("+"))
    return bool(lf & mf) and lf <= mf | {"clip_l", "clip_g", "clip_h", "t5"}


def _place(patch: ModulePatch, target: Target, unmatched: list[Unmatched],
           notes: list[str]) -> Optional[ResolvedPatch]:
    mod, sl = target.module, target.slice
    if sl is not None and patch.reshape is not None:
        unmatched.append(Unmatched(patch.name, patch.keys, "unsupported kind",
                                   f"the file pads the weight to {tuple(patch.reshape)}, which a slice of "
                                   f"{mod.weight_key!r} cannot take"))
        return None
    weight_key = None
    if patch.weight is not None:
        if mod.weight_key is None or mod.weight_shape is None:
            unmatched.append(Unmatched(patch.name, patch.keys, "unknown name",
                                       f"module {mod.name!r} has no weight"))
            return None
        shape = target_shape(mod.weight_shape, sl)
        why = weight_misfit(patch, shape)
        if why is not None:
            where = f"{mod.weight_key!r}" + (f" rows {sl.start}:{sl.start + sl.length}" if sl else "")
            unmatched.append(Unmatched(patch.name, patch.keys, "shape mismatch", f"{why} ({where})"))
            return None
        weight_key = mod.weight_key
    bias_key = None
    if patch.bias is None and changes_bias(patch):
        # The kind's bias rule (PEFT IA3) scales the layer's own bias, when it has one.
        if weight_key is not None and mod.bias_key is not None and mod.bias_shape is not None:
            bias_key = mod.bias_key
    elif patch.bias is not None:
        if mod.bias_key is None or mod.bias_shape is None:
            if weight_key is None:
                unmatched.append(Unmatched(patch.name, patch.keys, "unknown name",
                                           f"module {mod.name!r} has no bias"))
                return None
            notes.append(f"{patch.name}: module {mod.name!r} has no bias; the weight part is applied, "
                         f"the bias delta ({', '.join(_bias_keys(patch)) or 'bias'}) is not")
        else:
            why = bias_misfit(patch, target_shape(mod.bias_shape, sl))
            if why is not None:
                unmatched.append(Unmatched(patch.name, patch.keys, "shape mismatch",
                                           f"{why} ({mod.bias_key!r})"))
                return None
            bias_key = mod.bias_key
    if weight_key is None and bias_key is None:
        unmatched.append(Unmatched(patch.name, patch.keys, "unsupported kind",
                                   "the patch carries neither a weight change nor a bias"))
        return None
    return ResolvedPatch(patch=patch, weight_key=weight_key, bias_key=bias_key, slice=sl)
