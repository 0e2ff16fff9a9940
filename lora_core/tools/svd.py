"""Low-rank factorisations, as pure functions of tensors.

For a matrix ΔW (m×n) with singular values σ₁ ≥ σ₂ ≥ … the best rank-k
approximation in the Frobenius norm is the truncated SVD (Eckart–Young)::

    ΔW ≈ up · down,   up = U_k·√Σ_k (m×k),   down = √Σ_k·V_kᵀ (k×n)

    energy kept  e_k = Σ_{i≤k} σᵢ² / Σ_i σᵢ²
    rel. error   ‖ΔW − up·down‖_F / ‖ΔW‖_F = √(1 − e_k)

The singular values are split evenly between the factors so neither overflows
in fp16.  A product B·A (m×R, R×n) is factorised without forming it, through
two thin QRs (B = Q_b R_b, Aᵀ = Q_a R_a, then the SVD of the small R_b·R_aᵀ).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch

from ..errors import PatchbayError

# A singular value below σ₁ · max(m, n) · this counts as zero (fp32 round-off).
NUMERICAL_ZERO = 4 * torch.finfo(torch.float32).eps


@dataclass(frozen=True)
class RankRule:
    """How many singular values to keep.

    ``rank``: at most this many; ``energy``: the fewest that keep this fraction
    of Σσ² (0 < energy ≤ 1).  Both: the smaller of the two.  Neither: every
    numerically non-zero one (an exact factorisation).
    """
    rank: Optional[int] = None
    energy: Optional[float] = None

    def __post_init__(self):
        if self.rank is not None and (not isinstance(self.rank, int) or self.rank < 1):
            raise PatchbayError(f"rank must be a positive integer, got {self.rank!r}",
                                fix="pass --rank 1 or more")
        if self.energy is not None and not (0.0 < float(self.energy) <= 1.0):
            raise PatchbayError(f"energy must lie in (0, 1], got {self.energy!r}",
                                fix="pass e.g. --energy 0.99")

    @property
    def exact(self) -> bool:
        return self.rank is None and self.energy is None

    def choose(self, s: torch.Tensor, shape: tuple[int, int]) -> int:
        """The number of singular values ``s`` (descending) to keep."""
        if s.numel() == 0 or float(s[0]) <= 0.0:
            return 0
        cutoff = float(s[0]) * max(shape) * NUMERICAL_ZERO
        k = int((s > cutoff).sum())
        if self.energy is not None:
            e = torch.cumsum(s.double() ** 2, 0)
            e = e / e[-1]
            k = min(k, int((e < float(self.energy) - 1e-12).sum()) + 1)
        if self.rank is not None:
            k = min(k, self.rank)
        return max(k, 1)


@dataclass(frozen=True)
class LowRank:
    """``up`` (m×k) · ``down`` (k×n) ≈ ΔW, with how good it is."""
    up: torch.Tensor
    down: torch.Tensor
    rel_error: float
    energy: float

    @property
    def rank(self) -> int:
        return int(self.down.shape[0])


def _from_svd(u: torch.Tensor, s: torch.Tensor, vh: torch.Tensor, rule: RankRule,
              shape: tuple[int, int], total: Optional[float] = None) -> Optional[LowRank]:
    """``total``: Σσ² of the whole matrix (‖ΔW‖_F²) when ``s`` holds only the leading values."""
    k = rule.choose(s, shape)
    if k == 0:
        return None
    s64 = s.double()
    if total is None:
        total = float((s64 ** 2).sum())
    kept = float((s64[:k] ** 2).sum())
    energy = kept / total if total > 0 else 1.0
    root = s[:k].sqrt()
    up = (u[:, :k] * root).float().contiguous()
    down = (root[:, None] * vh[:k]).float().contiguous()
    return LowRank(up=up, down=down, rel_error=math.sqrt(max(0.0, 1.0 - energy)), energy=energy)


# A rank-only rule on a matrix this many times wider than the rank uses the randomized SVD.
RANDOMIZED_MARGIN = 4
OVERSAMPLE = 10
POWER_ITERATIONS = 6


def low_rank(delta: torch.Tensor, rule: RankRule) -> Optional[LowRank]:
    """Truncated SVD of a dense ΔW (any shape; flattened to rows × rest).  None when ΔW = 0.

    With a rank (and no energy) far below the matrix's size, the leading
    singular triplets come from a randomized SVD (Halko et al.; ``rank + 10``
    columns, 6 power iterations), and the energy kept is measured against
    ‖ΔW‖_F², so the reported error stays the true one of the factors returned.
    """
    m = delta.shape[0]
    mat = delta.reshape(m, -1).float()
    small = min(mat.shape)
    if rule.rank is not None and rule.energy is None and small > RANDOMIZED_MARGIN * (rule.rank + OVERSAMPLE):
        total = float(mat.double().pow(2).sum())
        if total == 0.0:
            return None
        u, s, v = torch.svd_lowrank(mat, q=rule.rank + OVERSAMPLE, niter=POWER_ITERATIONS)
        return _from_svd(u, s, v.T, rule, tuple(mat.shape), total)
    u, s, vh = torch.linalg.svd(mat, full_matrices=False)
    return _from_svd(u, s, vh, rule, tuple(mat.shape))


def low_rank_of_product(b: torch.Tensor, a: torch.Tensor, rule: RankRule) -> Optional[LowRank]:
    """Truncated SVD of B·A (B m×R, A R×n) without forming the m×n product (fp64 core)."""
    b64, a64 = b.double(), a.double()
    qb, rb = torch.linalg.qr(b64)
    qa, ra = torch.linalg.qr(a64.T)
    u, s, vh = torch.linalg.svd(rb @ ra.T, full_matrices=False)
    return _from_svd(qb @ u, s, vh @ qa.T, rule, (int(b.shape[0]), int(a.shape[1])))
