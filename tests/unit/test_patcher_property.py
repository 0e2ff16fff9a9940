"""Property: any sequence of stacks applied incrementally equals a fresh apply,
bit for bit, and the final restore gives back the original bits.

Random stacks of plain LoRAs (whole weights, fused-qkv slices, conv), DoRA,
full diffs and bias patches over fp32, fp16 and bf16 weights; random
strengths including 0 (a disabled row), block-weight mutes and re-orders of
nothing but strengths between states.
"""
from __future__ import annotations

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from lora_core.ir import CoverageReport, DoraMagnitude, FullWeights, LoraWeights, ModulePatch, ResolvedPatch, Slice
from lora_core import patcher as patcher_module
from lora_core.patcher import MergePatcher
from lora_core.plan import build_plan

DTYPES = [torch.float32, torch.float16, torch.bfloat16]

# (weight key, slice, out, in-shape)
TARGETS = [
    ("a.weight", None, 16, (24,)),
    ("b.weight", None, 24, (16,)),
    ("qkv.weight", None, 48, (16,)),
    ("qkv.weight", Slice(0, 0, 16), 16, (16,)),
    ("qkv.weight", Slice(0, 16, 16), 16, (16,)),
    ("qkv.weight", Slice(0, 32, 16), 16, (16,)),
    ("conv.weight", None, 8, (4, 3, 3)),
]
KINDS = ["lora", "lora", "full", "dora", "bias"]
STRENGTHS = st.one_of(st.sampled_from([0.0, 0.0, 1.0, -1.0, 0.5, 0.25]),
                      st.floats(-2, 2, allow_nan=False, width=32))


class Net(nn.Module):
    def __init__(self, dtype):
        super().__init__()
        torch.manual_seed(7)
        self.a = nn.Linear(24, 16)
        self.b = nn.Linear(16, 24)
        self.qkv = nn.Linear(16, 48)
        self.conv = nn.Conv2d(4, 8, 3)
        self.to(dtype)


def bits(t):
    view = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()]
    return t.detach().contiguous().view(view)


def snapshot(net):
    return {k: bits(v).clone() for k, v in net.state_dict().items()}


def make_patch(kind, target, rank, seed):
    key, slice_, out, inner = target
    g = torch.Generator().manual_seed(seed)
    n_in = 1
    for d in inner:
        n_in *= d
    name = f"p{seed}"
    if kind == "bias":
        return ResolvedPatch(ModulePatch(name=name, bias=torch.randn(out, generator=g) * 0.1,
                                         bias_scale=0.5), None, key.replace(".weight", ".bias"), slice_)
    if kind == "full":
        return ResolvedPatch(ModulePatch(name=name, weight=FullWeights(torch.randn(out, *inner, generator=g) * 0.05)),
                             key, slice=slice_)
    if len(inner) > 1:
        up = torch.randn(out, rank, 1, 1, generator=g) * 0.2
        down = torch.randn(rank, inner[0], *inner[1:], generator=g) * 0.2
    else:
        up = torch.randn(out, rank, generator=g) * 0.2
        down = torch.randn(rank, n_in, generator=g) * 0.2
    dora = DoraMagnitude(torch.rand(out, generator=g) + 0.5, "out") if kind == "dora" else None
    return ResolvedPatch(ModulePatch(name=name, weight=LoraWeights(up=up, down=down), scale=rank / 2, dora=dora),
                         key, slice=slice_)


files_strategy = st.lists(
    st.lists(st.tuples(st.sampled_from(KINDS), st.sampled_from(TARGETS), st.integers(1, 6),
                       st.integers(0, 2**31 - 1)), min_size=1, max_size=4),
    min_size=1, max_size=4)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(dtype=st.sampled_from(DTYPES), files=files_strategy, data=st.data())
def test_incremental_equals_fresh_and_restore_is_exact(dtype, files, data):
    # params as Parameters: merges swap in new storage (W₀'s storage is the backup);
    # as state_dict() views: written in place behind copied backups.  Both must agree.
    reports = [CoverageReport(file=f"f{i}.safetensors",
                              matched=tuple(make_patch(k, t, r, s) for k, t, r, s in patches), unmatched=())
               for i, patches in enumerate(files)]
    n_states = data.draw(st.integers(1, 5), label="states")
    # small row blocks make blocks cross slice boundaries
    block = data.draw(st.sampled_from([16, 40, 100, 1 << 19]), label="block elements")
    saved_block, patcher_module.BLOCK_ELEMENTS = patcher_module.BLOCK_ELEMENTS, block
    try:
        _run_states(dtype, reports, n_states, data, data.draw(st.booleans(), label="views"))
    finally:
        patcher_module.BLOCK_ELEMENTS = saved_block


def _run_states(dtype, reports, n_states, data, views=False):
    net = Net(dtype)
    original = snapshot(net)
    patcher = MergePatcher(net.state_dict() if views else dict(net.named_parameters()))
    for _ in range(n_states):
        strengths = data.draw(st.lists(STRENGTHS, min_size=len(reports), max_size=len(reports)), label="strengths")
        muted = data.draw(st.sampled_from([None, "a.", "qkv.", "conv."]), label="muted block")
        mult = (lambda key, m=muted: 0.0 if key.startswith(m) else 1.0) if muted else None
        plan = build_plan([(r, s, mult) for r, s in zip(reports, strengths)])
        stats = patcher.apply(plan)
        assert stats.written + stats.unchanged == len(plan)

        fresh = Net(dtype)
        MergePatcher(dict(fresh.named_parameters())).apply(plan)
        expected = snapshot(fresh)
        got = snapshot(net)
        for key in expected:
            assert torch.equal(got[key], expected[key]), key
        for key in set(original) - set(plan):  # untouched parameters keep their bits
            assert torch.equal(got[key], original[key]), key
    patcher.restore()
    assert patcher.backup_bytes == 0
    for key, value in snapshot(net).items():
        assert torch.equal(value, original[key]), key
