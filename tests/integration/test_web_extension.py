"""The web extension (web/patchbay.js) in a real ComfyUI frontend, driven by
headless Chromium through Playwright.

Per ComfyUI install: the extension loads without console errors, LoRA
Stack's row editor adds a row picked from the real loras list (a real click
in its picker), "Toggle all" flips the rows, the rows widget stays one plain
JSON string in the workflow and in the API prompt, hostile file and folder
names show as text, and LoRA Info shows its report on the node after a real
queue from the browser.  A screenshot of each version lands in the test's
tmp dir.  The editor's full walk-through is test_stack_editor.py.

Frontend: each ComfyUI pins its frontend (0.3.64 → 1.27.10, 0.14 → 1.38.x).
The venv has one frontend package; when the install wants another and a copy
of that version is unpacked under $PATCHBAY_FRONTENDS (default
~/.cache/lora-patchbay/frontends/<version>/), the test starts its own server
with ``--front-end-root`` so each ComfyUI runs with its own frontend.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import time
from importlib import metadata
from pathlib import Path

import pytest

import comfy_harness as ch
from test_info_node import write_tiny_sd15_lora

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--headless=new", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run"]
FRONTENDS = Path(os.environ.get("PATCHBAY_FRONTENDS", Path.home() / ".cache" / "lora-patchbay" / "frontends"))
EXT_URL_PART = "/extensions/lora-patchbay/patchbay.js"
LORA_NAME = "patchbay_web/web_tiny_sd15.safetensors"

try:
    from playwright.sync_api import sync_playwright
except ImportError:  # pragma: no cover
    sync_playwright = None

pytestmark = [
    pytest.mark.skipif(sync_playwright is None, reason="playwright (python) is not installed"),
    pytest.mark.skipif(not shutil.which(CHROMIUM), reason=f"{CHROMIUM} missing (apt-get install -y chromium)"),
]


def _wanted_frontend(install: ch.ComfyInstall) -> str | None:
    req = install.path / "requirements.txt"
    if not req.is_file():
        return None
    m = re.search(r"^comfyui-frontend-package==([\w.]+)", req.read_text(), re.M)
    return m.group(1) if m else None


def _installed_frontend() -> str | None:
    try:
        return metadata.version("comfyui-frontend-package")
    except metadata.PackageNotFoundError:
        return None


def _frontend_args(install: ch.ComfyInstall) -> tuple[list[str], str | None]:
    """(extra server args, frontend version that will be served)."""
    wanted, have = _wanted_frontend(install), _installed_frontend()
    if wanted and wanted != have:
        static = FRONTENDS / wanted / "comfyui_frontend_package" / "static"
        if (static / "index.html").is_file():
            return ["--front-end-root", str(static)], wanted
    return [], have


@pytest.fixture(scope="module")
def web_comfy(comfy_install, request, tmp_path_factory):
    """A server running this install's own frontend when we have it, else the shared one."""
    args, version = _frontend_args(comfy_install)
    pack = os.environ.get("PATCHBAY_PACK_DIR")  # serve another checkout of the pack (a branch, a fix)
    if not args and not pack:
        srv = request.getfixturevalue("comfy")
        yield srv, version
        return
    srv = ch.ComfyServer(comfy_install, extra_args=args, **({"pack_dir": pack} if pack else {}))
    try:
        srv.start()
    except Exception:
        srv.stop()
        raise
    yield srv, version
    srv.cleanup()


@pytest.fixture(scope="module")
def web_lora(web_comfy, tmp_path_factory) -> str:
    srv, _ = web_comfy
    path = write_tiny_sd15_lora(tmp_path_factory.mktemp("web-lora") / "web_tiny_sd15.safetensors")
    return srv.add_model("loras", path, LORA_NAME)


@pytest.fixture(scope="module")
def page(web_comfy, web_lora):
    srv, _ = web_comfy
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        pg = browser.new_page(viewport={"width": 1400, "height": 900})
        pg.patchbay_console = []
        pg.on("console", lambda m: pg.patchbay_console.append(
            (m.type, m.text, (m.location or {}).get("url", ""))))
        pg.on("pageerror", lambda e: pg.patchbay_console.append(("pageerror", f"{e}\n{e.stack or ''}", "")))
        # A fresh user directory opens the templates dialog over the canvas; mark the tour done.
        for key in ("Comfy.TutorialCompleted",):
            try:
                srv.client.post(f"/settings/{key}", True)
            except Exception:  # an old server without the settings route: the dialog is closed below
                pass
        pg.goto(srv.url)
        pg.wait_for_function("() => window.app && window.app.graph && window.LiteGraph "
                             "&& window.app.extensions && window.app.extensions.length > 0", timeout=120_000)
        pg.wait_for_function("() => window.app.extensions.some(e => e.name === 'lora-patchbay.web')",
                             timeout=30_000)
        pg.keyboard.press("Escape")
        yield pg
        browser.close()


# 404s the pack's contract defines: coverage before any run, a file without a preview, no presets/notes yet.
EXPECTED_404 = ("/patchbay/coverage", "/patchbay/preview", "/userdata/lora-patchbay%2F")


def _ours(entry) -> bool:
    kind, text, url = entry
    if "Failed to load resource" in (text or "") and any(p in (url or "") for p in EXPECTED_404):
        return False
    return "patchbay" in (url or "").lower() or "patchbay" in (text or "").lower()


def _add_node(page, node_type: str, pos=(80, 80)) -> int:
    return page.evaluate(
        """([type, pos]) => {
            const node = LiteGraph.createNode(type);
            if (!node) throw new Error('no node type ' + type);
            node.pos = pos;
            app.graph.add(node);
            app.graph.setDirtyCanvas(true, true);
            return node.id;
        }""", [node_type, list(pos)])


def _rows(page, node_id: int) -> str:
    return page.evaluate("(id) => app.graph.getNodeById(id).widgets.find(w => w.name === 'rows').value", node_id)


VUE_RENDER_ERROR = ("Nodes 2.0 drew the node as \"Node Render Error\"; a known cause is vue-i18n syntax ('{', '}', "
                    "'@', '|', '$') in locales/en/nodeDefs.json (see tests/unit/test_locale_syntax.py)")


def assert_no_vue_render_error(page, node_id: int) -> None:
    """Nodes 2.0 replaces a node it cannot render with "Node Render Error"."""
    page.wait_for_timeout(300)
    assert not page.locator(f'.node-error[data-node-id="{node_id}"]').count(), VUE_RENDER_ERROR


def _editor(page, node_id: int):
    return page.locator(f'[data-testid=patchbay-stack][data-node="{node_id}"]')


def _pick(page, node_id: int, name: str):
    """A real click on the editor's "+ Add LoRA", then on the picker's entry for `name`."""
    _editor(page, node_id).locator("[data-testid=pb-add]").click()
    picker = page.locator("[data-testid=patchbay-picker]")
    picker.wait_for(state="visible", timeout=15_000)
    quoted = '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'
    entry = picker.locator(f"[data-testid=pb-item][data-name={quoted}]").first
    entry.wait_for(state="visible", timeout=15_000)
    return picker, entry


def test_extension_loads_without_errors(page, web_comfy):
    srv, version = web_comfy
    served = page.evaluate(f"async () => (await fetch('{EXT_URL_PART}')).status")
    assert served == 200
    names = page.evaluate("() => app.extensions.map(e => e.name)")
    assert "lora-patchbay.web" in names
    assert page.evaluate("() => typeof globalThis.LoraPatchbay?.rows?.parseStack") == "function"
    errors = [e for e in page.patchbay_console if e[0] in ("error", "pageerror") and _ours(e)]
    assert not errors, errors
    fe = page.evaluate("() => window.__COMFYUI_FRONTEND_VERSION__ || null")
    if version:
        assert fe == version, f"served frontend {fe}, expected {version}"


def test_stack_add_lora_and_toggle_all(page, web_comfy, web_lora, tmp_path):
    page.evaluate("() => app.graph.clear()")
    nid = _add_node(page, "PatchbayLoraStack")
    before = _rows(page, nid)
    assert json.loads(before) == []

    _, entry = _pick(page, nid, web_lora)
    entry.click()
    page.wait_for_function("(id) => app.graph.getNodeById(id).widgets.find(w => w.name === 'rows')"
                           ".value.includes('web_tiny_sd15')", arg=nid, timeout=10_000)
    value = json.loads(_rows(page, nid))
    assert value["version"] == 2 and value["options"] == {"separate_clip": False}
    (row,) = value["rows"]
    assert row["lora"] == web_lora and row["on"] is True and row["strength"] == 1.0 and row["strength_clip"] is None
    assert re.fullmatch(r"r-[0-9a-f]{8}", row["id"])

    # A second row through the same picker, then toggle all: all on → all off → all on.
    _pick(page, nid, web_lora)[1].click()
    toggle = _editor(page, nid).locator("[data-testid=pb-toggle-all]")
    toggle.click()
    assert [r["on"] for r in json.loads(_rows(page, nid))["rows"]] == [False, False]
    toggle.click()
    assert [r["on"] for r in json.loads(_rows(page, nid))["rows"]] == [True, True]

    # Workflow JSON and API prompt carry the rows as one plain JSON string; the editor adds no value.
    saved = page.evaluate("(id) => app.graph.serialize().nodes.find(n => n.id === id).widgets_values", nid)
    assert isinstance(saved[0], str) and len(json.loads(saved[0])["rows"]) == 2
    assert all(v is None or isinstance(v, str) for v in saved), saved
    prompt = page.evaluate("async () => (await app.graphToPrompt()).output")
    (api_node,) = [n for n in prompt.values() if n["class_type"] == "PatchbayLoraStack"]
    assert set(api_node["inputs"]) <= {"rows", "stack"}
    assert json.loads(api_node["inputs"]["rows"])["rows"][0]["lora"] == web_lora

    # Pasted A1111 tags show as rows and stay as typed until the user edits a row.
    page.evaluate("(id) => { const w = app.graph.getNodeById(id).widgets.find(w => w.name === 'rows');"
                  " w.value = '<lora:x:0.5>'; w.callback?.(w.value); }", nid)
    names = _editor(page, nid).locator("[data-testid=pb-row] .pb-name-text")
    page.wait_for_function("(id) => document.querySelector(`[data-testid=patchbay-stack][data-node=\"${id}\"]`)"
                           "?.querySelectorAll('[data-testid=pb-row]').length === 1", arg=nid, timeout=10_000)
    assert names.all_text_contents() == ["x"]
    assert _rows(page, nid) == "<lora:x:0.5>"


# Hostile names (issue 8): a file and a folder whose names are HTML that runs script when parsed.
HOSTILE_FILE = '"><img src=x onerror=window.__pwned=1>.safetensors'
HOSTILE_FOLDER = "<svg onload=window.__pwned=2>"
SHOTS = Path(os.environ.get("PATCHBAY_SHOTS", "/tmp/patchbay/shots"))


@pytest.fixture(scope="module")
def hostile_loras(web_comfy, tmp_path_factory) -> list[str]:
    srv, _ = web_comfy
    path = write_tiny_sd15_lora(tmp_path_factory.mktemp("hostile-lora") / "hostile.safetensors")
    return [srv.add_model("loras", path, HOSTILE_FILE),
            srv.add_model("loras", path, f"{HOSTILE_FOLDER}/x.safetensors")]


def _set_renderer(page, srv, vue: bool) -> bool:
    """Switch Nodes 2.0 on/off and reload; False when this frontend has no such mode."""
    srv.client.post("/settings/Comfy.VueNodes.Enabled", vue)
    page.reload()
    page.wait_for_function("() => window.app && window.app.graph && window.app.extensions"
                           " && window.app.extensions.some(e => e.name === 'lora-patchbay.web')", timeout=120_000)
    page.keyboard.press("Escape")
    return page.evaluate("() => !!app.extensionManager?.setting?.get?.('Comfy.VueNodes.Enabled')") == vue


@pytest.mark.parametrize("renderer", ["classic", "vue"])
def test_stack_picker_shows_hostile_names_as_text(page, web_comfy, hostile_loras, renderer):
    srv, _ = web_comfy
    try:
        if not _set_renderer(page, srv, renderer == "vue"):
            pytest.skip("this frontend has no Vue node mode")
        page.evaluate("() => { delete window.__pwned; app.graph.clear(); }")
        nid = _add_node(page, "PatchbayLoraStack", (200, 120))
        page.wait_for_timeout(800)
        assert_no_vue_render_error(page, nid)
        if renderer == "vue" and not _editor(page, nid).count():
            # Nodes 2.0 of frontend 1.27 shows no DOM widget: the rows stay raw JSON, with one notice.
            page.get_by_text("cannot show the LoRA stack editor").first.wait_for(timeout=10_000)
            assert page.evaluate("() => window.__pwned ?? null") is None
            return
        picker, entry = _pick(page, nid, hostile_loras[0])
        page.wait_for_timeout(1500)  # an injected <img src=x> has errored by now
        texts = picker.locator("[data-testid=pb-item]").evaluate_all("els => els.map(e => e.title)")
        for name in hostile_loras:
            assert name in texts, f"{name!r} not shown as text among {texts}"
        assert f"{HOSTILE_FOLDER}/" in picker.locator("[data-testid=pb-folder]").all_text_contents()
        assert picker.locator("img, svg").count() == 0
        SHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SHOTS / f"xss-picker-{srv.version}-{renderer}.png"))
        assert page.evaluate("() => window.__pwned ?? null") is None, "a file name ran script"
        entry.click()
        page.wait_for_function("(id) => app.graph.getNodeById(id).widgets.find(w => w.name === 'rows')"
                               ".value.includes('onerror')", arg=nid, timeout=10_000)
        assert json.loads(_rows(page, nid))["rows"][0]["lora"] == HOSTILE_FILE
        assert _editor(page, nid).locator(".pb-name-text").all_text_contents() == [HOSTILE_FILE]
        assert _editor(page, nid).locator("img, svg").count() == 0
        assert page.evaluate("() => window.__pwned ?? null") is None
    finally:
        if renderer == "vue":
            _set_renderer(page, srv, False)


def test_info_text_rendered_on_node(page, web_comfy, web_lora, tmp_path):
    page.evaluate("() => app.graph.clear()")
    _add_node(page, "PatchbayLoraStack", (40, 40))
    nid = _add_node(page, "PatchbayLoraInfo", (480, 40))
    _add_node(page, "PatchbayLoraBlockWeights", (40, 380))
    _add_node(page, "PatchbayLoraSchedule", (480, 420))
    page.evaluate("""([id, name]) => {
        const node = app.graph.getNodeById(id);
        const w = node.widgets.find(w => w.name === 'lora_name');
        w.value = name;
    }""", [nid, web_lora])
    page.evaluate("() => app.queuePrompt(0, 1)")
    report = page.locator("[data-testid=patchbay-info-node] [data-testid=pb-report]").first
    report.wait_for(state="visible", timeout=60_000)
    page.wait_for_function("() => document.querySelector('[data-testid=patchbay-info-node] [data-testid=pb-report]')"
                           ".textContent.includes('sha256')", timeout=10_000)
    text = report.text_content()
    assert "patchbay_token" in text and "ranks: 4" in text
    page.evaluate("() => { app.canvas.ds.offset = [60, 70]; app.canvas.ds.scale = 1; app.graph.setDirtyCanvas(true, true); }")
    time.sleep(1.0)
    shot = tmp_path / "patchbay-web.png"
    page.screenshot(path=str(shot))
    keep = os.environ.get("PATCHBAY_WEB_SCREENSHOTS")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(keep) / f"patchbay-web-{web_comfy[0].version}.png")
    assert shot.stat().st_size > 10_000
    errors = [e for e in page.patchbay_console if e[0] in ("error", "pageerror") and _ours(e)]
    assert not errors, errors


def test_vue_nodes_mode_real_clicks(page, web_comfy, web_lora):
    """Nodes 2.0 (Vue) shows the same DOM editor: real clicks on "+ Add LoRA", the picker and Toggle all."""
    srv, _ = web_comfy
    try:
        if not _set_renderer(page, srv, True):
            pytest.skip("this frontend has no Vue node mode")
        page.evaluate("() => app.graph.clear()")
        nid = _add_node(page, "PatchbayLoraStack", (200, 120))
        page.wait_for_timeout(800)
        assert_no_vue_render_error(page, nid)
        if not _editor(page, nid).count():
            shown = page.evaluate("() => [...document.querySelectorAll('textarea')].some(t => t.value.trim() === '[]'"
                                  " && t.getClientRects().length > 0)")
            assert shown, "neither the editor nor the raw rows JSON is shown"
            pytest.skip("Nodes 2.0 of this frontend shows the raw rows JSON (no DOM widgets)")
        _pick(page, nid, web_lora)[1].click()
        page.wait_for_function("(id) => app.graph.getNodeById(id).widgets.find(w => w.name === 'rows')"
                               ".value.includes('web_tiny_sd15')", arg=nid, timeout=10_000)
        assert json.loads(_rows(page, nid))["rows"][0]["lora"] == web_lora
        _editor(page, nid).locator("[data-testid=pb-toggle-all]").click()
        assert json.loads(_rows(page, nid))["rows"][0]["on"] is False
        errors = [e for e in page.patchbay_console if e[0] in ("error", "pageerror") and _ours(e)]
        assert not errors, errors
    finally:
        _set_renderer(page, srv, False)
