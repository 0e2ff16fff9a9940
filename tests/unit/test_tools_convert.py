"""convert round trips: every naming pair gives back the same ΔW, and diffusers reads the results."""
import itertools

import pytest
import torch

from fixtures.lora_files import diffusers_unet_lora, lycoris_kohya  # noqa: F401  (session fixtures)
from fixtures.lycoris_files import kohya_file
from fixtures.tool_outputs import loaded_deltas, unet_params, worst_rel
from lora_core.errors import PatchbayError
from lora_core.formats import parse_file
from lora_core.tools.convert import convert
from lora_core.tools.naming import NAMINGS, detect_naming
from lora_core.tools.writer import write_lora

PREFIXES = {"kohya": ("lora_unet_",), "peft": ("unet.",), "comfy": ("diffusion_model.",)}


@pytest.fixture(scope="module")
def params():
    return unet_params()


@pytest.fixture(scope="module")
def converted(diffusers_unet_lora, params, tmp_path_factory):
    """The diffusers file converted to each naming, then each of those to every other one."""
    folder = tmp_path_factory.mktemp("converted")
    out = {}
    for to in NAMINGS:
        r = convert(diffusers_unet_lora.path, to=to, model=params)
        out[("src", to)] = path = str(folder / f"src_{to}.safetensors")
        write_lora(r.tensors, path, metadata=r.metadata)
    for a, b in itertools.permutations(NAMINGS, 2):
        r = convert(out[("src", a)], to=b, model=params)
        out[(a, b)] = path = str(folder / f"{a}_to_{b}.safetensors")
        write_lora(r.tensors, path, metadata=r.metadata)
    return out


@pytest.mark.parametrize("pair", [("src", n) for n in NAMINGS] + list(itertools.permutations(NAMINGS, 2)))
def test_every_pair_keeps_delta(pair, converted, diffusers_unet_lora, params):
    path = converted[pair]
    lora = parse_file(path)
    assert not lora.unused and not lora.notes, (lora.unused[:3], lora.notes)
    assert detect_naming(p.name for p in lora.patches) == pair[1]
    assert all(p.name.startswith(PREFIXES[pair[1]]) for p in lora.patches)
    ref = loaded_deltas([(diffusers_unet_lora.path, 1.0)], params)
    assert worst_rel(loaded_deltas([(path, 1.0)], params), ref) <= 1e-5


def test_kohya_fp16_to_comfy_is_bit_exact_and_to_peft_folds_alpha(lycoris_kohya, params, tmp_path):
    comfy = convert(lycoris_kohya.path, to="comfy", model=params)
    assert {l.method for l in comfy.layers} == {"copy"}
    src = parse_file(lycoris_kohya.path)
    ups = {p.name: p.weight.up for p in src.patches}
    for layer in comfy.layers[:5]:
        assert layer.name.startswith("diffusion_model.")
    assert any(torch.equal(t, u) for t in comfy.tensors.values() for u in list(ups.values())[:1])
    peft = convert(lycoris_kohya.path, to="peft", model=params, dtype=torch.float32)
    path = str(tmp_path / "peft.safetensors")
    write_lora(peft.tensors, path, metadata=peft.metadata)
    ref = loaded_deltas([(lycoris_kohya.path, 1.0)], params)
    assert worst_rel(loaded_deltas([(path, 1.0)], params), ref) <= 1e-5
    assert "lora_adapter_metadata" in peft.metadata


@pytest.mark.parametrize("naming", ["peft", "kohya"])
def test_diffusers_loads_the_converted_file(naming, lycoris_kohya, params, tmp_path):
    """diffusers' own loader (kohya conversion included) + PEFT merge gives W + ΔW of our loader.

    The source is the LyCORIS kohya file: diffusers' kohya reader misplaces per-module alphas of
    ``attn1.to_q`` (its alpha_pattern key gets a ``processor.to_q_lora`` name), so a source whose
    to_q has its own alpha (the diffusers fixture) would test diffusers' bug, not our file."""
    from diffusers.loaders.lora_pipeline import StableDiffusionLoraLoaderMixin as Loader
    from peft.tuners.tuners_utils import BaseTunerLayer

    from fixtures.lora_files import tiny_unet
    ref = loaded_deltas([(lycoris_kohya.path, 1.0)], params)
    r = convert(lycoris_kohya.path, to=naming, model=params, dtype=torch.float32)
    path = str(tmp_path / f"for_diffusers_{naming}.safetensors")
    write_lora(r.tensors, path, metadata=r.metadata)
    unet = tiny_unet()
    unet.load_state_dict(params)
    state, alphas, meta = Loader.lora_state_dict(path, return_lora_metadata=True)
    Loader.load_lora_into_unet(state, alphas, unet, metadata=meta, adapter_name="converted")
    merged = 0
    for name, module in unet.named_modules():
        if isinstance(module, BaseTunerLayer):
            module.merge()
            key = name + ".weight"
            got = module.get_base_layer().weight.detach() - params[key]
            assert float((got - ref[key]).norm() / ref[key].norm()) <= 1e-5, name
            merged += 1
    assert merged == len(ref)


def test_lycoris_kinds_keep_their_tensors_and_peft_refuses(params, tmp_path):
    loha = kohya_file("loha", str(tmp_path))
    r = convert(loha.path, to="comfy", model=params)
    assert {l.method for l in r.layers} == {"copy"}
    path = str(tmp_path / "loha_comfy.safetensors")
    write_lora(r.tensors, path, metadata=r.metadata)
    ref = loaded_deltas([(loha.path, 1.0)], params)
    assert worst_rel(loaded_deltas([(path, 1.0)], params), ref) <= 1e-6
    with pytest.raises(PatchbayError, match="PEFT-style LoRA files cannot hold"):
        convert(loha.path, to="peft", model=params)


def test_convert_needs_a_model(diffusers_unet_lora):
    with pytest.raises(PatchbayError, match="needs the base model"):
        convert(diffusers_unet_lora.path, to="kohya", model=None)


def test_text_encoder_modules_are_named_per_naming(lycoris_kohya, params, tmp_path):
    """A kohya file with UNet and CLIP modules against a pipeline-style model (unet + text encoder)."""
    from safetensors.torch import load_file, save_file
    te_key = "text_encoder.text_model.encoder.layers.0.self_attn.q_proj"
    model = dict(params)
    model[te_key + ".weight"] = torch.randn(32, 32)
    model[te_key + ".bias"] = torch.zeros(32)
    model["text_encoder.text_model.encoder.layers.0.layer_norm1.weight"] = torch.ones(32)
    tensors = load_file(lycoris_kohya.path)
    g = torch.Generator().manual_seed(4)
    te = "lora_te_text_model_encoder_layers_0_self_attn_q_proj"
    tensors[te + ".lora_down.weight"] = torch.randn(2, 32, generator=g).half()
    tensors[te + ".lora_up.weight"] = torch.randn(32, 2, generator=g).half()
    tensors[te + ".alpha"] = torch.tensor(1.0)
    src = str(tmp_path / "with_te.safetensors")
    save_file(tensors, src)
    ref = loaded_deltas([(src, 1.0)], model)
    want = {"kohya": "lora_te_text_model_encoder_layers_0_self_attn_q_proj",
            "peft": "text_encoder.text_model.encoder.layers.0.self_attn.q_proj",
            "comfy": "text_encoders.clip_l.transformer.text_model.encoder.layers.0.self_attn.q_proj"}
    for naming, te_name in want.items():
        r = convert(src, to=naming, model=model, dtype=torch.float32)
        assert any(k.startswith(te_name + ".") for k in r.tensors), (naming, sorted(r.tensors)[-3:])
        out = write_lora(r.tensors, str(tmp_path / f"te_{naming}.safetensors"), metadata=r.metadata)
        assert worst_rel(loaded_deltas([(out, 1.0)], model), ref) <= 1e-5, naming
