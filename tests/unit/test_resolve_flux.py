"""Resolver: Flux.1 (ComfyUI / BFL names) against every trainer's spelling.

Model keys: sd-mecha's ``flux-flux`` config under ``diffusion_model.``.
Oracle: diffusers' own ``convert_flux_transformer_checkpoint_to_diffusers``,
run on row-tagged stand-in tensors, says for each diffusers weight which BFL
weight and which rows it comes from (q/k/v/proj_mlp are row slices of the
fused ``qkv``/``linear1``; ``norm_out.linear`` has its halves swapped).
"""
from __future__ import annotations

import pytest
import torch

from fixtures import model_keys as mk
from lora_core.ir import FullWeights, LokrWeights, LoraWeights, ModulePatch, Slice
from lora_core.resolve import detect_model_family, guess_lora_family, resolve_targets

H = 3072


@pytest.fixture(scope="session")
def flux():
    return mk.flux_diffusion()


@pytest.fixture(scope="session")
def oracle(flux):
    from diffusers.loaders.single_file_utils import convert_flux_transformer_checkpoint_to_diffusers
    original = {k[len("diffusion_model."):]: v for k, v in flux.items()}
    return mk.diffusers_oracle(convert_flux_transformer_checkpoint_to_diffusers, original)


def _diffusers_cases(flux, oracle):
    """(diffusers module, expected model key, slice or None, ΔW shape, swapped)."""
    out = []
    for dkey, (okey, start, length, contiguous) in oracle.items():
        shape = flux["diffusion_model." + okey]
        if not dkey.endswith(".weight") or len(shape) < 2:
            continue
        full = start == 0 and length == shape[0] and contiguous
        sl = None if full else Slice(0, start, length)
        out.append((dkey[: -len(".weight")], "diffusion_model." + okey, sl,
                    (length,) + tuple(shape[1:]), not contiguous))
    return out


@pytest.mark.parametrize("spelling", ["ai-toolkit", "onetrainer", "lycoris", "bare"])
def test_diffusers_names_land_on_oracle_keys_and_slices(flux, oracle, spelling):
    cases = _diffusers_cases(flux, oracle)
    assert sum(1 for c in cases if c[2] is not None and not c[4]) == 19 * 6 + 38 * 4  # q/k/v ×2 per double, q/k/v/mlp per single
    patches, expected, swapped = [], {}, set()
    for dmod, key, sl, shape, swap in cases:
        name = {"ai-toolkit": f"transformer.{dmod}", "onetrainer": "lora_transformer_" + dmod.replace(".", "_"),
                "lycoris": "lycoris_" + dmod.replace(".", "_"), "bare": dmod}[spelling]
        patches.append(mk.lora_patch(name, shape))
        if swap:
            swapped.add(name)
        else:
            expected[name] = (key, sl)
    report = resolve_targets(mk.lora_file(patches), flux)
    assert {r.patch.name: (r.weight_key, r.slice) for r in report.matched} == expected
    assert {u.name for u in report.unmatched} == swapped == {next(n for n in swapped)}
    assert all(u.reason == "unsupported kind" and "swapped" in u.detail for u in report.unmatched)
    assert report.model_family == "flux" and report.lora_family == "flux" and report.family_warning is None


def test_known_slices(flux):
    qkv = "diffusion_model.double_blocks.0.img_attn.qkv.weight"
    cases = [
        ("transformer.transformer_blocks.0.attn.to_k", qkv, Slice(0, H, H)),
        ("transformer.transformer_blocks.0.attn.to_q", qkv, Slice(0, 0, H)),
        ("transformer.transformer_blocks.0.attn.add_v_proj", "diffusion_model.double_blocks.0.txt_attn.qkv.weight",
         Slice(0, 2 * H, H)),
        ("transformer.single_transformer_blocks.5.proj_mlp", "diffusion_model.single_blocks.5.linear1.weight",
         Slice(0, 3 * H, 4 * H)),
        ("lora_unet_single_blocks_5_linear1_qkv", "diffusion_model.single_blocks.5.linear1.weight", Slice(0, 0, 3 * H)),
    ]
    for name, key, sl in cases:
        shape = (sl.length, H)
        report = resolve_targets(mk.lora_file([mk.lora_patch(name, shape)]), flux)
        assert [(r.weight_key, r.slice) for r in report.matched] == [(key, sl)], (name, report.unmatched)


@pytest.mark.parametrize("spelling", ["kohya", "comfy", "base_model"])
def test_original_names(flux, spelling):
    patches, expected = [], {}
    for m, shape in mk.module_shapes(flux, "diffusion_model.").items():
        name = {"kohya": "lora_unet_" + m.replace(".", "_"), "comfy": f"diffusion_model.{m}",
                "base_model": f"base_model.model.{m}"}[spelling]
        patches.append(mk.lora_patch(name, shape))
        expected[name] = f"diffusion_model.{m}.weight"
    report = resolve_targets(mk.lora_file(patches), flux)
    assert not report.unmatched
    assert {r.patch.name: r.weight_key for r in report.matched} == expected
    assert all(r.slice is None for r in report.matched)


def test_norm_scales_and_bias_diffs(flux):
    key = "diffusion_model.double_blocks.3.img_attn.norm.query_norm.scale"
    for name in ("diffusion_model.double_blocks.3.img_attn.norm.query_norm", "transformer.transformer_blocks.3.attn.norm_q"):
        patch = ModulePatch(name=name, weight=FullWeights(torch.empty(flux[key], device="meta")))
        report = resolve_targets(mk.lora_file([patch]), flux)
        assert [r.weight_key for r in report.matched] == [key]
    # diff_b on a sliced q: the bias rows of the same slice
    name = "transformer.transformer_blocks.2.attn.to_v"
    patch = ModulePatch(name=name, weight=LoraWeights(torch.empty(H, 4, device="meta"), torch.empty(4, H, device="meta")),
                        bias=torch.empty(H, device="meta"))
    r, = resolve_targets(mk.lora_file([patch]), flux).matched
    assert r.bias_key == "diffusion_model.double_blocks.2.img_attn.qkv.bias" and r.slice == Slice(0, 2 * H, H)


def test_lokr_and_full_on_a_slice(flux):
    lokr = ModulePatch(name="transformer.transformer_blocks.1.attn.to_q",
                       weight=LokrWeights(w1=torch.empty(8, 8, device="meta"),
                                          w2=torch.empty(H // 8, H // 8, device="meta")))
    full = ModulePatch(name="transformer.transformer_blocks.1.attn.to_k",
                       weight=FullWeights(torch.empty(H, H, device="meta")))
    report = resolve_targets(mk.lora_file([lokr, full]), flux)
    assert [r.slice for r in report.matched] == [Slice(0, 0, H), Slice(0, H, H)]
    wrong = ModulePatch(name="transformer.transformer_blocks.1.attn.to_v",
                        weight=LokrWeights(w1=torch.empty(4, 8, device="meta"),
                                           w2=torch.empty(H // 8, H // 8, device="meta")))
    u, = resolve_targets(mk.lora_file([wrong]), flux).unmatched
    assert u.reason == "shape mismatch" and "(1536, 3072)" in u.detail and "(3072, 3072)" in u.detail


def test_shape_mismatch_and_unknown_names(flux):
    patches = [mk.lora_patch("transformer.transformer_blocks.0.attn.to_q", (H, 64)),
               mk.lora_patch("lora_unet_double_blocks_0_img_attn_qkvx", (3 * H, H)),
               mk.lora_patch("transformer.transformer_blocks.99.attn.to_q", (H, H))]
    report = resolve_targets(mk.lora_file(patches), flux)
    assert not report.matched
    reasons = {u.name: u.reason for u in report.unmatched}
    assert reasons == {"transformer.transformer_blocks.0.attn.to_q": "shape mismatch",
                       "lora_unet_double_blocks_0_img_attn_qkvx": "unknown name",
                       "transformer.transformer_blocks.99.attn.to_q": "unknown name"}
    mism = next(u for u in report.unmatched if u.reason == "shape mismatch")
    assert "(3072, 64)" in mism.detail and "(3072, 3072)" in mism.detail and "rows 0:3072" in mism.detail


def test_reshape_cannot_go_on_a_slice(flux):
    patch = ModulePatch(name="transformer.transformer_blocks.0.attn.to_q",
                        weight=LoraWeights(torch.empty(H, 4, device="meta"), torch.empty(4, H, device="meta")),
                        reshape=(H, 2 * H))
    u, = resolve_targets(mk.lora_file([patch]), flux).unmatched
    assert u.reason == "unsupported kind"
    # on a whole weight the padding is allowed (BFL control img_in 64 → 128)
    img_in = flux["diffusion_model.img_in.weight"]
    pad = ModulePatch(name="diffusion_model.img_in",
                      weight=LoraWeights(torch.empty(img_in[0], 4, device="meta"),
                                         torch.empty(4, 2 * img_in[1], device="meta")),
                      reshape=(img_in[0], 2 * img_in[1]))
    r, = resolve_targets(mk.lora_file([pad]), flux).matched
    assert r.weight_key == "diffusion_model.img_in.weight"


def test_fused_file_on_split_model_is_reported():
    from diffusers import FluxTransformer2DModel
    model = mk.meta_named_parameters(FluxTransformer2DModel, patch_size=1, in_channels=16, num_layers=1,
                                     num_single_layers=1, attention_head_dim=16, num_attention_heads=2,
                                     joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=[4, 6, 6])
    assert detect_model_family(model) == "flux"
    patches = [mk.lora_patch("lora_unet_double_blocks_0_img_attn_qkv", (96, 32)),
               mk.lora_patch("lora_unet_double_blocks_0_img_attn_proj", (32, 32)),
               mk.lora_patch("lora_unet_single_blocks_0_linear2", (32, 32 + 128))]
    report = resolve_targets(mk.lora_file(patches), model)
    assert {r.patch.name: r.weight_key for r in report.matched} == {
        "lora_unet_double_blocks_0_img_attn_proj": "transformer_blocks.0.attn.to_out.0.weight",
        "lora_unet_single_blocks_0_linear2": "single_transformer_blocks.0.proj_out.weight"}
    u, = report.unmatched
    assert u.reason == "unsupported kind" and "splitting" in u.detail


def test_duplicate_spellings_are_not_applied_twice(flux):
    patches = [mk.lora_patch("lora_unet_double_blocks_0_img_attn_qkv", (3 * H, H)),
               mk.lora_patch("transformer.transformer_blocks.0.attn.to_k", (H, H))]
    report = resolve_targets(mk.lora_file(patches), flux)
    assert len(report.matched) == 1
    assert report.unmatched[0].detail.startswith("duplicate")


def test_sdxl_lora_on_flux_warns(flux):
    sdxl = mk.sdxl_unet()
    patches = [mk.lora_patch("lora_unet_" + m.replace(".", "_"), s)
               for m, s in list(mk.module_shapes(sdxl, "diffusion_model.").items())[:50]]
    report = resolve_targets(mk.lora_file(patches), flux)
    assert report.family_warning == "this LoRA targets SDXL; the model is Flux"
    assert guess_lora_family(mk.lora_file([mk.lora_patch("lora_unet_double_blocks_0_img_attn_qkv", (9, 3))])) == "flux"


def test_flux2_names():
    """A Flux.2-shaped model in BFL names (module list after diffusers' Flux2
    LoRA conversion table; small widths)."""
    h, mlp = 64, 192
    model = {"diffusion_model.double_blocks.0.img_attn.qkv.weight": (3 * h, h),
             "diffusion_model.double_blocks.0.img_mlp.0.weight": (2 * mlp, h),
             "diffusion_model.double_blocks.0.img_mlp.2.weight": (h, mlp),
             "diffusion_model.single_blocks.0.linear1.weight": (3 * h + 2 * mlp, h),
             "diffusion_model.single_blocks.0.linear2.weight": (h, h + mlp),
             "diffusion_model.double_stream_modulation_img.lin.weight": (6 * h, h),
             "diffusion_model.img_in.weight": (h, 16)}
    assert detect_model_family(model) == "flux2"
    cases = {"transformer.transformer_blocks.0.ff.linear_in": ("diffusion_model.double_blocks.0.img_mlp.0.weight", None),
             "transformer.single_transformer_blocks.0.attn.to_qkv_mlp_proj":
                 ("diffusion_model.single_blocks.0.linear1.weight", None),
             "transformer.single_transformer_blocks.0.attn.to_out": ("diffusion_model.single_blocks.0.linear2.weight", None),
             "transformer.double_stream_modulation_img.linear":
                 ("diffusion_model.double_stream_modulation_img.lin.weight", None),
             "transformer.transformer_blocks.0.attn.to_v": ("diffusion_model.double_blocks.0.img_attn.qkv.weight",
                                                            Slice(0, 2 * h, h))}
    patches = []
    for name, (key, sl) in cases.items():
        shape = model[key]
        patches.append(mk.lora_patch(name, (sl.length if sl else shape[0],) + shape[1:]))
    report = resolve_targets(mk.lora_file(patches), model)
    assert not report.unmatched
    assert {r.patch.name: (r.weight_key, r.slice) for r in report.matched} == cases
