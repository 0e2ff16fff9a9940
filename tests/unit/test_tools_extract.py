"""extract: base + fine-tune → LoRA; applying it approximates the fine-tune, better as the rank grows."""
import pytest
import torch
from safetensors.torch import load_file, save_file

from fixtures.tool_outputs import unet_params
from lora_core import api
from lora_core.formats import parse_file
from lora_core.resolve import resolve_targets
from lora_core.tools.extract import extract
from lora_core.tools.writer import write_lora


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A tiny UNet and a 'fine-tune': a rank-6 change on every matrix plus small noise, biases moved too."""
    folder = tmp_path_factory.mktemp("extract")
    base = unet_params()
    g = torch.Generator().manual_seed(5)
    tuned = {}
    for k, w in base.items():
        if w.dim() >= 2:
            m = w.reshape(w.shape[0], -1)
            r = min(6, *m.shape)
            low = torch.randn(m.shape[0], r, generator=g) @ torch.randn(r, m.shape[1], generator=g)
            noise = torch.randn(m.shape, generator=g) * 0.02
            tuned[k] = w + (0.05 * low / r ** 0.5 + noise).reshape(w.shape) * m.std()
        elif k.endswith(".bias"):
            tuned[k] = w + 0.01 * torch.randn(w.shape, generator=g)
        else:
            tuned[k] = w.clone()
    paths = {name: str(folder / f"{name}.safetensors") for name in ("base", "tuned")}
    save_file({k: v.contiguous() for k, v in base.items()}, paths["base"])
    save_file({k: v.contiguous() for k, v in tuned.items()}, paths["tuned"])
    return folder, base, tuned, paths


def _error_after_apply(folder, paths, lora_path, tuned) -> float:
    out = str(folder / (lora_path.rsplit("/", 1)[-1] + ".baked.safetensors"))
    api.apply(paths["base"], [(lora_path, 1.0)], out, force=True)
    baked = load_file(out)
    num = sum(float((baked[k] - tuned[k]).double().norm() ** 2) for k in tuned if tuned[k].dim() >= 2)
    den = sum(float(tuned[k].double().norm() ** 2) for k in tuned if tuned[k].dim() >= 2)
    return (num / den) ** 0.5


def test_error_falls_with_rank_and_every_layer_is_reported(models):
    folder, base, tuned, paths = models
    errors, energies = [], []
    for rank in (1, 3, 6, 12):
        result = extract(paths["base"], paths["tuned"], rank=rank, dtype=torch.float32)
        lora_path = write_lora(result.tensors, str(folder / f"extracted_r{rank}.safetensors"), metadata=result.metadata)
        report = resolve_targets(parse_file(lora_path), {k: tuple(v.shape) for k, v in base.items()})
        assert not report.unmatched and not report.elsewhere
        svd_layers = [l for l in result.layers if l.method == "dense-svd"]
        assert len(svd_layers) == sum(1 for v in base.values() if v.dim() >= 2)
        assert all(0 < l.energy <= 1 and l.rank <= rank for l in svd_layers)
        errors.append(_error_after_apply(folder, paths, lora_path, tuned))
        energies.append(sum(l.energy for l in svd_layers) / len(svd_layers))
    assert errors[0] > errors[1] > errors[2] > errors[3]
    assert energies[0] < energies[1] < energies[2] < energies[3]


def test_conv_layers_come_back_in_layer_layout(models):
    _, base, _, paths = models
    result = extract(paths["base"], paths["tuned"], rank=4)
    conv = "diffusion_model.input_blocks.0.0"  # conv_in in ComfyUI (ldm) naming
    assert result.tensors[conv + ".lora_down.weight"].shape == (4, 4, 3, 3)
    assert result.tensors[conv + ".lora_up.weight"].shape == (32, 4, 1, 1)
    assert result.tensors[conv + ".lora_up.weight"].dtype == torch.float16
    assert result.tensors[conv + ".diff_b"].shape == (32,)


def test_energy_threshold_and_names(models):
    _, _, _, paths = models
    result = extract(paths["base"], paths["tuned"], energy=0.8, naming="kohya")
    svd = [l for l in result.layers if l.method == "dense-svd"]
    assert all(l.energy >= 0.8 - 1e-9 for l in svd)
    assert len({l.rank for l in svd}) > 1  # per-layer ranks follow the energy
    assert all(k.startswith("lora_unet_") for k in result.tensors)
    assert result.metadata["patchbay_tool"] == "extract"


def test_identical_models_are_refused(models):
    from lora_core.errors import PatchbayError
    _, _, _, paths = models
    with pytest.raises(PatchbayError, match="does not differ"):
        extract(paths["base"], paths["base"], rank=4)
