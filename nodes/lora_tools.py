"""PatchbaySaveMergedLora and PatchbayExtractLora: write a LoRA file into the ``loras`` folder.

The maths and the writing are the engine's (``lora_core.tools``); here only
the widgets become a call.  The output name passes the pack's name gate
(``files.unsafe_name_reason``: no absolute paths, no ``..``) at queue time and
again when the node runs, must stay inside the first ``loras`` folder after
symlinks are followed, and never names an existing file: the write is atomic
and refuses to overwrite.
"""
from __future__ import annotations

import os
from typing import Optional

import folder_paths

from ..lora_core.errors import PatchbayError, StackError
from ..lora_core.tools.extract import extract
from ..lora_core.tools.merge import Source, merge
from ..lora_core.tools.writer import write_lora
from . import files, host
from .common import CATEGORY, as_stack

OUTPUT_EXT = ".safetensors"
DTYPES = ("fp16", "bf16", "fp32")
MAX_REPORT_LAYERS = 2000


def _torch_dtype(name: str):
    import torch
    return {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[name]


def output_name(name: str) -> str:
    """The relative file name a save node writes (``.safetensors`` added), or a StackError saying why not."""
    reason = files.unsafe_name_reason(name)
    if reason is not None:
        raise StackError(f"output name {name!r}: {reason.replace('LoRA name', 'name')}",
                         fix="type a name inside the loras folder, e.g. merged/my_lora")
    norm = name.strip().replace("\\", "/")
    parts = norm.split("/")
    if any(not p or p == "." or p.startswith(".") for p in parts):
        raise StackError(f"output name {name!r} has an empty, '.' or hidden part",
                         fix="use plain folder and file names, e.g. merged/my_lora")
    if not norm.lower().endswith(OUTPUT_EXT):
        if "." in parts[-1] and parts[-1].rsplit(".", 1)[1].lower() in ("pt", "pth", "ckpt", "bin"):
            raise StackError(f"output name {name!r}: only .safetensors files are written",
                             fix="end the name with .safetensors or leave the extension out")
        norm += OUTPUT_EXT
    return norm


def output_path(name: str) -> tuple[str, str]:
    """(relative name, absolute path) in the first ``loras`` folder; refuses escapes and existing files."""
    rel = output_name(name)
    root = os.path.realpath(folder_paths.get_folder_paths(files.FOLDER)[0])
    path = os.path.realpath(os.path.join(root, rel))
    if os.path.commonpath([root, path]) != root:
        raise StackError(f"output name {name!r} leads outside the loras folder (through a link)",
                         fix="type a name inside the loras folder")
    if os.path.exists(path):
        raise StackError(f"a LoRA named {rel!r} already exists; nothing is overwritten",
                         fix="type another name")
    return rel, path


def name_check(filename: Optional[str]):
    """VALIDATE_INPUTS answer for an output name (True, or the reason)."""
    if filename is None:  # linked from another node: checked when it runs
        return True
    try:
        output_path(filename)
    except PatchbayError as e:
        return str(e)
    return True


def _write(result, filename: str, inputs) -> str:
    rel, path = output_path(filename)
    created = []
    folder = os.path.dirname(path)
    while not os.path.isdir(folder):
        created.append(folder)
        folder = os.path.dirname(folder)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    try:
        write_lora(result.tensors, path, metadata=result.metadata, force=False, inputs=inputs)
    except BaseException:
        for d in created:  # leave the loras folder as it was
            try:
                os.rmdir(d)
            except OSError:
                break
        raise
    return rel


def report_text(rel: str, result, per_layer: bool) -> str:
    s = result.summary()
    methods = ", ".join(f"{k} {v}" for k, v in sorted(s["methods"].items()))
    ranks = s["ranks"]
    lines = [f"saved {rel}: {s['modules']} modules ({methods}); "
             + (f"ranks {ranks[0]}-{ranks[-1]}" if len(ranks) > 1 else f"rank {ranks[0]}" if ranks else "no rank"),
             f"relative error: max {s['rel_error']['max']:.4g}, mean {s['rel_error']['mean']:.4g}"
             + (f" (worst {s['rel_error']['worst_layer']})" if s["rel_error"]["worst_layer"] else "")
             + f"; energy kept: min {s['energy_min']:.4f}"]
    lines += [f"note: {n}" for n in s["notes"]]
    if per_layer:
        lines.append("per layer: rank, energy kept, relative error")
        for layer in result.layers[:MAX_REPORT_LAYERS]:
            lines.append(f"  {layer.name}: {layer.method} rank {layer.rank}, energy {layer.energy:.4f}, "
                         f"error {layer.rel_error:.4g}")
        if len(result.layers) > MAX_REPORT_LAYERS:
            lines.append(f"  … {len(result.layers) - MAX_REPORT_LAYERS} more")
    return "\n".join(lines)


class PatchbaySaveMergedLora:
    DESCRIPTION = ("Bakes a LoRA stack into ONE LoRA file in the loras folder. rank 0: the exact merge (ranks "
                   "add up, the file applies exactly like the stack); rank > 0: an SVD to that rank, with the "
                   "error per layer in the report. Model and CLIP strengths of each row are baked in. Never "
                   "overwrites a file.")
    CATEGORY = CATEGORY
    FUNCTION = "save"
    OUTPUT_NODE = True
    RETURN_TYPES = ("STRING", "STRING")
    RETURN_NAMES = ("lora_name", "report")
    OUTPUT_TOOLTIPS = ("The saved file's name in the loras folder (for a LoRA loader).",
                       "What was written: modules, ranks, the reconstruction error per layer.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "lora_stack": ("LORA_STACK", {"tooltip": "The stack to bake (enabled rows with a strength)."}),
            "filename": ("STRING", {"default": "merged/patchbay_merged",
                                    "tooltip": "Name inside the loras folder (.safetensors is added). An "
                                               "existing file is never overwritten."}),
            "rank": ("INT", {"default": 0, "min": 0, "max": 4096,
                             "tooltip": "0 = exact merge (rank = sum of the ranks); otherwise an SVD to this "
                                        "rank (smaller file, approximate)."}),
            "dtype": (("same as inputs",) + DTYPES, {"default": "same as inputs",
                                                      "tooltip": "Tensor type of the saved file."}),
        }}

    @classmethod
    def VALIDATE_INPUTS(cls, filename=None):
        return name_check(filename)

    def save(self, lora_stack, filename, rank, dtype):
        stack = as_stack(lora_stack)
        sources = []
        for i, e in enumerate(stack.entries):
            if not e.enabled or (e.strength_model == 0.0 and e.strength_clip == 0.0):
                continue
            if e.schedule is not None or e.block_weights is not None:
                raise StackError(f"row {i + 1} ({e.lora}) has a {'schedule' if e.schedule else 'block weights'}, "
                                 "which a LoRA file cannot hold", fix="remove it from the row before saving")
            path = files.resolve_path(e.lora, e.file_hash, index=i)
            sources.append(Source(path, e.strength_model,
                                  strength_clip=e.strength_clip))
        if not sources:
            raise StackError("the stack has no enabled row with a strength", fix="enable a row")
        result = merge(sources, rank=rank or None, dtype=None if dtype == "same as inputs" else _torch_dtype(dtype))
        rel = _write(result, filename, [s.path for s in sources])
        text = report_text(rel, result, per_layer=rank > 0)
        return {"ui": {"text": [text]}, "result": (rel, text)}


class PatchbayExtractLora:
    DESCRIPTION = ("Extracts a LoRA from two models: what the fine-tuned model changed against the base, as a "
                   "LoRA of a chosen rank (or the rank that keeps a share of each layer's energy), saved in the "
                   "loras folder. The report gives the energy kept per layer. Pending patches of either model "
                   "(LoRAs, merges) count as weights; bypass side paths do not.")
    CATEGORY = CATEGORY
    FUNCTION = "extract"
    OUTPUT_NODE = True
    RETURN_TYPES = ("STRING", "STRING")
    RETURN_NAMES = ("lora_name", "report")
    OUTPUT_TOOLTIPS = ("The saved file's name in the loras folder.",
                       "Energy kept and relative error per layer.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "base_model": ("MODEL", {"tooltip": "The model the fine-tune started from."}),
            "tuned_model": ("MODEL", {"tooltip": "The fine-tuned model (same architecture)."}),
            "filename": ("STRING", {"default": "extracted/patchbay_extracted",
                                    "tooltip": "Name inside the loras folder (.safetensors is added). An "
                                               "existing file is never overwritten."}),
            "rank": ("INT", {"default": 16, "min": 0, "max": 4096,
                             "tooltip": "Rank per layer (the upper bound when energy is set). 0 = energy only."}),
            "energy": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.001,
                                 "tooltip": "0 = off; otherwise the smallest rank per layer that keeps this share "
                                            "of the layer's change (e.g. 0.9)."}),
            "dtype": (DTYPES, {"default": "fp16", "tooltip": "Tensor type of the saved file."}),
            "bias_and_norms": ("BOOLEAN", {"default": True,
                                           "tooltip": "Also store changed biases and norm weights (diff_b / diff)."}),
        }}

    @classmethod
    def VALIDATE_INPUTS(cls, filename=None, rank=None, energy=None):
        if rank is not None and energy is not None and rank == 0 and energy == 0.0:
            return "set a rank, an energy share, or both"
        return name_check(filename)

    def extract(self, base_model, tuned_model, filename, rank, energy, dtype, bias_and_norms):
        if not rank and not energy:
            raise StackError("set a rank, an energy share, or both", fix="e.g. rank 16")
        output_path(filename)  # refuse a bad or taken name before the long computation
        result = extract(host.sampled_weights(base_model), host.sampled_weights(tuned_model),
                         rank=rank or None, energy=energy or None, naming="comfy", dtype=_torch_dtype(dtype),
                         include_1d=bias_and_norms)
        rel = _write(result, filename, [])
        text = report_text(rel, result, per_layer=True)
        return {"ui": {"text": [text]}, "result": (rel, text)}


NODE_CLASS_MAPPINGS = {
    "PatchbaySaveMergedLora": PatchbaySaveMergedLora,
    "PatchbayExtractLora": PatchbayExtractLora,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "PatchbaySaveMergedLora": "Save Merged LoRA (Patchbay)",
    "PatchbayExtractLora": "Extract LoRA (Patchbay)",
}
