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
* LoHa / LoKr: the LyCORIS names; their config supplies their
  ``alpha / r`` (with ``rank_pattern`` / ``alpha_pattern``,
  ``formats._common.tuner_config_scale``).
* VeRA, FourierFT and PEFT's GLoRA tuner are not supported: their keys are
  reported as unused with reason "unsupported kind".
"""
from __future__ import annotations

import re
from typing import Mapping

import torch

from ..ir import BoftWeights, Ia3Weights, ModulePatch, OftWeights
from ..kinds.oft import coft_project, packed_block_size
from . import ParseContext, register_parser
from ._common import bad, bias_tensor, consumed_keys, module_path

Parts = Mapping[str, torch.Tensor]

def _targets(spec, module: str) -> bool:
    """PEFT's target matching: a regex string (full match) or a list of name suffixes."""
    path = module_path(module)
    if not spec:
        return False
    if isinstance(spec, str):
        return re.fullmatch(spec, path) is not None or path == spec or path.endswith("." + spec)
    return any(path == s or path.endswith("." + s) for s in spec)


class PeftOftParser:
    name = "peft-oft"
    suffixes = frozenset({".oft_R.weight", ".oft_R.default.weight"})
    marker = suffixes

    def parse(self, ctx: ParseContext, module: str, parts: Parts):
        suffix = next(s for s in sorted(self.suffixes) if s in parts)
        packed = parts[suffix]
        consumed = {suffix}
        if packed.dim() != 2:
            raise bad(ctx, module, f"oft_R must be (blocks, b(b-1)/2), got {tuple(packed.shape)}")
        try:
            b = packed_block_size(int(packed.shape[1]))
        except ValueError as e:
            raise bad(ctx, module, f"oft_R: {e}") from None
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
        bias, _ = bias_tensor(parts, consumed)
        return (ModulePatch(name=module, weight=weights, scale=1.0, bias=bias,
                            keys=consumed_keys(module, consumed)), consumed)


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
            raise bad(ctx, module, f"boft_R must be (m, n, b, b), got {tuple(blocks.shape)}")
        scale_vec = parts.get(s_suffix)
        if scale_vec is not None:
            consumed.add(s_suffix)
        bias, _ = bias_tensor(parts, consumed)
        return (ModulePatch(name=module, weight=BoftWeights(blocks=blocks, layout="peft", rescale=scale_vec),
                            scale=1.0, bias=bias, keys=consumed_keys(module, consumed)), consumed)


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
                            keys=consumed_keys(module, consumed)), consumed)


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
        raise bad(ctx, module, "unsupported PEFT tuner")


for _parser in (PeftOftParser(), PeftBoftParser(), PeftIa3Parser(), UnsupportedPeftTuners()):
    register_parser(_parser)
