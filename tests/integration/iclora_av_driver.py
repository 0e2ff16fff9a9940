"""IC-LoRA guides on LTX-2 combined audio-video latents, inside one real ComfyUI tree.

Usage: python iclora_av_driver.py COMFY_DIR OUT_JSON

Builds a tiny LTX-2 audio-video transformer from the host's own class
(``comfy.ldm.lightricks.av_model.LTXAVModel``, tiny config, seeded random
weights) and loads it through ``comfy.sd.load_diffusion_model_state_dict``
(the host detects it as ``LTXAV``).  Our guide and crop are compared with
core's nodes on the same inputs: core's ``LTXVAddGuide`` cannot take the
combined latent on v0.14.2 (it concatenates a NestedTensor with a tensor), so
the reference is core's documented order: ``LTXVAddGuide`` on the video
latent → ``LTXVConcatAVLatent`` → sample → ``LTXVSeparateAVLatent`` →
``LTXVCropGuides``.  Hosts without combined latents (v0.3.64) must refuse
with a message that says so.

Each check writes "ok", "skip: why" or "FAIL: why" into the JSON file.
"""
from __future__ import annotations

import importlib
import json

from driver_kit import RESULTS, check, start  # noqa: E402

COMFY, OUT = start()

import torch  # noqa: E402
import comfy.model_management  # noqa: E402,F401
import comfy.ops  # noqa: E402
import comfy.patcher_extension  # noqa: E402
import comfy.sd  # noqa: E402
import nodes  # noqa: E402

ic = importlib.import_module("lora_patchbay.nodes.iclora")
from lora_patchbay.lora_core.iclora import ICLoraError  # noqa: E402

try:
    import comfy.nested_tensor as nested_tensor
    from comfy.ldm.lightricks.av_model import LTXAVModel
    HAS_AV = True
except ImportError:
    nested_tensor = LTXAVModel = None
    HAS_AV = False




class FakeLTXVAE:
    """LTX geometry stand-in: causal time groups (1, 8, 8, …), 32×32 patches, 128 channels."""
    downscale_index_formula = (8, 32, 32)

    def __init__(self):
        self.proj = torch.randn(128, 3, generator=torch.Generator().manual_seed(7))

    def encode(self, pixels):
        f = pixels.shape[0]
        x = pixels[..., :3].float().permute(3, 0, 1, 2)
        groups = [x[:, :1]] + [x[:, 1 + 8 * i: 9 + 8 * i] for i in range((f - 1) // 8)]
        t = torch.nn.functional.avg_pool2d(torch.stack([g.mean(1) for g in groups], 1), 32)
        return torch.einsum("oc,cfhw->ofhw", self.proj, t * 2 - 1).unsqueeze(0)


VAE = FakeLTXVAE()
# LTX-2 AV transformer, tiny: video 4 heads × 8, audio 4 heads × 4, one block, text width 2 × 32
TINY_AV = dict(in_channels=128, audio_in_channels=128, cross_attention_dim=32, audio_cross_attention_dim=16,
               attention_head_dim=8, audio_attention_head_dim=4, num_attention_heads=4, audio_num_attention_heads=4,
               caption_channels=32, num_layers=1)


def tiny_ltxav():
    shapes = LTXAVModel(**TINY_AV, operations=comfy.ops.disable_weight_init).state_dict()
    g = torch.Generator().manual_seed(3)
    sd = {k: torch.randn(v.shape, generator=g) * 0.05 for k, v in shapes.items()}
    model = comfy.sd.load_diffusion_model_state_dict(sd, metadata={"config": json.dumps({"transformer": TINY_AV})})
    assert model is not None and type(model.model).__name__ == "LTXAV", type(getattr(model, "model", None))
    return model


MODEL = tiny_ltxav() if HAS_AV else None


def conds(seed=0):
    g = torch.Generator().manual_seed(seed)
    return ([[torch.randn(1, 6, 64, generator=g), {"frame_rate": 25.0}]],
            [[torch.randn(1, 6, 64, generator=g), {"frame_rate": 25.0}]])


def video_latent(frames=3, h=2, w=2, mask=False):
    g = torch.Generator().manual_seed(1)
    lat = {"samples": torch.randn(1, 128, frames, h, w, generator=g) * 0.1}
    if mask:
        lat["noise_mask"] = torch.rand(1, 1, frames, h, w, generator=g)
    return lat


def audio_latent(frames=7):
    g = torch.Generator().manual_seed(2)
    return {"samples": torch.randn(1, 8, frames, 16, generator=g) * 0.1, "type": "audio"}


def guide_video(n=9, h=64, w=64, seed=2):
    return torch.rand(n, h, w, 3, generator=torch.Generator().manual_seed(seed))


def core_node(name):
    import comfy_extras.nodes_lt as lt
    return getattr(lt, name)


def run_core_cls(cls, *args):
    out = cls.execute(*args)
    return tuple(out.result) if hasattr(out, "result") else tuple(out)


def run_core(name, *args):
    return run_core_cls(core_node(name), *args)


def concat(v, a):
    return run_core("LTXVConcatAVLatent", v, a)[0]


def separate(av):
    return run_core("LTXVSeparateAVLatent", av)


def ksample(model, pos, neg, latent, steps=3, cfg=2.0, seed=5):
    return nodes.common_ksampler(model, seed, steps, cfg, "euler", "simple", pos, neg, latent, denoise=1.0)[0]


def parts(x):
    assert getattr(x, "is_nested", False), f"expected a combined (nested) latent, got {type(x).__name__}"
    return list(x.unbind())


def same(a, b, what):
    assert a.shape == b.shape, f"{what}: shapes {tuple(a.shape)} vs {tuple(b.shape)}"
    assert torch.equal(a, b), f"{what}: max diff {float((a.float() - b.float()).abs().max())}"


def need_av():
    return None if HAS_AV else "skip: this ComfyUI has no LTX-2 audio-video model (see old_host_refuses_clearly)"


# ------------------------------------------------------------------------------------------- checks

@check
def old_host_refuses_clearly():
    if HAS_AV:
        return "skip: this ComfyUI has combined audio-video latents"
    pos, neg = conds()
    av = {"samples": torch.zeros(1, 128 + 16, 3, 2, 2)}
    try:
        ic.add_guide(pos, neg, VAE, av, guide_video(9), 0, 1.0)
    except ICLoraError as e:
        msg = str(e)
        assert "audio-video" in msg and "v0.14" in msg, msg
        return None
    raise AssertionError("a 144-channel latent was accepted")


@check
def guide_on_av_latent_matches_core_order():
    if need_av():
        return need_av()
    pos, neg = conds()
    img = guide_video(9)
    # (mask, frame, strength, guide frames); a mid-video single frame is placed causally by us (docs)
    for vmask, frame_idx, strength, n_img in ((False, 0, 1.0, 9), (True, 0, 0.6, 9), (False, 9, 1.0, 1)):
        v, a = video_latent(3, mask=vmask), audio_latent()
        img = guide_video(n_img)
        cp, cn, cl = run_core("LTXVAddGuide", pos, neg, VAE, v, img, frame_idx, strength)
        core_av = concat(cl, a)
        p, n, l = ic.add_guide(pos, neg, VAE, concat(v, a), img, frame_idx, strength)
        ov, oa = parts(l["samples"])
        cv, ca = parts(core_av["samples"])
        same(ov, cv, "video part with the guide")
        assert oa is a["samples"], "the audio part was not passed through untouched"
        (omv, oma), (cmv, cma) = parts(l["noise_mask"]), parts(core_av["noise_mask"])
        same(omv, cmv, "video noise mask")
        same(oma, cma, "audio noise mask")
        if frame_idx == 0:
            same(p[0][1]["keyframe_idxs"], cp[0][1]["keyframe_idxs"], "keyframe_idxs")
            same(n[0][1]["keyframe_idxs"], cn[0][1]["keyframe_idxs"], "negative keyframe_idxs")
        else:  # documented difference: causal time span [9, 10) for one mid-video frame, core [9, 17)
            assert p[0][1]["keyframe_idxs"][0, 0, 0].tolist() == [9, 10]
            assert cp[0][1]["keyframe_idxs"][0, 0, 0].tolist() == [9, 17]
        # IC specific: an attention entry per guide (core main's format; core v0.14.2 writes none)
        entry = p[0][1]["guide_attention_entries"][0]
        assert entry["pre_filter_count"] == ov.shape[3] * ov.shape[4] * (ov.shape[2] - 3), entry
        assert l["type"] == "audio", "the combined latent's other keys were dropped"
    # only the audio masked: the concat gives the video a latent-shaped mask of ones
    a = dict(audio_latent(), noise_mask=torch.zeros(1, 8, 7, 16))
    _, _, l = ic.add_guide(pos, neg, VAE, concat(video_latent(3), a), guide_video(9), 0, 1.0)
    mv, ma = parts(l["noise_mask"])
    assert ma is a["noise_mask"] and mv.shape == (1, 1, 5, 2, 2) and float(mv[0, 0, 3:].max()) == 0.0
    # a second guide on the combined latent stacks like on the video latent
    v, a = video_latent(5), audio_latent()
    cp, cn, cl = run_core("LTXVAddGuide", pos, neg, VAE, v, guide_video(9), 0, 1.0)
    cp, cn, cl = run_core("LTXVAddGuide", cp, cn, VAE, cl, guide_video(1, seed=4), -1, 1.0)
    p, n, l = ic.add_guide(pos, neg, VAE, concat(v, a), guide_video(9), 0, 1.0)
    p, n, l = ic.add_guide(p, n, VAE, l, guide_video(1, seed=4), -1, 1.0)
    same(parts(l["samples"])[0], cl["samples"], "two guides: video part")
    assert p[0][1]["keyframe_idxs"].shape == cp[0][1]["keyframe_idxs"].shape


@check
def sampling_auto_crop_matches_core_crop():
    if need_av():
        return need_av()
    pos, neg = conds()
    img = guide_video(9)
    v, a = video_latent(3), audio_latent()
    cp, cn, cl = run_core("LTXVAddGuide", pos, neg, VAE, v, img, 0, 1.0)
    core_out = ksample(MODEL, cp, cn, concat(cl, a))
    core_v, core_a = separate(core_out)
    _, _, core_v = run_core("LTXVCropGuides", cp, cn, core_v)
    p, n, l = ic.add_guide(pos, neg, VAE, concat(v, a), img, 0, 1.0)
    out = ksample(MODEL, p, n, l)
    ov, oa = parts(out["samples"])
    assert ov.shape == (1, 128, 3, 2, 2), f"not cropped automatically: {tuple(ov.shape)}"
    same(ov, core_v["samples"], "sampled video after crop")
    same(oa, core_a["samples"], "sampled audio")
    assert torch.isfinite(ov).all() and torch.isfinite(oa).all()
    # the guide added to the video latent BEFORE the concat (the old order) is cropped automatically too
    p2, n2, l2 = ic.add_guide(pos, neg, VAE, v, img, 0, 1.0)
    out2 = ksample(MODEL, p2, n2, concat(l2, a))
    same(parts(out2["samples"])[0], ov, "guide-then-concat order")


@check
def crop_node_on_av_latent_matches_core_crop():
    if need_av():
        return need_av()
    pos, neg = conds()
    img = guide_video(9)
    v, a = video_latent(3, mask=True), audio_latent()
    p, n, l = ic.add_guide(pos, neg, VAE, concat(v, a), img, 0, 1.0, ic_lora={"auto_crop": False})
    out = ksample(MODEL, p, n, l)
    sv, sa = parts(out["samples"])
    assert sv.shape[2] == 5, "manual crop mode cropped anyway"
    p2, n2, c = ic.crop_guides_from(p, n, out)
    cv, ca = parts(c["samples"])
    core_v, core_a = separate(out)
    _, _, core_v = run_core("LTXVCropGuides", p, n, core_v)
    same(cv, core_v["samples"], "cropped video part")
    assert ca is sa, "the audio part was not passed through untouched"
    mv, ma = parts(c["noise_mask"])
    same(mv, core_v["noise_mask"], "cropped video noise mask")
    same(ma, parts(out["noise_mask"])[1], "audio noise mask")
    assert all("keyframe_idxs" not in e[1] and "guide_attention_entries" not in e[1] for e in p2 + n2)
    # on the separated video latent (the documented order) the node gives the same video
    _, _, c2 = ic.crop_guides_from(p, n, separate(out)[0])
    same(c2["samples"], cv, "crop after LTXVSeparateAVLatent")
    # on an automatically cropped combined latent: nothing more is cut
    auto = ksample(MODEL, *ic.add_guide(pos, neg, VAE, concat(v, a), img, 0, 1.0))
    _, _, c3 = ic.crop_guides_from(p, n, auto)
    same(parts(c3["samples"])[0], parts(auto["samples"])[0], "crop node on auto-cropped AV latent")


@check
def step_window_and_attention_on_av_latent():
    if need_av():
        return need_av()
    pos, neg = conds()
    img = guide_video(9)
    v, a = video_latent(3), audio_latent()
    seen = []

    def spy(executor, x, *args, **kwargs):
        seen.append(x[0].shape[2] if isinstance(x, (list, tuple)) else None)
        return executor(x, *args, **kwargs)

    m = MODEL.clone()
    m.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, "test_spy", spy)

    def run(model=MODEL, **kw):
        return parts(ksample(model, *ic.add_guide(pos, neg, VAE, concat(v, a), img, 0, 1.0, **kw))["samples"])

    full = run()
    half = run(m, end_percent=0.5)
    assert seen == [5, 5, 3], f"video frames per model call: {seen}"  # 3 steps, cond+uncond batched
    assert half[0].shape[2] == 3 and not torch.equal(half[0], full[0])
    absent = run(end_percent=0.0)
    zero = run(attention_strength=0.0)
    effect = float((full[0] - absent[0]).abs().max())
    assert effect > 1e-4, "the guide had no effect"
    # attention strength weights video<->guide self-attention only; the audio's cross-attention still
    # reads the guide tokens (as in core), which reaches the video again through a2v: small, not zero
    left = float((zero[0] - absent[0]).abs().max())
    assert left < 0.05 * effect, (left, effect)


@check
def custom_sampler_outputs_cropped():
    if need_av():
        return need_av()
    import comfy_extras.nodes_custom_sampler as cs
    pos, neg = conds()
    p, n, l = ic.add_guide(pos, neg, VAE, concat(video_latent(3), audio_latent()), guide_video(9), 0, 1.0)
    guider = run_core_cls(cs.CFGGuider, MODEL, p, n, 2.0)[0]
    sigmas = run_core_cls(cs.BasicScheduler, MODEL, "simple", 3, 1.0)[0]
    sampler = run_core_cls(cs.KSamplerSelect, "euler")[0]
    noise = run_core_cls(cs.RandomNoise, 5)[0]
    out, denoised = run_core_cls(cs.SamplerCustomAdvanced, noise, guider, sampler, sigmas, l)
    ov, oa = parts(out["samples"])
    dv, da = parts(denoised["samples"])
    assert ov.shape == (1, 128, 3, 2, 2) and oa.shape == (1, 8, 7, 16), (ov.shape, oa.shape)
    assert dv.shape == ov.shape and da.shape == oa.shape, (dv.shape, da.shape)
    # euler's last step lands on its denoised estimate: the cropped x0 is the output's layout
    assert torch.allclose(dv, ov, atol=1e-4) and torch.allclose(da, oa, atol=1e-4), "denoised output scrambled"
    ref = ksample(MODEL, p, n, l)
    same(ov, parts(ref["samples"])[0], "SamplerCustomAdvanced vs KSampler video")


@check
def bad_av_inputs_refused_before_encoding():
    if need_av():
        return need_av()
    pos, neg = conds()
    bad = {"samples": nested_tensor.NestedTensor([torch.zeros(1, 4, 8, 8), torch.zeros(1, 8, 7, 16)])}
    try:
        ic.add_guide(pos, neg, VAE, bad, guide_video(9), 0, 1.0)
        raise AssertionError("a combined latent whose video part is an image latent was accepted")
    except ICLoraError as e:
        assert "video part" in str(e), str(e)


json.dump({"comfy": COMFY, "has_av": HAS_AV, "results": RESULTS}, open(OUT, "w"), indent=1)
