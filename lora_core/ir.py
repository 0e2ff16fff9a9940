"""The intermediate representation every format is parsed into.

A LoRA file becomes a :class:`LoraFile`: a tuple of :class:`ModulePatch`, one per
adapted module, each carrying the tensors of exactly one adapter kind plus the
scale rule already resolved to a number.  Everything above this module speaks
these types; only ``formats/`` builds them and only ``patcher``/``bypass``
turn them into weight changes.

Tensors inside are usually memory-mapped views of the file: building the IR
reads headers and scalar alphas only, so a disabled or strength-0 LoRA costs no
tensor I/O.

Conventions (all at strength 1, before any user multiplier):

* ``ModulePatch.scale`` multiplies the kind's delta (``alpha / rank`` for the
  factorised kinds, 1 for full diffs).
* Strength is linear in ΔW for every kind: ``W' = W + s·ΔW(W)`` where for the
  multiplicative kinds (OFT, BOFT, IA3, GLoRA's weight term, DoRA)
  ``ΔW(W) = W_kind(W) − W``.  So s = 0 gives exactly W.
* In a stack every ΔW is computed against the *original* weight, so the result
  does not depend on the order of the stack.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Literal, Mapping, Optional, Union

import torch

Tensor = torch.Tensor


class Kind(str, Enum):
    LORA = "lora"
    LOHA = "loha"
    LOKR = "lokr"
    GLORA = "glora"
    OFT = "oft"
    BOFT = "boft"
    IA3 = "ia3"
    FULL = "full"
    SET = "set"


# ---------------------------------------------------------------- adapter weights
# One frozen dataclass per kind.  eq=False: identity is what matters (a parsed
# file is cached and its patches are compared by identity when re-planning).

@dataclass(frozen=True, eq=False)
class LoraWeights:
    """Low rank: ΔW = up · down.

    Linear: up (out, r), down (r, in).  Conv: up (out, r, 1, 1), down
    (r, in, kh, kw).  Tucker conv (LoCon ``lora_mid``): down (r, in, 1, 1),
    mid (r, r, kh, kw), up (out, r, 1, 1).
    """
    up: Tensor
    down: Tensor
    mid: Optional[Tensor] = None
    kind = Kind.LORA

    @property
    def rank(self) -> int:
        return int(self.down.shape[0])


@dataclass(frozen=True, eq=False)
class LohaWeights:
    """Hadamard product: ΔW = (w1a·w1b) ⊙ (w2a·w2b); Tucker with t1/t2."""
    w1a: Tensor
    w1b: Tensor
    w2a: Tensor
    w2b: Tensor
    t1: Optional[Tensor] = None
    t2: Optional[Tensor] = None
    kind = Kind.LOHA

    @property
    def rank(self) -> int:
        return int(self.w1b.shape[0])


@dataclass(frozen=True, eq=False)
class LokrWeights:
    """Kronecker product: ΔW = kron(w1, w2), each factor full or a low-rank pair."""
    w1: Optional[Tensor] = None
    w1a: Optional[Tensor] = None
    w1b: Optional[Tensor] = None
    w2: Optional[Tensor] = None
    w2a: Optional[Tensor] = None
    w2b: Optional[Tensor] = None
    t2: Optional[Tensor] = None
    kind = Kind.LOKR

    @property
    def decomposed(self) -> bool:
        return self.w1 is None or self.w2 is None

    @property
    def rank(self) -> int:
        if self.w1b is not None:
            return int(self.w1b.shape[0])
        if self.w2b is not None:
            return int(self.w2b.shape[0])
        return 0


@dataclass(frozen=True, eq=False)
class GloraWeights:
    """GLoRA: W' = W + W·(a1·a2) + b1·b2 (LyCORIS layouts told apart by shape)."""
    a1: Tensor
    a2: Tensor
    b1: Tensor
    b2: Tensor
    kind = Kind.GLORA

    @property
    def rank(self) -> int:
        return int(min(self.a1.shape[0], self.a1.shape[1]))


@dataclass(frozen=True, eq=False)
class OftWeights:
    """Block-diagonal orthogonal rotation: W' = R·W (LyCORIS) or W·R (PEFT).

    ``layout``: "lycoris" (``oft_blocks`` (n, b, b) skew source, ``constraint``
    = alpha as a norm bound) or "peft" (``oft_R`` packed upper triangle
    (n, b(b−1)/2), optional Cayley–Neumann series).
    """
    blocks: Tensor
    layout: Literal["lycoris", "peft"] = "lycoris"
    constraint: float = 0.0
    rescale: Optional[Tensor] = None
    cayley_neumann: bool = False
    neumann_terms: int = 5
    block_share: bool = False
    kind = Kind.OFT


@dataclass(frozen=True, eq=False)
class BoftWeights:
    """Butterfly OFT: R is a product of m butterfly-permuted block rotations.

    LyCORIS: ``oft_blocks`` (m, n, b, b) + ``rescale``; PEFT: ``boft_R``
    (m, n, b, b) + ``boft_s`` (out, 1).
    """
    blocks: Tensor
    layout: Literal["lycoris", "peft"] = "lycoris"
    constraint: float = 0.0
    rescale: Optional[Tensor] = None
    kind = Kind.BOFT


@dataclass(frozen=True, eq=False)
class Ia3Weights:
    """Elementwise scaling: W' = W ⊙ v, along the input axis or the output axis.

    ``scales_bias``: the layer's own bias is scaled too, b' = b ⊙ v (PEFT's
    merge on the output axis); LyCORIS' merge leaves the bias alone.
    """
    vector: Tensor
    on_input: bool
    scales_bias: bool = False
    kind = Kind.IA3


@dataclass(frozen=True, eq=False)
class FullWeights:
    """A dense delta: ΔW = diff (also norm ``w_norm`` and Comfy-style ``diff``)."""
    diff: Tensor
    kind = Kind.FULL


@dataclass(frozen=True, eq=False)
class SetWeights:
    """Replace the weight: ΔW = value − W (BFL control norm scales)."""
    value: Tensor
    kind = Kind.SET


AdapterWeights = Union[LoraWeights, LohaWeights, LokrWeights, GloraWeights, OftWeights,
                       BoftWeights, Ia3Weights, FullWeights, SetWeights]


@dataclass(frozen=True, eq=False)
class DoraMagnitude:
    """DoRA: W_dora = m ⊙ (W + ΔW) / ‖W + ΔW‖, the norm taken per ``axis`` entry.

    ``axis="out"``: one magnitude per output row (PEFT ``lora_magnitude_vector``,
    new LyCORIS ``dora_scale`` (out, 1, …)).  ``axis="in"``: one per input column
    (kohya / old LyCORIS ``dora_scale`` (1, in, …)).
    """
    magnitude: Tensor
    axis: Literal["out", "in"]


# ---------------------------------------------------------------- module patches

@dataclass(frozen=True, eq=False)
class ModulePatch:
    """Everything one file does to one module.

    ``name`` is the module path exactly as the file spells it, with the file's
    own prefix (``lora_unet_…``, ``unet.…``, ``diffusion_model.…``) and without
    the tensor suffix; ``resolve/`` maps it to the model's parameter names.
    """
    name: str
    weight: Optional[AdapterWeights] = None
    scale: float = 1.0
    dora: Optional[DoraMagnitude] = None
    bias: Optional[Tensor] = None
    bias_scale: float = 1.0
    reshape: Optional[tuple[int, ...]] = None
    keys: tuple[str, ...] = ()

    @property
    def kind(self) -> Optional[Kind]:
        return self.weight.kind if self.weight is not None else None


UnusedReason = Literal["unknown name", "shape mismatch", "unsupported kind", "invalid tensor",
                       "I2V-only key; the model is T2V"]


@dataclass(frozen=True)
class UnusedKey:
    """A file key that produced no patch, and why (never dropped silently)."""
    key: str
    reason: UnusedReason
    detail: str = ""


@dataclass(frozen=True, eq=False)
class LoraFile:
    """A parsed LoRA file."""
    path: str
    format: str
    patches: tuple[ModulePatch, ...]
    metadata: Mapping[str, str] = field(default_factory=dict)
    unused: tuple[UnusedKey, ...] = ()
    notes: tuple[str, ...] = ()

    @property
    def kinds(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for p in self.patches:
            k = p.kind.value if p.kind else ("bias" if p.bias is not None else "none")
            counts[k] = counts.get(k, 0) + 1
        return counts


# ---------------------------------------------------------------- resolution

@dataclass(frozen=True)
class Slice:
    """Rows (``dim`` 0) ``start:start+length`` of a fused weight (q/k/v in qkv)."""
    dim: int
    start: int
    length: int


@dataclass(frozen=True, eq=False)
class ResolvedPatch:
    """A module patch bound to the parameters it changes."""
    patch: ModulePatch
    weight_key: Optional[str]
    bias_key: Optional[str] = None
    slice: Optional[Slice] = None


@dataclass(frozen=True)
class Unmatched:
    """A module patch that reached no parameter."""
    name: str
    keys: tuple[str, ...]
    reason: UnusedReason
    detail: str = ""


@dataclass(frozen=True, eq=False)
class CoverageReport:
    """The result of resolving one file against one model."""
    file: str
    matched: tuple[ResolvedPatch, ...]
    unmatched: tuple[Unmatched, ...]
    lora_family: Optional[str] = None
    model_family: Optional[str] = None
    family_warning: Optional[str] = None
    # Patches addressed to a component this model does not hold (text-encoder
    # keys met by a diffusion model, or the reverse): expected when a loader
    # resolves one file against the model and the text encoder separately.
    elsewhere: tuple[Unmatched, ...] = ()
    notes: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.unmatched and self.family_warning is None
