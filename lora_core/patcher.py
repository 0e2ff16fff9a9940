"""The only code that writes model parameters: merge with bit-exact restore.

    W' = W₀ + Σᵢ sᵢ·ΔWᵢ(W₀)        (every ΔW against the original W₀)

Per parameter, on the weight's device, accumulated in fp32:

* all plain LoRAs hitting the same rows (whole weight or one fused-qkv slice)
  run as ONE rank-concatenated GEMM added in place into the working copy,
  ``W += [s₁c₁B₁ | s₂c₂B₂ | …]·[A₁; A₂; …]`` (cᵢ = the file's alpha/rank);
* other kinds (LoHa, LoKr, OFT, DoRA, full, …) come from ``kinds.delta_weight``
  and are added after, in plan order; bias patches go to the bias key;
* the sum is cast once to the storage dtype: round-to-nearest for fp32, fp16
  and bf16; for float8 stochastic rounding from a generator seeded by a stable
  hash of the key, so a re-patch reproduces the same bits.

A parameter hit only by plain LoRAs is processed in row blocks that fit the
last-level cache (upcast, GEMM, check and store touch each block while it is
there), so the cost is close to one GEMM plus one read and one write of the
weight.

Exact restore without a copy: the first time an ``nn.Parameter`` is merged,
its current storage itself becomes the backup and the parameter's ``.data``
is re-pointed at new storage holding W₀ + D; restoring re-points it back
(never subtracts, copies nothing).  Holders of the Parameter object (modules,
closures, ``state_dict(keep_vars=True)``, compiled graphs) see both; a
``.data``/``state_dict()`` alias taken before the merge keeps reading W₀.
Tied weights, plain tensors (buffers, views handed in), non-contiguous
weights and weights whose backup lives elsewhere (CUDA weight, pinned CPU
backup) are written in place behind a copy of the original instead.  ``apply``
of a new plan recomputes only the parameters whose contribution tuples
changed, from those originals, so the result is bit-identical to a fresh
apply.  ``apply`` is all-or-nothing: on any failure (shape mismatch, NaN/Inf
in a result) the parameters it touched return to their previous state and
the error is raised.
"""
from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass
from typing import Callable, Mapping, Optional

import torch

from .dtypes import FLOAT8
from .errors import ModelMismatchError, NonFiniteError, PatchbayError
from .finite import has_non_finite
from .ir import Slice
from .kinds import bias_reads_base, changes_bias
from .plan import Contribution, PatchPlan, normalized
from .stack_delta import bias_part, concat_factors, is_plain_lora, kind_delta, row_slice, target_shape as shape_after_patch, view_shape

Tensor = torch.Tensor


# Row blocks of at most 4M elements (16 MiB fp32) keep backup, upcast, GEMM
# update, check and store of a block inside a CPU's last-level cache instead
# of five passes over DRAM, and bound the workspace on huge layers (Flux
# linear1 is 66M elements).  Smaller blocks cost GEMM efficiency and
# thread-pool wake-ups: on 1280² fp16 weights, Σr 88, 2 cores, per-layer
# best of 12: one block 3.9 ms, 1M-element blocks 4.6, 256K 4.8 (naive
# per-LoRA fp32 merge 9.3).
BLOCK_ELEMENTS = 1 << 22
BLOCK_ELEMENTS_GPU = 1 << 22


@dataclass
class ApplyStats:
    written: int = 0          # parameters recomputed and written
    restored: int = 0         # parameters returned to their original
    unchanged: int = 0        # parameters whose contributions did not change
    lora_gemms: int = 0       # rank-concatenated GEMMs (one per parameter and slice)
    dense_deltas: int = 0     # non-factorable ΔW computed
    bias_adds: int = 0
    backup_bytes: int = 0     # bytes of originals held after the call
    peak_transient_bytes: int = 0  # largest working memory of one parameter (accounted)
    seconds: float = 0.0


@dataclass
class _Backup:
    tensor: Tensor            # the original W₀, on the offload device
    device: torch.device      # where the parameter lives
    dtype: torch.dtype
    shape: torch.Size
    original: bool = False    # ``tensor`` is the parameter's own former storage (restore re-points)


def key_seed(key: str) -> int:
    """A stable 63-bit seed from a parameter key (Python's hash() is salted)."""
    digest = hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def stochastic_round(x: Tensor, dtype: torch.dtype, generator: torch.Generator) -> Tensor:
    """Round fp32 ``x`` to ``dtype`` (float8) up or down at random, unbiased.

    For |x| between neighbours lo ≤ |x| ≤ hi of the format, pick hi with
    probability (|x| − lo)/(hi − lo), so E[result] = x.  Neighbours come from
    the bit pattern of the nearest value ±1 (magnitude bits are ordered like
    the values, subnormals included).  Values beyond the format saturate.
    """
    fmax = torch.finfo(dtype).max
    a = x.abs().clamp_(max=fmax)
    near = a.to(dtype)
    bits = near.view(torch.uint8).to(torch.int16)
    v = near.float()
    other_bits = torch.where(v < a, bits + 1, bits - 1).clamp_(min=0)
    other = other_bits.to(torch.uint8).view(dtype).float()
    lo = torch.minimum(v, other)
    hi = torch.maximum(v, other)
    gap = hi - lo
    p = torch.where(gap > 0, (a - lo) / torch.where(gap > 0, gap, torch.ones_like(gap)),
                    torch.zeros_like(gap))
    u = torch.rand(x.shape, generator=generator, device=x.device, dtype=torch.float32)
    picked = torch.where(u < p, hi, lo)
    return torch.copysign(picked, x).to(dtype)


def _overflow_limit(dtype: torch.dtype) -> float:
    """Smallest magnitude that no longer rounds to a finite ``dtype`` value."""
    if dtype in FLOAT8 or dtype in (torch.float32, torch.float64):
        return math.inf  # fp8 saturates; fp32 results are checked for finiteness only
    info = torch.finfo(dtype)
    ulp_at_max = info.max * info.eps / (2.0 - info.eps)
    return info.max + 0.5 * ulp_at_max


class _Group:
    """Contributions hitting the same rows of one parameter (a slice or all)."""

    def __init__(self, slice_: Optional[Slice]):
        self.slice = slice_
        self.loras: list[Contribution] = []
        self.dense: list[Contribution] = []
        self.biases: list[Contribution] = []
        self.b: Optional[Tensor] = None  # (rows, R) with strengths and scales folded
        self.a: Optional[Tensor] = None  # (R, cols)


def _module_name(c: Contribution) -> str:
    return c.resolved.patch.name


class MergePatcher:
    """Writes plans into live model tensors and restores them exactly.

    ``params``: parameter key → live tensor (``nn.Parameter`` or buffer), e.g.
    ``dict(module.named_parameters())`` or a ComfyUI model's
    ``state_dict(keep_vars=True)``.  ``offload_device``: where originals are
    kept (default: the parameter's device; pinned CPU for CUDA parameters).
    ``keep_originals=False`` keeps no backups (one-shot bakes such as the
    CLI): no restore, no incremental re-apply of a patched parameter, and a
    failed ``apply`` leaves the model partly patched (discard it).
    """

    def __init__(self, params: Mapping[str, Tensor], offload_device: Optional[torch.device | str] = None,
                 keep_originals: bool = True):
        self.params = dict(params)
        self.offload_device = torch.device(offload_device) if offload_device is not None else None
        self.keep_originals = keep_originals
        self._backups: dict[str, _Backup] = {}
        self._applied: dict[str, tuple[Contribution, ...]] = {}
        self._workspaces: dict[torch.device, Tensor] = {}
        self._tied = _tied_names(self.params)

    # ------------------------------------------------------------ public API
    @property
    def applied(self) -> dict[str, tuple[Contribution, ...]]:
        """The plan currently in the model (normalised)."""
        return dict(self._applied)

    @property
    def backup_bytes(self) -> int:
        return sum(b.tensor.numel() * b.tensor.element_size() for b in self._backups.values())

    @property
    def patched_keys(self) -> tuple[str, ...]:
        return tuple(self._backups)

    def apply(self, plan: PatchPlan, progress: Optional[Callable[[int, int], None]] = None) -> ApplyStats:
        """Make the model equal ``plan`` applied to the originals; incremental.

        ``progress(done, total)`` is called after each written parameter.
        """
        start = time.perf_counter()
        target = normalized(plan)
        for key in target:
            self._check_param(key)
        self._check_ties(target)
        changed = [k for k, v in target.items() if self._applied.get(k) != v]
        removed = [k for k in self._applied if k not in target]
        if not self.keep_originals and any(k in self._applied for k in changed + removed):
            raise PatchbayError("this patcher kept no originals, so it cannot change a patched weight",
                                fix="create the MergePatcher with keep_originals=True")
        stats = ApplyStats(unchanged=len(target) - len(changed))
        touched: list[tuple[str, Optional[tuple[Contribution, ...]]]] = []
        flags: list[tuple[str, Tensor]] = []
        try:
            with torch.no_grad():
                for i, key in enumerate(changed):
                    touched.append((key, self._applied.get(key)))
                    flags.append((key, self._write(key, target[key], stats)))
                    if progress is not None:
                        progress(i + 1, len(changed))
                bad = self._first_bad(flags)
                if bad is not None:
                    raise self._non_finite_error(bad, target[bad])
        except BaseException:
            if self.keep_originals:
                self._rollback(touched)
            raise
        with torch.no_grad():
            for key in removed:
                self._restore_key(key)
                stats.restored += 1
        for key in removed:
            del self._applied[key]
        for key in changed:
            self._applied[key] = target[key]
        stats.written = len(changed)
        stats.backup_bytes = self.backup_bytes
        stats.seconds = time.perf_counter() - start
        return stats

    def restore(self) -> int:
        """Put every touched parameter back to its original bits; drop all backups."""
        count = 0
        with torch.no_grad():
            for key in list(self._backups):
                self._restore_key(key)
                count += 1
        self._applied.clear()
        self._workspaces.clear()
        return count

    # ------------------------------------------------------------ checks
    def _check_param(self, key: str) -> None:
        param = self.params.get(key)
        if param is None:
            raise ModelMismatchError("the plan patches a parameter the model does not have", key=key,
                                     fix="resolve the LoRA against this model")
        dtype = self._backups[key].dtype if key in self._backups else param.dtype
        if not dtype.is_floating_point:
            raise ModelMismatchError(f"cannot merge into a {dtype} parameter", key=key,
                                     fix="use the bypass (side path) mode for quantized models")

    def _check_ties(self, target: Mapping[str, tuple[Contribution, ...]]) -> None:
        for key in target:
            others = [k for k in self._tied.get(key, ()) if k in target or k in self._applied]
            if others:
                raise ModelMismatchError(
                    f"{key} and {', '.join(others)} are one tensor (tied weights), and the plan patches "
                    "it through more than one name", key=key,
                    fix="patch tied weights through one name only (the others see the result)")

    def _swaps_storage(self, key: str, param: Tensor) -> bool:
        """Merge into new storage, keeping the current one as the backup (no copy of W₀)?

        Only for an ``nn.Parameter`` (modules hold the object, so re-pointing its
        ``.data`` reaches every holder) that is contiguous, owns its storage alone
        and lives where originals are kept.  Tied weights, plain tensors (buffers,
        ``state_dict()`` views handed in) and CUDA weights with a CPU backup are
        written in place behind a copied backup instead.
        """
        return (self.keep_originals and isinstance(param, torch.nn.Parameter) and key not in self._tied
                and param.is_contiguous() and param.device == self._offload_device(param)
                and type(param.data) is torch.Tensor)

    @staticmethod
    def _first_bad(flags: list[tuple[str, Tensor]]) -> Optional[str]:
        if not flags:
            return None
        by_device: dict[torch.device, list[int]] = {}
        for i, (_, flag) in enumerate(flags):
            by_device.setdefault(flag.device, []).append(i)
        for idx in by_device.values():
            stacked = torch.stack([flags[i][1] for i in idx])
            if bool(stacked.any()):
                return flags[idx[int(stacked.nonzero()[0, 0])]][0]
        return None

    def _non_finite_error(self, key: str, contribs: tuple[Contribution, ...]) -> NonFiniteError:
        for c in contribs:
            if _has_non_finite(c):
                return NonFiniteError(
                    f"LoRA module {_module_name(c)!r} holds NaN or Inf, so the merged weight "
                    "would be non-finite", file=c.file or None, key=key,
                    fix="the LoRA is broken (often an fp16 overflow in training); re-export it "
                        "or use another version")
        files = ", ".join(sorted({c.file for c in contribs if c.file})) or None
        return NonFiniteError("the merged weight overflows its dtype (NaN or Inf)", file=files,
                              key=key, fix="lower the strengths of the LoRAs on this weight")

    # ------------------------------------------------------------ rollback / restore
    def _rollback(self, touched: list[tuple[str, Optional[tuple[Contribution, ...]]]]) -> None:
        with torch.no_grad():
            for key, previous in reversed(touched):
                if previous is None:
                    self._restore_key(key)
                    continue
                try:
                    flag = self._write(key, previous, ApplyStats())
                    if bool(flag):
                        raise RuntimeError("previous state no longer finite")
                except Exception:
                    # Should not happen (it was computed before); fall back to the original.
                    self._restore_key(key)
                    self._applied.pop(key, None)

    def _restore_key(self, key: str) -> None:
        backup = self._backups.pop(key, None)
        if backup is None:
            return
        param = self.params[key]
        if backup.original and param.device == backup.tensor.device:
            param.data = backup.tensor  # the original storage itself: nothing is copied
        elif param.shape == backup.shape and param.dtype == backup.dtype:
            param.data.copy_(backup.tensor)
        else:
            param.data = backup.tensor.to(backup.device)

    def _offload_device(self, param: Tensor) -> torch.device:
        if self.offload_device is not None:
            return self.offload_device
        return torch.device("cpu") if param.device.type == "cuda" else param.device

    def _new_backup(self, key: str, param: Tensor, fill: bool, share: bool = False) -> _Backup:
        """Allocate the original's copy, and fill it unless the caller does (per block).

        ``share``: the parameter's ``.data`` is about to be replaced (reshape),
        so the current tensor itself serves as the backup when it already
        lives on the offload device.
        """
        device = self._offload_device(param)
        data = param.data
        if share and data.device == device:
            tensor = data
        else:
            pin = device.type == "cpu" and data.device.type == "cuda"
            tensor = torch.empty(data.shape, dtype=data.dtype, device=device, pin_memory=pin)
            if fill:
                tensor.copy_(data)
        backup = _Backup(tensor, data.device, data.dtype, data.shape, original=tensor is data)
        self._backups[key] = backup
        return backup

    # ------------------------------------------------------------ computing one parameter
    def _write(self, key: str, contribs: tuple[Contribution, ...], stats: ApplyStats) -> Tensor:
        """Compute and store one parameter; returns a 0-d bool tensor, True if non-finite."""
        param = self.params[key]
        if param.numel() == 0:
            return torch.zeros((), dtype=torch.bool, device=param.device)
        backup = self._backups.get(key)
        shape = backup.shape if backup is not None else param.shape
        dtype = backup.dtype if backup is not None else param.dtype
        target_shape = shape_after_patch(key, contribs, shape)
        groups = self._groups(key, contribs, target_shape)
        fast = (target_shape == shape and param.is_contiguous() and param.shape == shape
                and len(shape) >= 1 and all(not g.dense and not g.biases for g in groups)
                and all(g.slice is None or g.slice.dim == 0 for g in groups))
        device = param.device
        for g in groups:
            if g.loras:
                self._concat_factors(key, g, target_shape, device)
                stats.lora_gemms += 1
        if fast:
            return self._write_blocks(key, param, groups, backup, shape, dtype, stats)
        return self._write_whole(key, param, groups, backup, shape, dtype, target_shape, stats)

    @staticmethod
    def _groups(key: str, contribs: tuple[Contribution, ...], shape: torch.Size) -> list[_Group]:
        groups: dict[Optional[Slice], _Group] = {}
        for c in contribs:
            s = row_slice(key, c, shape)
            group = groups.get(s)
            if group is None:
                group = groups[s] = _Group(s)
            if c.part == "bias":
                if not changes_bias(c.resolved.patch):
                    continue
                group.biases.append(c)
            elif c.resolved.patch.weight is None:
                continue
            elif is_plain_lora(c):
                group.loras.append(c)
            else:
                group.dense.append(c)
        return list(groups.values())

    def _concat_factors(self, key: str, group: _Group, shape: torch.Size, device: torch.device) -> None:
        group.b, group.a = concat_factors(key, group.loras, view_shape(group.slice, shape), device)

    def _workspace(self, device: torch.device, numel: int) -> Tensor:
        ws = self._workspaces.get(device)
        if ws is None or ws.numel() < numel:
            ws = torch.empty(numel, dtype=torch.float32, device=device)
            self._workspaces[device] = ws
        return ws

    def _write_blocks(self, key: str, param: Tensor, groups: list[_Group], backup: Optional[_Backup],
                      shape: torch.Size, dtype: torch.dtype, stats: ApplyStats) -> Tensor:
        """Plain LoRAs only: (backup,) upcast, GEMM, check and store per row block.

        The first merge of a parameter that can swap storage reads W₀ once and
        writes W₀ + D once into new storage; W₀'s own storage becomes the backup.
        """
        first = backup is None and self.keep_originals
        swap = first and self._swaps_storage(key, param)
        rows = shape[0]
        cols = param.numel() // rows if rows else 0
        if first and not swap:
            backup = self._new_backup(key, param, fill=False)
        budget = BLOCK_ELEMENTS if param.device.type == "cpu" else BLOCK_ELEMENTS_GPU
        block_rows = max(1, budget // max(cols, 1))
        ws = self._workspace(param.device, min(rows, block_rows) * cols)
        data = param.data.view(rows, cols)
        orig = backup.tensor.view(rows, cols) if backup is not None else data  # block read before written
        fresh: Optional[Tensor] = None  # new storage for the parameter (swap, or re-pointed at W₀)
        if swap or (backup is not None and backup.original and _same_storage(param.data, backup.tensor)):
            orig = param.data.view(rows, cols) if swap else orig
            fresh = torch.empty(shape, dtype=dtype, device=param.device)
            data = fresh.view(rows, cols)
        gen = None
        if dtype in FLOAT8:
            gen = torch.Generator(device=param.device)
            gen.manual_seed(key_seed(key))
        spans = [(0 if g.slice is None else g.slice.start, rows if g.slice is None else g.slice.length, g)
                 for g in groups if g.loras]
        lows, highs = [], []
        factor_bytes = sum((g.a.numel() + g.b.numel()) * 4 for _, _, g in spans)
        stats.peak_transient_bytes = max(stats.peak_transient_bytes, ws.numel() * 4 + factor_bytes)
        done = 0
        try:
            for r0 in range(0, rows, block_rows):
                r1 = min(rows, r0 + block_rows)
                x = ws[: (r1 - r0) * cols].view(r1 - r0, cols)
                if first and not swap:
                    orig[r0:r1].copy_(data[r0:r1])
                x.copy_(orig[r0:r1])
                for g0, glen, g in spans:
                    lo, hi = max(r0, g0), min(r1, g0 + glen)
                    if lo < hi:
                        x[lo - r0:hi - r0].addmm_(g.b[lo - g0:hi - g0], g.a)
                low, high = torch.aminmax(x)
                lows.append(low)
                highs.append(high)
                if gen is not None:
                    data[r0:r1].copy_(stochastic_round(x, dtype, gen))
                else:
                    data[r0:r1].copy_(x)
                done = r1
        except BaseException:
            if first and not swap:  # the backup is complete only up to the failing block
                data[:done].copy_(orig[:done])
                del self._backups[key]
            raise  # with new storage nothing of the parameter was written
        if swap:
            self._backups[key] = _Backup(param.data, param.device, dtype, shape, original=True)
        if fresh is not None:
            param.data = fresh
        return _bad_flag(torch.stack(lows).amin(), torch.stack(highs).amax(), dtype)

    def _write_whole(self, key: str, param: Tensor, groups: list[_Group], backup: Optional[_Backup],
                     shape: torch.Size, dtype: torch.dtype, target_shape: torch.Size,
                     stats: ApplyStats) -> Tensor:
        """General path: the whole parameter in fp32 (dense kinds, bias, reshape, odd slices)."""
        device = param.device
        reshape = target_shape != shape
        swap = backup is None and self._swaps_storage(key, param)
        if swap:  # W₀'s storage becomes the backup; the result goes to new storage below
            backup = _Backup(param.data, device, dtype, shape, original=True)
        elif backup is None and self.keep_originals:
            backup = self._new_backup(key, param, fill=True, share=reshape)
        src = backup.tensor if backup is not None else param.data  # read fully before the write
        corner = tuple(slice(0, n) for n in shape)
        if reshape:
            w = torch.zeros(target_shape, dtype=torch.float32, device=device)
            w[corner].copy_(src)
        else:
            w = torch.empty(shape, dtype=torch.float32, device=device)
            w.copy_(src)
        need_base = any(g.dense or any(bias_reads_base(c.resolved.patch) for c in g.biases) for g in groups)
        base = None
        if need_base:
            base = w.clone() if reshape else src.to(device=device, dtype=torch.float32)
        transient = w.numel() * 4 * (3 if need_base else 1)
        for g in groups:
            view = w if g.slice is None else w.narrow(g.slice.dim, g.slice.start, g.slice.length)
            if g.loras:
                rows = view.shape[0]
                if view.is_contiguous():
                    view.view(rows, -1).addmm_(g.b, g.a)
                else:
                    view.add_((g.b @ g.a).view(view.shape))
            if g.dense:
                base_view = base if g.slice is None else base.narrow(g.slice.dim, g.slice.start, g.slice.length)
                for c in g.dense:
                    view.add_(kind_delta(key, c, base_view), alpha=c.strength)
                    stats.dense_deltas += 1
            for c in g.biases:
                base_view = None
                if base is not None:
                    base_view = base if g.slice is None else base.narrow(g.slice.dim, g.slice.start, g.slice.length)
                view.add_(bias_part(key, c, base_view, view.shape, device), alpha=c.strength)
                stats.bias_adds += 1
        stats.peak_transient_bytes = max(stats.peak_transient_bytes, transient)
        flag = _bad_flag(*torch.aminmax(w), dtype)
        if dtype in FLOAT8:
            gen = torch.Generator(device=device)
            gen.manual_seed(key_seed(key))
            out = stochastic_round(w, dtype, gen)
        else:
            out = w
        if swap:
            self._backups[key] = backup
        repoint = backup is not None and backup.original and _same_storage(param.data, backup.tensor)
        if param.shape == target_shape and param.dtype == dtype and not repoint:
            param.data.copy_(out)
        else:
            param.data = out.to(dtype)  # new storage (already ``out`` itself when it is fp32)
        return flag

def _same_storage(a: Tensor, b: Tensor) -> bool:
    try:
        return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError):  # tensor subclasses without a plain storage
        return a.data_ptr() == b.data_ptr()


def _tied_names(params: Mapping[str, Tensor]) -> dict[str, tuple[str, ...]]:
    """Parameter key → the other keys sharing its storage (tied weights)."""
    by_storage: dict[tuple[str, int], list[str]] = {}
    for key, t in params.items():
        try:
            ptr = t.untyped_storage().data_ptr()
        except (RuntimeError, NotImplementedError, AttributeError):
            continue
        if ptr:
            by_storage.setdefault((str(t.device), ptr), []).append(key)
    return {k: tuple(o for o in keys if o != k) for keys in by_storage.values() if len(keys) > 1 for k in keys}


def _bad_flag(low: Tensor, high: Tensor, dtype: torch.dtype) -> Tensor:
    limit = _overflow_limit(dtype)
    bad = torch.isnan(low) | torch.isnan(high)
    if math.isinf(limit):
        return bad | torch.isinf(low) | torch.isinf(high)
    return bad | (high >= limit) | (low <= -limit)


def _has_non_finite(c: Contribution) -> bool:
    return has_non_finite(c.resolved.patch, "bias" if c.part == "bias" else "weight")


__all__ = ["MergePatcher", "ApplyStats", "stochastic_round", "key_seed"]
