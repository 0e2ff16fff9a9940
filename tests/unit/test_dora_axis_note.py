"""Output-axis DoRA differs from ComfyUI core on purpose (issue 8): we normalise by
‖W + ΔW‖ (DoRA paper, PEFT, LyCORIS), core v0.14.2 by ‖W‖ on that axis.  Files with
such modules say so in their notes, in ``inspect`` (parser note) and ``check``
(coverage note); input-axis files do not."""
from __future__ import annotations

import torch
from safetensors.torch import save_file

from lora_core import api
from lora_core.formats._common import DORA_OUT_AXIS_NOTE
from lora_core.kinds import delta_weight

SHAPES = {"blocks.0.weight": (16, 8), "blocks.1.weight": (16, 8)}


def _file(tmp_path, axis):
    g = torch.Generator().manual_seed(0)
    sd = {}
    for i in range(2):
        k = f"lora_unet_blocks_{i}"
        sd[k + ".lora_up.weight"] = torch.randn(16, 2, generator=g) * 0.1
        sd[k + ".lora_down.weight"] = torch.randn(2, 8, generator=g) * 0.1
        sd[k + ".alpha"] = torch.tensor(2.0)
        sd[k + ".dora_scale"] = (torch.rand(16, 1, generator=g) if axis == "out" else torch.rand(1, 8, generator=g)) + 0.5
    path = tmp_path / f"dora_{axis}.safetensors"
    save_file(sd, str(path))
    return str(path)


def test_output_axis_dora_is_noted_in_inspect_and_check(tmp_path):
    path = _file(tmp_path, "out")
    info = api.inspect(path, with_hash=False)
    assert info["dora"] == 2
    assert DORA_OUT_AXIS_NOTE in info["notes"]
    assert "‖W + ΔW‖" in DORA_OUT_AXIS_NOTE and "#15458" in DORA_OUT_AXIS_NOTE
    report = api.check(path, SHAPES)
    assert len(report.matched) == 2
    notes = api.report_to_json(report)["notes"]
    assert any("output-axis DoRA" in n and "2 modules" in n for n in notes), notes


def test_input_axis_dora_has_no_such_note(tmp_path):
    path = _file(tmp_path, "in")
    assert not any("output-axis DoRA" in n for n in api.inspect(path, with_hash=False)["notes"])
    assert not any("output-axis DoRA" in n for n in api.report_to_json(api.check(path, SHAPES))["notes"])


def test_we_normalise_by_the_merged_norm_not_the_base_norm(tmp_path):
    """What the note promises: rows of W' have norm m (‖W + ΔW‖ normalisation)."""
    lora = api.open_lora(_file(tmp_path, "out"))
    patch = lora.patches[0]
    w0 = torch.randn(16, 8, generator=torch.Generator().manual_seed(3))
    merged = w0 + delta_weight(patch, w0)
    m = patch.dora.magnitude.float().flatten()
    torch.testing.assert_close(merged.norm(dim=1), m, rtol=1e-5, atol=1e-6)
