"""IC-LoRA guides on LTX-2 combined audio-video latents, against core's nodes, in each ComfyUI tree.

``iclora_av_driver.py`` runs once per version in that version's own Python
(a tiny LTXAV model built from the host's own classes); each of its checks
is reported here as its own test.
"""
import os

import pytest

from driver_kit import assert_check, driver_dirs, run_driver

CHECKS = [
    "old_host_refuses_clearly", "guide_on_av_latent_matches_core_order", "sampling_auto_crop_matches_core_crop",
    "crop_node_on_av_latent_matches_core_crop", "step_window_and_attention_on_av_latent",
    "custom_sampler_outputs_cropped", "bad_av_inputs_refused_before_encoding",
]


DIRS = driver_dirs()



@pytest.mark.skipif(not DIRS, reason="no ComfyUI tree found (set COMFYUI_DIR)")
@pytest.mark.parametrize("comfy_dir", DIRS, ids=[os.path.basename(d) for d in DIRS])
@pytest.mark.parametrize("check", CHECKS)
def test_iclora_av_in_comfyui(comfy_dir, check, tmp_path_factory):
    assert_check(run_driver("iclora_av_driver.py", comfy_dir, tmp_path_factory, timeout=900), comfy_dir, check)
