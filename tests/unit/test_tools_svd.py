"""The low-rank maths: Eckart–Young error, energy rule, product path, randomized path."""
import math

import pytest
import torch

from lora_core.errors import PatchbayError
from lora_core.tools.svd import RankRule, low_rank, low_rank_of_product


def _decaying(m, n, seed=0):
    g = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(m, min(m, n), generator=g))
    v, _ = torch.linalg.qr(torch.randn(n, min(m, n), generator=g))
    s = torch.tensor([0.8 ** i for i in range(min(m, n))])
    return (u * s) @ v.T, s


def test_error_is_the_tail_energy_and_measured():
    d, s = _decaying(40, 30)
    for k in (1, 5, 20):
        low = low_rank(d, RankRule(rank=k))
        want = math.sqrt(float((s[k:] ** 2).sum() / (s ** 2).sum()))
        measured = float((low.up @ low.down - d).norm() / d.norm())
        assert low.rank == k
        assert low.rel_error == pytest.approx(want, rel=1e-4, abs=1e-6)
        assert measured == pytest.approx(want, rel=1e-3, abs=1e-6)


def test_energy_rule_keeps_the_fewest_values():
    d, s = _decaying(40, 30)
    low = low_rank(d, RankRule(energy=0.9))
    e = torch.cumsum(s ** 2, 0) / (s ** 2).sum()
    assert low.rank == int((e < 0.9).sum()) + 1 and low.energy >= 0.9
    assert low_rank(d, RankRule(rank=2, energy=0.9)).rank == 2


def test_exact_rule_stops_at_the_numerical_rank_and_zero_is_none():
    g = torch.Generator().manual_seed(1)
    d = torch.randn(50, 3, generator=g) @ torch.randn(3, 60, generator=g)
    low = low_rank(d, RankRule())
    assert low.rank == 3 and float((low.up @ low.down - d).norm() / d.norm()) < 1e-5
    assert low_rank(torch.zeros(5, 4), RankRule(rank=2)) is None


def test_product_path_equals_dense_path():
    g = torch.Generator().manual_seed(2)
    b, a = torch.randn(64, 12, generator=g), torch.randn(12, 48, generator=g)
    for k in (3, 12):
        p, d = low_rank_of_product(b, a, RankRule(rank=k)), low_rank(b @ a, RankRule(rank=k))
        assert p.rel_error == pytest.approx(d.rel_error, abs=1e-5)
        assert torch.allclose(p.up @ p.down, d.up @ d.down, atol=1e-3)


def test_randomized_path_reports_the_true_error():
    d, s = _decaying(600, 500, seed=3)
    low = low_rank(d, RankRule(rank=8))  # 500 > 4·(8+10): randomized
    measured = float((low.up @ low.down - d).norm() / d.norm())
    want = math.sqrt(float((s[8:] ** 2).sum() / (s ** 2).sum()))
    assert measured == pytest.approx(want, rel=1e-3)
    assert low.rel_error == pytest.approx(measured, rel=1e-3)


@pytest.mark.parametrize("kw", [{"rank": 0}, {"rank": -1}, {"energy": 0.0}, {"energy": 1.5}])
def test_bad_rules(kw):
    with pytest.raises(PatchbayError):
        RankRule(**kw)
