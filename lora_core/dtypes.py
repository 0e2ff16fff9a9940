"""The storage dtypes the engine treats specially, in one list.

``FLOAT8``: the float8 formats torch knows (``fn``/``fnuz`` variants where
this torch build has them).  The merge patcher rounds into them
stochastically; the ComfyUI host counts them as quantized, so "auto" mode
runs a side path instead of merging.
"""
from __future__ import annotations

import torch

FLOAT8_NAMES = ("float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz")
FLOAT8: tuple[torch.dtype, ...] = tuple(getattr(torch, n) for n in FLOAT8_NAMES if hasattr(torch, n))


def is_float8(dtype: torch.dtype) -> bool:
    return dtype in FLOAT8


def is_quantized_dtype(dtype: torch.dtype) -> bool:
    """float8 or not a float at all (int8/uint8 packed weights): merging into it is lossy or impossible."""
    return dtype in FLOAT8 or not dtype.is_floating_point


__all__ = ["FLOAT8", "FLOAT8_NAMES", "is_float8", "is_quantized_dtype"]
