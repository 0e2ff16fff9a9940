"""Well-known safetensors header metadata of LoRA files, parsed once.

All header values are strings.  Sources read:

* kohya sd-scripts / LyCORIS kohya wrapper ``ss_*``: ``ss_network_module``,
  ``ss_network_dim``, ``ss_network_alpha``, ``ss_network_args`` (JSON, with the
  LyCORIS ``algo`` and ``dora_wd``), ``ss_base_model_version``,
  ``ss_sd_model_name``, ``ss_v2``, ``ss_output_name``, ``ss_tag_frequency``
  (JSON ``{dataset dir: {tag: count}}`` → trigger words, most frequent first);
* diffusers ``lora_adapter_metadata`` (JSON of the PEFT ``LoraConfig``, flat or
  packed per component as ``unet.r``…);
* Stability's model spec ``modelspec.*`` (``architecture``, ``title``,
  ``trigger_phrase``);
* IC-LoRA ``reference_downscale_factor`` / ``reference_temporal_scale_factor``
  (a float ≥ 1; anything else gives None and a warning).

This is for display, type hints and family checks only: the scale of a LoRA
always comes from its tensors (see ``formats/lora.py``), never from here.
Malformed values never raise; they become ``warnings``.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any, Mapping, Optional

from .jsontext import JsonNestingError, loads_bounded

# Trigger words kept from ss_tag_frequency (a caption set can have thousands of tags).
MAX_TRIGGER_WORDS = 64

ICLORA_SPATIAL_KEY = "reference_downscale_factor"
ICLORA_TEMPORAL_KEY = "reference_temporal_scale_factor"


@dataclass(frozen=True)
class LoraMetadata:
    trigger_words: tuple[str, ...] = ()
    # Family names as resolve/family.py spells them where both know one:
    # "sd1", "sd2", "sdxl", "sd3", "flux", "flux2", "chroma", "wan", "ltxv", "ltx2", "qwen_image", …
    trained_base: Optional[str] = None
    network_module: Optional[str] = None    # "networks.lora", "lycoris.kohya", "peft", …
    network_dim: Optional[int] = None
    network_alpha: Optional[float] = None
    algo: Optional[str] = None              # "lora", "locon", "loha", "lokr", "dylora", "oft", …
    dora: bool = False
    iclora_downscale: Optional[float] = None
    iclora_temporal: Optional[float] = None
    title: Optional[str] = None
    warnings: tuple[str, ...] = ()


# ---------------------------------------------------------------- base model

# (pattern, family), most specific first; matched against lower-cased strings.
BASE_PATTERNS: tuple[tuple[str, str], ...] = (
    (r"sdxl|stable-diffusion-xl|sd_xl|sd-xl|pony|illustrious", "sdxl"),
    (r"(^|[^a-z])sd[-_ ]?3|stable-diffusion-v3|stable-diffusion-3", "sd3"),
    (r"flux[-_. ]?2", "flux2"),
    (r"chroma", "chroma"),
    (r"flux", "flux"),
    (r"(^|[^a-z])wan[-_ ]?2|(^|[^a-z])wan([^a-z]|$)", "wan"),
    (r"ltx[-_ ]?2(?![0-9.]*b)", "ltx2"),     # LTX-2, not "ltx-video-2b" (LTX-Video 2B)
    (r"ltx", "ltxv"),
    (r"hunyuan[-_ ]?video|hunyuanvideo|framepack", "hunyuan_video"),
    (r"hunyuan", "hunyuan_image"),
    (r"qwen", "qwen_image"),
    (r"z[-_]?image", "z_image"),
    (r"lumina", "lumina2"),
    (r"cascade", "cascade"),
    (r"pixart", "pixart"),
    (r"auraflow", "auraflow"),
    (r"sd[-_ ]?v?2|stable-diffusion-v2|v2-1|768-v", "sd2"),
    (r"sd[-_ ]?v?1|stable-diffusion-v1|v1-5|v1-4|sd15", "sd1"),
)


def base_family(text: Optional[str]) -> Optional[str]:
    """Map an architecture string, base-model version or checkpoint name to a family."""
    if not text:
        return None
    low = text.strip().lower()
    for pattern, family in BASE_PATTERNS:
        if re.search(pattern, low):
            return family
    return None


# ---------------------------------------------------------------- helpers

def _json(raw: Optional[str], key: str, warnings: list[str]) -> Any:
    if raw is None or raw == "":
        return None
    try:
        return loads_bounded(raw)
    except JsonNestingError as e:
        warnings.append(f"metadata {key} is not valid JSON ({e}); ignored")
        return None
    except (json.JSONDecodeError, TypeError):
        warnings.append(f"metadata {key} is not valid JSON; ignored")
        return None


def _number(raw: Any, key: str, warnings: list[str]) -> Optional[float]:
    if raw is None:
        return None
    text = str(raw).strip()
    if text.lower() in ("", "none", "null", "dynamic"):
        return None
    try:
        value = float(text)
    except ValueError:
        warnings.append(f"metadata {key}={raw!r} is not a number; ignored")
        return None
    if not math.isfinite(value):
        warnings.append(f"metadata {key}={raw!r} is not finite; ignored")
        return None
    return value


def _truthy(raw: Any) -> bool:
    return str(raw).strip().lower() in ("true", "1", "yes")


def _iclora_factor(meta: Mapping[str, str], key: str, warnings: list[str]) -> Optional[float]:
    raw = meta.get(key)
    if raw is None:
        return None
    try:
        value = float(str(raw).strip())
    except ValueError:
        warnings.append(f"IC-LoRA metadata {key}={raw!r} is not a number; ignored")
        return None
    if not math.isfinite(value) or value < 1:
        hint = " (a value below 1 looks like a scale: 0.5 means factor 2)" if 0 < value < 1 else ""
        warnings.append(f"IC-LoRA metadata {key}={raw!r} must be a number ≥ 1{hint}; ignored")
        return None
    return value


def _trigger_words(meta: Mapping[str, str], warnings: list[str]) -> tuple[str, ...]:
    words: list[str] = []
    seen: set[str] = set()

    def add(word: str) -> None:
        w = word.strip()
        if w and w.lower() not in seen:
            seen.add(w.lower())
            words.append(w)

    phrase = meta.get("modelspec.trigger_phrase")
    if phrase:
        for w in phrase.split(","):
            add(w)
    freq = _json(meta.get("ss_tag_frequency"), "ss_tag_frequency", warnings)
    if isinstance(freq, dict):
        totals: dict[str, float] = {}
        order: dict[str, int] = {}
        for tags in freq.values():
            if not isinstance(tags, dict):
                continue
            for tag, count in tags.items():
                tag = str(tag).strip()
                try:
                    n = float(count)
                except (TypeError, ValueError):
                    continue
                if not tag or not math.isfinite(n):
                    continue
                totals[tag] = totals.get(tag, 0.0) + n
                order.setdefault(tag, len(order))
        # Most frequent first; ties keep the file's order (stable and deterministic).
        for tag in sorted(totals, key=lambda t: (-totals[t], order[t]))[:MAX_TRIGGER_WORDS]:
            add(tag)
    elif freq is not None:
        warnings.append("metadata ss_tag_frequency is not a mapping; ignored")
    return tuple(words)


def _peft_config(meta: Mapping[str, str], warnings: list[str]) -> Optional[dict]:
    cfg = _json(meta.get("lora_adapter_metadata"), "lora_adapter_metadata", warnings)
    if cfg is None:
        return None
    if not isinstance(cfg, dict):
        warnings.append("metadata lora_adapter_metadata is not a mapping; ignored")
        return None
    if "r" in cfg or "lora_alpha" in cfg:
        return cfg
    # diffusers pipeline saves pack one config per component: "unet.r", "transformer.lora_alpha".
    components: dict[str, dict] = {}
    for key, value in cfg.items():
        comp, _, field = key.partition(".")
        if field:
            components.setdefault(comp, {})[field] = value
    for comp in ("transformer", "unet", "prior", "text_encoder", "text_encoder_2"):
        if comp in components:
            return components[comp]
    return next(iter(components.values()), None)


# ---------------------------------------------------------------- entry point

def read_metadata(metadata: Mapping[str, str] | None) -> LoraMetadata:
    """Parse the header of one LoRA file; never raises on bad values."""
    meta = {str(k): ("" if v is None else str(v)) for k, v in dict(metadata or {}).items()}
    warnings: list[str] = []

    network_module = meta.get("ss_network_module") or None
    dim = _number(meta.get("ss_network_dim"), "ss_network_dim", warnings)
    alpha = _number(meta.get("ss_network_alpha"), "ss_network_alpha", warnings)
    algo: Optional[str] = None
    dora = False

    args = _json(meta.get("ss_network_args"), "ss_network_args", warnings)
    if isinstance(args, dict):
        if args.get("algo"):
            algo = str(args["algo"]).strip().lower()
        dora = _truthy(args.get("dora_wd", False))
    elif args is not None:
        warnings.append("metadata ss_network_args is not a mapping; ignored")

    if algo is None and network_module:
        module = network_module.lower()
        for needle, name in (("dylora", "dylora"), ("oft", "oft"), ("lycoris", "lora"), ("lora", "lora")):
            if needle in module:
                algo = name
                break

    cfg = _peft_config(meta, warnings)
    if cfg is not None:
        network_module = network_module or "peft"
        if dim is None:
            dim = _number(cfg.get("r"), "lora_adapter_metadata.r", warnings)
        if alpha is None:
            alpha = _number(cfg.get("lora_alpha"), "lora_adapter_metadata.lora_alpha", warnings)
        algo = algo or "lora"
        dora = dora or bool(cfg.get("use_dora"))

    network_dim = None
    if dim is not None:
        if dim == int(dim) and dim >= 0:
            network_dim = int(dim)
        else:
            warnings.append(f"metadata network dim {dim!r} is not a whole number; ignored")

    trained_base = None
    for key in ("modelspec.architecture", "ss_base_model_version", "ss_sd_model_name",
                "ss_sd_model_hash_name"):
        trained_base = base_family(meta.get(key))
        if trained_base:
            break
    if trained_base is None and _truthy(meta.get("ss_v2", "")):
        trained_base = "sd2"

    title = meta.get("modelspec.title") or meta.get("ss_output_name") or None

    return LoraMetadata(
        trigger_words=_trigger_words(meta, warnings),
        trained_base=trained_base,
        network_module=network_module,
        network_dim=network_dim,
        network_alpha=alpha,
        algo=algo,
        dora=dora,
        iclora_downscale=_iclora_factor(meta, ICLORA_SPATIAL_KEY, warnings),
        iclora_temporal=_iclora_factor(meta, ICLORA_TEMPORAL_KEY, warnings),
        title=title,
        warnings=tuple(warnings),
    )
