// @ts-check
// The row editor: a plain DOM view of the stack value held by the `rows`
// STRING widget.  It never holds the truth: every edit writes the widget text
// (through `setText`) and every render starts from that text, so undo,
// copy/paste, API JSON and subgraphs carry the stack without knowing about us.
import { el } from "./dom.js";
import { openInfoPanel, recommendedRange } from "./info_panel.js";
import { loadNotes } from "./notes.js";
import { openPicker } from "./picker.js";
import { openPresets } from "./presets.js";
import * as R from "./rows.js";
import { inspectLora, listLoras, resolveLora } from "./server.js";

/** @typedef {import("./rows.js").StackValue} StackValue */
/** @typedef {import("./rows.js").StackRow} StackRow */
/** @typedef {import("./server.js").LoraFile} LoraFile */

/**
 * @typedef {Object} EditorHost
 * @property {any} api                  the frontend's api object
 * @property {() => string} getText     the `rows` widget's value
 * @property {(text: string) => void} setText   write the widget (value + callback + change tracker)
 * @property {(msg: string, severity?: string) => void} notify
 * @property {() => void} [onLayout]    the editor's preferred height changed
 */

const ROW_H = 30;
const VISIBLE_ROWS = 12;  // longer stacks scroll inside the list (keep in step with .pb-rows max-height)
const DRAG_PER_PX = 0.01;
const FINE_DRAG_PER_PX = 0.002;

// Shared by all editors of the page: the file list (refreshed when a picker opens) and per-file inspect results.
/** @type {{at: number, files: Promise<LoraFile[]>}|null} */
let fileCache = null;
/** @type {Map<string, Promise<any>>} */
const inspectCache = new Map();

/** @param {any} api @param {boolean} [fresh] */
function files(api, fresh = false) {
  if (!fileCache || fresh || Date.now() - fileCache.at > 60_000) {
    const p = listLoras(api);
    fileCache = { at: Date.now(), files: p };
    p.catch(() => { if (fileCache?.files === p) fileCache = null; });
  }
  return fileCache.files;
}

/** @param {any} api @param {string} name */
function inspectCached(api, name) {
  let p = inspectCache.get(name);
  if (!p) {
    p = inspectLora(api, name, false).then((r) => (r.ok ? r.body : null), () => null);
    inspectCache.set(name, p);
  }
  return p;
}

/** 1 → "1.00", 0.125 → "0.125" */
export function formatStrength(/** @type {number} */ x) {
  const s = x.toFixed(2);
  return Number(s) === x ? s : String(Math.round(x * 1000) / 1000);
}

/** "dir/sub/x.safetensors" as folder + base name, so a narrow node can drop the folder (CSS). */
function nameText(/** @type {string} */ lora) {
  if (!lora) return el("span", { cls: "pb-name-text", text: "(no LoRA)" });
  const cut = lora.lastIndexOf("/") + 1;
  return el("span", { cls: "pb-name-text" }, [
    cut ? el("span", { cls: "pb-name-dir", text: lora.slice(0, cut) }) : null,
    el("span", { cls: "pb-name-base", text: lora.slice(cut) })]);
}

export class StackEditor {
  /** @param {EditorHost} host */
  constructor(host) {
    this.host = host;
    /** @type {string|null} */
    this.text = null;
    /** @type {StackValue|null} */
    this.value = null;
    /** @type {string|null} */
    this.error = null;
    /** @type {string|null} */
    this.summary = null;
    /** @type {string|null} */
    this.modelFamily = null;
    /** @type {Set<string>|null} names installed, null until listed */
    this.installed = null;
    /** @type {Map<string, {min: number, max: number}|null>} */
    this.ranges = new Map();
    this.root = el("div", { cls: "patchbay-stack", attrs: { "data-testid": "patchbay-stack" } });
    // The editor is a form: pointer and key events stay here (no node drag, no canvas shortcuts).
    for (const ev of ["pointerdown", "keydown", "keyup", "dblclick", "contextmenu"]) {
      this.root.addEventListener(ev, (e) => e.stopPropagation());
    }
    /** @type {Record<string, {min: number, max: number}>} the user's own ranges (win over metadata) */
    this.notes = {};
    loadNotes(host.api).then((n) => { this.notes = n; this.render(); }, () => {});
    this.refreshInstalled();
  }

  /**
   * Render into another (still mounted) root from now on: see stack_node.js adoptOrphans.
   * The old root keeps its listeners (they only stop event propagation).
   * @param {HTMLElement} root
   */
  adopt(root) {
    this.root = root;
    this.render();
  }

  /** @returns {StackValue} the current value, or an empty stack when the text is not one */
  current() {
    return this.value ?? R.emptyStack();
  }

  /** Re-read the widget text; renders only when it changed (cheap enough to call often). */
  sync(force = false) {
    const t = this.host.getText();
    if (!force && t === this.text) return false;
    this.text = t;
    const p = R.parseStack(t);
    this.value = p.value;
    this.error = p.error ?? null;
    this.render();
    return true;
  }

  /** @param {StackValue} v */
  commit(v) {
    const text = R.serializeStack(v);
    this.value = v;
    this.text = text;
    this.error = null;
    this.host.setText(text);
    this.render();
  }

  refreshInstalled(fresh = false) {
    files(this.host.api, fresh).then((f) => {
      this.installed = new Set(f.map((x) => x.name));
      this.render();
    }, () => {});
  }

  /** @param {string|null} text */
  setSummary(text) {
    this.summary = text;
    this.render();
  }

  preferredHeight() {
    const n = this.value?.rows.length ?? 0;
    return 40 + (this.value?.options.separate_clip && n ? 18 : 0) + Math.min(VISIBLE_ROWS, Math.max(1, n)) * ROW_H
      + (this.summary ? 22 : 0) + (this.error ? 40 : 0) + 8;
  }

  preferredWidth() {
    return this.value?.options.separate_clip ? 520 : 420;
  }

  // ---------------------------------------------------------------- render

  render() {
    const focus = /** @type {HTMLElement|null} */ (this.root.contains(document.activeElement) ? document.activeElement : null);
    const focusKey = focus?.dataset?.focusKey ?? null;
    const v = this.value;
    const parts = [this.toolbar(v)];
    if (this.error) {
      parts.push(el("div", { cls: "pb-error", text: this.error + ". Fix the JSON in the rows text, or clear the stack.",
                             attrs: { "data-testid": "pb-error" } }));
    }
    const list = el("div", { cls: "pb-rows", attrs: { role: "list", "data-testid": "pb-rows" } });
    if (v && v.options.separate_clip && v.rows.length) {
      list.append(el("div", { cls: "pb-colhead" }, [el("span", { cls: "pb-colhead-name", text: "LoRA" }),
        el("span", { cls: "pb-colhead-s", text: "model" }), el("span", { cls: "pb-colhead-s", text: "clip" })]));
    }
    if (v && !v.rows.length) list.append(el("div", { cls: "pb-empty", text: "No LoRAs yet: + Add LoRA" }));
    if (v) v.rows.forEach((row, i) => list.append(this.rowView(v, row, i)));
    parts.push(list);
    if (this.summary) parts.push(el("div", { cls: "pb-summary", text: this.summary, title: this.summary,
                                             attrs: { "data-testid": "pb-summary" } }));
    this.root.replaceChildren(...parts);
    if (focusKey) {
      const again = /** @type {HTMLElement|null} */ (this.root.querySelector(`[data-focus-key="${CSS.escape(focusKey)}"]`));
      again?.focus();
    }
    this.host.onLayout?.();
  }

  /** @param {StackValue|null} v */
  toolbar(v) {
    const rows = v?.rows ?? [];
    const on = rows.filter((r) => r.on).length;
    const all = /** @type {HTMLInputElement} */ (el("input", {
      cls: "pb-toggle-all", title: "Toggle all",
      attrs: { type: "checkbox", "data-testid": "pb-toggle-all", "aria-label": "Toggle all", "data-focus-key": "all" } }));
    all.checked = rows.length > 0 && on === rows.length;
    all.indeterminate = on > 0 && on < rows.length;
    all.disabled = !v || !rows.length;
    all.addEventListener("change", () => this.commit(R.toggleAll(this.current())));
    const clip = el("button", {
      cls: "pb-btn pb-clip-toggle" + (v?.options.separate_clip ? " pb-pressed" : ""), text: "CLIP",
      title: "Separate CLIP strength per row",
      attrs: { type: "button", "data-testid": "pb-clip-toggle", "aria-pressed": String(!!v?.options.separate_clip),
               "data-focus-key": "clip" } });
    clip.addEventListener("click", () => this.commit(R.setSeparateClip(this.current(), !this.current().options.separate_clip)));
    const presets = el("button", { cls: "pb-btn", text: "Presets", title: "Save, load, rename, delete whole stacks",
                                   attrs: { type: "button", "data-testid": "pb-presets" } });
    presets.addEventListener("click", () => openPresets({
      anchor: presets, api: this.host.api, current: () => this.current(), notify: this.host.notify,
      onLoad: (p) => this.commit({ ...p, rows: p.rows.map((r) => ({ ...r, id: R.newId() })) }),
    }));
    const add = el("button", { cls: "pb-btn pb-add", text: "+ Add LoRA",
                               attrs: { type: "button", "data-testid": "pb-add", "data-focus-key": "add" } });
    add.addEventListener("click", () => this.pick(add, null));
    for (const b of [clip, presets, add]) /** @type {HTMLButtonElement} */ (b).disabled = !v;
    return el("div", { cls: "pb-toolbar" }, [all, el("span", { cls: "pb-count", text: v ? R.countText(v) : "—",
                                                               attrs: { "data-testid": "pb-count" } }),
                                             el("span", { cls: "pb-spacer" }), clip, presets, add]);
  }

  /** Open the picker to add a row (id null) or to point a row at another file. @param {HTMLElement} anchor @param {string|null} id */
  pick(anchor, id) {
    const f = files(this.host.api, true);
    f.then((list) => { this.installed = new Set(list.map((x) => x.name)); }, () => {});
    openPicker({
      anchor, api: this.host.api, files: f, modelFamily: this.modelFamily,
      title: id ? "Replace LoRA" : "Add LoRA",
      onPick: (file) => {
        const v = this.current();
        this.commit(id ? R.setLora(v, id, file.name) : R.addRow(v, file.name));
        this.root.querySelector(`[data-focus-key="add"]`)?.focus?.();
      },
    });
  }

  /** @param {StackValue} v @param {StackRow} row @param {number} index */
  rowView(v, row, index) {
    const missing = !!this.installed && !!row.lora && !this.installed.has(R.normName(row.lora));
    const node = el("div", {
      cls: "pb-row" + (row.on ? "" : " pb-off") + (missing ? " pb-missing" : ""),
      attrs: { role: "listitem", "data-testid": "pb-row", "data-row-id": row.id, "data-lora": row.lora } });
    const handle = el("button", {
      cls: "pb-handle", text: "⠿", title: "Drag to reorder; ↑/↓ here (or Alt+↑/↓ in the row) moves it",
      attrs: { type: "button", "data-testid": "pb-handle", "aria-label": `Move row ${index + 1}`,
               "data-focus-key": `${row.id}:handle` } });
    handle.addEventListener("pointerdown", (e) => this.dragRow(e, node, row.id));
    handle.addEventListener("keydown", (e) => {
      if (e.key === "ArrowUp" || e.key === "ArrowDown") {
        e.preventDefault();
        this.commit(R.moveRow(this.current(), row.id, e.key === "ArrowUp" ? -1 : 1));
      }
    });
    node.addEventListener("keydown", (e) => {
      if (e.altKey && (e.key === "ArrowUp" || e.key === "ArrowDown")) {
        e.preventDefault();
        this.commit(R.moveRow(this.current(), row.id, e.key === "ArrowUp" ? -1 : 1));
      }
    });
    const on = /** @type {HTMLInputElement} */ (el("input", {
      cls: "pb-on", title: row.on ? "On (click to switch off)" : "Off (click to switch on)",
      attrs: { type: "checkbox", "data-testid": "pb-on", "aria-label": "On", "data-focus-key": `${row.id}:on` } }));
    on.checked = row.on;
    on.addEventListener("change", () => this.commit(R.setOn(this.current(), row.id, on.checked)));
    const name = el("button", {
      cls: "pb-name", title: (missing ? "Not installed: " : "") + row.lora + " (click to pick another)",
      attrs: { type: "button", "data-testid": "pb-name", "data-focus-key": `${row.id}:name` } },
      [nameText(row.lora)]);
    name.addEventListener("click", () => this.pick(name, row.id));
    const parts = [handle, on, name];
    if (missing) {
      const fix = el("button", {
        cls: "pb-btn pb-resolve", text: "missing", title: `Not installed: ${row.lora}` + (row.hash ? ` (sha256 ${row.hash.slice(0, 12)}…)` : "")
          + ". Click to find it by hash, then by name.",
        attrs: { type: "button", "data-testid": "pb-resolve" } });
      fix.addEventListener("click", () => this.resolve(fix, row));
      parts.push(fix);
    }
    parts.push(this.strengthView(row, "strength"));
    if (v.options.separate_clip) parts.push(this.strengthView(row, "strength_clip"));
    const info = el("button", { cls: "pb-icon pb-info-btn", text: "i", title: "Info: file, trigger words, coverage",
                                attrs: { type: "button", "data-testid": "pb-info", "aria-label": "Info" } });
    info.addEventListener("click", () => openInfoPanel({
      anchor: info, api: this.host.api, name: row.lora,
      onInspect: (i) => { this.ranges.set(row.lora, recommendedRange(i)); this.render(); },
      onRange: (r) => {
        const { [row.lora]: _old, ...rest } = this.notes;
        this.notes = r ? { ...rest, [row.lora]: r } : rest;
        this.render();
      },
    }));
    const remove = el("button", { cls: "pb-icon pb-remove", text: "×", title: "Remove row",
                                  attrs: { type: "button", "data-testid": "pb-remove", "aria-label": "Remove" } });
    remove.addEventListener("click", () => this.commit(R.removeRow(this.current(), row.id)));
    parts.push(info, remove);
    node.append(...parts);
    // The recommended range from the file's metadata (installed files only: a missing one has none).
    if (row.lora && this.installed?.has(R.normName(row.lora)) && !this.ranges.has(row.lora)) {
      this.ranges.set(row.lora, null);
      inspectCached(this.host.api, row.lora).then((i) => {
        const r = recommendedRange(i);
        if (r) { this.ranges.set(row.lora, r); this.render(); }
      });
    }
    return node;
  }

  /** @param {HTMLElement} anchor @param {StackRow} row */
  async resolve(anchor, row) {
    const r = await resolveLora(this.host.api, row.lora, row.hash).catch(() => ({ name: null, by: null }));
    if (r.name) {
      this.commit(R.setLora(this.current(), row.id, r.name, row.hash));
      this.host.notify(`Found ${row.lora} as ${r.name} (by ${r.by}).`, "info");
    } else {
      this.host.notify(`No installed file has this LoRA's hash or name (${row.lora}); pick one.`);
      this.pick(anchor, row.id);
    }
  }

  /** @param {StackRow} row @param {"strength"|"strength_clip"} field */
  strengthView(row, field) {
    const value = field === "strength" ? row.strength : (row.strength_clip ?? row.strength);
    const range = this.notes[row.lora] ?? this.ranges.get(row.lora) ?? null;
    const outside = !!range && (value < range.min || value > range.max);
    const label = field === "strength" ? "strength" : "CLIP strength";
    const input = /** @type {HTMLInputElement} */ (el("input", {
      cls: "pb-num" + (outside ? " pb-outside" : ""),
      title: `${label}: drag, ↑/↓ (Shift: fine), or type` + (range ? ` · recommended ${range.min} to ${range.max}` : ""),
      attrs: { type: "text", inputmode: "decimal", "data-testid": field === "strength" ? "pb-strength" : "pb-strength-clip",
               "aria-label": label, "data-focus-key": `${row.id}:${field}` } }));
    input.value = formatStrength(value);
    /** @param {number} x */
    const set = (x) => this.commit(R.setStrength(this.current(), row.id, field, x));
    /** @param {number} sign @param {boolean} fine */
    const step = (sign, fine) => set(Math.round((value + sign * (fine ? R.FINE_STEP : R.STEP)) * 1000) / 1000);
    const dec = el("button", { cls: "pb-step", text: "◀", title: "Step down (Shift: fine)",
                               attrs: { type: "button", "data-testid": "pb-dec", "aria-label": `${label} down` } });
    const inc = el("button", { cls: "pb-step", text: "▶", title: "Step up (Shift: fine)",
                               attrs: { type: "button", "data-testid": "pb-inc", "aria-label": `${label} up` } });
    dec.addEventListener("click", (e) => step(-1, e.shiftKey));
    inc.addEventListener("click", (e) => step(1, e.shiftKey));
    input.addEventListener("keydown", (e) => {
      if ((e.key === "ArrowUp" || e.key === "ArrowDown") && !e.altKey) {  // Alt+↑/↓ moves the row
        e.preventDefault();
        step(e.key === "ArrowUp" ? 1 : -1, e.shiftKey);
      } else if (e.key === "Enter") {
        e.preventDefault();
        typed();
      } else if (e.key === "Escape") {
        input.value = formatStrength(value);
        input.blur();
      }
    });
    const typed = () => {
      const x = Number(input.value.replace(",", "."));
      if (input.value.trim() === "" || !Number.isFinite(x)) { input.value = formatStrength(value); return; }
      if (R.clampStrength(x) !== value) set(x);
    };
    input.addEventListener("change", typed);
    // Drag horizontally on the value to scrub it; a click without moving starts typing.
    input.addEventListener("pointerdown", (e) => {
      if (document.activeElement === input || e.button !== 0) return;
      e.preventDefault();
      input.setPointerCapture?.(e.pointerId);
      const x0 = e.clientX;
      let dragging = false, now = value;
      /** @param {PointerEvent} m */
      const move = (m) => {
        const dx = m.clientX - x0;
        if (!dragging && Math.abs(dx) < 3) return;
        dragging = true;
        now = R.clampStrength(value + dx * (m.shiftKey ? FINE_DRAG_PER_PX : DRAG_PER_PX)) ?? value;
        input.value = formatStrength(now);
      };
      const up = () => {
        input.removeEventListener("pointermove", move);
        input.removeEventListener("pointerup", up);
        input.removeEventListener("pointercancel", up);
        if (dragging) { if (now !== value) set(now); }
        else { input.focus(); input.select(); }
      };
      input.addEventListener("pointermove", move);
      input.addEventListener("pointerup", up);
      input.addEventListener("pointercancel", up);
    });
    return el("span", { cls: "pb-strength", attrs: { "data-field": field } }, [dec, input, inc]);
  }

  /** Reorder by dragging the handle: the row follows the pointer's row slot. @param {PointerEvent} e @param {HTMLElement} node @param {string} id */
  dragRow(e, node, id) {
    if (e.button !== 0) return;
    e.preventDefault();
    const list = /** @type {HTMLElement} */ (node.parentElement);
    const rows = /** @type {HTMLElement[]} */ ([...list.querySelectorAll(".pb-row")]);
    const from = rows.indexOf(node);
    let to = from;
    node.classList.add("pb-dragging");
    /** @param {number} y */
    const slot = (y) => {
      let i = 0;
      for (const r of rows) { const b = r.getBoundingClientRect(); if (y > b.top + b.height / 2) i++; }
      return i;  // number of rows above the pointer
    };
    /** @param {PointerEvent} m */
    const move = (m) => {
      const s = slot(m.clientY);
      to = s > from ? s - 1 : s;
      rows.forEach((r, i) => r.classList.toggle("pb-drop-before", i === s && i !== from && i !== from + 1));
      list.classList.toggle("pb-drop-end", s === rows.length && from !== rows.length - 1);
    };
    const up = () => {
      window.removeEventListener("pointermove", move, true);
      window.removeEventListener("pointerup", up, true);
      node.classList.remove("pb-dragging");
      if (to !== from) this.commit(R.moveRowTo(this.current(), id, to));
      else this.render();
    };
    window.addEventListener("pointermove", move, true);
    window.addEventListener("pointerup", up, true);
  }
}

