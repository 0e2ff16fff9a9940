"""Resolver: Wan 2.x and LTX-2 (original / ComfyUI names ↔ diffusers names).

Model keys: diffusers' ``WanTransformer3DModel`` / ``LTX2VideoTransformer3DModel``
built on the meta device with tiny configs (diffusers names) and the original
checkpoint names: Wan hand-written after ComfyUI's ``comfy/ldm/wan/model.py``,
LTX-2 obtained from the diffusers names.  Both original lists are checked
against diffusers' own single-file converters, which are also the oracle for
which original weight each diffusers name means.
"""
from __future__ import annotations

import pytest
import torch

from fixtures import model_keys as mk
from lora_core.ir import FullWeights, ModulePatch
from lora_core.resolve import detect_model_family, guess_lora_family, resolve_targets
from lora_core.resolve import ltx as ltx_rules


def _oracle_cases(oracle, original):
    """(diffusers module, original module, ΔW shape) for every ≥2-D weight."""
    out = []
    for dkey, (okey, start, length, contiguous) in oracle.items():
        shape = original[okey]
        if dkey.endswith(".weight") and okey.endswith(".weight") and len(shape) >= 2:
            assert contiguous and start == 0 and length == shape[0]
            out.append((dkey[: -len(".weight")], okey[: -len(".weight")], tuple(shape)))
    return out


# ---------------------------------------------------------------- Wan

@pytest.fixture(scope="session", params=[False, True], ids=["t2v", "i2v"])
def wan(request):
    from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers
    i2v = request.param
    original = mk.wan_original(i2v=i2v)
    oracle = mk.diffusers_oracle(convert_wan_transformer_to_diffusers, original)
    return i2v, original, oracle


def test_wan_original_names_match_diffusers(wan):
    i2v, original, oracle = wan
    diffusers = mk.wan_diffusers(i2v)
    assert set(oracle) == set(diffusers)
    for dkey, (okey, _, length, _) in oracle.items():
        assert tuple(original[okey])[:1] == tuple(diffusers[dkey])[:1] or len(original[okey]) == 3


@pytest.mark.parametrize("spelling", ["diffusers", "musubi", "comfy", "bare"])
def test_wan_every_weight(wan, spelling):
    i2v, original, oracle = wan
    model = mk.prefixed(original, "diffusion_model.")
    assert detect_model_family(model) == "wan"
    patches, expected = [], {}
    for dmod, omod, shape in _oracle_cases(oracle, original):
        name = {"diffusers": f"transformer.{dmod}", "musubi": "lora_unet_" + omod.replace(".", "_"),
                "comfy": f"diffusion_model.{omod}", "bare": omod}[spelling]
        patches.append(mk.lora_patch(name, shape))
        expected[name] = f"diffusion_model.{omod}.weight"
    report = resolve_targets(mk.lora_file(patches), model)
    assert not report.unmatched
    assert {r.patch.name: r.weight_key for r in report.matched} == expected
    assert guess_lora_family(mk.lora_file(patches)) == "wan"


def test_wan_diffusers_model_takes_original_names():
    model = mk.wan_diffusers(False)
    assert detect_model_family(model) == "wan"
    cases = {"lora_unet_blocks_1_self_attn_q": "blocks.1.attn1.to_q.weight",
             "diffusion_model.blocks.0.cross_attn.o": "blocks.0.attn2.to_out.0.weight",
             "diffusion_model.blocks.0.ffn.0": "blocks.0.ffn.net.0.proj.weight",
             "diffusion_model.head.head": "proj_out.weight",
             "diffusion_model.time_projection.1": "condition_embedder.time_proj.weight"}
    for name, key in cases.items():
        report = resolve_targets(mk.lora_file([mk.lora_patch(name, model[key])]), model)
        assert [r.weight_key for r in report.matched] == [key], name


def test_wan_i2v_lora_on_t2v_model():
    t2v = mk.prefixed(mk.wan_original(i2v=False), "diffusion_model.")
    i2v = mk.wan_original(i2v=True)
    patches = [mk.lora_patch(f"diffusion_model.{m}", s) for m, s in mk.module_shapes(i2v).items()]
    patches += [mk.lora_patch("lora_unet_blocks_0_cross_attn_k_img", i2v["blocks.0.cross_attn.k_img.weight"]),
                mk.lora_patch("transformer.blocks.1.attn2.add_v_proj", i2v["blocks.1.cross_attn.v_img.weight"])]
    report = resolve_targets(mk.lora_file(patches), t2v)
    img_keys = {u.name for u in report.unmatched}
    assert img_keys == {p.name for p in patches if "_img" in p.name or "img_emb" in p.name or "add_v_proj" in p.name}
    assert {u.reason for u in report.unmatched} == {"I2V-only key; the model is T2V"}
    assert report.matched and report.family_warning is None
    # and the same file on the I2V model is clean
    assert resolve_targets(mk.lora_file(patches[:-2]), mk.prefixed(i2v, "diffusion_model.")).ok


def test_wan_diffs_on_parameters_and_biases():
    model = mk.prefixed(mk.wan_original(), "diffusion_model.")
    patches = [ModulePatch(name="diffusion_model.blocks.0.modulation",
                           weight=FullWeights(torch.empty(1, 6, 16, device="meta"))),
               ModulePatch(name="diffusion_model.blocks.1.norm3", weight=FullWeights(torch.empty(16, device="meta")),
                           bias=torch.empty(16, device="meta")),
               ModulePatch(name="diffusion_model.blocks.1.self_attn.q", bias=torch.empty(16, device="meta"),
                           keys=("diffusion_model.blocks.1.self_attn.q.diff_b",)),
               ModulePatch(name="diffusion_model.head.modulation", weight=FullWeights(torch.empty(1, 3, 16, device="meta")))]
    report = resolve_targets(mk.lora_file(patches), model)
    got = {r.patch.name: (r.weight_key, r.bias_key) for r in report.matched}
    assert got == {"diffusion_model.blocks.0.modulation": ("diffusion_model.blocks.0.modulation", None),
                   "diffusion_model.blocks.1.norm3": ("diffusion_model.blocks.1.norm3.weight",
                                                      "diffusion_model.blocks.1.norm3.bias"),
                   "diffusion_model.blocks.1.self_attn.q": (None, "diffusion_model.blocks.1.self_attn.q.bias")}
    u, = report.unmatched
    assert u.name == "diffusion_model.head.modulation" and u.reason == "shape mismatch"


# ---------------------------------------------------------------- LTX-2

@pytest.fixture(scope="session")
def ltx2():
    from diffusers.loaders.single_file_utils import convert_ltx2_transformer_to_diffusers
    diffusers = mk.ltx2_diffusers()
    original = {}
    for k, v in diffusers.items():
        module, _, leaf = k.rpartition(".")
        if leaf in ("weight", "bias"):
            original[ltx_rules.to_original(module) + "." + leaf] = v
        else:
            original[ltx_rules.to_original(k)] = v
    oracle = mk.diffusers_oracle(convert_ltx2_transformer_to_diffusers, original)
    # diffusers' own converter takes our original names back to exactly its model's names
    assert set(oracle) == set(diffusers)
    assert all(oracle[k][0] != k for k in ("proj_in.weight", "time_embed.linear.weight",
                                           "transformer_blocks.0.attn1.norm_q.weight"))
    return original, oracle


def test_ltx2_original_names_look_like_ltx_core(ltx2):
    original, _ = ltx2
    for key in ("patchify_proj.weight", "audio_patchify_proj.weight", "adaln_single.linear.weight",
                "audio_adaln_single.emb.timestep_embedder.linear_1.weight",
                "transformer_blocks.0.attn1.q_norm.weight", "transformer_blocks.0.audio_to_video_attn.k_norm.weight",
                "av_ca_video_scale_shift_adaln_single.linear.weight"):
        assert key in original, key


@pytest.mark.parametrize("spelling", ["diffusers", "official", "kohya"])
def test_ltx2_every_weight(ltx2, spelling):
    original, oracle = ltx2
    model = mk.prefixed(original, "diffusion_model.")
    assert detect_model_family(model) == "ltx2"
    patches, expected = [], {}
    for dmod, omod, shape in _oracle_cases(oracle, original):
        name = {"diffusers": f"transformer.{dmod}", "official": f"diffusion_model.{omod}",
                "kohya": "lora_unet_" + omod.replace(".", "_")}[spelling]
        patches.append(mk.lora_patch(name, shape))
        expected[name] = f"diffusion_model.{omod}.weight"
    report = resolve_targets(mk.lora_file(patches), model)
    assert not report.unmatched
    assert {r.patch.name: r.weight_key for r in report.matched} == expected
    assert guess_lora_family(mk.lora_file(patches)) == "ltx2"


def test_ltx2_diffusers_model_takes_official_names(ltx2):
    original, oracle = ltx2
    model = mk.ltx2_diffusers()
    assert detect_model_family(model) == "ltx2"
    patches = [mk.lora_patch(f"diffusion_model.{omod}", shape) for _, omod, shape in _oracle_cases(oracle, original)]
    expected = {f"diffusion_model.{omod}": f"{dmod}.weight" for dmod, omod, _ in _oracle_cases(oracle, original)}
    report = resolve_targets(mk.lora_file(patches), model)
    assert not report.unmatched
    assert {r.patch.name: r.weight_key for r in report.matched} == expected


def test_wan_lora_on_ltx2_warns(ltx2):
    original, _ = ltx2
    wan = mk.wan_original()
    patches = [mk.lora_patch(f"diffusion_model.{m}", s) for m, s in mk.module_shapes(wan).items()]
    report = resolve_targets(mk.lora_file(patches), mk.prefixed(original, "diffusion_model."))
    assert report.family_warning == "this LoRA targets Wan; the model is LTX-2"


# ---------------------------------------------------------------- LTX-Video 0.9

def test_ltxv_diffusers_names_on_original_model():
    from diffusers import LTXVideoTransformer3DModel
    from diffusers.loaders.single_file_utils import convert_ltx_transformer_checkpoint_to_diffusers
    diffusers = mk.meta_named_parameters(LTXVideoTransformer3DModel, in_channels=4, out_channels=4, patch_size=1,
                                         patch_size_t=1, num_attention_heads=2, attention_head_dim=8,
                                         cross_attention_dim=16, num_layers=2, caption_channels=16)
    original = {}
    for k, v in diffusers.items():
        module, _, leaf = k.rpartition(".")
        original[(ltx_rules.to_original(module) + "." + leaf) if leaf in ("weight", "bias")
                 else ltx_rules.to_original(k)] = v
    oracle = mk.diffusers_oracle(convert_ltx_transformer_checkpoint_to_diffusers, original)
    assert set(oracle) == set(diffusers)
    model = mk.prefixed(original, "diffusion_model.")
    assert detect_model_family(model) == "ltxv"
    cases = _oracle_cases(oracle, original)
    patches = [mk.lora_patch(f"transformer.{d}", s) for d, _, s in cases]
    report = resolve_targets(mk.lora_file(patches), model)
    assert not report.unmatched
    assert {r.patch.name: r.weight_key for r in report.matched} == {
        f"transformer.{d}": f"diffusion_model.{o}.weight" for d, o, _ in cases}
    assert "diffusion_model.patchify_proj.weight" in {r.weight_key for r in report.matched}
    assert guess_lora_family(mk.lora_file(patches)) == "ltxv"
