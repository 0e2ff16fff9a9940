"""Family file converters: XLabs Flux (vs diffusers' own converter), BFL control, Wan-Fun."""
from __future__ import annotations

import pytest
import torch

from lora_core.formats import parse_file, parse_state_dict
from lora_core.ir import Kind, SetWeights
from lora_core.kinds import delta_weight

from fixtures.lora_files import RTOL, rel_err, write

H, R = 8, 2  # tiny Flux: hidden 8 (3h qkv rows, 4h mlp), rank 2


def _xlabs_state_dict(prefix: str = "") -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(11)

    def pair(key, out, inp):
        return {f"{prefix}{key}.down.weight": torch.randn(R, inp, generator=g),
                f"{prefix}{key}.up.weight": torch.randn(out, R, generator=g)}
    sd = {}
    for i in (0, 1):
        sd |= pair(f"double_blocks.{i}.processor.qkv_lora1", 3 * H, H)
        sd |= pair(f"double_blocks.{i}.processor.qkv_lora2", 3 * H, H)
        sd |= pair(f"double_blocks.{i}.processor.proj_lora1", H, H)
        sd |= pair(f"double_blocks.{i}.processor.proj_lora2", H, H)
    sd |= pair("single_blocks.0.processor.qkv_lora", 3 * H, H)
    sd |= pair("single_blocks.0.processor.proj_lora", H, 5 * H)  # linear2 input: attn h + mlp 4h
    return sd


def _diffusers_delta(conv: dict[str, torch.Tensor], module: str) -> torch.Tensor:
    return conv[f"{module}.lora_B.weight"] @ conv[f"{module}.lora_A.weight"]


# Our BFL module → the diffusers modules whose deltas stack into it (rows in order).
XLABS_ORACLE = {
    "diffusion_model.double_blocks.{i}.img_attn.qkv": ["transformer.transformer_blocks.{i}.attn.to_q",
                                                       "transformer.transformer_blocks.{i}.attn.to_k",
                                                       "transformer.transformer_blocks.{i}.attn.to_v"],
    "diffusion_model.double_blocks.{i}.txt_attn.qkv": ["transformer.transformer_blocks.{i}.attn.add_q_proj",
                                                       "transformer.transformer_blocks.{i}.attn.add_k_proj",
                                                       "transformer.transformer_blocks.{i}.attn.add_v_proj"],
    "diffusion_model.double_blocks.{i}.img_attn.proj": ["transformer.transformer_blocks.{i}.attn.to_out.0"],
    "diffusion_model.double_blocks.{i}.txt_attn.proj": ["transformer.transformer_blocks.{i}.attn.to_add_out"],
}


@pytest.mark.parametrize("prefix", ["", "diffusion_model."])
def test_xlabs_matches_diffusers_conversion(prefix, tmp_path_factory):
    from diffusers.loaders.lora_conversion_utils import _convert_xlabs_flux_lora_to_diffusers
    sd = _xlabs_state_dict(prefix)
    path = write(tmp_path_factory, "xlabs", sd)
    lora = parse_file(path)
    assert not lora.unused, lora.unused
    assert lora.format == "xlabs-flux/lora"
    conv = _convert_xlabs_flux_lora_to_diffusers({k: v.clone() for k, v in sd.items()})
    by_name = {p.name: p for p in lora.patches}
    checked = 0
    for i in (0, 1):
        for ours, theirs in XLABS_ORACLE.items():
            p = by_name[ours.format(i=i)]
            ref = torch.cat([_diffusers_delta(conv, t.format(i=i)) for t in theirs])
            assert p.scale == 1.0
            assert rel_err(delta_weight(p, torch.zeros_like(ref)), ref) <= RTOL
            checked += 1
    # single block: qkv is the q/k/v slice of linear1 = [q; k; v; mlp-in], named linear1_qkv
    lin1 = by_name["diffusion_model.single_blocks.0.linear1_qkv"]
    ref = torch.cat([_diffusers_delta(conv, f"transformer.single_transformer_blocks.0.attn.to_{c}")
                     for c in "qkv"])
    assert rel_err(delta_weight(lin1, torch.zeros(3 * H, H)), ref) <= RTOL
    lin2 = by_name["diffusion_model.single_blocks.0.linear2"]
    ref2 = _diffusers_delta(conv, "transformer.single_transformer_blocks.0.proj_out")
    assert rel_err(delta_weight(lin2, torch.zeros(H, 5 * H)), ref2) <= RTOL
    assert checked == 8 and len(lora.patches) == 10


def test_xlabs_incomplete_single_qkv_is_reported():
    sd = _xlabs_state_dict()
    del sd["single_blocks.0.processor.qkv_lora.down.weight"]
    lora = parse_state_dict(sd)
    bad = [u for u in lora.unused if u.reason == "invalid tensor"]
    assert [u.key for u in bad] == ["diffusion_model.single_blocks.0.linear1_qkv.lora_up.weight"]


def _bfl_control(in_base=4, hidden=H):
    g = torch.Generator().manual_seed(12)
    sd = {
        "img_in.lora_A.weight": torch.randn(R, 2 * in_base, generator=g),
        "img_in.lora_B.weight": torch.randn(hidden, R, generator=g),
        "img_in.lora_B.bias": torch.randn(hidden, generator=g),
        "double_blocks.0.img_attn.qkv.lora_A.weight": torch.randn(R, hidden, generator=g),
        "double_blocks.0.img_attn.qkv.lora_B.weight": torch.randn(3 * hidden, R, generator=g),
        "double_blocks.0.img_attn.qkv.lora_B.bias": torch.randn(3 * hidden, generator=g),
        "double_blocks.0.img_attn.norm.query_norm.scale": torch.rand(hidden // 2, generator=g) + 0.5,
        "double_blocks.0.img_attn.norm.key_norm.scale": torch.rand(hidden // 2, generator=g) + 0.5,
        "single_blocks.0.norm.query_norm.scale": torch.rand(hidden // 2, generator=g) + 0.5,
        "single_blocks.0.norm.key_norm.scale": torch.rand(hidden // 2, generator=g) + 0.5,
    }
    return sd


def test_bfl_control(tmp_path_factory):
    sd = _bfl_control()
    lora = parse_file(write(tmp_path_factory, "bfl_control", sd))
    assert not lora.unused, lora.unused
    assert lora.format.startswith("bfl-control-flux/")
    by_name = {p.name: p for p in lora.patches}
    img_in = by_name["diffusion_model.img_in"]
    assert img_in.reshape == (H, 8)  # the 4-channel base is widened to 8 (64 → 128 in Flux)
    assert img_in.scale == 1.0 and UNKNOWN_NOTE_ABSENT(lora)
    # W' = pad(W, 64 → 128 columns) + B·A; the new columns hold B·A only
    w = torch.randn(H, 4)
    padded = torch.cat([w, torch.zeros(H, 4)], dim=1)
    merged = padded + delta_weight(img_in, padded)
    ref = padded + sd["img_in.lora_B.weight"] @ sd["img_in.lora_A.weight"]
    assert rel_err(merged, ref) <= RTOL
    assert torch.equal(img_in.bias, sd["img_in.lora_B.bias"]) and img_in.bias_scale == 1.0
    qkv = by_name["diffusion_model.double_blocks.0.img_attn.qkv"]
    assert qkv.reshape is None and qkv.bias is not None
    norms = {n: p for n, p in by_name.items() if p.kind is Kind.SET}
    assert set(norms) == {"diffusion_model.double_blocks.0.img_attn.norm.query_norm",
                          "diffusion_model.double_blocks.0.img_attn.norm.key_norm",
                          "diffusion_model.single_blocks.0.norm.query_norm",
                          "diffusion_model.single_blocks.0.norm.key_norm"}
    p = norms["diffusion_model.single_blocks.0.norm.key_norm"]
    assert isinstance(p.weight, SetWeights)
    assert torch.equal(p.weight.value, sd["single_blocks.0.norm.key_norm.scale"])


def UNKNOWN_NOTE_ABSENT(lora) -> bool:
    from lora_core.formats.lora import UNKNOWN_SCALE_NOTE
    return UNKNOWN_SCALE_NOTE not in lora.notes


def test_bfl_control_nan_norm_is_reported():
    sd = _bfl_control()
    sd["single_blocks.0.norm.key_norm.scale"][0] = float("nan")
    lora = parse_state_dict(sd)
    assert [(u.key, u.reason) for u in lora.unused] == [
        ("diffusion_model.single_blocks.0.norm.key_norm.set_weight", "invalid tensor")]


def test_wan_fun_double_underscore(tmp_path_factory):
    g = torch.Generator().manual_seed(13)
    up, down = torch.randn(6, 4, generator=g), torch.randn(4, 5, generator=g)
    sd = {"lora_unet__blocks_0_cross_attn_k.lora_down.weight": down,
          "lora_unet__blocks_0_cross_attn_k.lora_up.weight": up,
          "lora_unet__blocks_0_cross_attn_k.alpha": torch.tensor(2.0),
          "lora_unet__blocks_0_cross_attn_k.diff_b": torch.randn(6, generator=g)}
    lora = parse_file(write(tmp_path_factory, "wan_fun", sd))
    assert not lora.unused
    assert lora.format == "wan-fun/lora"
    (p,) = lora.patches
    assert p.name == "lora_unet_blocks_0_cross_attn_k" and p.scale == 0.5
    assert rel_err(delta_weight(p, torch.zeros(6, 5)), 0.5 * up @ down) <= RTOL
    assert p.bias is not None and p.bias_scale == 1.0


@pytest.mark.parametrize("key", [
    "transformer.transformer_blocks.0.attn.to_q",          # ai-toolkit / diffusers Flux
    "lora_unet_double_blocks_0_img_attn_qkv",              # kohya Flux
    "lora_transformer_single_transformer_blocks_0_proj_out",  # OneTrainer Flux
    "diffusion_model.blocks.0.self_attn.q",                # Wan, ComfyUI-native
])
def test_plain_files_pass_converters_untouched(key):
    up, down = torch.randn(6, 2), torch.randn(2, 5)
    spell = (".lora_B.weight", ".lora_A.weight") if key.startswith(("transformer.", "diffusion")) else \
        (".lora_up.weight", ".lora_down.weight")
    lora = parse_state_dict({key + spell[0]: up, key + spell[1]: down})
    assert [p.name for p in lora.patches] == [key]
    assert not lora.format.startswith(("xlabs", "bfl", "wan-fun"))


# ---------------------------------------------------------------- end to end through the engine

def _tiny_bfl_flux() -> dict[str, torch.Tensor]:
    """A ComfyUI-named Flux with the modules the files above touch (hidden H, 4 latent channels)."""
    g = torch.Generator().manual_seed(14)
    shapes = {"img_in.weight": (H, 4), "img_in.bias": (H,), "txt_in.weight": (H, 8), "txt_in.bias": (H,),
              "time_in.in_layer.weight": (H, 16), "vector_in.in_layer.weight": (H, 8),
              "final_layer.linear.weight": (4, H),
              "single_blocks.0.linear1.weight": (7 * H, H), "single_blocks.0.linear2.weight": (H, 5 * H),
              "single_blocks.0.norm.query_norm.scale": (H // 2,), "single_blocks.0.norm.key_norm.scale": (H // 2,),
              "single_blocks.0.modulation.lin.weight": (3 * H, H)}
    for i in (0, 1):
        for s in ("img", "txt"):
            shapes |= {f"double_blocks.{i}.{s}_attn.qkv.weight": (3 * H, H),
                       f"double_blocks.{i}.{s}_attn.qkv.bias": (3 * H,),
                       f"double_blocks.{i}.{s}_attn.proj.weight": (H, H),
                       f"double_blocks.{i}.{s}_attn.norm.query_norm.scale": (H // 2,),
                       f"double_blocks.{i}.{s}_attn.norm.key_norm.scale": (H // 2,),
                       f"double_blocks.{i}.{s}_mlp.0.weight": (4 * H, H),
                       f"double_blocks.{i}.{s}_mod.lin.weight": (6 * H, H)}
    return {"diffusion_model." + k: torch.randn(v, generator=g) for k, v in shapes.items()}


def _apply(tmp_path_factory, tag, lora_sd, strength):
    from safetensors.torch import load_file

    from lora_core.api import apply
    model = _tiny_bfl_flux()
    model_path = write(tmp_path_factory, f"{tag}_model", model)
    lora_path = write(tmp_path_factory, f"{tag}_lora", lora_sd)
    out = str(tmp_path_factory.mktemp(f"{tag}_out") / "merged.safetensors")
    result = apply(model_path, [(lora_path, strength)], out)
    (report,) = result.reports
    assert not report.unmatched and report.family_warning is None, report.unmatched
    return model, load_file(out)


def test_xlabs_end_to_end_through_the_engine(tmp_path_factory):
    from diffusers.loaders.lora_conversion_utils import _convert_xlabs_flux_lora_to_diffusers
    sd = _xlabs_state_dict()
    conv = _convert_xlabs_flux_lora_to_diffusers({k: v.clone() for k, v in sd.items()})
    s = 0.7
    before, after = _apply(tmp_path_factory, "xlabs_e2e", sd, s)
    d = "diffusion_model."
    for i in (0, 1):
        for ours, theirs in XLABS_ORACLE.items():
            key = d + ours.format(i=i)[len(d):] + ".weight"
            ref = before[key] + s * torch.cat([_diffusers_delta(conv, t.format(i=i)) for t in theirs])
            assert rel_err(after[key], ref) <= RTOL, key
    lin1 = after[d + "single_blocks.0.linear1.weight"]
    qkv = torch.cat([_diffusers_delta(conv, f"transformer.single_transformer_blocks.0.attn.to_{c}") for c in "qkv"])
    assert rel_err(lin1[: 3 * H], before[d + "single_blocks.0.linear1.weight"][: 3 * H] + s * qkv) <= RTOL
    assert torch.equal(lin1[3 * H:], before[d + "single_blocks.0.linear1.weight"][3 * H:])
    untouched = d + "double_blocks.0.img_mlp.0.weight"
    assert torch.equal(after[untouched], before[untouched])


def test_bfl_control_end_to_end_through_the_engine(tmp_path_factory):
    sd = _bfl_control()
    before, after = _apply(tmp_path_factory, "bfl_e2e", sd, 1.0)
    d = "diffusion_model."
    w = after[d + "img_in.weight"]
    assert w.shape == (H, 8)  # widened for the control latent
    padded = torch.cat([before[d + "img_in.weight"], torch.zeros(H, 4)], dim=1)
    assert rel_err(w, padded + sd["img_in.lora_B.weight"] @ sd["img_in.lora_A.weight"]) <= RTOL
    assert rel_err(after[d + "img_in.bias"], before[d + "img_in.bias"] + sd["img_in.lora_B.bias"]) <= RTOL
    qkv = "double_blocks.0.img_attn.qkv"
    assert rel_err(after[d + qkv + ".weight"], before[d + qkv + ".weight"]
                   + sd[qkv + ".lora_B.weight"] @ sd[qkv + ".lora_A.weight"]) <= RTOL
    assert rel_err(after[d + qkv + ".bias"], before[d + qkv + ".bias"] + sd[qkv + ".lora_B.bias"]) <= RTOL
    for norm in ("double_blocks.0.img_attn.norm.query_norm.scale", "single_blocks.0.norm.key_norm.scale"):
        # replaced, not added (W + 1·(V − W): equal up to one rounding)
        assert torch.allclose(after[d + norm], sd[norm], rtol=1e-6, atol=0)
        assert not torch.allclose(before[d + norm], sd[norm])
    assert torch.equal(after[d + "double_blocks.0.txt_attn.norm.key_norm.scale"],
                       before[d + "double_blocks.0.txt_attn.norm.key_norm.scale"])
