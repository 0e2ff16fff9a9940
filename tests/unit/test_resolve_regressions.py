"""Regressions found while running the pack inside ComfyUI."""
from fixtures.model_keys import lora_file, lora_patch, sd15_clip, sd15_unet

from lora_core.resolve import resolve_targets


def test_clip_bookkeeping_key_does_not_make_the_clip_a_denoiser():
    # ComfyUI's SD1 CLIP state dict carries ``clip_l.logit_scale`` beside the tower.
    clip = dict(sd15_clip())
    clip["clip_l.logit_scale"] = ()
    unet_key = next(k for k in sd15_unet() if k.endswith("attn2.to_k.weight"))
    module = unet_key[len("diffusion_model."):-len(".weight")]
    name = "lora_unet_" + module.replace(".", "_")
    patch = lora_patch(name, sd15_unet()[unet_key])
    report = resolve_targets(lora_file([patch]), clip)
    # a UNet module met by a text encoder belongs elsewhere; it is not an unknown name
    assert not report.unmatched
    assert [u.name for u in report.elsewhere] == [name]
