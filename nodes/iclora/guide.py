"""IC-LoRA Guide (LTX video) and IC-LoRA Crop Guides.

The guide validates everything before encoding, appends the encoded guide
frames to the latent with their keyframe positions and noise mask
(``lora_core.iclora``), records what it appended, and attaches the sampling
hook of the automatic crop (``sampling.py``, through the door's ``hooks``).
On an LTX-2 combined audio-video latent both nodes work on its video part
and pass the audio through.
Design notes and differences from core's LTXVAddGuide / LTXVCropGuides:
docs/iclora.md.
"""
from __future__ import annotations

import logging

import torch

import node_helpers

from ...lora_core.iclora import (
    GuideRecord, ICLora, ICLoraError, base_noise_mask, count_appended_frames, crop_guides, dilate_latent,
    guide_keyframe_coords, guide_noise_mask, mask_to_token_weights, next_record, plan_guide,
)
from .. import host
from ..common import IC_CATEGORY, finite_number, number_inputs_error, validation_result
from .sampling import apply_model_window_wrapper, outer_sample_wrapper
from .shared import (CROP_MODES, GUIDE_COND_KEYS, GUIDE_WRAPPER_KEY, HAS_AV_LATENTS, LATENT_CHANNELS, STATE_KEY,
                     av_join, av_parts, cond_value, resize_images)

log = logging.getLogger("lora-patchbay.iclora")


def get_state(cond) -> dict | None:
    """Our record of appended guides, stored in a conditioning."""
    s = cond_value(cond, STATE_KEY)
    return s if isinstance(s, dict) else None


def _without_guides(cond):
    """Remove guide keys and our hook from a conditioning."""
    new = []
    for entry in cond:
        d = entry[1].copy()
        for key in GUIDE_COND_KEYS:
            d.pop(key, None)
        new.append([entry[0], host.without_our_hook(d)])
    return new


def _check_vae(vae):
    if vae is None:
        raise ICLoraError("No VAE connected", fix="connect the LTX video VAE to the guide node")
    formula = getattr(vae, "downscale_index_formula", None)
    if formula is None or len(tuple(formula)) != 3:
        raise ICLoraError("This VAE is not a video VAE (it has no time compression)",
                          fix="connect the LTX-Video VAE of the checkpoint")
    return tuple(int(v) for v in formula)


def _check_latent(latent, part: str = "") -> torch.Tensor:
    """The video latent tensor; ``part`` names it inside a combined latent ("the video part of ...")."""
    if not isinstance(latent, dict) or "samples" not in latent:
        raise ICLoraError("The latent input is not a LATENT", fix="connect a video latent")
    s = latent["samples"]
    what = part or "The latent"
    if getattr(s, "is_nested", False):
        raise ICLoraError(f"{what} is itself a combined latent", fix="connect one LTXVConcatAVLatent output")
    if s.ndim == 4:
        raise ICLoraError(f"{what} is an image latent {tuple(s.shape)}, but IC-LoRA guides need a video "
                          "latent (B, 128, frames, H, W)",
                          fix="use EmptyLTXVLatentVideo (or another LTX video latent); for image models use "
                              "PatchbayICLoraPanel")
    if s.ndim != 5:
        raise ICLoraError(f"{what} has shape {tuple(s.shape)}; expected a 5-D LTX video latent")
    if s.shape[1] != LATENT_CHANNELS:
        if part or HAS_AV_LATENTS:
            raise ICLoraError(f"{what} has {s.shape[1]} channels, an LTX video latent has {LATENT_CHANNELS}: "
                              "this is another model's latent, not an LTX video or audio-video latent",
                              fix="connect an LTX video latent, or the LTXVConcatAVLatent output of one")
        raise ICLoraError(f"The latent has {s.shape[1]} channels, an LTX video latent has {LATENT_CHANNELS}; "
                          "this ComfyUI has no combined audio-video latents (LTX-2 audio-video needs ComfyUI "
                          "v0.14 or later), so it is another model's latent",
                          fix="connect an LTX video latent (add the guide before LTXVConcatAVLatent after "
                              "updating ComfyUI)")
    return s


def _video_part(latent) -> tuple[dict, list, list | None] | None:
    """A combined audio-video latent split into ``(video latent dict, other parts, their masks)``;
    None for a plain video latent.  A plain tensor noise mask of a combined latent is the video's
    (the sampler gives the other parts ones)."""
    if not isinstance(latent, dict):
        return None
    parts = av_parts(latent.get("samples"))
    if parts is None:
        return None
    if len(parts) < 2:
        raise ICLoraError(f"The combined latent has {len(parts)} part(s); expected video + audio",
                          fix="connect the output of LTXVConcatAVLatent")
    mask = latent.get("noise_mask")
    masks = av_parts(mask) if mask is not None else None
    video = {k: v for k, v in latent.items() if k not in ("samples", "noise_mask")}
    video["samples"] = parts[0]
    if masks is not None:
        video["noise_mask"] = masks[0]
        masks = masks[1:]
    elif mask is not None:
        video["noise_mask"] = mask
    _check_latent(video, "The video part of the combined audio-video latent")
    vmask = video.get("noise_mask")
    if torch.is_tensor(vmask) and vmask.ndim == 5 and vmask.shape[1] > 1:
        # LTXVConcatAVLatent gives an unmasked video part a mask of ones shaped like the latent
        if not torch.equal(vmask, vmask[:, :1].expand_as(vmask)):
            raise ICLoraError(f"The video part's noise mask has {vmask.shape[1]} different channels",
                              fix="mask the video latent with a one-channel mask before LTXVConcatAVLatent")
        video["noise_mask"] = vmask[:, :1]
    return video, parts[1:], masks


def _rejoin(video: dict, others: list, other_masks: list | None) -> dict:
    """The combined latent of a (guided or cropped) video latent dict and the untouched other parts.
    Where the video has a noise mask and the others none, they get ones (as LTXVConcatAVLatent does)."""
    out = {k: v for k, v in video.items() if k not in ("samples", "noise_mask")}
    out["samples"] = av_join([video["samples"], *others])
    vmask = video.get("noise_mask")
    if vmask is not None or other_masks is not None:
        if vmask is None:
            vmask = torch.ones_like(video["samples"])
        rest = other_masks if other_masks is not None else [torch.ones_like(o) for o in others]
        out["noise_mask"] = av_join([vmask, *rest])
    return out


def _check_guide_image(image) -> torch.Tensor:
    if not torch.is_tensor(image) or image.ndim != 4 or image.shape[-1] < 3:
        shape = tuple(image.shape) if torch.is_tensor(image) else type(image).__name__
        raise ICLoraError(f"The guide must be an IMAGE batch of frames (frames, H, W, 3), got {shape}",
                          fix="connect images or video frames (e.g. from Load Video or a preprocessor)")
    return image


def add_guide(positive, negative, vae, latent, image, frame_idx: int, strength: float,
              attention_strength: float = 1.0, attention_mask=None, ic_lora: ICLora | dict | None = None,
              crop: str = "stretch", start_percent: float = 0.0, end_percent: float = 1.0,
              causal_fix: bool = True):
    """Append one guide.  Validates everything before encoding; returns (positive, negative, latent)."""
    params = ICLora.coerce(ic_lora)
    if not params.active:
        log.info("IC-LoRA %s is disabled or at strength 0: its guide is not added", params.lora)
        return positive, negative, latent
    split = _video_part(latent)
    if split is not None:  # LTX-2 audio-video: the guide goes on the video part, audio is untouched
        video, others, other_masks = split
        positive, negative, video = add_guide(positive, negative, vae, video, image, frame_idx, strength,
                                              attention_strength, attention_mask, params, crop, start_percent,
                                              end_percent, causal_fix)
        return positive, negative, _rejoin(video, others, other_masks)

    scale = _check_vae(vae)
    samples = _check_latent(latent)
    image = _check_guide_image(image)
    k = params.reference_downscale_factor
    kt = params.reference_temporal_scale_factor
    if kt != 1:
        raise ICLoraError(f"IC-LoRA {params.lora!r} has reference_temporal_scale_factor {kt}; the LTX "
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
    if state is None and cond_value(positive, "keyframe_idxs") is not None:
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
    if k > 1 and not host.ltx_drops_filler_tokens():
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
    pixels = resize_images(src, plan.encode_width, plan.encode_height, crop)[..., :3]
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
                                   device=samples.device, intervals=host.ltx_positions_are_intervals())

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
                 "auto_crop": params.auto_crop and (state or {}).get("auto_crop", True)}
    entry = {"pre_filter_count": plan.tokens, "strength": float(attention_strength),
             "pixel_mask": None if pmask is None else pmask.reshape(1, 1, *pmask.shape),
             "latent_shape": [plan.latent_frames, h // k, w // k]}

    def extend(cond):
        kf = cond_value(cond, "keyframe_idxs")
        kf = coords if kf is None else torch.cat([kf, coords.to(kf.device, kf.dtype)], dim=2)
        entries = list(cond_value(cond, "guide_attention_entries") or []) + [entry]
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
    split = _video_part(latent)
    if split is not None:  # crop the video part; audio passes through untouched
        video, others, other_masks = split
        positive, negative, video = crop_guides_from(positive, negative, video)
        return positive, negative, _rejoin(video, others, other_masks)
    samples = latent["samples"]
    state = get_state(positive) or latent.get(STATE_KEY)
    if state:
        count, base = count_appended_frames(state["guides"]), int(state["base_frames"])
    else:  # guides from other nodes (e.g. core LTXVAddGuide): count tokens, not start frames
        base = None
        kf = cond_value(positive, "keyframe_idxs")
        count = 0 if kf is None else count_appended_frames(
            keyframe_tokens=int(kf.shape[2]), tokens_per_frame=int(samples.shape[3] * samples.shape[4]),
            entries=cond_value(positive, "guide_attention_entries"))
    s, m = crop_guides(samples, count, latent.get("noise_mask"), base_frames=base)
    out = {k: v for k, v in latent.items() if k not in ("samples", "noise_mask", STATE_KEY)}
    out["samples"] = s
    if m is not None:
        out["noise_mask"] = m
    return _without_guides(positive), _without_guides(negative), out


class PatchbayICLoraGuide:
    DESCRIPTION = ("Adds an in-context (IC) LoRA guide to an LTX video latent: the guide frames (depth, canny, "
                   "pose, a low-res clip...) are encoded, appended as clean tokens at the target frames' "
                   "positions, and removed again automatically after sampling. Chain several for several "
                   "guides. The IC-LoRA parameters (reference downscale factor, enabled) come from "
                   "PatchbayICLoraLoader or a stack row marked as IC-LoRA; when that IC-LoRA is disabled or at "
                   "strength 0 the guide is skipped too.")
    CATEGORY = IC_CATEGORY
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
                "latent": ("LATENT", {"tooltip": "The LTX video latent, or a combined audio-video latent "
                                                 "(LTXVConcatAVLatent): the guide goes on its video part."}),
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

    @classmethod
    def VALIDATE_INPUTS(cls, strength=None, attention_strength=None, start_percent=None, end_percent=None):
        return validation_result(number_inputs_error(cls, strength=strength, attention_strength=attention_strength,
                                                     start_percent=start_percent, end_percent=end_percent))

    def execute(self, positive, negative, vae, latent, guide, frame_idx, strength, attention_strength, crop,
                start_percent, end_percent, ic_lora=None, attention_mask=None):
        numbers = {n: finite_number(n, v) for n, v in (("strength", strength), ("attention_strength",
                   attention_strength), ("start_percent", start_percent), ("end_percent", end_percent))}
        return add_guide(positive, negative, vae, latent, guide, frame_idx, numbers["strength"],
                         numbers["attention_strength"], attention_mask, ic_lora, crop, numbers["start_percent"],
                         numbers["end_percent"])


class PatchbayICLoraCropGuides:
    DESCRIPTION = ("Removes IC-LoRA guide frames from a latent and clears the guide keys from the "
                   "conditionings. The guide node already crops automatically after sampling; use this for "
                   "custom samplers and two-stage pipelines (crop before a latent upscale). Takes a combined "
                   "audio-video latent (crops its video part, audio untouched) or the separated video latent. "
                   "Safe on an already cropped latent.")
    CATEGORY = IC_CATEGORY
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

