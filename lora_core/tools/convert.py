"""Rename a LoRA's modules into another naming (kohya ↔ PEFT/diffusers ↔ ComfyUI).

The file's names are resolved against a model (``lora_core.resolve``: any of
the namings it knows reaches the model's modules) and each module is spelled
again in the target naming (:mod:`.naming`).  ΔW is unchanged:

* a plain LoRA module is copied verbatim with ``alpha = scale·rank``
  (kohya / ComfyUI) or with its scale folded into ``up`` (PEFT, which keeps no
  alpha tensors; the header says ``lora_alpha = r``);
* LoRAs on the slices of a fused weight (separate q/k/v on a fused qkv) become
  one module on the fused weight, rank-concatenated with zero rows elsewhere;
* other kinds (LoHa, LoKr, DoRA, full, OFT…) keep their tensors under the new
  name (kohya / ComfyUI only; PEFT-style LoRA files hold plain LoRA).
"""
from __future__ import annotations

from typing import Optional

import torch

from ..errors import PatchbayError
from ..io import load_state_dict
from ..stack_delta import is_plain_lora
from .merge import Model, Progress, Source, groups_from_model, load_model, merge_group, open_sources
from .modules import peft_metadata
from .naming import ModelNames, check_naming, detect_naming
from .result import LayerReport, ToolResult
from .svd import RankRule
from .writer import source_entry, tool_metadata


def _copy(group, naming: str, raw: dict[str, torch.Tensor], path: str) -> tuple[dict, LayerReport]:
    (c,) = group.weight
    patch = c.resolved.patch
    if naming == "peft":
        raise PatchbayError(f"module {patch.name!r} is {patch.kind.value}"
                            f"{' with DoRA' if patch.dora is not None else ''}, which PEFT-style LoRA files "
                            "cannot hold", file=path, key=patch.name,
                            fix="convert to kohya or comfy, or bake it to plain LoRA with `merge --rank R --to peft`")
    if c.resolved.slice is not None:
        raise PatchbayError(f"module {patch.name!r} ({patch.kind.value}) lands on a slice of a fused weight, "
                            "which has no name of its own in this naming", file=path, key=patch.name,
                            fix="bake it to plain LoRA with `merge --rank R`")
    out: dict[str, torch.Tensor] = {}
    for key in patch.keys:
        if key not in raw:
            raise PatchbayError("this file's keys were rewritten on reading, so they cannot be copied", file=path,
                                key=key, fix="bake it with `merge --rank R` instead")
        out[group.name + key[len(patch.name):]] = raw[key]
    rank = int(getattr(patch.weight, "rank", 0) or 0)
    if patch.scale != 1.0 and not any(k.endswith(".alpha") for k in patch.keys):
        if not rank:
            raise PatchbayError("the module's scale lives outside the file and cannot be written as alpha",
                                file=path, key=patch.name, fix="bake it with `merge --rank R`")
        out[group.name + ".alpha"] = torch.tensor(float(patch.scale * rank), dtype=torch.float32)
    kind = patch.kind.value + ("+dora" if patch.dora is not None else "")
    return out, LayerReport(group.name, "copy", rank, kinds=(kind,))


def convert(path: str, *, to: str, model: Model, dtype: Optional[torch.dtype] = None,
            progress: Progress = None, with_hashes: bool = True) -> ToolResult:
    naming = check_naming(to)
    if model is None:
        raise PatchbayError("convert needs the base model to know the modules' names",
                            fix="pass --model (a safetensors state dict of the base model, in any naming)")
    (lora,) = open_sources([Source(path)])
    params = load_model(model)
    names = ModelNames({k: tuple(v.shape) for k, v in params.items()})
    groups = groups_from_model([lora], [Source(path)], params, names, naming)
    raw: Optional[dict] = None
    tensors: dict[str, torch.Tensor] = {}
    layers: list[LayerReport] = []
    ranks: dict[str, int] = {}
    biased = False
    for i, g in enumerate(groups):
        if g.weight and not all(is_plain_lora(c) for c in g.weight):
            if raw is None:
                raw = load_state_dict(path)[0]
            t, report = _copy(g, naming, raw, path)
        else:
            out_dtype = dtype or (g.weight[0].resolved.patch.weight.up.dtype if g.weight else
                                  g.bias[0].resolved.patch.bias.dtype)
            t, report = merge_group(g, RankRule(), naming, out_dtype, verbatim=dtype is None)
        if set(t) & set(tensors):
            raise PatchbayError("two modules map to the same output name", key=sorted(set(t) & set(tensors))[0])
        tensors.update(t)
        if report is not None:
            layers.append(report)
            if report.rank and report.method != "copy":
                ranks[g.name] = report.rank
            biased = biased or any(k.endswith(".lora_B.bias") for k in t)
        if progress is not None:
            progress(i + 1, len(groups))
    metadata = tool_metadata("convert", [source_entry(path, with_hash=with_hashes)],
                             extra={"naming": naming, "from": detect_naming(p.name for p in lora.patches)})
    for key in ("ss_network_dim", "ss_network_alpha", "ss_network_args", "ss_base_model_version",
                "ss_tag_frequency", "ss_output_name", "modelspec.title", "modelspec.architecture"):
        if key in lora.metadata:  # what the trainer said about the file stays true
            metadata.setdefault(key, lora.metadata[key])
    if naming == "peft":
        metadata.update(peft_metadata(ranks, biased))
    return ToolResult(tensors=tensors, layers=tuple(layers), metadata=metadata)
