"""LyCORIS / kohya spellings of every kind except plain LoRA.

* LoHa: ``hada_w1_a``, ``hada_w1_b``, ``hada_w2_a``, ``hada_w2_b`` (+ ``hada_t1``/``hada_t2``
  Tucker); scale ``alpha / r`` with r = ``hada_w1_b.shape[0]``.
* LoKr: ``lokr_w1`` or ``lokr_w1_a``+``lokr_w1_b``; ``lokr_w2`` or ``lokr_w2_a``+``lokr_w2_b``
  (+ ``lokr_t2``).  Scale ``alpha / r`` **only when a factor is decomposed**; with
  both factors full the file's alpha is ignored and the scale is 1 (LyCORIS'
  own rule, also what kohya ``full_matrix`` files expect).
* GLoRA: ``a1.weight``, ``a2.weight``, ``b1.weight``, ``b2.weight`` (+ ``bm.weight``); the
  old layout (a1 (r, in), a2 (in, r), b1 (r, in), b2 (out, r), ΔW = b2·b1 + W·a2·a1) is
  told apart from the new one by shape and rewritten into it.
* OFT: ``oft_blocks`` (n, b, b) (very old files: ``oft_diag``), BOFT: ``oft_blocks``
  (m, n, b, b); ``alpha`` is the norm constraint, ``rescale`` an optional row scale.
  kohya OFT (``oft_unet_…``) uses the same tensors and maths.
* IA3: ``weight`` + ``on_input``; LyCORIS trains the increment w, W' = W ⊙ (1 + w).
* full: ``diff`` (+ ``diff_b``); norm: ``w_norm`` (+ ``b_norm``), both additive.
* ``reshape_weight`` (with any kind): pad the target first.  ``set_weight`` is parsed by
  ``formats/flux.py`` (its only producer is the BFL-control converter).
* ``dora_scale`` combines with LoHa, LoKr and GLoRA (axis from the shape).

PEFT saves LoHa/LoKr under the same names but without ``alpha``; their scale
comes from ``adapter_config.json`` (see ``_common.tuner_config_scale``).
DyLoRA files are plain ``lora_up``/``lora_down`` and go through ``formats/lora.py``.
"""
from __future__ import annotations

from typing import Mapping, Optional

import torch

from ..ir import (BoftWeights, FullWeights, GloraWeights, Ia3Weights, LohaWeights, LokrWeights,
                  ModulePatch, OftWeights)
from . import ParseContext, register_parser
from ._common import (bad, bias_tensor, consumed_keys, dora_magnitude, reshape_target, resolve_scale, scalar,
                      tuner_config_scale)

Parts = Mapping[str, torch.Tensor]


def _extras(ctx: ParseContext, module: str, parts: Parts, scale: float, consumed: set[str]) -> dict:
    """bias (a LoRA-style ``lora_B.bias`` takes the module scale, ``diff_b`` does not) and reshape."""
    bias, lora_bias = bias_tensor(parts, consumed)
    return dict(bias=bias, bias_scale=scale if lora_bias else 1.0,
                reshape=reshape_target(ctx, module, parts, consumed))


def _require(ctx: ParseContext, module: str, parts: Parts, need: tuple[str, ...], kind: str) -> list:
    """The tensors of ``need``, or an error naming the missing suffixes."""
    missing = [s for s in need if s not in parts]
    if missing:
        raise bad(ctx, module, f"{kind} is incomplete: {missing} missing")
    return [parts[s] for s in need]


def factor_scale(ctx: ParseContext, module: str, parts: Parts, rank: int, consumed: set[str]) -> float:
    """``scale`` / ``alpha`` tensors win; else a PEFT LoHa/LoKr config; else 1."""
    if ".scale" not in parts and ".alpha" not in parts:
        from_config = tuner_config_scale(ctx, module, rank)
        if from_config is not None:
            return from_config
    return resolve_scale(ctx, module, parts, rank, consumed)


def _dora(ctx: ParseContext, module: str, parts: Parts, out_features: int,
          in_features: Optional[int], consumed: set[str]):
    """DoRA magnitude; when the kind hides the input width (flattened conv
    factors), an input-axis ``dora_scale`` (1, in, …) names it itself."""
    m = parts.get(".dora_scale")
    if in_features is None:
        in_features = int(m.shape[1]) if m is not None and m.dim() >= 2 and m.shape[0] == 1 else -1
    return dora_magnitude(ctx, module, parts, out_features, in_features, consumed)


# ---------------------------------------------------------------- LoHa

class LohaParser:
    name = "loha"
    suffixes = frozenset({".hada_w1_a", ".hada_w1_b", ".hada_w2_a", ".hada_w2_b", ".hada_t1", ".hada_t2"})
    marker = frozenset({".hada_w1_a", ".hada_w1_b", ".hada_w2_a", ".hada_w2_b"})

    def parse(self, ctx: ParseContext, module: str, parts: Parts):
        need = (".hada_w1_a", ".hada_w1_b", ".hada_w2_a", ".hada_w2_b")
        w1a, w1b, w2a, w2b = _require(ctx, module, parts, need, "LoHa")
        consumed = set(need)
        t1, t2 = parts.get(".hada_t1"), parts.get(".hada_t2")
        if (t1 is None) != (t2 is None):
            raise bad(ctx, module, "LoHa Tucker needs both hada_t1 and hada_t2")
        if any(t.dim() < 2 for t in (w1a, w1b, w2a, w2b)):
            raise bad(ctx, module, "LoHa factors must be matrices")
        if t1 is not None:
            consumed |= {".hada_t1", ".hada_t2"}
            # Tucker: w?a (r, out), w?b (r, in), t (r, r, k…)
            rank = int(w1b.shape[0])
            if (w1a.shape[0] != rank or t1.shape[0] != rank or t1.shape[1] != rank
                    or w2a.shape != w1a.shape or w2b.shape != w1b.shape or t2.shape != t1.shape):
                raise bad(ctx, module, "LoHa Tucker factor shapes disagree")
            out_features, in_features = int(w1a.shape[1]), int(w1b.shape[1])
        else:
            rank = int(w1b.shape[0])
            if (w1a.shape[1] != rank or w2a.shape[1] != w2b.shape[0] or w1a.shape[0] != w2a.shape[0]
                    or w1b.shape[1:] != w2b.shape[1:]):
                raise bad(ctx, module, f"LoHa factor shapes disagree: {tuple(w1a.shape)}, "
                                        f"{tuple(w1b.shape)}, {tuple(w2a.shape)}, {tuple(w2b.shape)}")
            out_features, in_features = int(w1a.shape[0]), None
        scale = factor_scale(ctx, module, parts, rank, consumed)
        dora = _dora(ctx, module, parts, out_features, in_features, consumed)
        extras = _extras(ctx, module, parts, scale, consumed)
        return (ModulePatch(name=module, weight=LohaWeights(w1a, w1b, w2a, w2b, t1, t2), scale=scale,
                            dora=dora, keys=consumed_keys(module, consumed), **extras), consumed)


# ---------------------------------------------------------------- LoKr

class LokrParser:
    name = "lokr"
    suffixes = frozenset({".lokr_w1", ".lokr_w1_a", ".lokr_w1_b", ".lokr_w2", ".lokr_w2_a", ".lokr_w2_b",
                          ".lokr_t2"})
    marker = frozenset({".lokr_w1", ".lokr_w1_a", ".lokr_w2", ".lokr_w2_a"})

    def parse(self, ctx: ParseContext, module: str, parts: Parts):
        consumed: set[str] = set()

        def take(s: str) -> Optional[torch.Tensor]:
            if s in parts:
                consumed.add(s)
                return parts[s]
            return None

        w1, w1a, w1b = take(".lokr_w1"), take(".lokr_w1_a"), take(".lokr_w1_b")
        w2, w2a, w2b, t2 = take(".lokr_w2"), take(".lokr_w2_a"), take(".lokr_w2_b"), take(".lokr_t2")
        if w1 is None and (w1a is None or w1b is None):
            raise bad(ctx, module, "LoKr w1 is missing (neither lokr_w1 nor both lokr_w1_a/b)")
        if w2 is None and (w2a is None or w2b is None):
            raise bad(ctx, module, "LoKr w2 is missing (neither lokr_w2 nor both lokr_w2_a/b)")
        if w1 is not None:
            consumed -= {".lokr_w1_a", ".lokr_w1_b"}
            w1a = w1b = None
        if w2 is not None:
            consumed -= {".lokr_w2_a", ".lokr_w2_b", ".lokr_t2"}
            w2a = w2b = t2 = None
        weights = LokrWeights(w1=w1, w1a=w1a, w1b=w1b, w2=w2, w2a=w2a, w2b=w2b, t2=t2)
        if w1 is None and w1a.shape[1] != w1b.shape[0]:
            raise bad(ctx, module, f"LoKr w1 factors disagree: {tuple(w1a.shape)} · {tuple(w1b.shape)}")
        if w2 is None and t2 is None and w2a.shape[1] != w2b.shape[0]:
            raise bad(ctx, module, f"LoKr w2 factors disagree: {tuple(w2a.shape)} · {tuple(w2b.shape)}")
        out_features = _lokr_out(weights)
        if weights.decomposed:
            scale = factor_scale(ctx, module, parts, weights.rank, consumed)
        else:
            # Both halves full: LyCORIS ignores alpha (scale 1).  A PEFT file has
            # no alpha and PEFT always scales by its config's alpha / r.
            if ".alpha" in parts:
                consumed.add(".alpha")
            from_config = None if ".alpha" in parts else tuner_config_scale(ctx, module, 0)
            explicit = scalar(ctx, module, parts, ".scale")
            if explicit is not None:
                consumed.add(".scale")
            scale = explicit if explicit is not None else (from_config if from_config is not None else 1.0)
            if ".alpha" in parts and explicit is None:
                ctx.note("LoKr modules with both factors full ignore their alpha (scale 1), as LyCORIS does")
        dora = _dora(ctx, module, parts, out_features, None, consumed)
        extras = _extras(ctx, module, parts, scale, consumed)
        return (ModulePatch(name=module, weight=weights, scale=scale, dora=dora,
                            keys=consumed_keys(module, consumed), **extras), consumed)


def _lokr_out(w: LokrWeights) -> int:
    a = w.w1.shape[0] if w.w1 is not None else w.w1a.shape[0]
    if w.w2 is not None:
        c = w.w2.shape[0]
    elif w.t2 is not None:
        c = w.w2a.shape[1]
    else:
        c = w.w2a.shape[0]
    return int(a) * int(c)


# ---------------------------------------------------------------- GLoRA

class GloraParser:
    name = "glora"
    suffixes = frozenset({".a1.weight", ".a2.weight", ".b1.weight", ".b2.weight", ".bm.weight"})
    marker = frozenset({".a1.weight", ".a2.weight"})

    def parse(self, ctx: ParseContext, module: str, parts: Parts):
        need = (".a1.weight", ".a2.weight", ".b1.weight", ".b2.weight")
        a1, a2, b1, b2 = _require(ctx, module, parts, need, "GLoRA")
        consumed = set(need)
        s = [tuple(t.shape) for t in (a1, a2, b1, b2)]
        if any(len(x) < 2 for x in s):
            raise bad(ctx, module, "GLoRA factors must be matrices")
        new = s[0][1] == s[1][0] == s[2][1] == s[3][0]
        old = s[0][0] == s[1][1] == s[2][0] == s[3][1]
        if new and old:
            # Square weights fit both readings; the shared (rank) axis is the
            # smaller one in real files.  A full tie reads as the new layout.
            old = s[0][0] < s[0][1]
            new = not old
        if not new and not old:
            raise bad(ctx, module, f"GLoRA shapes fit neither LyCORIS layout: {s}")
        if old:
            a1, a2, b1, b2 = a2, a1, b2, b1
            ctx.note("old-layout GLoRA modules were rewritten to the current LyCORIS layout")
        if ".bm.weight" in parts:
            # Tucker b-path: b1 · bm · b2 — fold the core into b2 once.
            consumed.add(".bm.weight")
            bm = parts[".bm.weight"].float()
            b2 = torch.einsum("mn...,nj->mj...", bm, b2.float().flatten(1)).flatten(1)
        rank = int(a2.shape[0])
        scale = factor_scale(ctx, module, parts, rank, consumed)
        out_features, in_features = int(b1.shape[0]), int(a1.shape[0])
        dora = _dora(ctx, module, parts, out_features, in_features, consumed)
        extras = _extras(ctx, module, parts, scale, consumed)
        return (ModulePatch(name=module, weight=GloraWeights(a1, a2, b1, b2), scale=scale, dora=dora,
                            keys=consumed_keys(module, consumed), **extras), consumed)


# ---------------------------------------------------------------- OFT / BOFT

class OftParser:
    name = "oft"
    suffixes = frozenset({".oft_blocks", ".oft_diag", ".rescale"})
    marker = frozenset({".oft_blocks", ".oft_diag"})

    def parse(self, ctx: ParseContext, module: str, parts: Parts):
        suffix = ".oft_blocks" if ".oft_blocks" in parts else ".oft_diag"
        consumed = {suffix}
        blocks = parts[suffix]
        constraint = scalar(ctx, module, parts, ".alpha")
        if constraint is not None:
            consumed.add(".alpha")
        rescale = parts.get(".rescale")
        if rescale is not None:
            consumed.add(".rescale")
        if blocks.dim() == 3 and blocks.shape[1] == blocks.shape[2]:
            weights = OftWeights(blocks=blocks, layout="lycoris", constraint=constraint or 0.0,
                                 rescale=rescale)
        elif blocks.dim() == 4 and blocks.shape[2] == blocks.shape[3]:
            weights = BoftWeights(blocks=blocks, layout="lycoris", constraint=constraint or 0.0,
                                  rescale=rescale)
        else:
            raise bad(ctx, module, f"OFT blocks must be (n, b, b) or (m, n, b, b), got {tuple(blocks.shape)}")
        extras = _extras(ctx, module, parts, 1.0, consumed)
        return (ModulePatch(name=module, weight=weights, scale=1.0, keys=consumed_keys(module, consumed),
                            **extras), consumed)


# ---------------------------------------------------------------- IA3

class Ia3Parser:
    name = "ia3"
    suffixes = frozenset({".weight", ".on_input"})
    marker = frozenset({".on_input"})

    def parse(self, ctx: ParseContext, module: str, parts: Parts):
        if ".weight" not in parts:
            raise bad(ctx, module, "IA3 'on_input' without its 'weight'")
        flag = scalar(ctx, module, parts, ".on_input")
        w = parts[".weight"]
        # LyCORIS trains the increment w (W' = W ⊙ (1 + w)).  Kept in float64
        # so the kind's v − 1 returns w exactly; a vector is a few KB.
        vector = w.double().flatten() + 1.0
        consumed = {".weight", ".on_input"}
        extras = _extras(ctx, module, parts, 1.0, consumed)
        return (ModulePatch(name=module, weight=Ia3Weights(vector=vector, on_input=bool(flag)),
                            scale=1.0, keys=consumed_keys(module, consumed), **extras), consumed)


# ---------------------------------------------------------------- dense kinds

class FullParser:
    """``diff`` / ``w_norm`` (additive) with ``diff_b`` / ``b_norm``; also bias-only modules."""
    name = "full"
    suffixes = frozenset({".diff", ".w_norm"})
    marker = frozenset({".diff", ".w_norm"})

    def parse(self, ctx: ParseContext, module: str, parts: Parts):
        consumed: set[str] = set()
        weight = None
        for s in (".diff", ".w_norm"):
            if s in parts:
                consumed.add(s)
                weight = FullWeights(parts[s])
                break
        bias = None
        for s in (".diff_b", ".b_norm"):
            if s in parts:
                consumed.add(s)
                bias = parts[s]
                break
        lora_bias = False
        if bias is None:
            bias, lora_bias = bias_tensor(parts, consumed)
        if lora_bias:
            ctx.note("a lora_B.bias without its lora_A/lora_B pair was applied as a plain bias delta")
        reshape = reshape_target(ctx, module, parts, consumed)
        if weight is None and bias is None:
            raise bad(ctx, module, "module has neither a weight nor a bias delta")
        return (ModulePatch(name=module, weight=weight, scale=1.0, bias=bias, bias_scale=1.0,
                            reshape=reshape, keys=consumed_keys(module, consumed)), consumed)


for _parser in (LohaParser(), LokrParser(), GloraParser(), OftParser(), Ia3Parser(), FullParser()):
    register_parser(_parser)
