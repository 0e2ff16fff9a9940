"""Base + fine-tuned state dicts → a LoRA (what the fine-tune changed, at low rank).

Per weight W (2-D linear, or conv flattened to out × in·k·k)::

    ΔW = W_tuned − W_base ≈ up · down      (truncated SVD, :func:`.svd.low_rank`)
    energy kept = Σ kept σ² / Σ σ²,   rel. error = √(1 − energy)

Conv factors come back in the layer's layout (up out×r×1×1, down r×in×kh×kw).
1-D parameters that changed (norm weights) are stored as ``diff`` and bias
changes as ``diff_b`` (kohya / ComfyUI namings; PEFT files cannot hold them, so
they are left out with a note).  Parameters that did not change are skipped.
"""
from __future__ import annotations

import os
from typing import Callable, Mapping, Optional, Union

import torch

from ..errors import NonFiniteError, PatchbayError, ShapeMismatchError
from .merge import load_model
from .modules import factor_shapes, lora_tensors, peft_metadata
from .naming import ModelNames, check_naming
from .result import LayerReport, ToolResult
from .svd import RankRule, low_rank
from .writer import source_entry, tool_metadata

# A file, or a mapping of tensors; a mapping with a ``shapes()`` method lists its shapes through it.
StateDict = Union[str, Mapping[str, torch.Tensor]]


def _label(x: StateDict, default: str) -> str:
    return os.fspath(x) if isinstance(x, (str, os.PathLike)) else default


def extract(base: StateDict, tuned: StateDict, *, rank: Optional[int] = None, energy: Optional[float] = None,
            naming: str = "comfy", dtype: torch.dtype = torch.float16, include_1d: bool = True,
            progress: Optional[Callable[[int, int], None]] = None, with_hashes: bool = True,
            device: Optional[str] = None) -> ToolResult:
    """``device``: where the SVDs run (e.g. "cuda"); the factors come back to the CPU."""
    if rank is None and energy is None:
        raise PatchbayError("extract needs a target", fix="pass --rank R or --energy E (e.g. 0.9)")
    rule = RankRule(rank, energy)
    naming = check_naming(naming)
    base_name, tuned_name = _label(base, "<base model>"), _label(tuned, "<fine-tuned model>")
    p0, p1 = load_model(base), load_model(tuned)
    # A host may pass lazy mappings (weights computed on access) that list their shapes without computing.
    shapes = p0.shapes() if hasattr(p0, "shapes") else {k: tuple(v.shape) for k, v in p0.items()}
    names = ModelNames(shapes)
    keys = list(shapes)
    missing = [k for k in keys if k not in p1]
    if len(missing) == len(keys):
        raise ShapeMismatchError("the two models share no parameter name", file=tuned_name,
                                 fix="pass the base model and a fine-tune of it, in the same naming")
    tensors: dict[str, torch.Tensor] = {}
    layers: list[LayerReport] = []
    ranks: dict[str, int] = {}
    notes: list[str] = []
    skipped_1d = skipped_other = 0
    biases: dict[str, torch.Tensor] = {}
    for i, key in enumerate(keys):
        if progress is not None:
            progress(i + 1, len(keys))
        if key not in p1:
            continue
        w0, w1 = p0[key], p1[key]
        if not (w0.is_floating_point() and w1.is_floating_point()):
            continue
        if tuple(w0.shape) != tuple(w1.shape):
            raise ShapeMismatchError(f"shapes differ: {tuple(w0.shape)} in the base, {tuple(w1.shape)} in the "
                                     "fine-tune", file=tuned_name, key=key, fix="these are different architectures")
        for label, t in ((base_name, w0), (tuned_name, w1)):
            if not bool(torch.isfinite(t).all()):
                raise NonFiniteError("tensor holds NaN or Inf values; nothing was written", file=label, key=key,
                                     fix="the model is broken; use another copy")
        delta = w1.float() - w0.float()
        if not bool(delta.any()):
            continue
        weight_mod = names.by_weight_key.get(key)
        bias_mod = names.by_bias_key.get(key) if weight_mod is None else None
        mod = weight_mod or bias_mod
        try:
            name = names.name(mod, naming) if mod is not None else None
        except PatchbayError:
            name = None
        if name is None:
            skipped_other += 1
            continue
        if bias_mod is not None:
            biases[name] = delta.to(dtype)
            continue
        if delta.dim() < 2:
            if naming == "peft" or not include_1d:
                skipped_1d += 1
                continue
            tensors[name + ".diff"] = delta.to(dtype)
            layers.append(LayerReport(name, "diff", 0, kinds=("full",)))
            continue
        low = low_rank(delta.to(device) if device else delta, rule)
        up, down = factor_shapes(low.up.to("cpu", dtype), low.down.to("cpu", dtype), tuple(delta.shape))
        tensors.update(lora_tensors(name, up, down, naming))
        ranks[name] = low.rank
        layers.append(LayerReport(name, "dense-svd", low.rank, low.rel_error, low.energy, ("lora",)))
    for name, b in biases.items():
        if not include_1d:
            skipped_1d += 1
            continue
        if naming == "peft" and name in ranks:
            tensors[name + ".lora_B.bias"] = b
        elif naming == "peft":
            skipped_1d += 1
        else:
            tensors[name + ".diff_b"] = b
            if name not in ranks and name + ".diff" not in tensors:
                layers.append(LayerReport(name, "bias", 0, kinds=("bias",)))
    if not tensors:
        raise PatchbayError("the fine-tuned model does not differ from the base", file=tuned_name,
                            fix="check that the two files are not the same model")
    if skipped_1d:
        notes.append(f"{skipped_1d} changed 1-D parameters (biases, norms) were left out"
                     + (": PEFT-style files cannot hold them" if naming == "peft" else ""))
    if skipped_other:
        notes.append(f"{skipped_other} changed parameters belong to no diffusion model or text encoder "
                     "(e.g. a VAE) and were left out")
    sources = [source_entry(base_name, with_hash=with_hashes and os.path.isfile(base_name)) | {"role": "base"},
               source_entry(tuned_name, with_hash=with_hashes and os.path.isfile(tuned_name)) | {"role": "tuned"}]
    metadata = tool_metadata("extract", sources, rank=max(ranks.values(), default=0) or None,
                             extra={"rank_rule": {"rank": rank, "energy": energy}, "naming": naming})
    if naming == "peft":
        metadata.update(peft_metadata(ranks, any(k.endswith(".lora_B.bias") for k in tensors)))
    return ToolResult(tensors=tensors, layers=tuple(layers), metadata=metadata, notes=tuple(notes))
