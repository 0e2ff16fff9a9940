"""Every shipped workflow opens with its short description: a Note, first in the file and above the graph."""
import json
from pathlib import Path

import pytest

WORKFLOWS = sorted((Path(__file__).resolve().parents[2] / "workflows").glob("*.json"))
MAX_CHARS = 240


@pytest.mark.parametrize("path", WORKFLOWS, ids=[p.stem for p in WORKFLOWS])
def test_workflow_opens_with_its_short_description(path):
    wf = json.loads(path.read_text(encoding="utf-8"))
    first = wf["nodes"][0]
    assert first["type"] == "Note" and first.get("title") == "About this workflow", first
    text = first["widgets_values"][0]
    assert 40 <= len(text) <= MAX_CHARS and "\n" not in text, text
    others = wf["nodes"][1:]
    assert all(first["pos"][1] + first["size"][1] <= n["pos"][1] for n in others), "the note must sit above the graph"
    # visible when the workflow opens: the saved view offset puts the note's top on screen
    offset = wf["extra"]["ds"]["offset"]
    assert 0 <= first["pos"][1] + offset[1] <= 200 and 0 <= first["pos"][0] + offset[0] <= 200
    assert wf["last_node_id"] == max(n["id"] for n in wf["nodes"])
    assert len({n["id"] for n in wf["nodes"]}) == len(wf["nodes"])


def test_every_workflow_is_checked():
    assert {"lora-stack-loader", "lora-stack-basic"} <= {p.stem for p in WORKFLOWS}
