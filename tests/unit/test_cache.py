"""lora_core.cache: eviction order, byte bounds, per-parameter limit, hits bit-identical."""
from __future__ import annotations

import os

import pytest
import torch

from lora_core.cache import ByteLRU, DeltaCache, ParsedFileCache, env_bytes, tensor_bytes
from lora_core.errors import LoraFileError


def t(n: int, value: float = 1.0) -> torch.Tensor:
    return torch.full((n,), value, dtype=torch.float32)  # n·4 bytes


def bits(x: torch.Tensor) -> torch.Tensor:
    return x.contiguous().view(torch.int32)


# ---------------------------------------------------------------- ByteLRU

def test_byte_lru_evicts_least_recently_used_first():
    cache = ByteLRU(3 * 400)
    for k in "abc":
        cache.put(k, t(100))
    assert cache.get("a") is not None  # a is now the most recent
    cache.put("d", t(100))
    assert "b" not in cache and all(k in cache for k in "acd")
    cache.put("e", t(100))
    assert "c" not in cache and all(k in cache for k in "ade")


def test_byte_lru_never_exceeds_its_bytes():
    cache = ByteLRU(1000)
    sizes = [10, 200, 50, 120, 7, 240, 1, 90]
    for i, n in enumerate(sizes * 5):
        cache.put(i, t(n))
        assert cache.bytes <= 1000
        assert cache.bytes == sum(tensor_bytes(cache.get(k)) for k in list(cache._items))
    cache.put("huge", t(251))  # 1004 bytes alone: refused, nothing evicted for it
    assert "huge" not in cache and cache.bytes <= 1000


def test_byte_lru_counts_tuples_and_replaces_a_key():
    cache = ByteLRU(10_000)
    cache.put("k", (t(10), t(20, 2.0)))
    assert cache.bytes == 120
    cache.put("k", t(5))
    assert cache.bytes == 20 and len(cache) == 1


def test_byte_lru_hit_is_the_stored_tensor_bit_for_bit():
    cache = ByteLRU(1 << 20)
    value = torch.randn(64, generator=torch.Generator().manual_seed(0))
    value[3] = -0.0
    cache.put("k", value)
    hit = cache.get("k")
    assert hit is value and torch.equal(bits(hit), bits(value))
    assert (cache.hits, cache.misses) == (1, 0)
    assert cache.get("other") is None and cache.misses == 1


# ---------------------------------------------------------------- DeltaCache

def test_delta_cache_keeps_at_most_per_param_sums_newest_last():
    cache = DeltaCache(1 << 20, per_param=2)
    for i in range(4):
        cache.put(("w", i), t(10, float(i)))
    assert [k for k in cache._items if k[0] == "w"] == [("w", 2), ("w", 3)]
    cache.put(("v", 0), t(10))
    assert ("v", 0) in cache and len(cache) == 3


def test_delta_cache_full_evicts_superseded_sums_before_newest():
    cache = DeltaCache(4 * 400, per_param=2)
    cache.put(("a", 0), t(100))
    cache.put(("a", 1), t(100))   # supersedes a0
    cache.put(("b", 0), t(100))
    cache.put(("c", 0), t(100))   # full now
    cache.put(("d", 0), t(100))   # makes room by dropping a0 (not the newest of a)
    assert ("a", 0) not in cache
    assert all(k in cache for k in (("a", 1), ("b", 0), ("c", 0), ("d", 0)))
    assert cache.bytes <= cache.max_bytes


def test_delta_cache_cyclic_passes_keep_a_stable_subset_hitting():
    # ComfyUI re-patches every key in the same order: a plain LRU smaller than
    # one pass would miss every time; DeltaCache refuses newcomers instead.
    cache = DeltaCache(5 * 400)
    keys = [(f"p{i}", "same") for i in range(8)]
    for _ in range(3):
        for k in keys:
            if cache.get(k) is None:
                cache.put(k, t(100))
    cache.hits = cache.misses = 0
    for k in keys:
        if cache.get(k) is None:
            cache.put(k, t(100))
    assert cache.hits == 5 and cache.misses == 3
    assert cache.bytes <= cache.max_bytes


def test_delta_cache_refuses_oversized_values_and_clears():
    cache = DeltaCache(100)
    cache.put(("a", 0), t(26))  # 104 bytes
    assert len(cache) == 0
    cache.put(("a", 0), t(20))
    cache.clear()
    assert len(cache) == 0 and cache.bytes == 0 and not cache._by_param


# ---------------------------------------------------------------- ParsedFileCache

def _write(path, data: bytes):
    with open(path, "wb") as f:
        f.write(data)


def test_parsed_file_cache_hits_until_the_file_changes(tmp_path):
    path = tmp_path / "x.bin"
    _write(path, b"1234")
    calls = []
    cache = ParsedFileCache(1 << 20)
    load = lambda p: calls.append(p) or object()  # noqa: E731
    first = cache.get(str(path), load)
    assert cache.get(str(path), load) is first and len(calls) == 1
    _write(path, b"123456")  # size changes: re-read
    assert cache.get(str(path), load) is not first and len(calls) == 2
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # mtime only
    cache.get(str(path), load)
    assert len(calls) == 3


def test_parsed_file_cache_bounded_by_file_bytes_newest_kept(tmp_path):
    cache = ParsedFileCache(max_bytes=10)
    paths = []
    for i in range(3):
        p = tmp_path / f"{i}.bin"
        _write(p, b"x" * 4)
        paths.append(str(p))
        cache.get(str(p), lambda _: object())
    assert len(cache) == 2 and cache.bytes == 8  # the oldest went
    big = tmp_path / "big.bin"
    _write(big, b"x" * 50)
    cache.get(str(big), lambda _: object())
    assert len(cache) == 1  # over the bound alone, but the newest is kept


def test_parsed_file_cache_missing_file_names_it(tmp_path):
    with pytest.raises(LoraFileError, match="file not found"):
        ParsedFileCache().get(str(tmp_path / "gone.safetensors"), lambda p: None)


def test_env_bytes(monkeypatch):
    monkeypatch.setenv("PATCHBAY_TEST_MB", "1.5")
    assert env_bytes("PATCHBAY_TEST_MB", 7) == 3 << 19
    monkeypatch.setenv("PATCHBAY_TEST_MB", "lots")
    assert env_bytes("PATCHBAY_TEST_MB", 7) == 7 << 20
