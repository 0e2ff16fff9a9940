"""MergePatcher keeps the original tensor as the backup and gives the parameter new storage.

One read of W₀ and one write of W₀ + D per merged weight (no copy of W₀ aside),
restore re-points the parameter at its original storage (no copy back).  Each
test below is one holder of a reference that could see a swapped storage:

* code holding the ``nn.Parameter`` (``w = module.weight``, closures, ComfyUI's
  ``state_dict(keep_vars=True)``) sees the merge and the restore;
* tied weights (one Parameter under two names, or two Parameters on one
  storage) stay tied: they are written in place, and a plan patching one
  tensor through two names is refused;
* plain tensors (buffers, ``state_dict()`` views handed in as params) are
  written in place, so the module sees them;
* a ``state_dict()`` or ``.data`` alias taken *before* the merge keeps reading
  W₀ (it is the backup) — documented snapshot semantics;
* ``torch.compile`` guards: a compiled forward sees the merged and the
  restored weight without recompiling;
* a parameter re-pointed at its original by someone else is never written
  through (the backup stays W₀);
* CUDA parameters with a CPU offload device keep the pinned-copy path.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

from lora_core.errors import ModelMismatchError
from lora_core.ir import CoverageReport, LoraWeights, ModulePatch, ResolvedPatch
from lora_core.patcher import MergePatcher
from lora_core.plan import build_plan


def lora(out, inp, rank=4, seed=0, name="m"):
    g = torch.Generator().manual_seed(seed)
    return ModulePatch(name=name, weight=LoraWeights(up=torch.randn(out, rank, generator=g) * 0.1,
                                                     down=torch.randn(rank, inp, generator=g) * 0.1), scale=0.5)


def plan_for(*pairs, strength=1.0):
    matched = tuple(ResolvedPatch(p, key) for key, p in pairs)
    return build_plan([(CoverageReport(file="x.safetensors", matched=matched, unmatched=()), strength, None)])


def bits(t):
    view = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()]
    return t.detach().contiguous().view(view).clone()


def expected(w0, patch, strength=1.0):
    d = patch.weight.up.double() @ patch.weight.down.double() * (strength * patch.scale)
    return (w0.double() + d).to(w0.dtype)


@pytest.fixture
def net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(24, 16), nn.Linear(16, 24)).half()


def test_merge_gives_new_storage_and_keeps_the_original_as_backup(net):
    param = net[0].weight
    ptr0, w0 = param.data_ptr(), bits(param)
    patch = lora(16, 24)
    patcher = MergePatcher(dict(net.named_parameters()))
    patcher.apply(plan_for(("0.weight", patch)))
    assert net[0].weight is param                      # same Parameter object
    assert param.data_ptr() != ptr0                    # new storage holds W₀ + D
    torch.testing.assert_close(param.detach().float(), expected(w0.view(param.dtype), patch).float(),
                               rtol=0, atol=2e-3)
    patcher.restore()
    assert param.data_ptr() == ptr0                    # the original storage itself is back
    assert torch.equal(bits(param), w0)


def test_holders_of_the_parameter_see_merge_and_restore(net):
    held = net[0].weight                               # e.g. inference code holding module.weight
    forward = lambda x: nn.functional.linear(x, held)  # noqa: E731 - a closure over the Parameter
    x = torch.randn(3, 24).half()
    y0 = forward(x).clone()
    patch = lora(16, 24, seed=3)
    patcher = MergePatcher(net.state_dict(keep_vars=True))  # ComfyUI's form
    patcher.apply(plan_for(("0.weight", patch), strength=2.0))
    assert torch.equal(forward(x), nn.functional.linear(x, net[0].weight))  # closure sees the module's weight
    assert not torch.equal(forward(x), y0)
    patcher.restore()
    assert torch.equal(forward(x), y0)


def test_incremental_reapply_writes_into_its_own_storage(net):
    param = net[0].weight
    ptr0, w0 = param.data_ptr(), bits(param)
    patch = lora(16, 24)
    patcher = MergePatcher(dict(net.named_parameters()))
    patcher.apply(plan_for(("0.weight", patch), strength=1.0))
    ptr1 = param.data_ptr()
    patcher.apply(plan_for(("0.weight", patch), strength=-0.5))
    assert param.data_ptr() == ptr1                    # no new allocation on a slider change
    fresh = nn.Sequential(nn.Linear(24, 16), nn.Linear(16, 24)).half()
    fresh.load_state_dict(_state_with(net, "0.weight", w0))
    MergePatcher(dict(fresh.named_parameters())).apply(plan_for(("0.weight", patch), strength=-0.5))
    assert torch.equal(bits(param), bits(fresh[0].weight))
    patcher.restore()
    assert param.data_ptr() == ptr0 and torch.equal(bits(param), w0)


def _state_with(net, key, raw_bits):
    sd = {k: v.detach().clone() for k, v in net.state_dict().items()}
    sd[key] = raw_bits.view(sd[key].dtype).view(sd[key].shape).clone()
    return sd


def test_alias_taken_before_merge_is_a_snapshot_of_the_original(net):
    snapshot = net.state_dict()["0.weight"]            # detached view of the original storage
    w0 = bits(snapshot)
    patcher = MergePatcher(dict(net.named_parameters()))
    patcher.apply(plan_for(("0.weight", lora(16, 24))))
    assert torch.equal(bits(snapshot), w0)             # it is the backup: never written
    assert not torch.equal(bits(net.state_dict()["0.weight"]), w0)  # a fresh state_dict sees the merge
    patcher.restore()
    assert net.state_dict()["0.weight"].data_ptr() == snapshot.data_ptr()


def test_plain_tensors_are_written_in_place_so_the_model_sees_them(net):
    views = net.state_dict()                           # detached views, not the Parameters
    ptr0, w0 = net[0].weight.data_ptr(), bits(net[0].weight)
    patcher = MergePatcher(views)
    patcher.apply(plan_for(("0.weight", lora(16, 24))))
    assert net[0].weight.data_ptr() == ptr0
    assert torch.equal(bits(views["0.weight"]), bits(net[0].weight))
    assert not torch.equal(bits(net[0].weight), w0)
    patcher.restore()
    assert torch.equal(bits(net[0].weight), w0)


def test_one_parameter_under_two_names_stays_tied():
    torch.manual_seed(1)
    a, b = nn.Linear(16, 16, bias=False), nn.Linear(16, 16, bias=False)
    b.weight = a.weight                                # tied: one Parameter, two modules
    net = nn.ModuleDict({"a": a, "b": b})
    params = net.state_dict(keep_vars=True)            # lists both names
    assert params["a.weight"] is params["b.weight"]
    w0 = bits(a.weight)
    patcher = MergePatcher(params)
    patcher.apply(plan_for(("a.weight", lora(16, 16))))
    assert net["a"].weight is net["b"].weight
    assert torch.equal(bits(net["b"].weight), bits(net["a"].weight)) and not torch.equal(bits(a.weight), w0)
    patcher.restore()
    assert torch.equal(bits(b.weight), w0)


def test_two_parameters_on_one_storage_stay_tied():
    torch.manual_seed(2)
    a, b = nn.Linear(16, 16, bias=False), nn.Linear(16, 16, bias=False)
    b.weight = nn.Parameter(a.weight.data)             # two Parameter objects, one storage
    net = nn.ModuleDict({"a": a, "b": b})
    w0 = bits(a.weight)
    patcher = MergePatcher(dict(net.named_parameters(remove_duplicate=False)))
    patcher.apply(plan_for(("a.weight", lora(16, 16))))
    assert a.weight.data_ptr() == b.weight.data_ptr()
    assert torch.equal(bits(b.weight), bits(a.weight)) and not torch.equal(bits(a.weight), w0)
    patcher.restore()
    assert torch.equal(bits(a.weight), w0) and torch.equal(bits(b.weight), w0)


def test_a_plan_patching_one_tensor_through_two_names_is_refused():
    a, b = nn.Linear(16, 16, bias=False), nn.Linear(16, 16, bias=False)
    b.weight = a.weight
    net = nn.ModuleDict({"a": a, "b": b})
    w0 = bits(a.weight)
    patcher = MergePatcher(net.state_dict(keep_vars=True))
    with pytest.raises(ModelMismatchError, match="a.weight.*b.weight|b.weight.*a.weight"):
        patcher.apply(plan_for(("a.weight", lora(16, 16)), ("b.weight", lora(16, 16, seed=5, name="n"))))
    assert torch.equal(bits(a.weight), w0)


def test_a_parameter_repointed_at_its_original_is_never_written_through(net):
    param = net[0].weight
    original = param.data                              # the storage that becomes the backup
    w0 = bits(original)
    patch = lora(16, 24)
    patcher = MergePatcher(dict(net.named_parameters()))
    patcher.apply(plan_for(("0.weight", patch)))
    param.data = original                              # someone else restores it (e.g. a host's own unpatch)
    patcher.apply(plan_for(("0.weight", patch), strength=0.5))
    assert torch.equal(bits(original), w0)             # the backup was not overwritten
    assert param.data_ptr() != original.data_ptr()
    patcher.restore()
    assert torch.equal(bits(param), w0)


def test_compiled_forward_sees_merge_and_restore_without_recompiling():
    import torch._dynamo
    from torch._dynamo.testing import CompileCounter
    torch._dynamo.reset()
    torch.manual_seed(4)
    lin = nn.Linear(24, 16)
    counter = CompileCounter()
    compiled = torch.compile(lin, backend=counter)
    x = torch.randn(5, 24)
    with torch.no_grad():
        y0 = compiled(x).clone()
        patcher = MergePatcher(dict(lin.named_parameters()))
        patcher.apply(plan_for(("weight", lora(16, 24, seed=9))))
        assert torch.equal(compiled(x), lin.forward(x))
        assert not torch.equal(compiled(x), y0)
        patcher.restore()
        assert torch.equal(compiled(x), y0)
    assert counter.frame_count == 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_parameter_with_cpu_offload_keeps_pinned_copy_and_in_place_write():
    torch.manual_seed(5)
    lin = nn.Linear(64, 32).cuda().half()
    ptr0, w0 = lin.weight.data_ptr(), bits(lin.weight).cpu()
    patcher = MergePatcher(dict(lin.named_parameters()))  # default offload: pinned CPU
    patcher.apply(plan_for(("weight", lora(32, 64))))
    assert lin.weight.data_ptr() == ptr0               # VRAM holds one copy, the original is in RAM
    assert all(b.tensor.device.type == "cpu" for b in patcher._backups.values())
    patcher.restore()
    assert torch.equal(bits(lin.weight).cpu(), w0)
