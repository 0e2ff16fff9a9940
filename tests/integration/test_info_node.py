"""LoRA Info in a real ComfyUI: the text it shows (ui) and returns, with and
without a model, against the tiny SD1.5 UNet of the harness."""
from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from comfy_harness import Graph

RANK = 4
ALPHA = 2.0
# Attention projections of the harness's tiny SD1.5 UNet (320 channels, context 768).
TARGETS = {
    "input_blocks.1.1.transformer_blocks.0.attn1.to_q": (320, 320),
    "input_blocks.1.1.transformer_blocks.0.attn2.to_k": (320, 768),
    "middle_block.1.transformer_blocks.0.attn1.to_v": (320, 320),
    "output_blocks.1.1.transformer_blocks.0.attn2.to_v": (320, 768),
}
UNKNOWN = "input_blocks.7.1.transformer_blocks.0.attn1.to_q"  # a block the tiny UNet does not have
WRONG_SHAPE = ("output_blocks.0.1.transformer_blocks.0.attn1.to_k", (320, 100))
TRIGGERS = {"ds": {"patchbay_token": 12, "blue hair": 3}}


def write_tiny_sd15_lora(path: Path) -> Path:
    """A kohya LoRA for the tiny SD1.5 UNet: 4 modules that fit, 1 unknown, 1 of the wrong shape."""
    import json
    g = torch.Generator().manual_seed(11)
    tensors = {}
    items = list(TARGETS.items()) + [(UNKNOWN, (320, 320)), WRONG_SHAPE]
    for module, (out_f, in_f) in items:
        key = "lora_unet_" + module.replace(".", "_")
        tensors[key + ".lora_down.weight"] = torch.randn(RANK, in_f, generator=g) * 0.01
        tensors[key + ".lora_up.weight"] = torch.randn(out_f, RANK, generator=g) * 0.01
        tensors[key + ".alpha"] = torch.tensor(ALPHA)
    meta = {"ss_network_module": "networks.lora", "ss_network_dim": str(RANK), "ss_network_alpha": str(ALPHA),
            "ss_base_model_version": "sd_v1", "ss_tag_frequency": json.dumps(TRIGGERS),
            "ss_output_name": "patchbay tiny"}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=meta)
    return path


@pytest.fixture(scope="session")
def tiny_lora_file(tmp_path_factory) -> Path:
    return write_tiny_sd15_lora(tmp_path_factory.mktemp("info-lora") / "patchbay_tiny_sd15.safetensors")


@pytest.fixture(scope="session")
def tiny_lora(comfy, tiny_lora_file) -> str:
    return comfy.add_model("loras", tiny_lora_file, "patchbay/patchbay_tiny_sd15.safetensors")


def _info(comfy, g: Graph, node_id: str) -> str:
    res = comfy.client.queue(g)
    text = res.ui(node_id, "text")
    assert isinstance(text, list) and len(text) == 1, res.outputs
    return text[0]


def test_node_registered_with_tooltips(comfy):
    info = comfy.client.object_info("PatchbayLoraInfo")
    assert info["display_name"] == "LoRA Info"
    assert info["category"] == "loaders/LoRA Patchbay"
    assert info["description"] and info["output_node"] is True
    for section in ("required", "optional"):
        for name, spec in info["input"][section].items():
            assert spec[1].get("tooltip"), f"{name} has no tooltip"
    for node_id in ("PatchbayLoraBlockWeights", "PatchbayLoraSchedule"):
        other = comfy.client.object_info(node_id)
        assert other["description"] and other["category"] == "loaders/LoRA Patchbay"
        assert all(spec[1].get("tooltip") for spec in other["input"]["required"].values()), node_id


def test_info_without_model(comfy, tiny_lora, tiny_lora_file):
    g = Graph()
    n = g.node("PatchbayLoraInfo", lora_name=tiny_lora)
    text = _info(comfy, g, n.id)
    sha = hashlib.sha256(tiny_lora_file.read_bytes()).hexdigest()
    assert f"sha256: {sha}" in text
    assert "patchbay_token" in text and "blue hair" in text
    assert text.index("patchbay_token") < text.index("blue hair")  # most frequent first
    assert f"ranks: {RANK}" in text and f"alphas: {ALPHA:g}" in text
    assert "sd1" in text  # trained base from ss_base_model_version
    assert "coverage" not in text


def test_info_with_model_reports_coverage(comfy, tiny_lora, tiny_sd15_unet):
    g = Graph()
    model = tiny_sd15_unet.load(g)
    n = g.node("PatchbayLoraInfo", lora_name=tiny_lora, model=model)
    text = _info(comfy, g, n.id)
    total = len(TARGETS) + 2
    assert f"coverage: {len(TARGETS)}/{total} modules applied" in text, text
    assert "not applied, unknown name: 1" in text, text
    assert "not applied, shape mismatch: 1" in text, text
    # The blocks the LoRA touches, in the numbers LoRA Block Weights uses.
    assert "blocks touched: in 1; mid 1; out 1" in text, text
    assert "SD1.5" in text


# ----------------------------------------------------------------- block weights end to end


def _lora_factors(path: Path) -> dict[str, torch.Tensor]:
    """ComfyUI parameter key → the kohya ΔW at strength 1 ((alpha/rank)·up·down), from the file itself."""
    from safetensors.torch import load_file
    sd = load_file(str(path))
    out = {}
    for module in TARGETS:
        key = "lora_unet_" + module.replace(".", "_")
        delta = (ALPHA / RANK) * (sd[key + ".lora_up.weight"] @ sd[key + ".lora_down.weight"])
        out[f"diffusion_model.{module}.weight"] = delta.double()
    return out


def _probe(comfy, g: Graph, model) -> dict:
    n = g.node("PatchbayTestModelProbe", model=model, key_filter="transformer_blocks.0.attn", max_keys=10000)
    weights = comfy.client.queue(g).ui(n.id, "weights")
    return weights[0] if isinstance(weights, list) else weights


def test_block_weights_node_scales_blocks_in_comfyui(comfy, tiny_lora, tiny_lora_file, tiny_sd15_unet):
    """Stack → LoRA Block Weights → Apply LoRA Stack (merge): each block moves by s·m·ΔW, alpha untouched."""
    info = comfy.client.object_info()
    if "PatchbayApplyLoraStack" not in info:
        pytest.skip("the stack nodes are not registered in this tree")
    g = Graph()
    base = _probe(comfy, g, tiny_sd15_unet.load(g))

    strength = 1.5
    spec = "default=1, in=0, mid=0.5, out1=-1"
    g = Graph()
    model = tiny_sd15_unet.load(g)
    rows = json.dumps([{"on": True, "lora": tiny_lora, "strength": strength, "strength_clip": strength}])
    stack = g.node("PatchbayLoraStack", rows=rows)
    weighted = g.node("PatchbayLoraBlockWeights", lora_stack=stack[0], row=1, lora_name="",
                      preset="custom (use block_vector)", block_vector=spec, A=4.0, B=1.0)
    applied = g.node("PatchbayApplyLoraStack", model=model, stack=weighted[0], mode="merge")
    patched = _probe(comfy, g, applied[0])

    multipliers = {"input_blocks": 0.0, "middle_block": 0.5, "output_blocks": -1.0}
    deltas = _lora_factors(tiny_lora_file)
    checked = 0
    for key, delta in deltas.items():
        m = multipliers[key.split(".")[1]]
        if m == 0.0:
            assert patched[key]["sha256"] == base[key]["sha256"], f"{key} changed under multiplier 0"
            continue
        want = strength * m * float(delta.sum())
        got = patched[key]["sum"] - base[key]["sum"]
        assert abs(got - want) <= 2e-3 * abs(want) + 1e-4, (key, got, want)
        checked += 1
    assert checked == 2
    # Keys the LoRA does not touch stay bit-identical.
    untouched = [k for k in base if k not in deltas and "output_blocks.0." not in k]
    assert untouched and all(patched[k]["sha256"] == base[k]["sha256"] for k in untouched)


# ----------------------------------------------------------------- schedules end to end

SCHEDULE_STRENGTH = 50.0  # the tiny LoRA is weak; make its effect far above float noise


def _latent(comfy, g: Graph, latent) -> dict:
    n = g.node("PatchbayTestLatentStats", samples=latent)
    stats = comfy.client.queue(g).ui(n.id, "latent_stats")
    return stats[0]


def _scheduled_model(g: Graph, tiny_lora: str, model, keyframes: str | None):
    rows = json.dumps([{"on": True, "lora": tiny_lora, "strength": SCHEDULE_STRENGTH,
                        "strength_clip": SCHEDULE_STRENGTH}])
    stack = g.node("PatchbayLoraStack", rows=rows)[0]
    if keyframes is not None:
        stack = g.node("PatchbayLoraSchedule", lora_stack=stack, row=1, lora_name="", keyframes=keyframes,
                       start_strength=1.0, end_strength=1.0, start_percent=0.0, end_percent=1.0,
                       interpolation="hold")[0]
    return g.node("PatchbayApplyLoraStack", model=model, stack=stack, mode="bypass")[0]


def _advanced(g: Graph, tiny_sd15_unet, model, latent, start: int, end: int, add_noise: bool):
    cond = tiny_sd15_unet.cond(g)
    return g.node("KSamplerAdvanced", model=model, add_noise="enable" if add_noise else "disable",
                  noise_seed=7, steps=2, cfg=1.0, sampler_name="euler", scheduler="simple",
                  positive=cond, negative=cond, latent_image=latent, start_at_step=start, end_at_step=end,
                  return_with_leftover_noise="enable" if end < 2 else "disable")[0]


def test_schedule_switches_lora_per_step(comfy, tiny_lora, tiny_sd15_unet):
    """'LoRA for step 1 only' equals sampling step 1 with the LoRA and step 2 without it."""
    def run(keyframes):
        g = Graph()
        model = _scheduled_model(g, tiny_lora, tiny_sd15_unet.load(g), keyframes)
        latent = _advanced(g, tiny_sd15_unet, model, tiny_sd15_unet.empty_latent(g), 0, 2, True)
        return _latent(comfy, g, latent)

    # Oracle: two sampler calls, LoRA model for step 1, the base model for step 2.
    g = Graph()
    base = tiny_sd15_unet.load(g)
    with_lora = _scheduled_model(g, tiny_lora, base, None)
    half = _advanced(g, tiny_sd15_unet, with_lora, tiny_sd15_unet.empty_latent(g), 0, 1, True)
    oracle = _latent(comfy, g, _advanced(g, tiny_sd15_unet, base, half, 1, 2, False))

    first_only = run("0:1, 0.3:0")  # hold: 1 on step 1 (fraction 0), 0 on step 2 (fraction ≈ 0.5)
    always = run(None)
    never = run("0:0")
    assert always["sha256"] != never["sha256"]
    spread = abs(always["sum"] - never["sum"]) + abs(always["abs_sum"] - never["abs_sum"])
    assert spread > 1e-3, "the LoRA barely changes the output; the test cannot tell schedules apart"
    for key in ("sum", "abs_sum", "std"):
        assert first_only[key] == pytest.approx(oracle[key], rel=1e-5, abs=1e-6), key
    assert abs(first_only["abs_sum"] - always["abs_sum"]) > 1e-6 or first_only["sha256"] != always["sha256"]


def test_chained_scheduled_stacks_keep_both_schedules(comfy, tiny_lora, tiny_sd15_unet):
    """Two Apply LoRA Stack nodes in a row, the same LoRA on step 1 from the first and on step 2
    from the second: together they must equal that LoRA on both steps from one stack."""
    g = Graph()
    first = _scheduled_model(g, tiny_lora, tiny_sd15_unet.load(g), "0:1, 0.3:0")
    both = _scheduled_model(g, tiny_lora, first, "0:0, 0.3:1")
    chained = _latent(comfy, g, _advanced(g, tiny_sd15_unet, both, tiny_sd15_unet.empty_latent(g), 0, 2, True))

    g = Graph()
    single = _scheduled_model(g, tiny_lora, tiny_sd15_unet.load(g), None)
    always = _latent(comfy, g, _advanced(g, tiny_sd15_unet, single, tiny_sd15_unet.empty_latent(g), 0, 2, True))
    for key in ("sum", "abs_sum", "std"):
        assert chained[key] == pytest.approx(always[key], rel=1e-5, abs=1e-6), key


def test_info_rereads_a_file_changed_under_the_same_name(comfy, tmp_path):
    path = write_tiny_sd15_lora(tmp_path / "changing.safetensors")
    name = comfy.add_model("loras", path, "patchbay/changing.safetensors")
    g = Graph()
    n = g.node("PatchbayLoraInfo", lora_name=name)
    assert "title: patchbay tiny" in _info(comfy, g, n.id)
    from safetensors.torch import load_file
    tensors = load_file(str(path))
    time.sleep(0.01)  # a distinct mtime even on coarse clocks
    save_file(tensors, str(path), metadata={"ss_output_name": "renamed inside"})
    assert "title: renamed inside" in _info(comfy, g, n.id)
