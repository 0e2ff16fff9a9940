"""Header metadata: kohya ss_*, diffusers lora_adapter_metadata, modelspec, IC-LoRA factors."""
from __future__ import annotations

import dataclasses
import json

import pytest
from safetensors import safe_open

from lora_core.metadata import LoraMetadata, base_family, read_metadata

from fixtures.lora_files import diffusers_unet_lora, lycoris_kohya  # noqa: F401 (fixtures)


def _header(path: str) -> dict[str, str]:
    with safe_open(path, "pt") as f:
        return dict(f.metadata() or {})


def test_frozen_and_defaults():
    m = read_metadata({})
    assert m == LoraMetadata()
    with pytest.raises(dataclasses.FrozenInstanceError):
        m.title = "x"  # type: ignore[misc]
    assert read_metadata(None) == LoraMetadata()


def test_kohya_wrapper_header(lycoris_kohya_header):
    m = read_metadata(lycoris_kohya_header)
    assert m.network_module == "lycoris.kohya"
    assert m.network_dim == 4 and m.network_alpha == 2.0
    assert m.algo == "locon"
    assert m.trained_base == "sd1"
    assert m.title == "tiny-dog"
    # ordered by total frequency; ties keep the file's order
    assert m.trigger_words == ("ohwx", "dog", "sky", "grass")
    assert m.warnings == ()
    assert "sshs_model_hash" in lycoris_kohya_header  # really the library's save


@pytest.fixture(scope="session")
def lycoris_kohya_header(lycoris_kohya):
    return _header(lycoris_kohya.path)


def test_diffusers_pipeline_header(diffusers_unet_lora):
    m = read_metadata(_header(diffusers_unet_lora.path))
    assert m.network_module == "peft" and m.algo == "lora"
    assert m.network_dim == 4 and m.network_alpha == 8.0 and m.dora is False
    assert m.warnings == ()


def test_tag_frequency_sums_across_folders_and_dedupes():
    freq = {"5_a": {"blue hair": 3, "smile": 10}, "5_b": {"blue hair": 9, " Smile ": 1, "": 99}}
    m = read_metadata({"ss_tag_frequency": json.dumps(freq), "modelspec.trigger_phrase": "zxc person, smile"})
    # trigger phrase first, then by frequency (blue hair 12 > smile 10 > Smile 1, case-insensitive dedupe)
    assert m.trigger_words == ("zxc person", "smile", "blue hair")


@pytest.mark.parametrize("meta,family", [
    ({"ss_base_model_version": "sdxl_base_v1-0"}, "sdxl"),
    ({"ss_base_model_version": "sd_v1"}, "sd1"),
    ({"ss_base_model_version": "sd_v2_768_v"}, "sd2"),
    ({"ss_base_model_version": "flux1"}, "flux"),
    ({"ss_base_model_version": "sd3"}, "sd3"),
    ({"modelspec.architecture": "stable-diffusion-xl-v1-base/lora"}, "sdxl"),
    ({"modelspec.architecture": "stable-diffusion-v1/lora"}, "sd1"),
    ({"modelspec.architecture": "flux-1-dev/lora"}, "flux"),
    ({"modelspec.architecture": "wan2.1-t2v-14b"}, "wan"),
    ({"modelspec.architecture": "ltx-2"}, "ltx2"),
    ({"ss_sd_model_name": "ltx-2-19b-dev.safetensors"}, "ltx2"),
    ({"ss_sd_model_name": "ltx-video-2b-v0.9.safetensors"}, "ltxv"),
    ({"modelspec.architecture": "z-image-turbo"}, "z_image"),
    ({"ss_sd_model_name": "sd_xl_base_1.0.safetensors"}, "sdxl"),
    ({"ss_sd_model_name": "v1-5-pruned-emaonly.safetensors"}, "sd1"),
    ({"ss_v2": "True"}, "sd2"),
    ({"ss_sd_model_name": "my_merge.safetensors"}, None),
])
def test_trained_base(meta, family):
    assert read_metadata(meta).trained_base == family


def test_modelspec_wins_over_kohya_version():
    m = read_metadata({"modelspec.architecture": "flux-1-dev/lora", "ss_base_model_version": "sd_v1",
                       "modelspec.title": "Flux thing", "ss_output_name": "other"})
    assert m.trained_base == "flux" and m.title == "Flux thing"


def test_algo_from_args_and_module():
    args = json.dumps({"algo": "LoKr", "dora_wd": "True"})
    m = read_metadata({"ss_network_module": "lycoris.kohya", "ss_network_args": args})
    assert m.algo == "lokr" and m.dora is True
    assert read_metadata({"ss_network_module": "networks.lora"}).algo == "lora"
    assert read_metadata({"ss_network_module": "networks.dylora"}).algo == "dylora"
    assert read_metadata({"ss_network_module": "networks.oft"}).algo == "oft"


def test_peft_header_dora_and_flat():
    cfg = {"r": 16, "lora_alpha": 32, "use_dora": True, "peft_type": "LORA"}
    m = read_metadata({"lora_adapter_metadata": json.dumps(cfg)})
    assert (m.network_dim, m.network_alpha, m.dora, m.algo) == (16, 32.0, True, "lora")


@pytest.mark.parametrize("raw,value,warns", [
    ("2", 2.0, False), ("1.5", 1.5, False), ("1", 1.0, False),
    ("0.5", None, True), ("0", None, True), ("-2", None, True), ("abc", None, True),
    ("nan", None, True), ("inf", None, True),
])
def test_iclora_factors(raw, value, warns):
    m = read_metadata({"reference_downscale_factor": raw, "reference_temporal_scale_factor": raw})
    assert m.iclora_downscale == value and m.iclora_temporal == value
    assert bool(m.warnings) == warns
    if warns:
        assert all("reference_" in w for w in m.warnings) and len(m.warnings) == 2
    if raw == "0.5":
        assert "factor 2" in m.warnings[0]


def test_malformed_values_warn_not_raise():
    m = read_metadata({"ss_network_args": "{not json", "ss_tag_frequency": "[1, 2]",
                       "ss_network_dim": "abc", "ss_network_alpha": "Dynamic",
                       "lora_adapter_metadata": "{"})
    assert m.network_dim is None and m.network_alpha is None and m.trigger_words == ()
    text = " | ".join(m.warnings)
    for key in ("ss_network_args", "ss_tag_frequency", "ss_network_dim", "lora_adapter_metadata"):
        assert key in text
    assert "ss_network_alpha" not in text  # "Dynamic" is a legitimate kohya value


def test_base_family_none():
    assert base_family(None) is None and base_family("") is None
    assert base_family("swan lake") is None  # "wan" needs a word boundary


@pytest.mark.parametrize("depth", [500, 300_000])
@pytest.mark.parametrize("key", ["ss_tag_frequency", "ss_network_args", "lora_adapter_metadata"])
def test_hostile_nesting_in_json_values_warns_not_raises(key, depth):
    nest = "[" * depth + "]" * depth
    wrapped = {"ss_tag_frequency": '{"d": {"tag": ' + nest + "}}",
               "ss_network_args": '{"algo": ' + nest + "}",
               "lora_adapter_metadata": '{"r": ' + nest + "}"}[key]
    for raw in (nest, wrapped):
        m = read_metadata({key: raw})
        assert any(key in w and "nested" in w for w in m.warnings), m.warnings
