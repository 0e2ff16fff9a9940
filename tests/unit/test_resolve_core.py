"""Resolver core: shape checks for every adapter kind, reasons, caching, and
real files from PEFT / diffusers' kohya converter through the format parser."""
from __future__ import annotations

import pytest
import torch

from fixtures import model_keys as mk
from lora_core.ir import (BoftWeights, FullWeights, GloraWeights, Ia3Weights, LohaWeights, LokrWeights,
                          LoraWeights, ModulePatch, OftWeights, SetWeights)
from lora_core.resolve import model_context, resolve_targets
from lora_core.resolve.shapes import weight_misfit

E = lambda *s: torch.empty(*s, device="meta")  # noqa: E731


KIND_CASES = [
    # (weights, fits (64, 32), fits (64, 32, 3, 3))
    (LoraWeights(E(64, 4), E(4, 32)), True, False),
    (LoraWeights(E(64, 4, 1, 1), E(4, 32, 3, 3)), False, True),
    (LoraWeights(E(64, 4, 1, 1), E(4, 32, 1, 1), mid=E(4, 4, 3, 3)), False, True),
    (LoraWeights(E(32, 4), E(4, 64)), False, False),
    (LohaWeights(E(64, 4), E(4, 32), E(64, 4), E(4, 32)), True, False),
    (LohaWeights(E(4, 64), E(4, 32), E(4, 64), E(4, 32), t1=E(4, 4, 3, 3), t2=E(4, 4, 3, 3)), False, True),
    (LokrWeights(w1=E(8, 4), w2=E(8, 8)), True, False),
    (LokrWeights(w1a=E(8, 2), w1b=E(2, 4), w2=E(8, 8, 3, 3)), False, True),
    (LokrWeights(w1=E(8, 4), w2a=E(4, 2), w2b=E(2, 8)), False, False),
    (GloraWeights(E(32, 4), E(4, 32), E(64, 4), E(4, 32)), True, False),
    (OftWeights(E(8, 8, 8)), True, True),
    (OftWeights(E(4, 8, 8)), False, False),
    (BoftWeights(E(2, 8, 8, 8)), True, True),
    (Ia3Weights(E(64), on_input=False), True, True),
    (Ia3Weights(E(32), on_input=True), True, True),
    (Ia3Weights(E(64), on_input=True), False, False),
    (FullWeights(E(64, 32)), True, False),
    (FullWeights(E(64, 32, 3, 3)), False, True),
    (SetWeights(E(64, 32)), True, False),
]


@pytest.mark.parametrize("weights,linear,conv", KIND_CASES)
def test_kind_shapes(weights, linear, conv):
    patch = ModulePatch(name="m", weight=weights)
    assert (weight_misfit(patch, (64, 32)) is None) == linear
    assert (weight_misfit(patch, (64, 32, 3, 3)) is None) == conv


def _model():
    return {"diffusion_model.a.weight": (64, 32), "diffusion_model.a.bias": (64,),
            "diffusion_model.b.weight": (64, 32), "diffusion_model.norm.weight": (64,)}


def test_reasons_and_bias_handling():
    model = _model()
    patches = [
        mk.lora_patch("lora_unet_a", (64, 32)),
        ModulePatch(name="diffusion_model.b", weight=LoraWeights(E(64, 4), E(4, 32)), bias=E(64),
                    keys=("diffusion_model.b.lora_B.weight", "diffusion_model.b.lora_A.weight",
                          "diffusion_model.b.lora_B.bias")),
        mk.lora_patch("lora_unet_c", (64, 32)),
        mk.lora_patch("diffusion_model.norm", (64, 32)),
        ModulePatch(name="diffusion_model.a", bias=E(32), keys=("diffusion_model.a.diff_b",)),
        ModulePatch(name="unet.x", keys=("unet.x.alpha",)),
    ]
    report = resolve_targets(mk.lora_file(patches), model)
    assert [(r.patch.name, r.weight_key, r.bias_key) for r in report.matched] == [
        ("lora_unet_a", "diffusion_model.a.weight", None),
        ("diffusion_model.b", "diffusion_model.b.weight", None)]
    assert any("has no bias" in n and "lora_B.bias" in n for n in report.notes)
    reasons = {u.name: u.reason for u in report.unmatched}
    assert reasons == {"lora_unet_c": "unknown name", "diffusion_model.norm": "shape mismatch",
                       "diffusion_model.a": "shape mismatch", "unet.x": "unknown name"}
    assert next(u for u in report.unmatched if u.name == "lora_unet_c").keys == (
        "lora_unet_c.lora_up.weight", "lora_unet_c.lora_down.weight")


def test_table_is_cached_per_model():
    a = model_context(_model())
    b = model_context(dict(reversed(list(_model().items()))))
    assert a is b
    other = dict(_model())
    other["diffusion_model.b.weight"] = (32, 32)
    assert model_context(other) is not a


@pytest.fixture(scope="session")
def tiny_unet_files():
    from diffusers import UNet2DConditionModel
    from diffusers.utils.state_dict_utils import convert_state_dict_to_kohya
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict
    torch.manual_seed(0)
    unet = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
                                block_out_channels=(32, 64), norm_num_groups=8, cross_attention_dim=32,
                                attention_head_dim=8,
                                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))
    shapes = {k: tuple(v.shape) for k, v in unet.state_dict().items()}
    unet.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights=False,
                                target_modules=["to_q", "to_k", "to_v", "to_out.0", "proj_in", "conv1", "time_emb_proj"]))
    peft = {f"unet.{k}": v.detach().clone() for k, v in get_peft_model_state_dict(unet).items()}
    kohya = convert_state_dict_to_kohya(dict(peft))
    return shapes, peft, kohya


@pytest.mark.parametrize("which", ["peft", "kohya"])
def test_real_files_through_the_parser(tiny_unet_files, which):
    from lora_core.formats import parse_state_dict
    shapes, peft, kohya = tiny_unet_files
    lora = parse_state_dict(peft if which == "peft" else kohya)
    assert lora.patches and not lora.unused
    report = resolve_targets(lora, shapes)
    assert not report.unmatched, report.unmatched[:3]
    assert len(report.matched) == len({k.split(".lora_")[0] for k in peft})
    for r in report.matched:
        assert r.weight_key in shapes and r.slice is None
    # the PEFT spelling names the parameter directly
    if which == "peft":
        assert {r.patch.name[len("unet."):] + ".weight" for r in report.matched} == {r.weight_key for r in report.matched}
