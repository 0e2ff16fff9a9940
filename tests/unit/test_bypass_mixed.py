"""Bypass next to merged rows (issue 8): a base-dependent kind in bypass must be
computed against W₀, not against the weight that already holds merged rows, so
merged + bypassed rows give the same model as all of them merged.

The host passes ``originals`` (its backups of the merged parameters) to
``install_bypass``; here a snapshot taken before the merge plays that role.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

from lora_core.bypass import install_bypass
from lora_core.ir import (BoftWeights, CoverageReport, DoraMagnitude, GloraWeights, Ia3Weights, LokrWeights,
                          LoraWeights, ModulePatch, OftWeights, ResolvedPatch, SetWeights)
from lora_core.patcher import MergePatcher
from lora_core.plan import build_plan

G = torch.Generator().manual_seed(23)


def rnd(*shape, s=0.2):
    return torch.randn(*shape, generator=G) * s


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(5)
        self.fc = nn.Linear(16, 16)
        self.conv = nn.Conv2d(4, 16, 3, padding=1)


def report(name, *items):
    return CoverageReport(file=name, unmatched=(), matched=tuple(items))


def merged_rows():
    return [
        report("lokr", ResolvedPatch(ModulePatch("k", weight=LokrWeights(w1=rnd(4, 4), w2=rnd(4, 4))), "fc.weight"),
               ResolvedPatch(ModulePatch("kc", weight=LokrWeights(w1=rnd(4, 2), w2=rnd(4, 18))), "conv.weight")),
        report("lora", ResolvedPatch(ModulePatch("l", weight=LoraWeights(rnd(16, 2), rnd(2, 16)), bias=rnd(16)),
                                     "fc.weight", "fc.bias")),
    ]


BYPASS_ROWS = {
    "dora": lambda: report("dora", ResolvedPatch(ModulePatch(
        "d", weight=LoraWeights(rnd(16, 2), rnd(2, 16)), scale=0.5,
        dora=DoraMagnitude(torch.rand(16, generator=G) + 0.5, "out")), "fc.weight")),
    "oft": lambda: report("oft", ResolvedPatch(ModulePatch("o", weight=OftWeights(rnd(4, 4, 4, s=0.4))),
                                               "fc.weight"),
                          ResolvedPatch(ModulePatch("oc", weight=OftWeights(rnd(2, 8, 8, s=0.3))), "conv.weight")),
    "boft": lambda: report("boft", ResolvedPatch(ModulePatch(
        "b", weight=BoftWeights(rnd(2, 4, 4, 4, s=0.4), rescale=torch.rand(16, 1, generator=G) + 0.5)),
        "fc.weight")),
    "ia3": lambda: report("ia3", ResolvedPatch(ModulePatch(
        "i", weight=Ia3Weights(rnd(16, 1, s=0.5) + 1, on_input=False, scales_bias=True)), "fc.weight", "fc.bias"),
        ResolvedPatch(ModulePatch("ic", weight=Ia3Weights(rnd(16, s=0.5).double() + 1, on_input=False)),
                      "conv.weight")),
    "glora": lambda: report("glora", ResolvedPatch(ModulePatch(
        "g", weight=GloraWeights(rnd(16, 2), rnd(2, 16), rnd(16, 2), rnd(2, 16)), scale=0.5), "fc.weight")),
    "set": lambda: report("set", ResolvedPatch(ModulePatch("s", weight=SetWeights(rnd(16, 16, s=0.3))),
                                               "fc.weight")),
}


def outputs(net):
    g = torch.Generator().manual_seed(1)
    xs = {"fc": torch.randn(5, 16, generator=g), "conv": torch.randn(2, 4, 6, 6, generator=g)}
    with torch.no_grad():
        return {name: getattr(net, name)(x) for name, x in xs.items()}


def all_merged(rows, strengths):
    net = Net()
    MergePatcher(dict(net.named_parameters())).apply(build_plan([(r, s, None) for r, s in zip(rows, strengths)]))
    return outputs(net)


def mixed(merge, bypass, s_merge, s_bypass, with_originals=True):
    """``merge`` merged into the weights, then ``bypass`` installed (entry strengths live)."""
    net = Net()
    before = {k: v.detach().clone() for k, v in net.named_parameters()}
    merge_plan = build_plan([(r, s, None) for r, s in zip(merge, s_merge)])
    MergePatcher(dict(net.named_parameters())).apply(merge_plan)
    originals = {k: before[k] for k in merge_plan} if with_originals else None
    install_bypass(net, build_plan([(r, 1.0, None) for r in bypass]),
                   strengths=dict(enumerate(s_bypass)), originals=originals)
    return outputs(net)


def close(a, b, tol=1e-5):
    return all(torch.allclose(a[k], b[k], rtol=tol, atol=tol) for k in a)


@pytest.mark.parametrize("kind", sorted(BYPASS_ROWS))
def test_bypassed_base_dependent_row_next_to_merged_rows_equals_all_merged(kind):
    merge, bypass = merged_rows(), [BYPASS_ROWS[kind]()]
    s_merge, s_bypass = (0.9, -0.7), (0.8,)
    want = all_merged(merge + bypass, s_merge + s_bypass)
    assert not close(want, all_merged(merge, s_merge), 1e-3)  # the bypassed row does something
    got = mixed(merge, bypass, s_merge, s_bypass)
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-5, atol=1e-5, msg=f"{kind} {name}")
    # the defect this guards against: computed against the merged weight it is another model
    assert not close(mixed(merge, bypass, s_merge, s_bypass, with_originals=False), want, 1e-4)


def test_every_bypassed_kind_at_once_with_merged_rows():
    merge = merged_rows()
    bypass = [make() for _, make in sorted(BYPASS_ROWS.items())]
    s_merge = (1.1, 0.6)
    s_bypass = tuple(0.3 + 0.1 * i for i in range(len(bypass)))
    want = all_merged(merge + bypass, s_merge + s_bypass)
    got = mixed(merge, bypass, s_merge, s_bypass)
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-5, atol=1e-5, msg=name)
