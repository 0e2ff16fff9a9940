"""Guide attention weighting: mask pooling and the biased attention, hand-checked."""
import math

import pytest
import torch

from lora_core.iclora import biased_attention, mask_to_token_weights, token_bias


def test_mask_pooling_causal_groups():
    # 9 frames: frame 0 alone, frames 1-8 together; 64x64 -> 2x2 cells
    m = torch.zeros(9, 64, 64)
    m[0, :32, :32] = 1.0            # first latent frame, top-left cell fully on
    m[1:5, :, 32:] = 1.0            # half of frames 1-8 on the right half
    w = mask_to_token_weights(m, latent_frames=2, height=2, width=2, causal=True)
    assert w.tolist() == [1.0, 0.0, 0.0, 0.0, 0.0, 0.5, 0.0, 0.5]


def test_mask_pooling_mid_video_groups_of_8_and_2d_mask():
    m = torch.zeros(16, 32, 32)
    m[8:] = 1.0
    assert mask_to_token_weights(m, latent_frames=2, height=1, width=1, causal=False).tolist() == [0.0, 1.0]
    assert mask_to_token_weights(torch.full((32, 32), 0.25), latent_frames=2, height=1, width=1,
                                 causal=True).tolist() == [0.25, 0.25]


def test_token_bias_values():
    kb, gl = token_bias(2, [torch.tensor([1.0, 0.5]), torch.tensor([0.0])])
    assert kb[:2].tolist() == [0.0, 0.0]
    assert kb[2] == 0.0 and math.isclose(float(kb[3]), math.log(0.5), rel_tol=1e-6)
    assert float(kb[4]) == torch.finfo(torch.float32).min
    assert gl.shape == (3,)


def _plain(q, k, v, heads):
    b, t, hd = q.shape
    d = hd // heads
    qh, kh, vh = (x.view(b, -1, heads, d).transpose(1, 2) for x in (q, k, v))
    return torch.nn.functional.scaled_dot_product_attention(qh, kh, vh).transpose(1, 2).reshape(b, t, -1)


def test_weight_one_is_plain_attention():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 7, 8, generator=g) for _ in range(3))
    kb, gl = token_bias(4, [torch.ones(3)])
    assert torch.allclose(biased_attention(q, k, v, 2, 4, kb, gl), _plain(q, k, v, 2), atol=1e-6)


def test_weight_zero_separates_video_and_guide():
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(1, 6, 8, generator=g) for _ in range(3))
    kb, gl = token_bias(4, [torch.zeros(2)])
    out = biased_attention(q, k, v, 2, 4, kb, gl)
    video_only = _plain(q[:, :4], k[:, :4], v[:, :4], 2)
    guide_only = _plain(q[:, 4:], k[:, 4:], v[:, 4:], 2)
    assert torch.allclose(out[:, :4], video_only, atol=1e-6)
    assert torch.allclose(out[:, 4:], guide_only, atol=1e-6)


def test_half_weight_matches_hand_computed_softmax():
    # one head, dim 1: scores are q*k; video query 0 over keys [video, guide] with guide weight 0.5
    q = torch.tensor([[[1.0], [1.0]]])
    k = torch.tensor([[[0.0], [0.0]]])
    v = torch.tensor([[[0.0], [1.0]]])
    kb, gl = token_bias(1, [torch.tensor([0.5])])
    out = biased_attention(q, k, v, 1, 1, kb, gl)
    # equal scores, guide key weighted 0.5: softmax -> [1/1.5, 0.5/1.5]; output = 1/3
    assert out[0, 0, 0].item() == pytest.approx(1 / 3, rel=1e-6)
    # guide query: video key weighted 0.5, guide key 1 -> output = 1/1.5 = 2/3
    assert out[0, 1, 0].item() == pytest.approx(2 / 3, rel=1e-6)
