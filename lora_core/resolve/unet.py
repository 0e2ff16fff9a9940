"""SD1.x / SD2.x / SDXL UNet: original (ldm/sgm) names ↔ diffusers names.

The two namings differ in block addressing only; the modules inside an
attention block keep their names, and a ResNet block renames six children::

    ldm                              diffusers
    input_blocks.0.0                 conv_in
    time_embed.0 / .2                time_embedding.linear_1 / linear_2
    label_emb.0.0 / .0.2             add_embedding.linear_1 / linear_2     (SDXL)
    input_blocks.n.0  (ResNet)       down_blocks.i.resnets.j
    input_blocks.n.1  (attention)    down_blocks.i.attentions.j
    input_blocks.n.0.op              down_blocks.i.downsamplers.0.conv
    middle_block.0 / .1 / .2         mid_block.resnets.0 / attentions.0 / resnets.1
    output_blocks.n.0 / .1           up_blocks.i.resnets.j / attentions.j
    output_blocks.n.{1,2}.conv       up_blocks.i.upsamplers.0.conv
    out.0 / out.2                    conv_norm_out / conv_out
    in_layers.0 / in_layers.2        norm1 / conv1           (inside a ResNet)
    emb_layers.1                     time_emb_proj
    out_layers.0 / out_layers.3      norm2 / conv2
    skip_connection                  conv_shortcut

Block numbers are read off the model's own keys (levels end at a
downsampler/upsampler; a middle block's children say which are ResNets), so
SD1's four levels, SDXL's three, BK-SDM / KOALA without a middle block or
with one ResNet per level, and SSD-1B / Vega with fewer transformer blocks
need no configuration.  Old diffusers attention-processor files add
``….processor.to_q`` and ``….to_out`` spellings of ``to_q`` / ``to_out.0``.
"""
from __future__ import annotations

import re
from typing import Iterator, Optional

from .entries import Alias, Target
from .model import DIFFUSION, ModelIndex

FAMILIES = ("sd1", "sd2", "sdxl", "unet")

RESNET_LDM_TO_DIFFUSERS = {
    "in_layers.0": "norm1", "in_layers.2": "conv1", "emb_layers.1": "time_emb_proj",
    "out_layers.0": "norm2", "out_layers.3": "conv2", "skip_connection": "conv_shortcut",
}
RESNET_DIFFUSERS_TO_LDM = {v: k for k, v in RESNET_LDM_TO_DIFFUSERS.items()}
TOP_LEVEL = {
    "input_blocks.0.0": "conv_in", "time_embed.0": "time_embedding.linear_1",
    "time_embed.2": "time_embedding.linear_2", "label_emb.0.0": "add_embedding.linear_1",
    "label_emb.0.2": "add_embedding.linear_2", "out.0": "conv_norm_out", "out.2": "conv_out",
}
# diffusers calls label_emb "add_embedding" (SDXL's text_time) or "class_embedding"
# (class_embed_type timestep/projection); diffusers' and ComfyUI's converters map
# either onto label_emb, so a LoRA may use both spellings.
LABEL_EMB_CLASS_NAMES = {"label_emb.0.0": "class_embedding.linear_1", "label_emb.0.2": "class_embedding.linear_2"}
_LDM_BLOCK = re.compile(r"^(input_blocks|output_blocks)\.(\d+)\.(\d+)(?:\.(.*))?$")
_MID_LDM = re.compile(r"^middle_block\.(\d+)(?:\.(.*))?$")
_DIFF_BLOCK = re.compile(r"^(down_blocks|up_blocks)\.(\d+)\.(resnets|attentions|downsamplers|upsamplers)\.(\d+)(?:\.(.*))?$")
_MID_DIFF = re.compile(r"^mid_block\.(resnets|attentions)\.(\d+)(?:\.(.*))?$")


_RESNET_CHILDREN = frozenset(k.split(".")[0] for k in RESNET_LDM_TO_DIFFUSERS)


def is_unet(index: ModelIndex) -> bool:
    """An SD-style UNet: an input conv, then a down path and an up path or a
    middle block (distilled UNets such as BK-SDM have no middle block)."""
    paths = index.component(DIFFUSION)
    if not ("input_blocks.0.0" in paths or "conv_in" in paths):
        return False
    down = any(p.startswith(("input_blocks.1.", "down_blocks.")) for p in paths)
    rest = any(p.startswith(("output_blocks.", "up_blocks.", "middle_block.", "mid_block.")) for p in paths)
    return down and rest


def _middle_maps(paths) -> dict[str, str]:
    """ldm ``middle_block.n`` → diffusers ``mid_block.resnets.j`` / ``attentions.j``.

    The ldm block is a sequence [ResNet, (attention), ResNet …], possibly cut
    short (SSD-1B keeps one ResNet) or absent (BK-SDM); its children tell a
    ResNet (``in_layers``, ``emb_layers`` …) from an attention block.
    """
    out: dict[str, str] = {}
    ldm: dict[int, set[str]] = {}
    for p in paths:
        m = _MID_LDM.match(p)
        if m:
            ldm.setdefault(int(m.group(1)), set()).add((m.group(2) or "").split(".", 1)[0])
    if ldm:
        counts = {"resnets": 0, "attentions": 0}
        for n in sorted(ldm):
            kind = "resnets" if ldm[n] & _RESNET_CHILDREN else "attentions"
            out[f"middle_block.{n}"] = f"mid_block.{kind}.{counts[kind]}"
            counts[kind] += 1
        return out
    diff: dict[str, set[int]] = {}
    for p in paths:
        m = _MID_DIFF.match(p)
        if m:
            diff.setdefault(m.group(1), set()).add(int(m.group(2)))
    n = 0
    for j in range(max((max(v) for v in diff.values()), default=-1) + 1):
        for kind in ("resnets", "attentions"):
            if j in diff.get(kind, ()):
                out[f"middle_block.{n}"] = f"mid_block.{kind}.{j}"
                n += 1
    return out


def _block_maps(paths) -> tuple[dict[str, str], dict[str, str]]:
    """(ldm block prefix → diffusers prefix, its inverse), from the model's own naming."""
    ldm_to_diff: dict[str, str] = {}
    if any(p.startswith("input_blocks.") for p in paths):
        inputs: dict[int, dict[int, set[str]]] = {}
        outputs: dict[int, dict[int, set[str]]] = {}
        for p in paths:
            m = _LDM_BLOCK.match(p)
            if not m:
                continue
            where = inputs if m.group(1) == "input_blocks" else outputs
            child = (m.group(4) or "").split(".", 1)[0]
            where.setdefault(int(m.group(2)), {}).setdefault(int(m.group(3)), set()).add(child)
        level, j = 0, 0
        for n in sorted(k for k in inputs if k > 0):
            subs = inputs[n]
            if subs.get(0) == {"op"}:
                ldm_to_diff[f"input_blocks.{n}.0.op"] = f"down_blocks.{level}.downsamplers.0.conv"
                level, j = level + 1, 0
                continue
            ldm_to_diff[f"input_blocks.{n}.0"] = f"down_blocks.{level}.resnets.{j}"
            if 1 in subs:
                ldm_to_diff[f"input_blocks.{n}.1"] = f"down_blocks.{level}.attentions.{j}"
            j += 1
        level, j = 0, 0
        for n in sorted(outputs):
            subs = outputs[n]
            ldm_to_diff[f"output_blocks.{n}.0"] = f"up_blocks.{level}.resnets.{j}"
            upsampled = False
            for m_idx, children in subs.items():
                if m_idx == 0:
                    continue
                if children == {"conv"}:
                    ldm_to_diff[f"output_blocks.{n}.{m_idx}.conv"] = f"up_blocks.{level}.upsamplers.0.conv"
                    upsampled = True
                else:
                    ldm_to_diff[f"output_blocks.{n}.{m_idx}"] = f"up_blocks.{level}.attentions.{j}"
            level, j = (level + 1, 0) if upsampled else (level, j + 1)
    else:
        downs: dict[int, dict[str, set[int]]] = {}
        ups: dict[int, dict[str, set[int]]] = {}
        for p in paths:
            m = _DIFF_BLOCK.match(p)
            if m:
                where = downs if m.group(1) == "down_blocks" else ups
                where.setdefault(int(m.group(2)), {}).setdefault(m.group(3), set()).add(int(m.group(4)))
        n = 0
        for i in sorted(downs):
            for j in sorted(downs[i].get("resnets", ())):
                n += 1
                ldm_to_diff[f"input_blocks.{n}.0"] = f"down_blocks.{i}.resnets.{j}"
                if j in downs[i].get("attentions", ()):
                    ldm_to_diff[f"input_blocks.{n}.1"] = f"down_blocks.{i}.attentions.{j}"
            if downs[i].get("downsamplers"):
                n += 1
                ldm_to_diff[f"input_blocks.{n}.0.op"] = f"down_blocks.{i}.downsamplers.0.conv"
        n = -1
        for i in sorted(ups):
            resnets = sorted(ups[i].get("resnets", ()))
            for j in resnets:
                n += 1
                ldm_to_diff[f"output_blocks.{n}.0"] = f"up_blocks.{i}.resnets.{j}"
                if j in ups[i].get("attentions", ()):
                    ldm_to_diff[f"output_blocks.{n}.1"] = f"up_blocks.{i}.attentions.{j}"
            if ups[i].get("upsamplers"):
                slot = 2 if ups[i].get("attentions") else 1
                ldm_to_diff[f"output_blocks.{n}.{slot}.conv"] = f"up_blocks.{i}.upsamplers.0.conv"
    ldm_to_diff.update(_middle_maps(paths))
    ldm_to_diff.update(TOP_LEVEL)
    diff_to_ldm = {v: k for k, v in ldm_to_diff.items()}
    diff_to_ldm.update({v: k for k, v in LABEL_EMB_CLASS_NAMES.items()})
    return ldm_to_diff, diff_to_ldm


def _translate(path: str, blocks: dict[str, str], resnet_children: dict[str, str]) -> Optional[str]:
    """``path`` in the other naming, or None."""
    parts = path.split(".")
    for cut in range(min(len(parts), 5), 0, -1):
        head = ".".join(parts[:cut])
        other = blocks.get(head)
        if other is None:
            continue
        rest = ".".join(parts[cut:])
        if not rest:
            return other
        if ".resnets." in head or ".resnets." in other:
            # ResNet children are renamed; attention children are not.
            for src, dst in resnet_children.items():
                if rest == src or rest.startswith(src + "."):
                    return f"{other}.{dst}{rest[len(src):]}"
        return f"{other}.{rest}"
    return None


_PROCESSOR = re.compile(r"\.(attn[12])\.(to_q|to_k|to_v|to_out\.0)$")


def _processor_variants(diffusers_path: str) -> Iterator[str]:
    """Old attention-processor spellings of a diffusers attention projection."""
    m = _PROCESSOR.search(diffusers_path)
    if not m:
        return
    head = diffusers_path[: m.start()]
    proj = m.group(2)
    short = "to_out" if proj == "to_out.0" else proj
    yield f"{head}.{m.group(1)}.processor.{short}"
    if proj == "to_out.0":
        yield f"{head}.{m.group(1)}.to_out"


def aliases(index: ModelIndex, family: Optional[str]) -> Iterator[Alias]:
    if not is_unet(index):
        return
    paths = index.component(DIFFUSION)
    ldm_to_diff, diff_to_ldm = _block_maps(paths)
    model_is_ldm = any(p.startswith("input_blocks.") for p in paths)
    for path, mod in paths.items():
        if model_is_ldm:
            other = _translate(path, ldm_to_diff, RESNET_LDM_TO_DIFFUSERS)
            diffusers_path = other
        else:
            other = _translate(path, diff_to_ldm, RESNET_DIFFUSERS_TO_LDM)
            diffusers_path = path
        if other is not None:
            yield DIFFUSION, other, Target(mod)
        if model_is_ldm and path in LABEL_EMB_CLASS_NAMES:
            yield DIFFUSION, LABEL_EMB_CLASS_NAMES[path], Target(mod)
        if diffusers_path is not None:
            for variant in _processor_variants(diffusers_path):
                yield DIFFUSION, variant, Target(mod)
