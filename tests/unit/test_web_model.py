"""The web editor's pure modules (stack model, fuzzy search) under Node's own test runner.

Skips with one line when Node.js is not installed: the pack itself needs no Node (no build step)."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
NODE = shutil.which("node")


@pytest.mark.skipif(NODE is None, reason="node (Node.js >= 20) not installed: apt-get install -y nodejs")
def test_web_rows_model():
    # web/ has no package.json: ask Node to read .js files as ES modules
    res = subprocess.run([NODE, "--experimental-default-type=module", "--test", str(HERE / "web" / "rows.test.mjs")],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-2000:]
