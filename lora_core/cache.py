"""The engine's byte-bounded caches, in one place (host-agnostic, unit-tested without ComfyUI).

* :class:`ParsedFileCache`: parsed LoRA files by path, invalidated on mtime/size change.
* :class:`ByteLRU`: tensors (or tuples of tensors) by any key, least recently used out first.
* :class:`DeltaCache`: ΔW sums keyed ``(parameter key, …)``, at most ``per_param`` per parameter,
  with an eviction rule that survives the cyclic access of a full re-patch.

Every bound counts tensor bytes (``numel · element_size``) or file bytes, never entries.
A hit returns the stored object itself, so it is bit-identical to what was put.
"""
from __future__ import annotations

import os
import threading
from collections import OrderedDict
from typing import Any, Callable

import torch

from .errors import LoraFileError
from .ir import LoraFile


def env_bytes(name: str, default_mb: int) -> int:
    """A cache budget from the environment variable ``name`` in MiB (``default_mb`` when unset or bad)."""
    try:
        return int(float(os.environ.get(name, default_mb)) * (1 << 20))
    except ValueError:
        return default_mb << 20


def tensor_bytes(value) -> int:
    """Bytes of a tensor or of a (nested) tuple/list of tensors."""
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    return sum(tensor_bytes(v) for v in value)


# ----------------------------------------------------------------- parsed files

class ParsedFileCache:
    """LRU of parsed files, bounded by the bytes of their tensor data.

    Entries are keyed by path and invalidated when the file's mtime or size
    changes, so an edited LoRA is re-read; tensors are memory-mapped, so the
    bound counts address space rather than resident memory.  The newest file
    is always kept, even when it alone exceeds the bound.
    """

    def __init__(self, max_bytes: int = 4 << 30):
        self.max_bytes = max_bytes
        self._entries: "OrderedDict[str, tuple[tuple[int, int], LoraFile, int]]" = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    @staticmethod
    def _stamp(path: str) -> tuple[int, int]:
        try:
            st = os.stat(path)
        except FileNotFoundError:
            raise LoraFileError("file not found", file=path,
                                fix="check the name and the loras folder") from None
        return (st.st_mtime_ns, st.st_size)

    def get(self, path: str, loader: Callable[[str], LoraFile]) -> LoraFile:
        path = os.path.abspath(os.fspath(path))
        stamp = self._stamp(path)
        with self._lock:
            hit = self._entries.get(path)
            if hit is not None and hit[0] == stamp:
                self._entries.move_to_end(path)
                self.hits += 1
                return hit[1]
        parsed = loader(path)
        size = stamp[1]
        with self._lock:
            self.misses += 1
            self._entries[path] = (stamp, parsed, size)
            self._entries.move_to_end(path)
            total = sum(e[2] for e in self._entries.values())
            while total > self.max_bytes and len(self._entries) > 1:
                _, (_, _, dropped) = self._entries.popitem(last=False)
                total -= dropped
        return parsed

    @property
    def bytes(self) -> int:
        with self._lock:
            return sum(e[2] for e in self._entries.values())

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


# ----------------------------------------------------------------- tensors

class ByteLRU:
    """LRU of tensors (or tuples of tensors) bounded by their bytes; a value over the bound is not stored."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self._items: "OrderedDict[Any, tuple[Any, int]]" = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    _size = staticmethod(tensor_bytes)

    def get(self, key):
        with self._lock:
            hit = self._items.get(key)
            if hit is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return hit[0]

    def put(self, key, value) -> None:
        size = self._size(value)
        if size > self.max_bytes:
            return
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._bytes -= old[1]
            self._items[key] = (value, size)
            self._bytes += size
            while self._bytes > self.max_bytes and self._items:
                _, (_, dropped) = self._items.popitem(last=False)
                self._bytes -= dropped

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._bytes = 0

    def release(self, nbytes: int, where: Callable[[Any], bool] | None = None) -> int:
        """Give back at least ``nbytes`` (least recently used first; only values for which
        ``where(value)`` holds, when given); returns the bytes dropped."""
        freed = 0
        with self._lock:
            for key in list(self._items):
                if freed >= nbytes:
                    break
                value, size = self._items[key]
                if where is not None and not where(value):
                    continue
                del self._items[key]
                self._bytes -= size
                freed += size
        return freed

    @property
    def bytes(self) -> int:
        return self._bytes

    def __contains__(self, key) -> bool:
        return key in self._items

    def __len__(self) -> int:
        return len(self._items)


class DeltaCache(ByteLRU):
    """ΔW sums keyed by (parameter key, …): at most ``per_param`` sums per parameter.

    ComfyUI re-patches every key in the same order on each load, a cyclic
    pattern under which plain LRU evicts exactly what the next pass needs
    once the budget is smaller than the patched parameters.  So when full,
    only superseded sums (not the newest of their parameter) are evicted,
    and otherwise a new parameter is simply not admitted: a stable subset
    of parameters keeps hitting.  Two sums per parameter cover "slider moved
    back" and two branches alternating on one base.
    """

    def __init__(self, max_bytes: int, per_param: int = 2, policy: "FreeMemoryPolicy | None" = None):
        super().__init__(max_bytes)
        self.per_param = per_param
        self.policy = policy
        self._by_param: dict[Any, list] = {}  # with a policy, max_bytes is re-read at each trim/put

    def trim(self) -> int:
        """Re-read the policy's budget and give back what exceeds it; returns the bytes freed.

        Superseded sums go first, then whole parameters, oldest first.
        """
        if self.policy is None:
            return 0
        with self._lock:
            self.max_bytes = self.policy.budget(self._bytes)
            before = self._bytes
            for old in list(self._items):
                if self._bytes <= self.max_bytes:
                    break
                siblings = self._by_param.get(old[0], ())
                if siblings and siblings[-1] != old:
                    self._drop(old)
            for old in list(self._items):
                if self._bytes <= self.max_bytes:
                    break
                self._drop(old)
            return before - self._bytes

    def release(self, nbytes: int, where: Callable[[Any], bool] | None = None) -> int:
        """Give back at least ``nbytes`` when the host needs the memory: superseded sums first,
        then whole parameters, oldest first; returns the bytes dropped."""
        with self._lock:
            before = self._bytes
            for old in list(self._items):
                if before - self._bytes >= nbytes:
                    break
                siblings = self._by_param.get(old[0], ())
                if siblings and siblings[-1] != old and (where is None or where(self._items[old][0])):
                    self._drop(old)
            for old in list(self._items):
                if before - self._bytes >= nbytes:
                    break
                if where is None or where(self._items[old][0]):
                    self._drop(old)
            return before - self._bytes

    def recycle(self, param, shape, dtype: torch.dtype, device) -> "torch.Tensor | None":
        """Take back the oldest sum of ``param`` when storing a new one would evict it anyway,
        as memory for that new sum (of ``shape``, ``dtype`` on ``device``), else None.

        The caller overwrites it, so nobody may hold a sum from :meth:`get` across puts
        (the hosts use each sum at once).  Saves the allocation and page faults of a new
        full-size tensor on every slider move.
        """
        with self._lock:
            mine = self._by_param.get(param)
            if not mine or len(mine) < self.per_param:
                return None
            value = self._items[mine[0]][0]
            if not (isinstance(value, torch.Tensor) and value.shape == torch.Size(shape) and value.dtype == dtype
                    and value.device == torch.device(device) and value.is_contiguous()):
                return None
            self._drop(mine[0])
            return value

    def put(self, key, value) -> None:
        self.trim()
        size = self._size(value)
        if size > self.max_bytes:
            return
        param = key[0]
        with self._lock:
            if key in self._items:
                return
            mine = self._by_param.setdefault(param, [])
            while len(mine) >= self.per_param:
                self._drop(mine[0])
            if self._bytes + size > self.max_bytes:
                for old in list(self._items):
                    if self._bytes + size <= self.max_bytes:
                        break
                    siblings = self._by_param.get(old[0], ())
                    if siblings and siblings[-1] != old:
                        self._drop(old)
            while self._bytes + size > self.max_bytes and mine:
                self._drop(mine[0])  # the new sum supersedes this parameter's older ones
                mine = self._by_param.setdefault(param, [])
            if self._bytes + size > self.max_bytes:
                if not mine:
                    self._by_param.pop(param, None)
                return
            self._items[key] = (value, size)
            self._bytes += size
            mine.append(key)

    def _drop(self, key) -> None:
        value = self._items.pop(key, None)
        if value is not None:
            self._bytes -= value[1]
        siblings = self._by_param.get(key[0])
        if siblings is not None:
            if key in siblings:
                siblings.remove(key)
            if not siblings:
                del self._by_param[key[0]]

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._by_param.clear()
            self._bytes = 0


class FreeMemoryPolicy:
    """The byte budget of a cache on an accelerator, from the device's free memory.

        budget = min(cap, fraction · (free + held))          while free ≥ reserve
        budget = max(0, held − (reserve − free))             below it (the shortfall is given back)

    ``free`` comes from ``probe()`` (e.g. ComfyUI's ``get_free_memory(device)``)
    and is re-read on every admission, so the cache grows into spare VRAM and
    is the first thing to give way when the host's own allocations press:
    ``held`` counts as available because dropping it frees it.
    """

    def __init__(self, probe: Callable[[], int], fraction: float = 0.25, reserve: int = 1 << 30,
                 cap: int | None = None):
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(f"fraction must be within 0…1, got {fraction!r}")
        self.probe = probe
        self.fraction = fraction
        self.reserve = reserve
        self.cap = cap

    def budget(self, held: int) -> int:
        free = int(self.probe())
        if free < self.reserve:
            return max(0, held - (self.reserve - free))
        budget = int(self.fraction * (free + held))
        return budget if self.cap is None else min(self.cap, budget)


__all__ = ["ParsedFileCache", "ByteLRU", "DeltaCache", "FreeMemoryPolicy", "env_bytes", "tensor_bytes"]
