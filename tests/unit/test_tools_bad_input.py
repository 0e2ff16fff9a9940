"""Bad input to merge/resize/extract/convert: one clear line, exit 2, and no file (partial or not) left behind."""
import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file

from lora_core.errors import PatchbayError
from lora_core.tools import writer

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run(*args):
    return subprocess.run([sys.executable, "-m", "lora_core", *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))


def _pair(t, name, out, inp, rank=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    t[f"{name}.lora_down.weight"] = torch.randn(rank, inp, generator=g)
    t[f"{name}.lora_up.weight"] = torch.randn(out, rank, generator=g)
    t[f"{name}.alpha"] = torch.tensor(float(rank))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tools_bad")
    sd1, flux, nan = {}, {}, {}
    for blk, inp, out in (("down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k", 768, 320),
                          ("down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q", 320, 320)):
        _pair(sd1, "lora_unet_" + blk, out, inp)
        _pair(nan, "lora_unet_" + blk, out, inp, seed=1)
    nan["lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_up.weight"][3, 1] = float("nan")
    for blk in ("double_blocks_0_img_attn_qkv", "single_blocks_0_linear1"):
        _pair(flux, "lora_unet_" + blk, 192, 64)
    paths = {}
    for name, tensors in (("sd1", sd1), ("flux", flux), ("nan", nan)):
        paths[name] = str(folder / f"{name}.safetensors")
        save_file(tensors, paths[name])
    paths["model"] = str(folder / "model.safetensors")
    save_file({"fc.weight": torch.randn(8, 8), "fc.bias": torch.zeros(8)}, paths["model"])
    return folder, paths


def _refused(proc, *needles):
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for n in needles:
        assert n in lines[0], lines[0]


def test_merge_of_different_bases_names_both(files):
    folder, p = files
    before = sorted(os.listdir(folder))
    _refused(run("merge", p["sd1"], p["flux"], "--out", folder / "mix.safetensors"),
             "different base models", "SD1.5", "Flux", "sd1.safetensors", "flux.safetensors")
    assert sorted(os.listdir(folder)) == before


def test_existing_output_is_not_touched(files):
    folder, p = files
    out = folder / "taken.safetensors"
    out.write_bytes(b"keep me")
    _refused(run("merge", p["sd1"], "--out", out), "output file exists", "--force")
    assert out.read_bytes() == b"keep me"
    proc = run("merge", f"{p['sd1']}:0.5", "--out", out, "--force", "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["out"] == str(out) and data["modules"] == 2 and data["rel_error"]["max"] == 0.0
    assert "\r" not in proc.stderr  # no progress bar when stderr is not a terminal
    out.unlink()


def test_output_that_is_an_input_is_refused(files):
    folder, p = files
    before = sorted(os.listdir(folder))
    _refused(run("resize", p["sd1"], "--rank", "2", "--out", p["sd1"], "--force"), "overwrite an input")
    assert sorted(os.listdir(folder)) == before


def test_nan_input_is_named(files):
    folder, p = files
    before = sorted(os.listdir(folder))
    _refused(run("merge", p["sd1"], p["nan"], "--out", folder / "nan_out.safetensors"), "NaN", "nan.safetensors")
    assert sorted(os.listdir(folder)) == before


def test_non_lora_file(files):
    folder, p = files
    before = sorted(os.listdir(folder))
    _refused(run("merge", p["model"], "--out", folder / "x.safetensors"), "no LoRA module", "extract")
    _refused(run("resize", folder / "missing.safetensors", "--rank", "2", "--out", folder / "y.safetensors"),
             "file not found")
    _refused(run("resize", p["sd1"], "--rank", "0", "--out", folder / "y.safetensors"), "rank must be")
    _refused(run("convert", p["sd1"], "--to", "peft", "--model", p["model"], "--out", folder / "z.safetensors"),
             "reach no module of the model")
    assert sorted(os.listdir(folder)) == before


def test_a_failing_write_leaves_nothing(tmp_path, monkeypatch):
    import safetensors.torch as st

    def broken(tensors, path, metadata=None):
        with open(path, "wb") as f:
            f.write(b"partial")
        raise OSError("disk full")
    monkeypatch.setattr(st, "save_file", broken)
    with pytest.raises(OSError, match="disk full"):
        writer.write_lora({"a.lora_up.weight": torch.ones(2, 1)}, str(tmp_path / "out.safetensors"))
    assert os.listdir(tmp_path) == []


def test_writer_refuses_non_finite_and_empty(tmp_path):
    with pytest.raises(PatchbayError, match="NaN or Inf"):
        writer.write_lora({"a.lora_up.weight": torch.tensor([[float("inf")]])}, str(tmp_path / "o.safetensors"))
    with pytest.raises(PatchbayError, match="nothing to write"):
        writer.write_lora({}, str(tmp_path / "o.safetensors"))
    assert os.listdir(tmp_path) == []


def test_unwritable_folder_is_one_line(files, tmp_path):
    _, p = files
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        # root ignores folder permissions; /proc takes no new files from anyone
        target = locked if not os.access(locked, os.W_OK) else "/proc"
        _refused(run("merge", p["sd1"], "--out", os.path.join(target, "m.safetensors")), "cannot read or write")
        assert os.listdir(locked) == []
    finally:
        locked.chmod(0o700)
