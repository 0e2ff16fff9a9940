"""Resolver: Qwen-Image (ComfyUI keeps diffusers names) and Z-Image (ComfyUI
NextDiT names with fused qkv ↔ diffusers names with separate q/k/v).

Model keys: diffusers' ``QwenImageTransformer2DModel`` / ``ZImageTransformer2DModel``
on the meta device with tiny configs.  Z-Image's original names are made from
them by fusing q/k/v and renaming, then checked with diffusers' own
``convert_z_image_transformer_checkpoint_to_diffusers``, which is also the
oracle for the q/k/v row slices.
"""
from __future__ import annotations

import pytest

from fixtures import model_keys as mk
from lora_core.ir import Slice
from lora_core.resolve import detect_model_family, guess_lora_family, resolve_targets
from lora_core.resolve import qwen as qwen_rules


@pytest.mark.parametrize("spelling", ["transformer", "bare", "lycoris", "musubi", "comfy"])
def test_qwen_image_every_weight(spelling):
    names = mk.qwen_image_diffusers()
    model = mk.prefixed(names, "diffusion_model.")
    assert detect_model_family(model) == "qwen_image"
    patches, expected = [], {}
    for m, shape in mk.module_shapes(names).items():
        name = {"transformer": f"transformer.{m}", "bare": m, "lycoris": "lycoris_" + m.replace(".", "_"),
                "musubi": "lora_unet_" + m.replace(".", "_"), "comfy": f"diffusion_model.{m}"}[spelling]
        patches.append(mk.lora_patch(name, shape))
        expected[name] = f"diffusion_model.{m}.weight"
    report = resolve_targets(mk.lora_file(patches), model)
    assert not report.unmatched
    assert {r.patch.name: r.weight_key for r in report.matched} == expected
    assert guess_lora_family(mk.lora_file(patches)) == "qwen_image"


@pytest.fixture(scope="session")
def z_image():
    from diffusers.loaders.single_file_utils import convert_z_image_transformer_checkpoint_to_diffusers
    diffusers = mk.z_image_diffusers()
    original = {}
    for k, v in diffusers.items():
        module, _, leaf = k.rpartition(".")
        if module.endswith((".attention.to_k", ".attention.to_v")):
            continue
        if module.endswith(".attention.to_q"):
            block = module[: -len(".to_q")]
            rows = sum(diffusers[f"{block}.{p}.weight"][0] for p in ("to_q", "to_k", "to_v"))
            original[f"{block}.qkv.weight"] = (rows,) + tuple(v[1:])
            continue
        renamed = qwen_rules.Z_RENAMES.to_original(module) if leaf in ("weight", "bias") else None
        original[(renamed + "." + leaf) if renamed else k] = v
    oracle = mk.diffusers_oracle(convert_z_image_transformer_checkpoint_to_diffusers, original)
    assert set(oracle) == set(diffusers)
    return original, oracle


def test_z_image_every_weight(z_image):
    original, oracle = z_image
    model = mk.prefixed(original, "diffusion_model.")
    assert detect_model_family(model) == "z_image"
    for prefix, flat in (("transformer.", False), ("diffusion_model.", False), ("lora_unet_", True)):
        patches, expected = [], {}
        for dkey, (okey, start, length, contiguous) in oracle.items():
            shape = original[okey]
            if not dkey.endswith(".weight") or len(shape) < 2:
                continue
            dmod = dkey[: -len(".weight")]
            name = prefix + (dmod.replace(".", "_") if flat else dmod)
            patches.append(mk.lora_patch(name, (length,) + tuple(shape[1:])))
            sl = None if (start == 0 and length == shape[0]) else Slice(0, start, length)
            expected[name] = ("diffusion_model." + okey, sl)
        report = resolve_targets(mk.lora_file(patches), model)
        assert not report.unmatched, report.unmatched[:3]
        assert {r.patch.name: (r.weight_key, r.slice) for r in report.matched} == expected
        assert sum(1 for v in expected.values() if v[1]) == 3 * 4  # q/k/v in 2 layers + 1 noise + 1 context refiner
        assert guess_lora_family(mk.lora_file(patches)) == "z_image"


def test_z_image_fused_names_and_diffusers_model(z_image):
    original, _ = z_image
    model = mk.prefixed(original, "diffusion_model.")
    qkv = "diffusion_model.layers.1.attention.qkv.weight"
    report = resolve_targets(mk.lora_file([mk.lora_patch("lora_unet_layers_1_attention_qkv", original[qkv[16:]])]), model)
    assert [(r.weight_key, r.slice) for r in report.matched] == [(qkv, None)]
    diffusers = mk.z_image_diffusers()
    assert detect_model_family(diffusers) == "z_image"
    report = resolve_targets(mk.lora_file([mk.lora_patch("diffusion_model.layers.1.attention.out", (32, 32)),
                                           mk.lora_patch("diffusion_model.final_layer.linear", (16, 32))]), diffusers)
    assert [r.weight_key for r in report.matched] == ["layers.1.attention.to_out.0.weight",
                                                      "all_final_layer.2-1.linear.weight"]


def test_fused_file_on_split_models_is_reported():
    z = mk.z_image_diffusers()
    u, = resolve_targets(mk.lora_file([mk.lora_patch("diffusion_model.layers.0.attention.qkv", (96, 32))]), z).unmatched
    assert u.reason == "unsupported kind" and "splitting" in u.detail
