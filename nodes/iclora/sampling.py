"""The guides' per-run sampling wrappers (installed through the hook the guide node attaches).

OUTER_SAMPLE cuts the appended guide frames off the sampler's output;
APPLY_MODEL drops the guides outside their step window
(``lora_core.iclora.window_selection``) and weights video↔guide attention.
On LTX-2 audio-video both work on the video part of the packed latent
(``lora_core.iclora.av``); the audio part is never cut.
"""
from __future__ import annotations

import logging

import torch

from ...lora_core.iclora import (ICLoraError, biased_attention, count_appended_frames, crop_packed_video,
                                 guides_active, present_guide_weights, scatter_packed_video, select_packed_video,
                                 split_packed, step_of_sigma, token_bias, video_frames, window_selection)
from .shared import GUIDE_COND_KEYS, STATE_KEY

log = logging.getLogger("lora-patchbay.iclora")


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
    packed = shapes is not None and len(shapes) > 1   # LTX-2 audio-video: flat latent, video part first
    base, count = int(state["base_frames"]), count_appended_frames(state["guides"])
    latent = args[1] if len(args) > 1 else kwargs.get("latent_image")
    if packed:
        frames = video_frames(shapes)
        if frames is None:
            log.warning("IC-LoRA automatic crop skipped: the first part of this combined latent is not a video "
                        "latent (shapes %s)", [tuple(s) for s in shapes])
            return executor(*args, **kwargs)
    else:
        frames = latent.shape[2] if torch.is_tensor(latent) and latent.ndim == 5 else None
    if frames == base and count:
        # guide conditionings reused on a latent whose guides were already cropped (e.g. a second
        # stage): sample without the guides instead of mispositioning the last tokens.
        log.info("IC-LoRA: latent has no guide frames any more; sampling without guides")
        for cond_list in (getattr(guider, "conds", None) or {}).values():
            for c in cond_list or []:
                if isinstance(c, dict):
                    for key in GUIDE_COND_KEYS:
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
    if packed:
        return _sample_packed_and_crop(executor, args, kwargs, shapes, base, count)
    out = executor(*args, **kwargs)
    if torch.is_tensor(out) and out.ndim == 5 and out.shape[2] == base + count and count:
        out = out[:, :, :base]
    elif count:
        log.warning("IC-LoRA automatic crop skipped: sampler output has shape %s, expected %d frames",
                    tuple(getattr(out, "shape", ())), base + count)
    return out


def _sample_packed_and_crop(executor, args, kwargs, shapes, base: int, count: int):
    """Sample a packed audio-video latent and cut the guide frames off its video part.

    The guider unpacks our output with the very ``latent_shapes`` list it passed us, so the
    cropped video shape is written into that list; a host that passes something else keeps
    the guide frames (the crop node still removes them).  The per-step ``x0`` given to the
    callback (previews, SamplerCustomAdvanced's denoised output, unpacked by the output's
    shapes) is cropped the same way."""
    if not count:
        return executor(*args, **kwargs)
    full = [tuple(s) for s in shapes]
    args = list(args)
    callback = args[5] if len(args) > 5 else kwargs.get("callback")
    if callable(callback):
        def cropped_callback(step, x0, x, total_steps):
            if torch.is_tensor(x0) and x0.ndim == 3:
                x0 = crop_packed_video(x0, full, base)[0]
            return callback(step, x0, x, total_steps)
        if len(args) > 5:
            args[5] = cropped_callback
        else:
            kwargs["callback"] = cropped_callback
    out = executor(*args, **kwargs)
    if not torch.is_tensor(out) or out.ndim != 3:
        log.warning("IC-LoRA automatic crop skipped: audio-video sampler output has shape %s",
                    tuple(getattr(out, "shape", ())))
        return out
    cropped, new_shapes = crop_packed_video(out, full, base)
    try:
        shapes[0] = new_shapes[0]
    except TypeError:
        log.warning("IC-LoRA automatic crop skipped on this audio-video latent (the host's latent shapes "
                    "cannot be updated); add PatchbayICLoraCropGuides after sampling.")
        return out
    return cropped


def _attention_override(n_video: int, weights: list, total: int, prev, width: int | None = None):
    """An ``optimized_attention_override`` biasing video↔guide attention in self-attention calls
    (those with ``total`` queries and keys, and queries ``width`` wide when given)."""
    cache = {}

    def override(func, *args, **kwargs):
        q, k, v, heads = args[:4]
        skip_reshape = kwargs.get("skip_reshape", False)
        tq = q.shape[2] if skip_reshape else q.shape[1]
        tk = k.shape[2] if skip_reshape else k.shape[1]
        qw = q.shape[1] * q.shape[3] if skip_reshape else q.shape[-1]
        mask = kwargs.get("mask", args[4] if len(args) > 4 else None)
        if mask is None and tq == tk == total and (width is None or qw == width):
            key = (q.device, q.dtype)
            if key not in cache:
                cache[key] = token_bias(n_video, weights, dtype=q.dtype, device=q.device)
            kb, gl = cache[key]
            return biased_attention(q, k, v, heads, n_video, kb, gl, skip_reshape=skip_reshape,
                                    skip_output_reshape=kwargs.get("skip_output_reshape", False))
        return prev(func, *args, **kwargs) if prev is not None else func(*args, **kwargs)
    return override



def _current_step(transformer_options, t) -> tuple[int, int] | None:
    sigmas = transformer_options.get("sample_sigmas")
    if sigmas is None or not torch.is_tensor(t) or t.numel() == 0:
        return None
    return step_of_sigma(sigmas, t)


def apply_model_window_wrapper(executor, x, t, c_concat=None, c_crossattn=None, control=None,
                               transformer_options={}, **kwargs):
    """Per model call: drop guides outside their step window, weight attention to the others.

    On LTX-2 audio-video the model input is the packed latent (video part first, ``latent_shapes``):
    the same frames are selected in its video part; the audio part always runs whole."""
    state = transformer_options.get(STATE_KEY)
    shapes = kwargs.get("latent_shapes")
    packed = x.ndim == 3 and shapes is not None and len(shapes) > 1 and video_frames(shapes) is not None
    if not state or not (x.ndim == 5 or packed):
        return executor(x, t, c_concat, c_crossattn, control, transformer_options, **kwargs)
    frames, h, w = (int(v) for v in (shapes[0] if packed else x.shape)[2:5])
    records = state["guides"]
    base = int(state["base_frames"])
    if frames != base + count_appended_frames(records):
        return executor(x, t, c_concat, c_crossattn, control, transformer_options, **kwargs)
    active = guides_active(records, _current_step(transformer_options, t))
    kw = dict(kwargs)
    idx = None
    x_run = x
    if not all(active):
        sel = window_selection(base, records, active)
        idx = torch.tensor(sel.frames, device=x.device)
        dm = kw.get("denoise_mask")  # the video's own mask also on audio-video (the host unpacks it)
        if torch.is_tensor(dm) and dm.ndim == 5 and dm.shape[2] == frames:
            kw["denoise_mask"] = dm.index_select(2, idx.to(dm.device))
        kf = kw.get("keyframe_idxs")
        if torch.is_tensor(kf):
            kw["keyframe_idxs"] = (kf.index_select(2, torch.tensor(sel.tokens, device=kf.device, dtype=torch.long))
                                   if sel.tokens else None)
        entries = kwargs.get("guide_attention_entries")
        if entries is not None:
            kw["guide_attention_entries"] = [entries[i] for i in sel.guides if i < len(entries)] or None
        if packed:
            x_run, kw["latent_shapes"] = select_packed_video(x, shapes, idx)
        else:
            x_run = x.index_select(2, idx)
    # attention weighting of the guides that are present (skipped when every weight is 1)
    weights = present_guide_weights(records, active, state.get("attn_weights"), h, w)
    plain = all(bool(torch.all(wt == 1.0)) for wt in weights)
    opts = transformer_options
    if weights and not plain and "guide_attention_entries" not in kw:
        n_video = base * h * w
        total = n_video + sum(int(wt.numel()) for wt in weights)
        # audio self-attention may have as many tokens as the video: tell them apart by width
        width = _video_attention_width(executor) if packed else None
        opts = dict(transformer_options)
        opts["optimized_attention_override"] = _attention_override(
            n_video, weights, total, transformer_options.get("optimized_attention_override"), width)
    out_run = executor(x_run, t, c_concat, c_crossattn, control, opts, **kw)
    if idx is None:
        return out_run
    if packed:
        return scatter_packed_video(x, shapes, out_run, kw["latent_shapes"], idx)
    out = x.to(out_run.dtype).clone()
    out[:, :, idx] = out_run
    return out


def _video_attention_width(executor) -> int | None:
    """Query width (heads × head dim) of the video self-attention of the model being run."""
    model = getattr(getattr(executor, "class_obj", None), "diffusion_model", None)
    width = getattr(model, "inner_dim", None)
    return int(width) if isinstance(width, int) else None
