"""The pack's /patchbay/... routes on a real ComfyUI server (every installed version).

Oracles: the files the test writes (names, folders, sizes, previews), the CLI's
own ``inspect --json`` of the same file, the coverage the stack loader reports
for a run, and the name gate's 400/404 answers for hostile names.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request

import pytest

from tiny_models import kohya_lora
from safetensors.torch import save_file

from comfy_harness import REPO_ROOT, Graph

HOSTILE_DIR = '<b onmouseover="alert(1)">'
HOSTILE_FILE = "<img src=x onerror=alert(2)>.safetensors"
HOSTILE_TITLE = "<script>alert(3)</script>&amp;"
PNG = bytes.fromhex("89504e470d0a1a0a0000000d4948445200000001000000010806000000"
                    "1f15c4890000000d49444154789c6360000002000100e221bc330000000049454e44ae426082")


SD15 = {"lora_unet_input_blocks_1_1_transformer_blocks_0_attn1_to_q": (320, 320),
        "lora_unet_input_blocks_1_1_transformer_blocks_0_attn2_to_k": (320, 768),
        "lora_te_text_model_encoder_layers_0_self_attn_q_proj": (768, 768)}
SDXL = {"lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k": (640, 2048),
        "lora_te2_text_model_encoder_layers_0_self_attn_q_proj": (1280, 1280)}


@pytest.fixture(scope="session")
def route_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("patchbay-route-loras")
    save_file(kohya_lora(SD15, 1, 4), str(d / "sd15.safetensors"),
              metadata={"ss_tag_frequency": '{"10_tok": {"sks dog": 4}}', "ss_base_model_version": "sd_v1"})
    save_file(kohya_lora(SDXL, 2, 4), str(d / "sdxl.safetensors"))
    save_file(kohya_lora(SD15, 3, 4), str(d / "hostile.safetensors"),
              metadata={"modelspec.title": HOSTILE_TITLE, "ss_tag_frequency": json.dumps(
                  {"1_x": {"<img src=y onerror=alert(4)>": 1}})})
    save_file(kohya_lora(SD15, 4, 4), str(d / "renamed.safetensors"))
    (d / "corrupt.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    (d / "preview.png").write_bytes(PNG)
    return d


@pytest.fixture(scope="session")
def route_loras(comfy, route_files):
    d = route_files
    names = {
        "sd15": comfy.add_model("loras", d / "sd15.safetensors", "routes/sub/sd15.safetensors"),
        "sdxl": comfy.add_model("loras", d / "sdxl.safetensors", "routes/sdxl.safetensors"),
        "hostile": comfy.add_model("loras", d / "hostile.safetensors", f"routes/{HOSTILE_DIR}/{HOSTILE_FILE}"),
        "corrupt": comfy.add_model("loras", d / "corrupt.safetensors", "routes/corrupt.safetensors"),
    }
    comfy.add_model("loras", d / "preview.png", "routes/sub/sd15.preview.png")
    return names


def _get(comfy, path: str, **query) -> tuple[int, dict, bytes]:
    url = comfy.url + path + ("?" + urllib.parse.urlencode(query) if query else "")
    try:
        with urllib.request.urlopen(url, timeout=60) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def _json(comfy, path: str, **query) -> tuple[int, dict]:
    status, headers, body = _get(comfy, path, **query)
    assert headers.get("Content-Type", "").startswith("application/json"), (path, headers)
    assert b"<" not in body and b">" not in body, body[:300]  # hostile text never as markup
    return status, json.loads(body)


def _by_name(listing: dict) -> dict:
    return {item["name"]: item for item in listing["loras"]}


def test_list_has_subfolders_families_previews(comfy, route_loras, route_files):
    status, data = _json(comfy, "/patchbay/loras")
    assert status == 200
    items = _by_name(data)
    sd15 = items[route_loras["sd15"]]
    assert sd15["folder"] == "routes/sub" and sd15["family"] == "sd1" and sd15["family_label"] == "SD1.5"
    assert sd15["format"].startswith("kohya/")
    assert sd15["size"] == os.path.getsize(route_files / "sd15.safetensors")
    assert sd15["preview"] == "/patchbay/preview?name=" + urllib.parse.quote(route_loras["sd15"], safe="")
    sdxl = items[route_loras["sdxl"]]
    assert sdxl["folder"] == "routes" and sdxl["family"] == "sdxl" and sdxl["preview"] is None
    bad = items[route_loras["corrupt"]]
    assert bad["family"] is None and bad["format"] is None and bad["error"]
    assert str(route_files) not in json.dumps(data)  # no server paths
    hostile = items[route_loras["hostile"]]  # the name arrives as data, escaped, intact
    assert hostile["folder"] == f"routes/{HOSTILE_DIR}"
    # the /api copy of the route answers the same, and a second call hits the cache
    assert _json(comfy, "/api/patchbay/loras")[1] == data


def test_inspect_is_the_cli_object(comfy, route_loras, route_files):
    status, info = _json(comfy, "/patchbay/inspect", name=route_loras["sd15"])
    assert status == 200
    cli = subprocess.run([sys.executable, "-m", "lora_core", "inspect", "--json",
                          str(route_files / "sd15.safetensors")], cwd=REPO_ROOT,
                         capture_output=True, text=True, check=True)
    expected = json.loads(cli.stdout)
    assert "hash" not in info and "hash" in expected  # hashes only on request
    for key in set(expected) - {"file", "hash"}:
        assert info[key] == expected[key], key
    assert info["file"] == info["name"] == route_loras["sd15"]
    assert info["family"] == "sd1" and info["metadata"]["trigger_words"] == expected["metadata"]["trigger_words"]
    status, hashed = _json(comfy, "/patchbay/inspect", name=route_loras["sd15"], hash="1")
    assert status == 200 and hashed["hash"] == expected["hash"]


def test_hostile_metadata_goes_out_as_data(comfy, route_loras):
    status, info = _json(comfy, "/patchbay/inspect", name=route_loras["hostile"])
    assert status == 200
    assert info["metadata"]["title"] == HOSTILE_TITLE
    assert info["name"] == route_loras["hostile"]


def test_preview_bytes_and_type(comfy, route_loras):
    status, headers, body = _get(comfy, "/patchbay/preview", name=route_loras["sd15"])
    assert status == 200 and body == PNG
    assert headers["Content-Type"] == "image/png" and headers["X-Content-Type-Options"] == "nosniff"
    status, data = _json(comfy, "/patchbay/preview", name=route_loras["sdxl"])
    assert status == 404 and "no preview" in data["error"]


@pytest.mark.parametrize("route", ["inspect", "coverage", "preview"])
@pytest.mark.parametrize("name,status", [
    ("../x.safetensors", 400), ("routes/../../x.safetensors", 400), ("/etc/passwd", 400),
    ("C:\\Windows\\win.ini", 400), ("a\x00b.safetensors", 400), ("", 400),
    ("routes/no-such-file.safetensors", 404), ("routes/sub/sd15.preview.png", 404),
])
def test_bad_and_unknown_names(comfy, route_loras, route, name, status):
    got, data = _json(comfy, f"/patchbay/{route}", name=name)
    assert got == status, data
    assert set(data) == {"error"} and "\n" not in data["error"] and len(data["error"]) <= 300


def test_bad_names_and_missing_parameter(comfy, route_loras):
    assert _json(comfy, "/patchbay/inspect")[0] == 400
    got, data = _json(comfy, "/patchbay/resolve", name="../../secret.safetensors")
    assert got == 400 and "traversal" in data["error"]
    got, data = _json(comfy, "/patchbay/inspect", name=route_loras["corrupt"])
    assert got == 422 and "corrupt.safetensors" in data["error"] and "/tmp" not in data["error"]


def test_resolve_exact_basename_and_hash_after_rename(comfy, route_loras, route_files):
    sha = _json(comfy, "/patchbay/inspect", name=route_loras["sd15"], hash="1")[1]["hash"]["sha256"]
    assert _json(comfy, "/patchbay/resolve", name=route_loras["sd15"])[1] == \
        {"name": route_loras["sd15"], "by": "exact"}
    # moved to another folder: same file name
    assert _json(comfy, "/patchbay/resolve", name="elsewhere/sd15.safetensors")[1] == \
        {"name": route_loras["sd15"], "by": "basename"}
    # renamed: only the content hash finds it
    renamed = comfy.add_model("loras", route_files / "renamed.safetensors", "routes/renamed-copy.safetensors")
    r_sha = _json(comfy, "/patchbay/inspect", name=renamed, hash="1")[1]["hash"]["sha256"]
    assert _json(comfy, "/patchbay/resolve", name="old/gone.safetensors", hash=r_sha)[1] == \
        {"name": renamed, "by": "hash"}
    assert _json(comfy, "/patchbay/resolve", name="old/gone.safetensors", hash="0" * 64)[1] == \
        {"name": None, "by": None}
    assert sha != r_sha


def test_coverage_after_a_run(comfy, route_loras, tiny_sd15_checkpoint):
    got, _ = _json(comfy, "/patchbay/coverage", name=route_loras["sdxl"])
    assert got == 404  # not run yet
    g = Graph()
    model, clip = tiny_sd15_checkpoint.load_checkpoint(g)
    rows = {"version": 2, "options": {"separate_clip": False},
            "rows": [{"id": "r-00000001", "on": True, "lora": route_loras["sd15"], "strength": 0.5,
                      "strength_clip": None}]}
    loader = g.node("PatchbayLoraStackLoader", model=model, clip=clip, rows=json.dumps(rows), mode="merge")
    g.node("PatchbayTestModelProbe", model=loader[0], key_filter="attn1.to_q", max_keys=1)
    comfy.client.queue(g, timeout=240)
    got, cov = _json(comfy, "/patchbay/coverage", name=route_loras["sd15"])
    assert got == 200, cov
    assert cov["name"] == route_loras["sd15"]
    assert cov["matched"] == 3 and cov["unmatched"] == 0 and cov["unmatched_keys"] == []
    assert set(cov["parts"]) == {"model", "clip"}
    assert cov["parts"]["model"]["matched"] == 2 and cov["parts"]["clip"]["matched"] == 1
    assert cov["model_family"] == "sd1" and cov["lora_family"] == "sd1" and cov["family_warning"] is None
    assert cov["at"] > 0
