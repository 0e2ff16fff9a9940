"""IC-LoRA nodes through a real ComfyUI server (API prompts), every supported version.

Uses the shared harness (conftest.py / comfy_harness.py).  If the pack's entry
point does not register the IC-LoRA nodes (yet), a second server is started
with a minimal wrapper pack that registers only nodes/iclora.py, so these
tests still exercise the nodes as ComfyUI imports them (package-relative).
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

import comfy_harness as ch
import iclora_models
from comfy_harness import Graph, latent_stats

REPO = Path(__file__).resolve().parents[2]
IC_NODES = ("PatchbayICLoraGuide", "PatchbayICLoraCropGuides", "PatchbayICLoraLoader",
            "PatchbayICLoraPanel", "PatchbayICLoraCropPanel")


def _wrapper_pack(root: Path) -> Path:
    pack = root / "lora-patchbay"
    pack.mkdir(parents=True, exist_ok=True)
    for sub in ("lora_core", "nodes"):
        link = pack / sub
        if not link.exists():
            link.symlink_to(REPO / sub, target_is_directory=True)
    (pack / "__init__.py").write_text(
        "from .nodes.iclora import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS\n")
    return pack


@pytest.fixture(scope="module")
def ic_server(comfy_install, request, tmp_path_factory):
    srv = request.getfixturevalue("comfy")
    own = None
    if not all(n in srv.client.object_info() for n in IC_NODES):
        own = ch.ComfyServer(comfy_install, pack_dir=_wrapper_pack(tmp_path_factory.mktemp("icpack")))
        own.start()
        srv = own
    d = tmp_path_factory.mktemp("icmodels")
    ckpt = iclora_models.build_ltxv_checkpoint(comfy_install.path, d / "ltxv-ic-tiny.safetensors")
    srv.add_model("checkpoints", ckpt)
    srv.add_model("loras", iclora_models.build_iclora_file(d / "ic-tiny.safetensors"))
    srv.add_model("loras", iclora_models.build_iclora_file(d / "ic-tiny-ref0.5.safetensors", factor="2"))
    yield srv
    if own is not None:
        own.cleanup()


def _base(g):
    ck = g.node("CheckpointLoaderSimple", ckpt_name="ltxv-ic-tiny.safetensors")
    pos = g.node("PatchbayTestConditioning", dim=4096, tokens=4, pooled_dim=0, seed=0, scale=1.0,
                 attention_mask=True)[0]
    neg = g.node("PatchbayTestConditioning", dim=4096, tokens=4, pooled_dim=0, seed=1, scale=1.0,
                 attention_mask=True)[0]
    lat = g.node("EmptyLTXVLatentVideo", width=64, height=64, length=17, batch_size=1)[0]
    return ck[0], ck[2], pos, neg, lat


# cfg 1.0: the harness's test conditioning carries a float attention mask, which LTX-Video
# cannot batch (cond + uncond); the in-process driver covers cfg > 1.
def _ksampler(g, model, pos, neg, lat, steps=3):
    return g.node("KSampler", model=model, seed=7, steps=steps, cfg=1.0, sampler_name="euler",
                  scheduler="simple", positive=pos, negative=neg, latent_image=lat, denoise=1.0)[0]


def _guide(g, pos, neg, vae, lat, img, **kw):
    args = dict(positive=pos, negative=neg, vae=vae, latent=lat, guide=img, frame_idx=0, strength=1.0,
                attention_strength=1.0, crop="stretch", start_percent=0.0, end_percent=1.0)
    args.update(kw)
    return g.node("PatchbayICLoraGuide", **args)


def _image(g, n=9, color=0x4080C0):
    return g.node("EmptyImage", width=64, height=64, batch_size=n, color=color)[0]


def test_auto_crop_and_same_latent_as_core(ic_server):
    g = Graph()
    model, vae, pos, neg, lat = _base(g)
    img = _image(g)
    ours = _guide(g, pos, neg, vae, lat, img)
    s_ours = _ksampler(g, model, ours[0], ours[1], ours[2])
    g.node("PatchbayTestLatentStats", _id="ours", samples=s_ours)
    core = g.node("LTXVAddGuide", positive=pos, negative=neg, vae=vae, latent=lat, image=img, frame_idx=0,
                  strength=1.0)
    s_core = _ksampler(g, model, core[0], core[1], core[2])
    crop = g.node("LTXVCropGuides", positive=core[0], negative=core[1], latent=s_core)
    g.node("PatchbayTestLatentStats", _id="core", samples=crop[2])
    res = ic_server.client.queue(g, timeout=600)
    a, b = latent_stats(res, "ours"), latent_stats(res, "core")
    assert a["shape"] == [1, 128, 3, 2, 2], a["shape"]  # exactly the input's frame count, no extra node
    assert a["finite"]
    assert a["sha256"] == b["sha256"], (a["sum"], b["sum"])


def test_disabled_iclora_is_exactly_base_and_enabled_differs(ic_server):
    g = Graph()
    model, vae, pos, neg, lat = _base(g)
    img = _image(g)
    g.node("PatchbayTestLatentStats", _id="base", samples=_ksampler(g, model, pos, neg, lat))
    for name, enabled in (("off", False), ("on", True)):
        ld = g.node("PatchbayICLoraLoader", model=model, lora_name="ic-tiny.safetensors", strength=1.0,
                    enabled=enabled, mode="merge", crop="auto")
        gd = _guide(g, pos, neg, vae, lat, img, ic_lora=ld[1])
        g.node("PatchbayTestLatentStats", _id=name, samples=_ksampler(g, ld[0], gd[0], gd[1], gd[2]))
    res = ic_server.client.queue(g, timeout=600)
    base, off, on = (latent_stats(res, k) for k in ("base", "off", "on"))
    assert off["sha256"] == base["sha256"]
    assert on["shape"] == base["shape"] == [1, 128, 3, 2, 2]
    assert on["sha256"] != base["sha256"]


def test_crop_node_for_two_stage(ic_server):
    g = Graph()
    model, vae, pos, neg, lat = _base(g)
    gd = _guide(g, pos, neg, vae, lat, _image(g), end_percent=0.5)
    s = _ksampler(g, model, gd[0], gd[1], gd[2])
    crop = g.node("PatchbayICLoraCropGuides", positive=gd[0], negative=gd[1], latent=s)
    # stage 2 on the cropped latent with the cleared conditionings
    s2 = g.node("KSampler", model=model, seed=8, steps=2, cfg=1.0, sampler_name="euler", scheduler="simple",
                positive=crop[0], negative=crop[1], latent_image=crop[2], denoise=0.5)[0]
    g.node("PatchbayTestLatentStats", samples=s2)
    res = ic_server.client.queue(g, timeout=600)
    st = latent_stats(res)
    assert st["shape"] == [1, 128, 3, 2, 2] and st["finite"]


@pytest.mark.parametrize("case,needle", [("too_long", "does not fit"), ("k2_not_divisible", "not divisible")])
def test_bad_input_messages(ic_server, case, needle):
    g = Graph()
    model, vae, pos, neg, lat = _base(g)
    if case == "too_long":
        gd = _guide(g, pos, neg, vae, lat, _image(g, n=25))
    else:
        lat = g.node("EmptyLTXVLatentVideo", width=96, height=64, length=17, batch_size=1)[0]
        ld = g.node("PatchbayICLoraLoader", model=model, lora_name="ic-tiny-ref0.5.safetensors", strength=1.0,
                    enabled=True, mode="merge", crop="auto")
        gd = _guide(g, pos, neg, vae, lat, _image(g), ic_lora=ld[1])
    g.node("PatchbayTestLatentStats", samples=_ksampler(g, model, gd[0], gd[1], gd[2]))
    res = ic_server.client.queue(g, check=False, timeout=600)
    assert not res.ok
    assert res.error["node_type"] == "PatchbayICLoraGuide", res.error_text
    assert needle in res.error["exception_message"], res.error["exception_message"]


def test_example_workflow_nodes_exist_with_matching_widgets(ic_server):
    import json
    info = ic_server.client.object_info()
    for name in ("iclora-ltx-control.json", "iclora-ltx-two-stage.json", "flux-incontext-panel.json"):
        wf = json.loads((REPO / "workflows" / name).read_text())
        for n in wf["nodes"]:
            if n["type"] == "Note":
                continue
            assert n["type"] in info, f"{name}: {n['type']} unknown to ComfyUI {ic_server.version}"
            if n["type"].startswith("Patchbay"):
                spec = info[n["type"]]["input"]
                widgets = [k for sect in ("required", "optional") for k, v in spec.get(sect, {}).items()
                           if isinstance(v[0], list) or v[0] in ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")]
                assert len(widgets) == len(n["widgets_values"]), (name, n["type"], widgets)
