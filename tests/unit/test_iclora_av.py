"""The video part of a packed LTX-2 audio-video latent (lora_core.iclora.av), against hand-built layouts."""
import pytest
import torch

from lora_core.iclora import (ICLoraError, crop_packed_video, pack, scatter_packed_video, select_packed_video,
                              split_packed, video_frames)


def _parts():
    video = torch.arange(2 * 3 * 5 * 2 * 2, dtype=torch.float32).reshape(2, 3, 5, 2, 2)
    audio = -torch.arange(2 * 8 * 7 * 4, dtype=torch.float32).reshape(2, 8, 7, 4)
    return video, audio


def test_pack_is_each_part_flattened_then_joined():
    video, audio = _parts()
    flat, shapes = pack([video, audio])
    assert flat.shape == (2, 1, 60 + 224) and shapes == [video.shape, audio.shape]
    assert torch.equal(flat[1, 0, :60], video[1].flatten()) and torch.equal(flat[1, 0, 60:], audio[1].flatten())
    v, a = split_packed(flat, shapes)
    assert torch.equal(v, video) and torch.equal(a, audio)
    assert video_frames(shapes) == 5 and video_frames([audio.shape]) is None


def test_crop_cuts_video_frames_only():
    video, audio = _parts()
    flat, shapes = pack([video, audio])
    out, new = crop_packed_video(flat, shapes, 3)
    v, a = split_packed(out, new)
    assert new[0] == (2, 3, 3, 2, 2) and new[1] == audio.shape
    assert torch.equal(v, video[:, :, :3]) and torch.equal(a, audio)


def test_select_then_scatter_restores_unselected_frames():
    video, audio = _parts()
    flat, shapes = pack([video, audio])
    idx = torch.tensor([0, 1, 2, 4])
    run, run_shapes = select_packed_video(flat, shapes, idx)
    assert run_shapes[0] == (2, 3, 4, 2, 2)
    out = scatter_packed_video(flat, shapes, run * 2, run_shapes, idx)
    v, a = split_packed(out, shapes)
    assert torch.equal(v[:, :, idx], video[:, :, idx] * 2) and torch.equal(v[:, :, 3], video[:, :, 3])
    assert torch.equal(a, audio * 2)   # the audio part is the model's output


def test_split_refuses_wrong_size():
    video, audio = _parts()
    flat, shapes = pack([video, audio])
    with pytest.raises(ICLoraError, match="does not hold"):
        split_packed(flat[..., :-1], shapes)
