"""IC-LoRA guides on LTX-2 combined audio-video latents, against core's nodes, in each ComfyUI tree.

``iclora_av_driver.py`` runs once per version in that version's own Python
(a tiny LTXAV model built from the host's own classes); each of its checks
is reported here as its own test.
"""
import json
import os
import subprocess
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
CHECKS = [
    "old_host_refuses_clearly", "guide_on_av_latent_matches_core_order", "sampling_auto_crop_matches_core_crop",
    "crop_node_on_av_latent_matches_core_crop", "step_window_and_attention_on_av_latent",
    "custom_sampler_outputs_cropped", "bad_av_inputs_refused_before_encoding",
]


def comfy_dirs():
    import comfy_harness
    return [str(i.path) for i in comfy_harness.discover_installs()]


DIRS = comfy_dirs()
_cache: dict[str, dict] = {}


def run_driver(comfy_dir, tmp_path_factory):
    if comfy_dir not in _cache:
        import comfy_harness
        out = tmp_path_factory.mktemp("iclora_av") / "results.json"
        proc = subprocess.run([comfy_harness.python_for(comfy_dir), str(HERE / "iclora_av_driver.py"), comfy_dir,
                               str(out)], capture_output=True, text=True, timeout=900)
        if proc.returncode != 0 or not out.exists():
            _cache[comfy_dir] = {"error": proc.stderr[-4000:]}
        else:
            _cache[comfy_dir] = json.loads(out.read_text())
    return _cache[comfy_dir]


@pytest.mark.skipif(not DIRS, reason="no ComfyUI tree found (set COMFYUI_DIR)")
@pytest.mark.parametrize("comfy_dir", DIRS, ids=[os.path.basename(d) for d in DIRS])
@pytest.mark.parametrize("check", CHECKS)
def test_iclora_av_in_comfyui(comfy_dir, check, tmp_path_factory):
    res = run_driver(comfy_dir, tmp_path_factory)
    assert "error" not in res, f"driver crashed in {comfy_dir}:\n{res.get('error')}"
    r = res["results"].get(check)
    assert r is not None, f"check {check} did not run"
    if r.startswith("skip"):
        pytest.skip(f"{os.path.basename(comfy_dir)}: {r}")
    assert r == "ok", r
