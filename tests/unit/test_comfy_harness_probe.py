"""The integration harness's choice of Python for a found ComfyUI, on fake installs.

A ComfyUI whose requirements the chosen Python lacks is skipped with one line
(what is missing, the pip command, COMFYUI_PYTHON), never started to fail.
"""
import importlib.util
import os
import sys
from pathlib import Path

import pytest

HARNESS = Path(__file__).resolve().parents[1] / "integration" / "comfy_harness.py"


@pytest.fixture(scope="module")
def ch():
    spec = importlib.util.spec_from_file_location("patchbay_comfy_harness_probe", HARNESS)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def _fake_comfy(root: Path, requirements: str, venv_flags: str | None = None) -> Path:
    """A tree discover_installs accepts; with ``venv_flags`` a .venv/bin/python that runs
    this interpreter with those flags (``-S``: no site-packages, so it lacks pytest)."""
    root.mkdir(parents=True)
    (root / "main.py").write_text("")
    (root / "nodes.py").write_text("")
    (root / "comfy").mkdir()
    (root / "comfyui_version.py").write_text('__version__ = "9.9.9"\n')
    (root / "requirements.txt").write_text(requirements)
    if venv_flags is not None:
        py = root / ".venv" / "bin" / "python"
        py.parent.mkdir(parents=True)
        py.write_text(f'#!/bin/sh\nexec "{sys.executable}" {venv_flags} "$@"\n')
        py.chmod(0o755)
    return root


REQS = "pytest\ntorchaudio\n# an inline comment\n\n#non essential dependencies:\nno-such-optional-package\n"


def test_startup_requirements_skip_optional_sections(ch, tmp_path):
    tree = _fake_comfy(tmp_path / "c", REQS + "\n")
    assert ch.startup_requirements(tree) == ["pytest"]


def test_tree_venv_lacking_a_requirement_falls_back_to_a_python_that_has_it(ch, tmp_path):
    tree = _fake_comfy(tmp_path / "c", REQS, venv_flags="-S")
    env = {"COMFYUI_DIR": str(tree)}
    assert ch.python_candidates(tree, env)[0] == str(tree / ".venv" / "bin" / "python")
    usable, unusable = ch.find_installs(env)
    assert unusable == [] and [u.python for u in usable] == [sys.executable]


def test_tree_venv_is_preferred_when_it_has_everything(ch, tmp_path):
    tree = _fake_comfy(tmp_path / "c", REQS, venv_flags="")
    usable, _ = ch.find_installs({"COMFYUI_DIR": str(tree)})
    assert [u.python for u in usable] == [str(tree / ".venv" / "bin" / "python")]


def test_missing_requirement_is_one_skip_line_not_an_error(ch, tmp_path):
    tree = _fake_comfy(tmp_path / "c", "pytest\npatchbay-surely-missing-pkg>=1.0\n", venv_flags="")
    usable, unusable = ch.find_installs({"COMFYUI_DIR": str(tree)})
    assert usable == [] and len(unusable) == 1
    (u,) = unusable
    assert u.missing == ("patchbay-surely-missing-pkg",) and u.python == str(tree / ".venv" / "bin" / "python")
    line = ch.unusable_line(unusable)
    assert "\n" not in line and "patchbay-surely-missing-pkg" in line and "9.9.9" in line
    assert "-m pip install -r" in line and "requirements.txt" in line and "COMFYUI_PYTHON" in line


def test_comfyui_python_is_the_only_candidate_when_set(ch, tmp_path):
    tree = _fake_comfy(tmp_path / "c", REQS, venv_flags="")
    env = {"COMFYUI_DIR": str(tree), "COMFYUI_PYTHON": sys.executable}
    assert ch.python_candidates(tree, env) == [sys.executable]
    assert [u.python for u in ch.find_installs(env)[0]] == [sys.executable]
    broken = {"COMFYUI_DIR": str(tree), "COMFYUI_PYTHON": str(tmp_path / "no" / "python")}
    usable, unusable = ch.find_installs(broken)
    assert usable == [] and "does not run" in ch.unusable_line(unusable)


def test_portable_embedded_python_is_a_candidate(ch, tmp_path):
    tree = _fake_comfy(tmp_path / "portable" / "ComfyUI", REQS)
    emb = tmp_path / "portable" / "python_embeded" / "python.exe"
    emb.parent.mkdir()
    emb.write_text("")
    assert ch.python_candidates(tree, {})[0] == str(emb)


def test_the_server_runs_with_the_installs_python(ch, tmp_path):
    inst = ch.ComfyInstall(path=tmp_path, version="9.9.9", python="/opt/comfy/python")
    srv = ch.ComfyServer(inst, base_dir=tmp_path / "base")
    srv.port = 1
    assert srv.command()[0] == "/opt/comfy/python"
