"""IC-LoRA parameters from a LoRA file's safetensors header."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping, Optional

from .errors import ICLoraError

SPATIAL_KEY = "reference_downscale_factor"
TEMPORAL_KEY = "reference_temporal_scale_factor"


@dataclass(frozen=True)
class ICParams:
    reference_downscale_factor: int = 1
    reference_temporal_scale_factor: int = 1
    found: tuple[str, ...] = ()          # header keys that were used
    warnings: tuple[str, ...] = field(default_factory=tuple)

    def as_dict(self) -> dict:
        return {SPATIAL_KEY: self.reference_downscale_factor,
                TEMPORAL_KEY: self.reference_temporal_scale_factor}


def _find(meta: Mapping[str, str], name: str) -> tuple[str, str] | None:
    if name in meta:
        return name, meta[name]
    for key in sorted(meta):  # namespaced variants, e.g. "ss_reference_downscale_factor"
        if key.endswith(name):
            return key, meta[key]
    return None


def _parse_factor(raw, key: str, warnings: list[str]) -> int:
    try:
        value = float(str(raw).strip())
    except ValueError:
        warnings.append(f"IC-LoRA header {key}={raw!r} is not a number; using 1")
        return 1
    if not math.isfinite(value) or value < 1 or abs(value - round(value)) > 1e-6:
        hint = " (a value below 1 looks like a scale, e.g. 0.5 means factor 2)" if 0 < value < 1 else ""
        warnings.append(f"IC-LoRA header {key}={raw!r} is not an integer ≥ 1{hint}; using 1")
        return 1
    return int(round(value))


def parse_ic_metadata(meta: Mapping[str, str] | None) -> ICParams:
    """Read the reference factors; missing keys mean 1, invalid values warn and mean 1.

    The result does not depend on the LoRA's strength.
    """
    meta = dict(meta or {})
    warnings: list[str] = []
    found: list[str] = []
    factors = {}
    for name in (SPATIAL_KEY, TEMPORAL_KEY):
        hit = _find(meta, name)
        if hit is None:
            factors[name] = 1
            continue
        found.append(hit[0])
        factors[name] = _parse_factor(hit[1], hit[0], warnings)
    if not any(f.endswith(SPATIAL_KEY) for f in found):
        warnings.append(f"no {SPATIAL_KEY} in the LoRA header; assuming 1 (full-resolution reference)")
    return ICParams(reference_downscale_factor=factors[SPATIAL_KEY],
                    reference_temporal_scale_factor=factors[TEMPORAL_KEY],
                    found=tuple(found), warnings=tuple(warnings))


def merge_factors(params: list[tuple[str, int]]) -> int:
    """One model can only use one reference factor: refuse IC-LoRAs that disagree.

    ``params`` is a list of (lora name, factor); returns the common factor (1 if empty).
    """
    distinct = {f for _, f in params}
    if len(distinct) > 1:
        listing = ", ".join(f"{n} (×{f})" for n, f in params)
        raise ICLoraError(f"IC-LoRAs with different reference_downscale_factor on one model: {listing}",
                          fix="use IC-LoRAs trained with the same reference size together, or disable one")
    return distinct.pop() if distinct else 1


@dataclass(frozen=True)
class ICLora:
    """The ``IC_LORA`` value passed from an IC-LoRA loader (or a stack) to the guide nodes.

    ``enabled`` is False when the IC-LoRA is off or at strength 0; the guides
    fed by it then add nothing.  ``warnings`` are the header problems found
    while reading the factors (for the caller's log).
    """
    reference_downscale_factor: int = 1
    reference_temporal_scale_factor: int = 1
    lora: Optional[str] = None
    enabled: bool = True
    strength: float = 1.0
    auto_crop: bool = True
    warnings: tuple[str, ...] = field(default=(), compare=False)

    @property
    def active(self) -> bool:
        return self.enabled and self.strength != 0.0

    @classmethod
    def coerce(cls, value) -> "ICLora":
        """An ICLora from an ICLora, None (a normal k = 1 IC-LoRA) or a mapping of its fields."""
        if value is None:
            return cls()
        if isinstance(value, cls):
            return value
        if isinstance(value, Mapping):
            known = {k: value[k] for k in cls.__dataclass_fields__ if k in value and k != "warnings"}
            return _ic_lora(**known)
        raise ICLoraError(f"the ic_lora input is a {type(value).__name__}, not IC-LoRA parameters",
                          fix="connect the ic_lora output of IC-LoRA Loader or Apply LoRA Stack")


def _ic_lora(reference_downscale_factor=1, reference_temporal_scale_factor=1, lora=None, enabled=True,
             strength=1.0, auto_crop=True, warnings=()) -> ICLora:
    """The one constructor of :class:`ICLora` values (types normalised here)."""
    return ICLora(int(reference_downscale_factor or 1), int(reference_temporal_scale_factor or 1),
                  None if lora is None else str(lora), bool(enabled), float(strength), bool(auto_crop),
                  tuple(warnings))


def ic_lora_for_file(name: Optional[str], meta: Mapping[str, str] | None, strength: float = 1.0,
                     enabled: bool = True, auto_crop: bool = True) -> ICLora:
    """The IC_LORA of one file, read from its header whatever the strength."""
    p = parse_ic_metadata(meta)
    return _ic_lora(p.reference_downscale_factor, p.reference_temporal_scale_factor, name,
                    bool(enabled) and float(strength) != 0.0, strength, auto_crop, p.warnings)


def ic_lora_for_stack_rows(rows) -> Optional[ICLora]:
    """One IC_LORA for the IC-LoRA rows of a stack.

    ``rows``: iterable of ``(name, metadata, strength, on)`` for the rows
    marked as IC-LoRA, each read from its own file header (so a later LoRA
    never hides an IC-LoRA's factor).  Returns None if there is none.  The
    result is enabled if any IC row is on with a non-zero strength; its factor
    is common to the enabled rows (mixed factors raise).  When every IC row
    is off, the guides fed by it are dropped too.
    """
    rows = list(rows)
    if not rows:
        return None
    parsed = [(name, parse_ic_metadata(meta), float(strength), bool(on)) for name, meta, strength, on in rows]
    active = [(n, p) for n, p, s, on in parsed if on and s != 0.0]
    pool = active or [(n, p) for n, p, _, _ in parsed]
    k = merge_factors([(n, p.reference_downscale_factor) for n, p in pool]) if active else \
        pool[0][1].reference_downscale_factor
    kt = {p.reference_temporal_scale_factor for _, p in pool}
    if len(kt) > 1:
        raise ICLoraError("IC-LoRAs with different reference_temporal_scale_factor in one stack",
                          fix="disable one of them")
    return _ic_lora(k, kt.pop(), ", ".join(n for n, _ in pool), bool(active),
                    max((s for _, _, s, on in parsed if on), default=0.0), True,
                    [w for _, p in pool for w in p.warnings])
