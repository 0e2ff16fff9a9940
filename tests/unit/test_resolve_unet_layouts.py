"""Resolver: SD-style UNets off the standard layout (BK-SDM, SSD-1B/Vega, KOALA, 2-3 levels).

Models: tiny diffusers ``UNet2DConditionModel`` configs on the meta device
(no middle block, one ResNet per level, per-level transformer depths, two or
three levels).  Their original (ldm) names come from the config by diffusers'
own block arithmetic and are accepted only after diffusers' single-file
converter ``convert_ldm_unet_checkpoint`` maps every one of them back onto
exactly its diffusers key (row-tagged tensors): that converter is the oracle.
LoRA names: diffusers' ``convert_state_dict_to_kohya`` of PEFT names, and
kohya names of the ldm paths.
"""
from __future__ import annotations

import re

import pytest
import torch

from fixtures import model_keys as mk
from lora_core.resolve import detect_model_family, resolve_targets

_BASE = dict(sample_size=8, in_channels=4, out_channels=4, norm_num_groups=8, attention_head_dim=2)
_SD1 = dict(_BASE, layers_per_block=2, block_out_channels=(8, 16, 16, 16), cross_attention_dim=768,
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)
_SDXL = dict(_BASE, layers_per_block=2, block_out_channels=(8, 16, 16), cross_attention_dim=2048,
             down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
             up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
             addition_embed_type="text_time", addition_time_embed_dim=8,
             projection_class_embeddings_input_dim=8 * 6 + 1280)

LAYOUTS = {
    # BK-SDM-Base / -Small / -Tiny: no middle block, then one ResNet+attention per level, then 3 levels
    "bk-sdm-base": (dict(_SD1, mid_block_type=None), "sd1"),
    "bk-sdm-small": (dict(_SD1, mid_block_type=None, layers_per_block=1), "sd1"),
    "bk-sdm-tiny": (dict(_SD1, mid_block_type=None, layers_per_block=1, block_out_channels=(8, 16, 16),
                         down_block_types=("CrossAttnDownBlock2D",) * 3,
                         up_block_types=("CrossAttnUpBlock2D",) * 3), "sd1"),
    # SSD-1B / Vega-like: fewer and uneven transformer blocks per level
    "ssd-1b": (dict(_SDXL, transformer_layers_per_block=[1, 2, 4],
                    reverse_transformer_layers_per_block=[[4, 4, 10], [2, 1, 1], [1, 1, 1]]), "sdxl"),
    # KOALA-like: one ResNet per level, no middle block
    "koala": (dict(_SDXL, layers_per_block=1, mid_block_type=None, transformer_layers_per_block=[1, 2, 5]),
              "sdxl"),
    "two-levels": (dict(_SD1, block_out_channels=(8, 16), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D")), "sd1"),
}

_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "norm2": "out_layers.0", "conv2": "out_layers.3",
           "time_emb_proj": "emb_layers.1", "conv_shortcut": "skip_connection"}
_BLOCK = re.compile(r"^(down|up)_blocks\.(\d+)\.(resnets|attentions|downsamplers|upsamplers)\.(\d+)\.(.*)$")
_MID = re.compile(r"^mid_block\.(resnets|attentions)\.(\d+)\.(.*)$")


def _resnet_child(rest: str) -> str:
    for d, o in _RESNET.items():
        if rest.startswith(d + "."):
            return o + rest[len(d):]
    return rest


def _ldm_candidate(key: str, config: dict, has_attention) -> str:
    """The ldm name of a diffusers key by diffusers' block arithmetic
    (block = 1 + level·(layers_per_block + 1) + index); checked by the converter."""
    from diffusers.loaders.single_file_utils import DIFFUSERS_TO_LDM_MAPPING
    top = {**DIFFUSERS_TO_LDM_MAPPING["unet"]["layers"], **DIFFUSERS_TO_LDM_MAPPING["unet"]["addition_embed_type"]}
    if key in top:
        return top[key]
    per = config["layers_per_block"] + 1
    m = _BLOCK.match(key)
    if m:
        side, level, kind, j, rest = m.group(1), int(m.group(2)), m.group(3), int(m.group(4)), m.group(5)
        if side == "down":
            n = 1 + level * per + (per - 1 if kind == "downsamplers" else j)
            return {"resnets": f"input_blocks.{n}.0.{_resnet_child(rest)}", "attentions": f"input_blocks.{n}.1.{rest}",
                    "downsamplers": f"input_blocks.{n}.0.op.{rest[len('conv.'):]}"}[kind]
        n = level * per + (per - 1 if kind == "upsamplers" else j)
        slot = 2 if has_attention(level) else 1
        return {"resnets": f"output_blocks.{n}.0.{_resnet_child(rest)}", "attentions": f"output_blocks.{n}.1.{rest}",
                "upsamplers": f"output_blocks.{n}.{slot}.{rest}"}[kind]
    m = _MID.match(key)
    kind, j, rest = m.group(1), int(m.group(2)), m.group(3)
    return f"middle_block.{2 * j}.{_resnet_child(rest)}" if kind == "resnets" else f"middle_block.1.{rest}"


@pytest.fixture(scope="module", params=sorted(LAYOUTS))
def layout(request):
    from diffusers import UNet2DConditionModel
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint
    config, family = LAYOUTS[request.param]
    diffusers = mk.meta_named_parameters(UNet2DConditionModel, **config)

    def has_attention(level):
        return any(k.startswith(f"up_blocks.{level}.attentions.") for k in diffusers)

    to_ldm = {k: _ldm_candidate(k, config, has_attention) for k in diffusers}
    ldm = {to_ldm[k]: s for k, s in diffusers.items()}
    assert len(ldm) == len(diffusers)
    # The oracle: diffusers' converter takes every ldm key back to the diffusers key it came from.
    back = mk.diffusers_oracle(lambda sd: convert_ldm_unet_checkpoint(sd, config), ldm)
    assert {d: src for d, (src, *_r) in back.items()} == {d: to_ldm[d] for d in diffusers}
    return request.param, family, diffusers, to_ldm


def _weights(diffusers):
    return {k[: -len(".weight")]: s for k, s in diffusers.items() if k.endswith(".weight") and len(s) >= 2}


def test_family_is_named_in_both_namings(layout):
    name, family, diffusers, to_ldm = layout
    ldm_model = {"diffusion_model." + to_ldm[k]: s for k, s in diffusers.items()}
    assert detect_model_family(ldm_model) == family
    assert detect_model_family(diffusers) == family


def test_kohya_lora_from_diffusers_names_matches_every_module(layout):
    from diffusers.utils.state_dict_utils import convert_state_dict_to_kohya
    name, family, diffusers, to_ldm = layout
    weights = _weights(diffusers)
    peft = {}
    for m, shape in weights.items():
        peft[f"unet.{m}.lora_A.weight"] = torch.empty((4, shape[1]) + tuple(shape[2:]), device="meta")
        peft[f"unet.{m}.lora_B.weight"] = torch.empty((shape[0], 4) + (1,) * (len(shape) - 2), device="meta")
    kohya = convert_state_dict_to_kohya(peft)
    by_id = {id(t): k.split(".lora_")[0][len("unet."):] for k, t in peft.items() if ".lora_A." in k}
    names = {k.split(".")[0]: by_id[id(t)] for k, t in kohya.items() if k.endswith(".lora_down.weight")}
    assert len(names) == len(weights)
    ldm_model = {"diffusion_model." + to_ldm[k]: s for k, s in diffusers.items()}
    report = resolve_targets(mk.lora_file([mk.lora_patch(k, weights[d]) for k, d in names.items()]), ldm_model)
    assert not report.unmatched, (name, report.unmatched[:3])
    got = {r.patch.name: r.weight_key for r in report.matched}
    assert got == {k: "diffusion_model." + to_ldm[d + ".weight"] for k, d in names.items()}
    assert (report.lora_family, report.model_family, report.family_warning) == (family, family, None)


def test_ldm_named_lora_matches_the_diffusers_model(layout):
    name, family, diffusers, to_ldm = layout
    weights = _weights(diffusers)
    names = {"lora_unet_" + to_ldm[d + ".weight"][: -len(".weight")].replace(".", "_"): d for d in weights}
    report = resolve_targets(mk.lora_file([mk.lora_patch(k, weights[d]) for k, d in names.items()]), diffusers)
    assert not report.unmatched, (name, report.unmatched[:3])
    assert {r.patch.name: r.weight_key for r in report.matched} == {k: d + ".weight" for k, d in names.items()}


def test_middle_block_of_one_resnet_maps_by_its_children():
    # ComfyUI builds SSD-1B's middle block (transformer_depth_middle -1) as a single ResNet,
    # middle_block.0; its unet_to_diffusers maps mid_block.resnets.0 there.
    from diffusers import UNet2DConditionModel
    config, _ = LAYOUTS["ssd-1b"]
    diffusers = mk.meta_named_parameters(UNet2DConditionModel, **config)
    model = {"diffusion_model." + _ldm_candidate(k, config, lambda level: level < 2): s
             for k, s in diffusers.items() if not k.startswith(("mid_block.attentions.", "mid_block.resnets.1."))}
    shape = model["diffusion_model.middle_block.0.in_layers.2.weight"]
    for name in ("lora_unet_mid_block_resnets_0_conv1", "unet.mid_block.resnets.0.conv1"):
        report = resolve_targets(mk.lora_file([mk.lora_patch(name, shape)]), model)
        assert [r.weight_key for r in report.matched] == ["diffusion_model.middle_block.0.in_layers.2.weight"]
    assert detect_model_family(model) == "sdxl"
