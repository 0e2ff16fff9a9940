"""The CLI contract: inspect, check and apply on real PEFT files."""
import hashlib
import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class TinyNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.proj_in = torch.nn.Linear(16, 32)
        self.mid = torch.nn.Linear(32, 32)
        self.proj_out = torch.nn.Linear(32, 8)


@pytest.fixture(scope="module")
def peft_case(tmp_path_factory):
    peft = pytest.importorskip("peft")
    from peft.utils import get_peft_model_state_dict
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("cli")
    base = TinyNet()
    base_sd = {k: v.detach().clone() for k, v in base.state_dict().items()}
    model_path = folder / "model.safetensors"
    save_file(base_sd, str(model_path), metadata={"note": "tiny"})
    cfg = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["proj_in", "mid", "proj_out"],
                          init_lora_weights=False)
    fresh = TinyNet()
    fresh.load_state_dict(base_sd)
    wrapped = peft.get_peft_model(fresh, cfg)
    lora_dir = folder / "adapter"
    wrapped.save_pretrained(str(lora_dir))
    lora_path = lora_dir / "adapter_model.safetensors"
    merged = {k: v.detach().clone() for k, v in wrapped.merge_and_unload().state_dict().items()}
    return model_path, lora_path, merged


def run(*args, check=True):
    proc = subprocess.run([sys.executable, "-m", "lora_core", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}: {proc.stderr}")
    return proc


def test_inspect_json(peft_case):
    _, lora, _ = peft_case
    info = json.loads(run("inspect", lora, "--json").stdout)
    assert info["kinds"] == {"lora": 3}
    assert info["ranks"] == [4]
    assert info["scale"]["min"] == pytest.approx(2.0)  # lora_alpha 8 / r 4 from adapter_config.json
    assert info["hash"]["sha256"] == hashlib.sha256(lora.read_bytes()).hexdigest()
    assert info["unused"] == []


def test_inspect_human(peft_case):
    _, lora, _ = peft_case
    out = run("inspect", lora, "--no-hash").stdout
    assert "ranks:    [4]" in out and "sha256" not in out


def test_check_strict_passes_on_the_right_model(peft_case):
    model, lora, _ = peft_case
    data = json.loads(run("check", lora, "--model", model, "--json", "--strict").stdout)
    assert data["matched"] == 3 and data["unmatched"] == 0
    assert {t["weight"] for t in data["targets"]} == {"proj_in.weight", "mid.weight", "proj_out.weight"}


def test_check_strict_fails_on_a_wrong_model(peft_case, tmp_path):
    _, lora, _ = peft_case
    other = tmp_path / "other.safetensors"
    save_file({"encoder.layer.weight": torch.zeros(4, 4)}, str(other))
    proc = run("check", lora, "--model", other, "--json", "--strict", check=False)
    assert proc.returncode == 1
    data = json.loads(proc.stdout)
    assert data["matched"] == 0 and data["unmatched"] == 3
    assert {u["reason"] for u in data["unmatched_keys"]} == {"unknown name"}


def test_apply_matches_peft_merge_and_is_atomic(peft_case, tmp_path):
    model, lora, merged = peft_case
    before = model.read_bytes()
    out = tmp_path / "merged.safetensors"
    run("apply", "--model", model, "--lora", f"{lora}:1.0", "--out", out)
    got = load_file(str(out))
    assert set(got) == set(merged)
    for k, v in merged.items():
        assert got[k].dtype == v.dtype
        err = (got[k] - v).norm() / v.norm()
        assert err <= 1e-5, (k, float(err))
    assert model.read_bytes() == before
    assert [p for p in os.listdir(tmp_path) if p.startswith(".patchbay-")] == []
    # existing output refused without --force
    proc = run("apply", "--model", model, "--lora", lora, "--out", out, check=False)
    assert proc.returncode == 2 and "--force" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    run("apply", "--model", model, "--lora", f"{lora}:0.5", "--out", out, "--force")
    half = load_file(str(out))
    base = load_file(str(model))
    for k in ("mid.weight",):
        expect = base[k] + 0.5 * (merged[k] - base[k])
        assert torch.allclose(half[k], expect, rtol=1e-5, atol=1e-6)


def test_apply_keeps_dtypes(peft_case, tmp_path):
    model, lora, merged = peft_case
    half_model = tmp_path / "fp16.safetensors"
    save_file({k: v.half() for k, v in load_file(str(model)).items()}, str(half_model))
    out = tmp_path / "out16.safetensors"
    run("apply", "--model", half_model, "--lora", lora, "--out", out)
    got = load_file(str(out))
    assert all(v.dtype == torch.float16 for v in got.values())
    assert torch.allclose(got["mid.weight"].float(), merged["mid.weight"], atol=2e-3)


def test_bad_input_exits_2_with_one_line(tmp_path):
    bad = tmp_path / "broken.safetensors"
    bad.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{broken}")
    proc = run("inspect", bad, check=False)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "broken.safetensors" in lines[0]


def _deep_header_file(path, depth=300_000):
    import struct
    raw = ('{"x": ' + "[" * depth + "]" * depth + "}").encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw)
    return path


def test_deeply_nested_header_exits_2_with_one_line(peft_case, tmp_path):
    model, _, _ = peft_case
    deep = _deep_header_file(tmp_path / "deep.safetensors")
    out = tmp_path / "out.safetensors"
    for args in (("inspect", deep), ("apply", "--model", model, "--lora", deep, "--out", out),
                 ("apply", "--model", deep, "--lora", deep, "--out", out)):
        proc = run(*args, check=False)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2, proc.stderr[-500:]
        assert len(lines) == 1 and "deep.safetensors" in lines[0] and "header" in lines[0]
    assert not out.exists()


def test_hostile_nesting_in_metadata_strings_is_a_warning(tmp_path):
    nest = "[" * 300_000 + "]" * 300_000
    path = tmp_path / "meta.safetensors"
    save_file({"a.lora_down.weight": torch.randn(2, 8), "a.lora_up.weight": torch.randn(8, 2)}, str(path),
              metadata={"ss_tag_frequency": nest, "ss_network_args": nest, "lora_adapter_metadata": nest})
    proc = run("inspect", path, "--json", check=False)
    assert proc.returncode == 0, proc.stderr[-800:]
    warnings = json.loads(proc.stdout)["metadata"]["warnings"]
    assert any("ss_tag_frequency" in w for w in warnings)


@pytest.fixture()
def misfit_loras(peft_case, tmp_path):
    """kohya-style files for TinyNet: one good module plus one damaged or misfit module each."""
    g = torch.Generator().manual_seed(5)
    good = {"mid.lora_up.weight": torch.randn(32, 2, generator=g),
            "mid.lora_down.weight": torch.randn(2, 32, generator=g)}
    files = {
        # up and down ranks disagree: a damaged module (file-level "invalid tensor")
        "ranks": {"proj_in.lora_up.weight": torch.randn(32, 4, generator=g),
                  "proj_in.lora_down.weight": torch.randn(2, 16, generator=g)},
        # a 1-D up factor: wrong shape for its own kind
        "kind": {"proj_in.lora_up.weight": torch.randn(32, generator=g),
                 "proj_in.lora_down.weight": torch.randn(2, 16, generator=g)},
        # a well-formed module whose product does not fit the model's proj_out (8, 32)
        "model": {"proj_out.lora_up.weight": torch.randn(16, 2, generator=g),
                  "proj_out.lora_down.weight": torch.randn(2, 32, generator=g)},
    }
    paths = {}
    for name, extra in files.items():
        paths[name] = tmp_path / f"misfit_{name}.safetensors"
        save_file(good | extra, str(paths[name]))
    paths["nothing"] = tmp_path / "nothing.safetensors"
    save_file({"lora_unet_no_such_block.lora_up.weight": torch.randn(32, 2, generator=g),
               "lora_unet_no_such_block.lora_down.weight": torch.randn(2, 32, generator=g)},
              str(paths["nothing"]))
    return paths


@pytest.mark.parametrize("case,key,reason", [
    ("ranks", "proj_in.lora_", "rank"), ("kind", "proj_in.lora_", "matri"),
    ("model", "proj_out", "shape"), ("nothing", "no_such_block", "matches nothing")])
def test_apply_refuses_a_lora_that_does_not_fit(peft_case, misfit_loras, tmp_path, case, key, reason):
    model, _, _ = peft_case
    out = tmp_path / "out.safetensors"
    proc = run("apply", "--model", model, "--lora", misfit_loras[case], "--out", out, check=False)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert misfit_loras[case].name in lines[0] and key in lines[0] and reason in lines[0], lines[0]
    assert not out.exists() and [p for p in os.listdir(tmp_path) if p.startswith(".patchbay-")] == []


@pytest.mark.parametrize("case,bad", [("ranks", "proj_in"), ("kind", "proj_in"), ("model", "proj_out")])
def test_apply_partial_bakes_what_fits_and_lists_the_rest(peft_case, misfit_loras, tmp_path, case, bad):
    model, _, _ = peft_case
    out = tmp_path / "out.safetensors"
    proc = run("apply", "--model", model, "--lora", misfit_loras[case], "--out", out, "--partial", "--json")
    summary = json.loads(proc.stdout)
    got, base = load_file(str(out)), load_file(str(model))
    assert not torch.equal(got["mid.weight"], base["mid.weight"])
    assert torch.equal(got[f"{bad}.weight"], base[f"{bad}.weight"])
    (entry,) = summary["loras"]
    listed = {k for u in entry["unmatched_keys"] for k in u["keys"]} | {u["key"] for u in entry["unused_keys"]}
    assert listed == {f"{bad}.lora_up.weight", f"{bad}.lora_down.weight"}


def test_apply_partial_still_refuses_a_lora_that_matches_nothing(peft_case, misfit_loras, tmp_path):
    model, _, _ = peft_case
    out = tmp_path / "out.safetensors"
    proc = run("apply", "--model", model, "--lora", misfit_loras["nothing"], "--out", out, "--partial",
               check=False)
    assert proc.returncode == 2 and "matches nothing" in proc.stderr and not out.exists()
