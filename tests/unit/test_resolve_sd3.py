"""Resolver: SD3 (ComfyUI MMDiT names) against diffusers, OneTrainer, kohya and PEFT spellings.

Model keys: sd-mecha's ``sd3-comfyui`` config (SD3 medium).  Oracle: diffusers'
``convert_sd3_transformer_checkpoint_to_diffusers`` on row-tagged stand-ins
(q/k/v are row slices of the fused qkv; a few adaLN weights swap halves).
"""
from __future__ import annotations

import pytest

from fixtures import model_keys as mk
from lora_core.ir import Slice
from lora_core.resolve import detect_model_family, guess_lora_family, resolve_targets


@pytest.fixture(scope="session")
def sd3():
    return mk.sd3_diffusion()


@pytest.fixture(scope="session")
def oracle(sd3):
    from diffusers.loaders.single_file_utils import convert_sd3_transformer_checkpoint_to_diffusers
    original = {k[len("diffusion_model."):]: v for k, v in sd3.items()}
    return mk.diffusers_oracle(convert_sd3_transformer_checkpoint_to_diffusers, original)


@pytest.mark.parametrize("prefix,flat", [("transformer.", False), ("lora_transformer_", True),
                                         ("base_model.model.", False), ("lycoris_", True)])
def test_diffusers_names_land_on_oracle_keys(sd3, oracle, prefix, flat):
    assert detect_model_family(sd3) == "sd3"
    patches, expected, swapped = [], {}, set()
    for dkey, (okey, start, length, contiguous) in oracle.items():
        shape = sd3["diffusion_model." + okey]
        if not dkey.endswith(".weight") or len(shape) < 2:
            continue
        dmod = dkey[: -len(".weight")]
        name = prefix + (dmod.replace(".", "_") if flat else dmod)
        patches.append(mk.lora_patch(name, (length,) + tuple(shape[1:])))
        if not contiguous:
            swapped.add(name)
            continue
        sl = None if (start == 0 and length == shape[0]) else Slice(0, start, length)
        expected[name] = ("diffusion_model." + okey, sl)
    report = resolve_targets(mk.lora_file(patches), sd3)
    assert {r.patch.name: (r.weight_key, r.slice) for r in report.matched} == expected
    assert {u.name for u in report.unmatched} == swapped and len(swapped) == 2
    assert all(u.reason == "unsupported kind" for u in report.unmatched)
    assert sum(1 for v in expected.values() if v[1] is not None) == 24 * 6  # q/k/v of x and context per block
    assert guess_lora_family(mk.lora_file(patches)) == "sd3"


def test_known_example(sd3):
    h = sd3["diffusion_model.joint_blocks.0.x_block.attn.qkv.weight"][0] // 3
    report = resolve_targets(mk.lora_file([mk.lora_patch("transformer.transformer_blocks.3.attn.add_k_proj", (h, h))]), sd3)
    r, = report.matched
    assert r.weight_key == "diffusion_model.joint_blocks.3.context_block.attn.qkv.weight"
    assert r.slice == Slice(0, h, h)


def test_kohya_original_names(sd3):
    patches = [mk.lora_patch("lora_unet_" + m.replace(".", "_"), s)
               for m, s in mk.module_shapes(sd3, "diffusion_model.").items()]
    report = resolve_targets(mk.lora_file(patches), sd3)
    assert not report.unmatched and len(report.matched) == len(patches)


def test_fused_file_on_diffusers_sd3_is_reported():
    from diffusers import SD3Transformer2DModel
    model = mk.meta_named_parameters(SD3Transformer2DModel, sample_size=8, patch_size=2, in_channels=4,
                                     num_layers=2, attention_head_dim=8, num_attention_heads=2,
                                     joint_attention_dim=16, caption_projection_dim=16,
                                     pooled_projection_dim=16, out_channels=4, pos_embed_max_size=16)
    assert detect_model_family(model) == "sd3"
    report = resolve_targets(mk.lora_file([mk.lora_patch("lora_unet_joint_blocks_0_x_block_attn_qkv", (48, 16)),
                                           mk.lora_patch("lora_unet_joint_blocks_0_x_block_mlp_fc1", (64, 16))]), model)
    assert [r.weight_key for r in report.matched] == ["transformer_blocks.0.ff.net.0.proj.weight"]
    u, = report.unmatched
    assert u.reason == "unsupported kind" and "splitting" in u.detail
