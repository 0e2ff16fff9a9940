"""Output modules: factor pairs and bias deltas spelled as tensors of one naming.

Every output LoRA module has scale 1 unless it is a verbatim copy: the
strengths and ``alpha / rank`` factors are folded into ``up`` and ``alpha`` is
written equal to the rank (kohya / ComfyUI); PEFT-style files carry no alpha
tensors, so their ``lora_adapter_metadata`` header says ``lora_alpha = r`` per
module (``rank_pattern`` / ``alpha_pattern`` for the ranks that differ from
the most common one).
"""
from __future__ import annotations

import json
from collections import Counter
from typing import Mapping, Optional

import torch

from .naming import PAIR_SUFFIXES

PEFT_COMPONENTS = ("unet", "transformer", "text_encoder", "text_encoder_2", "text_encoder_3")


def factor_shapes(up: torch.Tensor, down: torch.Tensor, weight_shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """Reshape a matrix pair (out×k, k×in·kernel) to the layer's layout: conv up (out, k, 1, …), down (k, in, kh, …)."""
    k = int(down.shape[0])
    if len(weight_shape) > 2:
        up = up.reshape(int(up.shape[0]), k, *([1] * (len(weight_shape) - 2)))
        down = down.reshape(k, *weight_shape[1:])
    return up, down


def lora_tensors(name: str, up: torch.Tensor, down: torch.Tensor, naming: str, *,
                 alpha: Optional[float] = None, mid: Optional[torch.Tensor] = None,
                 bias: Optional[torch.Tensor] = None) -> dict[str, torch.Tensor]:
    """The tensors of one LoRA module.  ``alpha`` None means alpha = rank (scale 1)."""
    rank = int(down.shape[0])
    up_s, down_s = PAIR_SUFFIXES[naming]
    out: dict[str, torch.Tensor] = {}
    if naming == "peft":
        if mid is not None:
            raise ValueError("PEFT-style files hold no Tucker core; contract it first")
        if alpha is not None and alpha != rank:
            up = (up.float() * (alpha / rank)).to(up.dtype)
        out[name + up_s] = up
        out[name + down_s] = down
        if bias is not None:
            out[name + ".lora_B.bias"] = bias
        return out
    out[name + up_s] = up
    out[name + down_s] = down
    if mid is not None:
        out[name + ".lora_mid.weight"] = mid
    out[name + ".alpha"] = torch.tensor(float(rank if alpha is None else alpha), dtype=torch.float32)
    if bias is not None:
        out[name + ".diff_b"] = bias
    return out


def bias_tensors(name: str, bias: torch.Tensor) -> dict[str, torch.Tensor]:
    """A bias delta on its own (``diff_b``, read by our loader and ComfyUI's)."""
    return {name + ".diff_b": bias}


def peft_metadata(ranks: Mapping[str, int], biased: bool) -> dict[str, str]:
    """``lora_adapter_metadata`` saying scale 1 for every module (``lora_alpha = r``).

    Names that start with a diffusers component (``unet.``…) are packed per
    component as diffusers pipeline saves do (``unet.r``, ``unet.lora_alpha``…);
    others get one flat config.
    """
    if not ranks:
        return {}
    by_comp: dict[str, dict[str, int]] = {}
    for name, r in ranks.items():
        head, _, rest = name.partition(".")
        if head in PEFT_COMPONENTS and rest:
            by_comp.setdefault(head, {})[rest] = r
        else:
            by_comp.setdefault("", {})[name] = r
    packed: dict[str, object] = {}
    for comp, paths in by_comp.items():
        default = Counter(paths.values()).most_common(1)[0][0]
        cfg = {"peft_type": "LORA", "r": default, "lora_alpha": default,
               "rank_pattern": {p: r for p, r in paths.items() if r != default},
               "alpha_pattern": {p: r for p, r in paths.items() if r != default},
               "target_modules": sorted(paths), "lora_bias": biased, "use_dora": False,
               "use_rslora": False, "init_lora_weights": True, "lora_dropout": 0.0,
               "fan_in_fan_out": False, "bias": "none"}
        if comp:
            packed.update({f"{comp}.{k}": v for k, v in cfg.items()})
        else:
            packed.update(cfg)
    return {"lora_adapter_metadata": json.dumps(packed, sort_keys=True)}
