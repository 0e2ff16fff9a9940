"""Bypass cost: the plain LoRAs of a layer are one GEMM down and one GEMM up.

With one strength for all samples a forward runs exactly those two GEMMs next
to the frozen layer (strengths folded into the cached up matrix, z in a reused
buffer, no dtype round trip); the cache follows every strength write, direct
``fill_`` included; per-sample strengths, fused-qkv slices and torch.compile
still equal the merged weights.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from lora_core.bypass import STATE_ATTR, install_bypass
from lora_core.ir import CoverageReport, LoraWeights, ModulePatch, ResolvedPatch, Slice
from lora_core.patcher import MergePatcher
from lora_core.plan import build_plan

VIEWS = {"t", "transpose", "view", "_unsafe_view", "slice", "as_strided", "expand", "detach", "alias",
         "reshape", "unsqueeze", "select", "permute", "_reshape_alias", "unflatten"}


def lora(out, inp, r, seed, scale=0.5):
    g = torch.Generator().manual_seed(seed)
    return ModulePatch(name=f"l{seed}", weight=LoraWeights(up=torch.randn(out, r, generator=g) * 0.2,
                                                           down=torch.randn(r, inp, generator=g) * 0.2),
                       scale=scale)


def reports():
    """Three files on one Linear(32, 24) and three slices of a fused Linear(16, 48)."""
    return [CoverageReport(file=f"f{i}", unmatched=(), matched=(
        ResolvedPatch(lora(24, 32, r, 10 + i), "fc.weight"),
        ResolvedPatch(lora(16, 16, 2, 20 + i), "qkv.weight", slice=Slice(0, 16 * i, 16))))
        for i, r in enumerate((4, 8, 2))]


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.fc = nn.Linear(32, 24)
        self.qkv = nn.Linear(16, 48)


def merged_out(strengths, x, name="fc"):
    net = Net()
    MergePatcher(dict(net.named_parameters())).apply(build_plan([(r, s, None) for r, s in zip(reports(), strengths)]))
    with torch.no_grad():
        return getattr(net, name)(x)


class Ops(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name not in VIEWS:
            self.ops.append(name)
        return func(*args, **(kwargs or {}))


def test_shared_strength_forward_is_one_gemm_down_and_one_up():
    net = Net()
    install_bypass(net, build_plan([(r, 1.0, None) for r in reports()]), strengths={0: 0.5, 1: -1.0, 2: 0.25})
    x = torch.randn(4, 6, 32)
    with torch.no_grad():
        net.fc(x)  # builds the cached up matrix and z buffer
        with Ops() as seen:
            y = net.fc(x)
    assert sorted(seen.ops) == ["addmm", "addmm_", "mm"], seen.ops  # frozen layer, A·x, U·z
    torch.testing.assert_close(y, merged_out((0.5, -1.0, 0.25), x), rtol=1e-5, atol=1e-5)
    assert net.fc.__dict__[STATE_ATTR].up is not None


def test_cached_up_follows_set_strength_and_direct_fill():
    net = Net()
    handle = install_bypass(net, build_plan([(r, 1.0, None) for r in reports()]))
    x = torch.randn(5, 32)
    with torch.no_grad():
        for values in [(1.0, 1.0, 1.0), (0.3, 0.0, -2.0)]:
            for e, v in enumerate(values):
                handle.set_strength(e, v)
            torch.testing.assert_close(net.fc(x), merged_out(values, x), rtol=1e-5, atol=1e-5)
        handle.strength(1).fill_(0.7)  # a slider bound to the 0-d tensor
        torch.testing.assert_close(net.fc(x), merged_out((0.3, 0.7, -2.0), x), rtol=1e-5, atol=1e-5)


def test_slices_too_sparse_to_fuse_run_per_slice_and_equal_merge():
    net = Net()
    install_bypass(net, build_plan([(r, 1.0, None) for r in reports()]), strengths={0: 0.5, 1: -1.0, 2: 0.25})
    assert net.qkv.__dict__[STATE_ATTR].up is None  # 3 slices of a third each: padding would triple the GEMM
    x = torch.randn(3, 16)
    with torch.no_grad():
        torch.testing.assert_close(net.qkv(x), merged_out((0.5, -1.0, 0.25), x, "qkv"), rtol=1e-5, atol=1e-5)


def test_per_sample_strengths_scale_rows_on_the_fused_path():
    net = Net()
    handle = install_bypass(net, build_plan([(r, 1.0, None) for r in reports()]))
    handle.set_strength(0, torch.tensor([0.0, 1.5]))
    handle.set_strength(1, 0.5)
    handle.set_strength(2, torch.tensor([1.0, -1.0]))
    x = torch.randn(2, 3, 32)
    with torch.no_grad():
        y = net.fc(x)
    for i, values in enumerate([(0.0, 0.5, 1.0), (1.5, 0.5, -1.0)]):
        torch.testing.assert_close(y[i], merged_out(values, x[i]), rtol=1e-5, atol=1e-5)


def test_bf16_activations_keep_their_dtype_and_cache_one_up_matrix():
    net = Net().to(torch.bfloat16)
    install_bypass(net, build_plan([(r, 1.0, None) for r in reports()]))
    x = torch.randn(4, 32)
    with torch.no_grad():
        y = net.fc(x.bfloat16())
        n = len(net.fc.__dict__[STATE_ATTR].cache)
        net.fc(x.bfloat16())
    assert y.dtype == torch.bfloat16 and len(net.fc.__dict__[STATE_ATTR].cache) == n
    torch.testing.assert_close(y.float(), merged_out((1.0, 1.0, 1.0), x), rtol=5e-2, atol=5e-2)


def test_compiled_forward_follows_live_strengths():
    import torch._dynamo
    torch._dynamo.reset()
    net = Net()
    handle = install_bypass(net, build_plan([(r, 1.0, None) for r in reports()]))
    fn = torch.compile(lambda t: net.fc(t), backend="eager")
    x = torch.randn(3, 32)
    with torch.no_grad():
        for values in [(1.0, 0.5, 0.0), (-1.0, 2.0, 0.5)]:
            for e, v in enumerate(values):
                handle.set_strength(e, v)
            torch.testing.assert_close(fn(x), merged_out(values, x), rtol=1e-5, atol=1e-5)


def test_installed_under_inference_mode_still_follows_live_strengths():
    net = Net()
    with torch.inference_mode():  # as ComfyUI's executor installs and runs it
        handle = install_bypass(net, build_plan([(r, 1.0, None) for r in reports()]))
        x = torch.randn(5, 32)
        for values in [(1.0, 1.0, 1.0), (0.3, -0.5, 2.0)]:
            for e, v in enumerate(values):
                handle.set_strength(e, v)
            torch.testing.assert_close(net.fc(x), merged_out(values, x), rtol=1e-5, atol=1e-5)
        handle.strength(0).fill_(-1.0)
        torch.testing.assert_close(net.fc(x), merged_out((-1.0, -0.5, 2.0), x), rtol=1e-5, atol=1e-5)


def test_buffers_made_under_inference_mode_do_not_break_a_grad_free_forward_outside_it():
    net = Net()
    handle = install_bypass(net, build_plan([(r, 1.0, None) for r in reports()]))
    x = torch.randn(5, 32)
    with torch.inference_mode():
        y_inf = net.fc(x)
    with torch.no_grad():  # e.g. a node running its own forward outside the executor's mode
        y = net.fc(x)
    torch.testing.assert_close(y, y_inf.clone())
    handle.remove()
