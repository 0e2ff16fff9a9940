"""IC-LoRA guide maths against hand-checked numbers (see docs/iclora.md)."""
import pytest
import torch

from lora_core.iclora import (
    ICLoraError, GuideRecord, base_noise_mask, count_appended_frames, crop_guides, dilate_latent,
    guide_keyframe_coords, guide_noise_mask, keep_index_for_window, latent_index_for, next_record,
    plan_guide, resolve_frame_idx, snap_frame_idx, step_active, trim_to_8n1,
)


# --- frames: trimming, negative indices, snapping ----------------------------------------------

@pytest.mark.parametrize("n,expected", [(1, 1), (2, 1), (8, 1), (9, 9), (16, 9), (17, 17), (40, 33)])
def test_trim_to_8n1(n, expected):
    assert trim_to_8n1(n) == expected


def test_trim_refuses_empty_guide():
    with pytest.raises(ICLoraError, match="no frames"):
        trim_to_8n1(0)


@pytest.mark.parametrize("idx,expected", [(5, 5), (0, 0), (-1, 32), (-9, 24), (-33, 0), (-40, 0)])
def test_resolve_negative_index(idx, expected):
    # 5 latent frames = 33 pixel frames (0..32); -1 is frame 32
    assert resolve_frame_idx(idx, 5) == expected


@pytest.mark.parametrize("idx,frames,expected", [
    (0, 17, 0), (1, 17, 1), (5, 17, 1), (8, 17, 1), (9, 17, 9), (10, 17, 9), (16, 17, 9), (17, 17, 17),
    (5, 1, 5), (13, 1, 13),  # single frames are never snapped
])
def test_snap_frame_idx(idx, frames, expected):
    assert snap_frame_idx(idx, frames) == expected


@pytest.mark.parametrize("idx,expected", [(0, 0), (1, 1), (8, 1), (9, 2), (16, 2), (17, 3)])
def test_latent_index(idx, expected):
    assert latent_index_for(idx) == expected


# --- planning and the causal fix -----------------------------------------------------------------

def test_plan_guide_at_zero_is_causal():
    p = plan_guide(guide_frames=17, frame_idx=0, base_latent_frames=5, latent_height=4, latent_width=6)
    assert (p.frame_idx, p.latent_idx, p.causal, p.latent_frames) == (0, 0, True, 3)
    assert p.source_frames == tuple(range(17)) and not p.drop_first_latent
    assert (p.encode_width, p.encode_height) == (192, 128)
    assert p.tokens == 3 * 4 * 6


def test_causal_fix_mid_video_multi_frame():
    # 19 frames -> trimmed to 17; mid-video: duplicate frame 0, keep 17 frames (0,0,1..15),
    # encode to 3 latents, drop the first -> 2 latent frames of 8 pixel frames each.
    p = plan_guide(guide_frames=19, frame_idx=12, base_latent_frames=5, latent_height=4, latent_width=6)
    assert p.frame_idx == 9 and p.latent_idx == 2
    assert not p.causal and p.drop_first_latent
    assert p.source_frames == (0, 0) + tuple(range(1, 16))
    assert len(p.source_frames) == 17
    assert p.latent_frames == 2


def test_single_frame_mid_video_is_causal_and_not_snapped():
    p = plan_guide(guide_frames=1, frame_idx=13, base_latent_frames=5, latent_height=2, latent_width=2)
    assert (p.frame_idx, p.latent_idx, p.causal, p.latent_frames) == (13, 2, True, 1)


def test_negative_index_resolving_to_zero_is_causal():
    p = plan_guide(guide_frames=9, frame_idx=-33, base_latent_frames=5, latent_height=2, latent_width=2)
    assert (p.frame_idx, p.causal, p.latent_frames) == (0, True, 2)


def test_negative_index_multi_frame():
    # -9 -> pixel 24 -> snapped to 17 -> latent 3; 9 frames mid-video -> 1 latent frame
    p = plan_guide(guide_frames=9, frame_idx=-9, base_latent_frames=5, latent_height=2, latent_width=2)
    assert (p.frame_idx, p.latent_idx, p.causal, p.latent_frames) == (17, 3, False, 1)


def test_guide_larger_than_timeline_is_refused():
    with pytest.raises(ICLoraError, match="does not fit"):
        plan_guide(guide_frames=41, frame_idx=0, base_latent_frames=5, latent_height=2, latent_width=2)
    with pytest.raises(ICLoraError, match="does not fit"):
        plan_guide(guide_frames=17, frame_idx=25, base_latent_frames=5, latent_height=2, latent_width=2)
    # the last place that fits
    assert plan_guide(guide_frames=17, frame_idx=17, base_latent_frames=5, latent_height=2,
                      latent_width=2).latent_idx == 3


def test_size_not_divisible_by_k_is_refused():
    with pytest.raises(ICLoraError, match="not divisible"):
        plan_guide(guide_frames=1, frame_idx=0, base_latent_frames=2, latent_height=3, latent_width=4, k=2)
    p = plan_guide(guide_frames=1, frame_idx=0, base_latent_frames=2, latent_height=4, latent_width=6, k=2)
    assert (p.encode_width, p.encode_height) == (96, 64)


# --- dilation -------------------------------------------------------------------------------------

def test_dilation_k2():
    small = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).view(1, 1, 1, 2, 2)
    big, mask = dilate_latent(small, 2)
    assert big.shape == (1, 1, 1, 4, 4)
    expected = torch.tensor([[1, 0, 2, 0], [0, 0, 0, 0], [3, 0, 4, 0], [0, 0, 0, 0]], dtype=torch.float32)
    assert torch.equal(big[0, 0, 0], expected)
    expected_mask = torch.tensor([[1, -1, 1, -1], [-1, -1, -1, -1], [1, -1, 1, -1], [-1, -1, -1, -1]],
                                 dtype=torch.float32)
    assert torch.equal(mask[0, 0, 0], expected_mask)


def test_dilation_k1_is_identity():
    x = torch.randn(1, 4, 2, 3, 3)
    big, mask = dilate_latent(x, 1)
    assert big is x and mask is None


def test_dilation_k3_counts():
    big, mask = dilate_latent(torch.ones(2, 3, 2, 2, 3), 3)
    assert big.shape == (2, 3, 2, 6, 9)
    assert int((mask > 0).sum()) == 2 * 2 * 2 * 3  # batch*frames*real cells
    assert int(big.sum()) == 2 * 3 * 2 * 2 * 3


# --- keyframe coordinates -------------------------------------------------------------------------

def test_coords_k1_causal_at_zero():
    c = guide_keyframe_coords(latent_frames=2, latent_height=1, latent_width=2, frame_idx=0, causal=True)
    assert c.shape == (1, 3, 4, 2)
    assert c[0, 0].tolist() == [[0, 1], [0, 1], [1, 9], [1, 9]]        # time
    assert c[0, 1].tolist() == [[0, 32]] * 4                           # height
    assert c[0, 2].tolist() == [[0, 32], [32, 64], [0, 32], [32, 64]]  # width


def test_coords_k1_mid_video_not_causal():
    c = guide_keyframe_coords(latent_frames=2, latent_height=1, latent_width=1, frame_idx=9, causal=False)
    assert c[0, 0].tolist() == [[9, 17], [17, 25]]


def test_coords_single_frame_causal_mid_video():
    c = guide_keyframe_coords(latent_frames=1, latent_height=1, latent_width=1, frame_idx=17, causal=True)
    assert c[0, 0].tolist() == [[17, 18]]


def test_coords_k2_end_stretch():
    c = guide_keyframe_coords(latent_frames=1, latent_height=2, latent_width=2, frame_idx=0, causal=True, k=2)
    # token order (h, w): (0,0) (0,1) (1,0) (1,1); ends grow by (k-1)*32 = 32
    assert c[0, 1].tolist() == [[0, 64], [0, 64], [32, 96], [32, 96]]
    assert c[0, 2].tolist() == [[0, 64], [32, 96], [0, 64], [32, 96]]
    assert c[0, 0].tolist() == [[0, 1]] * 4


def test_coords_k2_worked_example_row_6():
    # small-grid row 3 sits at dilated row 6: [192, 224) -> [192, 256), midpoint 224
    c = guide_keyframe_coords(latent_frames=1, latent_height=8, latent_width=1, frame_idx=0, causal=True, k=2)
    assert c[0, 1, 6].tolist() == [192, 256]


def test_coords_batch_and_dtype():
    c = guide_keyframe_coords(latent_frames=1, latent_height=1, latent_width=1, frame_idx=0, causal=True, batch=3)
    assert c.shape == (3, 3, 1, 2) and c.dtype == torch.int64


# --- noise masks ----------------------------------------------------------------------------------

def test_base_mask_default_and_clone():
    m = base_noise_mask(2, 3)
    assert m.shape == (2, 1, 3, 1, 1) and torch.all(m == 1)
    e = torch.full((1, 1, 3, 1, 1), 0.5)
    m2 = base_noise_mask(1, 3, e)
    assert torch.equal(m2, e) and m2 is not e
    with pytest.raises(ICLoraError):
        base_noise_mask(1, 4, e)


@pytest.mark.parametrize("s,expected", [(1.0, 0.0), (0.7, 0.3), (0.0, 1.0)])
def test_guide_mask_k1(s, expected):
    base, part = guide_noise_mask(base_noise_mask(1, 3), 2, s)
    assert part.shape == (1, 1, 2, 1, 1)
    assert torch.allclose(part, torch.full_like(part, expected))
    assert base.shape == (1, 1, 3, 1, 1)


def test_guide_mask_k2():
    _, gm = dilate_latent(torch.ones(1, 1, 1, 1, 1), 2)
    base, part = guide_noise_mask(base_noise_mask(1, 3), 1, 0.7, gm)
    assert base.shape == (1, 1, 3, 2, 2) and torch.all(base == 1)
    assert torch.allclose(part[0, 0, 0], torch.tensor([[0.3, -1.7], [-1.7, -1.7]]))
    _, part1 = guide_noise_mask(base_noise_mask(1, 3), 1, 1.0, gm)
    assert part1[0, 0, 0].tolist() == [[0.0, -2.0], [-2.0, -2.0]]


def test_guide_strength_above_one_refused():
    _, gm = dilate_latent(torch.ones(1, 1, 1, 1, 1), 2)
    with pytest.raises(ICLoraError, match="between 0 and 1"):
        guide_noise_mask(base_noise_mask(1, 3), 1, 1.5, gm)


# --- crop counting --------------------------------------------------------------------------------

def _append(records, plan):
    return records + [next_record(records, plan)]


def _distinct_starts(records, h, w):
    """Old core counting: distinct temporal starts of keyframe tokens."""
    starts = []
    for r in records:
        c = guide_keyframe_coords(latent_frames=r.frames, latent_height=h, latent_width=w,
                                  frame_idx=r.frame_idx, causal=r.frame_idx == 0 or r.frames == 1)
        starts.append(c[0, 0, :, 0])
    return int(torch.unique(torch.cat(starts)).numel())


def test_count_one_guide():
    recs = _append([], plan_guide(guide_frames=17, frame_idx=0, base_latent_frames=5, latent_height=2,
                                  latent_width=2))
    assert count_appended_frames(recs) == 3
    assert count_appended_frames(keyframe_tokens=sum(r.tokens for r in recs), tokens_per_frame=4) == 3


def test_count_two_guides():
    recs = _append([], plan_guide(guide_frames=1, frame_idx=0, base_latent_frames=5, latent_height=2,
                                  latent_width=2))
    recs = _append(recs, plan_guide(guide_frames=9, frame_idx=17, base_latent_frames=5, latent_height=2,
                                    latent_width=2))
    assert [r.frames for r in recs] == [1, 1]
    assert [r.offset for r in recs] == [0, 1]
    assert count_appended_frames(recs) == 2


def test_count_two_guides_same_start():
    recs = _append([], plan_guide(guide_frames=17, frame_idx=0, base_latent_frames=5, latent_height=2,
                                  latent_width=2))
    recs = _append(recs, plan_guide(guide_frames=9, frame_idx=0, base_latent_frames=5, latent_height=2,
                                    latent_width=2))
    assert count_appended_frames(recs) == 5
    assert [r.offset for r in recs] == [0, 3]
    # the old "distinct start frames" rule gets 3 here: it would leave 2 guide frames in the video
    assert _distinct_starts(recs, 2, 2) == 3
    samples = torch.arange(10.0).view(1, 1, 10, 1, 1)
    out, mask = crop_guides(samples, count_appended_frames(recs), torch.zeros(1, 1, 10, 1, 1))
    assert out.flatten().tolist() == [0, 1, 2, 3, 4] and mask.shape[2] == 5


def test_count_guide_at_negative_index():
    recs = _append([], plan_guide(guide_frames=1, frame_idx=-1, base_latent_frames=5, latent_height=2,
                                  latent_width=2))
    assert (recs[0].frame_idx, recs[0].latent_idx, recs[0].frames) == (32, 4, 1)
    assert count_appended_frames(recs) == 1


def test_count_fallbacks():
    assert count_appended_frames([]) == 0
    assert count_appended_frames(entries=[{"latent_shape": [2, 1, 1]}, {"latent_shape": [3, 1, 1]}]) == 5
    with pytest.raises(ICLoraError, match="whole number"):
        count_appended_frames(keyframe_tokens=10, tokens_per_frame=4)


def test_crop_already_cropped_latent_only_trims_mask():
    s = torch.zeros(1, 1, 5, 1, 1)
    out, mask = crop_guides(s, 3, torch.ones(1, 1, 8, 1, 1), base_frames=5)
    assert out is s and mask.shape[2] == 5
    with pytest.raises(ICLoraError, match="expected 8"):
        crop_guides(torch.zeros(1, 1, 7, 1, 1), 3, base_frames=5)


# --- step window ----------------------------------------------------------------------------------

def test_step_window():
    assert [s for s in range(10) if step_active(s, 10, 0.2, 0.6)] == [2, 3, 4, 5]
    assert [s for s in range(4) if step_active(s, 4, 0.0, 1.0)] == [0, 1, 2, 3]
    assert [s for s in range(4) if step_active(s, 4, 0.5, 1.0)] == [2, 3]


def test_keep_index_for_window():
    recs = [GuideRecord(0, 0, 3, 0, 12), GuideRecord(0, 0, 2, 3, 8)]
    keep, flags = keep_index_for_window(5, recs, [False, True])
    assert keep == [0, 1, 2, 3, 4, 8, 9] and flags == [False, True]
    assert keep_index_for_window(5, recs, [True, True])[0] == list(range(10))


def test_coords_starts_only_layout():
    c = guide_keyframe_coords(latent_frames=2, latent_height=1, latent_width=1, frame_idx=9, causal=False,
                              intervals=False)
    assert c.shape == (1, 3, 2) and c[0, 0].tolist() == [9, 17] and c[0, 1].tolist() == [0, 0]
