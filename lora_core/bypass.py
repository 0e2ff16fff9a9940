"""Side path: run adapters next to the frozen layer instead of merging them.

    y = f(x) + Σᵢ sᵢ·hᵢ(x)

* Plain LoRAs on one module are rank-concatenated, so x is read once and
  written once: ``z = A_cat·x`` (R = Σ rᵢ), ``y += U·z`` with
  ``U = B_cat·diag(s_rank)`` — one GEMM down, one GEMM up.  ``B_cat`` holds
  each file's alpha/rank and block multiplier, zero rows outside a fused-qkv
  slice (kept per slice instead when padding would more than double the up
  GEMM); ``s_rank`` is the entry strength repeated over the entry's ranks.
  When all samples share one strength, ``U`` is cached in the activation
  dtype per strength state (the strength tensor's version counter), so a
  forward costs the two GEMMs and nothing else; per-sample strengths scale
  ``z`` row-wise instead.  Conv layers run A as a conv with the layer's
  stride/padding/dilation and B as a 1×1 conv.
* Kinds with an output side path in the kinds table (LyCORIS OFT/BOFT rotate
  the output, output-axis IA3 scales it) add ``s·(side(y₀) − side(b))`` with
  y₀ the frozen layer's output: no weight is read (``kinds/side.py``).
* Every other kind (LoHa, LoKr, DoRA, GLoRA, full, set, PEFT OFT/BOFT,
  input-axis IA3) becomes one dense residual ΔW per adapter, computed by
  ``kinds.delta_weight`` against the original weight W₀ and run as an extra
  linear/conv.
* Bias patches add ``s·Δb`` to the output (the file's bias, plus the kind's
  bias rule on b₀, e.g. PEFT IA3).

``originals`` (param key → unpatched tensor) names the parameters whose live
value already holds merged rows: base-dependent kinds are computed against
those originals, and output side paths (which read y₀, and so the live
weight) give way to the dense ΔW on such modules.  Bypass therefore equals
the merge of the same rows against W₀ whatever else was merged.
* Fused-qkv slices add into their output rows only.

Strengths live in one fp32 vector per handle, one entry per stack entry;
``BypassHandle.strength(entry)`` is a 0-d view of it, so a slider change is
``fill_`` (no re-install, no recompile).  A per-sample vector (batch,) per
entry lets one batch render several strengths.

Wrapping: ``module.forward`` becomes an instance attribute (a method bound to
the module, so ``copy.deepcopy`` rebinds it); removing deletes it, which
brings the class forward back exactly.  Installing over an earlier
installation replaces it and never chains stale forwards.
"""
from __future__ import annotations

import math
import types
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from .errors import PatchbayError, ShapeMismatchError, StackError
from . import kinds
from .ir import Slice
from .kinds.side import OutputMap
from .plan import Contribution, PatchPlan, normalized

Tensor = torch.Tensor
STATE_ATTR = "_patchbay_bypass"

_CONV_FN = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def module_kind(module: nn.Module) -> Optional[str]:
    """"linear", "conv" or None (not a layer the side path understands)."""
    if isinstance(module, nn.modules.conv._ConvNd):
        return None if module.transposed else "conv"
    if isinstance(module, nn.Linear):
        return "linear"
    weight = getattr(module, "weight", None)
    if isinstance(weight, Tensor) and weight.dim() == 2 and (
            hasattr(module, "in_features") or "Linear" in type(module).__name__):
        return "linear"  # comfy.ops mixed-precision Linear subclasses nn.Module directly
    return None


@dataclass
class _Dense:
    slice: Optional[Slice]
    delta: Tensor        # (out_s, in, *k) fp32 at strength 1
    entry: int
    mult: float


@dataclass
class _Output:
    slice: Optional[Slice]
    map: OutputMap       # Δy = map(y₀) at strength 1
    bias_term: Optional[Tensor]  # (out_s,) fp32: map(b), subtracted so only W·x is mapped
    entry: int
    mult: float


@dataclass
class _Bias:
    slice: Optional[Slice]
    vector: Tensor       # (out_s,) fp32, bias_scale folded
    entry: int
    mult: float


@dataclass
class _LoraSlice:
    slice: Optional[Slice]
    start: int           # rank columns start:stop of A_all
    stop: int
    b: Tensor            # (out_s, r) fp32, scales folded


@dataclass
class _State:
    handle: "BypassHandle"
    kind: str
    had_instance: bool
    saved: object        # the instance forward that was there before us (if any)
    a: Optional[Tensor] = None          # (R, in) or conv (R, in, *k)
    rank_entry: Optional[Tensor] = None  # (R,) long: handle column of each rank
    rank_mult: Optional[Tensor] = None   # (R,) fp32 multiplier of each rank
    loras: list[_LoraSlice] = field(default_factory=list)
    up: Optional[Tensor] = None          # (R, out) fp32: every B fused (multipliers folded), or None
    dense: list[_Dense] = field(default_factory=list)
    outputs: list[_Output] = field(default_factory=list)
    biases: list[_Bias] = field(default_factory=list)
    active: bool = True
    cache: dict = field(default_factory=dict)

    def cast(self, t: Tensor, name: str, device: torch.device, dtype: torch.dtype) -> Tensor:
        if t.device == device and t.dtype == dtype:
            return t
        key = (name, id(t), device, dtype)
        out = self.cache.get(key)
        if out is None:
            out = self.cache[key] = t.to(device=device, dtype=dtype)
        return out

    def output_map(self, o: _Output, device: torch.device) -> OutputMap:
        key = ("map", id(o), device)
        out = self.cache.get(key)
        if out is None:
            out = self.cache[key] = o.map.to(device)
        return out


class BypassHandle:
    """Installed side paths of one plan; set strengths live, remove to undo."""

    def __init__(self, entries: Iterable[int], strengths: Mapping[int, float], device: torch.device):
        self.entries = tuple(sorted(set(entries)))
        self._column = {e: i for i, e in enumerate(self.entries)}
        # A normal tensor even when installed under inference_mode (ComfyUI's executor), so its
        # version counter tracks every write: the forward's cached up matrix is keyed on it.
        with torch.inference_mode(False):
            self.strengths = torch.tensor([float(strengths.get(e, 1.0)) for e in self.entries],
                                          dtype=torch.float32, device=device)
        self.per_sample: Optional[Tensor] = None  # (batch, E) when set
        self.modules: list[nn.Module] = []
        self.unsupported: tuple[str, ...] = ()

    def column(self, entry: int) -> int:
        try:
            return self._column[entry]
        except KeyError:
            raise StackError(f"no bypass entry {entry}; installed entries are {list(self.entries)}") from None

    def strength(self, entry: int) -> Tensor:
        """The entry's 0-d strength tensor (``fill_`` it to move a slider)."""
        return self.strengths[self.column(entry)]

    def set_strength(self, entry: int, value: Union[float, Tensor]) -> None:
        """A number sets the entry everywhere; a (batch,) tensor sets it per sample."""
        col = self.column(entry)
        if isinstance(value, Tensor) and value.dim() >= 1 and value.numel() >= 1:
            value = value.reshape(-1).to(device=self.strengths.device, dtype=torch.float32)
            if self.per_sample is None or self.per_sample.shape[0] != value.shape[0]:
                self.per_sample = self.strengths.unsqueeze(0).repeat(value.shape[0], 1)
            self.per_sample[:, col].copy_(value)
            return
        v = float(value)
        if not math.isfinite(v):
            raise StackError(f"strength must be finite, got {v!r}")
        self.strengths[col].fill_(v)
        if self.per_sample is not None:
            self.per_sample[:, col].fill_(v)

    def clear_per_sample(self) -> None:
        self.per_sample = None

    def current(self, device: torch.device) -> Tensor:
        s = self.per_sample if self.per_sample is not None else self.strengths
        return s if s.device == device else s.to(device)

    def remove(self) -> None:
        """Undo every wrapper this handle installed (idempotent)."""
        for module in self.modules:
            state = module.__dict__.get(STATE_ATTR)
            if state is None or state.handle is not self:
                continue  # replaced by a later installation
            current = module.__dict__.get("forward")
            if getattr(current, "__func__", None) is not _bypass_forward:
                state.active = False  # someone wrapped us; pass through from now on
                continue
            if state.had_instance:
                module.__dict__["forward"] = state.saved
            else:
                del module.__dict__["forward"]
            del module.__dict__[STATE_ATTR]
        self.modules = []


def _bypass_forward(self: nn.Module, *args, **kwargs):
    state: Optional[_State] = self.__dict__.get(STATE_ATTR)
    if state is None:
        return type(self).forward(self, *args, **kwargs)
    if state.had_instance:
        y = state.saved(*args, **kwargs)
    else:
        y = type(self).forward(self, *args, **kwargs)
    if not state.active:
        return y
    x = args[0] if args else next(iter(kwargs.values()))
    return _add_side(self, state, x, y)


def _conv(module: nn.Module, x: Tensor, kernel: Tensor, groups: int = 1) -> Tensor:
    fn = _CONV_FN[kernel.dim() - 2]
    padding = module.padding
    if getattr(module, "padding_mode", "zeros") != "zeros":
        x = F.pad(x, module._reversed_padding_repeated_twice, mode=module.padding_mode)
        padding = 0
    return fn(x, kernel, None, module.stride, padding, module.dilation, groups)


def _per_sample(s: Tensor, batch: int) -> Tensor:
    """Tile (B, …) strengths over a batch of k·B (cond and uncond stacked)."""
    if s.shape[0] == batch:
        return s
    if batch % s.shape[0]:
        raise ShapeMismatchError(f"per-sample strengths have {s.shape[0]} values for a batch of {batch}",
                                 fix="give one strength per sample")
    return s.repeat(batch // s.shape[0], *([1] * (s.dim() - 1)))


def _add_side(module: nn.Module, state: _State, x: Tensor, y: Tensor) -> Tensor:
    device, dtype = y.device, y.dtype
    if torch.is_grad_enabled() and y.requires_grad:
        y = y.clone()
    s_all = state.handle.current(device)
    per_sample = s_all.dim() == 2
    batch = x.shape[0]
    if per_sample:
        s_all = _per_sample(s_all, batch)
    xd = x if x.dtype == dtype else x.to(dtype)
    if state.kind == "linear":
        out = y.shape[-1]
        if not y.is_contiguous():
            y = y.contiguous()
        y2 = y.view(-1, out)
        x2 = xd.reshape(-1, xd.shape[-1])
        # Output side paths read y₀, so they are all computed before anything is added.
        mapped = [(o, _mapped(state, o, y2, -1, device)) for o in state.outputs]
        if state.a is not None:
            _add_lora_linear(state, x2, y2, s_all, per_sample, batch, device, dtype)
        for d in state.dense:
            h = F.linear(x2, state.cast(d.delta, f"d{id(d)}", device, dtype))
            _add_linear(y2, h, d.slice, _entry_strength(state, s_all, d.entry, d.mult), batch, dtype)
        for o, h in mapped:
            _add_linear(y2, h, o.slice, _entry_strength(state, s_all, o.entry, o.mult), batch, dtype)
        for bb in state.biases:
            v = state.cast(bb.vector, f"v{id(bb)}", device, dtype)
            _add_linear(y2, v, bb.slice, _entry_strength(state, s_all, bb.entry, bb.mult), batch, dtype)
        return y
    # conv
    mapped = [(o, _mapped(state, o, y, 1, device)) for o in state.outputs]
    if state.a is not None:
        z = _conv(module, xd, state.cast(state.a, "a", device, dtype))
        s_rank = s_all.index_select(-1, state.cast(state.rank_entry, "re", device, torch.long))
        s_rank = (s_rank * state.cast(state.rank_mult, "rm", device, torch.float32)).to(dtype)
        spatial = [1] * (z.dim() - 2)
        z = z * (s_rank.view(batch, -1, *spatial) if per_sample else s_rank.view(-1, *spatial))
        for seg in state.loras:
            b = state.cast(seg.b, f"b{seg.start}", device, dtype)
            h = _CONV_FN[z.dim() - 2](z[:, seg.start:seg.stop], b.view(*b.shape, *spatial))
            target = y if seg.slice is None else y.narrow(1, seg.slice.start, seg.slice.length)
            target.add_(h)
    for d in state.dense:
        h = _conv(module, xd, state.cast(d.delta, f"d{id(d)}", device, dtype), groups=module.groups)
        _add_conv(y, h, d.slice, _entry_strength(state, s_all, d.entry, d.mult), batch, dtype)
    for o, h in mapped:
        _add_conv(y, h, o.slice, _entry_strength(state, s_all, o.entry, o.mult), batch, dtype)
    for bb in state.biases:
        v = state.cast(bb.vector, f"v{id(bb)}", device, dtype)
        _add_conv(y, v.view(1, -1, *([1] * (y.dim() - 2))), bb.slice,
                  _entry_strength(state, s_all, bb.entry, bb.mult), batch, dtype)
    return y


def _add_lora_linear(state: _State, x2: Tensor, y2: Tensor, s_all: Tensor, per_sample: bool, batch: int,
                     device: torch.device, dtype: torch.dtype) -> None:
    """``y2 += (B_cat·diag(s_rank))·(A_cat·x2)``: one GEMM down, one up (per slice when not fused)."""
    a_t = state.cast(state.a, "a", device, dtype).t()
    eager = not _compiling()
    if eager and not torch.is_grad_enabled():  # inference: z in a reused buffer, no allocation per call
        key = ("z", x2.shape[0], device, dtype, torch.is_inference_mode_enabled())  # inference tensors
        # cannot be written outside inference_mode, so each mode has its own buffer
        z = state.cache.get(key)
        if z is None or z.shape[1] != a_t.shape[1]:
            z = state.cache[key] = torch.empty((x2.shape[0], a_t.shape[1]), device=device, dtype=dtype)
        torch.mm(x2, a_t, out=z)
    else:
        z = x2 @ a_t
    if eager and not per_sample:
        up = _scaled_up(state, s_all, device, dtype)  # strengths folded: nothing else per call
        if state.up is not None:
            y2.addmm_(z, up)
            return
        for seg, u in zip(state.loras, up):
            target = y2 if seg.slice is None else y2[:, seg.slice.start:seg.slice.start + seg.slice.length]
            target.addmm_(z[:, seg.start:seg.stop], u)
        return
    # per-sample strengths (or traced by torch.compile: tensors only, no Python-side caching)
    s_rank = s_all.index_select(-1, state.cast(state.rank_entry, "re", device, torch.long))
    if state.up is None:  # the fused U has the multipliers folded in; the per-slice Bs do not
        s_rank = s_rank * state.cast(state.rank_mult, "rm", device, torch.float32)
    s_rank = s_rank.to(dtype)
    if per_sample:
        z = z.view(batch, -1, z.shape[-1]).mul(s_rank.unsqueeze(1)).view(z.shape)
    else:
        z = z * s_rank
    if state.up is not None:
        y2.addmm_(z, state.cast(state.up, "up", device, dtype))
        return
    for seg in state.loras:
        b = state.cast(seg.b, f"b{seg.start}", device, dtype)
        target = y2 if seg.slice is None else y2[:, seg.slice.start:seg.slice.start + seg.slice.length]
        target.addmm_(z[:, seg.start:seg.stop], b.t())


def _compiling() -> bool:
    compiler = getattr(torch, "compiler", None)
    return bool(compiler is not None and hasattr(compiler, "is_compiling") and compiler.is_compiling())


def _scaled_up(state: _State, s_all: Tensor, device: torch.device, dtype: torch.dtype):
    """U = B_cat·diag(s_rank) in the activation dtype, rebuilt only when a strength changed.

    The handle's strength vector is the cache key through its version counter,
    which every in-place write bumps (``set_strength`` and a direct ``fill_``
    of :meth:`BypassHandle.strength` alike).
    """
    strengths = state.handle.strengths
    if strengths.is_inference():  # no version counter: no cache, scale per call
        s_rank = s_all.index_select(-1, state.cast(state.rank_entry, "re", device, torch.long))
        if state.up is not None:
            return (state.cast(state.up, "up32", device, torch.float32) * s_rank.unsqueeze(1)).to(dtype)
        s_rank = s_rank * state.cast(state.rank_mult, "rm", device, torch.float32)
        return [(state.cast(seg.b, f"b{seg.start}", device, torch.float32).t()
                 * s_rank[seg.start:seg.stop].unsqueeze(1)).to(dtype) for seg in state.loras]
    key = ("U", device, dtype)
    hit = state.cache.get(key)
    version = (strengths._version, strengths.data_ptr())
    if hit is not None and hit[0] == version:
        return hit[1]
    s_rank = s_all.index_select(-1, state.cast(state.rank_entry, "re", device, torch.long))
    if state.up is not None:
        up = (state.cast(state.up, "up32", device, torch.float32) * s_rank.unsqueeze(1)).to(dtype)
    else:
        s_rank = s_rank * state.cast(state.rank_mult, "rm", device, torch.float32)
        up = [(state.cast(seg.b, f"b{seg.start}", device, torch.float32).t()
               * s_rank[seg.start:seg.stop].unsqueeze(1)).to(dtype) for seg in state.loras]
    state.cache[key] = (version, up)
    return up


def _mapped(state: _State, o: _Output, y: Tensor, channel_axis: int, device: torch.device) -> Tensor:
    """s-free Δy of one output side path: map(y₀[slice]) − map(b), fp32."""
    ys = y if o.slice is None else y.narrow(channel_axis, o.slice.start, o.slice.length)
    h = state.output_map(o, device)(ys, channel_axis)
    if o.bias_term is not None:
        shape = [1] * h.dim()
        shape[channel_axis] = -1
        h = h - state.cast(o.bias_term, f"t{id(o)}", device, torch.float32).view(shape)
    return h


def _entry_strength(state: _State, s_all: Tensor, entry: int, mult: float) -> Tensor:
    """0-d (or (batch,) per sample) effective strength of one adapter."""
    return s_all[..., state.handle.column(entry)] * mult


def _add_linear(y2: Tensor, h: Tensor, slice_: Optional[Slice], s: Tensor, batch: int,
                dtype: torch.dtype) -> None:
    """y2[:, slice] += s·h for y2 (N, out); h (N, out_s) or a broadcast row (out_s,)."""
    target = y2 if slice_ is None else y2[:, slice_.start:slice_.start + slice_.length]
    if s.dim() == 0:
        target.add_(h * s.to(dtype))
        return
    h3 = h.unflatten(0, (batch, -1)) if h.dim() == 2 else h.view(1, 1, -1)
    target.unflatten(0, (batch, -1)).add_(h3 * s.to(dtype).view(batch, 1, 1))


def _add_conv(y: Tensor, h: Tensor, slice_: Optional[Slice], s: Tensor, batch: int,
              dtype: torch.dtype) -> None:
    """y[:, slice] += s·h for conv outputs (B, out, …); h broadcastable to the target."""
    target = y if slice_ is None else y.narrow(1, slice_.start, slice_.length)
    if s.dim() == 0:
        target.add_(h * s.to(dtype))
    else:
        target.add_(h * s.to(dtype).view(batch, *([1] * (y.dim() - 1))))


# ---------------------------------------------------------------- install

def _module_for(root_or_map, key: str) -> tuple[Optional[nn.Module], str]:
    if isinstance(root_or_map, nn.Module):
        path, _, leaf = key.rpartition(".")
        try:
            return (root_or_map.get_submodule(path) if path else root_or_map), leaf
        except AttributeError:
            return None, leaf
    module = root_or_map.get(key)
    return module, key.rpartition(".")[2]


def _check_slice(key: str, c: Contribution, out: int) -> Optional[Slice]:
    s = c.resolved.slice
    if s is None:
        return None
    if s.dim != 0 or s.start < 0 or s.start + s.length > out:
        raise ShapeMismatchError(f"slice {s} does not address output rows of a {out}-row weight",
                                 file=c.file or None, key=key)
    return s


def _build_state(handle: BypassHandle, module: nn.Module, kind: str,
                 items: list[tuple[str, Contribution]], originals: Mapping[str, Tensor]) -> _State:
    weight = module.weight
    device = weight.device
    prefix = items[0][0].rpartition(".")[0] if items else ""
    weight_key, bias_key = (f"{prefix}.weight", f"{prefix}.bias") if prefix else ("weight", "bias")
    # W₀ and b₀: the unpatched tensors when the live ones hold merged rows.
    w0 = originals.get(weight_key, weight)
    b0 = originals.get(bias_key, getattr(module, "bias", None))
    live_is_original = weight_key not in originals and bias_key not in originals
    shape = tuple(weight.shape)
    out = shape[0]
    prev = module.__dict__.get(STATE_ATTR)
    if prev is not None:  # re-install: keep what was there before the first installation
        had, saved = prev.had_instance, prev.saved
    else:
        had, saved = "forward" in module.__dict__, module.__dict__.get("forward")
    state = _State(handle=handle, kind=kind, had_instance=had, saved=saved)
    groups = (module.groups if kind == "conv" else 1)
    a_list, entries, mults = [], [], []
    rank = 0
    for key, c in items:
        patch = c.resolved.patch
        s = _check_slice(key, c, out)
        view_shape = (s.length if s else out,) + shape[1:]
        if c.part == "bias":
            base_bias = None
            if kinds.bias_reads_base(patch):
                base_bias = b0.detach().float().reshape(-1).to(device)
                if s is not None:
                    base_bias = base_bias.narrow(0, s.start, s.length)
            vec = kinds.bias_delta(patch, base_bias).detach().to(device)
            if vec.numel() != view_shape[0]:
                raise ShapeMismatchError(f"bias patch of {patch.name!r} has {vec.numel()} values, the "
                                         f"output has {view_shape[0]}", file=c.file or None, key=key)
            state.biases.append(_Bias(s, vec, c.entry, c.strength))
            continue
        if patch.weight is None:
            continue
        if kinds.is_low_rank(patch) and groups == 1:
            b, a = kinds.factors(patch, view_shape)
            cols = math.prod(view_shape[1:])
            if b.shape[0] != view_shape[0] or a.shape[1] != cols or b.shape[1] != a.shape[0]:
                raise ShapeMismatchError(f"LoRA module {patch.name!r} gives ΔW {b.shape[0]}×{a.shape[1]} "
                                         f"but the target is {view_shape}", file=c.file or None, key=key)
            r = a.shape[0]
            a_list.append(a.reshape(r, *shape[1:]) if kind == "conv" else a)
            state.loras.append(_LoraSlice(s, rank, rank + r, (b * patch.scale).to(device)))
            entries.append(torch.full((r,), handle.column(c.entry), dtype=torch.long))
            mults.append(torch.full((r,), c.strength, dtype=torch.float32))
            rank += r
            continue
        side = kinds.side_path(patch) if groups == 1 and live_is_original else None
        if side is not None:
            bias = getattr(module, "bias", None)
            has_bias = isinstance(bias, Tensor)
            probe = bias.detach().float().reshape(-1).to(device) if has_bias else torch.zeros(out, device=device)
            if s is not None:
                probe = probe.narrow(0, s.start, s.length)
            try:  # also checks, at install, that the map fits these output rows
                term = side.to(device)(probe.unsqueeze(0), -1).reshape(-1)
            except (PatchbayError, RuntimeError) as e:
                raise ShapeMismatchError(f"module {patch.name!r} does not fit the output of {tuple(shape)}: "
                                         f"{str(e).splitlines()[0][:200]}", file=c.file or None, key=key) from None
            state.outputs.append(_Output(s, side, term if has_bias else None, c.entry, c.strength))
            continue
        if not w0.is_floating_point():
            raise PatchbayError(f"{patch.kind.value} module {patch.name!r} needs the layer's weight, "
                                f"which is stored as {w0.dtype}", file=c.file or None, key=key,
                                fix="merge this LoRA instead of using the side path")
        base = w0.detach().float().to(device)
        if s is not None:
            base = base.narrow(0, s.start, s.length)
        try:
            delta = kinds.delta_weight(patch, base)
        except PatchbayError:
            raise
        except (RuntimeError, ValueError, IndexError) as e:
            raise ShapeMismatchError(f"module {patch.name!r} does not fit the weight {tuple(base.shape)}: "
                                     f"{str(e).splitlines()[0][:200]}", file=c.file or None, key=key) from None
        state.dense.append(_Dense(s, delta.to(device), c.entry, c.strength))
    if a_list:
        state.a = torch.cat(a_list, 0).to(device) if len(a_list) > 1 else a_list[0].to(device)
        state.rank_entry = torch.cat(entries).to(device)
        state.rank_mult = torch.cat(mults).to(device)
        if kind == "linear":
            state.up = _fused_up(state.loras, state.rank_mult, out, rank)
    return state


def _fused_up(loras: list[_LoraSlice], rank_mult: Tensor, out: int, rank: int) -> Optional[Tensor]:
    """(R, out) fp32 = every segment's Bᵀ × its multiplier, zero outside its slice; None when
    the zero padding would more than double the up GEMM (then each slice runs alone)."""
    used = sum((seg.slice.length if seg.slice else out) * (seg.stop - seg.start) for seg in loras)
    if used * 2 < out * rank:
        return None
    up = torch.zeros((rank, out), dtype=torch.float32, device=rank_mult.device)
    for seg in loras:
        rows = slice(None) if seg.slice is None else slice(seg.slice.start, seg.slice.start + seg.slice.length)
        up[seg.start:seg.stop, rows] = seg.b.t()
    return up.mul_(rank_mult.unsqueeze(1))


def install_bypass(target: Union[nn.Module, Mapping[str, nn.Module]], plan: PatchPlan, *,
                   param_keys: Optional[Iterable[str]] = None,
                   strengths: Optional[Mapping[int, float]] = None,
                   originals: Optional[Mapping[str, Tensor]] = None) -> BypassHandle:
    """Wrap the modules the plan touches with side paths.

    ``target``: the root module (parameter keys are paths below it) or a
    mapping parameter key → module.  ``param_keys`` limits the plan to those
    keys.  The effective strength of a contribution is
    ``strengths[entry] × contribution.strength``; ``strengths`` defaults to 1,
    so build the plan with stack strength 1 and pass the entry strengths here
    to move them live later with :meth:`BypassHandle.set_strength`.
    Parameters on modules the side path cannot run (norms, embeddings,
    transposed convs, non-weight/bias parameters) are listed in
    ``handle.unsupported``; merge those instead.  ``originals``: see the
    module docstring (the unpatched tensors of parameters that hold merged rows).
    """
    plan = normalized(plan)
    if param_keys is not None:
        wanted = set(param_keys)
        plan = {k: v for k, v in plan.items() if k in wanted}
    per_module: dict[int, tuple[nn.Module, str, list[tuple[str, Contribution]]]] = {}
    unsupported: list[str] = []
    entries: set[int] = set()
    for key, contribs in plan.items():
        module, leaf = _module_for(target, key)
        kind = module_kind(module) if module is not None else None
        if kind is None or leaf not in ("weight", "bias"):
            unsupported.append(key)
            continue
        slot = per_module.setdefault(id(module), (module, kind, []))
        for c in contribs:
            if c.part != leaf:
                continue
            slot[2].append((key, c))
            entries.add(c.entry)
    first = next(iter(per_module.values()), None)
    device = first[0].weight.device if first is not None else torch.device("cpu")
    handle = BypassHandle(entries, strengths or {}, device)
    handle.unsupported = tuple(unsupported)
    states = []
    with torch.no_grad():
        for module, kind, items in per_module.values():
            states.append((module, _build_state(handle, module, kind, items, originals or {})))
    for module, state in states:  # all states built before any module is wrapped
        module.__dict__[STATE_ATTR] = state
        module.__dict__["forward"] = types.MethodType(_bypass_forward, module)
        handle.modules.append(module)
    return handle


__all__ = ["install_bypass", "BypassHandle", "module_kind"]
