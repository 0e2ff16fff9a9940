"""API-format workflows: find the Patchbay stack node and the seeds, write a cell into them.

An API-format workflow (ComfyUI's "Export (API)") maps node ids to
``{"class_type": …, "inputs": {…}}``.  The stack goes into the ``rows``
input of the Patchbay stack/loader node as a JSON array of rows ``{on,
lora, strength, strength_clip}`` — the legacy value every version of the
node accepts.  Seeds go into every sampler-like node's ``seed`` /
``noise_seed`` widget (not into a linked input).
"""
from __future__ import annotations

import copy
import hashlib
import json
from typing import Any, Optional

from ..errors import RenderError
from ..stack import LoraStack, parse_rows

STACK_CLASSES = ("PatchbayLoraStack", "PatchbayLoraStackLoader")
SEED_INPUTS = ("seed", "noise_seed")


def load_workflow(path: str) -> dict:
    try:
        with open(path, "r", encoding="utf-8") as f:
            data = json.load(f)
    except OSError as e:
        raise RenderError(f"cannot read the workflow: {e.strerror}", file=path) from None
    except ValueError as e:
        raise RenderError(f"the workflow is not valid JSON ({e})", file=path) from None
    return check_workflow(data, path)


def check_workflow(data: Any, path: Optional[str] = None) -> dict:
    if isinstance(data, dict) and isinstance(data.get("prompt"), dict):
        data = data["prompt"]  # a saved /prompt body
    if isinstance(data, dict) and isinstance(data.get("nodes"), list) and "links" in data:
        raise RenderError("this is a UI workflow, not an API-format one", file=path,
                          fix="in ComfyUI use Workflow → Export (API) and pass that file")
    if not isinstance(data, dict) or not data or not all(
            isinstance(v, dict) and isinstance(v.get("class_type"), str) and isinstance(v.get("inputs", {}), dict)
            for v in data.values()):
        raise RenderError("the workflow is not an API-format workflow ({node id: {class_type, inputs}})",
                          file=path, fix="export it with Workflow → Export (API)")
    return data


def stack_nodes(workflow: dict) -> list[str]:
    """Ids of the Patchbay stack nodes whose ``rows`` is a widget value (not a link)."""
    out = []
    for node_id, node in workflow.items():
        rows = node.get("inputs", {}).get("rows")
        if node["class_type"] in STACK_CLASSES or (node["class_type"].startswith("Patchbay") and rows is not None):
            if not isinstance(rows, list):  # a link is [node, output]
                out.append(str(node_id))
    return sorted(out, key=lambda k: (len(k), k))


def find_stack_node(workflow: dict, node_id: Optional[str] = None) -> str:
    ids = stack_nodes(workflow)
    if node_id is not None:
        if str(node_id) not in ids:
            raise RenderError(f"node {node_id} is not a Patchbay stack node with a rows widget",
                              fix=f"use one of: {', '.join(ids) or 'none in this workflow'}")
        return str(node_id)
    if not ids:
        raise RenderError("the workflow has no Patchbay stack node (PatchbayLoraStack) to write the stack into",
                          fix="add a LoRA Stack node and export the workflow again")
    if len(ids) > 1:
        raise RenderError(f"the workflow has {len(ids)} Patchbay stack nodes ({', '.join(ids)})",
                          fix="pick one with --node ID")
    return ids[0]


def stack_of(workflow: dict, node_id: str) -> LoraStack:
    """The stack currently in the node's ``rows`` (JSON rows or pasted tags)."""
    rows = workflow[node_id]["inputs"].get("rows", "[]")
    from ..tags import has_tags, parse_prompt_tags
    if isinstance(rows, str) and has_tags(rows) and rows.strip()[:1] not in "[{":
        tags = parse_prompt_tags(rows)
        tags.raise_problems()
        return parse_rows([r.as_row() for r in tags.rows])
    return parse_rows(rows)


def seed_inputs(workflow: dict) -> list[tuple[str, str]]:
    """(node id, input name) of every seed widget."""
    out = []
    for node_id, node in workflow.items():
        for name in SEED_INPUTS:
            value = node.get("inputs", {}).get(name)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                out.append((str(node_id), name))
    return out


def cell_prompt(workflow: dict, node_id: str, stack: LoraStack, seed: Optional[int]) -> dict:
    """A copy of the workflow with ``stack`` in the stack node and ``seed`` in every seed widget."""
    prompt = copy.deepcopy(workflow)
    rows = [{"on": e.enabled, "lora": e.lora, "strength": e.strength_model, "strength_clip": e.strength_clip}
            for e in stack.entries]
    prompt[node_id]["inputs"]["rows"] = json.dumps(rows)
    if seed is not None:
        for nid, name in seed_inputs(prompt):
            prompt[nid]["inputs"][name] = int(seed)
    return prompt


def prompt_key(prompt: dict) -> str:
    """A stable id of a prompt's content: equal prompts render equal images."""
    text = json.dumps(prompt, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


__all__ = ["load_workflow", "check_workflow", "find_stack_node", "stack_of", "seed_inputs", "cell_prompt",
           "prompt_key", "STACK_CLASSES"]
