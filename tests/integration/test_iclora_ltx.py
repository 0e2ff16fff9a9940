"""IC-LoRA guide, crop, step window, loader and core equivalence inside real ComfyUI trees.

Each ComfyUI version runs ``iclora_driver.py`` once in its own process (the
``comfy`` package of two versions cannot share an interpreter); every check
of the driver is reported here as its own test.
"""
import json
import os
import subprocess
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
CHECKS = [
    "auto_crop_keeps_frame_count", "guide_tokens_pinned_during_sampling", "manual_mode_then_crop_node",
    "crop_node_on_auto_cropped_latent", "guide_conds_reused_on_cropped_latent_sample_without_guides",
    "disabled_iclora_gives_base_result",
    "two_guides_same_start_and_negative_index", "step_window", "attention_strength_and_mask", "matches_core_addguide_cropguides",
    "documented_difference_mid_video_single_frame", "small_grid_k2", "bad_inputs",
    "loader_reads_metadata_whatever_strength", "stack_rows_carry_their_own_ic_params",
    "panel_auto_crop_through_loader_wrapper",
    "panel_sampling_returns_target_panel",
]


def comfy_dirs():
    # conftest.py's discovery: only installs a Python can start (see comfy_harness.find_installs)
    import comfy_harness
    return [str(i.path) for i in comfy_harness.discover_installs()]


DIRS = comfy_dirs()
_cache: dict[str, dict] = {}


def run_driver(comfy_dir, tmp_path_factory):
    if comfy_dir not in _cache:
        out = tmp_path_factory.mktemp("iclora") / "results.json"
        import comfy_harness
        proc = subprocess.run([comfy_harness.python_for(comfy_dir), str(HERE / "iclora_driver.py"), comfy_dir, str(out)],
                              capture_output=True, text=True, timeout=1200)
        if proc.returncode != 0 or not out.exists():
            _cache[comfy_dir] = {"error": proc.stderr[-4000:]}
        else:
            _cache[comfy_dir] = json.loads(out.read_text())
    return _cache[comfy_dir]


@pytest.mark.skipif(not DIRS, reason="no ComfyUI tree found (set COMFYUI_DIR)")
@pytest.mark.parametrize("comfy_dir", DIRS, ids=[os.path.basename(d) for d in DIRS])
@pytest.mark.parametrize("check", CHECKS)
def test_iclora_in_comfyui(comfy_dir, check, tmp_path_factory):
    res = run_driver(comfy_dir, tmp_path_factory)
    assert "error" not in res, f"driver crashed in {comfy_dir}:\n{res.get('error')}"
    r = res["results"].get(check)
    assert r is not None, f"check {check} did not run"
    if r.startswith("skip"):
        pytest.skip(f"{os.path.basename(comfy_dir)}: {r}")
    assert r == "ok", r
