"""Attention weighting between the video and its guides.

Each guide token gets a weight w (its attention strength, times an optional
pixel mask averaged over the area the token covers).  The additive logit
bias is log(w) (w ≤ 0 → the dtype's minimum) on video-query → guide-key and
guide-query → video-key pairs; video↔video and guide↔guide are unbiased.
w = 1 everywhere changes nothing; w = 0 makes the guide invisible to the
video and the video invisible to the guide.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .errors import ICLoraError


def mask_to_token_weights(mask: torch.Tensor, *, latent_frames: int, height: int, width: int,
                          causal: bool, t: int = 8) -> torch.Tensor:
    """Average a pixel mask (frames, H, W) onto a guide's latent grid; returns (F·h·w,).

    Time groups follow the guide's latents: causal guides start with a
    1-frame group, then groups of ``t``; mid-video guides use groups of ``t``.
    Missing frames repeat the mask's last frame; spatial cells are area means.
    """
    if mask.ndim == 2:
        mask = mask.unsqueeze(0)
    if mask.ndim != 3:
        raise ICLoraError(f"attention mask must be (frames, H, W), got {tuple(mask.shape)}")
    m = mask.float()
    groups = []
    start = 0
    for j in range(latent_frames):
        size = 1 if (causal and j == 0) else t
        idx = [min(i, m.shape[0] - 1) for i in range(start, start + size)]
        groups.append(m[idx].mean(0))
        start += size
    g = torch.stack(groups, 0).unsqueeze(1)  # (F, 1, H, W)
    g = F.adaptive_avg_pool2d(g, (height, width))
    return g.reshape(-1)


def token_bias(n_video: int, guide_weights: list[torch.Tensor], dtype=torch.float32, device=None):
    """Per-key bias for video queries and per-query log weights for guide queries.

    Returns ``(key_bias, guide_log_w)``: ``key_bias`` (T,) is 0 on video keys
    and log w on guide keys; ``guide_log_w`` (G,) is log w of each guide query,
    applied to the video keys.
    """
    w = torch.cat([gw.reshape(-1).to(device=device, dtype=torch.float32) for gw in guide_weights]) \
        if guide_weights else torch.zeros(0, device=device)
    low = torch.finfo(dtype).min
    logw = torch.where(w > 0, torch.log(w.clamp_min(1e-30)), torch.full_like(w, low))
    key_bias = torch.cat([torch.zeros(n_video, device=logw.device), logw]).to(dtype)
    return key_bias, logw.to(dtype)


def biased_attention(q, k, v, heads: int, n_video: int, key_bias, guide_log_w, *, skip_reshape=False,
                     skip_output_reshape=False):
    """Scaled dot-product attention with the guide bias, in two query groups.

    ``q, k, v`` are (B, T, H·D) (or (B, H, T, D) with ``skip_reshape``); the
    first ``n_video`` tokens are the video, the next ``len(guide_log_w)`` the
    guides, any further tokens are unbiased.  Video queries share one bias
    row (no T×T matrix); guide queries get a (G, T) bias.
    """
    if skip_reshape:
        b, h, tq, d = q.shape
        qh, kh, vh = q, k, v
    else:
        b, tq, hd = q.shape
        d = hd // heads
        qh, kh, vh = (x.view(b, -1, heads, d).transpose(1, 2) for x in (q, k, v))
    n_g = guide_log_w.shape[0]
    tk = kh.shape[2]
    kb = key_bias.to(qh.dtype)
    outs = [F.scaled_dot_product_attention(qh[:, :, :n_video], kh, vh, attn_mask=kb.view(1, 1, 1, tk))]
    if n_g:
        gq = torch.zeros((n_g, tk), dtype=qh.dtype, device=qh.device)
        gq[:, :n_video] = guide_log_w.to(qh.dtype).view(-1, 1)
        outs.append(F.scaled_dot_product_attention(qh[:, :, n_video:n_video + n_g], kh, vh,
                                                   attn_mask=gq.view(1, 1, n_g, tk)))
    if tq > n_video + n_g:
        outs.append(F.scaled_dot_product_attention(qh[:, :, n_video + n_g:], kh, vh))
    out = torch.cat(outs, dim=2)
    if skip_output_reshape:
        return out
    return out.transpose(1, 2).reshape(b, tq, -1)
