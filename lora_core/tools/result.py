"""What a tool hands back before anything is written."""
from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Mapping

import torch


@dataclass(frozen=True)
class LayerReport:
    """One output module.

    ``method``: ``"concat"`` (exact rank concatenation), ``"svd"`` (truncated
    SVD of a low-rank product), ``"dense-svd"`` (SVD of a dense ΔW: non-LoRA
    kinds, DoRA, extraction), ``"copy"`` (tensors renamed as they are),
    ``"diff"`` (a dense delta kept as is) or ``"bias"`` (a bias delta only).
    ``rel_error`` = ‖ΔW − ΔW_out‖_F / ‖ΔW‖_F; ``energy`` = Σ kept σ² / Σ σ².
    """
    name: str
    method: str
    rank: int
    rel_error: float = 0.0
    energy: float = 1.0
    kinds: tuple[str, ...] = ()

    def to_json(self) -> dict:
        return {"name": self.name, "method": self.method, "rank": self.rank,
                "rel_error": self.rel_error, "energy": self.energy, "kinds": list(self.kinds)}


@dataclass(frozen=True)
class ToolResult:
    tensors: Mapping[str, torch.Tensor]
    layers: tuple[LayerReport, ...]
    metadata: Mapping[str, str] = field(default_factory=dict)
    notes: tuple[str, ...] = ()

    def summary(self) -> dict:
        errs = [l.rel_error for l in self.layers]
        ranks = [l.rank for l in self.layers if l.rank]
        methods: dict[str, int] = {}
        for l in self.layers:
            methods[l.method] = methods.get(l.method, 0) + 1
        worst = max(self.layers, key=lambda l: l.rel_error, default=None)
        return {
            "modules": len(self.layers),
            "tensors": len(self.tensors),
            "ranks": sorted(set(ranks)),
            "methods": methods,
            "rel_error": {"max": max(errs, default=0.0), "mean": statistics.fmean(errs) if errs else 0.0,
                          "worst_layer": worst.name if worst is not None and worst.rel_error > 0 else None},
            "energy_min": min((l.energy for l in self.layers), default=1.0),
            "notes": list(self.notes),
        }

    def to_json(self) -> dict:
        return self.summary() | {"layers": [l.to_json() for l in self.layers]}
