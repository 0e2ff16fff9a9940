"""The ΔW of a whole stack on one parameter, as pure functions.

    D = Σ_rows [s₁c₁B₁ | s₂c₂B₂ | …]·[A₁; A₂; …]      plain LoRAs, one GEMM per row group
      + Σ sᵢ·ΔWᵢ(W₀)                                  other kinds and DoRA (lora_core.kinds)
      + Σ sᵢ·(cᵢ·bᵢ + Δbᵢ(b₀))                        bias patches and kind bias rules (PEFT IA3)

so the patched weight is ``W₀ + D`` (fp32 accumulation, one rounding by the
caller).  A row group is the whole parameter or one fused-qkv slice.  The
merge patcher (``patcher.py``) shares the grouping and shape rules below and
runs the same sums block-wise in place; hosts that write weights themselves
(ComfyUI's ModelPatcher) call :func:`stack_delta`.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Callable, Iterable, Optional

import torch

from .errors import PatchbayError, ShapeMismatchError
from .ir import Slice
from .kinds import bias_delta, bias_reads_base, changes_bias, delta_weight, factors, is_low_rank, reads_base
from .plan import Contribution

FactorSource = Callable[[Contribution, torch.Size, torch.device], tuple[torch.Tensor, torch.Tensor]]


def is_plain_lora(c: Contribution) -> bool:
    """A weight contribution that is one ``B·A`` pair (the kinds table decides)."""
    return c.part == "weight" and is_low_rank(c.resolved.patch)


def base_independent(contribs: Iterable[Contribution]) -> bool:
    """True when D does not read W₀ (so a cached D is valid for any base)."""
    for c in contribs:
        p = c.resolved.patch
        if bias_reads_base(p) if c.part == "bias" else reads_base(p):
            return False
    return True


def target_shape(key: str, contribs: Iterable[Contribution], shape: torch.Size) -> torch.Size:
    """The weight's shape after patching (``reshape_weight`` may enlarge it)."""
    contribs = tuple(contribs)
    shapes = {tuple(c.resolved.patch.reshape) for c in contribs
              if c.part == "weight" and c.resolved.patch.reshape}
    if not shapes:
        return torch.Size(shape)
    if len(shapes) > 1:
        raise ShapeMismatchError(f"LoRAs ask to reshape this weight to different shapes {sorted(shapes)}",
                                 key=key, fix="use only one of these LoRAs")
    new = torch.Size(next(iter(shapes)))
    if len(new) != len(shape) or any(n < o for n, o in zip(new, shape)):
        files = ", ".join(sorted({c.file for c in contribs if c.file})) or None
        raise ShapeMismatchError(f"reshape_weight {tuple(new)} cannot hold the weight {tuple(shape)}",
                                 file=files, key=key)
    return new


def view_shape(slice_: Optional[Slice], shape: torch.Size) -> torch.Size:
    if slice_ is None:
        return torch.Size(shape)
    dims = list(shape)
    dims[slice_.dim] = slice_.length
    return torch.Size(dims)


def row_slice(key: str, c: Contribution, shape: torch.Size) -> Optional[Slice]:
    """The rows a contribution writes (None = the whole parameter), checked against ``shape``."""
    s = c.resolved.slice
    if s is None:
        return None
    if c.part == "bias" and (len(shape) != 1 or s.dim != 0):
        return None  # a bias of a sliced module that is not itself sliced
    if s.dim >= len(shape) or s.start < 0 or s.start + s.length > shape[s.dim]:
        raise ShapeMismatchError(f"slice {s.start}:{s.start + s.length} of dim {s.dim} lies outside "
                                 f"the parameter's shape {tuple(shape)}", file=c.file or None, key=key)
    return s


def group_by_rows(key: str, contribs: Iterable[Contribution],
                  shape: torch.Size) -> "OrderedDict[Optional[Slice], list[Contribution]]":
    groups: "OrderedDict[Optional[Slice], list[Contribution]]" = OrderedDict()
    for c in contribs:
        groups.setdefault(row_slice(key, c, shape), []).append(c)
    return groups


def plain_factors(c: Contribution, view: torch.Size, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    b, a = factors(c.resolved.patch, view)
    return b.to(device=device, dtype=torch.float32), a.to(device=device, dtype=torch.float32)


def concat_factors(key: str, loras: list[Contribution], view: torch.Size, device: torch.device,
                   factor_source: FactorSource = plain_factors) -> tuple[torch.Tensor, torch.Tensor]:
    """``([s₁c₁B₁ | s₂c₂B₂ | …], [A₁; A₂; …])`` in fp32 for the plain LoRAs of one row group."""
    rows = view[0] if len(view) else 1
    cols = view.numel() // rows if rows else 0
    bs, as_ = [], []
    for c in loras:
        b, a = factor_source(c, view, device)
        if b.shape[0] != rows or a.shape[1] != cols or b.shape[1] != a.shape[0]:
            raise ShapeMismatchError(
                f"LoRA module {c.resolved.patch.name!r} gives ΔW {b.shape[0]}×{a.shape[1]} but the "
                f"target is {tuple(view)}", file=c.file or None, key=key,
                fix="this LoRA was made for another model")
        bs.append(b * (c.strength * c.resolved.patch.scale))
        as_.append(a)
    b_cat = bs[0] if len(bs) == 1 else torch.cat(bs, dim=1)
    a_cat = as_[0] if len(as_) == 1 else torch.cat(as_, dim=0)
    return b_cat, a_cat


def kind_delta(key: str, c: Contribution, base: torch.Tensor) -> torch.Tensor:
    """ΔW(W₀) at strength 1 of one non-plain weight contribution (fp32, base-shaped),
    with an error naming the file and the key when the module does not fit."""
    patch = c.resolved.patch
    try:
        delta = delta_weight(patch, base.to(torch.float32)).to(base.device)
    except PatchbayError:
        raise
    except (RuntimeError, ValueError, IndexError) as e:
        raise ShapeMismatchError(
            f"{patch.kind.value if patch.kind else 'patch'} module {patch.name!r} does not fit the "
            f"weight {tuple(base.shape)}: {str(e).splitlines()[0][:200]}", file=c.file or None, key=key,
            fix="this LoRA was made for another model") from None
    if delta.shape != base.shape:
        raise ShapeMismatchError(f"module {patch.name!r} gives ΔW {tuple(delta.shape)} for a weight "
                                 f"{tuple(base.shape)}", file=c.file or None, key=key)
    return delta


def bias_part(key: str, c: Contribution, base: Optional[torch.Tensor], view: torch.Size,
              device: torch.device) -> torch.Tensor:
    """Δb at strength 1 of one bias contribution (fp32, ``view``-shaped): the file's
    bias tensor and the kind's bias rule on b₀ (``base``, read only by that rule)."""
    patch = c.resolved.patch
    d = bias_delta(patch, base).to(device=device, dtype=torch.float32)
    if d.numel() != view.numel():
        raise ShapeMismatchError(f"bias patch of module {patch.name!r} has {d.numel()} values, the target "
                                 f"has {view.numel()}", file=c.file or None, key=key)
    return d.reshape(view)


def _group_delta(key: str, items: list[Contribution], view: torch.Size, base_view: Optional[torch.Tensor],
                 device: torch.device, factor_source: FactorSource) -> Optional[torch.Tensor]:
    loras = [c for c in items if is_plain_lora(c)]
    out: Optional[torch.Tensor] = None
    if loras:
        b_cat, a_cat = concat_factors(key, loras, view, device, factor_source)
        out = torch.mm(b_cat, a_cat).view(view)
    for c in items:
        if is_plain_lora(c):
            continue
        patch = c.resolved.patch
        if (c.part == "bias" and not changes_bias(patch)) or (c.part == "weight" and patch.weight is None):
            continue
        if c.part == "bias":
            d = bias_part(key, c, base_view, view, device) * c.strength
        else:
            base = base_view if base_view is not None else torch.zeros(view, device=device)
            d = kind_delta(key, c, base) * c.strength
        out = d if out is None else out.add_(d)
    return out


def stack_delta(key: str, contribs: tuple[Contribution, ...], base: torch.Tensor,
                shape: Optional[torch.Size] = None,
                factor_source: FactorSource = plain_factors) -> torch.Tensor:
    """D (fp32, ``shape``) such that the patched weight is ``W₀ + D``.

    ``base``: W₀ (any float dtype, any device; read only by base-dependent
    kinds, never written).  ``factor_source`` lets a host serve the fp32
    factors from a device cache.
    """
    shape = torch.Size(shape if shape is not None else base.shape)
    device = base.device
    groups = group_by_rows(key, contribs, shape)
    base32 = None
    if not base_independent(contribs):
        base32 = base.to(torch.float32)
        if base32.shape != shape:
            padded = torch.zeros(shape, dtype=torch.float32, device=device)
            padded[tuple(slice(0, n) for n in base32.shape)].copy_(base32)
            base32 = padded
    if len(groups) == 1 and None in groups:
        out = _group_delta(key, groups[None], shape, base32, device, factor_source)
        return out if out is not None else torch.zeros(shape, dtype=torch.float32, device=device)
    total = torch.zeros(shape, dtype=torch.float32, device=device)
    for s, items in groups.items():
        view = view_shape(s, shape)
        base_view = None
        if base32 is not None:
            base_view = base32 if s is None else base32.narrow(s.dim, s.start, s.length)
        d = _group_delta(key, items, view, base_view, device, factor_source)
        if d is not None:
            (total if s is None else total.narrow(s.dim, s.start, s.length)).add_(d)
    return total


def add_scaled_(out: torch.Tensor, d: torch.Tensor, scale: float = 1.0,
                scratch: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``out += fl(scale·d)`` in place: the product rounded once, then the sum rounded once.

    Two roundings, never a fused multiply-add, so the bits do not depend on
    how the tensor is cut (row blocks, vector width, threads): a host that
    rewrites a weight block by block gets exactly what a whole-tensor merge
    gets.  ``scratch`` (``d``-shaped fp32) takes the product without a new
    allocation.
    """
    if scale == 1.0:
        return out.add_(d)
    product = torch.mul(d, scale, out=scratch) if scratch is not None else torch.mul(d, scale)
    return out.add_(product)


def merged_weight(key: str, contribs: tuple[Contribution, ...], weight: torch.Tensor, *,
                  strength: float = 1.0, function: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
                  in_place: bool = False, out_dtype: Optional[torch.dtype] = None,
                  delta: Optional[torch.Tensor] = None, delta_scale: float = 1.0) -> torch.Tensor:
    """The merged weight of one parameter: ``W' = W₀ + strength · function(D)``, fp32 accumulation.

    ``weight`` is W₀ (any float dtype and device; never written unless
    ``in_place`` and it is already fp32 of the final shape).  ``D`` is
    :func:`stack_delta` of ``contribs``, or ``delta_scale · delta`` when the
    caller serves it from a cache (it must be that same D; a host caches the
    strength-free product ``B·A`` of a lone LoRA and passes its scale, see
    :func:`add_scaled_`).  A weight that a patch reshapes is zero-padded to
    :func:`target_shape` first.  The result is fp32 (one rounding at the end,
    by the caller) unless ``out_dtype`` is given.
    """
    shape = target_shape(key, contribs, weight.shape)
    d = stack_delta(key, contribs, weight, shape) if delta is None else delta
    scale = 1.0 if delta is None else float(delta_scale)
    if function is not None or (strength != 1.0 and scale != 1.0):
        d = d if scale == 1.0 else torch.mul(d, scale)
        scale = 1.0
    if function is not None:
        d = function(d)
    if weight.dtype == torch.float32 and weight.shape == shape and in_place:
        out = weight
    elif weight.shape == shape:
        out = weight.to(torch.float32, copy=True)
    else:
        out = torch.zeros(shape, dtype=torch.float32, device=weight.device)
        out[tuple(slice(0, n) for n in weight.shape)].copy_(weight)
    if strength == 1.0:
        add_scaled_(out, d, scale)
    else:
        out.add_(d, alpha=strength)
    if out_dtype is not None and out.dtype != out_dtype:
        out = out.to(out_dtype)
    return out
