"""Small helpers the family tables share: templated renames, row counts, fused-qkv slices.

A rename is a pair of templates, original naming first, diffusers second, in
which ``{n}`` stands for a block number, e.g.
``("double_blocks.{n}.img_attn.proj", "transformer_blocks.{n}.attn.to_out.0")``.
A template matches a whole module path, or a path prefix when it ends with
``.*`` (the rest is carried over unchanged).
"""
from __future__ import annotations

import re
from typing import Iterator, Optional, Sequence, Union

from ..ir import Slice
from .entries import Alias, Hint, Target
from .model import DIFFUSION, ModelIndex, Module

# A file trained on a fused weight (q, k and v in one module) met by a model with
# separate projections: the one hint every family gives for it.
SPLIT_UNSUPPORTED = Hint("unsupported kind", "the file patches a fused weight (q, k and v in one module); "
                         "this model keeps separate q/k/v projections and splitting the patch is not supported")


def _compile(template: str) -> tuple[re.Pattern, str]:
    prefix = template.endswith(".*")
    body = template[:-2] if prefix else template
    pattern = re.escape(body).replace(r"\{n\}", r"(?P<n>\d+)")
    pattern = "^" + pattern + (r"(?P<rest>\..+)?$" if prefix else "$")
    return re.compile(pattern), body


class Renames:
    """Bidirectional templated renames between two namings."""

    def __init__(self, pairs: Sequence[tuple[str, str]]):
        self._fwd = [(_compile(a)[0], _compile(b)[1]) for a, b in pairs]
        self._bwd = [(_compile(b)[0], _compile(a)[1]) for a, b in pairs]

    @staticmethod
    def _apply(table, path: str) -> Optional[str]:
        for pattern, out in table:
            m = pattern.match(path)
            if m:
                groups = m.groupdict()
                res = out.replace("{n}", groups.get("n") or "")
                return res + (groups.get("rest") or "")
        return None

    def to_diffusers(self, path: str) -> Optional[str]:
        return self._apply(self._fwd, path)

    def to_original(self, path: str) -> Optional[str]:
        return self._apply(self._bwd, path)


def renamed_aliases(index: ModelIndex, renames: Renames, model_is_original: bool) -> Iterator[Alias]:
    """The other naming of every diffusion module that has one."""
    for path, mod in index.component(DIFFUSION).items():
        other = renames.to_diffusers(path) if model_is_original else renames.to_original(path)
        if other is not None and other != path:
            yield DIFFUSION, other, Target(mod)


def rows(mod: Optional[Module]) -> int:
    return int(mod.weight_shape[0]) if mod is not None and mod.weight_shape else 0


def fused_slices(fused: Module, parts: Union[int, Sequence[int]]) -> tuple[Target, ...]:
    """Targets for consecutive row slices of a fused weight (q, k, v[, mlp] laid end to end).

    ``parts``: the number of equal parts, or each part's row count.
    """
    if isinstance(parts, int):
        h = rows(fused) // parts
        parts = [h] * parts
    out, start = [], 0
    for length in parts:
        out.append(Target(fused, Slice(0, start, int(length))))
        start += int(length)
    return tuple(out)
