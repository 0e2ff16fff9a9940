"""The LoRA stack row editor (web/patchbay/) in a real ComfyUI frontend, driven
by Debian's chromium through Playwright, per ComfyUI install and per renderer
(classic canvas, Nodes 2.0) where the host has it.

One page per renderer; the tests are the steps of one session and run in
order (each starts from the state the previous one left):

1. add the stack loader; three rows through the picker (fuzzy search, a subfolder, keyboard)
2. strengths by drag, arrow keys (Shift: fine), step buttons, typing; the CLIP column
3. toggle a row, toggle all, reorder by drag and by keyboard, remove one
4. save a preset, clear, load it
5. queue with a tiny checkpoint: the server ran exactly the rows shown; the summary line shows
6. reload, tab switch, undo, copy/paste, subgraph round trip, API JSON export → import,
   renderer switch: the same stack each time
7. a workflow saved with today's rows JSON loads unchanged and queues
8. untrusted text: hostile file, folder and metadata names show as text in the picker,
   rows, info panel and LoRA Info; nothing runs
9. 30 rows stay light (plain DOM, the list scrolls)

Screenshots of each step land in $PATCHBAY_SHOTS (default /tmp/patchbay/shots).
PATCHBAY_PACK_DIR=<dir> serves another checkout of the pack (its own server).
A node Nodes 2.0 cannot render ("Node Render Error", e.g. vue-i18n syntax in
the locale strings) fails the step.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

import comfy_harness as ch
from test_info_node import write_tiny_sd15_lora
from test_web_extension import CHROMIUM, CHROMIUM_ARGS, _frontend_args, sync_playwright, VUE_RENDER_ERROR, assert_no_vue_render_error

SHOTS = Path(os.environ.get("PATCHBAY_SHOTS", "/tmp/patchbay/shots"))
IMAGES = Path(__file__).resolve().parents[2] / "docs" / "images"
NAMES = {
    "style": "anime/style_a.safetensors",
    "char": "anime/chars/char_b.safetensors",
    "detail": "detail_c.safetensors",
    "photo": "realistic/photo_d.safetensors",
}
HOSTILE_FILE = '"><img src=x onerror=window.__pwned=1>.safetensors'
HOSTILE_FOLDER = "<svg onload=window.__pwned=2>"
HOSTILE_META = "<img src=x onerror=window.__pwned=3>"

pytestmark = [
    pytest.mark.skipif(sync_playwright is None, reason="playwright (python) is not installed"),
    pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} missing (apt-get install -y chromium)"),
]


# ----------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def editor_server(comfy_install, request, tmp_path_factory, tiny_model_cache):
    """A server with this install's own frontend, tiny LoRAs in subfolders and a tiny checkpoint."""
    args, _ = _frontend_args(comfy_install)
    pack = os.environ.get("PATCHBAY_PACK_DIR")  # try another checkout of the pack (a branch, a fix)
    own = bool(args) or bool(pack)
    srv = (ch.ComfyServer(comfy_install, extra_args=args, **({"pack_dir": pack} if pack else {})) if own
           else request.getfixturevalue("comfy"))
    if own:
        try:
            srv.start()
        except Exception:
            srv.stop()
            raise
    d = tmp_path_factory.mktemp("editor-loras")
    plain = write_tiny_sd15_lora(d / "plain.safetensors")
    srv.patchbay_plain_sha = hashlib.sha256(plain.read_bytes()).hexdigest()
    for name in NAMES.values():
        srv.add_model("loras", plain, name)
    hostile_meta = d / "hostile_meta.safetensors"
    from safetensors import safe_open
    with safe_open(str(plain), "pt") as f:
        meta = dict(f.metadata())
    meta.update({"ss_output_name": HOSTILE_META, "modelspec.title": HOSTILE_META,
                 "ss_tag_frequency": json.dumps({"ds": {HOSTILE_META: 5, "<b>bold</b>": 2}})})
    save_file(load_file(str(plain)), str(hostile_meta), metadata=meta)
    srv.add_model("loras", plain, HOSTILE_FILE)
    srv.add_model("loras", plain, f"{HOSTILE_FOLDER}/x.safetensors")
    srv.add_model("loras", hostile_meta, "zz_meta/hostile_meta.safetensors")
    srv.add_model("loras", _tiny_png(d / "preview.png"), "anime/style_a.preview.png")  # a sibling preview
    ckpt = tiny_model_cache.sd15_checkpoint()
    ckpt_name = srv.add_model(ckpt.folder, ckpt.path)
    srv.patchbay_ckpt = ckpt_name
    srv.patchbay_routes = srv.client.request("GET", "/patchbay/loras")[0] == 200
    yield srv
    if own:
        srv.cleanup()


def _tiny_png(path: Path) -> Path:
    """A 16×16 PNG (a preview image) without Pillow."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    raw = b"".join(b"\x00" + b"".join(bytes((40 + 10 * x, 120, 200 - 10 * y)) for x in range(16))
                   for y in range(16))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 16, 16, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
    return path


@pytest.fixture(scope="module")
def browser(editor_server):
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


class Session:
    """One page of one renderer, plus what the steps pass on to each other."""

    def __init__(self, srv, page, renderer):
        self.srv, self.page, self.renderer = srv, page, renderer
        self.node = None
        self.node_type = None
        self.log = []
        self.errors = []
        self.raw_only = False  # Nodes 2.0 of a frontend without DOM widgets: no editor to test

    def shot(self, step: str, name: str | None = None):
        SHOTS.mkdir(parents=True, exist_ok=True)
        path = SHOTS / f"editor-{self.srv.version}-{self.renderer}-{step}.png"
        self.page.screenshot(path=str(path))
        return path


def _wait_app(page):
    page.wait_for_function("() => window.app && window.app.graph && window.LiteGraph && window.app.extensions"
                           " && window.app.extensions.some(e => e.name === 'lora-patchbay.web')", timeout=120_000)
    page.keyboard.press("Escape")
    page.wait_for_timeout(300)


@pytest.fixture(scope="module", params=["classic", "vue"])
def session(request, editor_server, browser):
    srv = editor_server
    vue = request.param == "vue"
    srv.client.post("/settings/Comfy.TutorialCompleted", True)
    srv.client.post("/settings/Comfy.VueNodes.Enabled", vue)
    ctx = browser.new_context(viewport={"width": 1400, "height": 900})
    ctx.grant_permissions(["clipboard-read", "clipboard-write"])
    page = ctx.new_page()
    s = Session(srv, page, request.param)
    page.on("console", lambda m: s.log.append((m.type, m.text, (m.location or {}).get("url", ""))))
    page.on("pageerror", lambda e: s.errors.append(f"{e}\n{e.stack or ''}"))
    page.goto(srv.url)
    _wait_app(page)
    if vue and not page.evaluate("() => !!LiteGraph.vueNodesMode"):
        ctx.close()
        srv.client.post("/settings/Comfy.VueNodes.Enabled", False)
        pytest.skip("this frontend has no Nodes 2.0 renderer")
    yield s
    ctx.close()
    srv.client.post("/settings/Comfy.VueNodes.Enabled", False)


@pytest.fixture
def session_editor(session):
    """The session, for steps that need the editor (not shown by Nodes 2.0 of frontend 1.27)."""
    if session.raw_only:
        pytest.skip("Nodes 2.0 of this frontend shows the raw rows JSON (step 1 checked it)")
    return session


# ----------------------------------------------------------------- helpers

SIG_JS = """(id) => {
    const n = app.graph.getNodeById(id);
    const text = n.widgets.find(w => w.name === 'rows').value;
    return LoraPatchbay.rows.parseStack(text).value;
}"""


def stack(s: Session, nid=None) -> dict:
    return s.page.evaluate(SIG_JS, nid or s.node)


def sig(value: dict) -> list:
    """What a stack means: order, names, on, strengths (ids aside)."""
    sep = value["options"]["separate_clip"]
    return [sep] + [(r["lora"], r["on"], r["strength"], r["strength_clip"] if sep else None) for r in value["rows"]]


def shown(s: Session, nid=None) -> list:
    """What the editor shows, read from the DOM."""
    return s.page.evaluate("""(id) => {
        const root = document.querySelector(`[data-testid=patchbay-stack][data-node="${id}"]`);
        if (!root) return null;
        const sep = root.querySelector('[data-testid=pb-clip-toggle]').getAttribute('aria-pressed') === 'true';
        return [sep, ...[...root.querySelectorAll('[data-testid=pb-row]')].map(r => [
            r.querySelector('.pb-name-text').textContent, r.querySelector('[data-testid=pb-on]').checked,
            Number(r.querySelector('[data-testid=pb-strength]').value),
            sep ? Number(r.querySelector('[data-testid=pb-strength-clip]').value) : null])];
    }""", nid or s.node)


def editor(s: Session, nid=None):
    return s.page.locator(f'[data-testid=patchbay-stack][data-node="{nid or s.node}"]')


def row(s: Session, i: int, nid=None):
    return editor(s, nid).locator("[data-testid=pb-row]").nth(i)


def assert_same(s: Session, expected: list, nid=None):
    try:
        s.page.wait_for_function(
            """([id, want]) => {
                const root = document.querySelector(`[data-testid=patchbay-stack][data-node="${id}"]`);
                return root && root.querySelectorAll('[data-testid=pb-row]').length === want;
            }""", arg=[nid or s.node, len(expected) - 1], timeout=15_000)
    except Exception:
        state = s.page.evaluate("""(id) => ({
            rows: app.graph.getNodeById(id)?.widgets?.find(w => w.name === 'rows')?.value ?? null,
            editors: [...document.querySelectorAll('[data-testid=patchbay-stack]')].map(e => [e.dataset.node,
                      e.isConnected, e.querySelectorAll('[data-testid=pb-row]').length]),
        })""", nid or s.node)
        raise AssertionError(f"node {nid or s.node}: the editor never showed {len(expected) - 1} rows: {state}")
    got = sig(stack(s, nid))
    assert got == expected, f"rows widget {got} != {expected}"
    view = [tuple(x) if isinstance(x, list) else x for x in shown(s, nid)]
    assert view == expected, f"editor shows {view}, rows say {expected}"


def add_node(s: Session, node_type: str, pos=(60, 60)) -> int:
    return s.page.evaluate("""([type, pos]) => {
        const node = LiteGraph.createNode(type);
        if (!node) throw new Error('no node type ' + type);
        node.pos = pos;
        app.graph.add(node);
        app.canvas.ds.offset = [90, 30];
        app.canvas.ds.scale = 1;
        app.graph.setDirtyCanvas(true, true);
        return node.id;
    }""", [node_type, list(pos)])


def _css(text: str) -> str:
    """A CSS string literal (attribute selectors with hostile names)."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def pick(s: Session, query: str, name: str, keyboard=False):
    editor(s).locator("[data-testid=pb-add]").click()
    picker = s.page.locator("[data-testid=patchbay-picker]")
    picker.wait_for(state="visible", timeout=15_000)
    picker.locator(f'[data-testid=pb-item][data-name={_css(name)}]').first.wait_for(timeout=15_000)
    search = picker.locator("[data-testid=pb-search]")
    search.fill(query)
    item = picker.locator(f'[data-testid=pb-item][data-name={_css(name)}]')
    item.wait_for(timeout=5_000)
    if keyboard:
        names = picker.locator("[data-testid=pb-item]").evaluate_all("els => els.map(e => e.dataset.name)")
        for _ in range(names.index(name)):
            search.press("ArrowDown")
        return picker, lambda: search.press("Enter")
    return picker, item.click


def no_script_ran(s: Session):
    assert s.page.evaluate("() => window.__pwned ?? null") is None, "untrusted text ran as script"
    ours = s.page.locator(".patchbay-stack img, .patchbay-stack svg, .patchbay-popup svg, .patchbay-info-node img, "
                          ".patchbay-popup .pb-info img")
    assert ours.count() == 0


def _expected_404(s: Session, entry) -> bool:
    """404s the contract defines (coverage before a run, a file without a preview, no presets or notes yet), and the pack's
    routes when this server side has none yet (the editor then falls back to core's list)."""
    kind, text, url = entry
    if "Failed to load resource" not in text or "404" not in text:
        return False
    if "/patchbay/coverage" in url or "/patchbay/preview" in url or "/userdata/lora-patchbay%2F" in url:
        return True
    return not s.srv.patchbay_routes and "/patchbay/" in url


def no_console_errors(s: Session):
    bad = [e for e in s.log if e[0] == "error" and "patchbay" in (e[1] + e[2]).lower() and not _expected_404(s, e)]
    bad += [e for e in s.errors if "patchbay" in e.lower()]
    assert not bad, bad


def command(s: Session, cmd: str):
    s.page.evaluate("async (c) => { await app.extensionManager.command.execute(c); }", cmd)
    s.page.wait_for_timeout(500)


def vue_editor_shown(s: Session) -> bool:
    return s.page.evaluate("() => !LiteGraph.vueNodesMode || !!document.querySelector('[data-testid=patchbay-stack]')")


# ----------------------------------------------------------------- steps


def test_1_add_rows_through_picker(session):
    s = session
    page = s.page
    page.evaluate("() => { delete window.__pwned; app.graph.clear(); }")
    types = page.evaluate("() => Object.keys(LiteGraph.registered_node_types)")
    s.node_type = "PatchbayLoraStackLoader" if "PatchbayLoraStackLoader" in types else "PatchbayLoraStack"
    s.node = add_node(s, s.node_type, (40, 80))
    page.wait_for_timeout(800)
    if s.renderer == "vue" and page.locator(f'.node-error[data-node-id="{s.node}"]').count():
        s.raw_only = True  # the later steps skip; this one names the cause
        assert_no_vue_render_error(page, s.node)
    if s.renderer == "vue" and not page.locator("[data-testid=patchbay-stack]").count():
        # Nodes 2.0 of this frontend cannot show a DOM widget: the raw JSON shows, with one notice.
        fe = page.evaluate("() => __COMFYUI_FRONTEND_VERSION__")
        assert tuple(int(x) for x in fe.split(".")[:2]) < (1, 30), fe
        page.get_by_text("cannot show the LoRA stack editor").first.wait_for(timeout=10_000)
        s.shot("1-raw-json")
        s.raw_only = True
        pytest.skip("Nodes 2.0 of this frontend shows the raw rows JSON (checked: notice shown)")
    editor(s).wait_for(state="visible", timeout=15_000)
    s.shot("1a-empty")
    picker, go = pick(s, "stya", NAMES["style"])  # fuzzy: s-t-y-a
    if s.srv.patchbay_routes:
        listed = {x["name"]: x for x in s.srv.client.get("/patchbay/loras")["loras"]}
        badge = picker.locator(f"[data-testid=pb-item][data-name={_css(NAMES['style'])}] [data-testid=pb-family]")
        assert badge.text_content() == listed[NAMES["style"]]["family"]
        if listed[NAMES["style"]].get("preview"):  # the sibling image shows for the active entry
            page.wait_for_function("() => document.querySelector('[data-testid=pb-preview] img')?.naturalWidth === 16",
                                   timeout=10_000)
        s.shot("1a-picker-badge-preview")
        if s.renderer == "classic":
            picker.screenshot(path=str(SHOTS / f"picker-{s.srv.version}.png"))
    go()
    picker, go = pick(s, "chars b", NAMES["char"], keyboard=True)  # a sub-subfolder, by keyboard
    assert picker.locator("[data-testid=pb-folder]").first.text_content() == "anime/chars/"
    s.shot("1b-picker")
    go()
    picker, go = pick(s, "", NAMES["detail"])
    go()
    assert_same(s, [False, (NAMES["style"], True, 1.0, None), (NAMES["char"], True, 1.0, None),
                    (NAMES["detail"], True, 1.0, None)])
    s.shot("1c-three-rows")
    no_console_errors(s)


def test_2_strengths(session_editor):
    s = session_editor
    page = s.page
    # drag the first row's value 50 px right: +0.5
    box = row(s, 0).locator("[data-testid=pb-strength]").bounding_box()
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(x, y)
    page.mouse.down()
    for dx in (10, 25, 40, 50):
        page.mouse.move(x + dx, y)
    page.mouse.up()
    # arrows: two steps up, one fine step down (Shift)
    second = row(s, 1).locator("[data-testid=pb-strength]")
    second.click()
    second.press("ArrowUp")
    row(s, 1).locator("[data-testid=pb-strength]").press("ArrowUp")
    row(s, 1).locator("[data-testid=pb-strength]").press("Shift+ArrowDown")
    # exact typing, then one step button
    third = row(s, 2).locator("[data-testid=pb-strength]")
    third.click()
    third.fill("0.35")
    third.press("Enter")
    inc = row(s, 2).locator("[data-testid=pb-inc]")
    if inc.is_visible():
        inc.click()
    else:  # a narrow node (Nodes 2.0 starts nodes ~225 px wide) hides the step arrows
        assert s.renderer == "vue"
        row(s, 2).locator("[data-testid=pb-strength]").press("ArrowUp")
    assert_same(s, [False, (NAMES["style"], True, 1.5, None), (NAMES["char"], True, 1.09, None),
                    (NAMES["detail"], True, 0.4, None)])
    # the CLIP column: starts at each row's strength; type one
    editor(s).locator("[data-testid=pb-clip-toggle]").click()
    clip = row(s, 0).locator("[data-testid=pb-strength-clip]")
    clip.click()
    clip.fill("0.6")
    clip.press("Enter")
    # out of range typing clamps to the sliders' range
    third = row(s, 2).locator("[data-testid=pb-strength]")
    third.click()
    third.fill("99")
    third.press("Enter")
    assert stack(s)["rows"][2]["strength"] == 4.0
    third = row(s, 2).locator("[data-testid=pb-strength]")
    third.click()
    third.fill("0.4")
    third.press("Enter")
    assert_same(s, [True, (NAMES["style"], True, 1.5, 0.6), (NAMES["char"], True, 1.09, 1.09),
                    (NAMES["detail"], True, 0.4, 0.4)])
    s.shot("2-strengths-clip")
    if s.renderer == "classic":
        _node_shot(s, SHOTS / f"stack-{s.srv.version}.png")
    # the info panel of a row: the engine's inspect, trigger words copyable
    row(s, 0).locator("[data-testid=pb-info]").click()
    panel = page.locator("[data-testid=patchbay-info-panel]")
    panel.locator("[data-testid=pb-triggers]").wait_for(timeout=15_000)
    assert "patchbay_token" in panel.locator("[data-testid=pb-triggers]").text_content()
    assert "kohya" in panel.text_content()
    panel.locator("[data-testid=pb-trigger]").first.click()
    page.wait_for_function("() => document.querySelector('[data-testid=pb-trigger]')?.classList.contains('pb-copied')",
                           timeout=5_000)
    s.shot("2b-info-panel")
    if s.renderer == "classic":
        panel.screenshot(path=str(SHOTS / f"info-{s.srv.version}.png"))
    # the user's own recommended range (user data): the row's strength 1.5 is outside 0.2..1.2
    outside_js = ("(want) => document.querySelector('[data-testid=pb-row] [data-testid=pb-strength]')"
                  "?.classList.contains('pb-outside') === want")
    for hi, outside in (("2.0", False), ("1.2", True)):
        panel.locator("[data-testid=pb-range-min]").fill("0.2")
        panel.locator("[data-testid=pb-range-max]").fill(hi)
        panel.locator("[data-testid=pb-range-save]").click()
        page.wait_for_function(outside_js, arg=outside, timeout=10_000)
    notes = s.srv.client.get("/userdata/lora-patchbay%2Fnotes.json")
    assert notes["loras"][NAMES["style"]] == {"min": 0.2, "max": 1.2}
    assert "pb-outside" not in (row(s, 1).locator("[data-testid=pb-strength]").get_attribute("class") or "")
    s.shot("2c-range-warning")
    page.keyboard.press("Escape")
    assert not panel.count()


def _node_shot(s: Session, path: Path):
    """A screenshot of the stack node alone (canvas coordinates → page)."""
    box = s.page.evaluate("""(id) => {
        const n = app.graph.getNodeById(id), r = app.canvas.canvas.getBoundingClientRect(), ds = app.canvas.ds;
        const x = r.left + (n.pos[0] + ds.offset[0]) * ds.scale, y = r.top + (n.pos[1] + ds.offset[1]) * ds.scale;
        return {x: Math.max(0, x - 8), y: Math.max(0, y - 40 * ds.scale), width: n.size[0] * ds.scale + 16,
                height: (n.size[1] + 48) * ds.scale};
    }""", s.node)
    s.page.screenshot(path=str(path), clip=box)


def test_3_toggle_reorder_remove(session_editor):
    s = session_editor
    page = s.page
    row(s, 1).locator("[data-testid=pb-on]").click()
    assert [r["on"] for r in stack(s)["rows"]] == [True, False, True]
    toggle_all = editor(s).locator("[data-testid=pb-toggle-all]")
    toggle_all.click()  # mixed → all on
    assert [r["on"] for r in stack(s)["rows"]] == [True, True, True]
    toggle_all.click()  # all on → all off
    assert [r["on"] for r in stack(s)["rows"]] == [False, False, False]
    editor(s).locator("[data-testid=pb-toggle-all]").click()
    # drag the third row's handle above the first
    h = row(s, 2).locator("[data-testid=pb-handle]").bounding_box()
    top = row(s, 0).bounding_box()
    page.mouse.move(h["x"] + h["width"] / 2, h["y"] + h["height"] / 2)
    page.mouse.down()
    page.mouse.move(h["x"] + 2, top["y"] + top["height"] / 2 + 4, steps=4)
    page.mouse.move(h["x"] + 2, top["y"] + 3, steps=2)
    page.mouse.up()
    assert [r["lora"] for r in stack(s)["rows"]] == [NAMES["detail"], NAMES["style"], NAMES["char"]]
    # keyboard: the (now) first row down one place, from its handle
    handle = row(s, 0).locator("[data-testid=pb-handle]")
    handle.focus()
    handle.press("ArrowDown")
    assert [r["lora"] for r in stack(s)["rows"]] == [NAMES["style"], NAMES["detail"], NAMES["char"]]
    # Alt+↑ from a row's strength box moves it too
    row(s, 2).locator("[data-testid=pb-strength]").focus()
    page.keyboard.press("Alt+ArrowUp")
    assert [r["lora"] for r in stack(s)["rows"]] == [NAMES["style"], NAMES["char"], NAMES["detail"]]
    s.shot("3a-reordered")
    row(s, 2).locator("[data-testid=pb-remove]").click()
    assert_same(s, [True, (NAMES["style"], True, 1.5, 0.6), (NAMES["char"], True, 1.09, 1.09)])
    s.shot("3b-removed")


def test_4_presets(session_editor):
    s = session_editor
    page = s.page
    before = sig(stack(s))
    name = f"my stack {s.renderer}"
    editor(s).locator("[data-testid=pb-presets]").click()
    panel = page.locator("[data-testid=patchbay-presets]")
    panel.locator("[data-testid=pb-preset-name]").fill(name)
    panel.locator("[data-testid=pb-preset-save]").click()
    panel.locator(f'[data-testid=pb-preset][data-name="{name}"]').wait_for(timeout=10_000)
    s.shot("4a-preset-saved")
    page.keyboard.press("Escape")
    stored = s.srv.client.get("/userdata/" + "lora-patchbay%2Fpresets.json")
    assert sig(stored["presets"][name]) == before
    while editor(s).locator("[data-testid=pb-remove]").count():
        editor(s).locator("[data-testid=pb-remove]").first.click()
    assert stack(s)["rows"] == []
    editor(s).locator("[data-testid=pb-presets]").click()
    panel.locator(f'[data-testid=pb-preset][data-name="{name}"] [data-testid=pb-preset-load]').click()
    assert_same(s, before)
    # rename and delete a scratch preset
    editor(s).locator("[data-testid=pb-presets]").click()
    panel.locator("[data-testid=pb-preset-name]").fill("scratch")
    panel.locator("[data-testid=pb-preset-save]").click()
    panel.locator('[data-testid=pb-preset][data-name="scratch"] [data-testid=pb-preset-rename]').click()
    page.keyboard.press("Control+A")
    page.keyboard.type("scratch 2")
    page.keyboard.press("Enter")
    panel.locator('[data-testid=pb-preset][data-name="scratch 2"] [data-testid=pb-preset-delete]').click()
    page.wait_for_timeout(500)
    assert "scratch 2" not in s.srv.client.get("/userdata/lora-patchbay%2Fpresets.json")["presets"]
    page.keyboard.press("Escape")
    s.shot("4b-preset-loaded")


def test_5_queue_runs_the_rows_shown(session_editor):
    s = session_editor
    page = s.page
    expected = sig(stack(s))
    ckpt = s.srv.patchbay_ckpt
    # checkpoint → stack (loader, or stack + apply) → lora_text → PreviewAny: the text the server
    # writes is built from the rows it applied, so it says which rows ran with which strengths
    ids = page.evaluate("""([id, ckpt, type]) => {
        const stackNode = app.graph.getNodeById(id);
        const loader = LiteGraph.createNode('CheckpointLoaderSimple');
        loader.pos = [-340, 60];
        app.graph.add(loader);
        loader.widgets.find(w => w.name === 'ckpt_name').value = ckpt;
        const show = LiteGraph.createNode('PreviewAny');
        show.pos = [640, 320];
        app.graph.add(show);
        let applier = stackNode;
        if (type !== 'PatchbayLoraStackLoader') {
            applier = LiteGraph.createNode('PatchbayApplyLoraStack');
            applier.pos = [520, 60];
            app.graph.add(applier);
            stackNode.connect(0, applier, applier.inputs.findIndex(i => i.type === 'LORA_STACK'));
        }
        loader.connect(0, applier, applier.inputs.findIndex(i => i.name === 'model'));
        const ci = applier.inputs.findIndex(i => i.name === 'clip');
        if (ci >= 0) loader.connect(1, applier, ci);
        applier.connect(applier.outputs.findIndex(o => o.name === 'lora_text'), show, 0);
        app.graph.setDirtyCanvas(true, true);
        return [loader.id, show.id, applier === stackNode ? null : applier.id];
    }""", [s.node, ckpt, s.node_type])
    prompt = page.evaluate("async () => (await app.graphToPrompt()).output")
    rows_text = prompt[str(s.node)]["inputs"]["rows"]
    assert isinstance(rows_text, str) and sig(json.loads(rows_text)) == expected
    # queue through the frontend, as the Run button does; the server's history holds what ran
    before = set(s.srv.client.get("/history").keys())
    page.evaluate("() => app.queuePrompt(0, 1)")
    deadline = time.monotonic() + 180
    new = []
    while time.monotonic() < deadline and not new:
        time.sleep(0.5)
        new = [k for k in s.srv.client.get("/history").keys() if k not in before]
    assert new, "the prompt never finished"
    entry = s.srv.client.get(f"/history/{new[0]}")[new[0]]
    errors = [m[1].get("exception_message") for m in entry["status"]["messages"] if m[0] == "execution_error"]
    assert entry["status"]["status_str"] == "success", errors
    ran = entry["prompt"][2][str(s.node)]["inputs"]["rows"]
    assert ran == rows_text
    n_on = sum(1 for r in expected[1:] if r[1])
    tags = " ".join(_tag(r[0], r[2], r[3] if expected[0] else r[2]) for r in expected[1:] if r[1])
    assert entry["outputs"][str(ids[1])]["text"] == [tags]
    summary = entry["outputs"].get(str(s.node), {}).get("patchbay_summary")
    if summary:  # the nodes' summary (STACK_CONTRACT "After a run"): shown under the rows
        assert summary[0]["on"] == n_on and summary[0]["total"] == len(expected) - 1
        editor(s).locator("[data-testid=pb-summary]").wait_for(timeout=15_000)
        assert editor(s).locator("[data-testid=pb-summary]").text_content() == summary[0]["text"]
    s.shot("5-queued")
    page.evaluate("(ids) => { for (const id of ids) if (id !== null) app.graph.remove(app.graph.getNodeById(id)); }", ids)


def _tag(name: str, strength: float, clip: float) -> str:
    """nodes' lora_tag: <lora:stem:strength[:clip]>."""
    stem = name.rsplit("/", 1)[-1].removesuffix(".safetensors")
    return f"<lora:{stem}:{strength:g}>" if clip == strength else f"<lora:{stem}:{strength:g}:{clip:g}>"


def _check_state(s):
    s.page.evaluate("() => (app.extensionManager?.workflow?.activeWorkflow?.changeTracker"
                    " ?? app.workflowManager?.activeWorkflow?.changeTracker)?.checkState?.()")


def _find_stack_node(s) -> int:
    return s.page.evaluate("(t) => app.graph._nodes.find(n => n.type === t)?.id ?? null", s.node_type)


def test_6_survives_everything(session_editor):
    s = session_editor
    page = s.page
    want = sig(stack(s))
    assert_same(s, want)
    fe = tuple(int(x) for x in page.evaluate("() => __COMFYUI_FRONTEND_VERSION__").split(".")[:2])

    # reload: the workflow comes back from the frontend's own persistence
    _check_state(s)
    page.wait_for_timeout(1200)
    page.reload()
    _wait_app(page)
    page.wait_for_timeout(1500)
    s.node = _find_stack_node(s)
    assert s.node is not None, "the stack node did not survive a reload"
    assert_same(s, want)
    s.shot("6a-reload")

    # tab switch: a new blank workflow, then back
    wf = "app.extensionManager.workflow"
    tab = page.evaluate(f"() => {wf}?.activeWorkflow?.filename ?? null")
    tab_el = page.get_by_text(tab, exact=True).first if tab else None
    if tab_el is not None and tab_el.is_visible():
        command(s, "Comfy.NewBlankWorkflow")
        assert _find_stack_node(s) is None
        tab_el.click()  # back to the first tab, as a user does
        page.wait_for_timeout(1200)
        s.node = _find_stack_node(s)
        assert_same(s, want)
        s.shot("6b-tab-switch")

    # undo / redo of an editor edit
    row(s, 0).locator("[data-testid=pb-on]").click()
    assert stack(s)["rows"][0]["on"] is False
    page.wait_for_timeout(300)
    command(s, "Comfy.Undo")
    s.node = _find_stack_node(s)
    assert_same(s, want)
    command(s, "Comfy.Redo")
    s.node = _find_stack_node(s)
    assert stack(s)["rows"][0]["on"] is False
    command(s, "Comfy.Undo")
    s.node = _find_stack_node(s)
    assert_same(s, want)
    s.shot("6c-undo")

    # copy / paste: the copy carries the same stack
    pasted = page.evaluate("""(id) => {
        const n = app.graph.getNodeById(id);
        app.canvas.selectNodes([n]);
        app.canvas.copyToClipboard();
        const before = new Set(app.graph._nodes.map(n => n.id));
        app.canvas.graph_mouse = [n.pos[0] + 40, n.pos[1] + 420];
        app.canvas.pasteFromClipboard();
        return app.graph._nodes.map(n => n.id).find(id => !before.has(id)) ?? null;
    }""", s.node)
    assert pasted is not None
    assert_same(s, want, pasted)
    s.shot("6d-paste")
    page.evaluate("(id) => app.graph.remove(app.graph.getNodeById(id))", pasted)

    # subgraph round trip (frontends with subgraphs): the inner node still carries the rows
    if page.evaluate("() => !!app.extensionManager.command.commands?.find?.(c => c.id === 'Comfy.Graph.ConvertToSubgraph')"):
        page.evaluate("(id) => { app.canvas.deselectAll?.(); app.canvas.selectNodes([app.graph.getNodeById(id)]); }", s.node)
        command(s, "Comfy.Graph.ConvertToSubgraph")
        prompt = page.evaluate("async () => (await app.graphToPrompt()).output")
        inner = [k for k, v in prompt.items() if v["class_type"] == s.node_type]
        assert len(inner) == 1 and ":" in inner[0], prompt.keys()
        assert sig(json.loads(prompt[inner[0]]["inputs"]["rows"])) == want
        sub = page.evaluate("() => app.graph._nodes.find(n => n.isSubgraphNode?.())?.id")
        page.evaluate("(id) => { app.canvas.deselectAll?.(); app.canvas.selectNodes([app.graph.getNodeById(id)]); }", sub)
        command(s, "Comfy.Graph.UnpackSubgraph")
        s.node = _find_stack_node(s)
        assert s.node is not None
        assert_same(s, want)
        s.shot("6e-subgraph")

    # API JSON export → import
    out = page.evaluate("async () => (await app.graphToPrompt()).output")
    page.evaluate("async (out) => { app.graph.clear(); await app.loadApiJson(out, 'patchbay-api.json'); }", out)
    page.wait_for_timeout(1000)
    s.node = _find_stack_node(s)
    assert_same(s, want)
    s.shot("6f-api-json")

    # renderer switch mid-session (1.38: no reload needed) and back
    if fe >= (1, 30):
        vue = s.renderer == "vue"
        page.evaluate("async (v) => { await app.extensionManager.setting.set('Comfy.VueNodes.Enabled', v); }", not vue)
        page.wait_for_timeout(1500)
        s.node = _find_stack_node(s)
        assert vue or not page.locator(f'.node-error[data-node-id="{s.node}"]').count(), VUE_RENDER_ERROR
        assert_same(s, want)
        s.shot("6g-renderer-switched")
        page.evaluate("async (v) => { await app.extensionManager.setting.set('Comfy.VueNodes.Enabled', v); }", vue)
        page.wait_for_timeout(1500)
        s.node = _find_stack_node(s)
        assert_same(s, want)
    no_console_errors(s)


def test_7_todays_workflow_loads_and_queues(session_editor):
    s = session_editor
    page = s.page
    today = ('[\n  {"on": true, "lora": "%s", "strength": 0.8, "strength_clip": 1.0},\n'
             '  {"on": false, "lora": "%s", "strength": 1.0, "strength_clip": 1.0}\n]') % (NAMES["style"], NAMES["detail"])
    workflow = {
        "last_node_id": 3, "last_link_id": 2, "version": 0.4, "links": [[1, 1, 0, 2, 0, "LORA_STACK"]],
        "nodes": [
            {"id": 1, "type": "PatchbayLoraStack", "pos": [60, 60], "size": [400, 200], "flags": {}, "order": 0,
             "mode": 0, "inputs": [], "outputs": [{"name": "stack", "type": "LORA_STACK", "links": [1]}],
             "properties": {}, "widgets_values": [today]},
            {"id": 2, "type": "PatchbayLoraStack", "pos": [520, 60], "size": [400, 200], "flags": {}, "order": 1,
             "mode": 0, "inputs": [{"name": "stack", "type": "LORA_STACK", "link": 1}],
             "outputs": [{"name": "stack", "type": "LORA_STACK", "links": []}],
             "properties": {}, "widgets_values": ["[]"]},
        ],
        "groups": [], "config": {}, "extra": {},
    }
    page.evaluate("async (wf) => { await app.loadGraphData(wf); }", workflow)
    page.wait_for_timeout(1000)
    assert_same(s, [True, (NAMES["style"], True, 0.8, 1.0), (NAMES["detail"], False, 1.0, 1.0)], 1)
    # loading is not an edit: the saved text stays byte for byte
    saved = page.evaluate("() => app.graph.serialize().nodes.find(n => n.id === 1).widgets_values")
    assert saved[0] == today and all(v is None or isinstance(v, str) for v in saved), saved
    prompt = page.evaluate("async () => (await app.graphToPrompt()).output")
    assert prompt["1"]["inputs"]["rows"] == today
    s.shot("7-todays-workflow")
    # the server accepts it as the browser sends it (both stack nodes run when an output needs them)
    ckpt = s.srv.patchbay_ckpt
    api = dict(prompt)
    api["10"] = {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}}
    api["11"] = {"class_type": "PatchbayApplyLoraStack",
                 "inputs": {**_apply_defaults(s), "model": ["10", 0], "clip": ["10", 1], "stack": ["2", 0]}}
    api["12"] = {"class_type": "PreviewAny", "inputs": {"source": ["11", 2]}}
    res = s.srv.client.queue(api)
    assert res.ok
    assert res.outputs["12"]["text"] == ["<lora:style_a:0.8:1>"]

    # a row whose file was renamed since: marked missing with its name and hash, resolved by hash
    sha = s.srv.patchbay_plain_sha
    gone = '[{"on": true, "lora": "old/renamed.safetensors", "strength": 0.7, "strength_clip": 0.7, "hash": "%s"}]' % sha
    nid = add_node(s, "PatchbayLoraStack", (520, 420))
    page.evaluate("([id, t]) => { const w = app.graph.getNodeById(id).widgets.find(w => w.name === 'rows');"
                  " w.value = t; w.callback?.(t); }", [nid, gone])
    fix = editor(s, nid).locator("[data-testid=pb-resolve]")
    fix.wait_for(timeout=15_000)
    assert row(s, 0, nid).locator(".pb-name-text").text_content() == "old/renamed.safetensors"
    assert sha[:12] in fix.get_attribute("title")
    s.shot("7b-missing")
    if s.srv.patchbay_routes:
        fix.click()
        page.wait_for_function("(id) => !app.graph.getNodeById(id).widgets.find(w => w.name === 'rows')"
                               ".value.includes('old/renamed')", arg=nid, timeout=15_000)
        (resolved,) = stack(s, nid)["rows"]
        assert resolved["lora"] in set(NAMES.values()) | {HOSTILE_FILE, f"{HOSTILE_FOLDER}/x.safetensors"}
        assert resolved["hash"] == sha and resolved["strength"] == 0.7
        assert editor(s, nid).locator("[data-testid=pb-resolve]").count() == 0
        s.shot("7c-resolved")


def _apply_defaults(s) -> dict:
    info = s.srv.client.object_info("PatchbayApplyLoraStack")
    out = {}
    for name, spec in info["input"]["required"].items():
        if isinstance(spec[0], list):
            out[name] = spec[0][0]
        elif isinstance(spec[1], dict) and "default" in spec[1]:
            out[name] = spec[1]["default"]
    return out


def test_8_untrusted_text_shows_as_text(session_editor):
    s = session_editor
    page = s.page
    page.evaluate("() => { delete window.__pwned; app.graph.clear(); }")
    s.node = add_node(s, s.node_type, (80, 60))
    editor(s).wait_for(state="visible", timeout=15_000)
    for query, name in (("onerror", HOSTILE_FILE), ("svg", f"{HOSTILE_FOLDER}/x.safetensors"),
                        ("hostile_meta", "zz_meta/hostile_meta.safetensors")):
        picker, go = pick(s, query, name)
        page.wait_for_timeout(300)
        texts = picker.locator("[data-testid=pb-item] .pb-item-name, [data-testid=pb-folder]").all_text_contents()
        assert any(t in name for t in texts if len(t) > 3), texts
        if query == "svg":
            assert f"{HOSTILE_FOLDER}/" in texts
            s.shot("8a-picker-hostile")
        no_script_ran(s)
        go()
    names = editor(s).locator("[data-testid=pb-row] .pb-name-text").all_text_contents()
    assert names == [HOSTILE_FILE, f"{HOSTILE_FOLDER}/x.safetensors", "zz_meta/hostile_meta.safetensors"]
    no_script_ran(s)
    s.shot("8b-rows-hostile")
    # the info panel of the hostile-metadata file
    row(s, 2).locator("[data-testid=pb-info]").click()
    panel = page.locator("[data-testid=patchbay-info-panel]")
    panel.wait_for(timeout=10_000)
    page.wait_for_function("() => !document.querySelector('[data-testid=patchbay-info-panel]')"
                           ".textContent.includes('reading the file header')", timeout=15_000)
    page.wait_for_timeout(800)
    text = panel.text_content()
    if "inspect failed" not in text and "HTTP 404" not in text:
        assert HOSTILE_META in text, text
        triggers = panel.locator("[data-testid=pb-trigger]").all_text_contents()
        assert any(HOSTILE_META in t for t in triggers), triggers
    no_script_ran(s)
    s.shot("8c-info-hostile")
    page.keyboard.press("Escape")
    # LoRA Info's report on the node
    info = add_node(s, "PatchbayLoraInfo", (620, 60))
    page.evaluate("([id, name]) => { app.graph.getNodeById(id).widgets.find(w => w.name === 'lora_name').value = name; }",
                  [info, "zz_meta/hostile_meta.safetensors"])
    page.evaluate("() => { for (const n of [...app.graph._nodes]) if (n.type !== 'PatchbayLoraInfo') app.graph.remove(n); }")
    page.evaluate("() => app.queuePrompt(0, 1)")
    report = page.locator("[data-testid=patchbay-info-node] [data-testid=pb-report]")
    report.wait_for(timeout=60_000)
    page.wait_for_timeout(1500)
    assert HOSTILE_META in page.locator("[data-testid=patchbay-info-node]").first.text_content()
    no_script_ran(s)
    s.shot("8d-lora-info-hostile")
    no_console_errors(s)


def test_9_thirty_rows_stay_light(session_editor):
    s = session_editor
    page = s.page
    page.evaluate("() => app.graph.clear()")
    s.node = add_node(s, s.node_type, (40, 80))
    names = list(NAMES.values())
    rows = [{"on": i % 3 != 0, "lora": names[i % len(names)], "strength": round(0.1 * (i % 10), 1),
             "strength_clip": 1.0} for i in range(30)]
    page.evaluate("([id, t]) => { const w = app.graph.getNodeById(id).widgets.find(w => w.name === 'rows');"
                  " w.value = t; w.callback?.(t); }", [s.node, json.dumps(rows)])
    want = [True] + [(r["lora"], r["on"], r["strength"], 1.0) for r in rows]
    assert_same(s, want)
    # plain DOM, a handful of elements per row; one edit re-renders the same 30 rows
    n_elements = page.evaluate("(id) => document.querySelector(`[data-testid=patchbay-stack][data-node=\"${id}\"]`)"
                               ".querySelectorAll('*').length", s.node)
    assert n_elements < 30 * 25, n_elements
    row(s, 29).locator("[data-testid=pb-on]").click()
    want[30] = (want[30][0], not want[30][1], want[30][2], want[30][3])
    assert_same(s, want)
    s.shot("9-thirty-rows")
    no_console_errors(s)
