"""Fidelity of every non-plain-LoRA LyCORIS kind against lycoris-lora 4.1.3.

Files are written by the library (``lycoris_files.py``); we parse them with
``lora_core.formats.parse_file`` and compare ``W + delta_weight(patch, W)``
with the weight LyCORIS' own forward pass applies (read back by probing the
live module, see ``effective_weight``).  Why the forward and not
``get_diff_weight``: in 4.1.3 LoHa/LoKr ``get_diff_weight``/``get_merged_weight``
multiply ``alpha / r`` twice (``get_weight`` already includes it), so those
methods disagree with the library's own forward whenever alpha ≠ r;
``test_lycoris_merge_api_double_scales`` pins that down.

Tolerances (fp32): merged weight ≤ 1e-5 relative; ΔW alone ≤ 1e-4 relative,
because the library builds ΔW in fp32 (and OFT's inverse in fp32) while we
build rotations in fp64: the measured gap is 1e-7 … 7e-6.
"""
from __future__ import annotations

import pytest
import torch

from fixtures.lycoris_files import STANDALONE, effective_weight, kohya_file, relative_error, standalone_file
from lora_core.formats import parse_file, parse_state_dict
from lora_core.ir import BoftWeights, FullWeights, Ia3Weights, LokrWeights, LoraWeights, OftWeights
from lora_core.kinds import delta_weight
from safetensors.torch import load_file

MERGED_TOL = 1e-5
DELTA_TOL = 1e-4


@pytest.fixture(scope="session")
def lyco_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("lycoris"))


_cache: dict = {}


def generated(variant: str, directory: str):
    if variant not in _cache:
        _cache[variant] = standalone_file(variant, directory)
    return _cache[variant]


def _set_multiplier(gen, value: float) -> None:
    gen.net.multiplier = value
    for lora in gen.net.loras:
        lora.multiplier = value


def _patches(path: str):
    lf = parse_file(path)
    return lf, {p.name: p for p in lf.patches}


FIDELITY = [v for v in STANDALONE if v not in ("dylora", "norm")]


@pytest.mark.parametrize("variant", FIDELITY)
def test_fidelity_at_multiplier_1(variant, lyco_dir):
    gen = generated(variant, lyco_dir)
    _set_multiplier(gen, 1.0)
    lf, patches = _patches(gen.path)
    assert not lf.unused, lf.unused
    assert set(patches) == set(gen.modules)
    for name, module in gen.modules.items():
        w0, b0 = gen.originals[name]
        lib_w, lib_b = effective_weight(module)
        patch = patches[name]
        ours = w0 + delta_weight(patch, w0)
        assert relative_error(ours, lib_w) <= MERGED_TOL, (name, relative_error(ours, lib_w))
        assert relative_error(ours - w0, lib_w - w0) <= DELTA_TOL, (name, relative_error(ours - w0, lib_w - w0))
        if patch.bias is not None:
            assert relative_error(b0 + patch.bias.float() * patch.bias_scale, lib_b) <= MERGED_TOL
        else:
            assert torch.allclose(lib_b, b0, atol=1e-6)


# Each variant must really exercise the layout it is named after.
LAYOUT = {
    "loha_tucker": ("lycoris_conv", ".hada_t1"),
    "loha_dora": ("lycoris_conv", ".dora_scale"),
    "lokr": ("lycoris_fc", ".lokr_w2_a"),
    "lokr_both": ("lycoris_fc", ".lokr_w1_a"),
    "lokr_tucker": ("lycoris_conv", ".lokr_t2"),
    "lokr_full": ("lycoris_fc", ".lokr_w2"),
    "lokr_dora_in": ("lycoris_fc", ".dora_scale"),
    "glora": ("lycoris_conv", ".b2.weight"),
    "full": ("lycoris_fc", ".diff_b"),
    "ia3_input": ("lycoris_fc", ".on_input"),
    "oft": ("lycoris_fc", ".rescale"),
    "boft": ("lycoris_conv", ".oft_blocks"),
}


@pytest.mark.parametrize("variant", sorted(LAYOUT))
def test_variant_layouts(variant, lyco_dir):
    gen = generated(variant, lyco_dir)
    module, suffix = LAYOUT[variant]
    sd = load_file(gen.path)
    assert module + suffix in sd
    _, patches = _patches(gen.path)
    patch = patches[module]
    if variant == "lokr_full":
        assert isinstance(patch.weight, LokrWeights) and not patch.weight.decomposed
        assert float(sd[module + ".alpha"]) != patch.weight.w1.shape[0]  # alpha really ignored
        assert patch.scale == 1.0
    if variant == "lokr_dora_in":
        assert patch.dora.axis == "in"
    if variant == "loha_dora":
        assert patch.dora.axis == "out"
    if variant == "ia3_input":
        assert patch.weight.on_input is True and sd[module + ".weight"].numel() == 64
    if variant == "boft":
        assert isinstance(patch.weight, BoftWeights) and patch.weight.blocks.dim() == 4


def test_oft_constraint_is_active(lyco_dir):
    """The constrained file really clips ‖Q‖ (else the test above proves nothing)."""
    gen = generated("oft_constrained", lyco_dir)
    _, patches = _patches(gen.path)
    w = patches["lycoris_fc"].weight
    assert isinstance(w, OftWeights) and w.constraint == pytest.approx(1e-3)
    q = w.blocks.double() - w.blocks.double().transpose(1, 2)
    assert q.norm() > w.constraint * 128 * 2


# Where LyCORIS' multiplier is linear in ΔW, it must equal ours at s = 0.5.
LINEAR_IN_STRENGTH = ["loha", "loha_tucker", "lokr", "lokr_tucker", "glora", "full", "ia3", "ia3_input",
                      "oft_constrained"]


@pytest.mark.parametrize("variant", LINEAR_IN_STRENGTH)
def test_half_strength_matches_library(variant, lyco_dir):
    gen = generated(variant, lyco_dir)
    _, patches = _patches(gen.path)
    try:
        _set_multiplier(gen, 0.5)
        for name, module in gen.modules.items():
            w0, _ = gen.originals[name]
            lib_w, _ = effective_weight(module)
            ours = w0 + 0.5 * delta_weight(patches[name], w0)
            assert relative_error(ours, lib_w) <= MERGED_TOL, name
    finally:
        _set_multiplier(gen, 1.0)


@pytest.mark.parametrize("variant", ["oft", "boft", "ia3", "glora", "loha_dora", "lokr_dora_in"])
def test_strength_zero_is_exact_and_half_is_half(variant, lyco_dir):
    gen = generated(variant, lyco_dir)
    _, patches = _patches(gen.path)
    for name in gen.modules:
        w0, _ = gen.originals[name]
        delta = delta_weight(patches[name], w0)
        assert torch.isfinite(delta).all()
        assert torch.equal(w0 + 0.0 * delta, w0)
        assert delta.abs().max() > 1e-3  # a real change at strength 1


def test_library_strength_differs_for_boft_and_dora(lyco_dir):
    """Documented difference (formats.md §3/§4): LyCORIS interpolates each BOFT
    stage, and only DoRA's magnitude factor, so its s = 0.5 is not W + ΔW/2."""
    for variant in ("boft", "loha_dora"):
        gen = generated(variant, lyco_dir)
        _, patches = _patches(gen.path)
        try:
            _set_multiplier(gen, 0.5)
            name, module = next(iter(gen.modules.items()))
            w0, _ = gen.originals[name]
            lib_w, _ = effective_weight(module)
            ours = w0 + 0.5 * delta_weight(patches[name], w0)
            assert relative_error(ours - w0, lib_w - w0) > 1e-3, variant
        finally:
            _set_multiplier(gen, 1.0)


def test_lycoris_merge_api_double_scales(lyco_dir):
    """Why the oracle is the forward pass: in 4.1.3 LoHa's get_merged_weight
    applies alpha/r twice.  If a future LyCORIS fixes it, this test says so."""
    gen = generated("loha", lyco_dir)
    lora = gen.net.loras[0]
    assert lora.scale == 0.5
    w0, _ = gen.originals[lora.lora_name]
    merged = lora.get_merged_weight(1.0, lora.shape)[0]
    forward_w, _ = effective_weight(gen.modules[lora.lora_name])
    _, patches = _patches(gen.path)
    delta = delta_weight(patches[lora.lora_name], w0)
    assert relative_error(merged - w0, 0.5 * delta) < 1e-5
    assert relative_error(forward_w - w0, delta) < 1e-4


def test_dylora_is_plain_lora(lyco_dir):
    """DyLoRA files are lora_up/lora_down + alpha; read at full rank, scale alpha/r
    (kohya/A1111).  LyCORIS' own forward samples a random rank (training only)."""
    gen = generated("dylora", lyco_dir)
    _, patches = _patches(gen.path)
    for lora in gen.net.loras:
        patch = patches[lora.lora_name]
        assert isinstance(patch.weight, LoraWeights)
        up = torch.cat(list(lora.up_list), dim=1)
        down = torch.cat(list(lora.down_list))
        w0, _ = gen.originals[lora.lora_name]
        expected = (up @ down).reshape(w0.shape) * (float(lora.alpha) / lora.lora_dim)
        assert relative_error(delta_weight(patch, w0), expected) < 1e-6


def test_norm_diffs(lyco_dir):
    gen = generated("norm", lyco_dir)
    _, patches = _patches(gen.path)
    norm = [lora for lora in gen.net.loras if lora.lora_name == "lycoris_ln"][0]
    patch = patches["lycoris_ln"]
    assert isinstance(patch.weight, FullWeights) and patch.bias is not None
    w0, b0 = gen.originals["lycoris_ln"]
    lib_w, lib_b = norm.get_merged_weight(1.0)
    assert relative_error(w0 + delta_weight(patch, w0), lib_w) < MERGED_TOL
    assert relative_error(b0 + patch.bias.float(), lib_b) < MERGED_TOL


def test_old_names_and_layouts(lyco_dir):
    """``oft_diag`` (old OFT name) and the old GLoRA layout give the same ΔW."""
    oft = load_file(generated("oft_constrained", lyco_dir).path)
    renamed = {k.replace(".oft_blocks", ".oft_diag"): v for k, v in oft.items()}
    a = {p.name: p for p in parse_state_dict(oft).patches}
    b = {p.name: p for p in parse_state_dict(renamed).patches}
    w = torch.randn(128, 64)
    assert torch.equal(delta_weight(a["lycoris_fc"], w), delta_weight(b["lycoris_fc"], w))

    glora = load_file(generated("glora", lyco_dir).path)
    m = "lycoris_fc"
    old = {m + ".alpha": glora[m + ".alpha"], m + ".a1.weight": glora[m + ".a2.weight"],
           m + ".a2.weight": glora[m + ".a1.weight"], m + ".b1.weight": glora[m + ".b2.weight"],
           m + ".b2.weight": glora[m + ".b1.weight"]}
    new_patch = {p.name: p for p in parse_state_dict(glora).patches}[m]
    lf = parse_state_dict(old)
    assert any("old-layout GLoRA" in n for n in lf.notes)
    assert torch.allclose(delta_weight(lf.patches[0], w), delta_weight(new_patch, w), rtol=1e-6, atol=1e-7)


def test_lokr_alpha_rule():
    """alpha counts only when a factor is decomposed (LyCORIS full_matrix rule)."""
    full = {"m.lokr_w1": torch.randn(4, 4), "m.lokr_w2": torch.randn(8, 4), "m.alpha": torch.tensor(2.0)}
    dec = {"m.lokr_w1": torch.randn(4, 4), "m.lokr_w2_a": torch.randn(8, 2), "m.lokr_w2_b": torch.randn(2, 4),
           "m.alpha": torch.tensor(1.0)}
    assert parse_state_dict(full).patches[0].scale == 1.0
    assert parse_state_dict(dec).patches[0].scale == 0.5
    zero = dict(dec, **{"m.alpha": torch.tensor(0.0)})
    assert parse_state_dict(zero).patches[0].scale == 1.0


def test_ia3_vector_keeps_the_increment_exact():
    w = torch.tensor([1e-7, -3e-6, 0.25, 0.0])
    sd = {"m.weight": w, "m.on_input": torch.tensor(0)}
    patch = parse_state_dict(sd).patches[0]
    assert isinstance(patch.weight, Ia3Weights) and patch.weight.on_input is False
    base = torch.ones(4, 3)
    assert torch.equal(delta_weight(patch, base)[:, 0], w)


def test_broken_modules_are_reported_not_dropped():
    sd = {"a.hada_w1_a": torch.randn(4, 2), "a.hada_w1_b": torch.randn(2, 3),
          "b.lokr_w1": torch.randn(2, 2),
          "c.oft_blocks": torch.randn(2, 3, 4)}
    lf = parse_state_dict(sd)
    assert not lf.patches
    assert {u.key for u in lf.unused} == set(sd)
    assert all(u.reason == "invalid tensor" for u in lf.unused)


@pytest.fixture(scope="session")
def kohya_generated(lyco_dir):
    return {algo: kohya_file(algo, lyco_dir, **kw) for algo, kw in
            (("loha", {"text_encoder": True}), ("lokr", {"factor": 4}))}


@pytest.mark.parametrize("algo", ["loha", "lokr"])
def test_kohya_wrapper_on_tiny_unet(algo, kohya_generated):
    gen = kohya_generated[algo]
    lf, patches = _patches(gen.path)
    assert lf.format.startswith("kohya/")
    assert not lf.unused
    assert set(patches) == set(gen.modules) and len(patches) >= 8
    assert any(n.startswith("lora_unet_") for n in patches)
    if algo == "loha":
        assert any(n.startswith("lora_te_") for n in patches)
    for name, module in gen.modules.items():
        w0, _ = gen.originals[name]
        lib_w, _ = effective_weight(module)
        ours = w0 + delta_weight(patches[name], w0)
        assert relative_error(ours, lib_w) <= MERGED_TOL, name
        assert relative_error(ours - w0, lib_w - w0) <= DELTA_TOL, name


def test_glora_tucker_bm_matches_lycoris_formula():
    """``bm.weight`` (a Tucker b-path) — LyCORIS 4.1.3 never writes it (its
    use_tucker test is self-contradictory), so its own rebuild is the oracle."""
    from lycoris.modules.glora import _glora_weight
    g = torch.Generator().manual_seed(5)
    cin, cout, r = 6, 10, 3
    w = torch.randn(cout, cin, 3, 3, generator=g)
    t = {"m.a1.weight": torch.randn(cin, r, 1, 1, generator=g), "m.a2.weight": torch.randn(r, cin, 1, 1, generator=g),
         "m.b1.weight": torch.randn(cout, r, 1, 1, generator=g), "m.b2.weight": torch.randn(r, cin, 1, 1, generator=g),
         "m.bm.weight": torch.randn(r, r, 3, 3, generator=g), "m.alpha": torch.tensor(1.5)}
    patch = parse_state_dict(t).patches[0]
    assert patch.scale == pytest.approx(0.5)
    ref = _glora_weight(w, t["m.a1.weight"], t["m.a2.weight"], t["m.b1.weight"], t["m.b2.weight"],
                        t["m.bm.weight"], 0.5)
    assert relative_error(delta_weight(patch, w), ref) < 1e-6


@pytest.mark.parametrize("wd_on_out", [True, False])
def test_glora_with_dora_scale(wd_on_out, lyco_dir):
    """DoRA on GLoRA (core/Forge combine them; LyCORIS' GLoRA has no DoRA):
    m ⊙ (W + ΔW)/‖W + ΔW‖ on the axis the dora_scale shape names, checked
    against LyCORIS' own weight_decompose."""
    from lycoris.functional.general import _weight_decompose
    sd = load_file(generated("glora", lyco_dir).path)
    w0 = torch.randn(64, 32, 3, 3)
    m = "lycoris_conv"
    mag = torch.rand(64, 1, 1, 1) + 0.5 if wd_on_out else torch.rand(1, 32, 1, 1) + 0.5
    sd = {k: v for k, v in sd.items() if k.startswith(m + ".")}
    sd[m + ".dora_scale"] = mag
    patch = parse_state_dict(sd).patches[0]
    assert patch.dora.axis == ("out" if wd_on_out else "in")
    plain = parse_state_dict({k: v for k, v in sd.items() if not k.endswith("dora_scale")}).patches[0]
    ref = _weight_decompose(w0 + delta_weight(plain, w0), mag, 1, wd_on_out)
    assert relative_error(w0 + delta_weight(patch, w0), ref) < 1e-5


def test_half_precision_files(lyco_dir):
    """LyCORIS fp16 saves (fp16 alpha too): ΔW is built in fp32 from the stored values."""
    import os
    from safetensors.torch import save_file
    sd = load_file(generated("lokr_tucker", lyco_dir).path)
    half = {k: v.half() for k, v in sd.items()}
    path = os.path.join(lyco_dir, "lokr_tucker_fp16.safetensors")
    save_file(half, path)
    p16 = {p.name: p for p in parse_file(path).patches}
    p32 = {p.name: p for p in parse_state_dict({k: v.float() for k, v in half.items()}).patches}
    w = torch.randn(64, 32, 3, 3)
    assert p16["lycoris_conv"].scale == p32["lycoris_conv"].scale == 0.5
    d16 = delta_weight(p16["lycoris_conv"], w)
    assert d16.dtype == torch.float32
    assert relative_error(d16, delta_weight(p32["lycoris_conv"], w)) < 1e-6


def test_set_weight_and_reshape():
    """``set_weight``: ΔW = value − W, so strength 1 replaces W and 0 keeps it;
    ``reshape_weight`` rides along with any kind."""
    value = torch.randn(8)
    base = torch.randn(8)
    lf = parse_state_dict({"n.set_weight": value})
    delta = delta_weight(lf.patches[0], base)
    assert torch.allclose(base + delta, value, atol=1e-6)
    assert torch.equal(base + 0.0 * delta, base)
    sd = {"m.hada_w1_a": torch.randn(4, 2), "m.hada_w1_b": torch.randn(2, 6), "m.hada_w2_a": torch.randn(4, 2),
          "m.hada_w2_b": torch.randn(2, 6), "m.reshape_weight": torch.tensor([4, 6])}
    lf = parse_state_dict(sd)
    assert not lf.unused and lf.patches[0].reshape == (4, 6)
    diff = {"m.diff": torch.randn(4, 6), "m.diff_b": torch.randn(4)}
    patch = parse_state_dict(diff).patches[0]
    assert torch.equal(delta_weight(patch, torch.zeros(4, 6)), diff["m.diff"])
    assert torch.equal(patch.bias, diff["m.diff_b"])
    bias_only = parse_state_dict({"m.diff_b": torch.randn(4)}).patches[0]
    assert bias_only.weight is None and bias_only.bias is not None
