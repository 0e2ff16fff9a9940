"""In-context panel layout/crop and IC metadata parsing, hand-checked."""
import pytest
import torch

from lora_core.iclora import (
    ICLoraError, PanelLayout, crop_panels, merge_factors, panel_layout, panel_noise_mask, parse_ic_metadata,
)


def test_side_by_side():
    lay = panel_layout("side-by-side", 512, 384)
    assert (lay.canvas_width, lay.canvas_height) == (1024, 384)
    assert lay.rects == ((0, 0, 512, 384), (512, 0, 512, 384))
    assert lay.targets == (1,)


def test_top_bottom():
    lay = panel_layout("top-bottom", 512, 384)
    assert (lay.canvas_width, lay.canvas_height) == (512, 768)
    assert lay.rects == ((0, 0, 512, 384), (0, 384, 512, 384))


@pytest.mark.parametrize("n,cols,rows", [(2, 2, 1), (3, 2, 2), (4, 2, 2), (5, 3, 2), (9, 3, 3)])
def test_grid_shape(n, cols, rows):
    lay = panel_layout("grid", 256, 128, panels=n)
    assert (lay.cols, lay.rows, lay.panels) == (cols, rows, n)
    assert lay.targets == tuple(range(1, n))


def test_grid_rects_row_major():
    lay = panel_layout("grid", 256, 128, panels=4)
    assert lay.rects == ((0, 0, 256, 128), (256, 0, 256, 128), (0, 128, 256, 128), (256, 128, 256, 128))


def test_bad_panel_inputs():
    with pytest.raises(ICLoraError, match="multiples of 16"):
        panel_layout("side-by-side", 500, 512)
    with pytest.raises(ICLoraError, match="unknown panel layout"):
        panel_layout("diagonal", 512, 512)
    with pytest.raises(ICLoraError, match="at least 2"):
        panel_layout("grid", 512, 512, panels=1)


def test_noise_mask_side_by_side_latent_scale():
    m = panel_noise_mask(panel_layout("side-by-side", 64, 32), divisor=8)
    assert m.shape == (4, 16)
    assert torch.all(m[:, :8] == 0) and torch.all(m[:, 8:] == 1)


def test_noise_mask_grid_3_keeps_unused_cell():
    m = panel_noise_mask(panel_layout("grid", 16, 16, panels=3))
    assert m.shape == (32, 32)
    assert m[0, 0] == 0 and m[0, 20] == 1 and m[20, 0] == 1 and m[20, 20] == 0  # cell 3 unused -> kept
    assert float(m.sum()) == 2 * 16 * 16


def test_crop_latent_side_by_side():
    lay = panel_layout("side-by-side", 64, 32)
    lat = torch.arange(2 * 4 * 16, dtype=torch.float32).view(1, 2, 4, 16)
    out = crop_panels(lat, lay, channels_last=False)
    assert out.shape == (1, 2, 4, 8)
    assert torch.equal(out, lat[..., 8:])


def test_crop_image_grid_targets_in_order():
    lay = panel_layout("grid", 16, 16, panels=4)
    img = torch.zeros(1, 32, 32, 3)
    img[:, :16, 16:] = 1  # panel 1
    img[:, 16:, :16] = 2  # panel 2
    img[:, 16:, 16:] = 3  # panel 3
    out = crop_panels(img, lay, channels_last=True)
    assert out.shape == (3, 16, 16, 3)
    assert [float(out[i].mean()) for i in range(3)] == [1.0, 2.0, 3.0]


def test_crop_wrong_size_refused():
    lay = panel_layout("side-by-side", 64, 32)
    with pytest.raises(ICLoraError, match="cannot crop"):
        crop_panels(torch.zeros(1, 4, 5, 16), lay, channels_last=False)


def test_layout_round_trip():
    lay = panel_layout("grid", 32, 48, panels=5)
    assert PanelLayout.from_dict(lay.to_dict()) == lay


# --- metadata ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("raw,k", [("2", 2), ("2.0", 2), (" 3 ", 3), ("1", 1)])
def test_factor_parsing(raw, k):
    p = parse_ic_metadata({"reference_downscale_factor": raw})
    assert p.reference_downscale_factor == k and p.reference_temporal_scale_factor == 1
    assert p.warnings == ()


@pytest.mark.parametrize("raw", ["abc", "0", "-2", "1.5", "nan", "inf"])
def test_invalid_factor_warns_and_falls_back(raw):
    p = parse_ic_metadata({"reference_downscale_factor": raw})
    assert p.reference_downscale_factor == 1
    assert len(p.warnings) == 1 and "using 1" in p.warnings[0]


def test_scale_like_value_gets_a_hint():
    p = parse_ic_metadata({"reference_downscale_factor": "0.5"})
    assert p.reference_downscale_factor == 1 and "0.5 means factor 2" in p.warnings[0]


def test_missing_factor_warns():
    p = parse_ic_metadata({"ss_network_dim": "32"})
    assert p.reference_downscale_factor == 1 and "no reference_downscale_factor" in p.warnings[0]
    assert parse_ic_metadata(None).reference_downscale_factor == 1


def test_namespaced_and_temporal_keys():
    p = parse_ic_metadata({"ltx_reference_downscale_factor": "2", "reference_temporal_scale_factor": "4"})
    assert (p.reference_downscale_factor, p.reference_temporal_scale_factor) == (2, 4)
    assert p.as_dict() == {"reference_downscale_factor": 2, "reference_temporal_scale_factor": 4}


def test_merge_factors():
    assert merge_factors([]) == 1
    assert merge_factors([("a", 2), ("b", 2)]) == 2
    with pytest.raises(ICLoraError, match="different reference_downscale_factor"):
        merge_factors([("a", 2), ("b", 1)])


# --- stack rows -------------------------------------------------------------------------------------

from lora_core.iclora import ICLora, ic_lora_for_file, ic_lora_for_stack_rows  # noqa: E402


def test_stack_params_not_hidden_by_later_lora():
    # the IC-LoRA is not the last row; its own header decides
    p = ic_lora_for_stack_rows([("union-ref0.5", {"reference_downscale_factor": "2"}, 1.0, True)])
    assert p.reference_downscale_factor == 2 and p.enabled is True


def test_stack_params_disabled_rows_drop_guides_but_keep_factor():
    p = ic_lora_for_stack_rows([("union-ref0.5", {"reference_downscale_factor": "2"}, 0.0, True),
                         ("depth", {"reference_downscale_factor": "2"}, 1.0, False)])
    assert p.enabled is False and p.reference_downscale_factor == 2


def test_stack_params_mixed_factors_refused_only_when_both_enabled():
    rows = [("a", {"reference_downscale_factor": "2"}, 1.0, True), ("b", {}, 1.0, True)]
    with pytest.raises(ICLoraError, match="different reference_downscale_factor"):
        ic_lora_for_stack_rows(rows)
    rows[1] = ("b", {}, 1.0, False)
    assert ic_lora_for_stack_rows(rows).reference_downscale_factor == 2
    assert ic_lora_for_stack_rows([]) is None


def test_ic_lora_is_one_typed_value():
    # from a file: factor from the header whatever the strength; strength 0 disables it
    p = ic_lora_for_file("x", {"reference_downscale_factor": "2"}, strength=0.0)
    assert isinstance(p, ICLora) and p.reference_downscale_factor == 2 and not p.enabled
    assert ICLora.coerce(None) == ICLora() and ICLora().reference_downscale_factor == 1
    # a plain mapping (older graphs, other code) becomes the same typed value
    assert ICLora.coerce({"reference_downscale_factor": 2, "enabled": False}) == \
        ICLora(reference_downscale_factor=2, enabled=False)
    with pytest.raises(ICLoraError, match="not IC-LoRA parameters"):
        ICLora.coerce(3)
    with pytest.raises(Exception):
        p.enabled = True  # frozen
