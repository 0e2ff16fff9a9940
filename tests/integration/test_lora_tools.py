"""Save Merged LoRA and Extract LoRA in a real ComfyUI (every found version), on the tiny SD1.5 UNet.

The saved files load back through our loader AND core's LoraLoaderModelOnly
with the weights the stack (or the fine-tune) has; bad output names are
refused when the prompt is queued, and nothing is written for them.
"""
from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from comfy_harness import Graph, PromptRejected

RANK = 4
# Attention projections of the harness's tiny SD1.5 UNet (320 channels, context 768).
TARGETS = {
    "input_blocks.1.1.transformer_blocks.0.attn1.to_q": (320, 320),
    "input_blocks.1.1.transformer_blocks.0.attn2.to_k": (320, 768),
    "middle_block.1.transformer_blocks.0.attn1.to_v": (320, 320),
    "output_blocks.1.1.transformer_blocks.0.attn2.to_v": (320, 768),
}
KEYS = [f"diffusion_model.{m}.weight" for m in TARGETS]


def _write_lora(path: Path, seed: int, alpha: float) -> Path:
    g = torch.Generator().manual_seed(seed)
    tensors = {}
    for module, (out_f, in_f) in TARGETS.items():
        key = "lora_unet_" + module.replace(".", "_")
        tensors[key + ".lora_down.weight"] = torch.randn(RANK, in_f, generator=g) * 0.05
        tensors[key + ".lora_up.weight"] = torch.randn(out_f, RANK, generator=g) * 0.05
        tensors[key + ".alpha"] = torch.tensor(alpha)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path))
    return path


@pytest.fixture(scope="session")
def tool_loras(comfy, tmp_path_factory):
    folder = tmp_path_factory.mktemp("tool-loras")
    return [comfy.add_model("loras", _write_lora(folder / f"tools_{i}.safetensors", 20 + i, alpha), 
                            f"patchbay_tools/tools_{i}.safetensors", copy=True)
            for i, alpha in enumerate((2.0, 4.0))]


def _require(comfy, *nodes):
    info = comfy.client.object_info()
    missing = [n for n in nodes if n not in info]
    if missing:
        pytest.skip(f"nodes not registered in this tree: {missing}")


def _probe(comfy, g: Graph, model) -> dict:
    n = g.node("PatchbayTestModelProbe", model=model, key_filter="transformer_blocks.0.attn", max_keys=10000)
    weights = comfy.client.queue(g).ui(n.id, "weights")
    return weights[0] if isinstance(weights, list) else weights


def _loaded(comfy, unet, name: str, loader: str) -> dict:
    """Probe of the tiny UNet with LoRA ``name`` at strength 1 through ``loader`` ("ours" or "core")."""
    g = Graph()
    if loader == "ours":
        node = g.node("PatchbayLoraLoader", model=unet.load(g), lora_name=name, strength_model=1.0,
                      strength_clip=1.0, enabled=True, mode="merge")
    else:
        node = g.node("LoraLoaderModelOnly", model=unet.load(g), lora_name=name, strength_model=1.0)
    return _probe(comfy, g, node[0])


def _close(got: dict, want: dict, base: dict, tol: float = 1e-3) -> None:
    for key in KEYS:
        moved = abs(want[key]["abs_sum"] - base[key]["abs_sum"]) + abs(want[key]["sum"] - base[key]["sum"])
        assert moved > 0, f"{key}: the reference did not change"
        for stat in ("sum", "abs_sum"):
            assert abs(got[key][stat] - want[key][stat]) <= tol * max(moved, 1e-6), (key, stat, got[key][stat],
                                                                                     want[key][stat])


def _saved_name(res, node_id: str) -> str:
    text = res.ui(node_id, "text")[0]
    assert text.startswith("saved "), text
    return text.split(":", 1)[0][len("saved "):]


@pytest.fixture(scope="session")
def merged(comfy, tool_loras, tiny_sd15_unet):
    """(saved name, stack's weights, base weights): the stack baked by Save Merged LoRA."""
    _require(comfy, "PatchbaySaveMergedLora", "PatchbayLoraStack", "PatchbayLoraLoader")
    rows = json.dumps([{"on": True, "lora": tool_loras[0], "strength": 0.8},
                       {"on": True, "lora": tool_loras[1], "strength": -0.5}])
    g = Graph()
    base = _probe(comfy, g, tiny_sd15_unet.load(g))
    # the oracle: core's own loader applying the two rows one after the other
    g = Graph()
    a = g.node("LoraLoaderModelOnly", model=tiny_sd15_unet.load(g), lora_name=tool_loras[0], strength_model=0.8)
    b = g.node("LoraLoaderModelOnly", model=a[0], lora_name=tool_loras[1], strength_model=-0.5)
    want = _probe(comfy, g, b[0])

    g = Graph()
    stack = g.node("PatchbayLoraStack", rows=rows)
    saver = g.node("PatchbaySaveMergedLora", lora_stack=stack[0], filename=f"patchbay_tools/merged_{uuid.uuid4().hex[:8]}",
                   rank=0, dtype="fp32")
    res = comfy.client.queue(g)
    name = _saved_name(res, saver.id)
    assert "concat 4" in res.ui(saver.id, "text")[0] and "rank 8" in res.ui(saver.id, "text")[0]
    path = comfy.models_dir / "loras" / name
    assert path.is_file()
    from safetensors import safe_open
    with safe_open(str(path), "pt") as f:
        sources = json.loads(f.metadata()["patchbay_sources"])
    assert [s["strength"] for s in sources] == [0.8, -0.5] and all(len(s["sha256"]) == 64 for s in sources)

    return name, want, base


@pytest.mark.parametrize("loader", ["ours", "core"])
def test_merged_file_loads_like_the_stack(comfy, merged, tiny_sd15_unet, loader):
    name, want, base = merged
    _close(_loaded(comfy, tiny_sd15_unet, name, loader), want, base)


@pytest.fixture(scope="session")
def extracted(comfy, tool_loras, tiny_sd15_unet):
    """(saved name, fine-tune's weights, base weights): Extract LoRA of a core-patched clone."""
    _require(comfy, "PatchbayExtractLora", "PatchbayLoraLoader")
    g = Graph()
    base = _probe(comfy, g, tiny_sd15_unet.load(g))
    # the "fine-tune": the tiny UNet with a rank-4 LoRA applied by core (pending patches on a clone)
    g = Graph()
    tuned = g.node("LoraLoaderModelOnly", model=tiny_sd15_unet.load(g), lora_name=tool_loras[0], strength_model=1.0)
    want = _probe(comfy, g, tuned[0])

    g = Graph()
    unet = tiny_sd15_unet.load(g)
    tuned = g.node("LoraLoaderModelOnly", model=unet, lora_name=tool_loras[0], strength_model=1.0)
    ex = g.node("PatchbayExtractLora", base_model=unet, tuned_model=tuned[0],
                filename=f"patchbay_tools/extracted_{uuid.uuid4().hex[:8]}", rank=8, energy=0.0, dtype="fp32",
                bias_and_norms=True)
    res = comfy.client.queue(g)
    text = res.ui(ex.id, "text")[0]
    name = _saved_name(res, ex.id)
    assert "dense-svd 4" in text and "rank 4" in text  # only the 4 changed layers, at their true rank
    assert text.count("energy 1.0000") == 4, text

    return name, want, base


@pytest.mark.parametrize("loader", ["ours", "core"])
def test_extracted_file_loads_like_the_fine_tune(comfy, extracted, tiny_sd15_unet, loader):
    name, want, base = extracted
    _close(_loaded(comfy, tiny_sd15_unet, name, loader), want, base)


@pytest.mark.parametrize("bad, reason", [("../escaped", "path traversal"), ("/tmp/abs_lora", "absolute paths"),
                                         ("sub/.hidden", "hidden part"), ("x.ckpt", "only .safetensors")])
def test_bad_output_names_are_refused_at_queue_time(comfy, tool_loras, tiny_sd15_unet, bad, reason):
    _require(comfy, "PatchbaySaveMergedLora", "PatchbayExtractLora", "PatchbayLoraStack")
    loras = comfy.models_dir / "loras"
    before = sorted(str(p.relative_to(comfy.models_dir)) for p in comfy.models_dir.rglob("*"))
    g = Graph()
    stack = g.node("PatchbayLoraStack", rows=json.dumps([{"on": True, "lora": tool_loras[0], "strength": 1.0}]))
    g.node("PatchbaySaveMergedLora", lora_stack=stack[0], filename=bad, rank=0, dtype="fp16")
    with pytest.raises(PromptRejected, match=reason):
        comfy.client.queue(g)
    g = Graph()
    unet = tiny_sd15_unet.load(g)
    g.node("PatchbayExtractLora", base_model=unet, tuned_model=unet, filename=bad, rank=4, energy=0.0,
           dtype="fp16", bias_and_norms=True)
    with pytest.raises(PromptRejected, match=reason):
        comfy.client.queue(g)
    assert sorted(str(p.relative_to(comfy.models_dir)) for p in comfy.models_dir.rglob("*")) == before
    assert not any(p.name.startswith(".patchbay-") for p in loras.rglob("*"))


def test_an_existing_name_is_refused_and_kept(comfy, tool_loras):
    _require(comfy, "PatchbaySaveMergedLora", "PatchbayLoraStack")
    target = comfy.models_dir / "loras" / tool_loras[1]
    before = target.read_bytes()
    g = Graph()
    stack = g.node("PatchbayLoraStack", rows=json.dumps([{"on": True, "lora": tool_loras[0], "strength": 1.0}]))
    g.node("PatchbaySaveMergedLora", lora_stack=stack[0], filename=tool_loras[1][: -len(".safetensors")], rank=0,
           dtype="fp16")
    with pytest.raises(PromptRejected, match="already exists"):
        comfy.client.queue(g)
    assert target.read_bytes() == before


@pytest.mark.parametrize("naming", ["comfy", "kohya"])
def test_converted_files_load_in_core_like_the_original(comfy, tool_loras, tiny_sd15_unet, naming, tmp_path):
    """`convert` against the UNet file ComfyUI loads: core's loader reads the kohya and ComfyUI namings with
    the same ΔW.  (PEFT naming is for diffusers, which the unit tests load it in: core maps SD attention
    projections of ``unet.`` files only in the old ``processor.to_q`` spelling.)"""
    from lora_core.tools.convert import convert
    from lora_core.tools.writer import write_lora
    src = comfy.models_dir / "loras" / tool_loras[1]
    result = convert(str(src), to=naming, model=str(tiny_sd15_unet.path), dtype=torch.float32)
    out = write_lora(result.tensors, str(tmp_path / f"converted_{naming}.safetensors"), metadata=result.metadata)
    name = comfy.add_model("loras", out, f"patchbay_tools/converted_{naming}_{uuid.uuid4().hex[:6]}.safetensors",
                           copy=True)
    g = Graph()
    base = _probe(comfy, g, tiny_sd15_unet.load(g))
    _close(_loaded(comfy, tiny_sd15_unet, name, "core"), _loaded(comfy, tiny_sd15_unet, tool_loras[1], "core"), base)


def test_nan_input_fails_the_node_and_leaves_no_file(comfy, tmp_path):
    _require(comfy, "PatchbaySaveMergedLora", "PatchbayLoraStack")
    from comfy_harness import PromptExecutionFailed
    bad = _write_lora(tmp_path / "nan.safetensors", 31, 2.0)
    from safetensors.torch import load_file
    t = load_file(str(bad))
    next(v for k, v in t.items() if k.endswith("lora_up.weight"))[0, 0] = float("nan")
    save_file(t, str(bad))
    name = comfy.add_model("loras", bad, f"patchbay_tools/nan_{uuid.uuid4().hex[:6]}.safetensors", copy=True)
    loras = comfy.models_dir / "loras"
    before = sorted(str(p.relative_to(loras)) for p in loras.rglob("*"))
    g = Graph()
    stack = g.node("PatchbayLoraStack", rows=json.dumps([{"on": True, "lora": name, "strength": 1.0}]))
    g.node("PatchbaySaveMergedLora", lora_stack=stack[0], filename="patchbay_tools_new/from_nan", rank=0,
           dtype="fp16")
    with pytest.raises(PromptExecutionFailed, match="NaN or Inf"):
        comfy.client.queue(g)
    assert sorted(str(p.relative_to(loras)) for p in loras.rglob("*")) == before
