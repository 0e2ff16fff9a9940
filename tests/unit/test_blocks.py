"""Block weights: spec parsing, key → block classification, and the multiplier
reaching the merged weights (W' = W + s·m(block)·ΔW, alpha untouched)."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from lora_core.blocks import (LAYOUTS, PRESETS, block_multiplier, classify_key, format_block_weights,
                              make_multiplier, parse_block_weights, unmatched_rules)
from lora_core.errors import StackError
from lora_core.stack import BlockWeights

# The A1111 / Inspire block names, element by element (independent spelling of the layouts).
SD15_NAMES = ["BASE", "IN01", "IN02", "IN04", "IN05", "IN07", "IN08", "M00",
              "OUT03", "OUT04", "OUT05", "OUT06", "OUT07", "OUT08", "OUT09", "OUT10", "OUT11"]
SDXL_NAMES = ["BASE", "IN04", "IN05", "IN07", "IN08", "M00", "OUT00", "OUT01", "OUT02", "OUT03", "OUT04", "OUT05"]


def ldm_key(name: str) -> str:
    """A ComfyUI parameter key inside the block A1111 calls ``name``."""
    if name == "BASE":
        return "clip_l.transformer.text_model.encoder.layers.3.self_attn.q_proj.weight"
    if name == "M00":
        return "diffusion_model.middle_block.1.transformer_blocks.0.attn1.to_q.weight"
    kind, num = name[:-2], int(name[-2:])
    block = {"IN": "input_blocks", "OUT": "output_blocks"}[kind]
    return f"diffusion_model.{block}.{num}.1.transformer_blocks.0.attn2.to_k.weight"


@pytest.mark.parametrize("names", [SD15_NAMES, SDXL_NAMES], ids=["sd15", "sdxl"])
def test_vector_elements_hit_their_named_block(names):
    # A distinct value per element: each block's key must get exactly its element.
    values = [round(0.1 * (i + 1), 3) for i in range(len(names))]
    spec = parse_block_weights(",".join(str(v) for v in values))
    for name, value in zip(names, values):
        assert block_multiplier(spec, ldm_key(name), "sd1") == pytest.approx(value), name


def test_inspire_presets_sd15():
    inall = parse_block_weights("SD-INALL")
    assert all(block_multiplier(inall, ldm_key(n)) == 1.0 for n in SD15_NAMES[:7])
    assert all(block_multiplier(inall, ldm_key(n)) == 0.0 for n in SD15_NAMES[7:])
    outd = parse_block_weights("SD-OUTD")
    got = [block_multiplier(outd, ldm_key(n)) for n in SD15_NAMES]
    assert got == [1, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 0, 0, 0, 0, 0]


def test_sdxl_presets():
    mid = parse_block_weights("SDXL-MIDALL")
    assert [block_multiplier(mid, ldm_key(n)) for n in SDXL_NAMES] == [1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0]


def test_every_preset_parses_and_vector_presets_have_known_lengths():
    for name, text in PRESETS.items():
        spec = parse_block_weights(name)
        assert isinstance(spec, BlockWeights), name
        if not text.startswith("%"):
            assert len(text.split(",")) in LAYOUTS, name


def test_unlisted_unet_blocks_and_outside_keys_take_base():
    spec = parse_block_weights("0.25,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0")
    # IN03 (a downsample conv) is not in the 17-value layout → BASE.
    assert block_multiplier(spec, "diffusion_model.input_blocks.3.0.op.weight") == 0.25
    assert block_multiplier(spec, "diffusion_model.time_embed.0.weight") == 0.25
    assert block_multiplier(spec, "diffusion_model.out.2.weight") == 0.25
    assert block_multiplier(spec, "t5xxl.transformer.encoder.block.0.layer.0.SelfAttention.q.weight") == 0.25
    assert block_multiplier(spec, "diffusion_model.input_blocks.4.1.proj_in.weight") == 0.0


def test_letters_a_b():
    spec = parse_block_weights("SD-AB", a=3.0, b=0.5)
    assert block_multiplier(spec, ldm_key("BASE")) == 3.0
    assert block_multiplier(spec, ldm_key("IN05")) == 0.5
    assert block_multiplier(spec, ldm_key("OUT08")) == 3.0
    half = parse_block_weights("a,b,1,1,1,1,1,1,1,1,1,1", a=3.0, b=0.5)
    assert block_multiplier(half, ldm_key("BASE")) == 1.5
    assert block_multiplier(half, ldm_key("IN04")) == 0.25


def test_dit_rules_flux_wan_ltx():
    spec = parse_block_weights("double=1, single0-10=0.5, blocks20-39=0")
    f = "diffusion_model.single_blocks.{}.linear1.weight"
    assert block_multiplier(spec, f.format(0), "flux") == 0.5
    assert block_multiplier(spec, f.format(10), "flux") == 0.5  # ranges are inclusive
    assert block_multiplier(spec, f.format(11), "flux") == 1.0  # default
    assert block_multiplier(spec, "diffusion_model.double_blocks.18.img_attn.qkv.weight", "flux") == 1.0
    assert block_multiplier(spec, "diffusion_model.blocks.19.self_attn.q.weight", "wan") == 1.0
    assert block_multiplier(spec, "diffusion_model.blocks.20.self_attn.q.weight", "wan") == 0.0
    assert block_multiplier(spec, "diffusion_model.blocks.39.ffn.0.weight", "wan") == 0.0
    assert block_multiplier(spec, "diffusion_model.transformer_blocks.25.attn1.to_q.weight", "ltx2") == 0.0
    assert block_multiplier(spec, "diffusion_model.transformer_blocks.5.attn1.to_q.weight", "ltx2") == 1.0


def test_flux_vector_58_and_diffusers_names():
    values = ["0.5"] + ["1"] * 19 + ["0"] * 38
    spec = parse_block_weights(",".join(values))
    assert block_multiplier(spec, "diffusion_model.double_blocks.0.img_mod.lin.weight", "flux") == 1.0
    assert block_multiplier(spec, "diffusion_model.single_blocks.37.linear2.weight", "flux") == 0.0
    assert block_multiplier(spec, "diffusion_model.img_in.weight", "flux") == 0.5
    # diffusers Flux: transformer_blocks are the double blocks, single_transformer_blocks the single ones
    assert block_multiplier(spec, "transformer.transformer_blocks.3.attn.to_q.weight", "flux") == 1.0
    assert block_multiplier(spec, "transformer.single_transformer_blocks.3.proj_out.weight", "flux") == 0.0


def test_last_rule_wins_and_default_vs_base():
    spec = parse_block_weights("%default=0.2, base=0.7, blocks=0.5, blocks3=0, blocks=0.9")
    assert block_multiplier(spec, "diffusion_model.blocks.3.x.weight", "wan") == 0.9
    spec = parse_block_weights("default=0.2, base=0.7, blocks=0.5, blocks3=0")
    assert block_multiplier(spec, "diffusion_model.blocks.3.x.weight", "wan") == 0.0
    assert block_multiplier(spec, "diffusion_model.blocks.4.x.weight", "wan") == 0.5
    assert block_multiplier(spec, "diffusion_model.head.head.weight", "wan") == 0.7  # outside blocks: base
    assert block_multiplier(spec, "diffusion_model.input_blocks.4.1.x.weight") == 0.2  # a block no rule names


def test_mid_sub_blocks():
    spec = parse_block_weights("mid=0, mid1=0.5")
    assert block_multiplier(spec, "diffusion_model.middle_block.0.in_layers.2.weight") == 0.0
    assert block_multiplier(spec, "diffusion_model.middle_block.1.proj_in.weight") == 0.5


def test_classify_key_containers():
    assert classify_key("model.diffusion_model.input_blocks.7.1.proj_out.weight") == ("in", 7)
    assert classify_key("diffusion_model.output_blocks.11.1.proj_out.bias") == ("out", 11)
    assert classify_key("diffusion_model.joint_blocks.2.x_block.attn.qkv.weight", "sd3") == ("blocks", 2)
    assert classify_key("clip_g.transformer.text_model.encoder.layers.5.mlp.fc1.weight") is None
    assert classify_key("diffusion_model.input_blocks.10.0.x") == ("in", 10)  # two-digit numbers


def test_none_spec_and_trivial_multiplier():
    assert block_multiplier(None, "diffusion_model.blocks.0.x.weight") == 1.0
    assert parse_block_weights("") is None and parse_block_weights("   ") is None
    assert make_multiplier(None) is None
    assert make_multiplier(parse_block_weights("ALL")) is None
    m = make_multiplier(parse_block_weights("blocks0-1=0.5"), "wan")
    assert m("diffusion_model.blocks.1.q.weight") == 0.5 and m("diffusion_model.blocks.2.q.weight") == 1.0


@pytest.mark.parametrize("text", [
    "1,0,0",                                # no layout has 3 values
    "1,0,R,0,0,0,0,0,0,0,0,0",              # random tokens refused (not reproducible)
    "1,0,0.5 0.2,0,0,0,0,0,0,0,0,0",        # per-layer lists refused
    "in8-4=1",                              # backwards range
    "foo=1",                                # unknown selector
    "base3=1",                              # base takes no index
    "out=x",                                # not a number
    "NO-SUCH-PRESET",
    "NOPE:",
])
def test_bad_specs_raise_stack_error(text):
    with pytest.raises(StackError):
        parse_block_weights(text)


def test_named_vector_prefix_and_format_round_trip():
    spec = parse_block_weights("MYVEC:1,0,0,0,0,1,0,0,0,0,0,0")
    assert block_multiplier(spec, ldm_key("MYVEC" and "M00")) == 1.0
    for text in ("SD-MIDD0.8", "double=1, single0-10=0.5, blocks20-39=0", "default=0.1, base=1e-05, out3=-2"):
        spec = parse_block_weights(text)
        assert parse_block_weights(format_block_weights(spec)) == spec


def test_unmatched_rules_flag_a_vector_for_another_model():
    flux_keys = ["diffusion_model.double_blocks.0.img_attn.qkv.weight", "diffusion_model.single_blocks.0.linear1.weight"]
    sd_vector = parse_block_weights("SD-OUTALL")
    assert len(unmatched_rules(sd_vector, flux_keys, "flux")) == 16
    assert unmatched_rules(parse_block_weights("double=1, single0=0.5"), flux_keys, "flux") == []


# ----------------------------------------------------------------- through the plan and the patcher

MODULES = {"input_blocks.1.1.proj_in": (6, 5), "middle_block.1.proj_in": (6, 5),
           "output_blocks.3.1.proj_in": (6, 5), "input_blocks.4.1.proj_in": (6, 5)}
RANK, ALPHA = 2, 1.0


@pytest.fixture(scope="session")
def kohya_file(tmp_path_factory):
    g = torch.Generator().manual_seed(3)
    tensors, factors = {}, {}
    for module, (o, i) in MODULES.items():
        key = "lora_unet_" + module.replace(".", "_")
        down, up = torch.randn(RANK, i, generator=g), torch.randn(o, RANK, generator=g)
        tensors[key + ".lora_down.weight"], tensors[key + ".lora_up.weight"] = down, up
        tensors[key + ".alpha"] = torch.tensor(ALPHA)
        factors["diffusion_model." + module + ".weight"] = (up, down)
    te = "lora_te_text_model_encoder_layers_0_mlp_fc1"
    tensors[te + ".lora_down.weight"] = torch.randn(RANK, 5, generator=g)
    tensors[te + ".lora_up.weight"] = torch.randn(7, RANK, generator=g)
    tensors[te + ".alpha"] = torch.tensor(ALPHA)
    factors["clip_l.transformer.text_model.encoder.layers.0.mlp.fc1.weight"] = (
        tensors[te + ".lora_up.weight"], tensors[te + ".lora_down.weight"])
    path = tmp_path_factory.mktemp("blocks") / "kohya.safetensors"
    save_file(tensors, str(path))
    return str(path), factors


def test_multiplier_reaches_merged_weights(kohya_file):
    from lora_core.api import open_lora
    from lora_core.patcher import MergePatcher
    from lora_core.plan import build_plan
    from lora_core.resolve import resolve_targets

    path, factors = kohya_file
    g = torch.Generator().manual_seed(4)
    params = {k: torch.randn(up.shape[0], down.shape[1], generator=g) for k, (up, down) in factors.items()}
    originals = {k: v.clone() for k, v in params.items()}
    report = resolve_targets(open_lora(path, None), {k: tuple(v.shape) for k, v in params.items()})
    assert len(report.matched) == len(factors)

    # IN01 0, IN04 0.5, MID 2, OUT03 −1, BASE (text encoder) 0.25
    spec = parse_block_weights("0.25,0,1,0.5,1,1,1,2,-1,1,1,1,1,1,1,1,1")
    strength = 0.8
    plan = build_plan([(report, strength, make_multiplier(spec, "sd1"))])
    expected_m = {"diffusion_model.input_blocks.1.1.proj_in.weight": 0.0,
                  "diffusion_model.input_blocks.4.1.proj_in.weight": 0.5,
                  "diffusion_model.middle_block.1.proj_in.weight": 2.0,
                  "diffusion_model.output_blocks.3.1.proj_in.weight": -1.0,
                  "clip_l.transformer.text_model.encoder.layers.0.mlp.fc1.weight": 0.25}
    assert "diffusion_model.input_blocks.1.1.proj_in.weight" not in plan  # multiplier 0: no work at all

    MergePatcher(params).apply(plan)
    for key, (up, down) in factors.items():
        # Independent oracle: the kohya formula with alpha/rank untouched, times s·m.
        want = originals[key] + strength * expected_m[key] * (ALPHA / RANK) * (up @ down)
        err = float((params[key] - want).norm() / want.norm())
        assert err <= 1e-6, (key, err)
