"""What a family table says about one alias: the vocabulary every family module shares.

* :class:`Target`: the alias is this model module (or one fused-qkv slice of it);
* :class:`Hint`: a name the family recognises but cannot place on this model,
  with the reason reported instead of "unknown name";
* :data:`Alias`: what a family module yields, ``(component, alias path, entry)``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

from ..ir import Slice
from .model import Module


@dataclass(frozen=True)
class Target:
    module: Module
    slice: Optional[Slice] = None


@dataclass(frozen=True)
class Hint:
    """A name a family recognises but cannot place on this model.

    ``shadows``: the hint wins over the model's own module of the same name
    (OpenCLIP's ``text_projection`` is spelled like HF's but stored transposed).
    """
    reason: str
    detail: str
    shadows: bool = False


Entry = Union[Target, Hint]
# What a family module yields: (component, alias path, entry).
Alias = tuple[str, str, Entry]
