"""Every shipped workflow (workflows/*.json, ours and the IC-LoRA ones) checked
against a real ComfyUI's /object_info, served as a workflow template, and our
own LoRA workflows converted to API prompts and run on the tiny SD1.5 model.

The UI format is what the frontend saves: ``widgets_values`` holds the widget
inputs in /object_info order, plus one ``control_after_generate`` value after
a seed widget and one upload value after an image/video upload combo; a widget
converted to an input keeps its value there and gets an ``inputs`` entry with
``"widget": {"name": ...}``.  ``links`` rows are
``[id, origin_id, origin_slot, target_id, target_slot, type]``.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Iterator

import pytest
import torch
from safetensors.torch import save_file

from comfy_harness import REPO_ROOT, PACK_DIR_NAME, latent_stats

WORKFLOW_DIR = REPO_ROOT / "workflows"
WORKFLOWS = sorted(WORKFLOW_DIR.glob("*.json"))
WF_IDS = [p.stem for p in WORKFLOWS]
# Our own workflows: SD1.5-shaped, so they run on the harness's tiny SD1.5 checkpoint.
RUNNABLE = ("lora-stack-basic", "lora-block-weights", "lora-schedule-bypass", "lora-stack-loader")
STACK_NODES = ("PatchbayLoraStack", "PatchbayLoraStackLoader")

FRONTEND_ONLY = {"Note", "MarkdownNote", "Reroute", "PrimitiveNode"}
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
UPLOAD_FLAGS = ("image_upload", "video_upload", "animated_image_upload")
SEED_NAMES = ("seed", "noise_seed")
CONTROL_VALUES = {"fixed", "increment", "decrement", "randomize"}
FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin", ".gguf", ".png", ".jpg", ".jpeg",
                 ".webp", ".mp4", ".webm", ".mov", ".gif", ".wav", ".mp3", ".flac")
MUTED, BYPASSED = 2, 4


# ----------------------------------------------------------------- schema helpers (pure)

def load_workflow(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def info_inputs(entry: dict) -> Iterator[tuple[str, list, bool]]:
    """(name, spec, required) of a node's inputs in /object_info order."""
    inputs = entry["input"]
    order = entry.get("input_order") or {s: list(inputs.get(s, {})) for s in ("required", "optional")}
    for section in ("required", "optional"):
        for name in order.get(section, []):
            yield name, inputs[section][name], section == "required"


def _opts(spec) -> dict:
    return spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}


def is_widget(spec) -> bool:
    kind = spec[0]
    return (isinstance(kind, list) or kind in WIDGET_TYPES) and not _opts(spec).get("forceInput")


def widget_kind(spec) -> str:
    return "COMBO" if isinstance(spec[0], list) else spec[0]


def combo_options(spec) -> list:
    return spec[0] if isinstance(spec[0], list) else _opts(spec).get("options", [])


def extra_widget_value(name: str, spec) -> str | None:
    """The frontend's hidden companion value saved after this widget, if any."""
    opts = _opts(spec)
    if widget_kind(spec) == "INT" and (opts.get("control_after_generate") or name in SEED_NAMES):
        return "control_after_generate"
    if widget_kind(spec) == "COMBO" and any(opts.get(f) for f in UPLOAD_FLAGS):
        return "upload"
    return None


def widget_layout(entry: dict) -> list[tuple[str, Any, str | None]]:
    """One item per saved widget value: (input name, spec, None) or (input name, spec, companion)."""
    out = []
    for name, spec, _ in info_inputs(entry):
        if not is_widget(spec):
            continue
        out.append((name, spec, None))
        extra = extra_widget_value(name, spec)
        if extra:
            out.append((name, spec, extra))
    return out


def input_type(entry: dict, name: str) -> str | None:
    for n, spec, _ in info_inputs(entry):
        if n == name:
            return widget_kind(spec) if is_widget(spec) else spec[0]
    return None


def types_compatible(link_type: str, slot_type: str) -> bool:
    if "*" in (link_type, slot_type) or link_type == slot_type:
        return True
    return bool(set(str(link_type).split(",")) & set(str(slot_type).split(",")))


def _looks_like_file(value: str) -> bool:
    return value.lower().endswith(FILE_SUFFIXES)


def check_value(name: str, spec, extra: str | None, value) -> str | None:
    """Why ``value`` cannot be this widget's value, or None."""
    if extra == "control_after_generate":
        return None if value in CONTROL_VALUES else f"{name}: control_after_generate {value!r}"
    if extra == "upload":
        return None if isinstance(value, str) else f"{name}: upload value {value!r}"
    kind, opts = widget_kind(spec), _opts(spec)
    if kind in ("INT", "FLOAT"):
        ok_type = (isinstance(value, int) if kind == "INT" else isinstance(value, (int, float))) \
            and not isinstance(value, bool)
        if not ok_type or not math.isfinite(value):
            return f"{name}: {kind} widget holds {value!r}"
        lo, hi = opts.get("min"), opts.get("max")
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            return f"{name}: {value!r} outside [{lo}, {hi}]"
        return None
    if kind == "BOOLEAN":
        return None if isinstance(value, bool) else f"{name}: BOOLEAN widget holds {value!r}"
    if kind == "STRING":
        return None if isinstance(value, str) else f"{name}: STRING widget holds {value!r}"
    # COMBO: file lists depend on the install; fixed option lists must contain the value
    options = combo_options(spec)
    if not isinstance(value, str) and not isinstance(value, (int, float)):
        return f"{name}: combo holds {value!r}"
    file_combo = not options or any(isinstance(o, str) and _looks_like_file(o) for o in options) \
        or (isinstance(value, str) and _looks_like_file(value))
    if not file_combo and value not in options:
        return f"{name}: {value!r} is not one of {options[:12]}"
    return None


# ----------------------------------------------------------------- checks (pure)

def node_type_problems(wf: dict, info: dict) -> list[str]:
    return [f"node {n['id']}: unknown node type {n['type']!r}"
            for n in wf["nodes"] if n["type"] not in info and n["type"] not in FRONTEND_ONLY]


def strip_frontend_nulls(values: list, keep: int = 0) -> list:
    """Without the trailing nulls the frontend saves for widgets that do not serialize
    (e.g. LoRA Stack's buttons): ``[rows, null, null]`` is ``[rows]``."""
    values = list(values or [])
    while len(values) > keep and values[-1] is None:
        values.pop()
    return values


def widget_problems(wf: dict, info: dict) -> list[str]:
    problems = []
    for n in wf["nodes"]:
        if n["type"] not in info:
            continue
        layout = widget_layout(info[n["type"]])
        values = n.get("widgets_values", [])
        where = f"node {n['id']} ({n['type']})"
        if isinstance(values, dict):  # some frontends save a name → value map
            problems.append(f"{where}: widgets_values is a dict; expected the list the frontend saves")
            continue
        values = strip_frontend_nulls(values, len(layout))
        if len(values) != len(layout):
            names = [name if extra is None else f"{name}:{extra}" for name, _, extra in layout]
            problems.append(f"{where}: {len(values)} widget values {values!r} for {len(layout)} widgets {names}")
            continue
        for (name, spec, extra), value in zip(layout, values):
            why = check_value(name, spec, extra, value)
            if why:
                problems.append(f"{where}: {why}")
    return problems


def link_problems(wf: dict, info: dict) -> list[str]:
    problems = []
    nodes = {n["id"]: n for n in wf["nodes"]}
    if len(nodes) != len(wf["nodes"]):
        problems.append("duplicate node ids")
    if wf.get("last_node_id", 0) < max(nodes, default=0):
        problems.append(f"last_node_id {wf.get('last_node_id')} < largest node id {max(nodes)}")
    link_ids = [row[0] for row in wf["links"]]
    if len(set(link_ids)) != len(link_ids):
        problems.append("duplicate link ids")
    if link_ids and wf.get("last_link_id", 0) < max(link_ids):
        problems.append(f"last_link_id {wf.get('last_link_id')} < largest link id {max(link_ids)}")

    for row in wf["links"]:
        if len(row) != 6:
            problems.append(f"link {row!r}: expected [id, origin, origin_slot, target, target_slot, type]")
            continue
        lid, src, src_slot, dst, dst_slot, ltype = row
        where = f"link {lid} ({src}:{src_slot} -> {dst}:{dst_slot} {ltype})"
        s, d = nodes.get(src), nodes.get(dst)
        if s is None or d is None:
            problems.append(f"{where}: {'origin' if s is None else 'target'} node does not exist")
            continue
        if s["type"] in info:
            outs = info[s["type"]]["output"]
            if not 0 <= src_slot < len(outs):
                problems.append(f"{where}: {s['type']} has {len(outs)} outputs")
            elif not types_compatible(ltype, outs[src_slot]):
                problems.append(f"{where}: {s['type']} output {src_slot} is {outs[src_slot]}")
        ui_outs = s.get("outputs") or []
        if not (0 <= src_slot < len(ui_outs) and lid in (ui_outs[src_slot].get("links") or [])):
            problems.append(f"{where}: origin node's outputs[{src_slot}].links does not list it")
        ui_ins = d.get("inputs") or []
        if not 0 <= dst_slot < len(ui_ins):
            problems.append(f"{where}: target node has {len(ui_ins)} input slots")
            continue
        slot = ui_ins[dst_slot]
        if slot.get("link") != lid:
            problems.append(f"{where}: target inputs[{dst_slot}] ({slot.get('name')}) links {slot.get('link')}")
        if d["type"] in info:
            want = input_type(info[d["type"]], slot["name"])
            if want is None:
                problems.append(f"{where}: {d['type']} has no input {slot['name']!r}")
            elif not types_compatible(ltype, want):
                problems.append(f"{where}: input {slot['name']!r} of {d['type']} takes {want}")

    for n in wf["nodes"]:
        if n["type"] not in info:
            continue
        entry = info[n["type"]]
        where = f"node {n['id']} ({n['type']})"
        ui_outs = n.get("outputs") or []
        if [o.get("type") for o in ui_outs] != list(entry["output"]):
            problems.append(f"{where}: output slots {[o.get('type') for o in ui_outs]} != {entry['output']}")
        by_name = {i["name"]: i for i in n.get("inputs") or []}
        for name in by_name:
            if input_type(entry, name) is None:
                problems.append(f"{where}: input slot {name!r} is not an input of the node")
        if n.get("mode", 0) in (MUTED, BYPASSED):
            continue
        for name, spec, required in info_inputs(entry):
            if required and not is_widget(spec) and (by_name.get(name) or {}).get("link") is None:
                problems.append(f"{where}: required input {name!r} is not connected")
    return problems


# ----------------------------------------------------------------- UI → API prompt

def ui_to_api(wf: dict, info: dict) -> dict:
    """The API prompt the frontend would queue for this workflow (no muted/bypassed nodes)."""
    links = {row[0]: row for row in wf["links"]}
    prompt = {}
    for n in wf["nodes"]:
        if n["type"] in FRONTEND_ONLY or n.get("mode", 0) == MUTED:
            continue
        if n.get("mode", 0) == BYPASSED:
            raise NotImplementedError(f"node {n['id']} is bypassed; the converter does not rewire")
        entry = info[n["type"]]
        values = iter(n.get("widgets_values", []))
        slots = {i["name"]: i for i in n.get("inputs") or []}
        inputs = {}
        for name, spec, _ in info_inputs(entry):
            if is_widget(spec):
                inputs[name] = next(values)
                if extra_widget_value(name, spec):
                    next(values)
            link = (slots.get(name) or {}).get("link")
            if link is not None:
                _, src, src_slot, _, _, _ = links[link]
                inputs[name] = [str(src), src_slot]
        prompt[str(n["id"])] = {"class_type": n["type"], "inputs": inputs}
    return prompt


def stack_rows(value: str) -> list[dict]:
    """The rows of a ``rows`` widget: a legacy row list or the editor's v2 object."""
    data = json.loads(value)
    return data["rows"] if isinstance(data, dict) else data


def with_rows(value: str, rows: list[dict]) -> str:
    data = json.loads(value)
    return json.dumps({**data, "rows": rows} if isinstance(data, dict) else rows)


def lora_names_in(wf: dict) -> list[str]:
    """LoRA files a workflow loads: stack rows and loader/info lora_name combos."""
    names = []
    for n in wf["nodes"]:
        if n["type"] in STACK_NODES:
            for row in stack_rows(n["widgets_values"][0]):
                names.append(row["lora"])
        elif n["type"] in ("PatchbayLoraLoader", "PatchbayLoraInfo"):
            names.append(n["widgets_values"][0])
    return list(dict.fromkeys(names))


# ----------------------------------------------------------------- fixtures

@pytest.fixture(scope="session")
def all_object_info(comfy_client) -> dict:
    return comfy_client.object_info()


@pytest.fixture(params=WORKFLOWS, ids=WF_IDS)
def workflow(request) -> dict:
    return load_workflow(request.param)


def _assert_none(problems: list[str]) -> None:
    assert not problems, "\n".join(problems)


# ----------------------------------------------------------------- schema tests

def test_workflows_exist_and_parse():
    assert {p.stem for p in WORKFLOWS} >= set(RUNNABLE)
    for p in WORKFLOWS:
        wf = load_workflow(p)
        assert wf.get("version") == 0.4 and isinstance(wf.get("nodes"), list) \
            and isinstance(wf.get("links"), list), p.name
        for key in ("groups", "extra"):
            assert key in wf, f"{p.name}: no {key!r}"
        for n in wf["nodes"]:
            for key in ("id", "type", "pos", "size", "mode", "widgets_values"):
                assert key in n, f"{p.name}: node {n.get('id')} lacks {key!r}"


def test_node_types_exist(workflow, all_object_info):
    _assert_none(node_type_problems(workflow, all_object_info))


def test_widget_values_match_object_info(workflow, all_object_info):
    _assert_none(widget_problems(workflow, all_object_info))


def test_links_and_slots_match_object_info(workflow, all_object_info):
    _assert_none(link_problems(workflow, all_object_info))


def test_checks_catch_broken_workflows(all_object_info):
    """The checks above can fail: a shifted widget list, a wrong link type, a missing input."""
    wf = load_workflow(WORKFLOW_DIR / "lora-stack-basic.json")
    info = all_object_info
    broken = json.loads(json.dumps(wf))
    ks = next(n for n in broken["nodes"] if n["type"] == "KSampler")
    ks["widgets_values"].pop(1)  # control_after_generate forgotten
    assert any("KSampler" in p for p in widget_problems(broken, info))
    ap = next(n for n in broken["nodes"] if n["type"] == "PatchbayApplyLoraStack")
    ap["widgets_values"] = ["merged"]
    assert any("'merged' is not one of" in p for p in widget_problems(broken, info))
    broken["links"][0][5] = "LATENT"
    assert any("output 0 is" in p for p in link_problems(broken, info))
    for slot in ap["inputs"]:
        if slot["name"] == "stack":
            slot["link"] = None
    assert any("required input 'stack'" in p for p in link_problems(broken, info))
    assert node_type_problems({"nodes": [{"id": 1, "type": "PatchbayNoSuchNode"}]}, info)
    # the frontend saves nulls for LoRA Stack's buttons: fine; a real extra value is not
    as_saved = json.loads(json.dumps(wf))
    stack = next(n for n in as_saved["nodes"] if n["type"] == "PatchbayLoraStack")
    stack["widgets_values"] += [None, None]
    assert widget_problems(as_saved, info) == []
    stack["widgets_values"] += ["[]"]
    assert any("PatchbayLoraStack" in p for p in widget_problems(as_saved, info))


def test_templates_listed_and_served(comfy_client):
    listed = comfy_client.get("/workflow_templates")
    assert sorted(listed.get(PACK_DIR_NAME, [])) == sorted(WF_IDS), listed
    for p in WORKFLOWS:
        served = comfy_client.get(f"/api/workflow_templates/{PACK_DIR_NAME}/{p.name}")
        assert served == load_workflow(p), p.name


# ----------------------------------------------------------------- docs/nodes.md in sync

PACK_MODULE = f"custom_nodes.{PACK_DIR_NAME}"


def test_nodes_doc_covers_every_node_input_and_option(all_object_info):
    """docs/nodes.md names every node of the pack; for the non-IC nodes every input and
    output, and every fixed option (modes, presets, interpolations) in backticks."""
    doc = (REPO_ROOT / "docs" / "nodes.md").read_text(encoding="utf-8")
    ours = {k: v for k, v in all_object_info.items() if v.get("python_module") == PACK_MODULE}
    assert "PatchbayLoraStack" in ours, sorted(all_object_info)[:20]
    missing = []
    for node_id, entry in sorted(ours.items()):
        if f"`{node_id}`" not in doc:
            missing.append(node_id)
        if node_id.startswith("PatchbayIC"):
            continue  # inputs and outputs documented in docs/iclora.md
        for name, spec, _ in info_inputs(entry):
            if f"`{name}`" not in doc:
                missing.append(f"{node_id}.{name}")
            if is_widget(spec) and widget_kind(spec) == "COMBO" and not any(
                    isinstance(o, str) and _looks_like_file(o) for o in combo_options(spec)):
                missing += [f"{node_id}.{name}={o}" for o in combo_options(spec)
                            if f"`{o}`" not in doc and not str(o).startswith("custom")]
        missing += [f"{node_id} -> {o}" for o in entry["output_name"] if f"`{o}`" not in doc]
    _assert_none([f"docs/nodes.md does not mention {m}" for m in missing])


# ----------------------------------------------------------------- running our workflows

# Attention projections of the tiny SD1.5 UNet (input, middle and output blocks)
# and of CLIP-L, so block weights and CLIP strengths all have something to act on.
UNET_TARGETS = {
    "input_blocks.1.1.transformer_blocks.0.attn1.to_q": (320, 320),
    "input_blocks.1.1.transformer_blocks.0.attn2.to_v": (320, 768),
    "middle_block.1.transformer_blocks.0.attn1.to_k": (320, 320),
    "output_blocks.0.1.transformer_blocks.0.attn1.to_v": (320, 320),
    "output_blocks.1.1.transformer_blocks.0.ff.net.2": (320, 1280),
}
TE_TARGETS = {"text_model.encoder.layers.0.self_attn.q_proj": (768, 768)}


def write_kohya_lora(path: Path, seed: int, rank: int = 4, scale: float = 0.2) -> Path:
    g = torch.Generator().manual_seed(seed)
    tensors = {}
    for prefix, targets in (("lora_unet_", UNET_TARGETS), ("lora_te_", TE_TARGETS)):
        for module, (fan_out, fan_in) in targets.items():
            key = prefix + module.replace(".", "_")
            tensors[key + ".lora_down.weight"] = torch.randn(rank, fan_in, generator=g) * scale
            tensors[key + ".lora_up.weight"] = torch.randn(fan_out, rank, generator=g) * scale
            tensors[key + ".alpha"] = torch.tensor(float(rank))
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata={"ss_network_module": "networks.lora",
                                            "ss_base_model_version": "sd_v1"})
    return path


@pytest.fixture(scope="session")
def workflow_lora_files(tmp_path_factory) -> dict[str, Path]:
    """One tiny kohya LoRA per LoRA name our runnable workflows use (different seeds)."""
    root = tmp_path_factory.mktemp("workflow-loras")
    names = []
    for stem in RUNNABLE:
        names += lora_names_in(load_workflow(WORKFLOW_DIR / f"{stem}.json"))
    return {name: write_kohya_lora(root / f"lora{i}.safetensors", seed=100 + i)
            for i, name in enumerate(dict.fromkeys(names))}


@pytest.fixture(scope="session")
def workflow_models(comfy, tiny_sd15_checkpoint, workflow_lora_files) -> None:
    """The tiny checkpoint and LoRAs installed under the names the workflows use."""
    for stem in RUNNABLE:
        for n in load_workflow(WORKFLOW_DIR / f"{stem}.json")["nodes"]:
            if n["type"] == "CheckpointLoaderSimple":
                comfy.add_model("checkpoints", tiny_sd15_checkpoint.path, n["widgets_values"][0])
    for name, path in workflow_lora_files.items():
        comfy.add_model("loras", path, name)


def tiny_prompt(wf: dict, info: dict) -> dict:
    """The workflow's prompt shrunk to the tiny model: 32 px, 2 steps, cfg 1 (one model call per
    step, so the negative prompt is the positive one: fp16 CLIP on CPU is the slow part),
    latent stats instead of VAE decode + save (the tiny checkpoint has no VAE)."""
    prompt = ui_to_api(wf, info)
    for nid in [k for k, v in prompt.items() if v["class_type"] in ("VAEDecode", "SaveImage")]:
        del prompt[nid]
    for node in [v for v in prompt.values() if v["class_type"] == "KSampler"]:
        negative = node["inputs"]["negative"][0]
        node["inputs"]["negative"] = node["inputs"]["positive"]
        if not any(negative in (i[0] for i in n["inputs"].values() if isinstance(i, list))
                   for n in prompt.values()):
            del prompt[negative]
    for nid, node in list(prompt.items()):
        ins = node["inputs"]
        if node["class_type"] == "EmptyLatentImage":
            ins.update(width=32, height=32, batch_size=1)
        elif node["class_type"] == "KSampler":
            ins.update(steps=2, cfg=1.0)
            prompt[f"stats{nid}"] = {"class_type": "PatchbayTestLatentStats",
                                     "inputs": {"samples": [nid, 0]}}
    return prompt


def remove_nodes(prompt: dict, class_type: str, passthrough: str) -> dict:
    """The prompt without every ``class_type`` node: consumers of its output 0 get its
    ``passthrough`` input instead."""
    prompt = json.loads(json.dumps(prompt))
    gone = {k: v["inputs"][passthrough] for k, v in prompt.items() if v["class_type"] == class_type}
    assert gone, f"no {class_type} in the prompt"
    for k in gone:
        del prompt[k]
    changed = True
    while changed:  # chains of removed nodes
        changed = False
        for node in prompt.values():
            for name, value in node["inputs"].items():
                if isinstance(value, list) and len(value) == 2 and value[0] in gone:
                    node["inputs"][name] = gone[value[0]]
                    changed = True
    return prompt


def rows_off(prompt: dict) -> dict:
    prompt = json.loads(json.dumps(prompt))
    for node in prompt.values():
        if node["class_type"] in STACK_NODES:
            rows = node["inputs"]["rows"]
            node["inputs"]["rows"] = with_rows(rows, [{**r, "on": False} for r in stack_rows(rows)])
        elif node["class_type"] == "PatchbayLoraLoader":
            node["inputs"]["enabled"] = False
    return prompt


# What each workflow's feature is, as the prompt without it (its result must differ).
ABLATIONS = {
    "lora-stack-basic": rows_off,
    "lora-block-weights": lambda p: remove_nodes(p, "PatchbayLoraBlockWeights", "lora_stack"),
    "lora-schedule-bypass": lambda p: remove_nodes(p, "PatchbayLoraSchedule", "lora_stack"),
    "lora-stack-loader": rows_off,
}


@pytest.mark.parametrize("stem", RUNNABLE)
def test_workflow_runs_on_tiny_model(stem, comfy, all_object_info, workflow_models):
    wf = load_workflow(WORKFLOW_DIR / f"{stem}.json")
    prompt = tiny_prompt(wf, all_object_info)
    res = comfy.client.queue(prompt, timeout=240)
    st = latent_stats(res)
    assert st["finite"] and st["shape"] == [1, 4, 4, 4], st
    for nid, node in prompt.items():
        if node["class_type"] == "PatchbayLoraInfo":
            text = res.ui(nid, "text")[0]
            assert "coverage:" in text and "ERROR" not in text, text
        elif node["class_type"] == "PatchbayLoraStackLoader":
            rows = stack_rows(node["inputs"]["rows"])
            (summary,) = res.ui(nid, "patchbay_summary")
            on = sum(1 for r in rows if r["on"])
            assert summary["text"].startswith(f"{on} of {len(rows)} on · ") and summary["missing"] == 0, summary
            assert summary["matched"] == summary["keys"] > 0, summary
    without = comfy.client.queue(ABLATIONS[stem](prompt), timeout=240)
    assert latent_stats(without)["sha256"] != st["sha256"], \
        f"{stem}: the result does not change without the workflow's LoRA feature"


# ----------------------------------------------------------------- the real frontend

CHROMIUM = "/usr/bin/chromium"


@pytest.fixture(scope="module")
def frontend_page(comfy):
    """The server's own frontend in headless Chromium (skips without playwright/chromium)."""
    sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} missing (apt-get install -y chromium)")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM,
                                    args=["--no-sandbox", "--headless=new", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.patchbay_errors = []
        page.on("pageerror", lambda e: page.patchbay_errors.append(str(e)))
        try:
            comfy.client.post("/settings/Comfy.TutorialCompleted", True)
        except Exception:  # old server without the settings route
            pass
        page.goto(comfy.url)
        page.wait_for_function("() => window.app && window.app.graph && window.LiteGraph "
                               "&& window.app.extensions && window.app.extensions.length > 0", timeout=120_000)
        yield page
        browser.close()


def test_frontend_loads_workflow_and_queues_the_same_prompt(workflow, frontend_page, all_object_info):
    """The frontend knows every node type, saves the same widget values back, and its
    graphToPrompt gives exactly the prompt our converter builds."""
    res = frontend_page.evaluate("""async (wf) => {
        await app.loadGraphData(wf, true, false, 'patchbay-test');
        const nodes = app.graph.nodes.map(n => ({id: n.id, type: n.type,
            known: !!LiteGraph.registered_node_types[n.type]}));
        const saved = app.graph.serialize().nodes.map(n => ({id: n.id, widgets_values: n.widgets_values}));
        const out = (await app.graphToPrompt()).output;
        return {nodes, saved, out};
    }""", workflow)
    assert sorted(n["id"] for n in res["nodes"]) == sorted(n["id"] for n in workflow["nodes"])
    assert not [n for n in res["nodes"] if not n["known"]], res["nodes"]
    ours = {n["id"]: strip_frontend_nulls(n.get("widgets_values")) for n in workflow["nodes"]}
    _assert_none([f"node {s['id']}: frontend saves {s['widgets_values']!r}, file has {ours[s['id']]!r}"
                  for s in res["saved"] if strip_frontend_nulls(s["widgets_values"]) != ours[s["id"]]])
    frontend = {k: {"class_type": v["class_type"], "inputs": v["inputs"]} for k, v in res["out"].items()}
    assert frontend == ui_to_api(workflow, all_object_info)
    assert not frontend_page.patchbay_errors, frontend_page.patchbay_errors
