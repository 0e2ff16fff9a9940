"""Does a patch fit the weight it was matched to?

Every kind's ΔW is read from its tensors' shapes alone (no tensor data is
touched, so meta tensors and memory-mapped files cost nothing here):

* LoRA: ``up.shape[0] × prod(down.shape[1:])`` (Tucker: ``in · prod(mid.shape[2:])``);
* LoHa: ``w1a.shape[0] × prod(w1b.shape[1:])`` (Tucker: ``w1a.shape[1] × w1b.shape[1]·prod(t1.shape[2:])``);
* LoKr: ``(a·c) × (b·d·k)`` from the two Kronecker factors;
* GLoRA: ``b1.shape[0] × prod(b2.shape[1:])``;
* OFT/BOFT: only the rotated axis is known (rows for LyCORIS, columns for PEFT);
* IA3: the vector's length on its axis;
* full / set: the stored tensor's element count, and its rows when it has any.

A weight is compared as (rows, columns) with conv kernels flattened into the
columns, which is how every kind builds its ΔW.
"""
from __future__ import annotations

import math
from typing import Optional

from ..ir import (BoftWeights, FullWeights, GloraWeights, Ia3Weights, LohaWeights, LokrWeights,
                  LoraWeights, ModulePatch, OftWeights, SetWeights, Slice)

# (rows, cols) with None where the kind does not fix that axis; "numel" checks
# the element count instead of the columns (dense kinds may be stored flat).
DeltaShape = tuple[Optional[int], Optional[int], Optional[int]]  # rows, cols, numel


def _prod(shape) -> int:
    return int(math.prod(shape))


def _pair(t_a, t_b, t_core=None) -> tuple[int, int]:
    """(rows, cols) of a low-rank pair; a Tucker core keeps its modes in dim 1."""
    if t_core is not None:
        return int(t_a.shape[1]), int(t_b.shape[1]) * _prod(t_core.shape[2:])
    return int(t_a.shape[0]), _prod(t_b.shape[1:])


def _matrix(t) -> tuple[int, int]:
    return int(t.shape[0]), _prod(t.shape[1:]) if t.dim() > 1 else 1


def delta_shape(patch: ModulePatch) -> Optional[DeltaShape]:
    """What the patch's ΔW looks like, or None when it has no weight adapter."""
    w = patch.weight
    if w is None:
        return None
    if isinstance(w, LoraWeights):
        rows = int(w.up.shape[0])
        if w.mid is not None:
            cols = int(w.down.shape[1]) * _prod(w.mid.shape[2:])
        else:
            cols = _prod(w.down.shape[1:])
        return rows, cols, None
    if isinstance(w, LohaWeights):
        rows, cols = _pair(w.w1a, w.w1b, w.t1)
        return rows, cols, None
    if isinstance(w, LokrWeights):
        if w.w1 is not None:
            a, b = _matrix(w.w1)
        elif w.w1a is not None and w.w1b is not None:
            a, b = int(w.w1a.shape[0]), _prod(w.w1b.shape[1:])
        else:
            return None, None, None
        if w.w2 is not None:
            c, d = _matrix(w.w2)
        elif w.w2a is not None and w.w2b is not None:
            c, d = _pair(w.w2a, w.w2b, w.t2)
        else:
            return None, None, None
        return a * c, b * d, None
    if isinstance(w, GloraWeights):
        return int(w.b1.shape[0]), _prod(w.b2.shape[1:]), None
    if isinstance(w, OftWeights):
        if w.layout == "lycoris":
            return int(w.blocks.shape[0]) * int(w.blocks.shape[-1]), None, None
        return None, None, None  # PEFT: packed blocks on the input axis (block_share repeats)
    if isinstance(w, BoftWeights):
        n, b = int(w.blocks.shape[1]), int(w.blocks.shape[-1])
        return (n * b, None, None) if w.layout == "lycoris" else (None, n * b, None)
    if isinstance(w, Ia3Weights):
        return (None, None, None)  # checked against the right axis in fits()
    if isinstance(w, (FullWeights, SetWeights)):
        t = w.diff if isinstance(w, FullWeights) else w.value
        return None, None, _prod(t.shape)
    return None, None, None


def target_shape(shape: tuple[int, ...], sl: Optional[Slice]) -> tuple[int, ...]:
    if sl is None:
        return tuple(shape)
    out = list(shape)
    out[sl.dim] = sl.length
    return tuple(out)


def describe(patch: ModulePatch) -> str:
    ds = delta_shape(patch)
    if ds is None:
        return "no weight"
    rows, cols, numel = ds
    if numel is not None:
        t = patch.weight.diff if isinstance(patch.weight, FullWeights) else patch.weight.value
        return str(tuple(int(s) for s in t.shape))
    if isinstance(patch.weight, Ia3Weights):
        return f"IA3 vector of {patch.weight.vector.numel()} on the {'input' if patch.weight.on_input else 'output'} axis"
    return f"({rows if rows is not None else '?'}, {cols if cols is not None else '?'})"


def weight_misfit(patch: ModulePatch, shape: tuple[int, ...]) -> Optional[str]:
    """None when the patch's ΔW fits ``shape`` (already narrowed to a slice), else why not."""
    w = patch.weight
    if w is None:
        return None
    if type(w) is LoraWeights and patch.reshape is None and w.mid is None and len(shape) > 1:
        # fast path for the common case (thousands of modules per file)
        down = w.down.shape
        if w.up.shape[0] == shape[0] and math.prod(down[1:]) == math.prod(shape[1:]):
            return None
    if patch.reshape is not None:
        # The weight is padded to ``reshape`` first (BFL control img_in); it may only grow.
        want = tuple(int(s) for s in patch.reshape)
        if len(want) != len(shape) or any(a < b for a, b in zip(want, shape)):
            return f"the file pads the weight to {want}, the model's is {shape}"
        shape = want
    rows = int(shape[0]) if shape else 1
    cols = _prod(shape[1:]) if len(shape) > 1 else 1
    numel = _prod(shape)
    if isinstance(w, Ia3Weights):
        n = int(w.vector.numel())
        axis_len = (int(shape[1]) if len(shape) > 1 else None) if w.on_input else rows
        if axis_len != n:
            return f"ΔW {describe(patch)} vs weight {shape}"
        return None
    ds = delta_shape(patch)
    if ds is None:
        return None
    d_rows, d_cols, d_numel = ds
    bad = ((d_rows is not None and d_rows != rows) or (d_cols is not None and d_cols != cols)
           or (d_numel is not None and d_numel != numel))
    if not bad and d_numel is not None:
        t = w.diff if isinstance(w, FullWeights) else w.value
        if t.dim() == len(shape) and tuple(int(s) for s in t.shape) != tuple(shape):
            bad = True
    if bad:
        return f"ΔW {describe(patch)} vs weight {tuple(shape)}"
    return None


def bias_misfit(patch: ModulePatch, shape: Optional[tuple[int, ...]]) -> Optional[str]:
    if patch.bias is None or shape is None:
        return None
    if _prod(patch.bias.shape) != _prod(shape):
        return f"bias {tuple(int(s) for s in patch.bias.shape)} vs {tuple(shape)}"
    return None
