"""Per-block weights: parse block-weight specs, and give each model parameter
its multiplier.

A multiplier scales a stack row's strength for the parameters of one block:
``W' = W + strength · m(block) · ΔW``.  It never replaces the LoRA's alpha
(KJNodes' block selectors set alpha instead, so 0.5 there means something
different for every rank; here 0.5 always halves the block's change).

Two spellings are accepted, plus named presets:

* **Block vector** (as sd-webui-lora-block-weight and Inspire's LBW):
  comma-separated numbers, element 0 is **BASE**.  The vector's length picks
  the layout, listed in :data:`LAYOUTS` (17 = SD1.5 LoRA: BASE, IN01, IN02,
  IN04, IN05, IN07, IN08, MID, OUT03…OUT11; 12 = SDXL LoRA: BASE, IN04, IN05,
  IN07, IN08, MID, OUT00…OUT05; 27/26/21 LyCORIS layouts; 58 = Flux BASE +
  19 double + 38 single; 41 = Wan 14B; 49 = LTX-2 …).  Blocks the layout does
  not name (e.g. IN03 of a LoCon under a 17-value vector) take BASE, as does
  everything outside the recognised blocks (text encoders, embeddings, final
  layers).  Unlike Inspire, element N always means the same UNet/DiT block
  whatever blocks the LoRA file happens to train, so a LoRA without some
  blocks does not shift the vector.  Tokens ``A``/``a`` = A, A/2 and
  ``B``/``b`` = B, B/2 (node inputs).  An optional ``NAME:`` prefix is ignored.

* **Rules** (modelled on Inspire's ``%`` spec; the leading ``%`` is optional):
  ``default=0, base=1, in=1, out3-5=0.2, double=1, single0-10=0.5,
  blocks20-39=0``.  Selectors: ``default`` (every key no rule matches),
  ``base`` (keys outside any block), ``in``/``mid``/``out`` (UNet
  ``input_blocks``/``middle_block`` sub-blocks/``output_blocks``),
  ``double``/``single`` (Flux, HunyuanVideo), ``blocks`` (the DiT block list:
  Wan ``blocks.N``, LTX ``transformer_blocks.N``, SD3 ``joint_blocks.N``,
  Lumina ``layers.N``), each optionally followed by an index ``N`` or an
  inclusive range ``N-M``.  Indices are the model's own block numbers,
  0-based.  Rules apply in order; the last matching rule wins.

Both parse into :class:`lora_core.stack.BlockWeights` (``rules`` of
(selector, value) and ``default``), which is frozen and hashable.
"""
from __future__ import annotations

import re
from functools import lru_cache
from typing import Callable, Iterable, Optional

from .errors import StackError
from .stack import BlockWeights

# ----------------------------------------------------------------- layouts


def _seq(prefix: str, numbers: Iterable[int]) -> tuple[str, ...]:
    return tuple(f"{prefix}{n}" for n in numbers)


# Vector length → selector of each element (element 0 is always BASE).
LAYOUTS: dict[int, tuple[str, ...]] = {
    # SD1.x/2.x LoRA: the attention blocks only (A1111 LBW / Inspire "SD").
    17: ("base",) + _seq("in", (1, 2, 4, 5, 7, 8)) + ("mid",) + _seq("out", range(3, 12)),
    # SD1.x LyCORIS as A1111 LBW counts it: every block, one middle block.
    26: ("base",) + _seq("in", range(0, 12)) + ("mid",) + _seq("out", range(0, 12)),
    # SD1.x LyCORIS as Inspire counts it: IN01…IN11, the 3 middle sub-blocks, OUT00…OUT11.
    27: ("base",) + _seq("in", range(1, 12)) + _seq("mid", range(3)) + _seq("out", range(0, 12)),
    # SDXL LoRA: the transformer blocks only.
    12: ("base",) + _seq("in", (4, 5, 7, 8)) + ("mid",) + _seq("out", range(0, 6)),
    # SDXL LyCORIS (Inspire): IN01…IN08, the 3 middle sub-blocks, OUT00…OUT08.
    21: ("base",) + _seq("in", range(1, 9)) + _seq("mid", range(3)) + _seq("out", range(0, 9)),
    # Flux: 19 double + 38 single blocks; the double blocks alone.
    58: ("base",) + _seq("double", range(19)) + _seq("single", range(38)),
    20: ("base",) + _seq("double", range(19)),
    # HunyuanVideo: 20 double + 40 single blocks.
    61: ("base",) + _seq("double", range(20)) + _seq("single", range(40)),
    # Wan 2.x 14B (40 blocks) and 1.3B/5B (30 blocks).
    41: ("base",) + _seq("blocks", range(40)),
    31: ("base",) + _seq("blocks", range(30)),
    # LTX-2 (48 transformer blocks) and LTX-Video 0.9 (28).
    49: ("base",) + _seq("blocks", range(48)),
    29: ("base",) + _seq("blocks", range(28)),
}

LAYOUT_NAMES: dict[int, str] = {
    17: "SD1.5 LoRA", 26: "SD1.5 LyCORIS (A1111)", 27: "SD1.5 LyCORIS (Inspire)",
    12: "SDXL LoRA", 21: "SDXL LyCORIS", 58: "Flux", 20: "Flux double blocks",
    61: "HunyuanVideo", 41: "Wan 14B", 31: "Wan 1.3B/5B", 49: "LTX-2", 29: "LTX-Video",
}

# Named presets.  Vectors are the well-known A1111 LBW presets; rule presets
# work for any model that has the named blocks.
PRESETS: dict[str, str] = {
    "ALL": "%default=1",
    "NONE": "%default=0",
    "BASE-ONLY": "%default=0, base=1",
    "SD-ALL": "1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1",
    "SD-NONE": "0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0",
    "SD-INS": "1,1,1,1,0,0,0,0,0,0,0,0,0,0,0,0,0",
    "SD-IND": "1,0,0,0,1,1,1,0,0,0,0,0,0,0,0,0,0",
    "SD-INALL": "1,1,1,1,1,1,1,0,0,0,0,0,0,0,0,0,0",
    "SD-MIDD": "1,0,0,0,1,1,1,1,1,1,1,1,0,0,0,0,0",
    "SD-MIDD0.2": "1,0,0,0,0,0,0.2,0.4,0.4,0.2,0,0,0,0,0,0,0",
    "SD-MIDD0.8": "1,0,0,0,0,0.5,0.8,0.8,0.4,0,0,0,0,0,0,0,0",
    "SD-MOUT": "1,0,0,0,0,0,1,1,1,1,1,1,1,1,0.5,0,0",
    "SD-OUTD": "1,0,0,0,0,0,0,0,1,1,1,1,0,0,0,0,0",
    "SD-OUTS": "1,0,0,0,0,0,0,0,0,0,0,0,1,1,1,1,1",
    "SD-OUTALL": "1,0,0,0,0,0,0,0,1,1,1,1,1,1,1,1,1",
    "SD-AOUT": "A,1,1,1,1,1,1,1,1,1,1,1,A,A,A,A,A",
    "SD-AB": "A,B,B,B,B,B,B,B,B,B,B,B,A,A,A,A,A",
    "SD-ALL0.5": "0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5",
    "SDXL-ALL": "1,1,1,1,1,1,1,1,1,1,1,1",
    "SDXL-NONE": "0,0,0,0,0,0,0,0,0,0,0,0",
    "SDXL-INALL": "1,1,1,1,1,0,0,0,0,0,0,0",
    "SDXL-MIDALL": "1,0,0,0,0,1,0,0,0,0,0,0",
    "SDXL-OUTALL": "1,0,0,0,0,0,1,1,1,1,1,1",
    "UNET-INALL": "%default=0, base=1, in=1",
    "UNET-MIDALL": "%default=0, base=1, mid=1",
    "UNET-OUTALL": "%default=0, base=1, out=1",
    "FLUX-DOUBLE": "%default=0, base=1, double=1",
    "FLUX-SINGLE": "%default=0, base=1, single=1",
    "FLUX-DOUBLE-FRONT": "%default=0, base=1, double0-5=1",
    "FLUX-DOUBLE-MID": "%default=0, base=1, double6-11=1",
    "FLUX-DOUBLE-TAIL": "%default=0, base=1, double12-18=1",
    "DIT-FRONT-HALF (Wan 14B)": "%default=0, base=1, blocks0-19=1",
    "DIT-BACK-HALF (Wan 14B)": "%default=0, base=1, blocks20-39=1",
    "DIT-FRONT-HALF (LTX-2)": "%default=0, base=1, blocks0-23=1",
    "DIT-BACK-HALF (LTX-2)": "%default=0, base=1, blocks24-47=1",
}

# ----------------------------------------------------------------- selectors

GROUPS = ("in", "mid", "out", "double", "single", "blocks")
_SELECTOR = re.compile(r"^(base|in|mid|out|double|single|blocks)(?:(\d+)(?:-(\d+))?)?$")
_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")

# Where the denoiser's weights live; the path after it starts with a block list.
_DIFFUSION_CONTAINERS = ("model.diffusion_model.", "diffusion_model.", "unet.", "transformer.", "model.")
# Block list name in the model's parameter keys → selector group.
_BLOCK_LISTS = {
    "input_blocks": "in", "middle_block": "mid", "output_blocks": "out",
    "double_blocks": "double", "single_blocks": "single",
    "single_transformer_blocks": "single", "transformer_blocks": "blocks",
    "blocks": "blocks", "joint_blocks": "blocks", "layers": "blocks",
}
_BLOCK_KEY = re.compile(r"^(" + "|".join(sorted(_BLOCK_LISTS, key=len, reverse=True)) + r")\.(\d+)(?:\.|$)")
# Families whose diffusers naming calls the double-stream blocks transformer_blocks.
_DOUBLE_STREAM_FAMILIES = frozenset({"flux", "flux2", "chroma", "hunyuan_video"})

Selector = tuple[str, Optional[int], Optional[int]]  # (group, first, last) ; ("base", None, None)


def parse_selector(text: str) -> Selector:
    """``"out3-5"`` → ``("out", 3, 5)``; ``"in"`` → ``("in", None, None)``."""
    m = _SELECTOR.match(text.strip().lower())
    if not m:
        raise StackError(f"unknown block selector {text!r}",
                         fix="use default, base, in, mid, out, double, single or blocks, optionally "
                             "with an index or range such as out3-5")
    group, first, last = m.group(1), m.group(2), m.group(3)
    if group == "base":
        if first is not None:
            raise StackError(f"block selector {text!r}: base takes no index")
        return ("base", None, None)
    if first is None:
        return (group, None, None)
    lo = int(first)
    hi = int(last) if last is not None else lo
    if hi < lo:
        raise StackError(f"block selector {text!r}: range runs backwards", fix=f"write {group}{hi}-{lo}")
    return (group, lo, hi)


@lru_cache(maxsize=65536)
def classify_key(param_key: str, family: Optional[str] = None) -> Optional[tuple[str, int]]:
    """The (group, block index) of a model parameter key, or None outside blocks.

    ``diffusion_model.input_blocks.4.1.proj_in.weight`` → ``("in", 4)``;
    ``diffusion_model.middle_block.1.…`` → ``("mid", 1)`` (sub-block);
    ``diffusion_model.blocks.12.…`` → ``("blocks", 12)``; text encoder keys,
    embeddings and final layers → None (BASE).
    """
    path = param_key
    for prefix in _DIFFUSION_CONTAINERS:
        if path.startswith(prefix):
            path = path[len(prefix):]
            break
    m = _BLOCK_KEY.match(path)
    if not m:
        return None
    group = _BLOCK_LISTS[m.group(1)]
    if m.group(1) == "transformer_blocks" and family in _DOUBLE_STREAM_FAMILIES:
        group = "double"  # diffusers Flux: transformer_blocks are the double-stream blocks
    return group, int(m.group(2))


def _matches(selector: Selector, where: Optional[tuple[str, int]]) -> bool:
    group, lo, hi = selector
    if group == "base":
        return where is None
    if where is None or where[0] != group:
        return False
    return lo is None or lo <= where[1] <= hi


@lru_cache(maxsize=1024)
def _compiled(spec: BlockWeights) -> tuple[tuple[Selector, float], ...]:
    return tuple((parse_selector(sel), float(value)) for sel, value in spec.rules)


def block_multiplier(spec: Optional[BlockWeights], param_key: str, family: Optional[str] = None) -> float:
    """The factor a row's strength is multiplied by for ``param_key``.

    The last rule whose selector matches the key's block wins; ``default``
    when none does.  ``None`` spec → 1.0.
    """
    if spec is None:
        return 1.0
    where = classify_key(param_key, family)
    value = float(spec.default)
    for selector, rule_value in _compiled(spec):
        if _matches(selector, where):
            value = rule_value
    return value


def make_multiplier(spec: Optional[BlockWeights], family: Optional[str] = None
                    ) -> Optional[Callable[[str], float]]:
    """A ``param_key → multiplier`` callable for ``lora_core.plan.build_plan``,
    or None when the spec changes nothing (no spec, or every value is 1)."""
    if spec is None:
        return None
    rules = _compiled(spec)  # validates selectors now, not in the middle of a plan
    if spec.default == 1.0 and all(v == 1.0 for _, v in rules):
        return None

    def multiplier(param_key: str) -> float:
        return block_multiplier(spec, param_key, family)

    return multiplier


def unmatched_rules(spec: BlockWeights, param_keys: Iterable[str], family: Optional[str] = None
                    ) -> list[str]:
    """Selectors of ``spec`` that match none of ``param_keys`` (``base`` ignored).

    A non-empty answer usually means the vector was written for another model
    (an SD1.5 vector on Flux, a Wan range past the last block).
    """
    found = {classify_key(k, family) for k in param_keys}
    found.discard(None)
    missing = []
    for (sel_text, _), (selector, _) in zip(spec.rules, _compiled(spec)):
        if selector[0] != "base" and not any(_matches(selector, w) for w in found):
            missing.append(sel_text)
    return missing


# ----------------------------------------------------------------- parsing


def _value(token: str, a: float, b: float, where: str) -> float:
    t = token.strip()
    if t in ("A", "a", "B", "b"):
        base = a if t.upper() == "A" else b
        return base if t.isupper() else base / 2
    if _NUMBER.match(t):
        return float(t)
    if t.upper() in ("R", "U"):
        raise StackError(f"{where}: random token {t!r} is not supported (results would not be reproducible)",
                         fix="write the number you want")
    if " " in t:
        raise StackError(f"{where}: per-layer lists such as {t!r} are not supported",
                         fix="give one number per block")
    raise StackError(f"{where}: {t!r} is not a number", fix="write numbers, or A/a/B/b")


def _parse_rules(text: str, a: float, b: float) -> BlockWeights:
    default = 1.0
    rules: list[tuple[str, float]] = []
    for raw in re.split(r"[,;\n]", text):
        item = raw.strip()
        if not item:
            continue
        if "=" not in item:
            raise StackError(f"block rule {item!r} has no '='", fix="write selector=value, e.g. out3-5=0.2")
        sel, val = (s.strip() for s in item.split("=", 1))
        value = _value(val, a, b, f"block rule {item!r}")
        if sel.lower() == "default":
            default = value
            continue
        selector = parse_selector(sel)
        rules.append((_selector_text(selector), value))
    return BlockWeights(rules=tuple(rules), default=default)


def _selector_text(selector: Selector) -> str:
    group, lo, hi = selector
    if lo is None:
        return group
    return f"{group}{lo}" if lo == hi else f"{group}{lo}-{hi}"


def _parse_vector(text: str, a: float, b: float) -> BlockWeights:
    tokens = [t.strip() for t in text.split(",")]
    if tokens and tokens[-1] == "":
        tokens = tokens[:-1]  # a trailing comma
    layout = LAYOUTS.get(len(tokens))
    if layout is None:
        known = ", ".join(f"{n} ({LAYOUT_NAMES[n]})" for n in sorted(LAYOUTS))
        raise StackError(f"a block vector of {len(tokens)} values matches no known layout",
                         fix=f"use one of {known}, or rules such as 'double=1, single0-10=0.5'")
    values = [_value(t, a, b, f"block vector element {i}") for i, t in enumerate(tokens)]
    return BlockWeights(rules=tuple(zip(layout[1:], values[1:])), default=values[0])


def parse_block_weights(text: Optional[str], a: float = 4.0, b: float = 1.0) -> Optional[BlockWeights]:
    """Parse a block vector, a rule list or a preset name; empty → None."""
    if text is None:
        return None
    spec = text.strip()
    if not spec:
        return None
    if spec in PRESETS:
        spec = PRESETS[spec]
    elif "=" not in spec and ":" in spec:
        name, rest = spec.split(":", 1)  # "NAME:1,0,…" as in LBW preset files
        spec = rest.strip() if rest.strip() else PRESETS.get(name.strip(), "")
        if not spec:
            raise StackError(f"unknown block-weight preset {name.strip()!r}")
    if spec.startswith("%"):
        return _parse_rules(spec[1:], a, b)
    if "=" in spec:
        return _parse_rules(spec, a, b)
    if "," not in spec and not _NUMBER.match(spec):
        raise StackError(f"unknown block-weight preset {spec!r}",
                         fix="pick a preset from the list, or write a vector or rules")
    return _parse_vector(spec, a, b)


def format_block_weights(spec: Optional[BlockWeights]) -> str:
    """Rule text that parses back to an equal spec (``""`` for None)."""
    if spec is None:
        return ""
    parts = [f"default={_num(spec.default)}"]
    parts += [f"{sel}={_num(v)}" for sel, v in spec.rules]
    return ", ".join(parts)


def _num(value: float) -> str:
    value = float(value)
    return str(int(value)) if value.is_integer() and abs(value) < 1e15 else repr(value)
