"""The render client (lora_core.render) against a fake ComfyUI (tests/fixtures/fake_comfy.py)."""
from __future__ import annotations

import json
import os
import socket

import pytest

from fixtures.fake_comfy import FakeComfy, api_workflow
from lora_core.__main__ import main as cli_main
from lora_core.errors import RenderError, StackError
from lora_core.grid import read_png
from lora_core.render.comfy import ComfyServer
from lora_core.render.index import load_index
from lora_core.render.runner import Runner, make_job
from lora_core.render.workflow import check_workflow, find_stack_node, stack_of
from lora_core.render.ws import accept_key
from lora_core.stack import parse_rows
from lora_core.sweep import SweepSpec, axis


@pytest.fixture
def fakes():
    made = []

    def make(**kw):
        f = FakeComfy(**kw)
        made.append(f)
        return f

    yield make
    for f in made:
        f.close()


def _job(spec=SweepSpec(axis("strength", "0, 0.5, 1"), axis("seed", "3, 4")), rows=None, seed=None):
    wf = api_workflow(rows)
    node = find_stack_node(wf)
    return make_job(wf, "wf.json", node, stack_of(wf, node), spec, seed)


def _quiet(_line):
    pass


def _files(root):
    return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs)


def test_accept_key_rfc_example():
    assert accept_key("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="  # RFC 6455 section 1.3


@pytest.mark.parametrize("websocket", [True, False], ids=["ws", "polling"])
def test_sweep_renders_every_cell_with_its_stack_and_seed(fakes, tmp_path, websocket):
    fake = fakes(websocket=websocket)
    lines = []
    index = Runner([ComfyServer(fake.url)], str(tmp_path), log=lines.append, poll=0.05, show_steps=True,
                   depth=1).run(_job())  # depth 1: the socket is open before prompts 2-6 start
    assert any("step 1/1" in ln for ln in lines) == websocket  # steps come from the websocket only
    assert [c.status for c in index.cells] == ["done"] * 6
    sent = [(json.loads(p["2"]["inputs"]["rows"])[0]["strength"], p["3"]["inputs"]["seed"]) for p in fake.submitted]
    assert sorted(sent) == sorted([(s, sd) for sd in (3, 4) for s in (0.0, 0.5, 1.0)])
    # each cell's image is the one its stack and seed made
    for c in index.cells:
        img = read_png((tmp_path / c.images[0]).read_bytes())
        assert abs(float(img[0, 0, 0]) - c.stack[0]["strength"]) < 1 / 255 + 1e-6
        assert abs(float(img[0, 0, 1]) - (c.seed % 10) / 10) < 1 / 255 + 1e-6
    assert [(c.label_x, c.label_y) for c in index.cells][:4] == [("0", "seed 3"), ("0.5", "seed 3"),
                                                                 ("1", "seed 3"), ("0", "seed 4")]
    assert index.cells[1].tags == "<lora:ink:0.5>"
    assert index.contact_sheet == "contact-sheet.png"
    sheet = read_png((tmp_path / "contact-sheet.png").read_bytes())
    assert sheet.shape[0] > 16 and sheet.shape[1] > 24
    saved = load_index(str(tmp_path / "index.json"))
    assert saved.counts() == {"pending": 0, "done": 6, "failed": 0} and saved.title_x == "ink strength"
    assert not [f for f in _files(tmp_path) if f.endswith(".tmp")]


def test_two_servers_and_one_goes_away_mid_run(fakes, tmp_path):
    a, b = fakes(die_after=1, delay=0.05), fakes(delay=0.05)
    lines = []
    index = Runner([ComfyServer(a.url), ComfyServer(b.url)], str(tmp_path), log=lines.append, poll=0.05,
                   depth=2).run(_job())
    assert [c.status for c in index.cells] == ["done"] * 6
    servers = {c.server for c in index.cells}
    assert servers == {ComfyServer(a.url).name, ComfyServer(b.url).name}
    assert a.gone and any("go to the other servers" in ln for ln in lines)
    assert (tmp_path / "contact-sheet.png").is_file()


def test_every_server_gone_leaves_a_consistent_index_and_resume_finishes(fakes, tmp_path):
    a = fakes(die_after=2)
    with pytest.raises(RenderError, match="every server went away; 4 of 6 prompts are not rendered"):
        Runner([ComfyServer(a.url)], str(tmp_path), log=_quiet, poll=0.05, depth=1).run(_job())
    saved = load_index(str(tmp_path / "index.json"))
    assert saved.counts()["done"] == 2 and not (tmp_path / "contact-sheet.png").exists()
    for c in saved.cells:
        if c.status == "done":
            assert all((tmp_path / p).is_file() for p in c.images)
    b = fakes()
    index = Runner([ComfyServer(b.url)], str(tmp_path), log=_quiet, poll=0.05).run(_job())
    assert index.counts()["done"] == 6 and len(b.submitted) == 4  # finished prompts are not rendered again


def test_ctrl_c_leaves_a_consistent_index_and_resume_renders_only_the_rest(fakes, tmp_path):
    fake = fakes()

    def interrupt_after_two(cell, index):
        if index.counts()["done"] == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        Runner([ComfyServer(fake.url)], str(tmp_path), log=_quiet, poll=0.05, depth=1,
               on_cell_done=interrupt_after_two).run(_job())
    saved = load_index(str(tmp_path / "index.json"))
    assert saved.counts() == {"done": 2, "pending": 4, "failed": 0}
    assert not (tmp_path / "contact-sheet.png").exists()
    assert not [f for f in _files(tmp_path) if f.endswith(".tmp")]
    before = len(fake.submitted)
    index = Runner([ComfyServer(fake.url)], str(tmp_path), log=_quiet, poll=0.05).run(_job())
    assert index.counts()["done"] == 6 and len(fake.submitted) - before == 4
    # a changed sweep renders only what is new
    index = Runner([ComfyServer(fake.url)], str(tmp_path), log=_quiet, poll=0.05).run(
        _job(SweepSpec(axis("strength", "0, 0.5, 1, 2"), axis("seed", "3, 4"))))
    assert index.counts()["done"] == 8 and len(fake.submitted) - before == 6


def test_unreachable_server_is_named_and_nothing_is_written(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "out"
    with pytest.raises(RenderError, match=f"no server is reachable: server http://127.0.0.1:{port} is unreachable"):
        Runner([ComfyServer(f"127.0.0.1:{port}")], str(out), log=_quiet).run(_job())
    assert not out.exists()


def test_failed_and_rejected_prompts_are_reported(fakes, tmp_path):
    fake = fakes()
    rows = [{"on": True, "lora": "ink.safetensors", "strength": 1.0}]
    spec = SweepSpec(axis("lora", "ink.safetensors, broken, invalid", row=0))
    with pytest.raises(RenderError, match="2 of 3 prompts failed"):
        Runner([ComfyServer(fake.url)], str(tmp_path), log=_quiet, poll=0.05).run(_job(spec, rows))
    saved = load_index(str(tmp_path / "index.json"))
    by_label = {c.label_x: c for c in saved.cells}
    assert by_label["ink"].status == "done"
    assert by_label["broken"].status == "failed" and "LoRA 'broken' is corrupt" in by_label["broken"].error
    assert by_label["invalid"].status == "failed" and "LoRA 'invalid' is not installed" in by_label["invalid"].error
    assert (tmp_path / "contact-sheet.png").is_file()  # with grey cells for the failures


def test_html_index_escapes_hostile_names(fakes, tmp_path):
    fake = fakes()
    hostile = "<img src=x onerror=alert(1)>.safetensors"
    spec = SweepSpec(axis("lora", f"ink.safetensors\n{hostile}", row=0, labels=None))
    Runner([ComfyServer(fake.url)], str(tmp_path), log=_quiet, poll=0.05).run(_job(spec))
    page = (tmp_path / "index.html").read_text()
    assert "<img src=x" not in page and "&lt;img src=x onerror=alert(1)&gt;" in page


def test_workflow_checks():
    with pytest.raises(RenderError, match="UI workflow"):
        check_workflow({"nodes": [], "links": []})
    with pytest.raises(RenderError, match="not an API-format workflow"):
        check_workflow([1, 2])
    wf = api_workflow()
    del wf["2"]
    with pytest.raises(RenderError, match="no Patchbay stack node"):
        find_stack_node(wf)
    wf = api_workflow()
    wf["7"] = json.loads(json.dumps(wf["2"]))
    with pytest.raises(RenderError, match="2 Patchbay stack nodes \\(2, 7\\).*--node"):
        find_stack_node(wf)
    assert find_stack_node(wf, "7") == "7"
    wf["2"]["inputs"]["rows"] = "<lora:a:0.5> <lora:b:1:0.25>"
    assert stack_of(wf, "2") == parse_rows([{"lora": "a", "strength": 0.5},
                                            {"lora": "b", "strength": 1, "strength_clip": 0.25}])
    wf["2"]["inputs"]["rows"] = "<lora:a:x>"
    with pytest.raises(StackError, match="'<lora:a:x>': strength 'x' is not a number"):
        stack_of(wf, "2")


def test_cli_render(fakes, tmp_path, capsys):
    fake = fakes()
    wf = tmp_path / "wf.json"
    wf.write_text(json.dumps(api_workflow()))
    out = tmp_path / "out"
    rc = cli_main(["render", str(wf), "--server", fake.url, "--out", str(out), "--stack",
                   "<lora:ink:1> <lora:detail:0.5>", "--values", "0:1:3", "--y-vary", "seed", "--y-values", "1, 2",
                   "--json"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["done"] == 6 and summary["contact_sheet"].endswith("contact-sheet.png")
    rows = json.loads(fake.submitted[0]["2"]["inputs"]["rows"])
    assert [r["lora"] for r in rows] == ["ink", "detail"]


@pytest.mark.parametrize("args, message", [
    (["--stack", "<lora:ink:abc>"], "'<lora:ink:abc>': strength 'abc' is not a number"),
    (["--values", ""], "the sweep has no values"),
    (["--values", ", ".join(["1"] * 10000)], "10000 values; the limit is 256"),
    (["--values", "0, 1", "--row", "3"], "row 3 but the stack has 1"),
    (["--vary", "seed"], "--vary seed needs --values"),
])
def test_cli_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, args, message):
    wf = tmp_path / "wf.json"
    wf.write_text(json.dumps(api_workflow()))
    out = tmp_path / "out"
    rc = cli_main(["render", str(wf), "--server", "127.0.0.1:9", "--out", str(out), *args])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not out.exists()
