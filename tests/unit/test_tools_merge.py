"""merge / resize round trips on real files: the merged file loads back as the sum of its parts."""
import pytest
import torch

from fixtures.lora_files import diffusers_unet_lora, lycoris_kohya  # noqa: F401  (session fixtures)
from fixtures.lycoris_files import kohya_file
from lora_core.formats import parse_file
from lora_core.resolve import resolve_targets
from lora_core.tools.merge import Source, merge
from lora_core.tools.resize import resize
from lora_core.tools.writer import write_lora
from fixtures.tool_outputs import loaded_deltas, unet_params, worst_rel


@pytest.fixture(scope="module")
def params():
    return unet_params()


def _write(result, folder, name):
    path = str(folder / name)
    write_lora(result.tensors, path, metadata=result.metadata)
    return path


def _golden_by_param(golden, to_path):
    return {to_path(name) + ".weight": d for name, d in golden.delta.items()}


def test_exact_merge_of_two_namings_is_the_sum(lycoris_kohya, diffusers_unet_lora, params, tmp_path):
    """kohya LoCon (fp16) at 0.7 + diffusers PEFT LoRA at −0.4, matched through the model: exact."""
    paths = lycoris_kohya.extra["module_paths"]
    ref = {k: 0.7 * v.float() for k, v in _golden_by_param(lycoris_kohya, paths.get).items()}
    for k, v in _golden_by_param(diffusers_unet_lora, lambda n: n[len("unet."):]).items():
        ref[k] = ref.get(k, 0) - 0.4 * v
    result = merge([Source(lycoris_kohya.path, 0.7), Source(diffusers_unet_lora.path, -0.4)], model=params)
    assert set(result.summary()["methods"]) == {"concat"}
    assert result.summary()["rel_error"]["max"] == 0.0
    out = _write(result, tmp_path, "merged.safetensors")
    assert worst_rel(loaded_deltas([(out, 1.0)], params), ref) <= 1e-5
    # ranks add up where both files adapt a module
    assert max(result.summary()["ranks"]) == 8


def test_exact_merge_without_model_same_naming(lycoris_kohya, params, tmp_path):
    result = merge([Source(lycoris_kohya.path, 0.5), Source(lycoris_kohya.path, 0.25)])
    out = _write(result, tmp_path, "twice.safetensors")
    ref = loaded_deltas([(lycoris_kohya.path, 0.75)], params)
    assert worst_rel(loaded_deltas([(out, 1.0)], params), ref) <= 1e-5
    assert all(k.startswith("lora_unet_") for k in result.tensors)


def test_svd_merge_error_is_reported_true_and_falls_with_rank(lycoris_kohya, diffusers_unet_lora, params, tmp_path):
    sources = [Source(lycoris_kohya.path, 1.0), Source(diffusers_unet_lora.path, 1.0)]
    exact = loaded_deltas([(s.path, s.strength) for s in sources], params)
    worst = []
    for rank in (1, 3, 6):
        result = merge(sources, model=params, rank=rank)
        out = _write(result, tmp_path, f"r{rank}.safetensors")
        got = loaded_deltas([(out, 1.0)], params)
        by_name = {l.name: l for l in result.layers}
        report = resolve_targets(parse_file(out), {k: tuple(v.shape) for k, v in params.items()})
        for placed in report.matched:  # the reported error is the measured one, layer by layer
            key = placed.weight_key
            measured = float((got[key] - exact[key]).norm() / exact[key].norm())
            assert measured == pytest.approx(by_name[placed.patch.name].rel_error, abs=2e-3), key
        assert all(l.rank <= rank for l in by_name.values())
        worst.append(result.summary()["rel_error"]["mean"])
    assert worst[0] > worst[1] > worst[2]


def test_non_lora_kinds_go_dense_and_say_so(params, tmp_path):
    locon = kohya_file("lora", str(tmp_path))
    loha = kohya_file("loha", str(tmp_path))
    result = merge([Source(locon.path, 0.6), Source(loha.path, 0.3)], model=params)
    assert "dense-svd" in result.summary()["methods"]
    assert any("loha" in n for n in result.notes)
    out = _write(result, tmp_path, "mixed.safetensors")
    ref = loaded_deltas([(locon.path, 0.6), (loha.path, 0.3)], params)
    assert worst_rel(loaded_deltas([(out, 1.0)], params), ref) <= 1e-4


def test_resize_error_falls_with_rank_and_energy_rule(lycoris_kohya, params, tmp_path):
    exact = loaded_deltas([(lycoris_kohya.path, 1.0)], params)
    means = []
    for rank in (1, 2, 3):
        result = resize(lycoris_kohya.path, rank=rank, dtype=torch.float32)
        out = _write(result, tmp_path, f"resized{rank}.safetensors")
        got = loaded_deltas([(out, 1.0)], params)
        measured = max(float((got[k] - v).norm() / v.norm()) for k, v in exact.items())
        assert measured == pytest.approx(result.summary()["rel_error"]["max"], abs=2e-3)
        means.append(result.summary()["rel_error"]["mean"])
    assert means[0] > means[1] > means[2]
    full = resize(lycoris_kohya.path, rank=4, dtype=torch.float32)
    assert full.summary()["rel_error"]["max"] < 1e-3  # rank 4 is the file's own rank
    kept = resize(lycoris_kohya.path, energy=0.9)
    assert all(l.energy >= 0.9 - 1e-9 for l in kept.layers)
    assert kept.summary()["energy_min"] < 1.0


def test_text_encoder_modules_take_the_clip_strength(tmp_path):
    from safetensors.torch import save_file

    from lora_core.formats import parse_file
    from lora_core.kinds import delta_weight
    g = torch.Generator().manual_seed(3)
    t = {}
    for name, (o, i) in {"lora_unet_mid_block_attentions_0_proj_in": (8, 8),
                         "lora_te_text_model_encoder_layers_0_mlp_fc1": (16, 8)}.items():
        t[name + ".lora_down.weight"] = torch.randn(2, i, generator=g)
        t[name + ".lora_up.weight"] = torch.randn(o, 2, generator=g)
        t[name + ".alpha"] = torch.tensor(1.0)
    src = str(tmp_path / "both.safetensors")
    save_file(t, src)
    result = merge([Source(src, 0.5, strength_clip=2.0)])
    out = _write(result, tmp_path, "both_merged.safetensors")
    before = {p.name: delta_weight(p, torch.zeros(p.weight.up.shape[0], p.weight.down.shape[1]))
              for p in parse_file(src).patches}
    for p in parse_file(out).patches:
        want = before[p.name] * (2.0 if p.name.startswith("lora_te_") else 0.5)
        got = delta_weight(p, torch.zeros_like(want))
        assert torch.allclose(got, want, rtol=1e-5, atol=1e-6), p.name
    assert '"strength_clip": 2.0' in result.metadata["patchbay_sources"]


def test_slices_of_a_fused_weight_concatenate_exactly():
    """Separate q/k/v LoRAs on one fused qkv weight: B padded with zero rows, still one exact product."""
    from lora_core.ir import LoraWeights, ModulePatch, ResolvedPatch, Slice
    from lora_core.plan import Contribution
    from lora_core.tools.merge import Group, merge_group
    from lora_core.tools.svd import RankRule
    g = torch.Generator().manual_seed(9)
    hidden, rank = 6, 2
    contribs, want = [], torch.zeros(3 * hidden, hidden)
    for i, part in enumerate("qkv"):
        up, down = torch.randn(hidden, rank, generator=g), torch.randn(rank, hidden, generator=g)
        patch = ModulePatch(name=f"attn.to_{part}", weight=LoraWeights(up=up, down=down), scale=0.5)
        resolved = ResolvedPatch(patch, "qkv.weight", slice=Slice(0, i * hidden, hidden))
        contribs.append(Contribution(resolved, 0.8, "weight", 0, "f"))
        want[i * hidden:(i + 1) * hidden] = 0.8 * 0.5 * up @ down
    group = Group("diffusion_model.qkv", "qkv.weight", (3 * hidden, hidden), tuple(contribs))
    tensors, report = merge_group(group, RankRule(), "comfy", torch.float32)
    got = tensors["diffusion_model.qkv.lora_up.weight"] @ tensors["diffusion_model.qkv.lora_down.weight"]
    assert report.method == "concat" and report.rank == 3 * rank
    assert float(tensors["diffusion_model.qkv.alpha"]) == 3 * rank
    assert torch.allclose(got, want, atol=1e-6)


def test_dora_needs_the_base_and_then_merges_densely(tmp_path):
    from lycoris import LycorisNetwork, create_lycoris
    from safetensors.torch import save_file

    from fixtures.lora_files import Wrapped, perturb
    from lora_core.errors import PatchbayError
    torch.manual_seed(5)
    net = Wrapped()
    base = {k: v.detach().clone() for k, v in net.state_dict().items()}
    saved = dict(vars(LycorisNetwork))  # apply_preset changes class state; later fixtures must not see it
    try:
        LycorisNetwork.apply_preset({"target_name": [".*fc1", ".*fc2"]})
        network = create_lycoris(net, 1.0, linear_dim=4, linear_alpha=2, algo="lora", dora_wd=True)
    finally:
        for key in ("TARGET_REPLACE_MODULE", "TARGET_REPLACE_NAME", "MODULE_ALGO_MAP", "NAME_ALGO_MAP",
                    "LORA_PREFIX", "USE_FNMATCH", "ENABLE_CONV"):
            if key in saved:
                setattr(LycorisNetwork, key, saved[key])
    network.apply_to()
    perturb(network, seed=5)
    src = str(tmp_path / "dora.safetensors")
    save_file({k: v.detach().clone().contiguous() for k, v in network.state_dict().items()}, src)
    with pytest.raises(PatchbayError, match="depends on the base weights"):
        merge([Source(src, 0.7)])
    result = merge([Source(src, 0.7)], model=base)
    assert set(result.summary()["methods"]) == {"dense-svd"}
    out = _write(result, tmp_path, "dora_merged.safetensors")
    ref = loaded_deltas([(src, 0.7)], base)
    assert worst_rel(loaded_deltas([(out, 1.0)], base), ref) <= 1e-5


def test_mixed_namings_need_the_model_and_ranks_past_full_are_cut(lycoris_kohya, diffusers_unet_lora, tmp_path):
    from safetensors.torch import save_file

    from lora_core.errors import PatchbayError
    with pytest.raises(PatchbayError, match="different namings.*--model"):
        merge([Source(lycoris_kohya.path), Source(diffusers_unet_lora.path)])
    g = torch.Generator().manual_seed(6)
    t = {"lora_unet_x.lora_down.weight": torch.randn(5, 4, generator=g),
         "lora_unet_x.lora_up.weight": torch.randn(3, 5, generator=g), "lora_unet_x.alpha": torch.tensor(5.0)}
    src = str(tmp_path / "wide.safetensors")
    save_file(t, src)
    result = merge([Source(src, 1.0), Source(src, 0.5)])  # rank 10 on a 3×4 layer
    (layer,) = result.layers
    assert layer.method == "svd" and layer.rank == 3 and layer.rel_error < 1e-6
    got = result.tensors["lora_unet_x.lora_up.weight"] @ result.tensors["lora_unet_x.lora_down.weight"]
    want = 1.5 * t["lora_unet_x.lora_up.weight"] @ t["lora_unet_x.lora_down.weight"]
    assert torch.allclose(got, want, atol=1e-5)
