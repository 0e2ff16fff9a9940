"""Output side paths: kinds whose ΔW acts on the output axis only.

For such a kind ΔW·x is a linear map of the layer's own output, so the bypass
needs no weight at all::

    ΔW = (M − I)·W      ⇒     ΔW·x = (M − I)·(W·x) = side(y₀ − b)

with y₀ = W·x + b the frozen layer's output and M acting on the channel axis
(the last axis of a linear output, axis 1 of a conv output).  A side path is
an object with ``__call__(y, channel_axis) -> Δy`` (fp32, at scale 1 and
strength 1) and ``to(device) -> same map on device``.  The bias term
``side(b)`` is a constant the bypass computes once at install.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

Tensor = torch.Tensor


class OutputMap(Protocol):
    def __call__(self, y: Tensor, channel_axis: int) -> Tensor: ...

    def to(self, device: torch.device) -> "OutputMap": ...


@dataclass(frozen=True, eq=False)
class Scaled:
    """``scale · inner(y)`` (a module scale other than 1)."""
    inner: OutputMap
    scale: float

    def __call__(self, y: Tensor, channel_axis: int) -> Tensor:
        return self.inner(y, channel_axis) * self.scale

    def to(self, device: torch.device) -> "Scaled":
        return Scaled(self.inner.to(device), self.scale)
