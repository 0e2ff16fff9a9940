"""A tiny LTX-Video *checkpoint* (transformer + video VAE) for IC-LoRA server tests.

CheckpointLoaderSimple passes the file's metadata to the VAE on every
supported ComfyUI version (VAELoader does not on v0.3.64), so the VAE config
travels in the ``config`` metadata entry.  The VAE keeps 128 channels all the
way (3 × compress_all + one res block, patch 4): 8×32×32 compression like the
real one, ~15 M weights.  Key names and shapes come from the ComfyUI tree's
own VideoVAE class, run in a subprocess; values are seeded random numbers.
"""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

HERE = Path(__file__).resolve().parent

VAE_CONFIG = {
    "dims": 3, "in_channels": 3, "out_channels": 3, "latent_channels": 128,
    "blocks": [["compress_all", 1], ["compress_all", 1], ["compress_all", 1], ["res_x", 1]],
    "scaling_factor": 1.0, "norm_layer": "pixel_norm", "patch_size": 4, "latent_log_var": "uniform",
    "use_quant_conv": False, "causal_decoder": False,
}

_SCRIPT = r"""
import sys, json, os
comfy_dir, out, here, cfg = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
sys.argv = [sys.argv[0], "--cpu"]
sys.path.insert(0, comfy_dir); sys.path.insert(0, here)
import comfy.options; comfy.options.enable_args_parsing()
import torch
from safetensors.torch import save_file
from comfy.ldm.lightricks.vae.causal_video_autoencoder import VideoVAE
import tiny_models
g = torch.Generator().manual_seed(11)
sd = {}
for k, t in VideoVAE(config=cfg).state_dict().items():
    if t.is_floating_point():
        v = torch.randn(t.shape, generator=g) * 0.02
        if k.endswith("std-of-means"):
            v = torch.ones(t.shape)
        elif k.endswith("mean-of-means"):
            v = torch.zeros(t.shape)
        sd["vae." + k] = v.to(torch.float16).contiguous()
    else:
        sd["vae." + k] = t.contiguous()
for k, v in tiny_models.ltxv_state_dict(seed=3).items():
    sd["model.diffusion_model." + k] = v.contiguous()
save_file(sd, out, metadata={"config": json.dumps({"vae": cfg})})
"""


def build_ltxv_checkpoint(comfy_dir: os.PathLike, out: os.PathLike) -> Path:
    out = Path(out)
    if not out.exists():
        from comfy_harness import python_for  # the Python that runs this ComfyUI
        subprocess.run([python_for(comfy_dir), "-c", _SCRIPT, str(comfy_dir), str(out), str(HERE),
                        json.dumps(VAE_CONFIG)], check=True, cwd=str(comfy_dir), capture_output=True,
                       timeout=600)
    return out


def build_iclora_file(out: os.PathLike, factor: str | None = None, seed: int = 9) -> Path:
    """A small LoRA on the tiny LTXV transformer's first attention, optional IC header."""
    import torch
    from safetensors.torch import save_file
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for proj in ("to_q", "to_k", "to_v"):
        sd[f"diffusion_model.transformer_blocks.0.attn1.{proj}.lora_A.weight"] = torch.randn(4, 128, generator=g)
        sd[f"diffusion_model.transformer_blocks.0.attn1.{proj}.lora_B.weight"] = torch.randn(128, 4, generator=g)
    meta = {} if factor is None else {"reference_downscale_factor": factor}
    save_file(sd, str(out), metadata=meta)
    return Path(out)
