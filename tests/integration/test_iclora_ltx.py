"""IC-LoRA guide, crop, step window, loader and core equivalence inside real ComfyUI trees.

Each ComfyUI version runs ``iclora_driver.py`` once in its own process (the
``comfy`` package of two versions cannot share an interpreter); every check
of the driver is reported here as its own test.
"""
import os

import pytest

from driver_kit import assert_check, driver_dirs, run_driver

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


DIRS = driver_dirs()



@pytest.mark.skipif(not DIRS, reason="no ComfyUI tree found (set COMFYUI_DIR)")
@pytest.mark.parametrize("comfy_dir", DIRS, ids=[os.path.basename(d) for d in DIRS])
@pytest.mark.parametrize("check", CHECKS)
def test_iclora_in_comfyui(comfy_dir, check, tmp_path_factory):
    assert_check(run_driver("iclora_driver.py", comfy_dir, tmp_path_factory, timeout=1200), comfy_dir, check)
