"""Plain LoRA / LoCon / DoRA parsing against files written by peft, diffusers and lycoris-lora.

Every fidelity check compares our ΔW (``kinds.delta_weight`` on the parsed
patch) with the library's own merge at relative error ≤ 1e-5 in fp32.
"""
from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors import safe_open

from lora_core.formats import parse_file, parse_state_dict
from lora_core.formats.lora import RANK_ABOVE_FULL_NOTE, UNKNOWN_SCALE_NOTE
from lora_core.kinds import delta_weight

from fixtures.lora_files import (RTOL, Golden, diffusers_unet_lora, lycoris_dora_in,  # noqa: F401 (fixtures)
                        lycoris_dora_out, lycoris_dylora, lycoris_kohya, lycoris_locon, lycoris_tucker,
                        max_rel_err, peft_dora, peft_lora, peft_lora_without_config, rel_err, write)


def _no_unused(lora):
    assert not lora.unused, lora.unused[:5]


# ---------------------------------------------------------------- PEFT

def test_peft_lora_with_adapter_config(peft_lora: Golden):
    lora = parse_file(peft_lora.path)
    _no_unused(lora)
    assert max_rel_err(lora, peft_lora) <= RTOL
    assert UNKNOWN_SCALE_NOTE not in lora.notes
    # rsLoRA with patterns: each module really has its own scale
    scales = {p.name: p.scale for p in lora.patches}
    assert scales["base_model.model.fc1"] == pytest.approx(8 / math.sqrt(4))
    assert scales["base_model.model.fc2"] == pytest.approx(8 / math.sqrt(2))
    assert scales["base_model.model.conv"] == pytest.approx(3 / math.sqrt(4))


def test_peft_lora_without_config_is_scale_one_with_note(peft_lora_without_config: Golden):
    lora = parse_file(peft_lora_without_config.path)
    _no_unused(lora)
    assert all(p.scale == 1.0 for p in lora.patches)
    assert UNKNOWN_SCALE_NOTE in lora.notes
    assert max_rel_err(lora, peft_lora_without_config) <= RTOL


def test_peft_dora_matches_merge_and_unload(peft_dora: Golden):
    lora = parse_file(peft_dora.path)
    _no_unused(lora)
    assert {p.name: p.dora.axis for p in lora.patches} == {"base_model.model.fc1": "out",
                                                           "base_model.model.conv": "out"}
    assert max_rel_err(lora, peft_dora) <= RTOL


@pytest.mark.parametrize("strength", [0.0, 0.35, 1.0, 1.7])
def test_dora_strength_is_linear_in_delta(peft_dora: Golden, strength):
    lora = parse_file(peft_dora.path)
    for p in lora.patches:
        w = peft_dora.base[p.name]
        merged = w + strength * delta_weight(p, w)
        if strength == 0.0:
            assert torch.equal(merged, w)  # exactly W, not merely close
        else:
            ref = w + strength * peft_dora.delta[p.name]
            assert rel_err(merged - w, ref - w) <= RTOL


def test_lycoris_dora_strength_differs_from_lycoris_multiplier(lycoris_dora_out: Golden):
    """We interpolate the whole DoRA delta; LyCORIS' multiplier only interpolates the magnitude factor,
    so its multiplier 0 is not W.  At strength 1 both agree (checked in test_lycoris_standalone)."""
    lora = parse_file(lycoris_dora_out.path)
    by_name = {p.name: p for p in lora.patches}
    module = lycoris_dora_out.extra["network"].loras[0]
    w = lycoris_dora_out.base[module.lora_name]
    ours0 = w + 0.0 * delta_weight(by_name[module.lora_name], w)
    assert torch.equal(ours0, w)
    with torch.no_grad():
        theirs0 = module.get_merged_weight(multiplier=0)[0].float().reshape(w.shape)
    assert rel_err(theirs0, w) > 1e-3


# ---------------------------------------------------------------- diffusers

def test_diffusers_pipeline_save_scale_from_header(diffusers_unet_lora: Golden):
    g = diffusers_unet_lora
    with safe_open(g.path, "pt") as f:
        header = json.loads(f.metadata()["lora_adapter_metadata"])
        assert "unet.lora_alpha" in header  # the packed per-component layout
    lora = parse_file(g.path)
    _no_unused(lora)
    assert max_rel_err(lora, g) <= RTOL
    scales = {p.name: p.scale for p in lora.patches}
    assert scales["unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"] == 0.5  # alpha_pattern 2 / r 4
    assert scales["unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_k"] == 2.0  # 8 / 4


def test_diffusers_model_level_save_flat_config(diffusers_unet_lora: Golden):
    g = diffusers_unet_lora
    lora = parse_file(g.extra["adapter_path"])
    _no_unused(lora)
    bare = Golden(g.extra["adapter_path"], g.extra["bare_base"], g.extra["bare_delta"])
    assert max_rel_err(lora, bare) <= RTOL


def test_diffusers_kohya_conversion_uses_file_alpha(diffusers_unet_lora: Golden):
    """convert_state_dict_to_kohya writes alpha = rank whatever lora_alpha was: we apply what the file says."""
    g = diffusers_unet_lora
    lora = parse_file(g.extra["kohya_path"])
    _no_unused(lora)
    with safe_open(g.extra["kohya_path"], "pt") as f:
        alphas = {k[:-len(".alpha")]: f.get_tensor(k) for k in f.keys() if k.endswith(".alpha")}
    assert {int(a) for a in alphas.values()} == {4}
    assert all(p.scale == 1.0 for p in lora.patches)
    rename = {"lora_unet_" + k[len("unet."):].replace(".", "_"): k for k in g.delta}
    # what the file says: (alpha_file / r) · B·A = the PEFT delta divided by PEFT's alpha/r
    kohya = Golden(g.extra["kohya_path"], {n: g.base[k] for n, k in rename.items()},
                   {n: g.delta[k] / g.extra["scaling"][k] for n, k in rename.items()})
    assert max_rel_err(lora, kohya) <= RTOL
    # ...which is 2× weaker than the diffusers original for the alpha=8, r=4 modules
    name = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_k"
    p = next(p for p in lora.patches if p.name == name)
    ours = delta_weight(p, kohya.base[name])
    assert rel_err(2 * ours, g.delta[rename[name]]) <= RTOL


# ---------------------------------------------------------------- LyCORIS

@pytest.mark.parametrize("fixture", ["lycoris_locon", "lycoris_tucker", "lycoris_dora_out",
                                     "lycoris_dora_in", "lycoris_dylora"])
def test_lycoris_standalone(request, fixture):
    g: Golden = request.getfixturevalue(fixture)
    lora = parse_file(g.path)
    _no_unused(lora)
    assert max_rel_err(lora, g) <= RTOL, fixture
    by_name = {p.name: p for p in lora.patches}
    if fixture == "lycoris_tucker":
        assert by_name["lycoris_block_conv"].weight.mid is not None
    if fixture == "lycoris_dora_out":
        assert {p.dora.axis for p in lora.patches} == {"out"}
    if fixture == "lycoris_dora_in":
        assert {p.dora.axis for p in lora.patches} == {"in"}


def test_lycoris_dylora_file_semantics(lycoris_dylora: Golden):
    """LyCORIS' own loader reads the DyLoRA file as alpha/rank · up·down, like us."""
    from lycoris import create_lycoris_from_weights
    from fixtures.lora_files import Wrapped
    model = Wrapped()
    model.load_state_dict(lycoris_dylora.extra["model"].state_dict(), strict=False)
    # LyCORIS cannot reload its own conv DyLoRA saves (a 2-D up for a conv), so linears only.
    from safetensors.torch import load_file
    linear = {k: v for k, v in load_file(lycoris_dylora.path).items() if "_fc" in k}
    network, _ = create_lycoris_from_weights(1.0, None, model, weights_sd=linear)
    assert len(network.loras) == 2
    for lora in network.loras:
        ref = lora.get_diff_weight(multiplier=1)[0].float().reshape(lycoris_dylora.base[lora.lora_name].shape)
        assert rel_err(lycoris_dylora.delta[lora.lora_name], ref) <= RTOL
    # Training-time get_diff_weight at full rank uses alpha/(blocks+1): 2/3 instead of 2/8 here.
    train = lycoris_dylora.extra["network"].loras[0]
    odd = train.get_diff_weight(multiplier=1, rank=train.lora_dim)[0].float()
    assert rel_err(odd.reshape(lycoris_dylora.delta[train.lora_name].shape),
                   lycoris_dylora.delta[train.lora_name] * (8 / 3)) <= RTOL


def test_lycoris_kohya_wrapper_fp16(lycoris_kohya: Golden):
    lora = parse_file(lycoris_kohya.path)
    _no_unused(lora)
    assert len(lora.patches) == len(lycoris_kohya.delta)
    assert all(p.name.startswith("lora_unet_") for p in lora.patches)
    assert lora.format.startswith("kohya/")
    assert max_rel_err(lora, lycoris_kohya) <= RTOL


# ---------------------------------------------------------------- hand-written spellings

def _pair(out=6, rank=2, inp=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(out, rank, generator=g), torch.randn(rank, inp, generator=g)


SPELLINGS = [
    # (tool imitated, up key, down key, module name)
    ("old diffusers attention processor (to_q_lora)",
     "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.processor.to_q_lora.up.weight",
     "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.processor.to_q_lora.down.weight",
     "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.processor.to_q"),
    ("transformers-style text encoder (lora_linear_layer)",
     "text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_linear_layer.up.weight",
     "text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_linear_layer.down.weight",
     "text_encoder.text_model.encoder.layers.0.self_attn.q_proj"),
    ("Mochi bare lora_A/lora_B",
     "transformer_blocks.0.attn1.to_q.lora_B", "transformer_blocks.0.attn1.to_q.lora_A",
     "transformer_blocks.0.attn1.to_q"),
    ("PEFT adapter name .default (Qwen-Image exports)",
     "transformer_blocks.0.attn.to_q.lora_B.default.weight",
     "transformer_blocks.0.attn.to_q.lora_A.default.weight", "transformer_blocks.0.attn.to_q"),
    ("older trainers .lora.up",
     "model.layers.0.mlp.lora.up.weight", "model.layers.0.mlp.lora.down.weight", "model.layers.0.mlp"),
    ("kohya", "lora_unet_mid_block_attentions_0_proj_in.lora_up.weight",
     "lora_unet_mid_block_attentions_0_proj_in.lora_down.weight", "lora_unet_mid_block_attentions_0_proj_in"),
]


@pytest.mark.parametrize("tool,up_key,down_key,module", SPELLINGS, ids=[s[0] for s in SPELLINGS])
def test_spellings(tool, up_key, down_key, module):
    up, down = _pair()
    lora = parse_state_dict({up_key: up, down_key: down})
    _no_unused(lora)
    assert [p.name for p in lora.patches] == [module]
    p = lora.patches[0]
    assert p.scale == 1.0
    assert rel_err(delta_weight(p, torch.zeros(6, 5)), up @ down) <= RTOL


def test_alpha_scale_and_dtypes():
    up, down = _pair(rank=4)
    for alpha in (torch.tensor(8, dtype=torch.int64), torch.tensor(8.0, dtype=torch.float16),
                  torch.tensor([8.0])):
        lora = parse_state_dict({"m.lora_up.weight": up, "m.lora_down.weight": down, "m.alpha": alpha})
        assert lora.patches[0].scale == 2.0
    zero = parse_state_dict({"m.lora_up.weight": up, "m.lora_down.weight": down, "m.alpha": torch.tensor(0.0)})
    assert zero.patches[0].scale == 1.0  # LyCORIS: alpha 0 means rank
    explicit = parse_state_dict({"m.lora_up.weight": up, "m.lora_down.weight": down,
                                 "m.alpha": torch.tensor(8.0), "m.scale": torch.tensor(0.25)})
    assert explicit.patches[0].scale == 0.25  # A1111: scale wins


def test_comfy_native_alpha_less_is_silent():
    up, down = _pair()
    lora = parse_state_dict({"diffusion_model.blocks.0.attn.q.lora_B.weight": up,
                             "diffusion_model.blocks.0.attn.q.lora_A.weight": down})
    assert lora.patches[0].scale == 1.0 and UNKNOWN_SCALE_NOTE not in lora.notes


def test_diff_b_is_unscaled_and_lora_bias_is_scaled():
    up, down = _pair(rank=2)
    b = torch.randn(6)
    lora = parse_state_dict({"m.lora_up.weight": up, "m.lora_down.weight": down, "m.alpha": torch.tensor(4.0),
                             "m.diff_b": b})
    assert lora.patches[0].bias is b and lora.patches[0].bias_scale == 1.0
    lora = parse_state_dict({"m.lora_B.weight": up, "m.lora_A.weight": down, "m.alpha": torch.tensor(4.0),
                             "m.lora_B.bias": b})
    assert lora.patches[0].bias_scale == 2.0


def test_dora_scale_axis_from_shape():
    up, down = _pair(out=6, rank=2, inp=5)
    base = {"m.lora_up.weight": up, "m.lora_down.weight": down}
    out_axis = parse_state_dict({**base, "m.dora_scale": torch.rand(6, 1) + 1})
    in_axis = parse_state_dict({**base, "m.dora_scale": torch.rand(1, 5) + 1})
    assert out_axis.patches[0].dora.axis == "out" and in_axis.patches[0].dora.axis == "in"
    bad = parse_state_dict({**base, "m.dora_scale": torch.rand(3, 3)})
    assert not bad.patches and {u.reason for u in bad.unused} == {"invalid tensor"}


# ---------------------------------------------------------------- bad input

def _invalid(tensors) -> dict[str, str]:
    lora = parse_state_dict(tensors, path="bad.safetensors")
    assert not lora.patches
    return {u.key: (u.reason, u.detail) for u in lora.unused}


def test_incomplete_pair_names_the_key():
    up, _ = _pair()
    report = _invalid({"lora_unet_x.lora_up.weight": up, "lora_unet_x.alpha": torch.tensor(1.0)})
    assert set(report) == {"lora_unet_x.lora_up.weight", "lora_unet_x.alpha"}
    assert all(r == "invalid tensor" for r, _ in report.values())
    assert "lora_unet_x.lora_down.weight" in report["lora_unet_x.lora_up.weight"][1]


def test_rank_mismatch():
    report = _invalid({"m.lora_up.weight": torch.randn(6, 3), "m.lora_down.weight": torch.randn(2, 5)})
    assert report["m.lora_up.weight"][0] == "invalid tensor" and "ranks disagree" in report["m.lora_up.weight"][1]


def test_zero_rank():
    report = _invalid({"m.lora_up.weight": torch.randn(6, 0), "m.lora_down.weight": torch.randn(0, 5)})
    assert "rank is zero" in report["m.lora_down.weight"][1]


def test_nan_alpha():
    up, down = _pair()
    report = _invalid({"m.lora_up.weight": up, "m.lora_down.weight": down, "m.alpha": torch.tensor(float("nan"))})
    assert report["m.alpha"][0] == "invalid tensor" and "not finite" in report["m.alpha"][1]


def test_nan_alpha_in_a_file_is_reported_by_key(tmp_path_factory):
    up, down = _pair()
    path = write(tmp_path_factory, "nan_alpha", {"lora_unet_a.lora_up.weight": up,
                                                 "lora_unet_a.lora_down.weight": down,
                                                 "lora_unet_a.alpha": torch.tensor(float("nan")),
                                                 "lora_unet_b.lora_up.weight": up,
                                                 "lora_unet_b.lora_down.weight": down})
    lora = parse_file(path)
    assert [p.name for p in lora.patches] == ["lora_unet_b"]
    assert {u.key for u in lora.unused if u.reason == "invalid tensor"} >= {"lora_unet_a.alpha"}


def test_rank_above_full_rank_is_applied_with_a_note():
    up, down = _pair(out=3, rank=5, inp=4)
    lora = parse_state_dict({"m.lora_up.weight": up, "m.lora_down.weight": down})
    assert len(lora.patches) == 1 and RANK_ABOVE_FULL_NOTE in lora.notes
    assert rel_err(delta_weight(lora.patches[0], torch.zeros(3, 4)), up @ down) <= RTOL


def test_config_rank_disagreeing_with_tensors_is_noted():
    up, down = _pair(rank=2)
    lora = parse_state_dict({"base_model.model.fc.lora_B.weight": up, "base_model.model.fc.lora_A.weight": down},
                            peft_config={"r": 4, "lora_alpha": 8})
    assert lora.patches[0].scale == 4.0  # alpha over the tensor rank
    assert any("r=4" in n for n in lora.notes)


def test_peft_default_spelling_with_magnitude():
    """PEFT state dict saved with the adapter name kept (``.default``), as some Qwen-Image exports are."""
    up, down = _pair(out=6, rank=2, inp=5)
    m = torch.rand(6) + 0.5
    lora = parse_state_dict({"transformer_blocks.0.attn.to_q.lora_B.default.weight": up,
                             "transformer_blocks.0.attn.to_q.lora_A.default.weight": down,
                             "transformer_blocks.0.attn.to_q.lora_magnitude_vector.default.weight": m},
                            peft_config={"r": 2, "lora_alpha": 4})
    _no_unused(lora)
    (p,) = lora.patches
    assert p.scale == 2.0 and p.dora.axis == "out"
    w = torch.randn(6, 5)
    merged = w + 2.0 * up @ down
    ref = m[:, None] * merged / merged.norm(dim=1, keepdim=True)  # PEFT's DoRA merge, written out
    assert rel_err(w + delta_weight(p, w), ref) <= RTOL


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=25, deadline=None)
@given(out=st.integers(1, 9), inp=st.integers(1, 9), rank=st.integers(1, 6), kernel=st.sampled_from([0, 1, 3]),
       spelling=st.sampled_from(range(len(SPELLINGS))), alpha=st.one_of(st.none(), st.floats(0.25, 64)),
       axis=st.sampled_from([None, "out", "in"]), seed=st.integers(0, 2**16))
def test_random_lora_matches_reference(out, inp, rank, kernel, spelling, alpha, axis, seed):
    """ΔW = alpha/r · B·A (conv: k×k down, 1×1 up) and DoRA along the axis the shape implies."""
    g = torch.Generator().manual_seed(seed)
    k = (kernel, kernel) if kernel else ()
    up = torch.randn(out, rank, *([1] * len(k)), generator=g)
    down = torch.randn(rank, inp, *k, generator=g)
    _, up_key, down_key, module = SPELLINGS[spelling]
    tensors = {up_key: up, down_key: down}
    if alpha is not None:
        tensors[module + ".alpha"] = torch.tensor(alpha)
    if axis == "out":
        mag = torch.rand(out, *([1] * (1 + len(k))), generator=g) + 0.5
        tensors[module + ".dora_scale"] = mag
    elif axis == "in":
        mag = torch.rand(1, inp, *([1] * len(k)), generator=g) + 0.5
        tensors[module + ".dora_scale"] = mag
    lora = parse_state_dict(tensors)
    # out == in == 1 makes (1, 1, …) ambiguous; it is read as the output axis, which gives the same norm
    _no_unused(lora)
    (p,) = lora.patches
    w = torch.randn(out, inp, *k, generator=g)
    scale = 1.0 if not alpha else alpha / rank
    ref = w + scale * (up.flatten(1) @ down.flatten(1)).reshape(w.shape)
    if axis == "out":
        ref = ref * (mag / torch.linalg.vector_norm(ref, dim=tuple(range(1, ref.dim())), keepdim=True))
    elif axis == "in":
        dims = (0,) + tuple(range(2, ref.dim()))
        ref = ref * (mag / torch.linalg.vector_norm(ref, dim=dims, keepdim=True))
    assert rel_err(w + delta_weight(p, w), ref) <= 1e-5


def test_config_of_another_tuner_is_ignored_and_packed_configs_are_per_component():
    up, down = _pair(rank=2)
    keys = {"base_model.model.fc.lora_B.weight": up, "base_model.model.fc.lora_A.weight": down}
    loha_cfg = {"peft_type": "LOHA", "r": 2, "alpha": 8}
    lora = parse_state_dict(keys, peft_config=loha_cfg)
    assert lora.patches[0].scale == 1.0 and UNKNOWN_SCALE_NOTE in lora.notes
    packed = {"unet.r": 2, "unet.lora_alpha": 6, "text_encoder.r": 2, "text_encoder.lora_alpha": 2,
              "text_encoder.alpha_pattern": {"q_proj": 1}}
    lora = parse_state_dict({"unet.a.to_q.lora_B.weight": up, "unet.a.to_q.lora_A.weight": down,
                             "text_encoder.l.q_proj.lora_B.weight": up, "text_encoder.l.q_proj.lora_A.weight": down,
                             "text_encoder.l.v_proj.lora_B.weight": up, "text_encoder.l.v_proj.lora_A.weight": down,
                             "transformer.x.lora_B.weight": up, "transformer.x.lora_A.weight": down},
                            peft_config=packed)
    scales = {p.name: p.scale for p in lora.patches}
    assert scales == {"unet.a.to_q": 3.0, "text_encoder.l.q_proj": 0.5, "text_encoder.l.v_proj": 1.0,
                      "transformer.x": 1.0}
    # a pattern matches whole dotted components only ("to_q" is not "add_to_q")
    lora = parse_state_dict({"m.add_to_q.lora_B.weight": up, "m.add_to_q.lora_A.weight": down},
                            peft_config={"r": 2, "lora_alpha": 2, "alpha_pattern": {"to_q": 8}})
    assert lora.patches[0].scale == 1.0


# ---------------------------------------------------------------- through the whole engine

def test_end_to_end_merge_into_the_unet(diffusers_unet_lora: Golden, lycoris_kohya: Golden, tmp_path_factory):
    """Parse → resolve → plan → patch (``api.apply``) on the tiny UNet, vs the libraries' ΔW at strength 0.6."""
    from safetensors.torch import load_file

    from lora_core.api import apply
    from fixtures.lora_files import tiny_unet
    model = {k: v.detach().clone() for k, v in tiny_unet().state_dict().items()}
    model_path = write(tmp_path_factory, "unet_model", model)
    s = 0.6
    for golden, path_of in ((diffusers_unet_lora, lambda n: n[len("unet."):]),
                            (lycoris_kohya, lycoris_kohya.extra["module_paths"].get)):
        out = str(tmp_path_factory.mktemp("merged") / "unet.safetensors")
        (report,) = apply(model_path, [(golden.path, s)], out).reports
        assert not report.unmatched and len(report.matched) == len(golden.delta)
        after = load_file(out)
        for name, ref in golden.delta.items():
            key = path_of(name) + ".weight"
            assert rel_err(after[key] - model[key], s * ref) <= RTOL, key
