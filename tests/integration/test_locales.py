"""English strings of our nodes in ComfyUI's custom-node ``locales/`` layout, served by /i18n.

``locales/en/nodeDefs.json`` holds, per node, what the frontend translates
(``nodeDefs.<node>.display_name / description / inputs.<name>.name|tooltip /
outputs.<i>.name|tooltip``); ``main.json`` the category label.  The server
merges ``nodeDefs.json`` into the language's object under ``nodeDefs``.

The English file must say what the server says (display names, descriptions,
every input and output with its tooltip): rewrite it from a running server
with ``PATCHBAY_WRITE_LOCALES=1 pytest tests/integration/test_locales.py``.
"""
from __future__ import annotations

import json
import os

from comfy_harness import PACK_DIR_NAME, REPO_ROOT

LOCALES = REPO_ROOT / "locales" / "en"
PACK_MODULE = f"custom_nodes.{PACK_DIR_NAME}"


def node_strings(entry: dict) -> dict:
    """The nodeDefs entry the frontend reads for one /object_info entry."""
    out: dict = {"display_name": entry["display_name"]}
    if entry.get("description"):
        out["description"] = entry["description"]
    inputs = {}
    for section in ("required", "optional"):
        for name, spec in entry["input"].get(section, {}).items():
            opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
            inputs[name] = {"name": name, **({"tooltip": opts["tooltip"]} if opts.get("tooltip") else {})}
    if inputs:
        out["inputs"] = inputs
    outputs = {}
    tips = entry.get("output_tooltips") or []
    for i, name in enumerate(entry.get("output_name") or []):
        outputs[str(i)] = {"name": name, **({"tooltip": tips[i]} if i < len(tips) and tips[i] else {})}
    if outputs:
        out["outputs"] = outputs
    return out


def expected_node_defs(info: dict) -> dict:
    return {k: node_strings(v) for k, v in sorted(info.items()) if v.get("python_module") == PACK_MODULE}


def test_locales_match_the_nodes_and_are_served(comfy_client):
    info = comfy_client.object_info()
    expected = expected_node_defs(info)
    assert "PatchbayLoraStackLoader" in expected
    path = LOCALES / "nodeDefs.json"
    if os.environ.get("PATCHBAY_WRITE_LOCALES"):
        path.parent.mkdir(parents=True, exist_ok=True)
        kept = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
        # nodes this host lacks (another ComfyUI version registers them) keep their strings
        merged = {k: v for k, v in kept.items() if k not in expected and k.startswith("Patchbay")}
        merged.update(expected)
        path.write_text(json.dumps(dict(sorted(merged.items())), indent=2, ensure_ascii=False) + "\n",
                        encoding="utf-8")
    ours = json.loads(path.read_text(encoding="utf-8"))
    stale = sorted(k for k in expected if ours.get(k) != expected[k])
    assert not stale, (
        f"locales/en/nodeDefs.json is out of date for {stale}; rewrite it with "
        "PATCHBAY_WRITE_LOCALES=1 pytest tests/integration/test_locales.py")
    for node_id, strings in ours.items():
        assert strings["display_name"] and strings.get("description"), node_id
        for name, inp in strings.get("inputs", {}).items():
            assert inp.get("tooltip"), f"{node_id}.{name} has no tooltip"
    i18n = comfy_client.get("/i18n")
    served = i18n.get("en", {})
    for node_id, strings in ours.items():
        assert served.get("nodeDefs", {}).get(node_id) == strings, node_id
    main = json.loads((LOCALES / "main.json").read_text(encoding="utf-8"))
    assert served.get("nodeCategories", {}).get("LoRA Patchbay") == main["nodeCategories"]["LoRA Patchbay"]
