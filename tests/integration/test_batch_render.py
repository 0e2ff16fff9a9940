"""Sweeps, the batched sweep, XY grids and the render CLI inside a real ComfyUI (every installed version).

Images come from the tiny SD1.5 checkpoint decoded by a random TAESD (the
"taesd" VAE of core's VAELoader, built here from its two small halves), so
every cell is a real KSampler + VAEDecode render.  Oracles: the sequential
sweep's single renders for the batched pass, the sweep's own labels for the
grid, the index for the render CLI.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tiny_models import kohya_lora
import torch
from safetensors.torch import save_file

import comfy_harness as ch
from comfy_harness import Graph

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from lora_core.grid import read_png  # noqa: E402
from lora_core.render.comfy import ComfyServer as RenderServer  # noqa: E402
from lora_core.render.runner import Runner, make_job  # noqa: E402
from lora_core.render.workflow import find_stack_node, stack_of  # noqa: E402
from lora_core.sweep import SweepSpec, axis  # noqa: E402


# ---------------------------------------------------------------- fixtures

def _taesd_halves(seed: int = 0) -> tuple[dict, dict]:
    """State dicts of TAESD's encoder and decoder (the layer layout core's comfy/taesd expects), random."""
    nn = torch.nn

    def conv(i, o, **kw):
        return nn.Conv2d(i, o, 3, padding=1, **kw)

    class Block(nn.Module):
        def __init__(self, i, o):
            super().__init__()
            self.conv = nn.Sequential(conv(i, o), nn.ReLU(), conv(o, o), nn.ReLU(), conv(o, o))

    def blocks(n):
        return [Block(64, 64) for _ in range(n)]

    torch.manual_seed(seed)
    enc = nn.Sequential(conv(3, 64), Block(64, 64), conv(64, 64, stride=2, bias=False), *blocks(3),
                        conv(64, 64, stride=2, bias=False), *blocks(3), conv(64, 64, stride=2, bias=False),
                        *blocks(3), conv(64, 4))
    up = [nn.Upsample(scale_factor=2), conv(64, 64, bias=False)]
    dec = nn.Sequential(nn.Identity(), conv(4, 64), nn.ReLU(), *blocks(3), *up, *blocks(3),
                        nn.Upsample(scale_factor=2), conv(64, 64, bias=False), *blocks(3),
                        nn.Upsample(scale_factor=2), conv(64, 64, bias=False), Block(64, 64), conv(64, 3))
    with torch.no_grad():  # a mid-grey, contrasty output so that small latent changes show in 8 bits
        dec[-1].weight.mul_(8.0)
        dec[-1].bias.fill_(0.5)
    return ({k: v.contiguous() for k, v in enc.state_dict().items()},
            {k: v.contiguous() for k, v in dec.state_dict().items()})


def _kohya(seed: int, rank: int = 4, scale: float = 1.0) -> dict:
    mods = {"lora_unet_input_blocks_1_1_transformer_blocks_0_attn1_to_q": (320, 320),
            "lora_unet_input_blocks_1_1_transformer_blocks_0_attn1_to_v": (320, 320),
            "lora_unet_input_blocks_1_1_transformer_blocks_0_attn2_to_k": (320, 768),
            "lora_unet_input_blocks_1_1_transformer_blocks_0_attn1_to_out_0": (320, 320)}
    return kohya_lora(mods, seed, rank, scale=scale)


@pytest.fixture(scope="session")
def render_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("patchbay-render")
    enc, dec = _taesd_halves()
    save_file(enc, str(d / "taesd_encoder.safetensors"))
    save_file(dec, str(d / "taesd_decoder.safetensors"))
    save_file(_kohya(1), str(d / "ink.safetensors"))
    save_file(_kohya(2), str(d / "glow.safetensors"))
    return d


def _install(server, files: Path) -> None:
    for half in ("encoder", "decoder"):
        server.add_model("vae_approx", files / f"taesd_{half}.safetensors")
    for name in ("ink", "glow"):
        server.add_model("loras", files / f"{name}.safetensors", f"sweep/{name}.safetensors")


@pytest.fixture(scope="session")
def setup(comfy, render_files, tiny_sd15_checkpoint):
    _install(comfy, render_files)
    return tiny_sd15_checkpoint


ROWS = [{"on": True, "lora": "sweep/ink.safetensors", "strength": 1.0, "strength_clip": 1.0},
        {"on": True, "lora": "sweep/glow.safetensors", "strength": 0.5, "strength_clip": 0.5}]


def _images(comfy, result, node) -> list[torch.Tensor]:
    out = []
    for img in result.ui(node.id, "images") or []:
        path = comfy.output_dir / img.get("subfolder", "") / img["filename"]
        out.append(read_png(path.read_bytes()))
    return out


def _base(g: Graph, ckpt):
    model, clip = ckpt.load_checkpoint(g)
    vae = g.node("VAELoader", vae_name="taesd")[0]
    stack = g.node("PatchbayLoraStack", rows=json.dumps(ROWS))[0]
    return model, clip, vae, stack


def _render(g, model, positive, latent, vae, prefix, seed=5):
    lat = g.node("KSampler", model=model, seed=seed, steps=1, cfg=1.0, sampler_name="euler", scheduler="simple",
                 positive=positive, negative=positive, latent_image=latent, denoise=1.0)[0]
    image = g.node("VAEDecode", samples=lat, vae=vae)[0]
    return image, g.node("SaveImage", images=image, filename_prefix=prefix)


# ---------------------------------------------------------------- nodes

def test_sweep_3x2_yields_six_images_and_a_labelled_grid(comfy, setup):
    g = Graph()
    model, clip, vae, stack = _base(g, setup)
    sweep = g.node("PatchbayStrengthSweep", model=model, clip=clip, stack=stack, row=1, lora_name="",
                   values="0, 0.5, 1", part="both", mode="merge", y_axis="strength", y_row=2, y_values="0, 1")
    positive = g.node("CLIPTextEncode", clip=sweep[1], text="a cat")[0]
    latent = g.node("EmptyLatentImage", width=64, height=64, batch_size=1)[0]
    image, save = _render(g, sweep[0], positive, latent, vae, "sweep")
    grid = g.node("PatchbayXYGrid", images=image, grid=sweep[4], font_size=11, show_stack=True)
    grid_save = g.node("SaveImage", images=grid[0], filename_prefix="grid")
    res = comfy.client.queue(g.to_api(), timeout=600)
    cells = _images(comfy, res, save)
    assert len(cells) == 6 and all(c.shape == (64, 64, 3) for c in cells)
    info = res.ui(grid.id, "patchbay_grid")[0]
    assert (info["columns"], info["rows"]) == (3, 2)
    assert info["labels_x"] == ["0", "0.5", "1"] and info["labels_y"] == ["0", "1"]
    assert (info["title_x"], info["title_y"]) == ("ink strength", "glow strength")
    sheet = _images(comfy, res, grid_save)
    assert len(sheet) == 1 and sheet[0].shape[0] > 128 and sheet[0].shape[1] > 192
    # the strengths change the render; (0, 0) is the model without either LoRA
    assert (cells[0] - cells[2]).abs().max() > 0.02 and (cells[0] - cells[3]).abs().max() > 0.02
    _keep_for_docs(sheet[0], "sweep-grid.png")


def test_batched_sweep_equals_the_sequential_sweep(comfy, setup):
    g = Graph()
    model, clip, vae, stack = _base(g, setup)
    positive = g.node("CLIPTextEncode", clip=clip, text="a cat")[0]
    latent = g.node("EmptyLatentImage", width=32, height=32, batch_size=1)[0]
    # the same side-path maths one cell per pass (merge rounds W' to the storage dtype, which the
    # contrasty test decoder would magnify): only the batching differs
    seq = g.node("PatchbayStrengthSweep", model=model, stack=stack, row=1, lora_name="", values="0, 0.5, 1",
                 part="model", mode="bypass")
    _, seq_save = _render(g, seq[0], positive, latent, vae, "seq")
    bat = g.node("PatchbayBatchedSweep", model=model, stack=stack, row=1, lora_name="", values="0, 0.5, 1",
                 latent=latent, part="model")
    bat_image, bat_save = _render(g, bat[0], positive, bat[2], vae, "bat")
    grid = g.node("PatchbayXYGrid", images=bat_image, grid=bat[3], font_size=10, show_stack=True)
    g.node("SaveImage", images=grid[0], filename_prefix="bgrid")
    res = comfy.client.queue(g.to_api(), timeout=600)
    single, batched = _images(comfy, res, seq_save), _images(comfy, res, bat_save)
    assert len(single) == len(batched) == 3
    for s, b in zip(single, batched):
        assert (s - b).abs().max() <= 2 / 255 + 1e-6  # 8-bit PNGs of fp32 renders: rounding only
    assert (single[0] - single[2]).abs().max() > 0.02
    assert res.ui(grid.id, "patchbay_grid")[0]["labels_x"] == ["0", "0.5", "1"]


def test_comparison_video_tiles_every_frame(comfy, setup):
    g = Graph()
    model, clip, vae, stack = _base(g, setup)
    positive = g.node("CLIPTextEncode", clip=clip, text="a cat")[0]
    frames = g.node("EmptyLatentImage", width=64, height=64, batch_size=3)[0]  # 3 frames per cell
    sweep = g.node("PatchbayStrengthSweep", model=model, stack=stack, row=1, lora_name="", values="0, 0.5, 1",
                   part="model", mode="merge")
    clips, save = _render(g, sweep[0], positive, frames, vae, "clip")
    video = g.node("PatchbayXYGrid", images=clips, grid=sweep[4], font_size=11, show_stack=True)
    video_save = g.node("SaveImage", images=video[0], filename_prefix="video")
    res = comfy.client.queue(g.to_api(), timeout=600)
    cells, out = _images(comfy, res, save), _images(comfy, res, video_save)
    info = res.ui(video.id, "patchbay_grid")[0]
    assert len(cells) == 9 and info["frames"] == 3 and len(out) == 3
    # every output frame holds frame f of each cell, somewhere in the frame
    for f in range(3):
        for c in range(3):
            cell = cells[c * 3 + f]
            assert any(torch.equal(out[f][y:y + 64, x:x + 64], cell)
                       for y in range(out[f].shape[0] - 63) for x in range(0, out[f].shape[1] - 63, 1)
                       if abs(float(out[f][y, x, 0]) - float(cell[0, 0, 0])) < 1e-6)
    assert not torch.equal(out[0], out[1])
    _keep_for_docs(out[1], "comparison-video-frame.png")


def test_batched_sweep_refuses_per_sample_clip_strengths(comfy, setup):
    g = Graph()
    model, clip, vae, stack = _base(g, setup)
    latent = g.node("EmptyLatentImage", width=32, height=32, batch_size=1)[0]
    bat = g.node("PatchbayBatchedSweep", model=model, clip=clip, stack=stack, row=1, lora_name="",
                 values="0, 1", latent=latent, part="both")
    positive = g.node("CLIPTextEncode", clip=bat[1], text="a cat")[0]
    _render(g, bat[0], positive, bat[2], vae, "refused")
    res = comfy.client.queue(g.to_api(), timeout=300, check=False)
    assert not res.ok and "text-encoder strengths that differ per sample" in (res.error_text or "")


@pytest.mark.parametrize("values, message", [("", "the sweep has no values"),
                                             (", ".join(["1"] * 10000), "10000 values; the limit is 256")])
def test_sweep_bad_values_fail_with_the_limit(comfy, setup, values, message):
    g = Graph()
    model, clip, vae, stack = _base(g, setup)
    sweep = g.node("PatchbayStrengthSweep", model=model, stack=stack, row=1, lora_name="", values=values,
                   part="model", mode="merge")
    positive = g.node("CLIPTextEncode", clip=clip, text="a cat")[0]
    latent = g.node("EmptyLatentImage", width=32, height=32, batch_size=1)[0]
    _render(g, sweep[0], positive, latent, vae, "bad")
    with pytest.raises(ch.PromptRejected) as e:  # at queue time, before anything runs
        comfy.client.queue(g.to_api(), timeout=300)
    assert message in str(e.value)


def test_stack_from_prompt_tags(comfy, setup):
    g = Graph()
    model, clip, vae, _ = _base(g, setup)
    tags = g.node("PatchbayStackFromText", text="a cat, <lora:ink:0.8>, at night <lora:glow:0.5:0.25>")
    applied = g.node("PatchbayApplyLoraStack", model=model, clip=clip, stack=tags[1], mode="merge")
    positive = g.node("CLIPTextEncode", clip=applied[1], text=tags[0])[0]
    latent = g.node("EmptyLatentImage", width=32, height=32, batch_size=1)[0]
    _render(g, applied[0], positive, latent, vae, "tags")
    res = comfy.client.queue(g.to_api(), timeout=300)
    assert res.ok
    g = Graph()
    tags = g.node("PatchbayStackFromText", text="<lora:ink:abc> <lora:nowhere:1> <lora:glow:0.5")
    model, clip, vae, _ = _base(g, setup)
    applied = g.node("PatchbayApplyLoraStack", model=model, clip=clip, stack=tags[1], mode="merge")
    _render(g, applied[0], g.node("CLIPTextEncode", clip=clip, text=tags[0])[0],
            g.node("EmptyLatentImage", width=32, height=32, batch_size=1)[0], vae, "badtags")
    with pytest.raises(ch.PromptRejected) as e:
        comfy.client.queue(g.to_api(), timeout=300)
    text = str(e.value)
    assert "'<lora:ink:abc>': strength 'abc' is not a number" in text
    assert "nowhere" in text and "'<lora:glow:0.5' is not closed" in text


# ---------------------------------------------------------------- render CLI

def _render_workflow(setup) -> dict:
    g = Graph()
    model, clip, vae, stack = _base(g, setup)
    applied = g.node("PatchbayApplyLoraStack", model=model, clip=clip, stack=stack, mode="merge")
    positive = g.node("CLIPTextEncode", clip=applied[1], text="a cat")[0]
    latent = g.node("EmptyLatentImage", width=32, height=32, batch_size=1)[0]
    _render(g, applied[0], positive, latent, vae, "render")
    return g.to_api()


def test_render_cli_writes_the_contact_sheet(comfy, setup, tmp_path):
    wf = tmp_path / "workflow_api.json"
    wf.write_text(json.dumps(_render_workflow(setup)))
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "lora_core", "render", str(wf), "--server", comfy.url,
                           "--out", str(out), "--values", "0, 1", "--y-vary", "seed", "--y-values", "1, 2",
                           "--json"], cwd=str(REPO), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["done"] == 4 and summary["failed"] == 0
    sheet = read_png((out / "contact-sheet.png").read_bytes())
    assert sheet.shape[0] > 64 and sheet.shape[1] > 64
    index = json.loads((out / "index.json").read_text())
    assert [c["label_x"] for c in index["cells"]] == ["0", "1", "0", "1"]
    assert [c["seed"] for c in index["cells"]] == [1, 1, 2, 2]
    _keep_for_docs(sheet, "render-contact-sheet.png")


def test_render_on_two_servers_survives_one_going_away(comfy, setup, render_files, tmp_path):
    second = ch.ComfyServer(comfy.install)
    try:
        second.start()
        _install(second, render_files)
        second.add_model(setup.folder, setup.path, setup.name)
        wf = _render_workflow(setup)
        node = find_stack_node(wf)
        job = make_job(wf, "workflow_api.json", node, stack_of(wf, node),
                       SweepSpec(axis("strength", "0, 0.5, 1"), axis("seed", "1, 2")), None)
        name = RenderServer(second.url).name
        killed = []

        def kill_second(cell, index):
            if cell.server == name and not killed:
                killed.append(cell.key)
                second.stop()

        index = Runner([RenderServer(comfy.url), RenderServer(second.url)], str(tmp_path), depth=1,
                       on_cell_done=kill_second, log=lambda line: None).run(job)
        assert index.counts()["done"] == 6 and (tmp_path / "contact-sheet.png").is_file()
        assert killed, "the second server never finished a prompt"
        assert {c.server for c in index.cells} == {name, RenderServer(comfy.url).name}
    finally:
        second.cleanup()


def _keep_for_docs(image: torch.Tensor, name: str) -> None:
    """PATCHBAY_DOCS_IMAGES=<dir> keeps a test's grid for the README (docs/images/)."""
    target = os.environ.get("PATCHBAY_DOCS_IMAGES")
    if target:
        from lora_core.grid import write_png
        os.makedirs(target, exist_ok=True)
        write_png(os.path.join(target, name), image)
