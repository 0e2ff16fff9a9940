"""Structure of the IC-LoRA example workflows (UI format)."""
import json
from pathlib import Path

import pytest

WF = Path(__file__).resolve().parents[2] / "workflows"
FILES = ["iclora-ltx-control.json", "iclora-ltx-two-stage.json", "flux-incontext-panel.json"]
# widget values of our nodes, in order (sockets excluded)
OUR_WIDGETS = {
    "PatchbayICLoraGuide": ["frame_idx", "strength", "attention_strength", "crop", "start_percent", "end_percent"],
    "PatchbayICLoraLoader": ["lora_name", "strength", "enabled", "mode", "crop"],
    "PatchbayICLoraPanel": ["width", "height", "layout", "panels", "crop"],
    "PatchbayICLoraCropGuides": [],
    "PatchbayICLoraCropPanel": [],
}


def load(name):
    return json.loads((WF / name).read_text())


@pytest.mark.parametrize("name", FILES)
def test_links_are_consistent(name):
    wf = load(name)
    nodes = {n["id"]: n for n in wf["nodes"]}
    assert wf["last_node_id"] == max(nodes) and wf["last_link_id"] == len(wf["links"])
    for lid, src, sslot, dst, dslot, typ in wf["links"]:
        assert lid in nodes[src]["outputs"][sslot]["links"]
        inp = nodes[dst]["inputs"][dslot]
        assert inp["link"] == lid
        assert inp["type"] == typ or inp["type"] == "*", (name, inp, typ)
    for n in wf["nodes"]:
        for inp in n.get("inputs", []):
            if inp.get("shape") != 7:  # required sockets are connected
                assert inp["link"] is not None, (name, n["type"], inp["name"])


@pytest.mark.parametrize("name", FILES)
def test_our_nodes_have_the_right_widgets(name):
    wf = load(name)
    ours = [n for n in wf["nodes"] if n["type"].startswith("Patchbay")]
    assert ours
    for n in ours:
        assert len(n["widgets_values"]) == len(OUR_WIDGETS[n["type"]]), n


def test_control_workflow_has_no_crop_node_and_two_stage_crops_before_upscale():
    wf = load("iclora-ltx-control.json")
    types = [n["type"] for n in wf["nodes"]]
    assert "PatchbayICLoraGuide" in types and "PatchbayICLoraCropGuides" not in types
    wf = load("iclora-ltx-two-stage.json")
    nodes = {n["id"]: n for n in wf["nodes"]}
    crop = next(n for n in wf["nodes"] if n["type"] == "PatchbayICLoraCropGuides")
    up = next(n for n in wf["nodes"] if n["type"] == "ImageScaleBy")
    # follow the upscale's input back to the crop node
    src = {l[0]: l for l in wf["links"]}
    dec = nodes[src[up["inputs"][0]["link"]][1]]
    assert dec["type"] == "VAEDecode" and nodes[src[dec["inputs"][0]["link"]][1]] is crop


def test_panel_workflow_feeds_the_panel_latent_to_the_sampler():
    wf = load("flux-incontext-panel.json")
    nodes = {n["id"]: n for n in wf["nodes"]}
    ks = next(n for n in wf["nodes"] if n["type"] == "KSampler")
    li = next(i for i in ks["inputs"] if i["name"] == "latent_image")
    link = next(l for l in wf["links"] if l[0] == li["link"])
    assert nodes[link[1]]["type"] == "PatchbayICLoraPanel"
