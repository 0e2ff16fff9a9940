"""Bad input through the engine's public API: a clear error naming the file
and the key, and nothing changed (model weights, the user's files)."""
import hashlib

import pytest
import torch
from safetensors.torch import load_file, save_file

from lora_core import api
from lora_core.errors import NonFiniteError, PatchbayError


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture()
def model_file(tmp_path):
    torch.manual_seed(1)
    path = tmp_path / "model.safetensors"
    save_file({"blocks.0.attn.weight": torch.randn(16, 8), "blocks.0.attn.bias": torch.randn(16),
               "blocks.1.mlp.weight": torch.randn(8, 16)}, str(path))
    return path


def _kohya(path, tensors):
    save_file(tensors, str(path))
    return path


def test_nan_lora_is_refused_and_model_untouched(tmp_path, model_file):
    good_up = torch.randn(8, 2)
    bad_up = torch.randn(16, 2)
    bad_up[3, 1] = float("nan")
    lora = _kohya(tmp_path / "nan.safetensors", {
        # a good module first, so a half-patched model would be visible
        "blocks.1.mlp.lora_up.weight": good_up, "blocks.1.mlp.lora_down.weight": torch.randn(2, 16),
        "blocks.0.attn.lora_up.weight": bad_up, "blocks.0.attn.lora_down.weight": torch.randn(2, 8)})
    before = (_sha(model_file), _sha(lora))
    out = tmp_path / "out.safetensors"
    with pytest.raises(NonFiniteError) as err:
        api.apply(str(model_file), [(str(lora), 1.0)], str(out))
    text = str(err.value)
    assert "nan.safetensors" in text and "blocks.0.attn" in text
    assert not out.exists()
    assert (_sha(model_file), _sha(lora)) == before


def test_inf_after_scaling_is_refused(tmp_path, model_file):
    lora = _kohya(tmp_path / "inf.safetensors", {
        "blocks.0.attn.lora_up.weight": torch.full((16, 2), 3e38),
        "blocks.0.attn.lora_down.weight": torch.full((2, 8), 3e38)})
    with pytest.raises(NonFiniteError, match="inf.safetensors"):
        api.apply(str(model_file), [(str(lora), 1.0)], str(tmp_path / "o.safetensors"))


def test_wrong_shape_is_reported_not_applied(tmp_path, model_file):
    lora = _kohya(tmp_path / "shape.safetensors", {
        "blocks.0.attn.lora_up.weight": torch.randn(32, 2),   # model has 16 rows
        "blocks.0.attn.lora_down.weight": torch.randn(2, 8),
        "blocks.1.mlp.lora_up.weight": torch.randn(8, 2),
        "blocks.1.mlp.lora_down.weight": torch.randn(2, 16)})
    report = api.check(str(lora), str(model_file))
    bad = [u for u in report.unmatched if u.reason == "shape mismatch"]
    assert len(bad) == 1 and bad[0].name.startswith("blocks.0.attn")
    assert "32" in bad[0].detail and "16" in bad[0].detail
    out = tmp_path / "o.safetensors"
    api.apply(str(model_file), [(str(lora), 1.0)], str(out))
    got, base = load_file(str(out)), load_file(str(model_file))
    assert torch.equal(got["blocks.0.attn.weight"], base["blocks.0.attn.weight"])
    assert not torch.equal(got["blocks.1.mlp.weight"], base["blocks.1.mlp.weight"])


def test_zero_rank_is_an_invalid_tensor_with_its_key(tmp_path):
    lora = _kohya(tmp_path / "zero.safetensors", {
        "blocks.0.attn.lora_up.weight": torch.zeros(16, 0),
        "blocks.0.attn.lora_down.weight": torch.zeros(0, 8)})
    parsed = api.open_lora(str(lora))
    assert parsed.patches == ()
    reasons = {u.key: u.reason for u in parsed.unused}
    assert reasons == {"blocks.0.attn.lora_up.weight": "invalid tensor",
                       "blocks.0.attn.lora_down.weight": "invalid tensor"}


def test_rank_disagreement_is_invalid(tmp_path):
    lora = _kohya(tmp_path / "ranks.safetensors", {
        "blocks.0.attn.lora_up.weight": torch.randn(16, 4),
        "blocks.0.attn.lora_down.weight": torch.randn(2, 8)})
    parsed = api.open_lora(str(lora))
    assert parsed.patches == () and all(u.reason == "invalid tensor" for u in parsed.unused)
    assert any("rank" in u.detail for u in parsed.unused)


def test_absurd_rank_header_is_refused(tmp_path):
    # A header claiming a 2**40-element tensor in a tiny file: refused before any allocation.
    import json
    import struct
    header = {"x.lora_up.weight": {"dtype": "F32", "shape": [1 << 20, 1 << 20], "data_offsets": [0, 1 << 42]}}
    raw = json.dumps(header).encode()
    path = tmp_path / "absurd.safetensors"
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"\0" * 64)
    with pytest.raises(PatchbayError, match="x.lora_up.weight"):
        api.open_lora(str(path))


def test_wrong_architecture_is_named(tmp_path):
    # kohya SDXL-style names (input_blocks 4.1 with transformer depth) against an SD1.5-like model
    from fixtures.model_keys import sd15_unet
    sd15 = sd15_unet()  # real SD1.5 key names and shapes (sd-mecha), ComfyUI naming
    lora = _kohya(tmp_path / "sdxl.safetensors", {
        "lora_unet_input_blocks_4_1_transformer_blocks_1_attn2_to_k.lora_up.weight": torch.randn(640, 2),
        "lora_unet_input_blocks_4_1_transformer_blocks_1_attn2_to_k.lora_down.weight": torch.randn(2, 2048),
        "lora_unet_middle_block_1_transformer_blocks_9_attn2_to_k.lora_up.weight": torch.randn(1280, 2),
        "lora_unet_middle_block_1_transformer_blocks_9_attn2_to_k.lora_down.weight": torch.randn(2, 2048)})
    report = api.check(str(lora), sd15)
    assert not report.matched
    assert report.family_warning and "sdxl" in report.family_warning.lower()
