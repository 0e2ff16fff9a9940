"""Smoke tests of the integration harness itself (one run per ComfyUI version)."""
from __future__ import annotations

import math

import pytest

from comfy_harness import Graph, PromptExecutionFailed, PromptRejected, latent_stats


def test_server_up_and_pack_imported(comfy):
    info = comfy.client.object_info()
    assert "KSampler" in info and "UNETLoader" in info
    assert "PatchbayTestConditioning" in info, "helper test nodes not loaded"
    log = comfy.read_log()
    assert "Starting server" in log
    assert comfy.pack_import_errors() == [], "\n".join(comfy.pack_import_errors())
    assert comfy.pack_loaded(), "pack missing from ComfyUI's custom node import list:\n" + comfy.log_tail()


def test_object_info_single_node(comfy_client):
    ks = comfy_client.object_info("KSampler")
    assert "model" in ks["input"]["required"]
    with pytest.raises(KeyError):
        comfy_client.object_info("NoSuchNode_patchbay")


def test_rejected_prompt_carries_validation_message(comfy, tiny_ltxv):
    g = Graph()
    m = tiny_ltxv.load(g)
    # steps below the minimum and an unknown unet file: both reported by validation
    ks = g.node("KSampler", model=m, seed=0, steps=0, cfg=1.0, sampler_name="euler",
           scheduler="simple", positive=tiny_ltxv.cond(g), negative=tiny_ltxv.cond(g),
           latent_image=tiny_ltxv.empty_latent(g), denoise=1.0)
    g.nodes["1"]["inputs"]["unet_name"] = "does-not-exist.safetensors"
    g.node("PatchbayTestLatentStats", samples=ks[0])
    with pytest.raises(PromptRejected) as ei:
        comfy.client.queue(g)
    text = str(ei.value)
    assert "does-not-exist.safetensors" in text
    assert "steps" in text
    assert ei.value.node_errors


def test_execution_error_text(comfy, tiny_ltxv):
    # LTXV (caption_channels 4096) fed with 8-wide conditioning -> matmul error at run time
    g = Graph()
    m = tiny_ltxv.load(g)
    bad = g.node("PatchbayTestConditioning", dim=8, tokens=2, pooled_dim=0, seed=0, scale=1.0,
                 attention_mask=True)[0]
    lat = tiny_ltxv.sample(g, m, positive=bad, steps=1)
    g.node("PatchbayTestLatentStats", samples=lat)
    res = comfy.client.queue(g, check=False)
    assert not res.ok
    assert res.error is not None and res.error["node_type"] == "KSampler"
    assert "KSampler" in res.error_text
    with pytest.raises(PromptExecutionFailed):
        comfy.client.queue(g)  # cached? no: errors are not cached, it runs again


def _run_sampling(comfy, model, steps=2, seed=0):
    g = Graph()
    m = model.load(g)
    lat = model.sample(g, m, steps=steps, seed=seed)
    g.node("PatchbayTestLatentStats", samples=lat)
    res = comfy.client.queue(g, timeout=240)
    st = latent_stats(res)
    assert st["finite"], st
    assert st["abs_sum"] > 0
    return st, res


def test_tiny_flux_samples(comfy, tiny_flux):
    st, res = _run_sampling(comfy, tiny_flux)
    assert st["shape"] == [1, 16, 2, 2]
    assert "model_type FLOW" in comfy.read_log()


def test_tiny_ltxv_samples(comfy, tiny_ltxv):
    st, res = _run_sampling(comfy, tiny_ltxv, seed=1234)
    assert st["shape"] == [1, 128, 1, 2, 2]
    # ComfyUI caches node outputs between prompts: the same graph again executes nothing new
    st2, res2 = _run_sampling(comfy, tiny_ltxv, seed=1234)
    assert st2["sha256"] == st["sha256"]
    assert res2.cached_nodes, res2.messages


def test_tiny_sd15_unet_samples(comfy, tiny_sd15_unet):
    st, res = _run_sampling(comfy, tiny_sd15_unet)
    assert st["shape"] == [1, 4, 4, 4]


def test_clip_l_encodes_and_drives_sd15(comfy, tiny_sd15_unet, tiny_clip_l):
    g = Graph()
    m = tiny_sd15_unet.load(g)
    clip = tiny_clip_l.load(g)
    pos = g.node("CLIPTextEncode", clip=clip, text="a tiny test")[0]
    lat = tiny_sd15_unet.sample(g, m, positive=pos, steps=1)
    g.node("PatchbayTestLatentStats", samples=lat)
    st = latent_stats(comfy.client.queue(g, timeout=240))
    assert st["finite"]


def test_sd15_checkpoint_and_core_lora_loader_probe(comfy, tiny_sd15_checkpoint, tmp_path):
    """CheckpointLoaderSimple gives MODEL+CLIP; core LoraLoader + the probe nodes see the
    UNet patch (exact weight delta) and the CLIP patch (conditioning changes)."""
    import torch
    from safetensors.torch import save_file
    # kohya naming: one SD1 UNet attention projection + one CLIP-L attention projection
    unet_key = "lora_unet_input_blocks_1_1_transformer_blocks_0_attn1_to_q"
    te_key = "lora_te_text_model_encoder_layers_0_self_attn_q_proj"
    lora = {}
    for k, fan_out, fan_in in ((unet_key, 320, 320), (te_key, 768, 768)):
        lora[f"{k}.lora_up.weight"] = torch.full((fan_out, 2), 0.1)
        lora[f"{k}.lora_down.weight"] = torch.full((2, fan_in), 0.1)
        lora[f"{k}.alpha"] = torch.tensor(2.0)
    p = tmp_path / "probe_lora.safetensors"
    save_file(lora, str(p))
    name = comfy.add_model("loras", p, "harness/probe_lora.safetensors")

    g = Graph()
    model, clip = tiny_sd15_checkpoint.load_checkpoint(g)
    ll = g.node("LoraLoader", model=model, clip=clip, lora_name=name,
                strength_model=1.0, strength_clip=1.0)
    wfilter = "input_blocks.1.1.transformer_blocks.0.attn1.to_q"
    probe_lora = g.node("PatchbayTestModelProbe", model=ll[0], key_filter=wfilter, max_keys=4)
    probe_base = g.node("PatchbayTestModelProbe", model=model, key_filter=wfilter, max_keys=4)
    cs_base = g.node("PatchbayTestConditioningStats",
                     conditioning=g.node("CLIPTextEncode", clip=clip, text="probe")[0])
    cs_lora = g.node("PatchbayTestConditioningStats",
                     conditioning=g.node("CLIPTextEncode", clip=ll[1], text="probe")[0])
    res = comfy.client.queue(g, timeout=300)

    patched, base = res.ui(probe_lora.id), res.ui(probe_base.id)
    wkey = "diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight"
    assert patched["patch_keys"][0] == [wkey]
    assert base["patch_keys"][0] == []
    diff = patched["weights"][0][wkey]["sum"] - base["weights"][0][wkey]["sum"]
    assert math.isclose(diff, 320 * 320 * 0.02, rel_tol=1e-3), diff
    c_base = res.ui(cs_base.id, "conditioning_stats")[0]["cond"]
    c_lora = res.ui(cs_lora.id, "conditioning_stats")[0]["cond"]
    assert c_base["shape"] == c_lora["shape"] == [1, 77, 768]
    assert c_base["sha256"] != c_lora["sha256"], "CLIP LoRA had no effect on the conditioning"
