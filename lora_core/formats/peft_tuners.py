"""PEFT's non-LoRA tuners (raw PEFT saves: ``base_model.model.…`` keys with an
``adapter_config.json`` beside the file, or the config in ``lora_adapter_metadata``).

* OFT: ``oft_R.weight`` (n, b(b−1)/2), the strict upper triangle of each skew
  block; the config decides ``use_cayley_neumann`` / ``num_cayley_neumann_terms``
  (PEFT's default is the Neumann series with 5 terms), ``block_share`` and
  ``coft``/``eps`` (the COFT projection is re-applied here; it is idempotent on
  weights saved by PEFT, which stores them projected).
* BOFT: ``boft_R`` (m, n, b, b) + ``boft_s`` (out, 1), rotating the input axis.
* IA3: ``ia3_l``: (out, 1) scales outputs; (1, in) scales inputs (modules listed in
  the config's ``feedforward_modules``).  Conv vectors (1, c, 1, 1) look alike on
  both axes, so the config decides; without one a conv vector is read as an
  output scale and a note says so.
* LoHa / LoKr: the LyCORIS names; :func:`tuner_config_scale` supplies their
  ``alpha / r`` (with ``rank_pattern`` / ``alpha_pattern``).
* VeRA, FourierFT and PEFT's GLoRA tuner are not supported: their keys are
  reported as unused with reason "unsupported kind".
"""
from __future__ import annotations

import re
from typing import Mapping, Optional

import torch

from ..errors import FormatError
from ..ir import BoftWeights, Ia3Weights, ModulePatch, OftWeights
from ..kinds.oft import packed_block_size, skew_from_packed
from . import ParseContext, register_parser
from .lora import bias_delta, pattern_value

Parts = Mapping[str, torch.Tensor]

FACTOR_TUNERS = {"LOHA", "LOKR"}


def _peft_type(ctx: ParseContext) -> str:
    cfg = ctx.peft_config or {}
    return str(cfg.get("peft_type") or "").upper()


def tuner_config_scale(ctx: ParseContext, module: str, rank: int) -> Optional[float]:
    """``alpha / r`` from a PEFT LoHa/LoKr config (their keys are ``alpha`` and ``r``)."""
    cfg = ctx.peft_config
    if not cfg or _peft_type(ctx) not in FACTOR_TUNERS:
        return None
    short = _module_path(module)
    r = pattern_value(cfg.get("rank_pattern") or {}, short) or cfg.get("r") or rank
    alpha = pattern_value(cfg.get("alpha_pattern") or {}, short)
    if alpha is None:
        alpha = cfg.get("alpha", r)
    if not r or float(r) <= 0:
        return None
    return float(alpha) / float(r)


def _module_path(module: str) -> str:
    for prefix in ("base_model.model.",):
        if module.startswith(prefix):
            return module[len(prefix):]
    return module


def _targets(spec, module: str) -> bool:
    """PEFT's target matching: a regex string (full match) or a list of name suffixes."""
    path = _module_path(module)
    if not spec:
        return False
    if isinstance(spec, str):
        return re.fullmatch(spec, path) is not None or path == spec or path.endswith("." + spec)
    return any(path == s or path.endswith("." + s) for s in spec)


def _bad(ctx: ParseContext, module: str, message: str) -> FormatError:
    return FormatError(message, file=ctx.path, key=module,
                       fix="the file is damaged or was written by an unknown tool")


def _keys(module: str, consumed: set[str]) -> tuple[str, ...]:
    return tuple(module + s for s in sorted(consumed))


def coft_project(packed: torch.Tensor, block_size: int, eps: float) -> torch.Tensor:
    """PEFT's COFT constraint: each skew block's Frobenius norm ≤ eps/√n."""
    q = skew_from_packed(packed, block_size)
    bound = eps / (q.shape[0] ** 0.5)
    norm = torch.linalg.norm(q, dim=(1, 2), keepdim=True)
    q = torch.where(norm <= bound, q, q * (bound / norm))
    rows, cols = torch.triu_indices(block_size, block_size, 1)
    return q[:, rows, cols].to(packed.dtype)


class PeftOftParser:
    name = "peft-oft"
    suffixes = frozenset({".oft_R.weight", ".oft_R.default.weight"})
    marker = suffixes

    def parse(self, ctx: ParseContext, module: str, parts: Parts):
        suffix = next(s for s in sorted(self.suffixes) if s in parts)
        packed = parts[suffix]
        consumed = {suffix}
        if packed.dim() != 2:
            raise _bad(ctx, module, f"oft_R must be (blocks, b(b-1)/2), got {tuple(packed.shape)}")
        try:
            b = packed_block_size(int(packed.shape[1]))
        except ValueError as e:
            raise _bad(ctx, module, f"oft_R: {e}") from None
        cfg = ctx.peft_config or {}
        if not cfg:
            ctx.note("PEFT OFT without adapter_config.json: assuming PEFT's defaults "
                     "(Cayley–Neumann series, 5 terms)")
        neumann = bool(cfg.get("use_cayley_neumann", True))
        terms = int(cfg.get("num_cayley_neumann_terms", 5))
        if cfg.get("coft"):
            packed = coft_project(packed, b, float(cfg.get("eps", 6e-5)))
        weights = OftWeights(blocks=packed, layout="peft", cayley_neumann=neumann, neumann_terms=terms,
                             block_share=bool(cfg.get("block_share", False)))
        bias, _ = bias_delta(parts, consumed)
        return (ModulePatch(name=module, weight=weights, scale=1.0, bias=bias,
                            keys=_keys(module, consumed)), consumed)


class PeftBoftParser:
    name = "peft-boft"
    suffixes = frozenset({".boft_R", ".boft_s", ".boft_R.default", ".boft_s.default"})
    marker = frozenset({".boft_R", ".boft_R.default"})

    def parse(self, ctx: ParseContext, module: str, parts: Parts):
        r_suffix = ".boft_R" if ".boft_R" in parts else ".boft_R.default"
        s_suffix = ".boft_s" if ".boft_s" in parts else ".boft_s.default"
        blocks = parts[r_suffix]
        consumed = {r_suffix}
        if blocks.dim() != 4 or blocks.shape[2] != blocks.shape[3]:
            raise _bad(ctx, module, f"boft_R must be (m, n, b, b), got {tuple(blocks.shape)}")
        scale_vec = parts.get(s_suffix)
        if scale_vec is not None:
            consumed.add(s_suffix)
        bias, _ = bias_delta(parts, consumed)
        return (ModulePatch(name=module, weight=BoftWeights(blocks=blocks, layout="peft", rescale=scale_vec),
                            scale=1.0, bias=bias, keys=_keys(module, consumed)), consumed)


class PeftIa3Parser:
    name = "peft-ia3"
    suffixes = frozenset({".ia3_l", ".ia3_l.default"})
    marker = suffixes

    def parse(self, ctx: ParseContext, module: str, parts: Parts):
        suffix = ".ia3_l" if ".ia3_l" in parts else ".ia3_l.default"
        vec = parts[suffix]
        consumed = {suffix}
        cfg = ctx.peft_config or {}
        shape = tuple(vec.shape)
        if cfg.get("feedforward_modules") is not None or "target_modules" in cfg:
            on_input = _targets(cfg.get("feedforward_modules"), module)
        elif len(shape) == 2 and shape[0] == 1 and shape[1] != 1:
            on_input = True
        elif len(shape) == 2 and shape[1] == 1:
            on_input = False
        else:
            on_input = False
            ctx.note("PEFT IA3 conv vectors without adapter_config.json were read as output scales")
        # PEFT's merge scales the layer's bias by v on the output axis (LyCORIS' does not).
        weights = Ia3Weights(vector=vec, on_input=on_input, scales_bias=not on_input)
        return (ModulePatch(name=module, weight=weights, scale=1.0,
                            keys=_keys(module, consumed)), consumed)


class UnsupportedPeftTuners:
    """Declares the suffixes of tuners we do not apply so that their keys are
    grouped by module and reported as "unsupported kind" (no marker: no parser
    claims them)."""
    name = "peft-unsupported"
    suffixes = frozenset({".vera_lambda_b", ".vera_lambda_d", ".vera_A", ".vera_B",
                          ".fourierft_spectrum"}
                         | {f".glora_{p}.{x}" for p in "ABCDE" for x in ("X", "Xd", "Xu")})
    marker: frozenset[str] = frozenset()

    def parse(self, ctx, module, parts):  # never selected (empty marker)
        raise _bad(ctx, module, "unsupported PEFT tuner")


for _parser in (PeftOftParser(), PeftBoftParser(), PeftIa3Parser(), UnsupportedPeftTuners()):
    register_parser(_parser)
