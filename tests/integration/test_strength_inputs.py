"""Numbers that must never reach the weights (issue 8), through a real server.

* NaN / ±inf in any strength input of the pack (LoRA loader, IC-LoRA loader,
  schedule fields and keyframes, block weights, stack rows) is refused at
  queue time (HTTP 400) with a message naming the input; the API prompt
  carries the raw JSON literal ``NaN`` (ComfyUI's parser reads it).
* A huge finite strength in a stack row or a keyframe (1e30, -1e38, 1e300)
  is refused when the rows are parsed, naming the row.
* The merge's finiteness check stays the last line of defence: a finite file
  whose merged weight overflows fails the node naming the LoRA, and the
  base model is unchanged afterwards.
"""
from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import save_file

from comfy_harness import Graph, PromptRejected

Q = "lora_unet_input_blocks_1_1_transformer_blocks_0_attn1_to_q"
K = "lora_unet_input_blocks_1_1_transformer_blocks_0_attn1_to_k"
QKEY = "input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight"
KKEY = "input_blocks.1.1.transformer_blocks.0.attn1.to_k.weight"


@pytest.fixture(scope="session")
def strength_loras(comfy, tmp_path_factory):
    d = tmp_path_factory.mktemp("patchbay-strength-loras")
    g = torch.Generator().manual_seed(3)
    save_file({f"{Q}.lora_up.weight": torch.randn(320, 4, generator=g) * 0.05,
               f"{Q}.lora_down.weight": torch.randn(4, 320, generator=g) * 0.05}, str(d / "plain.safetensors"))
    # a good module on to_q, then finite tensors whose product overflows fp32 on to_k (1e20·1e20·4 > 3.4e38)
    save_file({f"{Q}.lora_up.weight": torch.randn(320, 4, generator=g) * 0.05,
               f"{Q}.lora_down.weight": torch.randn(4, 320, generator=g) * 0.05,
               f"{K}.lora_up.weight": torch.full((320, 4), 1e20),
               f"{K}.lora_down.weight": torch.full((4, 320), 1e20)}, str(d / "overflow.safetensors"))
    return {n: comfy.add_model("loras", d / f"{n}.safetensors", f"pb-strength/{n}.safetensors")
            for n in ("plain", "overflow")}


def _probe(g, model, keys=QKEY):
    return g.node("PatchbayTestModelProbe", model=model, key_filter=keys, max_keys=2)


def _weight(res, probe) -> dict:
    (stats,) = res.ui(probe.id, "weights")[0].values()
    return stats


def _weights(res, probe) -> dict:
    return {k: (v["finite"], v["sha256"]) for k, v in res.ui(probe.id, "weights")[0].items()}


def _rejected(comfy, g) -> str:
    with pytest.raises(PromptRejected) as info:
        comfy.client.submit(g)
    assert comfy.client.system_stats()  # the server keeps running
    return info.value.text


def _loader(g, model, clip, name, **kw):
    args = dict(model=model, clip=clip, lora_name=name, strength_model=1.0, strength_clip=1.0,
                enabled=True, mode="merge")
    args.update(kw)
    return g.node("PatchbayLoraLoader", **args)


def test_the_client_sends_the_raw_nan_literal():
    assert json.dumps({"x": math.nan}) == '{"x": NaN}'


@pytest.mark.parametrize("field,value", [("strength_model", math.nan), ("strength_clip", math.inf),
                                         ("strength_model", -math.inf)])
def test_lora_loader_refuses_non_finite_strength(comfy, tiny_sd15_checkpoint, strength_loras, field, value):
    g = Graph()
    model, clip = tiny_sd15_checkpoint.load_checkpoint(g)
    _probe(g, _loader(g, model, clip, strength_loras["plain"], **{field: value})[0])
    text = _rejected(comfy, g)
    assert field in text and "finite" in text, text


def test_lora_loader_still_checks_the_slider_range(comfy, tiny_sd15_checkpoint, strength_loras):
    g = Graph()
    model, clip = tiny_sd15_checkpoint.load_checkpoint(g)
    _probe(g, _loader(g, model, clip, strength_loras["plain"], strength_model=5.0)[0])
    text = _rejected(comfy, g)
    assert "strength_model" in text and "4" in text, text


def test_iclora_loader_refuses_nan_strength(comfy, tiny_sd15_checkpoint, strength_loras):
    g = Graph()
    model, _ = tiny_sd15_checkpoint.load_checkpoint(g)
    ic = g.node("PatchbayICLoraLoader", model=model, lora_name=strength_loras["plain"], strength=math.nan,
                enabled=True, mode="merge", crop="auto")
    _probe(g, ic[0])
    text = _rejected(comfy, g)
    assert "strength" in text and "finite" in text, text


def _stack_graph(g, tiny_sd15_checkpoint, rows, edit=None):
    model, clip = tiny_sd15_checkpoint.load_checkpoint(g)
    st = g.node("PatchbayLoraStack", rows=json.dumps(rows))[0]
    if edit is not None:
        st = edit(st)
    applied = g.node("PatchbayApplyLoraStack", model=model, clip=clip, stack=st, mode="merge")
    _probe(g, applied[0])


SCHEDULE = dict(row=1, lora_name="", keyframes="", start_strength=1.0, end_strength=0.0, start_percent=0.0,
                end_percent=1.0, interpolation="linear")
BLOCKS = dict(row=1, lora_name="", preset="custom (use block_vector)", block_vector="", A=4.0, B=1.0)


@pytest.mark.parametrize("field,value", [("start_strength", math.nan), ("end_strength", math.inf),
                                         ("end_percent", math.nan), ("keyframes", "0:1, 0.5:nan"),
                                         ("keyframes", "0:1, 1:1e30")])
def test_schedule_refuses_non_finite_or_huge_values(comfy, tiny_sd15_checkpoint, strength_loras, field, value):
    rows = [{"on": True, "lora": strength_loras["plain"], "strength": 1.0}]
    g = Graph()
    _stack_graph(g, tiny_sd15_checkpoint, rows,
                 lambda st: g.node("PatchbayLoraSchedule", lora_stack=st, **{**SCHEDULE, field: value})[0])
    text = _rejected(comfy, g)
    assert field in text, text


@pytest.mark.parametrize("field,value", [("A", math.nan), ("B", math.inf), ("block_vector", "default=nan"),
                                         ("block_vector", "default=1, in4=inf")])
def test_block_weights_refuse_non_finite_values(comfy, tiny_sd15_checkpoint, strength_loras, field, value):
    rows = [{"on": True, "lora": strength_loras["plain"], "strength": 1.0}]
    g = Graph()
    _stack_graph(g, tiny_sd15_checkpoint, rows,
                 lambda st: g.node("PatchbayLoraBlockWeights", lora_stack=st, **{**BLOCKS, field: value})[0])
    text = _rejected(comfy, g)
    assert field in text, text


@pytest.mark.parametrize("value", [math.nan, 1e30, -1e38, 1e300])
def test_stack_rows_refuse_non_finite_and_huge_strengths(comfy, tiny_sd15_checkpoint, strength_loras, value):
    rows = [{"on": True, "lora": strength_loras["plain"], "strength": 0.5},
            {"on": True, "lora": strength_loras["plain"], "strength": 1.0, "strength_clip": value}]
    g = Graph()
    _stack_graph(g, tiny_sd15_checkpoint, rows)
    text = _rejected(comfy, g)
    assert "row 2" in text and "strength_clip" in text, text


def test_overflowing_merge_fails_naming_the_lora_and_keeps_the_base(comfy, tiny_sd15_checkpoint, strength_loras):
    keys = f"{QKEY},{KKEY}"
    g = Graph()
    model, clip = tiny_sd15_checkpoint.load_checkpoint(g)
    base = _probe(g, model, keys)
    before = _weights(comfy.client.queue(g, timeout=240), base)
    assert len(before) == 2 and all(f for f, _ in before.values())
    for mode in ("merge", "auto"):
        g = Graph()
        model, clip = tiny_sd15_checkpoint.load_checkpoint(g)
        _probe(g, _loader(g, model, clip, strength_loras["overflow"], strength_clip=0.0, mode=mode)[0], keys)
        res = comfy.client.queue(g, timeout=240, check=False)
        assert not res.ok, mode
        assert "overflow.safetensors" in res.error["exception_message"], res.error
        assert "NaN or Inf" in res.error["exception_message"], res.error
        # nothing half-patched stays behind: the base (same module) reads as before
        g = Graph()
        model, clip = tiny_sd15_checkpoint.load_checkpoint(g)
        base = _probe(g, model, keys)
        assert _weights(comfy.client.queue(g, timeout=240), base) == before, mode
