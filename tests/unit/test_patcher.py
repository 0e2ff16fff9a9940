"""MergePatcher: merge maths, exact restore, incremental re-patch, all-or-nothing,
zero-cost strength 0, float8 stochastic rounding, reshape and slices.

Resolved patches are built directly (ModulePatch + weights); references are
computed in float64 from the formulas, and PEFT's own merge is an oracle.
"""
from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from lora_core.errors import ModelMismatchError, NonFiniteError, PatchbayError, ShapeMismatchError
from lora_core.ir import (CoverageReport, DoraMagnitude, FullWeights, LohaWeights, LoraWeights, ModulePatch,
                          ResolvedPatch, Slice)
from lora_core.kinds import delta_weight
from lora_core import patcher as patcher_module
from lora_core.patcher import MergePatcher, key_seed, stochastic_round
from lora_core.plan import Contribution, build_plan


# ---------------------------------------------------------------- helpers

def lora_patch(out, inp, rank, *, scale=0.5, name="m", gen=None, dora=None, bias=None, mid=None, conv=None):
    g = gen or torch.Generator().manual_seed(out * 1000 + inp * 10 + rank)
    if conv:
        up = torch.randn(out, rank, 1, 1, generator=g) * 0.1
        down = torch.randn(rank, inp, *conv, generator=g) * 0.1
    else:
        up = torch.randn(out, rank, generator=g) * 0.1
        down = torch.randn(rank, inp, generator=g) * 0.1
    return ModulePatch(name=name, weight=LoraWeights(up=up, down=down, mid=mid), scale=scale, dora=dora,
                       bias=bias)


def report(*resolved, file="x.safetensors"):
    return CoverageReport(file=file, matched=tuple(resolved), unmatched=())


def bits(t: torch.Tensor) -> torch.Tensor:
    view = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()]
    return t.detach().contiguous().view(view)


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(bits(a), bits(b))


class Net(nn.Module):
    def __init__(self, dtype=torch.float32, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.a = nn.Linear(24, 16)
        self.b = nn.Linear(16, 24)
        self.qkv = nn.Linear(16, 48)  # fused q/k/v, 16 rows each
        self.conv = nn.Conv2d(4, 8, 3, padding=1)
        self.to(dtype)


def snapshot(net):
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def params_of(net):
    return dict(net.named_parameters())


class Exploding(torch.Tensor):
    """A tensor that fails on any use: proves that no data is read."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        if func in (torch.Tensor.__repr__,):
            return "Exploding()"
        raise AssertionError(f"tensor data was touched via {getattr(func, '__name__', func)}")


def exploding(*shape):
    return torch.Tensor._make_subclass(Exploding, torch.zeros(*shape))


# ---------------------------------------------------------------- maths

def test_merge_matches_float64_reference_for_a_mixed_stack():
    net = Net()
    w0 = snapshot(net)
    g = torch.Generator().manual_seed(1)
    p1 = lora_patch(16, 24, 4, scale=0.25, gen=g)
    p2 = lora_patch(16, 24, 8, scale=2.0, gen=g)
    full = ModulePatch(name="f", weight=FullWeights(torch.randn(16, 24, generator=g) * 0.01))
    dora_mag = torch.rand(16, generator=g) + 0.5
    pd = lora_patch(16, 24, 2, scale=1.0, gen=g, dora=DoraMagnitude(dora_mag, "out"))
    bias = ModulePatch(name="bb", weight=None, bias=torch.randn(16, generator=g), bias_scale=0.5)
    plan = build_plan([
        (report(ResolvedPatch(p1, "a.weight")), 0.7, None),
        (report(ResolvedPatch(p2, "a.weight"), ResolvedPatch(bias, None, "a.bias")), -1.3, None),
        (report(ResolvedPatch(full, "a.weight")), 0.5, None),
        (report(ResolvedPatch(pd, "a.weight")), 0.9, None),
    ])
    stats = MergePatcher(params_of(net)).apply(plan)
    assert stats.lora_gemms == 1 and stats.dense_deltas == 2 and stats.bias_adds == 1

    W = w0["a.weight"].double()
    ref = W.clone()
    ref += 0.7 * 0.25 * p1.weight.up.double() @ p1.weight.down.double()
    ref += -1.3 * 2.0 * p2.weight.up.double() @ p2.weight.down.double()
    ref += 0.5 * full.weight.diff.double()
    merged = W + pd.weight.up.double() @ pd.weight.down.double()
    dora_w = merged * (dora_mag.double()[:, None] / merged.norm(dim=1, keepdim=True))
    ref += 0.9 * (dora_w - W)
    torch.testing.assert_close(net.a.weight.detach().double(), ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(net.a.bias.detach().double(),
                               w0["a.bias"].double() - 1.3 * 0.5 * bias.bias.double(), rtol=1e-5, atol=1e-6)


def test_matches_peft_merge():
    peft = pytest.importorskip("peft")
    torch.manual_seed(3)
    base = nn.Sequential(nn.Linear(32, 20))
    ours = copy.deepcopy(base)
    cfg = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["0"], init_lora_weights=False)
    model = peft.get_peft_model(copy.deepcopy(base), cfg)
    layer = model.base_model.model[0]
    up = layer.lora_B["default"].weight.detach().clone()
    down = layer.lora_A["default"].weight.detach().clone()
    merged = model.merge_and_unload()[0].weight.detach()
    patch = ModulePatch(name="0", weight=LoraWeights(up=up, down=down), scale=8 / 4)
    MergePatcher(params_of(ours)).apply(build_plan([(report(ResolvedPatch(patch, "0.weight")), 1.0, None)]))
    torch.testing.assert_close(ours[0].weight.detach(), merged, rtol=1e-5, atol=1e-6)


def test_conv_tucker_and_loha_match_kinds():
    net = Net()
    w0 = snapshot(net)["conv.weight"]
    g = torch.Generator().manual_seed(5)
    tucker = ModulePatch(name="t", weight=LoraWeights(up=torch.randn(8, 2, 1, 1, generator=g),
                                                      down=torch.randn(2, 4, 1, 1, generator=g),
                                                      mid=torch.randn(2, 2, 3, 3, generator=g)), scale=0.1)
    locon = lora_patch(8, 4, 3, conv=(3, 3), gen=g)
    loha = ModulePatch(name="h", weight=LohaWeights(torch.randn(8, 2, generator=g), torch.randn(2, 36, generator=g),
                                                    torch.randn(8, 2, generator=g), torch.randn(2, 36, generator=g)),
                       scale=0.05)
    plan = build_plan([(report(ResolvedPatch(tucker, "conv.weight")), 1.0, None),
                       (report(ResolvedPatch(locon, "conv.weight")), 0.5, None),
                       (report(ResolvedPatch(loha, "conv.weight")), 2.0, None)])
    stats = MergePatcher(params_of(net)).apply(plan)
    assert stats.lora_gemms == 1 and stats.dense_deltas == 1
    ref = w0 + delta_weight(tucker, w0) + 0.5 * delta_weight(locon, w0) + 2.0 * delta_weight(loha, w0)
    torch.testing.assert_close(net.conv.weight.detach(), ref, rtol=1e-5, atol=1e-6)


def test_fused_qkv_slices_touch_only_their_rows():
    net = Net()
    w0 = snapshot(net)["qkv.weight"]
    q = lora_patch(16, 16, 4, name="q")
    v = lora_patch(16, 16, 2, name="v")
    full_k = ModulePatch(name="k", weight=FullWeights(torch.ones(16, 16)))
    plan = build_plan([(report(ResolvedPatch(q, "qkv.weight", slice=Slice(0, 0, 16)),
                               ResolvedPatch(full_k, "qkv.weight", slice=Slice(0, 16, 16)),
                               ResolvedPatch(v, "qkv.weight", slice=Slice(0, 32, 16))), 1.5, None)])
    MergePatcher(params_of(net)).apply(plan)
    w = net.qkv.weight.detach()
    torch.testing.assert_close(w[:16], w0[:16] + 1.5 * 0.5 * q.weight.up @ q.weight.down)
    torch.testing.assert_close(w[16:32], w0[16:32] + 1.5)
    torch.testing.assert_close(w[32:], w0[32:] + 1.5 * 0.5 * v.weight.up @ v.weight.down)


def test_row_blocks_crossing_slices_match_the_reference(monkeypatch):
    monkeypatch.setattr(patcher_module, "BLOCK_ELEMENTS", 5 * 16)  # 5-row blocks over 16-row slices
    net = Net()
    w0 = snapshot(net)["qkv.weight"]
    q, v, whole = lora_patch(16, 16, 4, name="q"), lora_patch(16, 16, 2, name="v"), lora_patch(48, 16, 3, name="w")
    plan = build_plan([(report(ResolvedPatch(q, "qkv.weight", slice=Slice(0, 0, 16)),
                               ResolvedPatch(whole, "qkv.weight"),
                               ResolvedPatch(v, "qkv.weight", slice=Slice(0, 32, 16))), 1.5, None)])
    stats = MergePatcher(params_of(net)).apply(plan)
    assert stats.lora_gemms == 3
    ref = w0.double() + 1.5 * 0.5 * whole.weight.up.double() @ whole.weight.down.double()
    ref[:16] += 1.5 * 0.5 * q.weight.up.double() @ q.weight.down.double()
    ref[32:] += 1.5 * 0.5 * v.weight.up.double() @ v.weight.down.double()
    torch.testing.assert_close(net.qkv.weight.detach().double(), ref, rtol=1e-5, atol=1e-6)


def test_failure_inside_row_blocks_restores_the_written_rows(monkeypatch):
    dtype = FP8[0] if FP8 else pytest.skip("no float8")
    monkeypatch.setattr(patcher_module, "BLOCK_ELEMENTS", 4 * 24)
    net = Net()
    net.a.weight.data = net.a.weight.data.to(dtype)
    w0 = snapshot(net)
    calls = []
    real = patcher_module.stochastic_round

    def fail_on_third(x, dt, gen):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("simulated device failure")
        return real(x, dt, gen)

    monkeypatch.setattr(patcher_module, "stochastic_round", fail_on_third)
    patcher = MergePatcher(params_of(net))
    with pytest.raises(RuntimeError, match="simulated"):
        patcher.apply(build_plan([(report(ResolvedPatch(lora_patch(16, 24, 4), "a.weight")), 1.0, None)]))
    _assert_untouched(net, w0, patcher)


def test_reshape_pads_and_restores_the_original_tensor():
    net = Net()
    param = net.a.weight
    original = param.data
    w0 = original.clone()
    full = ModulePatch(name="r", weight=FullWeights(torch.ones(20, 24)), reshape=(20, 24))
    patcher = MergePatcher(params_of(net))
    patcher.apply(build_plan([(report(ResolvedPatch(full, "a.weight")), 0.5, None)]))
    assert param.shape == (20, 24) and net.a.weight is param
    torch.testing.assert_close(param.detach()[:16], w0 + 0.5)
    torch.testing.assert_close(param.detach()[16:], torch.full((4, 24), 0.5))
    patcher.restore()
    assert param.shape == (16, 24) and same_bits(param.detach(), w0)


def test_parameter_object_is_kept_and_its_holders_see_the_merge():
    # The storage is new (W₀'s own storage is the backup, see test_patcher_storage.py);
    # modules and anything holding the Parameter object see the merged weight.
    net = Net()
    held = net.a.weight  # e.g. a ComfyUI module holding the Parameter
    patch = lora_patch(16, 24, 4)
    MergePatcher(net.state_dict(keep_vars=True)).apply(
        build_plan([(report(ResolvedPatch(patch, "a.weight")), 1.0, None)]))
    assert net.a.weight is held
    assert torch.equal(held.detach(), net.state_dict()["a.weight"])


# ---------------------------------------------------------------- restore and incremental

@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_restore_is_bit_exact_and_drops_backups(dtype):
    net = Net(dtype)
    w0 = snapshot(net)
    p1, p2 = lora_patch(16, 24, 4), lora_patch(24, 16, 8)
    patcher = MergePatcher(params_of(net))
    stats = patcher.apply(build_plan([(report(ResolvedPatch(p1, "a.weight"), ResolvedPatch(p2, "b.weight")), 3.0, None)]))
    assert stats.written == 2
    assert stats.backup_bytes == (16 * 24 + 24 * 16) * torch.empty((), dtype=dtype).element_size()
    assert not same_bits(net.a.weight, w0["a.weight"])
    assert patcher.restore() == 2
    assert patcher.backup_bytes == 0 and patcher.applied == {}
    for k, v in snapshot(net).items():
        assert same_bits(v, w0[k]), k


def test_incremental_repatch_recomputes_only_changed_and_equals_fresh():
    net = Net(torch.float16)
    w0 = snapshot(net)
    pa, pb, pq = lora_patch(16, 24, 4), lora_patch(24, 16, 8), lora_patch(16, 16, 2)
    ra = report(ResolvedPatch(pa, "a.weight"), ResolvedPatch(pb, "b.weight"), file="one")
    rq = report(ResolvedPatch(pq, "qkv.weight", slice=Slice(0, 16, 16)), ResolvedPatch(lora_patch(16, 24, 2, name="p2"), "a.weight", slice=Slice(0, 0, 16)), file="two")
    patcher = MergePatcher(params_of(net))
    patcher.apply(build_plan([(ra, 1.0, None), (rq, 0.5, None)]))
    new_plan = build_plan([(ra, 1.0, None), (rq, 0.8, None)])
    stats = patcher.apply(new_plan)
    assert (stats.written, stats.unchanged, stats.restored) == (2, 1, 0)

    fresh = Net(torch.float16)
    MergePatcher(params_of(fresh)).apply(new_plan)
    for k, v in snapshot(fresh).items():
        assert same_bits(snapshot(net)[k], v), k

    # dropping the second entry restores what only it touched
    stats = patcher.apply(build_plan([(ra, 1.0, None)]))
    assert (stats.written, stats.unchanged, stats.restored) == (1, 1, 1)
    assert same_bits(net.qkv.weight, w0["qkv.weight"])
    assert stats.backup_bytes == (16 * 24 + 24 * 16) * 2
    patcher.apply({})
    for k, v in snapshot(net).items():
        assert same_bits(v, w0[k]), k


def test_same_plan_again_touches_nothing():
    net = Net()
    plan = build_plan([(report(ResolvedPatch(lora_patch(16, 24, 4), "a.weight")), 1.0, None)])
    patcher = MergePatcher(params_of(net))
    patcher.apply(plan)
    stats = patcher.apply(dict(plan))
    assert stats.written == 0 and stats.unchanged == 1


def test_strength_zero_and_zero_multiplier_read_no_tensor():
    net = Net()
    w0 = snapshot(net)
    ghost = ModulePatch(name="ghost", weight=LoraWeights(up=exploding(16, 4), down=exploding(4, 24)),
                        bias=exploding(16))
    ghost_report = report(ResolvedPatch(ghost, "a.weight", "a.bias"), file="ghost")
    live = report(ResolvedPatch(lora_patch(24, 16, 4), "b.weight"), file="live")
    plan = build_plan([(ghost_report, 0.0, None), (live, 1.0, None)])
    assert set(plan) == {"b.weight"}
    patcher = MergePatcher(params_of(net))
    patcher.apply(plan)
    # a slider moves on the live entry; the disabled one still costs nothing
    stats = patcher.apply(build_plan([(ghost_report, 0.0, None), (live, 0.3, None)]))
    assert stats.written == 1 and patcher.patched_keys == ("b.weight",)
    assert same_bits(net.a.weight, w0["a.weight"]) and same_bits(net.a.bias, w0["a.bias"])
    # positive control: at a non-zero strength the ghost is read, fails, and is rolled back
    state = snapshot(net)
    with pytest.raises(AssertionError, match="touched"):
        patcher.apply(build_plan([(ghost_report, 1.0, None), (live, 0.3, None)]))
    for k, v in snapshot(net).items():
        assert same_bits(v, state[k]), k
    # block weights: a zero multiplier drops the key before anything is read
    plan = build_plan([(ghost_report, 1.0, lambda key: 0.0 if key.startswith("a.") else 1.0)])
    assert plan == {}


def test_contributions_compare_by_patch_identity():
    p = lora_patch(16, 24, 4)
    twin = ModulePatch(name=p.name, weight=p.weight, scale=p.scale)
    r1, r2 = ResolvedPatch(p, "a.weight"), ResolvedPatch(twin, "a.weight")
    assert Contribution(r1, 1.0) == Contribution(r1, 1.0)
    assert hash(Contribution(r1, 1.0)) == hash(Contribution(r1, 1.0))
    assert Contribution(r1, 1.0) != Contribution(r2, 1.0)
    assert Contribution(r1, 1.0) != Contribution(r1, 0.5)


# ---------------------------------------------------------------- failures

def _assert_untouched(net, w0, patcher):
    for k, v in snapshot(net).items():
        assert same_bits(v, w0[k]), k
    assert patcher.backup_bytes == 0


def test_shape_mismatch_rolls_back_everything():
    net = Net(torch.bfloat16)
    w0 = snapshot(net)
    good = report(ResolvedPatch(lora_patch(16, 24, 4), "a.weight"), ResolvedPatch(lora_patch(8, 4, 2, conv=(3, 3)), "conv.weight"))
    bad = report(ResolvedPatch(lora_patch(24, 17, 4), "b.weight"), file="wrong.safetensors")
    patcher = MergePatcher(params_of(net))
    with pytest.raises(ShapeMismatchError) as e:
        patcher.apply(build_plan([(good, 1.0, None), (bad, 1.0, None)]))
    assert e.value.file == "wrong.safetensors" and e.value.key == "b.weight"
    _assert_untouched(net, w0, patcher)


def test_nan_raises_naming_file_and_key_and_returns_to_previous_state():
    net = Net(torch.float16)
    w0 = snapshot(net)
    patcher = MergePatcher(params_of(net))
    good = report(ResolvedPatch(lora_patch(16, 24, 4), "a.weight"), ResolvedPatch(lora_patch(24, 16, 4), "b.weight"))
    patcher.apply(build_plan([(good, 1.0, None)]))
    state = snapshot(net)
    broken = lora_patch(24, 16, 2, name="lora_unet_broken")
    broken.weight.up[3, 1] = float("nan")
    bad = report(ResolvedPatch(broken, "b.weight"), ResolvedPatch(lora_patch(8, 4, 2, conv=(3, 3)), "conv.weight"),
                 file="broken.safetensors")
    with pytest.raises(NonFiniteError) as e:
        patcher.apply(build_plan([(good, 0.5, None), (bad, 1.0, None)]))
    assert e.value.file == "broken.safetensors" and e.value.key == "b.weight"
    assert "lora_unet_broken" in str(e.value)
    for k, v in snapshot(net).items():
        assert same_bits(v, state[k]), k
    assert set(patcher.patched_keys) == {"a.weight", "b.weight"}
    patcher.restore()
    for k, v in snapshot(net).items():
        assert same_bits(v, w0[k]), k


def test_fp16_overflow_is_non_finite():
    net = Net(torch.float16)
    w0 = snapshot(net)
    huge = ModulePatch(name="huge", weight=FullWeights(torch.full((16, 24), 70000.0)))
    patcher = MergePatcher(params_of(net))
    with pytest.raises(NonFiniteError) as e:
        patcher.apply(build_plan([(report(ResolvedPatch(huge, "a.weight"), file="big"), 1.0, None)]))
    assert e.value.key == "a.weight" and e.value.file == "big"
    _assert_untouched(net, w0, patcher)
    # the row-block path (plain LoRAs only) checks too
    loud = ModulePatch(name="loud", weight=LoraWeights(up=torch.full((24, 1), 300.0), down=torch.full((1, 16), 300.0)))
    with pytest.raises(NonFiniteError) as e:
        patcher.apply(build_plan([(report(ResolvedPatch(lora_patch(16, 24, 4), "a.weight"),
                                          ResolvedPatch(loud, "b.weight"), file="loud"), 1.0, None)]))
    assert e.value.key == "b.weight" and e.value.file == "loud"
    _assert_untouched(net, w0, patcher)


def test_unknown_key_and_integer_parameter_are_refused():
    net = Net()
    patcher = MergePatcher({**params_of(net), "idx": torch.zeros(3, dtype=torch.long)})
    with pytest.raises(ModelMismatchError):
        patcher.apply(build_plan([(report(ResolvedPatch(lora_patch(16, 24, 4), "nope.weight")), 1.0, None)]))
    with pytest.raises(ModelMismatchError):
        patcher.apply({"idx": (Contribution(ResolvedPatch(lora_patch(3, 1, 1), "idx"), 1.0),)})


def test_without_originals_bakes_once():
    net = Net()
    ref = Net()
    plan = build_plan([(report(ResolvedPatch(lora_patch(16, 24, 4), "a.weight"),
                               ResolvedPatch(ModulePatch(name="f", weight=FullWeights(torch.ones(24, 16))), "b.weight")),
                        1.0, None)])
    patcher = MergePatcher(params_of(net), keep_originals=False)
    calls = []
    patcher.apply(plan, progress=lambda done, total: calls.append((done, total)))
    assert calls == [(1, 2), (2, 2)] and patcher.backup_bytes == 0
    MergePatcher(params_of(ref)).apply(plan)
    for k, v in snapshot(ref).items():
        assert same_bits(snapshot(net)[k], v), k
    with pytest.raises(PatchbayError):
        patcher.apply({})


# ---------------------------------------------------------------- float8

FP8 = [getattr(torch, n) for n in ("float8_e4m3fn", "float8_e5m2") if hasattr(torch, n)]


@pytest.mark.parametrize("dtype", FP8)
def test_stochastic_rounding_is_unbiased(dtype):
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(512, generator=g) * 0.3).clamp(-2, 2)
    x = torch.cat([x, torch.tensor([0.0, -0.0, 1.0, 448.0 if dtype == FP8[0] else 0.5, 1e-4, -3e-3])])
    gen = torch.Generator().manual_seed(1)
    rounds = torch.stack([stochastic_round(x, dtype, gen).float() for _ in range(2000)])
    nearest = x.to(dtype).float()
    low, high = rounds.min(0).values, rounds.max(0).values
    # every sample is one of the two neighbours around x
    assert bool(((rounds == low) | (rounds == high)).all())
    assert bool(((low <= x) & (x <= high)).all())
    mean = rounds.mean(0)
    spread = high - low
    # standard error of a Bernoulli mix ≤ gap/(2·√n); allow 5 of them
    assert bool(((mean - x).abs() <= spread * 5 / (2 * math.sqrt(2000)) + 1e-7).all())
    exact = x.to(dtype).float() == x
    assert bool((rounds[:, exact] == x[exact]).all())
    # round-to-nearest would be visibly biased for small deltas: the mean tracks x instead
    assert (mean - x).abs().mean() < (nearest - x).abs().mean() / 4


@pytest.mark.parametrize("dtype", FP8)
def test_fp8_merge_is_reproducible_and_restores_exactly(dtype):
    def build():
        net = Net()
        net.a.weight.data = net.a.weight.data.to(dtype)
        net.b.weight.data = net.b.weight.data.to(dtype)
        return net
    plan = build_plan([(report(ResolvedPatch(lora_patch(16, 24, 4), "a.weight"),
                               ResolvedPatch(lora_patch(24, 16, 4), "b.weight")), 0.3, None)])
    n1, n2 = build(), build()
    w0 = snapshot(n1)
    p1 = MergePatcher(params_of(n1))
    p1.apply(plan)
    MergePatcher(params_of(n2)).apply(plan)
    assert same_bits(n1.a.weight, n2.a.weight) and same_bits(n1.b.weight, n2.b.weight)
    assert n1.a.weight.dtype == dtype and not same_bits(n1.a.weight, w0["a.weight"])
    # the merged weight is within one fp8 step of the exact fp32 sum
    exact = w0["a.weight"].float() + 0.3 * 0.5 * plan["a.weight"][0].resolved.patch.weight.up \
        @ plan["a.weight"][0].resolved.patch.weight.down
    assert (n1.a.weight.float() - exact).abs().max() <= exact.abs().max() * 0.26
    p1.restore()
    for k, v in snapshot(n1).items():
        assert same_bits(v, w0[k]), k


def test_key_seed_is_stable():
    assert key_seed("diffusion_model.x.weight") == key_seed("diffusion_model.x.weight")
    assert key_seed("a") != key_seed("b")
    # a fixed value: Python's salted hash() would change between processes
    assert key_seed("diffusion_model.x.weight") == 3082180589365543293
