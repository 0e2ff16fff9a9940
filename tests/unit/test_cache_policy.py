"""The accelerator ΔW cache budget: a fraction of free memory, given back first under pressure.

A fake free-memory probe stands in for the device (``FreeMemoryPolicy``).
"""
from __future__ import annotations

import pytest
import torch

from lora_core.cache import DeltaCache, FreeMemoryPolicy

MB = 1 << 20


class FakeDevice:
    def __init__(self, free):
        self.free = free

    def __call__(self):
        return self.free


def sum_of(mb):
    return torch.empty(mb * MB // 4, dtype=torch.float32)


def test_budget_is_a_fraction_of_free_plus_held():
    dev = FakeDevice(800 * MB)
    policy = FreeMemoryPolicy(dev, fraction=0.25, reserve=100 * MB)
    assert policy.budget(0) == 200 * MB
    assert policy.budget(200 * MB) == 250 * MB  # what the cache holds could be freed too
    assert FreeMemoryPolicy(dev, fraction=0.25, reserve=0, cap=64 * MB).budget(0) == 64 * MB


def test_below_the_reserve_the_shortfall_is_given_back():
    dev = FakeDevice(50 * MB)
    policy = FreeMemoryPolicy(dev, fraction=0.5, reserve=100 * MB)
    assert policy.budget(120 * MB) == 70 * MB
    assert policy.budget(30 * MB) == 0


def test_cache_grows_into_spare_memory_and_shrinks_when_the_host_allocates():
    dev = FakeDevice(400 * MB)
    cache = DeltaCache(0, policy=FreeMemoryPolicy(dev, fraction=0.25, reserve=50 * MB))
    cache.trim()
    assert cache.max_bytes == 100 * MB
    for i in range(8):
        cache.put((f"p{i}", "c"), sum_of(10))
        dev.free -= 10 * MB  # the cache's own bytes leave the device's free memory
    assert cache.bytes == 80 * MB and len(cache) == 8
    dev.free = 60 * MB  # the host loads a model: budget 0.25 · (60 + 80) = 35 MB
    assert cache.trim() == 50 * MB and cache.bytes == 30 * MB
    dev.free = 40 * MB  # below the 50 MB reserve: the 10 MB shortfall is given back
    assert cache.trim() == 10 * MB and cache.bytes == 20 * MB
    dev.free = 10 * MB
    cache.put(("new", "c"), sum_of(10))  # no room: not admitted, and more is given back
    assert ("new", "c") not in cache


def test_superseded_sums_go_before_other_parameters():
    dev = FakeDevice(1000 * MB)
    cache = DeltaCache(0, policy=FreeMemoryPolicy(dev, fraction=0.1, reserve=0))
    cache.put(("a", 1), sum_of(20))
    cache.put(("a", 2), sum_of(20))   # newer sum of "a": ("a", 1) is superseded
    cache.put(("b", 1), sum_of(20))
    dev.free = 450 * MB               # budget 0.1 · (450 + 60) = 51 MB: one sum must go
    cache.trim()
    assert ("a", 1) not in cache and ("a", 2) in cache and ("b", 1) in cache


def test_fraction_is_checked():
    with pytest.raises(ValueError):
        FreeMemoryPolicy(lambda: 0, fraction=1.5)


def test_recycle_hands_back_the_sum_a_new_one_would_evict():
    cache = DeltaCache(1 << 30, per_param=2)
    like = ((4, 4), torch.float32, "cpu")
    cache.put(("w", 1), torch.ones(4, 4))
    assert cache.recycle("w", *like) is None          # room for a second sum: nothing to give back
    cache.put(("w", 2), torch.full((4, 4), 2.0))
    assert cache.recycle("w", (2, 2), torch.float32, "cpu") is None  # another shape: no
    old = cache.recycle("w", *like)
    assert torch.equal(old, torch.ones(4, 4)) and ("w", 1) not in cache and ("w", 2) in cache
    assert cache.bytes == 64


def test_release_gives_back_superseded_sums_first_then_the_oldest():
    cache = DeltaCache(100 * MB, per_param=2)
    cache.put(("a", 1), sum_of(4))
    cache.put(("b", 1), sum_of(4))
    cache.put(("a", 2), sum_of(4))  # supersedes ("a", 1)
    assert cache.release(2 * MB) == 4 * MB
    assert ("a", 1) not in cache and ("a", 2) in cache and ("b", 1) in cache
    assert cache.release(5 * MB) == 8 * MB  # then whole parameters, oldest first, until enough
    assert len(cache) == 0 and cache.bytes == 0
    assert cache.release(MB) == 0


def test_release_only_touches_what_the_filter_names():
    from lora_core.cache import ByteLRU
    lru = ByteLRU(100 * MB)
    lru.put("cpu", (sum_of(2),))
    lru.put("meta", (torch.empty(MB // 4, device="meta"),))
    assert lru.release(10 * MB, where=lambda v: v[0].device.type == "meta") == MB
    assert "cpu" in lru and "meta" not in lru and lru.bytes == 2 * MB
