"""Resolver: text encoders (CLIP-L/G, T5) in ComfyUI, HF, kohya and diffusers spellings.

Model keys: sd-mecha's SD1.5 / SDXL / Flux configs renamed to ComfyUI's
text-encoder containers (``clip_l.transformer.…``, ``clip_g.transformer.…``,
``t5xxl.transformer.…``).  LoRA names: hand-written the way kohya, OneTrainer,
diffusers and ComfyUI spell them.
"""
from __future__ import annotations

import pytest

from fixtures import model_keys as mk
from lora_core.resolve import detect_model_family, guess_lora_family, resolve_targets

CLIP_MODULES = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj",
                "mlp.fc1", "mlp.fc2")


@pytest.fixture(scope="session")
def sd1_clip():
    return mk.sd15_clip()


@pytest.fixture(scope="session")
def sdxl_clip():
    return mk.sdxl_clip()


@pytest.fixture(scope="session")
def flux_clip():
    return mk.flux_clip()


def _clip_patches(model, container, prefix, layers, style="flat", strip_text_model=False):
    patches, expected = [], {}
    for n in range(layers):
        for m in CLIP_MODULES:
            path = f"text_model.encoder.layers.{n}.{m}"
            key = f"{container}{path}.weight"
            file_path = path[len("text_model."):] if strip_text_model else path
            name = prefix + (file_path.replace(".", "_") if style == "flat" else file_path)
            patches.append(mk.lora_patch(name, model[key]))
            expected[name] = key
    return patches, expected


def _check(model, patches, expected):
    report = resolve_targets(mk.lora_file(patches), model)
    assert not report.unmatched, report.unmatched[:3]
    assert {r.patch.name: r.weight_key for r in report.matched} == expected
    return report


def test_families(sd1_clip, sdxl_clip, flux_clip):
    assert detect_model_family(sd1_clip) == "clip_l"
    assert detect_model_family(sdxl_clip) == "clip_l+clip_g"
    assert detect_model_family(flux_clip) == "clip_l+t5"


@pytest.mark.parametrize("prefix,style", [("lora_te_", "flat"), ("lora_te1_", "flat"),
                                          ("text_encoder.", "dotted"),
                                          ("text_encoders.clip_l.transformer.", "dotted")])
def test_sd15_clip_all_layers(sd1_clip, prefix, style):
    patches, expected = _clip_patches(sd1_clip, "clip_l.transformer.", prefix, 12, style)
    report = _check(sd1_clip, patches, expected)
    assert report.ok


def test_sd15_kohya_example(sd1_clip):
    shape = sd1_clip["clip_l.transformer.text_model.encoder.layers.0.mlp.fc1.weight"]
    report = resolve_targets(mk.lora_file([mk.lora_patch("lora_te_text_model_encoder_layers_0_mlp_fc1", shape)]),
                             sd1_clip)
    assert report.matched[0].weight_key == "clip_l.transformer.text_model.encoder.layers.0.mlp.fc1.weight"


def test_transformers5_names_without_text_model(sd1_clip):
    patches, expected = _clip_patches(sd1_clip, "clip_l.transformer.", "lora_te_", 12, strip_text_model=True)
    _check(sd1_clip, patches, expected)


def test_sdxl_both_encoders(sdxl_clip):
    p1, e1 = _clip_patches(sdxl_clip, "clip_l.transformer.", "lora_te1_", 12)
    p2, e2 = _clip_patches(sdxl_clip, "clip_g.transformer.", "lora_te2_", 32)
    report = _check(sdxl_clip, p1 + p2, {**e1, **e2})
    assert guess_lora_family(mk.lora_file(p1 + p2)) == "clip_l+clip_g"
    assert report.ok
    d1, e1 = _clip_patches(sdxl_clip, "clip_l.transformer.", "text_encoder.", 12, "dotted")
    d2, e2 = _clip_patches(sdxl_clip, "clip_g.transformer.", "text_encoder_2.", 32, "dotted")
    _check(sdxl_clip, d1 + d2, {**e1, **e2})


def test_sdxl_text_projection_and_comfy_native(sdxl_clip):
    key = "clip_g.transformer.text_projection.weight"
    for name in ("lora_te2_text_projection", "text_encoder_2.text_projection",
                 "text_encoders.clip_g.transformer.text_projection"):
        report = resolve_targets(mk.lora_file([mk.lora_patch(name, sdxl_clip[key])]), sdxl_clip)
        assert [r.weight_key for r in report.matched] == [key], name


def test_flux_clip_and_t5(flux_clip):
    p1, e1 = _clip_patches(flux_clip, "clip_l.transformer.", "lora_te1_", 12)
    patches, expected = list(p1), dict(e1)
    t5_modules = ("layer.0.SelfAttention.q", "layer.0.SelfAttention.k", "layer.0.SelfAttention.v",
                  "layer.0.SelfAttention.o", "layer.1.DenseReluDense.wi_0", "layer.1.DenseReluDense.wi_1",
                  "layer.1.DenseReluDense.wo")
    for n in range(24):
        for m in t5_modules:
            path = f"encoder.block.{n}.{m}"
            key = f"t5xxl.transformer.{path}.weight"
            for prefix in ("lora_te3_", "lora_te2_"):  # kohya, OneTrainer
                name = prefix + path.replace(".", "_")
                patches.append(mk.lora_patch(name, flux_clip[key]))
                expected[name] = key
    report = resolve_targets(mk.lora_file(patches), flux_clip)
    # te2 and te3 name the same weights here: the second spelling is a duplicate
    dup = [u for u in report.unmatched if u.detail.startswith("duplicate")]
    assert len(dup) == 24 * len(t5_modules) and len(report.unmatched) == len(dup)
    got = {r.patch.name: r.weight_key for r in report.matched}
    assert all(expected[n] == k for n, k in got.items())
    assert len(got) == 12 * 6 + 24 * len(t5_modules)


def test_text_encoder_keys_on_a_diffusion_model_go_elsewhere(sd1_clip):
    unet = mk.sd15_unet()
    te_patches, _ = _clip_patches(sd1_clip, "clip_l.transformer.", "lora_te_", 2)
    unet_key = "diffusion_model.input_blocks.1.1.proj_in.weight"
    unet_patch = mk.lora_patch("lora_unet_down_blocks_0_attentions_0_proj_in", unet[unet_key])
    lora = mk.lora_file(te_patches + [unet_patch])
    on_unet = resolve_targets(lora, unet)
    assert [r.weight_key for r in on_unet.matched] == [unet_key]
    assert not on_unet.unmatched and on_unet.ok
    assert len(on_unet.elsewhere) == len(te_patches)
    assert "no text encoder" in on_unet.elsewhere[0].detail
    on_clip = resolve_targets(lora, sd1_clip)
    assert len(on_clip.matched) == len(te_patches) and not on_clip.unmatched
    assert [u.name for u in on_clip.elsewhere] == [unet_patch.name]


def test_namespace_restricts_components(sdxl_clip):
    p1, _ = _clip_patches(sdxl_clip, "clip_l.transformer.", "lora_te1_", 1)
    p2, _ = _clip_patches(sdxl_clip, "clip_g.transformer.", "lora_te2_", 1)
    report = resolve_targets(mk.lora_file(p1 + p2), sdxl_clip, namespace="clip_g")
    assert {r.weight_key.split(".")[0] for r in report.matched} == {"clip_g"}
    assert len(report.matched) == len(p2)
    assert not report.unmatched
    assert [u.name for u in report.elsewhere] == [p.name for p in p1]
    assert "clip_l" in report.elsewhere[0].detail
    report = resolve_targets(mk.lora_file(p1 + p2), sdxl_clip, namespace="diffusion")
    assert not report.matched and len(report.elsewhere) == len(p1) + len(p2)


def test_bare_hf_clip_module():
    """A bare CLIPTextModel's named_parameters and the names PEFT/diffusers give it."""
    shapes = {k[len("clip_l.transformer."):]: v for k, v in mk.sd15_clip().items()}
    name = "text_encoder.text_model.encoder.layers.3.self_attn.v_proj"
    key = "text_model.encoder.layers.3.self_attn.v_proj.weight"
    report = resolve_targets(mk.lora_file([mk.lora_patch(name, shapes[key])]), shapes)
    assert [r.weight_key for r in report.matched] == [key]
    assert detect_model_family(shapes) == "clip_l"


def _full_checkpoint(identifier):
    out = {}
    for keys in mk.mecha_config(identifier).values():
        out.update(keys)
    return out


def test_sdxl_full_checkpoint_with_openclip_g():
    """An original SDXL checkpoint: UNet under model.diffusion_model., CLIP-L in HF
    names, CLIP-G in OpenCLIP names with fused in_proj q/k/v."""
    ckpt = _full_checkpoint("sdxl-sgm")
    assert detect_model_family(ckpt) == "sdxl"
    clip = mk.sdxl_clip()  # the same encoders in HF names, for the LoRA shapes
    p1, _ = _clip_patches(clip, "clip_l.transformer.", "lora_te1_", 12)
    p2, _ = _clip_patches(clip, "clip_g.transformer.", "lora_te2_", 32)
    unet = [mk.lora_patch("lora_unet_" + m.replace(".", "_"), s)
            for m, s in mk.module_shapes(mk.sdxl_unet(), "diffusion_model.").items()]
    report = resolve_targets(mk.lora_file(p1 + p2 + unet), ckpt)
    assert not report.unmatched and not report.elsewhere
    got = {r.patch.name: (r.weight_key, r.slice) for r in report.matched}
    g = "conditioner.embedders.1.model.transformer.resblocks.7."
    from lora_core.ir import Slice
    assert got["lora_te2_text_model_encoder_layers_7_self_attn_k_proj"] == (g + "attn.in_proj_weight",
                                                                            Slice(0, 1280, 1280))
    assert got["lora_te2_text_model_encoder_layers_7_mlp_fc1"] == (g + "mlp.c_fc.weight", None)
    assert got["lora_te1_text_model_encoder_layers_0_mlp_fc1"][0] == \
        "conditioner.embedders.0.transformer.text_model.encoder.layers.0.mlp.fc1.weight"
    assert got["lora_unet_input_blocks_4_1_proj_in"][0] == "model.diffusion_model.input_blocks.4.1.proj_in.weight"
    assert report.ok
    # the projection is stored transposed: reported, not applied
    proj = resolve_targets(mk.lora_file([mk.lora_patch("lora_te2_text_projection", (1280, 1280))]), ckpt)
    assert proj.unmatched[0].reason == "unsupported kind" and "transposed" in proj.unmatched[0].detail


def test_sd15_full_checkpoint():
    ckpt = _full_checkpoint("sd1-ldm")
    clip = mk.sd15_clip()
    patches, _ = _clip_patches(clip, "clip_l.transformer.", "lora_te_", 12)
    patches.append(mk.lora_patch("lora_unet_down_blocks_0_attentions_0_proj_in", (320, 320, 1, 1)))
    report = resolve_targets(mk.lora_file(patches), ckpt)
    assert report.ok and len(report.matched) == len(patches)
    assert report.matched[-1].weight_key == "model.diffusion_model.input_blocks.1.1.proj_in.weight"


def test_old_diffusers_processor_names(sd1_clip):
    key = "clip_l.transformer.text_model.encoder.layers.2.self_attn.out_proj.weight"
    for name in ("text_encoder.text_model.encoder.layers.2.self_attn.to_out",
                 "text_encoder.text_model.encoder.layers.2.self_attn.out_proj"):
        report = resolve_targets(mk.lora_file([mk.lora_patch(name, sd1_clip[key])]), sd1_clip)
        assert [r.weight_key for r in report.matched] == [key], name


def test_other_comfy_text_encoders_answer_to_text_encoders_prefix():
    """ComfyUI's generic text-encoder route (Gemma for LTX-2, UMT5 for Wan):
    ``text_encoders.<Comfy's internal name>``; diffusion keys go elsewhere."""
    te = {"gemma3_12b.transformer.model.layers.0.self_attn.q_proj.weight": (64, 32),
          "gemma3_12b.transformer.model.layers.0.mlp.down_proj.weight": (32, 128),
          "umt5xxl.transformer.encoder.block.0.layer.0.SelfAttention.q.weight": (32, 32)}
    patches = [mk.lora_patch("text_encoders.gemma3_12b.transformer.model.layers.0.self_attn.q_proj", (64, 32)),
               mk.lora_patch("text_encoders.umt5xxl.transformer.encoder.block.0.layer.0.SelfAttention.q", (32, 32)),
               mk.lora_patch("diffusion_model.transformer_blocks.0.attn1.to_q", (32, 32))]
    report = resolve_targets(mk.lora_file(patches), te)
    assert [r.weight_key for r in report.matched] == [
        "gemma3_12b.transformer.model.layers.0.self_attn.q_proj.weight",
        "umt5xxl.transformer.encoder.block.0.layer.0.SelfAttention.q.weight"]
    assert not report.unmatched
    assert [u.name for u in report.elsewhere] == ["diffusion_model.transformer_blocks.0.attn1.to_q"]
