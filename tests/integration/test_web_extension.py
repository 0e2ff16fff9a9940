"""The web extension (web/patchbay.js) in a real ComfyUI frontend, driven by
headless Chromium through Playwright.

Per ComfyUI install: the extension loads without console errors, LoRA
Stack's "Add LoRA" button appends a row picked from the real loras list (a
real click in the context menu), "Toggle all" flips the rows, the rows widget
stays one plain JSON string in the workflow and in the API prompt, and LoRA
Info shows its text on the node after a real queue from the browser.  A
screenshot of each version lands in the test's tmp dir.

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
    if not args:
        srv = request.getfixturevalue("comfy")
        yield srv, version
        return
    srv = ch.ComfyServer(comfy_install, extra_args=args)
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


def _ours(entry) -> bool:
    kind, text, url = entry
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


def _click_button(page, node_id: int, label: str) -> None:
    # The button's own callback, as a canvas click on it would run it.
    page.evaluate(
        """([id, label]) => {
            const node = app.graph.getNodeById(id);
            const w = node.widgets.find(w => w.type === 'button' && (w.name || w.label || '').includes(label));
            if (!w) throw new Error('no button ' + label + ' among ' + node.widgets.map(w => w.name));
            const r = app.canvas.canvas.getBoundingClientRect();
            const ev = new MouseEvent('click', {clientX: r.left + 300, clientY: r.top + 200});
            w.callback(w, app.canvas, node, [10, 10], ev);
        }""", [node_id, label])


def test_extension_loads_without_errors(page, web_comfy):
    srv, version = web_comfy
    served = page.evaluate(f"async () => (await fetch('{EXT_URL_PART}')).status")
    assert served == 200
    names = page.evaluate("() => app.extensions.map(e => e.name)")
    assert "lora-patchbay.web" in names
    assert page.evaluate("() => typeof globalThis.LoraPatchbay?.addLora") == "function"
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

    _click_button(page, nid, "Add LoRA")
    entry = page.locator(".litecontextmenu .litemenu-entry", has_text=web_lora).first
    entry.wait_for(state="visible", timeout=15_000)
    entry.click()
    page.wait_for_function("(id) => app.graph.getNodeById(id).widgets.find(w => w.name === 'rows')"
                           ".value.includes('web_tiny_sd15')", arg=nid, timeout=10_000)
    rows = json.loads(_rows(page, nid))
    assert rows == [{"on": True, "lora": web_lora, "strength": 1.0, "strength_clip": 1.0}]

    # A second row through the same code path, then toggle all: all on → all off → all on.
    assert page.evaluate("([id, n]) => LoraPatchbay.addLora(app.graph.getNodeById(id), n)", [nid, web_lora])
    _click_button(page, nid, "Toggle all")
    assert [r["on"] for r in json.loads(_rows(page, nid))] == [False, False]
    _click_button(page, nid, "Toggle all")
    assert [r["on"] for r in json.loads(_rows(page, nid))] == [True, True]

    # Workflow JSON and API prompt carry the rows as one plain JSON string; buttons add no values.
    saved = page.evaluate("(id) => app.graph.serialize().nodes.find(n => n.id === id).widgets_values", nid)
    assert isinstance(saved[0], str) and len(json.loads(saved[0])) == 2
    assert all(v is None or isinstance(v, str) for v in saved), saved
    prompt = page.evaluate("async () => (await app.graphToPrompt()).output")
    (api_node,) = [n for n in prompt.values() if n["class_type"] == "PatchbayLoraStack"]
    assert isinstance(api_node["inputs"]["rows"], str)
    assert json.loads(api_node["inputs"]["rows"])[0]["lora"] == web_lora

    # Non-JSON rows (pasted A1111 tags) are left alone.
    page.evaluate("(id) => { app.graph.getNodeById(id).widgets.find(w => w.name === 'rows').value = '<lora:x:1>'; }", nid)
    assert page.evaluate("(id) => LoraPatchbay.toggleAll(app.graph.getNodeById(id))", nid) is False
    assert _rows(page, nid) == "<lora:x:1>"


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
def test_stack_menu_shows_hostile_names_as_text(page, web_comfy, hostile_loras, renderer):
    srv, _ = web_comfy
    try:
        if not _set_renderer(page, srv, renderer == "vue"):
            pytest.skip("this frontend has no Vue node mode")
        page.evaluate("() => { delete window.__pwned; app.graph.clear(); }")
        nid = _add_node(page, "PatchbayLoraStack", (200, 120))
        _click_button(page, nid, "Add LoRA")
        menu = page.locator(".litecontextmenu").first
        menu.wait_for(state="visible", timeout=15_000)
        page.wait_for_timeout(1500)  # an injected <img src=x> has errored by now
        texts = menu.locator(".litemenu-entry").all_text_contents()
        for name in hostile_loras:
            assert name in texts, f"{name!r} not shown as text among {texts}"
        assert menu.locator("img, svg").count() == 0
        SHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SHOTS / f"xss-menu-{srv.version}-{renderer}.png"))
        assert page.evaluate("() => window.__pwned ?? null") is None, "a file name ran script"
        menu.locator(".litemenu-entry", has_text="onerror").first.click()
        page.wait_for_function("(id) => app.graph.getNodeById(id).widgets.find(w => w.name === 'rows')"
                               ".value.includes('onerror')", arg=nid, timeout=10_000)
        assert json.loads(_rows(page, nid))[0]["lora"] == HOSTILE_FILE
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
    page.wait_for_function(
        "(id) => { const w = app.graph.getNodeById(id).widgets.find(w => w.name === 'patchbay_info');"
        " return w && (w.patchbayArea ? w.patchbayArea.value : w.value).includes('sha256'); }",
        arg=nid, timeout=60_000)
    area = page.locator("textarea.patchbay-info").first
    area.wait_for(state="visible", timeout=10_000)
    text = area.input_value()
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


def _dom_button(page, label: str):
    """The DOM button of a Vue-rendered button widget (1.38: text inside; 1.27: a label before it)."""
    button = page.get_by_role("button", name=label).or_(
        page.locator(f"xpath=//label[contains(., '{label}')]/following::button[1]")).first
    button.wait_for(state="visible", timeout=15_000)
    return button


def test_vue_nodes_mode_real_button_click(page, web_comfy, web_lora):
    """Nodes 2.0 (Vue) renders widgets as DOM: click the real "Add LoRA" button and menu entry."""
    srv, _ = web_comfy
    srv.client.post("/settings/Comfy.VueNodes.Enabled", True)
    try:
        page.reload()
        page.wait_for_function("() => window.app && window.app.graph && window.app.extensions"
                               " && window.app.extensions.some(e => e.name === 'lora-patchbay.web')", timeout=120_000)
        page.keyboard.press("Escape")
        if not page.evaluate("() => !!app.extensionManager?.setting?.get?.('Comfy.VueNodes.Enabled')"):
            pytest.skip("this frontend has no Vue node mode")
        page.evaluate("() => app.graph.clear()")
        nid = _add_node(page, "PatchbayLoraStack", (200, 120))
        _dom_button(page, "Add LoRA").click()
        entry = page.locator(".litecontextmenu .litemenu-entry", has_text=web_lora).first
        entry.wait_for(state="visible", timeout=15_000)
        entry.click()
        page.wait_for_function("(id) => app.graph.getNodeById(id).widgets.find(w => w.name === 'rows')"
                               ".value.includes('web_tiny_sd15')", arg=nid, timeout=10_000)
        assert json.loads(_rows(page, nid))[0]["lora"] == web_lora
        _dom_button(page, "Toggle all").click()
        assert json.loads(_rows(page, nid))[0]["on"] is False
        errors = [e for e in page.patchbay_console if e[0] in ("error", "pageerror") and _ours(e)]
        assert not errors, errors
    finally:
        srv.client.post("/settings/Comfy.VueNodes.Enabled", False)
