"""A stack of LoRAs → one LoRA.

Exact merge (the default), for plain LoRAs::

    ΔW_stack = Σᵢ sᵢ·cᵢ·Bᵢ·Aᵢ = [s₁c₁B₁ | s₂c₂B₂ | …] · [A₁; A₂; …]
    → up = [s₁c₁B₁ | …] (out × Σrᵢ),  down = [A₁; …] (Σrᵢ × in·k),  alpha = Σrᵢ

(cᵢ = alphaᵢ / rᵢ; a LoRA on a fused-qkv slice gets zero rows elsewhere in
its B; a Tucker core is contracted into A).  With a rank rule the
concatenated product is truncated by SVD (:func:`.svd.low_rank_of_product`);
so is a sum of ranks past the layer's full rank min(out, in·k), exactly.
Modules of other kinds (LoHa, LoKr, full diffs) and DoRA have no exact
low-rank form: their dense ΔW (``lora_core.stack_delta``, the merge patcher's
own sum) is factorised by SVD, at the numerical rank when no rule is given;
the report names them ``dense-svd``.  Bias deltas add up into ``diff_b``.

Modules are matched across files by name when every file uses the same
naming, or through ``lora_core.resolve`` against a model (``model=``), which
also allows mixed namings and renaming to ``naming``.  Kinds whose ΔW reads
the base weight (OFT, IA3, GLoRA, DoRA) need the model's tensors.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Mapping, Optional, Sequence, Union

import torch

from ..errors import FormatError, ModelMismatchError, PatchbayError, ShapeMismatchError
from ..finite import check_file_finite
from ..ir import FullWeights, LohaWeights, LokrWeights, LoraFile, LoraWeights, ResolvedPatch
from ..plan import Contribution, build_plan
from ..resolve.shapes import delta_shape
from ..stack_delta import base_independent, concat_factors, group_by_rows, is_plain_lora, stack_delta
from .modules import bias_tensors, factor_shapes, lora_tensors, peft_metadata
from ..resolve.model import DIFFUSION
from .naming import ModelNames, check_naming, detect_naming
from .result import LayerReport, ToolResult
from .svd import RankRule, low_rank, low_rank_of_product
from .writer import source_entry, tool_metadata

Progress = Optional[Callable[[int, int], None]]
Model = Union[None, str, Mapping[str, torch.Tensor]]


@dataclass(frozen=True)
class Source:
    """One stack row: a LoRA file at a strength (``lora``: an already parsed file, optional).

    ``strength_clip``: the strength of the file's text-encoder modules (None: ``strength``).
    """
    path: str
    strength: float = 1.0
    lora: Optional[LoraFile] = None
    strength_clip: Optional[float] = None

    def strength_for(self, text_encoder: bool) -> float:
        return float(self.strength_clip if text_encoder and self.strength_clip is not None else self.strength)


@dataclass
class Group:
    """Everything the stack does to one module."""
    name: str
    weight_key: str
    shape: Optional[tuple[int, ...]]
    weight: tuple[Contribution, ...] = ()
    bias: tuple[Contribution, ...] = ()
    bias_shape: Optional[tuple[int, ...]] = None
    base: Optional[torch.Tensor] = None


# ----------------------------------------------------------------- inputs

def open_sources(sources: Sequence[Source]) -> list[LoraFile]:
    """Parse every source; refuse files that hold no LoRA module or hold NaN/Inf."""
    from ..api import open_lora
    if not sources:
        raise PatchbayError("no LoRA given", fix="name at least one LoRA file")
    out = []
    for s in sources:
        lora = s.lora if s.lora is not None else open_lora(s.path)
        if not lora.patches:
            raise FormatError("file holds no LoRA module (is it a model checkpoint?)", file=s.path,
                              fix="pass LoRA files; to make a LoRA from a fine-tuned model use `extract`")
        check_file_finite(lora)
        out.append(lora)
    return out


def _families_compatible(a: str, b: str) -> bool:
    if a == b:
        return True
    fa, fb = set(a.split("+")), set(b.split("+"))
    te = {"clip_l", "clip_g", "clip_h", "t5"}
    return bool(fa & fb) and (fa <= fb | te or fb <= fa | te)


def check_same_base(loras: Sequence[LoraFile]) -> None:
    """Refuse a stack whose LoRAs were trained for different base models (where that can be told)."""
    from ..resolve import guess_lora_family
    from ..resolve.family import label
    known = [(lora, guess_lora_family(lora)) for lora in loras]
    known = [(lora, fam) for lora, fam in known if fam]
    for lora, fam in known[1:]:
        first, first_fam = known[0]
        if not _families_compatible(first_fam, fam):
            raise ModelMismatchError(
                f"these LoRAs are for different base models: {os.path.basename(first.path)} is for "
                f"{label(first_fam)}, {os.path.basename(lora.path)} is for {label(fam)}",
                fix="merge only LoRAs made for the same base model")


def load_model(model: Model) -> Mapping[str, torch.Tensor]:
    if isinstance(model, (str, os.PathLike)):
        from ..io import load_state_dict
        return load_state_dict(os.fspath(model))[0]
    return model


def _shape_without_model(lora: LoraFile, patch) -> tuple[int, ...]:
    w = patch.weight
    if patch.dora is not None:
        raise PatchbayError(f"module {patch.name!r} is DoRA, whose ΔW depends on the base weights", file=lora.path,
                            key=patch.name, fix="pass --model (the base model's safetensors) so it can be computed")
    if isinstance(w, LoraWeights):
        kernel = tuple(w.mid.shape[2:]) if w.mid is not None else tuple(w.down.shape[2:])
        return (int(w.up.shape[0]), int(w.down.shape[1]), *kernel)
    if isinstance(w, FullWeights):
        return tuple(w.diff.shape)
    if isinstance(w, (LohaWeights, LokrWeights)):
        rows, cols, _ = delta_shape(patch)
        if rows and cols:
            return (rows, cols)
    kind = patch.kind.value if patch.kind else "bias"
    raise PatchbayError(f"module {patch.name!r} is {kind}, whose ΔW depends on the base weights", file=lora.path,
                        key=patch.name, fix="pass --model (the base model's safetensors) so it can be computed")


def groups_by_name(loras: Sequence[LoraFile], sources: Sequence[Source]) -> list[Group]:
    """Modules matched by their names (every file in one naming, no model)."""
    from ..resolve.model import TEXT_ENCODER
    from ..resolve.table import file_component_class
    namings = {detect_naming(p.name for p in lora.patches) for lora in loras}
    if len(namings) > 1:
        raise PatchbayError(f"these LoRAs name their modules in different namings ({', '.join(sorted(namings))})",
                            fix="pass --model (the base model) so the modules can be matched, or convert them first")
    groups: dict[str, Group] = {}
    for entry, (lora, source) in enumerate(zip(loras, sources)):
        for patch in lora.patches:
            strength = source.strength_for(file_component_class(patch.name) == TEXT_ENCODER)
            if strength == 0.0:
                continue
            if patch.reshape is not None:
                raise PatchbayError("a module that pads the weight (reshape_weight) cannot be merged",
                                    file=lora.path, key=patch.name)
            g = groups.get(patch.name)
            if patch.weight is not None:
                shape = _shape_without_model(lora, patch)
                if g is None:
                    g = groups[patch.name] = Group(patch.name, patch.name + ".weight", shape)
                elif g.shape is None:
                    g.shape = shape
                elif tuple(g.shape) != shape:
                    raise ShapeMismatchError(f"module {patch.name!r} is {g.shape} in one LoRA and {shape} in "
                                             "another", file=lora.path, key=patch.name,
                                             fix="merge only LoRAs made for the same base model")
                resolved = ResolvedPatch(patch, g.weight_key, patch.name + ".bias" if patch.bias is not None else None)
                g.weight += (Contribution(resolved, float(strength), "weight", entry, lora.path),)
            if patch.bias is not None:
                if g is None:
                    g = groups[patch.name] = Group(patch.name, patch.name + ".weight", None)
                resolved = ResolvedPatch(patch, g.weight_key if patch.weight is not None else None,
                                         patch.name + ".bias")
                g.bias += (Contribution(resolved, float(strength), "bias", entry, lora.path),)
                g.bias_shape = tuple(patch.bias.shape)
    return list(groups.values())


def groups_from_model(loras: Sequence[LoraFile], sources: Sequence[Source], params: Mapping[str, torch.Tensor],
                      names: ModelNames, naming: str) -> list[Group]:
    """Modules matched through the resolver against a model; every patch must reach it."""
    from ..resolve import resolve_targets
    shapes = {k: tuple(v.shape) for k, v in params.items()}
    entries = []
    def per_key(source: Source):
        def strength(key: str) -> float:
            mod = names.by_weight_key.get(key) or names.by_bias_key.get(key)
            return source.strength_for(mod is not None and mod.component != DIFFUSION)
        return strength

    for lora, source in zip(loras, sources):
        report = resolve_targets(lora, shapes)
        missed = list(report.unmatched) + list(report.elsewhere)
        if missed:
            first = missed[0]
            raise ModelMismatchError(
                f"{len(missed)} of the LoRA's modules reach no module of the model "
                f"(first: {first.name!r}: {first.reason}{', ' + first.detail if first.detail else ''})",
                file=lora.path, fix="pass the model the LoRA was made for (a full checkpoint when it has "
                                    "text-encoder modules); `python -m lora_core check` lists them")
        for r in report.matched:
            if r.patch.reshape is not None:
                raise PatchbayError("a module that pads the weight (reshape_weight) cannot be merged",
                                    file=lora.path, key=r.patch.name)
        entries.append((report, 1.0, per_key(source)))
    plan = build_plan(entries)
    groups: dict[str, Group] = {}
    for key, contribs in plan.items():
        part = contribs[0].part
        mod = names.module_of(key if part == "weight" else None, key if part == "bias" else None)
        g = groups.get(mod.name)
        if g is None:
            g = groups[mod.name] = Group(names.name(mod, naming), mod.weight_key or key,
                                         tuple(mod.weight_shape) if mod.weight_shape else None)
        if part == "weight":
            g.weight = contribs
            if not base_independent(contribs):
                g.base = params[key]
        else:
            g.bias = contribs
            g.bias_shape = tuple(mod.bias_shape)
    return list(groups.values())


# ----------------------------------------------------------------- maths per group

def _concat(g: Group) -> tuple[torch.Tensor, torch.Tensor]:
    """(up, down) in fp32 with up·down = the group's ΔW (flattened), slices padded with zero rows."""
    shape = torch.Size(g.shape)
    rows = shape[0]
    ups, downs = [], []
    for s, items in group_by_rows(g.weight_key, g.weight, shape).items():
        view = shape if s is None else torch.Size((s.length, *shape[1:]))
        b, a = concat_factors(g.weight_key, list(items), view, torch.device("cpu"))
        if s is not None:
            full = torch.zeros(rows, b.shape[1], dtype=b.dtype)
            full[s.start:s.start + s.length] = b
            b = full
        ups.append(b)
        downs.append(a)
    return torch.cat(ups, 1), torch.cat(downs, 0)


def _kinds(contribs: Sequence[Contribution]) -> tuple[str, ...]:
    out = []
    for c in contribs:
        p = c.resolved.patch
        k = (p.kind.value if p.kind else "bias") + ("+dora" if p.dora is not None else "")
        if k not in out:
            out.append(k)
    return tuple(out)


def merge_group(g: Group, rule: RankRule, naming: str, dtype: torch.dtype,
                verbatim: bool = True) -> tuple[dict[str, torch.Tensor], Optional[LayerReport]]:
    """The output tensors and the report of one module."""
    bias = None
    if g.bias:
        bias = stack_delta(g.bias[0].resolved.bias_key or g.name, g.bias,
                           torch.zeros(g.bias_shape), torch.Size(g.bias_shape)).to(dtype)
    if not g.weight:
        if bias is None:
            return {}, None
        return bias_tensors(g.name, bias), LayerReport(g.name, "bias", 0, kinds=_kinds(g.bias))
    kinds = _kinds(g.weight)
    shape = tuple(g.shape)
    if all(is_plain_lora(c) for c in g.weight):
        only = g.weight[0]
        if (verbatim and rule.exact and len(g.weight) == 1 and only.resolved.slice is None
                and only.strength == 1.0 and naming != "peft"):
            w = only.resolved.patch.weight
            alpha = only.resolved.patch.scale * w.rank
            return (lora_tensors(g.name, w.up.contiguous(), w.down.contiguous(), naming, alpha=alpha, mid=w.mid,
                                 bias=bias),
                    LayerReport(g.name, "copy", w.rank, kinds=kinds))
        up, down = _concat(g)
        # Ranks that add up past the layer's full rank: the exact SVD is smaller and just as exact.
        if rule.exact and up.shape[1] <= min(up.shape[0], down.shape[1]):
            up, down = factor_shapes(up.to(dtype), down.to(dtype), shape)
            return (lora_tensors(g.name, up, down, naming, bias=bias),
                    LayerReport(g.name, "concat", int(down.shape[0]), kinds=kinds))
        low = low_rank_of_product(up, down, rule)
        method = "svd"
    else:
        base = g.base if g.base is not None else torch.zeros(shape)
        delta = stack_delta(g.weight_key, g.weight, base, torch.Size(shape))
        low = low_rank(delta, rule)
        method = "dense-svd"
    if low is None:  # ΔW is exactly zero (e.g. strengths that cancel)
        if bias is None:
            return {}, LayerReport(g.name, "zero", 0, kinds=kinds)
        return bias_tensors(g.name, bias), LayerReport(g.name, "bias", 0, kinds=kinds)
    up, down = factor_shapes(low.up.to(dtype), low.down.to(dtype), shape)
    return (lora_tensors(g.name, up, down, naming, bias=bias),
            LayerReport(g.name, method, low.rank, low.rel_error, low.energy, kinds))


def merge_groups(groups: Sequence[Group], rule: RankRule, naming: str, dtype: torch.dtype,
                 progress: Progress = None, verbatim: bool = True) -> tuple[dict, list[LayerReport], dict]:
    tensors: dict[str, torch.Tensor] = {}
    layers: list[LayerReport] = []
    ranks: dict[str, int] = {}
    biased = False
    for i, g in enumerate(groups):
        t, report = merge_group(g, rule, naming, dtype, verbatim)
        clash = set(t) & set(tensors)
        if clash:
            raise PatchbayError("two modules map to the same output name", key=sorted(clash)[0],
                                fix="the model's module names are ambiguous in this naming; choose another")
        tensors.update(t)
        if report is not None:
            layers.append(report)
            if report.rank:
                ranks[g.name] = report.rank
            biased = biased or (g.bias != () and report.rank > 0)
        if progress is not None:
            progress(i + 1, len(groups))
    meta = peft_metadata(ranks, biased) if naming == "peft" else {}
    return tensors, layers, meta


def output_dtype(loras: Sequence[LoraFile], dtype: Optional[torch.dtype]) -> torch.dtype:
    """``dtype`` or the widest float dtype the inputs store their factors in."""
    if dtype is not None:
        return dtype
    seen = set()
    for lora in loras:
        for p in lora.patches[:64]:
            for t in vars(p.weight).values() if p.weight is not None else ():
                if isinstance(t, torch.Tensor) and t.is_floating_point():
                    seen.add(t.dtype)
    for d in (torch.float64, torch.float32, torch.bfloat16, torch.float16):
        if d in seen:
            return torch.float32 if d == torch.float64 else d
    return torch.float32


# ----------------------------------------------------------------- the tool

def merge(sources: Sequence[Source], *, rank: Optional[int] = None, energy: Optional[float] = None,
          model: Model = None, naming: Optional[str] = None, dtype: Optional[torch.dtype] = None,
          progress: Progress = None, tool: str = "merge", with_hashes: bool = True) -> ToolResult:
    """Merge ``sources`` into one LoRA (see the module docstring); nothing is written here."""
    rule = RankRule(rank, energy)
    loras = open_sources(sources)
    check_same_base(loras)
    file_naming = detect_naming(p.name for p in loras[0].patches)
    naming = check_naming(naming) if naming else file_naming
    notes: list[str] = []
    if model is not None:
        params = load_model(model)
        groups = groups_from_model(loras, sources, params, ModelNames({k: tuple(v.shape) for k, v in
                                                                          params.items()}), naming)
    else:
        if naming != file_naming:
            raise PatchbayError(f"renaming {file_naming} modules to {naming} needs the model",
                                fix="pass --model (the base model's safetensors)")
        groups = groups_by_name(loras, sources)
    out_dtype = output_dtype(loras, dtype)
    tensors, layers, meta = merge_groups(groups, rule, naming, out_dtype, progress)
    dense = sorted({k for l in layers if l.method == "dense-svd" for k in l.kinds})
    if dense:
        notes.append(f"modules of kind {', '.join(dense)} have no exact low-rank form: their dense ΔW was "
                     "factorised by SVD (see rel_error per layer)")
    if any(l.method == "zero" for l in layers):
        notes.append("some modules cancel out exactly (ΔW = 0) and were left out")
    max_rank = max((l.rank for l in layers), default=0)
    metadata = tool_metadata(tool, [source_entry(s.path, s.strength, with_hash=with_hashes)
                              | ({} if s.strength_clip is None else {"strength_clip": float(s.strength_clip)})
                              for s in sources],
                             rank=max_rank or None,
                             extra={"rank_rule": {"rank": rank, "energy": energy}, "naming": naming})
    metadata.update(meta)
    return ToolResult(tensors=tensors, layers=tuple(layers), metadata=metadata, notes=tuple(notes))
