"""LoRA Stack Loader inside a real ComfyUI (every installed version).

Oracle: core's own chained ``LoraLoader`` on the same files (weights through the
harness's PatchbayTestModelProbe, the text encoder through CLIPTextEncode's
conditioning), plus the node's own summary and /object_info schema.
"""
from __future__ import annotations

import json

import pytest

from tiny_models import kohya_lora
from safetensors.torch import save_file

from comfy_harness import Graph, PromptRejected

NODE = "PatchbayLoraStackLoader"
Q_KEY = "diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight"
K2_KEY = "diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"
FILTER = "transformer_blocks.0.attn1.to_q.weight,transformer_blocks.0.attn2.to_k.weight"
MODS = {"lora_unet_input_blocks_1_1_transformer_blocks_0_attn1_to_q": (320, 320),
        "lora_unet_input_blocks_1_1_transformer_blocks_0_attn2_to_k": (320, 768),
        "lora_te_text_model_encoder_layers_0_self_attn_q_proj": (768, 768),
        "lora_te_text_model_encoder_layers_0_mlp_fc1": (3072, 768)}


def _kohya(seed: int, rank: int, alpha: float, scale: float = 0.05) -> dict:
    return kohya_lora(MODS, seed, rank, alpha, scale)


@pytest.fixture(scope="session")
def loader_loras(comfy, tmp_path_factory):
    d = tmp_path_factory.mktemp("patchbay-stack-loader")
    save_file(_kohya(11, 4, 2.0), str(d / "a.safetensors"),
              metadata={"ss_tag_frequency": '{"10_tok": {"sks person": 5}}'})
    save_file(_kohya(12, 8, 8.0), str(d / "b.safetensors"))
    return {k: comfy.add_model("loras", d / f"{k}.safetensors", f"loader/stackloader_{k}.safetensors")
            for k in ("a", "b")}


def v2(*rows, separate=False) -> str:
    return json.dumps({"version": 2, "options": {"separate_clip": separate},
                       "rows": [{"id": f"r-{i:08x}", "on": on, "lora": lora, "strength": s, "strength_clip": c}
                                for i, (lora, s, c, on) in enumerate(rows)]})


def _probe(g, model):
    return g.node("PatchbayTestModelProbe", model=model, key_filter=FILTER, max_keys=16)


def _cond(g, clip):
    return g.node("PatchbayTestConditioningStats", conditioning=g.node("CLIPTextEncode", clip=clip, text="a test")[0])


def _core_chain(g, model, clip, rows):
    for name, s, c in rows:
        n = g.node("LoraLoader", model=model, clip=clip, lora_name=name, strength_model=s, strength_clip=c)
        model, clip = n[0], n[1]
    return model, clip


def _assert_same(res, base, ours, core):
    b, o, c = (res.ui(p.id)["weights"][0] for p in (base, ours, core))
    for k in (Q_KEY, K2_KEY):
        d_core = c[k]["sum"] - b[k]["sum"]
        assert abs(d_core) > 1e-3
        assert o[k]["sum"] - b[k]["sum"] == pytest.approx(d_core, rel=1e-4, abs=1e-4), k
        assert o[k]["abs_sum"] == pytest.approx(c[k]["abs_sum"], rel=1e-6), k


def _cond_stats(res, node):
    return res.ui(node.id)["conditioning_stats"][0]["cond"]


def test_object_info_schema(comfy_client):
    info = comfy_client.object_info(NODE)
    assert info["display_name"] == "LoRA Stack Loader" and info["category"] == "loaders/LoRA Patchbay"
    req, opt = info["input"]["required"], info["input"]["optional"]
    assert list(req) == ["model", "rows", "mode"] and list(opt) == ["clip", "lora_stack"]
    assert req["rows"][0] == "STRING" and req["rows"][1]["multiline"] is True
    assert json.loads(req["rows"][1]["default"]) == {"version": 2, "options": {"separate_clip": False}, "rows": []}
    assert req["mode"][0] == ["merge", "bypass", "auto"]
    assert info["output"] == ["MODEL", "CLIP", "STRING", "STRING", "LORA_STACK"]
    assert info["output_name"] == ["model", "clip", "lora_text", "trigger_words", "lora_stack"]
    for section in (req, opt):
        for name, spec in section.items():
            assert spec[1].get("tooltip"), name


def test_weights_and_clip_equal_core_chain(comfy, tiny_sd15_checkpoint, loader_loras):
    a, b = loader_loras["a"], loader_loras["b"]
    g = Graph()
    model, clip = tiny_sd15_checkpoint.load_checkpoint(g)
    ours = g.node(NODE, model=model, clip=clip, mode="merge",
                  rows=v2((a, 0.8, 0.3, True), (b, -0.5, None, True), ("loader/gone.safetensors", 1.0, None, False),
                          separate=True))
    core_model, core_clip = _core_chain(g, model, clip, [(a, 0.8, 0.3), (b, -0.5, -0.5)])
    probes = [_probe(g, m) for m in (model, ours[0], core_model)]
    conds = [_cond(g, c) for c in (clip, ours[1], core_clip)]
    res = comfy.client.queue(g, timeout=240)
    _assert_same(res, *probes)
    base_c, ours_c, core_c = (_cond_stats(res, n) for n in conds)
    assert abs(core_c["sum"] - base_c["sum"]) > 1e-4
    assert ours_c["sum"] == pytest.approx(core_c["sum"], rel=1e-3, abs=1e-3)
    assert ours_c["abs_sum"] == pytest.approx(core_c["abs_sum"], rel=1e-3)
    (summary,) = res.ui(ours.id)["patchbay_summary"]
    # each file: 2 UNet modules on the model, 2 text-encoder modules on CLIP
    assert summary == {"on": 2, "total": 3, "matched": 8, "keys": 8, "missing": 1,
                       "text": "2 of 3 on · 8 of 8 keys matched · 1 missing"}


def test_single_strength_column_drives_clip(comfy, tiny_sd15_checkpoint, loader_loras):
    a = loader_loras["a"]
    g = Graph()
    model, clip = tiny_sd15_checkpoint.load_checkpoint(g)
    # separate_clip false: the 0.1 in strength_clip is ignored, CLIP gets 0.9 like the model
    ours = g.node(NODE, model=model, clip=clip, mode="merge", rows=v2((a, 0.9, 0.1, True)))
    _, core_clip = _core_chain(g, model, clip, [(a, 0.9, 0.9)])
    conds = [_cond(g, c) for c in (ours[1], core_clip)]
    res = comfy.client.queue(g, timeout=240)
    ours_c, core_c = (_cond_stats(res, n) for n in conds)
    assert ours_c["sum"] == pytest.approx(core_c["sum"], rel=1e-3, abs=1e-3)


def test_chained_loaders_and_legacy_rows(comfy, tiny_sd15_checkpoint, loader_loras):
    """Loader A's lora_stack into loader B (on the base model) applies A's rows then B's;
    B also takes today's LoRA Stack row list and pasted tags."""
    a, b = loader_loras["a"], loader_loras["b"]
    g = Graph()
    model, clip = tiny_sd15_checkpoint.load_checkpoint(g)
    first = g.node(NODE, model=model, clip=clip, mode="merge", rows=v2((a, 0.6, None, True)))
    legacy = json.dumps([{"on": True, "lora": b, "strength": 0.4, "strength_clip": 0.4}])
    second = g.node(NODE, model=model, clip=clip, mode="merge", rows=legacy, lora_stack=first[4])
    tags = g.node(NODE, model=model, clip=clip, mode="merge",
                  rows="<lora:stackloader_a:0.6> <lora:stackloader_b:0.4>")
    core_model, _ = _core_chain(g, model, clip, [(a, 0.6, 0.6), (b, 0.4, 0.4)])
    base = _probe(g, model)
    p_second, p_tags, p_core = _probe(g, second[0]), _probe(g, tags[0]), _probe(g, core_model)
    res = comfy.client.queue(g, timeout=240)
    _assert_same(res, base, p_second, p_core)
    _assert_same(res, base, p_tags, p_core)
    assert res.ui(second.id)["patchbay_summary"][0]["text"] == "2 of 2 on · 8 of 8 keys matched"


@pytest.mark.parametrize("rows,match", [
    (v2(("loader/gone.safetensors", 1.0, None, True)), "gone.safetensors"),
    (v2(("loader/stackloader_a.safetensors", 9.0, None, True)), "outside the editor's range"),
    (v2(("../secret.safetensors", 1.0, None, True)), "path traversal"),
])
def test_bad_rows_are_rejected_at_queue_time(comfy, tiny_sd15_checkpoint, loader_loras, rows, match):
    g = Graph()
    model, clip = tiny_sd15_checkpoint.load_checkpoint(g)
    _probe(g, g.node(NODE, model=model, clip=clip, mode="merge", rows=rows)[0])
    with pytest.raises(PromptRejected, match=match):
        comfy.client.queue(g, timeout=120)
