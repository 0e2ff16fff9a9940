"""Orthogonal fine-tuning: OFT (block-diagonal rotation) and BOFT (butterfly).

Every rotation is built in float64 from the file's small skew-symmetric
blocks, and ΔW is formed from ``R − I`` directly, never as ``R·W − W``, so no
precision is lost to cancellation when the rotation is close to identity.

LyCORIS OFT (``diag-oft``, kohya OFT; rotates the *output* axis)::

    Q_k = B_k − B_kᵀ,   clipped to ‖Q‖_F ≤ alpha·out when alpha > 0
    R_k = (I + Q_k)(I − Q_k)⁻¹          (so R_k − I = 2·Q_k(I − Q_k)⁻¹)
    W'[block k] = R_kᵀ · W[block k]     rows k·b … k·b+b−1
    W'' = rescale ⊙ W'                  optional per-output-row ``rescale``

PEFT OFT (rotates the *input* axis, conv weights flattened to (out, in·kh·kw))::

    Q_k = skew(packed upper triangle), R_k = (I − Q_k)(I + Q_k)⁻¹
      or, with ``use_cayley_neumann``, R_k = I + 2Q + 2Q² + … + 2Q^(T−2) + Q^(T−1)
      (PEFT's own truncation, T = ``num_cayley_neumann_terms``; T = 3 adds Q³)
    W' = W · blockdiag(R)ᵀ              (``block_share``: one block repeated)

LyCORIS BOFT (output axis; m stages, stage i pairs rows 2^i·b/2 apart)::

    R_{i,k} from Q = B − Bᵀ as for OFT (one clip over all stages)
    stage i: permute rows (c, 2, k) → (c, k, 2) with k = 2^i·b/2, multiply each
             b-row block by R_{i,k}, undo the permutation
    W' = rescale ⊙ (stage_{m−1} ∘ … ∘ stage_0)(W)

PEFT BOFT (input axis)::

    Q = (B − Bᵀ)/2, R = (I − Q)(I + Q)⁻¹, M_i = P_i·blockdiag(R_i)·P_iᵀ with PEFT's
    block-butterfly permutation P_i, M = M_{m−1}⋯M_0, W' = (W·Mᵀ) ⊙ boft_s (rows)

ΔW = W' − W, so strength s gives W + s·ΔW (s = 0 is exactly W).  LyCORIS
itself interpolates each rotation towards I instead; both agree at s = 1.

Side path (LyCORIS layouts, which rotate the output axis; as LyCORIS'
``functional/diag_oft._bypass_diff`` and ComfyUI's OFT adapter do)::

    OFT:   Δy[block k] = (R_k − I)ᵀ·y[block k],  then  rescale ⊙ Δy + (rescale − 1) ⊙ y
    BOFT:  Δy = rescale ⊙ (stage_{m−1} ∘ … ∘ stage_0)(y) − y

on the channel axis of y = W·x, so the bypass never reads W (see
``kinds/side.py``).  PEFT's layouts rotate the input axis, which needs a
second pass through the layer: no side path, the bypass uses the dense ΔW.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

import torch

from ..errors import ShapeMismatchError
from ..ir import BoftWeights, OftWeights

_EPS = 1e-8  # LyCORIS adds it to ‖Q‖ before clipping


def _misfit(what: str, base: torch.Tensor) -> ShapeMismatchError:
    return ShapeMismatchError(f"{what} does not fit the weight {tuple(base.shape)}",
                              fix="the LoRA was made for another model")


def _clip(q: torch.Tensor, constraint: float, out_dim: int) -> torch.Tensor:
    if constraint > 0:
        bound = constraint * out_dim
        norm = torch.linalg.norm(q) + _EPS
        if norm > bound:
            q = q * (bound / norm)
    return q


def lycoris_rotation_minus_identity(blocks: torch.Tensor, constraint: float, out_dim: int) -> torch.Tensor:
    """(…, b, b) blocks → R − I with R = (I + Q)(I − Q)⁻¹, float64."""
    b = blocks.double()
    q = _clip(b - b.transpose(-1, -2), constraint, out_dim)
    eye = torch.eye(q.shape[-1], dtype=q.dtype)
    # 2Q(I − Q)⁻¹  ==  solve X(I − Q) = 2Q
    return torch.linalg.solve(eye - q, 2 * q, left=False)


def skew_from_packed(packed: torch.Tensor, block_size: int) -> torch.Tensor:
    """PEFT's packed strict upper triangle (n, b(b−1)/2) → skew-symmetric (n, b, b), float64."""
    rows, cols = torch.triu_indices(block_size, block_size, 1)
    m = torch.zeros(packed.shape[0], block_size, block_size, dtype=torch.float64)
    m[:, rows, cols] = packed.double()
    return m - m.transpose(-1, -2)


def coft_project(packed: torch.Tensor, block_size: int, eps: float) -> torch.Tensor:
    """PEFT's COFT constraint on packed blocks: each skew block's Frobenius norm ≤ eps/√n.

        Q_k ← Q_k · min(1, (eps/√n) / ‖Q_k‖_F)      returned packed again, in ``packed``'s dtype
    """
    q = skew_from_packed(packed, block_size)
    bound = eps / (q.shape[0] ** 0.5)
    norm = torch.linalg.norm(q, dim=(1, 2), keepdim=True)
    q = torch.where(norm <= bound, q, q * (bound / norm))
    rows, cols = torch.triu_indices(block_size, block_size, 1)
    return q[:, rows, cols].to(packed.dtype)


def packed_block_size(packed_len: int) -> int:
    """b with b(b−1)/2 == packed_len, or raise."""
    b = int(round((1 + (1 + 8 * packed_len) ** 0.5) / 2))
    if b * (b - 1) // 2 != packed_len:
        raise ValueError(f"{packed_len} is not a triangular number b(b-1)/2")
    return b


def peft_rotation_minus_identity(q: torch.Tensor, neumann: bool, terms: int) -> torch.Tensor:
    """R − I for PEFT's Cayley map of skew ``q`` (float64)."""
    eye = torch.eye(q.shape[-1], dtype=q.dtype)
    if not neumann:
        # (I − Q)(I + Q)⁻¹ − I = −2Q(I + Q)⁻¹
        return torch.linalg.solve(eye + q, -2 * q, left=False)
    out = torch.zeros_like(q)
    if terms > 1:
        out = out + 2 * q
    if terms > 2:
        power = q @ q
        out = out + 2 * power
        for _ in range(3, terms - 1):
            power = power @ q
            out = out + 2 * power
        out = out + power @ q
    return out


def _rescaled(base: torch.Tensor, delta: torch.Tensor, rescale: torch.Tensor | None) -> torch.Tensor:
    """rescale ⊙ (W + D) − W = rescale ⊙ D + (rescale − 1) ⊙ W, per output row."""
    if rescale is None:
        return delta
    if rescale.numel() != base.shape[0]:
        raise _misfit(f"rescale with {rescale.numel()} entries", base)
    s = rescale.float().reshape(-1, *([1] * (base.dim() - 1)))
    return s * delta + (s - 1) * base


def delta_oft(weights: OftWeights, base: torch.Tensor) -> torch.Tensor:
    """ΔW at strength 1 in fp32, shaped like ``base``."""
    out_dim = base.shape[0]
    if weights.layout == "peft":
        flat = base.reshape(out_dim, -1)
        packed = weights.blocks.reshape(weights.blocks.shape[0], -1)
        try:
            b = packed_block_size(packed.shape[1])
        except ValueError:
            raise _misfit(f"PEFT oft_R of shape {tuple(weights.blocks.shape)}", base) from None
        q = skew_from_packed(packed, b)
        r_minus_i = peft_rotation_minus_identity(q, weights.cayley_neumann, weights.neumann_terms)
        n = flat.shape[1] // b
        if r_minus_i.shape[0] == 1 and n != 1:  # block_share: one block for all
            r_minus_i = r_minus_i.expand(n, b, b)
        if r_minus_i.shape[0] * b != flat.shape[1]:
            raise _misfit(f"{r_minus_i.shape[0]} OFT blocks of size {b}", base)
        delta = torch.einsum("ojc,jpc->ojp", flat.reshape(out_dim, -1, b), r_minus_i.float())
        return _rescaled(base, delta.reshape(base.shape), weights.rescale)
    blocks = weights.blocks
    n, b = int(blocks.shape[0]), int(blocks.shape[-1])
    if n * b != out_dim:
        raise _misfit(f"{n} OFT blocks of size {b}", base)
    r_minus_i = lycoris_rotation_minus_identity(blocks, weights.constraint, out_dim).float()
    rows = base.reshape(n, b, -1)
    delta = torch.einsum("knm,knx->kmx", r_minus_i, rows).reshape(base.shape)
    return _rescaled(base, delta, weights.rescale)


def _lycoris_stage_index(dim: int, k: int) -> torch.Tensor:
    if dim % (2 * k):
        raise ValueError
    return torch.arange(dim).view(-1, 2, k).transpose(1, 2).reshape(-1)


def peft_butterfly_index(dim: int, blocks_in_stage: int, piece: int, n_factor: int) -> torch.Tensor:
    """PEFT's block-butterfly permutation: (P·x)[row] = x[index[row]].

    Each chunk of ``dim // blocks_in_stage`` entries is cut into pieces of
    ``piece`` entries, and the pieces are reordered even ones first, then odd.
    """
    if n_factor == 0:
        return torch.arange(dim)
    chunk = dim // blocks_in_stage
    n_pieces = chunk // piece
    order = torch.cat([torch.arange(0, n_pieces, 2), torch.arange(1, n_pieces, 2)])
    within = (order[:, None] * piece + torch.arange(piece)[None, :]).reshape(-1)
    return (torch.arange(0, dim, chunk)[:, None] + within[None, :]).reshape(-1)


def delta_boft(weights: BoftWeights, base: torch.Tensor) -> torch.Tensor:
    """ΔW at strength 1 in fp32, shaped like ``base``."""
    blocks = weights.blocks
    if blocks.dim() != 4 or blocks.shape[-1] != blocks.shape[-2]:
        raise _misfit(f"BOFT blocks of shape {tuple(blocks.shape)}", base)
    m, n, b = int(blocks.shape[0]), int(blocks.shape[1]), int(blocks.shape[2])
    out_dim = base.shape[0]
    w = base.double().reshape(out_dim, -1)
    v = w
    if weights.layout == "peft":
        dim = w.shape[1]
        if n * b != dim:
            raise _misfit(f"{n} BOFT blocks of size {b}", base)
        bl = blocks.double()
        q = (bl - bl.transpose(-1, -2)) / 2
        rot = peft_rotation_minus_identity(q, False, 0) + torch.eye(b, dtype=torch.float64)
        for i in range(m):
            index = peft_butterfly_index(dim, n // (2 ** i), b // 2, m - 1)
            inverse = torch.argsort(index)
            y = v[:, inverse].reshape(out_dim, n, b)
            y = torch.einsum("jpc,ojc->ojp", rot[i], y).reshape(out_dim, dim)
            v = y[:, index]
    else:
        if n * b != out_dim:
            raise _misfit(f"{n} BOFT blocks of size {b}", base)
        rot = lycoris_rotation_minus_identity(blocks, weights.constraint, out_dim) \
            + torch.eye(b, dtype=torch.float64)
        for i in range(m):
            try:
                index = _lycoris_stage_index(out_dim, (2 ** i) * (b // 2))
            except ValueError:
                raise _misfit(f"BOFT stage {i} (block {b})", base) from None
            y = v[index].reshape(n, b, -1)
            y = torch.einsum("kij,kjx->kix", rot[i], y).reshape(out_dim, -1)
            nxt = torch.empty_like(y)
            nxt[index] = y
            v = nxt
    if weights.rescale is not None:
        if weights.rescale.numel() != out_dim:
            raise _misfit(f"BOFT scale with {weights.rescale.numel()} entries", base)
        v = v * weights.rescale.double().reshape(out_dim, 1)
    return (v - w).float().reshape(base.shape)


def delta_weight(weights: Union[OftWeights, BoftWeights], base: torch.Tensor) -> torch.Tensor:
    """ΔW at strength 1 in fp32 for either rotation kind."""
    if isinstance(weights, BoftWeights):
        return delta_boft(weights, base)
    return delta_oft(weights, base)


def _channels_last(y: torch.Tensor, channel_axis: int) -> torch.Tensor:
    return y.float().movedim(channel_axis, -1)


def _rescale_output(delta: torch.Tensor, y: torch.Tensor, rescale: Optional[torch.Tensor]) -> torch.Tensor:
    if rescale is None:
        return delta
    return rescale * delta + (rescale - 1) * y


@dataclass(frozen=True, eq=False)
class BlockRotation:
    """OFT's output side path: Δy[block k] = (R_k − I)ᵀ·y[block k] (+ rescale)."""
    r_minus_i: torch.Tensor          # (n, b, b) fp32
    rescale: Optional[torch.Tensor]  # (out,) fp32

    def __call__(self, y: torch.Tensor, channel_axis: int) -> torch.Tensor:
        yl = _channels_last(y, channel_axis)
        n, b = self.r_minus_i.shape[0], self.r_minus_i.shape[-1]
        if yl.shape[-1] != n * b:
            raise ShapeMismatchError(f"OFT side path has {n}×{b} channels, the output {yl.shape[-1]}",
                                     fix="the LoRA was made for another model")
        blocks = yl.reshape(*yl.shape[:-1], n, b)
        delta = torch.einsum("knm,...kn->...km", self.r_minus_i, blocks).reshape(yl.shape)
        return _rescale_output(delta, yl, self.rescale).movedim(-1, channel_axis)

    def to(self, device: torch.device) -> "BlockRotation":
        return BlockRotation(self.r_minus_i.to(device),
                             None if self.rescale is None else self.rescale.to(device))


@dataclass(frozen=True, eq=False)
class ButterflyRotation:
    """BOFT's output side path: Δy = rescale ⊙ (stages applied to y) − y."""
    rotations: torch.Tensor          # (m, n, b, b) fp32, R itself
    indices: tuple[torch.Tensor, ...]  # per stage: channel order of its blocks
    rescale: Optional[torch.Tensor]  # (out,) fp32

    def __call__(self, y: torch.Tensor, channel_axis: int) -> torch.Tensor:
        yl = _channels_last(y, channel_axis)
        _, n, b, _ = self.rotations.shape
        if yl.shape[-1] != n * b:
            raise ShapeMismatchError(f"BOFT side path has {n}×{b} channels, the output {yl.shape[-1]}",
                                     fix="the LoRA was made for another model")
        v = yl
        for rot, index in zip(self.rotations, self.indices):
            z = v.index_select(-1, index).reshape(*yl.shape[:-1], n, b)
            z = torch.einsum("kij,...kj->...ki", rot, z).reshape(yl.shape)
            nxt = torch.empty_like(z)
            nxt[..., index] = z
            v = nxt
        if self.rescale is not None:
            v = v * self.rescale
        return (v - yl).movedim(-1, channel_axis)

    def to(self, device: torch.device) -> "ButterflyRotation":
        return ButterflyRotation(self.rotations.to(device), tuple(i.to(device) for i in self.indices),
                                 None if self.rescale is None else self.rescale.to(device))


def side_path(weights: Union[OftWeights, BoftWeights]) -> Union[BlockRotation, ButterflyRotation, None]:
    """The output-rotation side path of a LyCORIS OFT/BOFT, or None for PEFT's input rotation."""
    if weights.layout != "lycoris":
        return None
    blocks = weights.blocks
    rescale = None if weights.rescale is None else weights.rescale.float().reshape(-1)
    if isinstance(weights, BoftWeights):
        if blocks.dim() != 4 or blocks.shape[-1] != blocks.shape[-2]:
            return None
        m, n, b = int(blocks.shape[0]), int(blocks.shape[1]), int(blocks.shape[2])
        out_dim = n * b
        rot = lycoris_rotation_minus_identity(blocks, weights.constraint, out_dim) \
            + torch.eye(b, dtype=torch.float64)
        try:
            indices = tuple(_lycoris_stage_index(out_dim, (2 ** i) * (b // 2)) for i in range(m))
        except ValueError:
            return None
        return ButterflyRotation(rot.float(), indices, rescale)
    n, b = int(blocks.shape[0]), int(blocks.shape[-1])
    r_minus_i = lycoris_rotation_minus_identity(blocks, weights.constraint, n * b).float()
    return BlockRotation(r_minus_i, rescale)
