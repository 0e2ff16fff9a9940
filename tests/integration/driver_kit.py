"""What the child-process drivers (``iclora_driver.py``, ``iclora_av_driver.py``) and the tests that run them share.

A driver runs inside one ComfyUI tree with that tree's own Python, records each check as "ok", "skip: why" or
"FAIL: why", and writes them to a JSON file; the test module turns each recorded check into one pytest test.

Driver side: ``start()`` (before any ComfyUI import) and the ``check`` decorator with ``RESULTS``.
Test side: ``driver_dirs()``, ``run_driver()`` (once per driver and tree) and ``assert_check()``.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import traceback
import types
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = str(HERE.parents[1])

# ------------------------------------------------------------------------------------------- driver side

RESULTS: dict[str, str] = {}


def start() -> tuple[str, str]:
    """Read ``COMFY_DIR OUT_JSON`` from argv, make the tree importable on the CPU, and register our pack as the
    package ``lora_patchbay`` without running ``nodes/__init__.py`` (no node registration, no routes)."""
    tree, out = os.path.abspath(sys.argv[1]), sys.argv[2]
    sys.argv = [sys.argv[0], "--cpu"]
    sys.path.insert(0, tree)
    os.chdir(tree)
    import comfy.options
    comfy.options.enable_args_parsing()
    for name, path in (("lora_patchbay", REPO), ("lora_patchbay.nodes", os.path.join(REPO, "nodes"))):
        pkg = types.ModuleType(name)
        pkg.__path__ = [path]
        sys.modules[name] = pkg
    return tree, out


def check(fn):
    """Run ``fn`` now and record its outcome under its name; a returned "skip: …" string is a skip."""
    name = fn.__name__
    try:
        r = fn()
        RESULTS[name] = r if isinstance(r, str) and r.startswith("skip") else "ok"
    except AssertionError as e:
        RESULTS[name] = f"FAIL: {e}\n{traceback.format_exc(limit=-4)}"
    except Exception as e:  # noqa: BLE001 - every failure is a recorded result, never a dead driver
        RESULTS[name] = f"FAIL: {type(e).__name__}: {e}\n{traceback.format_exc(limit=-4)}"
    return fn


# --------------------------------------------------------------------------------------------- test side

_RUNS: dict[tuple[str, str], dict] = {}


def driver_dirs() -> list[str]:
    """The trees conftest.py's discovery found (only installs some Python can start)."""
    import comfy_harness
    return [str(i.path) for i in comfy_harness.discover_installs()]


def run_driver(script: str, comfy_dir: str, tmp_path_factory, timeout: int) -> dict:
    """Run ``script`` (a driver beside this file) once per tree and keep its results for the session."""
    key = (script, comfy_dir)
    if key not in _RUNS:
        import comfy_harness
        out = tmp_path_factory.mktemp(Path(script).stem) / "results.json"
        proc = subprocess.run([comfy_harness.python_for(comfy_dir), str(HERE / script), comfy_dir, str(out)],
                              capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0 or not out.exists():
            _RUNS[key] = {"error": proc.stderr[-4000:]}
        else:
            _RUNS[key] = json.loads(out.read_text())
    return _RUNS[key]


def assert_check(res: dict, comfy_dir: str, check_name: str) -> None:
    import pytest
    assert "error" not in res, f"driver crashed in {comfy_dir}:\n{res.get('error')}"
    r = res["results"].get(check_name)
    assert r is not None, f"check {check_name} did not run"
    if r.startswith("skip"):
        pytest.skip(f"{os.path.basename(comfy_dir)}: {r}")
    assert r == "ok", r
