"""One LoRA → a lower rank, by SVD (to a rank or a kept-energy threshold).

Each module's ΔW = c·B·A is re-factorised through
:func:`.svd.low_rank_of_product` (never formed densely); other kinds go through
their dense ΔW.  The report gives ‖ΔW − ΔW_r‖_F / ‖ΔW‖_F and the energy kept
per layer, which fall and rise with the rank.
"""
from __future__ import annotations

from typing import Optional

import torch

from ..errors import PatchbayError
from .merge import Model, Progress, Source, merge
from .result import ToolResult


def resize(path: str, *, rank: Optional[int] = None, energy: Optional[float] = None, model: Model = None,
           naming: Optional[str] = None, dtype: Optional[torch.dtype] = None, progress: Progress = None,
           with_hashes: bool = True) -> ToolResult:
    if rank is None and energy is None:
        raise PatchbayError("resize needs a target", fix="pass --rank R or --energy E (e.g. 0.99)")
    return merge([Source(path, 1.0)], rank=rank, energy=energy, model=model, naming=naming, dtype=dtype,
                 progress=progress, tool="resize", with_hashes=with_hashes)
