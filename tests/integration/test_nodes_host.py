"""LoRA Loader / LoRA Stack / Apply LoRA Stack inside a real ComfyUI (every installed version).

Oracles: core's own LoraLoader on the same file (weights through the
harness's PatchbayTestModelProbe, text-encoder effect through sampling), the
unpatched base model (bit-identical sha256 before/after), and the server's
validation / execution error payloads.
"""
from __future__ import annotations

import shutil

import pytest

from tiny_models import kohya_lora
import torch
from safetensors.torch import save_file

from comfy_harness import Graph, PromptRejected, latent_stats

OUR_NODES = {"PatchbayLoraLoader": "LoRA Loader", "PatchbayLoraStack": "LoRA Stack",
             "PatchbayApplyLoraStack": "Apply LoRA Stack"}
CATEGORY = "loaders/LoRA Patchbay"
Q_KEY = "diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight"
K2_KEY = "diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"
FILTER = "transformer_blocks.0.attn1.to_q.weight,transformer_blocks.0.attn2.to_k.weight"


def _kohya(seed: int, rank: int, alpha: float, clip: bool = True, scale: float = 0.05) -> dict:
    mods = {"lora_unet_input_blocks_1_1_transformer_blocks_0_attn1_to_q": (320, 320),
            "lora_unet_input_blocks_1_1_transformer_blocks_0_attn2_to_k": (320, 768)}
    if clip:
        mods.update({"lora_te_text_model_encoder_layers_0_self_attn_q_proj": (768, 768),
                     "lora_te_text_model_encoder_layers_0_mlp_fc1": (3072, 768)})
    return kohya_lora(mods, seed, rank, alpha, scale)


@pytest.fixture(scope="session")
def lora_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("patchbay-host-loras")
    save_file(_kohya(1, 4, 2.0), str(d / "a.safetensors"),
              metadata={"ss_tag_frequency": '{"10_tok": {"sks person": 5, "red hat": 2}}'})
    save_file(_kohya(2, 8, 8.0), str(d / "b.safetensors"))
    g = torch.Generator().manual_seed(3)
    flux = {}
    for i in range(2):
        for mod, (o, n) in {"img_attn_qkv": (9216, 3072), "img_mlp_0": (12288, 3072)}.items():
            k = f"lora_unet_double_blocks_{i}_{mod}"
            flux[f"{k}.lora_up.weight"] = torch.randn(o, 4, generator=g) * 0.01
            flux[f"{k}.lora_down.weight"] = torch.randn(4, n, generator=g) * 0.01
    save_file(flux, str(d / "flux_only.safetensors"))
    partial = _kohya(4, 4, 4.0, clip=False)
    partial["lora_unet_no_such_block_attn.lora_up.weight"] = torch.zeros(320, 4)
    partial["lora_unet_no_such_block_attn.lora_down.weight"] = torch.zeros(4, 320)
    save_file(partial, str(d / "partial.safetensors"))
    (d / "corrupt.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    return d


@pytest.fixture(scope="session")
def loras(comfy, lora_dir):
    names = {}
    for f in ("a", "b", "flux_only", "corrupt", "partial"):
        names[f] = comfy.add_model("loras", lora_dir / f"{f}.safetensors", f"pb/{f}.safetensors")
    return names


def _probe(g, model, filt=FILTER):
    return g.node("PatchbayTestModelProbe", model=model, key_filter=filt, max_keys=16)


def _weights(res, node):
    return res.ui(node.id)["weights"][0]


# ---------------------------------------------------------------- schema

def test_object_info_schema(comfy, comfy_client):
    info = comfy_client.object_info()
    assert comfy.pack_import_errors() == []
    for node_id, display in OUR_NODES.items():
        assert node_id in info, f"{node_id} not registered"
        n = info[node_id]
        assert n["display_name"] == display
        assert n["category"] == CATEGORY
        assert n["description"] and len(n["description"]) > 40
        for section in ("required", "optional"):
            for name, spec in n["input"].get(section, {}).items():
                assert len(spec) > 1 and spec[1].get("tooltip"), f"{node_id}.{name} has no tooltip"
    loader = info["PatchbayLoraLoader"]
    req = loader["input"]["required"]
    for s in ("strength_model", "strength_clip"):
        assert req[s][1]["display"] == "slider"
        assert req[s][1]["min"] == -4.0 and req[s][1]["max"] == 4.0 and req[s][1]["step"] == 0.01
    assert req["mode"][0] == ["merge", "bypass", "auto"]
    assert "clip" in loader["input"]["optional"]
    assert loader["output"] == ["MODEL", "CLIP"]
    assert info["PatchbayLoraStack"]["input"]["required"]["rows"][1]["multiline"] is True
    assert info["PatchbayApplyLoraStack"]["output"] == ["MODEL", "CLIP", "STRING", "STRING", "IC_LORA"]


# ---------------------------------------------------------------- weights vs core

def test_loader_weights_match_core_and_base_is_restored(comfy, tiny_sd15_checkpoint, loras):
    g = Graph()
    model, clip = tiny_sd15_checkpoint.load_checkpoint(g)
    base0 = _probe(g, model)
    ours = g.node("PatchbayLoraLoader", model=model, clip=clip, lora_name=loras["a"], strength_model=0.8,
                  strength_clip=1.0, enabled=True, mode="merge")
    core = g.node("LoraLoader", model=model, clip=clip, lora_name=loras["a"], strength_model=0.8,
                  strength_clip=1.0)
    p_ours = _probe(g, ours[0])
    p_core = _probe(g, core[0])
    res = comfy.client.queue(g, timeout=240)
    base, wo, wc = _weights(res, base0), _weights(res, p_ours), _weights(res, p_core)
    assert sorted(res.ui(p_ours.id)["patch_keys"][0]) == sorted([Q_KEY, K2_KEY])
    for k in (Q_KEY, K2_KEY):
        d_ours = wo[k]["sum"] - base[k]["sum"]
        d_core = wc[k]["sum"] - base[k]["sum"]
        assert abs(d_core) > 1e-3
        assert d_ours == pytest.approx(d_core, rel=1e-4, abs=1e-4)
        assert wo[k]["abs_sum"] == pytest.approx(wc[k]["abs_sum"], rel=1e-6)
    # the shared base module is untouched once a later prompt loads the plain model
    g2 = Graph()
    model2, _ = tiny_sd15_checkpoint.load_checkpoint(g2)
    p_after = _probe(g2, model2)
    res2 = comfy.client.queue(g2, timeout=240)
    after = _weights(res2, p_after)
    for k in (Q_KEY, K2_KEY):
        assert after[k]["sha256"] == base[k]["sha256"]


def test_clip_strength_matches_core_through_sampling(comfy, tiny_sd15_checkpoint, loras):
    g = Graph()
    model, clip = tiny_sd15_checkpoint.load_checkpoint(g)
    ours = g.node("PatchbayLoraLoader", model=model, clip=clip, lora_name=loras["a"], strength_model=0.0,
                  strength_clip=1.5, enabled=True, mode="merge")[1]
    core = g.node("LoraLoader", model=model, clip=clip, lora_name=loras["a"], strength_model=0.0,
                  strength_clip=1.5)[1]
    stats = {}
    for kind, c in (("base", clip), ("ours", ours), ("core", core)):
        pos = g.node("CLIPTextEncode", clip=c, text="a tiny test")[0]
        lat = tiny_sd15_checkpoint.sample(g, model, positive=pos, steps=1)
        stats[kind] = g.node("PatchbayTestLatentStats", samples=lat)
    res = comfy.client.queue(g, timeout=240)
    base, ours_v, core_v = (torch.tensor(latent_stats(res, stats[k].id)["values"]) for k in ("base", "ours", "core"))
    moved = (core_v - base).abs().max().item()
    assert moved > 1e-4
    assert (ours_v - core_v).abs().max().item() < 0.02 * moved


# ---------------------------------------------------------------- pass-through, stacks, branches

def test_strength_zero_and_disabled_return_inputs(comfy, tiny_sd15_checkpoint, loras):
    g = Graph()
    model, clip = tiny_sd15_checkpoint.load_checkpoint(g)
    zero = g.node("PatchbayLoraLoader", model=model, clip=clip, lora_name=loras["corrupt"], strength_model=0.0,
                  strength_clip=0.0, enabled=True, mode="merge")
    off = g.node("PatchbayLoraLoader", model=model, clip=clip, lora_name=loras["corrupt"], strength_model=1.0,
                 strength_clip=1.0, enabled=False, mode="merge")
    pz, po, pb = _probe(g, zero[0]), _probe(g, off[0]), _probe(g, model)
    res = comfy.client.queue(g, timeout=240)  # a corrupt file is never read when unused
    uuid_base = res.ui(pb.id)["patches_uuid"][0]
    for p in (pz, po):
        assert res.ui(p.id)["patch_keys"][0] == []
        assert res.ui(p.id)["patches_uuid"][0] == uuid_base


def test_stack_equals_chained_loaders_and_branches_stay_separate(comfy, tiny_sd15_checkpoint, loras):
    rows_ab = ('[{"on": true, "lora": "%s", "strength": 0.5, "strength_clip": 0.5},'
               ' {"on": true, "lora": "%s", "strength": -0.7}]' % (loras["a"], loras["b"]))
    g = Graph()
    model, clip = tiny_sd15_checkpoint.load_checkpoint(g)
    stack = g.node("PatchbayLoraStack", rows=rows_ab)
    applied = g.node("PatchbayApplyLoraStack", model=model, clip=clip, stack=stack[0], mode="merge")
    l1 = g.node("LoraLoader", model=model, clip=clip, lora_name=loras["a"], strength_model=0.5, strength_clip=0.5)
    l2 = g.node("LoraLoader", model=l1[0], clip=l1[1], lora_name=loras["b"], strength_model=-0.7,
                strength_clip=-0.7)
    # a second branch on the same base with only LoRA b (A1111 tag syntax)
    stack_b = g.node("PatchbayLoraStack", rows="<lora:b:0.3>")
    branch_b = g.node("PatchbayApplyLoraStack", model=model, stack=stack_b[0], mode="merge")
    core_b = g.node("LoraLoader", model=model, clip=clip, lora_name=loras["b"], strength_model=0.3,
                    strength_clip=0.0)
    p_stack, p_core = _probe(g, applied[0]), _probe(g, l2[0])
    p_b, p_core_b, p_base = _probe(g, branch_b[0]), _probe(g, core_b[0]), _probe(g, model)
    text = g.node("PreviewAny", source=applied[2])
    words = g.node("PreviewAny", source=applied[3])
    res = comfy.client.queue(g, timeout=240)
    base = _weights(res, p_base)
    for ours, core in ((p_stack, p_core), (p_b, p_core_b)):
        wo, wc = _weights(res, ours), _weights(res, core)
        for k in (Q_KEY, K2_KEY):
            assert wo[k]["sum"] - base[k]["sum"] == pytest.approx(wc[k]["sum"] - base[k]["sum"], rel=1e-4, abs=1e-4)
    assert _weights(res, p_stack)[Q_KEY]["sha256"] != _weights(res, p_b)[Q_KEY]["sha256"]
    assert res.ui(text.id)["text"][0] == "<lora:a:0.5> <lora:b:-0.7>"
    assert "sks person" in res.ui(words.id)["text"][0]


def test_bypass_mode_matches_merge(comfy, tiny_sd15_checkpoint, loras):
    g = Graph()
    model, clip = tiny_sd15_checkpoint.load_checkpoint(g)
    stats = {}
    for mode, strength in (("merge", 0.9), ("bypass", 0.9), ("base", 0.0)):
        m = g.node("PatchbayLoraLoader", model=model, clip=clip, lora_name=loras["b"], strength_model=strength,
                   strength_clip=0.0, enabled=True, mode="merge" if mode == "base" else mode)[0]
        m = g.node("PatchbayLoraLoader", model=m, lora_name=loras["a"], strength_model=strength,
                   strength_clip=0.0, enabled=True, mode="merge" if mode == "base" else mode)[0]
        lat = tiny_sd15_checkpoint.sample(g, m, steps=1)
        stats[mode] = g.node("PatchbayTestLatentStats", samples=lat)
    res = comfy.client.queue(g, timeout=240)
    merged, bypass, base = (torch.tensor(latent_stats(res, stats[k].id)["values"])
                            for k in ("merge", "bypass", "base"))
    moved = (merged - base).abs().max().item()
    assert moved > 1e-4
    assert (bypass - merged).abs().max().item() < 1e-3 * max(1.0, merged.abs().max().item())
    # bypass ejected: the plain model samples exactly as before
    g = Graph()
    model, _ = tiny_sd15_checkpoint.load_checkpoint(g)
    g.node("PatchbayTestLatentStats", samples=tiny_sd15_checkpoint.sample(g, model, steps=1))
    again = torch.tensor(latent_stats(comfy.client.queue(g, timeout=240))["values"])
    assert torch.equal(again, base)


# ---------------------------------------------------------------- bad input

def test_validation_rejects_unknown_and_traversal(comfy, tiny_sd15_checkpoint, loras):
    for name, expect in (("nope/missing.safetensors", "not in the loras folder"),
                         ("../../etc/passwd", "traversal"), ("/etc/passwd", "absolute")):
        g = Graph()
        model, clip = tiny_sd15_checkpoint.load_checkpoint(g)
        m = g.node("PatchbayLoraLoader", model=model, clip=clip, lora_name=name, strength_model=1.0,
                   strength_clip=1.0, enabled=True, mode="merge")
        _probe(g, m[0])
        with pytest.raises(PromptRejected, match=expect):
            comfy.client.queue(g)
    # our VALIDATE_INPUTS must not switch off core's range/combo checks of the other inputs
    g = Graph()
    model, clip = tiny_sd15_checkpoint.load_checkpoint(g)
    m = g.node("PatchbayLoraLoader", model=model, clip=clip, lora_name=loras["a"], strength_model=50.0,
               strength_clip=1.0, enabled=True, mode="nonsense")
    _probe(g, m[0])
    with pytest.raises(PromptRejected) as ei:
        comfy.client.queue(g)
    assert "strength_model" in str(ei.value) and "mode" in str(ei.value)
    g = Graph()
    model, clip = tiny_sd15_checkpoint.load_checkpoint(g)
    st = g.node("PatchbayLoraStack", rows='[{"lora": "%s"}, {"lora": "../x.safetensors"}]' % loras["a"])
    m = g.node("PatchbayApplyLoraStack", model=model, stack=st[0], mode="merge")
    _probe(g, m[0])
    with pytest.raises(PromptRejected, match="row 2"):
        comfy.client.queue(g)


def test_wrong_architecture_and_corrupt_file_fail_cleanly(comfy, tiny_sd15_checkpoint, loras):
    for lora, expect in ((loras["flux_only"], "matches nothing"), (loras["corrupt"], "corrupt.safetensors")):
        g = Graph()
        model, clip = tiny_sd15_checkpoint.load_checkpoint(g)
        m = g.node("PatchbayLoraLoader", model=model, clip=clip, lora_name=lora, strength_model=1.0,
                   strength_clip=1.0, enabled=True, mode="merge")
        _probe(g, m[0])
        res = comfy.client.queue(g, check=False)
        assert not res.ok and res.error["node_type"] == "PatchbayLoraLoader"
        assert expect in res.error["exception_message"], res.error["exception_message"]
    # server alive, base untouched
    g = Graph()
    model, _ = tiny_sd15_checkpoint.load_checkpoint(g)
    p = _probe(g, model)
    res = comfy.client.queue(g, timeout=240)
    assert res.ui(p.id)["patch_keys"][0] == []


def test_wrong_architecture_names_family(comfy, tiny_sd15_checkpoint, loras):
    g = Graph()
    model, _ = tiny_sd15_checkpoint.load_checkpoint(g)
    m = g.node("PatchbayLoraLoader", model=model, lora_name=loras["flux_only"], strength_model=1.0,
               strength_clip=1.0, enabled=True, mode="merge")
    _probe(g, m[0])
    res = comfy.client.queue(g, check=False)
    assert "flux" in res.error["exception_message"].lower(), res.error["exception_message"]


def test_renamed_file_resolves_by_hash(comfy, tiny_sd15_checkpoint, loras, lora_dir, tmp_path):
    import hashlib
    sha = hashlib.sha256((lora_dir / "b.safetensors").read_bytes()).hexdigest()
    moved = tmp_path / "renamed_b.safetensors"
    shutil.copy2(lora_dir / "b.safetensors", moved)
    comfy.add_model("loras", moved, "elsewhere/renamed_b.safetensors", copy=True)
    rows = '[{"on": true, "lora": "gone/old_name.safetensors", "strength": 0.4, "hash": "%s"}]' % sha
    g = Graph()
    model, _ = tiny_sd15_checkpoint.load_checkpoint(g)
    st = g.node("PatchbayLoraStack", rows=rows)
    m = g.node("PatchbayApplyLoraStack", model=model, stack=st[0], mode="merge")
    core = g.node("LoraLoader", model=model, clip=tiny_sd15_checkpoint.load_checkpoint(g)[1],
                  lora_name=loras["b"], strength_model=0.4, strength_clip=0.0)
    po, pc, pb = _probe(g, m[0]), _probe(g, core[0]), _probe(g, model)
    res = comfy.client.queue(g, timeout=240)
    base = _weights(res, pb)
    assert (_weights(res, po)[Q_KEY]["sum"] - base[Q_KEY]["sum"]) == pytest.approx(
        _weights(res, pc)[Q_KEY]["sum"] - base[Q_KEY]["sum"], rel=1e-4)


def test_auto_mode_uses_bypass_on_fp8_weights(comfy, tiny_sd15_unet, loras):
    g = Graph()
    model = tiny_sd15_unet.load(g, weight_dtype="fp8_e4m3fn")
    stats = {}
    for mode in ("auto", "bypass", "merge"):
        m = g.node("PatchbayLoraLoader", model=model, lora_name=loras["a"], strength_model=1.5,
                   strength_clip=0.0, enabled=True, mode=mode)[0]
        stats[mode] = g.node("PatchbayTestLatentStats", samples=tiny_sd15_unet.sample(g, m, steps=1))
    stats["base"] = g.node("PatchbayTestLatentStats", samples=tiny_sd15_unet.sample(g, model, steps=1))
    res = comfy.client.queue(g, timeout=240)
    v = {k: torch.tensor(latent_stats(res, n.id)["values"]) for k, n in stats.items()}
    assert (v["bypass"] - v["base"]).abs().max().item() > 1e-4
    assert torch.equal(v["auto"], v["bypass"])
    # merging into fp8 rounds the LoRA away or stochastically; the side path keeps it exact
    assert not torch.equal(v["merge"], v["bypass"])


def test_partial_coverage_logs_one_summary_line(comfy, tiny_sd15_checkpoint, loras):
    mark = comfy.log_mark()
    for strength in (0.5, 0.6):  # a slider change does not repeat the line
        g = Graph()
        model, _ = tiny_sd15_checkpoint.load_checkpoint(g)
        m = g.node("PatchbayLoraLoader", model=model, lora_name=loras["partial"], strength_model=strength,
                   strength_clip=0.0, enabled=True, mode="merge")
        p = _probe(g, m[0])
        res = comfy.client.queue(g, timeout=240)
        assert sorted(res.ui(p.id)["patch_keys"][0]) == sorted([Q_KEY, K2_KEY])
    lines = [l for l in comfy.read_log(mark).splitlines() if "partial.safetensors" in l]
    assert len(lines) == 1, lines
    assert "2 modules applied" in lines[0] and "1 not applied" in lines[0] and "no_such_block" in lines[0]
