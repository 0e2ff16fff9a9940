"""IC-LoRA nodes: loader, LTX guide with automatic crop, crop, Flux-style panels.

The maths lives in ``lora_core.iclora``; this module only translates widget
values and ComfyUI objects (conditionings, latents, VAE, ModelPatcher) into
engine calls.  Design notes and differences from core's LTXVAddGuide /
LTXVCropGuides: docs/iclora.md.

Automatic crop: the guide node attaches one ComfyUI ``TransformerOptionsHook``
to both conditionings.  When a sampler uses them, the hook adds two sampling
wrappers for that run only: OUTER_SAMPLE removes the appended guide frames
from the sampler's output, APPLY_MODEL drops guides outside their step
window.  No model input, loader or extra node is needed for it.
"""
from __future__ import annotations

import inspect
import logging

import torch

import comfy.utils
import node_helpers

from ..lora_core.iclora import (
    ICLoraError, LAYOUTS, PanelLayout, count_appended_frames, crop_guides, crop_panels,
    dilate_latent, guide_keyframe_coords, guide_noise_mask, base_noise_mask, merge_factors, next_record,
    panel_layout, panel_noise_mask, plan_guide, step_active, biased_attention,
    mask_to_token_weights, token_bias,
)
from ..lora_core.iclora.crop import GuideRecord
from ..lora_core.stack import LoraStack, StackEntry
from . import files, host
from .apply import apply_stack
from .common import IC_CATEGORY, MODE_TOOLTIP, MODES, strength_input
from .ic_params import default_params, header_metadata, ic_params_for_stack_rows, make_ic_lora_params

log = logging.getLogger("lora-patchbay.iclora")

CATEGORY = IC_CATEGORY
STATE_KEY = "patchbay_iclora_guides"              # our guide record, in conditioning and latent dicts
PANEL_LATENT_KEY = "patchbay_panel"               # panel crop description, in a panel LATENT dict
PANEL_ATTR = "_patchbay_panel"                    # the same, as an attribute of the panel latent tensor
LOADED_ATTACHMENT_KEY = "patchbay_iclora_loaded"  # ModelPatcher attachment: [(lora name, factor)] loaded
CORE_METADATA_ATTACHMENT = "lora_metadata"        # read by core's GetICLoRAParameters where it exists
GUIDE_WRAPPER_KEY = "patchbay_iclora_guide_crop"  # sampling wrappers of the guides' automatic crop
PANEL_WRAPPER_KEY = "patchbay_iclora_panel_crop"  # OUTER_SAMPLE wrapper of the panels' automatic crop
LATENT_CHANNELS = 128
CROP_MODES = ("stretch", "center")
CROP_CHOICES = ("auto", "manual")
# Workflows saved by earlier builds had one "mode" widget meaning the crop.
LEGACY_CROP_MODES = {"auto crop": "auto", "manual crop": "manual"}


# --------------------------------------------------------------------------------------------------
# conditioning helpers

def _cond_value(cond, key, default=None):
    for entry in cond or []:
        if key in entry[1]:
            return entry[1][key]
    return default


def get_state(cond) -> dict | None:
    """Our record of appended guides, stored in a conditioning."""
    s = _cond_value(cond, STATE_KEY)
    return s if isinstance(s, dict) else None


def _without_guides(cond):
    """Remove guide keys and our hook from a conditioning."""
    new = []
    for entry in cond:
        d = entry[1].copy()
        for key in ("keyframe_idxs", "guide_attention_entries", STATE_KEY):
            d.pop(key, None)
        new.append([entry[0], host.without_our_hook(d)])
    return new


# --------------------------------------------------------------------------------------------------
# sampling wrappers (installed through the hook above, per sampling run)

def _state_from_guider(guider):
    conds = getattr(guider, "conds", None) or getattr(guider, "original_conds", None) or {}
    for name in ("positive", "negative"):
        for c in conds.get(name, []) or []:
            s = c.get(STATE_KEY) if isinstance(c, dict) else None
            if isinstance(s, dict):
                return s
    return None


def outer_sample_wrapper(executor, *args, **kwargs):
    """Run the sampler, then cut the appended guide frames off its output."""
    guider = executor.class_obj
    state = _state_from_guider(guider)
    if state is None or not state.get("auto_crop", True):
        return executor(*args, **kwargs)
    shapes = kwargs.get("latent_shapes")
    if shapes is not None and len(shapes) > 1:
        log.warning("IC-LoRA guides on a combined audio-video latent are not cropped automatically; "
                    "add PatchbayICLoraCropGuides after LTXVSeparateAVLatent.")
        return executor(*args, **kwargs)
    base, count = int(state["base_frames"]), count_appended_frames(state["guides"])
    latent = args[1] if len(args) > 1 else kwargs.get("latent_image")
    frames = latent.shape[2] if torch.is_tensor(latent) and latent.ndim == 5 else None
    if frames == base and count:
        # guide conditionings reused on a latent whose guides were already cropped (e.g. a second
        # stage): sample without the guides instead of mispositioning the last tokens.
        log.info("IC-LoRA: latent has no guide frames any more; sampling without guides")
        for cond_list in (getattr(guider, "conds", None) or {}).values():
            for c in cond_list or []:
                if isinstance(c, dict):
                    for key in ("keyframe_idxs", "guide_attention_entries", STATE_KEY):
                        c.pop(key, None)
        return executor(*args, **kwargs)
    if frames is not None and frames != base + count:
        raise ICLoraError(f"The latent has {frames} frames but its guide conditionings describe {base} video + "
                          f"{count} guide frames", fix="crop the guides (PatchbayICLoraCropGuides) before "
                                                       "changing the latent's length or size")
    try:
        guider.model_options.setdefault("transformer_options", {})[STATE_KEY] = state
    except AttributeError:
        pass
    out = executor(*args, **kwargs)
    if torch.is_tensor(out) and out.ndim == 5 and out.shape[2] == base + count and count:
        out = out[:, :, :base]
    elif count:
        log.warning("IC-LoRA automatic crop skipped: sampler output has shape %s, expected %d frames",
                    tuple(getattr(out, "shape", ())), base + count)
    return out


def _current_step(transformer_options, t) -> tuple[int, int] | None:
    sigmas = transformer_options.get("sample_sigmas")
    if sigmas is None or not torch.is_tensor(t) or t.numel() == 0:
        return None
    s = sigmas.to(t.device, torch.float32)
    step = int(torch.argmin((s - t.flatten()[0].float()).abs()))
    return step, max(len(s) - 1, 1)


def _attention_override(n_video: int, weights: list, total: int, prev):
    """An ``optimized_attention_override`` biasing video↔guide attention in self-attention calls."""
    cache = {}

    def override(func, *args, **kwargs):
        q, k, v, heads = args[:4]
        skip_reshape = kwargs.get("skip_reshape", False)
        tq = q.shape[2] if skip_reshape else q.shape[1]
        tk = k.shape[2] if skip_reshape else k.shape[1]
        mask = kwargs.get("mask", args[4] if len(args) > 4 else None)
        if mask is None and tq == tk == total:
            key = (q.device, q.dtype)
            if key not in cache:
                cache[key] = token_bias(n_video, weights, dtype=q.dtype, device=q.device)
            kb, gl = cache[key]
            return biased_attention(q, k, v, heads, n_video, kb, gl, skip_reshape=skip_reshape,
                                    skip_output_reshape=kwargs.get("skip_output_reshape", False))
        return prev(func, *args, **kwargs) if prev is not None else func(*args, **kwargs)
    return override


def apply_model_window_wrapper(executor, x, t, c_concat=None, c_crossattn=None, control=None,
                               transformer_options={}, **kwargs):
    """Per model call: drop guides outside their step window, weight attention to the others."""
    state = transformer_options.get(STATE_KEY)
    if not state or x.ndim != 5:
        return executor(x, t, c_concat, c_crossattn, control, transformer_options, **kwargs)
    records = [GuideRecord.from_dict(r) for r in state["guides"]]
    base = int(state["base_frames"])
    if x.shape[2] != base + count_appended_frames(records):
        return executor(x, t, c_concat, c_crossattn, control, transformer_options, **kwargs)
    pos = _current_step(transformer_options, t)
    active = [True] * len(records) if pos is None else \
        [step_active(pos[0], pos[1], r.start_percent, r.end_percent) for r in records]
    kw = dict(kwargs)
    h, w = x.shape[3], x.shape[4]
    if not all(active):
        keep = list(range(base))
        tok_keep = []
        tok = 0
        entries = kwargs.get("guide_attention_entries")
        kept_entries = []
        for i, (r, on) in enumerate(zip(records, active)):
            if on:
                keep.extend(range(base + r.offset, base + r.offset + r.frames))
                tok_keep.extend(range(tok, tok + r.tokens))
                if entries is not None and i < len(entries):
                    kept_entries.append(entries[i])
            tok += r.tokens
        idx = torch.tensor(keep, device=x.device)
        dm = kw.get("denoise_mask")
        if torch.is_tensor(dm) and dm.ndim == 5 and dm.shape[2] == x.shape[2]:
            kw["denoise_mask"] = dm.index_select(2, idx.to(dm.device))
        kf = kw.get("keyframe_idxs")
        if torch.is_tensor(kf):
            kw["keyframe_idxs"] = (kf.index_select(2, torch.tensor(tok_keep, device=kf.device, dtype=torch.long))
                                   if tok_keep else None)
        if entries is not None:
            kw["guide_attention_entries"] = kept_entries or None
        x_run = x.index_select(2, idx)
    else:
        idx = None
        x_run = x
    # attention weighting of the guides that are present (skipped when every weight is 1)
    weights = []
    plain = True
    for i, (r, on) in enumerate(zip(records, active)):
        if not on:
            continue
        n_tok = r.frames * (h // r.k) * (w // r.k)
        wt = (state.get("attn_weights") or [None] * len(records))[i]
        if wt is None:
            wt = torch.full((n_tok,), float(r.attention_strength))
        weights.append(wt)
        plain = plain and bool(torch.all(wt == 1.0))
    opts = transformer_options
    if weights and not plain and "guide_attention_entries" not in kw:
        n_video = base * h * w
        total = n_video + sum(int(wt.numel()) for wt in weights)
        opts = dict(transformer_options)
        opts["optimized_attention_override"] = _attention_override(
            n_video, weights, total, transformer_options.get("optimized_attention_override"))
    out_run = executor(x_run, t, c_concat, c_crossattn, control, opts, **kw)
    if idx is None:
        return out_run
    out = x.to(out_run.dtype).clone()
    out[:, :, idx] = out_run
    return out


def panel_outer_sample_wrapper(executor, *args, **kwargs):
    """Model wrapper (installed by the loader): crop a panel canvas to its target panels."""
    latent = args[1] if len(args) > 1 else kwargs.get("latent_image")
    desc = getattr(latent, PANEL_ATTR, None)
    out = executor(*args, **kwargs)
    if desc is None or not torch.is_tensor(out):
        return out
    lay = PanelLayout.from_dict(desc)
    try:
        cropped = crop_panels(out if out.ndim == 4 else out.squeeze(2), lay, channels_last=False)
    except ICLoraError as e:
        log.warning("IC-LoRA panel automatic crop skipped: %s", e)
        return out
    return cropped if out.ndim == 4 else cropped.unsqueeze(2)


# --------------------------------------------------------------------------------------------------
# host capability probes

def host_drops_filler_tokens() -> bool:
    """True if the host's LTX model drops tokens with a negative noise mask (needed for k > 1)."""
    try:
        import comfy.ldm.lightricks.model as ltx
        return "denoise_mask" in inspect.signature(ltx.LTXVModel.forward).parameters
    except Exception:  # pragma: no cover - host without LTX support
        return False


def host_uses_intervals() -> bool:
    """True if the host's LTX positions are [start, end) intervals (v0.4+), False for starts only."""
    try:
        from comfy.ldm.lightricks.symmetric_patchifier import Patchifier
        return "start_end" in inspect.signature(Patchifier.__init__).parameters
    except Exception:  # pragma: no cover
        return True


# --------------------------------------------------------------------------------------------------
# encoding

def _resize(images: torch.Tensor, width: int, height: int, crop: str) -> torch.Tensor:
    if images.shape[1] == height and images.shape[2] == width:
        return images
    return comfy.utils.common_upscale(images.movedim(-1, 1), width, height, "bilinear",
                                      "center" if crop == "center" else "disabled").movedim(1, -1)


def _check_vae(vae):
    if vae is None:
        raise ICLoraError("No VAE connected", fix="connect the LTX video VAE to the guide node")
    formula = getattr(vae, "downscale_index_formula", None)
    if formula is None or len(tuple(formula)) != 3:
        raise ICLoraError("This VAE is not a video VAE (it has no time compression)",
                          fix="connect the LTX-Video VAE of the checkpoint")
    return tuple(int(v) for v in formula)


def _check_latent(latent) -> torch.Tensor:
    if not isinstance(latent, dict) or "samples" not in latent:
        raise ICLoraError("The latent input is not a LATENT", fix="connect a video latent")
    s = latent["samples"]
    if getattr(s, "is_nested", False):
        raise ICLoraError("Adding an IC-LoRA guide to a combined audio-video latent is not supported",
                          fix="add the guide to the video latent before LTXVConcatAVLatent, and crop "
                              "(PatchbayICLoraCropGuides) after LTXVSeparateAVLatent")
    if s.ndim == 4:
        raise ICLoraError(f"The latent is an image latent {tuple(s.shape)}, but IC-LoRA guides need a video "
                          "latent (B, 128, frames, H, W)",
                          fix="use EmptyLTXVLatentVideo (or another LTX video latent); for image models use "
                              "PatchbayICLoraPanel")
    if s.ndim != 5:
        raise ICLoraError(f"The latent has shape {tuple(s.shape)}; expected a 5-D LTX video latent")
    if s.shape[1] != LATENT_CHANNELS:
        raise ICLoraError(f"The latent has {s.shape[1]} channels, an LTX video latent has {LATENT_CHANNELS}: "
                          "this looks like a combined audio-video latent or another model's latent",
                          fix="add the guide to the video latent before LTXVConcatAVLatent, and crop "
                              "after LTXVSeparateAVLatent")
    return s


def _check_guide_image(image) -> torch.Tensor:
    if not torch.is_tensor(image) or image.ndim != 4 or image.shape[-1] < 3:
        shape = tuple(image.shape) if torch.is_tensor(image) else type(image).__name__
        raise ICLoraError(f"The guide must be an IMAGE batch of frames (frames, H, W, 3), got {shape}",
                          fix="connect images or video frames (e.g. from Load Video or a preprocessor)")
    return image


# --------------------------------------------------------------------------------------------------
# the guide

def add_guide(positive, negative, vae, latent, image, frame_idx: int, strength: float,
              attention_strength: float = 1.0, attention_mask=None, ic_lora: dict | None = None,
              crop: str = "stretch", start_percent: float = 0.0, end_percent: float = 1.0,
              causal_fix: bool = True):
    """Append one guide.  Validates everything before encoding; returns (positive, negative, latent)."""
    params = dict(default_params())
    params.update(ic_lora or {})
    if not params.get("enabled", True) or float(params.get("strength", 1.0)) == 0.0:
        log.info("IC-LoRA %s is disabled or at strength 0: its guide is not added", params.get("lora"))
        return positive, negative, latent

    scale = _check_vae(vae)
    samples = _check_latent(latent)
    image = _check_guide_image(image)
    k = int(params.get("reference_downscale_factor", 1) or 1)
    kt = int(params.get("reference_temporal_scale_factor", 1) or 1)
    if kt != 1:
        raise ICLoraError(f"IC-LoRA {params.get('lora')!r} has reference_temporal_scale_factor {kt}; the LTX "
                          "guide only supports full-frame-rate references (1)",
                          fix="use an IC-LoRA made for ComfyUI/LTX-2 guides or the runtime it was trained for")
    if not 0.0 <= start_percent <= end_percent <= 1.0:
        raise ICLoraError(f"guide step window {start_percent}–{end_percent} is invalid",
                          fix="use 0 ≤ start_percent ≤ end_percent ≤ 1")
    if not 0.0 <= strength <= 1.0:
        raise ICLoraError(f"guide strength must be between 0 and 1, got {strength}")

    b, _, frames, h, w = samples.shape
    state = get_state(positive)
    appended = count_appended_frames(state["guides"]) if state else 0
    base = int(state["base_frames"]) if state else frames
    if state is None and _cond_value(positive, "keyframe_idxs") is not None:
        raise ICLoraError("These conditionings already carry guides from another node (e.g. LTXVAddGuide)",
                          fix="use Patchbay guide nodes for all guides of one latent, or crop the others first")
    if frames != base + appended:
        raise ICLoraError(f"The latent has {frames} frames but the conditionings describe {base} video + "
                          f"{appended} guide frames", fix="connect the latent and conditionings from the same "
                                                          "previous guide node")
    noise_mask = latent.get("noise_mask")
    if torch.is_tensor(noise_mask) and noise_mask.ndim == 5 and noise_mask.shape[2] > frames:
        noise_mask = noise_mask[:, :, :frames]  # stale mask of an automatically cropped latent

    plan = plan_guide(guide_frames=image.shape[0], frame_idx=int(frame_idx), base_latent_frames=base,
                      latent_height=h, latent_width=w, k=k, scale=scale, causal_fix=causal_fix)
    if k > 1 and not host_drops_filler_tokens():
        raise ICLoraError(f"This ComfyUI version cannot run small-grid IC-LoRAs (reference_downscale_factor "
                          f"{k}): its LTX model does not drop the dilation filler tokens",
                          fix="update ComfyUI to v0.14 or later, or use a full-resolution (k = 1) IC-LoRA")
    mask = base_noise_mask(b, frames, noise_mask, device=samples.device)
    pmask = None
    if attention_mask is not None:
        pmask = attention_mask
        if pmask.ndim == 2:
            pmask = pmask.unsqueeze(0)
        if pmask.ndim != 3:
            raise ICLoraError(f"attention_mask must be a MASK (frames, H, W), got {tuple(pmask.shape)}")

    # --- encode (nothing has been changed so far) ---
    src = image[list(plan.source_frames)]
    pixels = _resize(src, plan.encode_width, plan.encode_height, crop)[..., :3]
    enc = vae.encode(pixels)
    if plan.drop_first_latent:
        enc = enc[:, :, 1:]
    exp = (plan.latent_frames, h // k, w // k)
    if tuple(enc.shape[2:]) != exp:
        raise ICLoraError(f"The VAE returned a guide latent of shape {tuple(enc.shape)}, expected frames×h×w "
                          f"{exp}", fix="connect the LTX video VAE that matches the model")
    enc = enc.to(device=samples.device, dtype=samples.dtype)
    if enc.shape[0] != b:
        enc = enc[:1].expand(b, -1, -1, -1, -1)
    guide, gmask = dilate_latent(enc, k)
    mask, part = guide_noise_mask(mask, plan.latent_frames, float(strength), gmask)
    coords = guide_keyframe_coords(latent_frames=plan.latent_frames, latent_height=h, latent_width=w,
                                   frame_idx=plan.frame_idx, causal=plan.causal, k=k, scale=scale,
                                   device=samples.device, intervals=host_uses_intervals())

    records = list(state["guides"]) if state else []
    rec = next_record([GuideRecord.from_dict(r) for r in records], plan, strength=float(strength),
                      attention_strength=float(attention_strength), start_percent=float(start_percent),
                      end_percent=float(end_percent))
    weights = list((state or {}).get("attn_weights") or [None] * len(records))
    if pmask is not None:
        weights.append(float(attention_strength) * mask_to_token_weights(
            pmask.to("cpu"), latent_frames=plan.latent_frames, height=h // k, width=w // k, causal=plan.causal,
            t=scale[0]))
    else:
        weights.append(None)
    new_state = {"base_frames": base, "height": h, "width": w, "guides": records + [rec.to_dict()],
                 "attn_weights": weights,
                 "auto_crop": bool(params.get("auto_crop", True)) and (state or {}).get("auto_crop", True)}
    entry = {"pre_filter_count": plan.tokens, "strength": float(attention_strength),
             "pixel_mask": None if pmask is None else pmask.reshape(1, 1, *pmask.shape),
             "latent_shape": [plan.latent_frames, h // k, w // k]}

    def extend(cond):
        kf = _cond_value(cond, "keyframe_idxs")
        kf = coords if kf is None else torch.cat([kf, coords.to(kf.device, kf.dtype)], dim=2)
        entries = list(_cond_value(cond, "guide_attention_entries") or []) + [entry]
        return node_helpers.conditioning_set_values(cond, {"keyframe_idxs": kf, "guide_attention_entries": entries,
                                                           STATE_KEY: new_state})

    positive, negative = extend(positive), extend(negative)
    if new_state["auto_crop"]:
        positive, negative = host.with_sampling_hook(positive, negative, GUIDE_WRAPPER_KEY,
                                                     outer_sample_wrapper, apply_model_window_wrapper)
    out = {k2: v for k2, v in latent.items() if k2 not in ("samples", "noise_mask", STATE_KEY)}
    out["samples"] = torch.cat([samples, guide], dim=2)
    out["noise_mask"] = torch.cat([mask, part.to(mask.device, mask.dtype)], dim=2)
    out[STATE_KEY] = new_state
    return positive, negative, out


def crop_guides_from(positive, negative, latent):
    """Remove appended guide frames (if not already removed) and clear the guide keys."""
    samples = latent["samples"]
    if getattr(samples, "is_nested", False):
        raise ICLoraError("Cannot crop guides on a combined audio-video latent",
                          fix="put LTXVSeparateAVLatent before PatchbayICLoraCropGuides")
    state = get_state(positive) or latent.get(STATE_KEY)
    if state:
        count, base = count_appended_frames(state["guides"]), int(state["base_frames"])
    else:  # guides from other nodes (e.g. core LTXVAddGuide): count tokens, not start frames
        base = None
        kf = _cond_value(positive, "keyframe_idxs")
        count = 0 if kf is None else count_appended_frames(
            keyframe_tokens=int(kf.shape[2]), tokens_per_frame=int(samples.shape[3] * samples.shape[4]),
            entries=_cond_value(positive, "guide_attention_entries"))
    s, m = crop_guides(samples, count, latent.get("noise_mask"), base_frames=base)
    out = {k: v for k, v in latent.items() if k not in ("samples", "noise_mask", STATE_KEY)}
    out["samples"] = s
    if m is not None:
        out["noise_mask"] = m
    return _without_guides(positive), _without_guides(negative), out


# --------------------------------------------------------------------------------------------------
# nodes

class PatchbayICLoraGuide:
    DESCRIPTION = ("Adds an in-context (IC) LoRA guide to an LTX video latent: the guide frames (depth, canny, "
                   "pose, a low-res clip...) are encoded, appended as clean tokens at the target frames' "
                   "positions, and removed again automatically after sampling. Chain several for several "
                   "guides. The IC-LoRA parameters (reference downscale factor, enabled) come from "
                   "PatchbayICLoraLoader or a stack row marked as IC-LoRA; when that IC-LoRA is disabled or at "
                   "strength 0 the guide is skipped too.")
    CATEGORY = CATEGORY
    FUNCTION = "execute"
    RETURN_TYPES = ("CONDITIONING", "CONDITIONING", "LATENT")
    RETURN_NAMES = ("positive", "negative", "latent")
    OUTPUT_TOOLTIPS = ("Positive conditioning with the guide positions.",
                       "Negative conditioning with the guide positions.",
                       "Video latent with the guide frames appended (removed automatically after sampling).")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "positive": ("CONDITIONING", {"tooltip": "Positive conditioning (e.g. from LTXVConditioning)."}),
                "negative": ("CONDITIONING", {"tooltip": "Negative conditioning."}),
                "vae": ("VAE", {"tooltip": "The LTX video VAE, used to encode the guide."}),
                "latent": ("LATENT", {"tooltip": "The LTX video latent (video only, not a combined audio-video "
                                                 "latent)."}),
                "guide": ("IMAGE", {"tooltip": "Guide frames (image or video). Trimmed to 8n+1 frames."}),
                "frame_idx": ("INT", {"default": 0, "min": -9999, "max": 9999, "step": 1,
                                      "tooltip": "Pixel frame where the guide starts. Negative counts from the end "
                                                 "(-1 = last frame). Multi-frame guides snap down to 0 or 8n+1."}),
                "strength": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01,
                                       "tooltip": "How clean the guide stays: 1 = pinned, 0 = fully re-noised. "
                                                  "Noise mask of the guide = 1 - strength."}),
                "attention_strength": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 2.0, "step": 0.01,
                                                 "tooltip": "Weight of attention between the video and this "
                                                            "guide: 1 = as trained, below 1 weakens the guide "
                                                            "(0 = the video ignores it), above 1 amplifies."}),
                "crop": (list(CROP_MODES), {"default": "stretch",
                                            "tooltip": "How the guide is fitted to the video size: stretch "
                                                       "(Lightricks default) or center crop (core)."}),
                "start_percent": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.01,
                                            "tooltip": "First part of the steps during which the guide is "
                                                       "present (0 = from the first step)."}),
                "end_percent": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01,
                                          "tooltip": "The guide is removed from this fraction of the steps on "
                                                     "(1 = until the end). Lower it against style leakage."}),
            },
            "optional": {
                "ic_lora": ("IC_LORA", {"tooltip": "IC-LoRA parameters from PatchbayICLoraLoader or a stack. "
                                                   "Unconnected: a full-resolution (factor 1) IC-LoRA."}),
                "attention_mask": ("MASK", {"tooltip": "Optional pixel-space mask (frames, H, W) or (H, W) of "
                                                       "the guide: multiplies the attention strength where the "
                                                       "guide should act (1) or not (0)."}),
            },
        }

    def execute(self, positive, negative, vae, latent, guide, frame_idx, strength, attention_strength, crop,
                start_percent, end_percent, ic_lora=None, attention_mask=None):
        return add_guide(positive, negative, vae, latent, guide, frame_idx, strength, attention_strength,
                         attention_mask, ic_lora, crop, start_percent, end_percent)


class PatchbayICLoraCropGuides:
    DESCRIPTION = ("Removes IC-LoRA guide frames from a latent and clears the guide keys from the "
                   "conditionings. The guide node already crops automatically after sampling; use this for "
                   "custom samplers, audio-video latents (after LTXVSeparateAVLatent) and two-stage pipelines "
                   "(crop before a latent upscale). Safe on an already cropped latent.")
    CATEGORY = CATEGORY
    FUNCTION = "execute"
    RETURN_TYPES = ("CONDITIONING", "CONDITIONING", "LATENT")
    RETURN_NAMES = ("positive", "negative", "latent")
    OUTPUT_TOOLTIPS = ("Positive conditioning without guides.", "Negative conditioning without guides.",
                       "Latent with exactly the video's own frames.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "positive": ("CONDITIONING", {"tooltip": "Positive conditioning from the guide node."}),
            "negative": ("CONDITIONING", {"tooltip": "Negative conditioning from the guide node."}),
            "latent": ("LATENT", {"tooltip": "The sampled latent (with or without guide frames)."}),
        }}

    def execute(self, positive, negative, latent):
        return crop_guides_from(positive, negative, latent)


class PatchbayICLoraPanel:
    DESCRIPTION = ("In-context panel for image models (Flux IC-LoRA): the reference image and the target(s) "
                   "share one canvas. Outputs the encoded canvas with a noise mask that keeps the reference "
                   "panel, the mask, and a crop description. With an IC-LoRA loaded by PatchbayICLoraLoader "
                   "with the loader's crop = auto the sampler returns only the target panel(s); otherwise use "
                   "PatchbayICLoraCropPanel.")
    CATEGORY = CATEGORY
    FUNCTION = "execute"
    RETURN_TYPES = ("LATENT", "MASK", "PANEL_CROP")
    RETURN_NAMES = ("latent", "mask", "panel_crop")
    OUTPUT_TOOLTIPS = ("Canvas latent; noise mask 0 on the reference panel, 1 on the targets.",
                       "Canvas mask (1 = target).", "Where the target panels are, for the crop.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "vae": ("VAE", {"tooltip": "The image model's VAE (e.g. Flux)."}),
            "reference": ("IMAGE", {"tooltip": "Reference image placed in the first panel."}),
            "width": ("INT", {"default": 512, "min": 16, "max": 8192, "step": 16,
                              "tooltip": "Width of one panel (the target size), multiple of 16."}),
            "height": ("INT", {"default": 512, "min": 16, "max": 8192, "step": 16,
                               "tooltip": "Height of one panel, multiple of 16."}),
            "layout": (list(LAYOUTS), {"default": "side-by-side",
                                       "tooltip": "side-by-side (reference left), top-bottom (reference top) "
                                                  "or grid (reference first, row by row)."}),
            "panels": ("INT", {"default": 2, "min": 2, "max": 16,
                               "tooltip": "Number of panels for the grid layout (reference + targets)."}),
            "crop": (list(CROP_MODES), {"default": "center",
                                        "tooltip": "How the reference is fitted to the panel size."}),
        }}

    def execute(self, vae, reference, width, height, layout, panels, crop):
        if vae is None:
            raise ICLoraError("No VAE connected", fix="connect the image model's VAE")
        if not torch.is_tensor(reference) or reference.ndim != 4:
            raise ICLoraError("The reference must be an IMAGE (1, H, W, 3)")
        lay = panel_layout(layout, int(width), int(height), int(panels))
        canvas = torch.full((1, lay.canvas_height, lay.canvas_width, 3), 0.5, dtype=torch.float32)
        ref = _resize(reference[:1].float(), lay.panel_width, lay.panel_height, crop)[..., :3]
        x, y, pw, ph = lay.rects[lay.reference]
        canvas[:, y:y + ph, x:x + pw] = ref.to(canvas.device)
        samples = vae.encode(canvas)
        mask = panel_noise_mask(lay)
        desc = lay.to_dict()
        desc["latent_scale"] = lay.canvas_height // samples.shape[-2]
        setattr(samples, PANEL_ATTR, desc)
        latent = {"samples": samples, "noise_mask": mask.reshape(1, 1, *mask.shape), PANEL_LATENT_KEY: desc}
        return latent, mask.unsqueeze(0), desc


class PatchbayICLoraCropPanel:
    DESCRIPTION = ("Returns only the target panel(s) of an in-context panel canvas, as a latent and/or image "
                   "batch. Safe on a latent the sampler already cropped.")
    CATEGORY = CATEGORY
    FUNCTION = "execute"
    RETURN_TYPES = ("LATENT", "IMAGE")
    RETURN_NAMES = ("latent", "image")
    OUTPUT_TOOLTIPS = ("Target panel latent(s).", "Target panel image(s).")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"panel_crop": ("PANEL_CROP", {"tooltip": "Crop description from PatchbayICLoraPanel."})},
                "optional": {"latent": ("LATENT", {"tooltip": "Sampled canvas latent."}),
                             "image": ("IMAGE", {"tooltip": "Decoded canvas image."})}}

    def execute(self, panel_crop, latent=None, image=None):
        lay = PanelLayout.from_dict(panel_crop)
        out_latent = out_image = None
        if latent is not None:
            s = latent["samples"]
            d = int(panel_crop.get("latent_scale") or 8)
            if (s.shape[-2] * d, s.shape[-1] * d) == (lay.panel_height, lay.panel_width) and \
                    (s.shape[-2] * d, s.shape[-1] * d) != (lay.canvas_height, lay.canvas_width):
                cropped = s  # already cropped by the automatic crop
            else:
                cropped = crop_panels(s, lay, channels_last=False)
            out_latent = {k: v for k, v in latent.items() if k not in ("samples", "noise_mask", PANEL_LATENT_KEY)}
            out_latent["samples"] = cropped
        if image is not None:
            if image.shape[1] == lay.panel_height and image.shape[2] == lay.panel_width:
                out_image = image
            else:
                out_image = crop_panels(image, lay, channels_last=True)
        return out_latent, out_image


# --------------------------------------------------------------------------------------------------
# loader

class PatchbayICLoraLoader:
    DESCRIPTION = ("Loads an in-context (IC) LoRA and outputs its parameters (reference downscale factor) read "
                   "from the file's header, whatever the strength. Disabled or at strength 0 the model is "
                   "returned unchanged and the guide nodes fed by it add nothing.")
    CATEGORY = CATEGORY
    FUNCTION = "execute"
    RETURN_TYPES = ("MODEL", "IC_LORA", "IC_LORA_PARAMETERS")
    RETURN_NAMES = ("model", "ic_lora", "iclora_parameters")
    OUTPUT_TOOLTIPS = ("Model with the IC-LoRA applied.", "IC-LoRA parameters for PatchbayICLoraGuide.",
                       "Parameters for core's LTXVAddGuide on ComfyUI versions that accept them.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("MODEL", {"tooltip": "The diffusion model (LTX-Video, LTX-2 or an image model)."}),
            "lora_name": (files.lora_names(), {"tooltip": "The IC-LoRA file."}),
            "strength": strength_input("LoRA strength. 0 disables the LoRA and its guides."),
            "enabled": ("BOOLEAN", {"default": True,
                                    "tooltip": "Off: no LoRA weights and no guides (base result)."}),
            "mode": (list(MODES), {"default": "merge", "tooltip": MODE_TOOLTIP}),
            "crop": (list(CROP_CHOICES), {"default": "auto", "tooltip": (
                "auto: guide frames and reference panels are removed after sampling without an extra "
                "node. manual: use IC-LoRA Crop Guides / Crop Panel yourself (two-stage pipelines).")}),
        }}

    def execute(self, model, lora_name, strength, enabled, mode="merge", crop="auto"):
        if mode in LEGACY_CROP_MODES:
            mode, crop = "merge", LEGACY_CROP_MODES[mode]
        meta = header_metadata(files.resolve_path(lora_name))
        auto = crop == "auto"
        params = make_ic_lora_params(lora_name, meta, strength, enabled, auto)
        k = params["reference_downscale_factor"]
        loaded = list(host.attachment(model, LOADED_ATTACHMENT_KEY, []))
        out, attachments = model, None
        if params["enabled"]:
            merge_factors(loaded + [(lora_name, k)])
            row = StackEntry(lora=lora_name, strength_model=float(strength))
            out = apply_stack(model, None, LoraStack((row,)), mode).model
            attachments = {LOADED_ATTACHMENT_KEY: loaded + [(lora_name, k)], CORE_METADATA_ATTACHMENT: meta}
        out = host.decorated_model(out, model, attachments=attachments,
                                   outer_sample=(PANEL_WRAPPER_KEY, panel_outer_sample_wrapper) if auto else None)
        return out, params, {"reference_downscale_factor": k}


NODE_CLASS_MAPPINGS = {
    "PatchbayICLoraLoader": PatchbayICLoraLoader,
    "PatchbayICLoraGuide": PatchbayICLoraGuide,
    "PatchbayICLoraCropGuides": PatchbayICLoraCropGuides,
    "PatchbayICLoraPanel": PatchbayICLoraPanel,
    "PatchbayICLoraCropPanel": PatchbayICLoraCropPanel,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "PatchbayICLoraLoader": "IC-LoRA Loader",
    "PatchbayICLoraGuide": "IC-LoRA Guide (video)",
    "PatchbayICLoraCropGuides": "IC-LoRA Crop Guides",
    "PatchbayICLoraPanel": "IC-LoRA Panel (image)",
    "PatchbayICLoraCropPanel": "IC-LoRA Crop Panel",
}
