// @ts-check
// The info panel: the engine's inspect of a file and the coverage of the last
// run, as text.  Shared by the stack rows (info button) and the LoRA Info
// node (its report).  Every value comes from the file or the server and is
// untrusted: it is written with textContent only.
import { copyText, el, openPopup } from "./dom.js";
import { asRange, loadNotes, saveRange } from "./notes.js";
import { coverageOf, inspectLora } from "./server.js";

/** @param {any} v */
function show(v) {
  if (v === null || v === undefined || v === "") return "—";
  if (Array.isArray(v)) return v.length ? v.map(show).join(", ") : "—";
  if (typeof v === "object") return Object.entries(v).map(([k, x]) => `${k}: ${show(x)}`).join(", ");
  return String(v);
}

/** @param {string} label @param {any} value */
function field(label, value) {
  return el("div", { cls: "pb-field" }, [el("span", { cls: "pb-label", text: label }),
                                          el("span", { cls: "pb-value-text", text: show(value) })]);
}

/**
 * Trigger words as [word, count|null], from a list of strings, [word, n] pairs or {word, count} objects.
 * @param {any} words
 * @returns {[string, number|null][]}
 */
export function triggerWords(words) {
  if (!Array.isArray(words)) return [];
  return words.map((w) => {
    if (typeof w === "string") return [w, null];
    if (Array.isArray(w)) return [String(w[0]), Number.isFinite(Number(w[1])) ? Number(w[1]) : null];
    if (w && typeof w === "object") return [String(w.word ?? w.name ?? w.text ?? ""), Number.isFinite(Number(w.count)) ? Number(w.count) : null];
    return [String(w), null];
  }).filter(([w]) => w);
}

/**
 * A recommended strength range from the file's metadata, when it gives one.
 * @param {any} inspect
 * @returns {{min: number, max: number}|null}
 */
export function recommendedRange(inspect) {
  const m = inspect?.metadata ?? {};
  const r = m.recommended_strength ?? m.strength_range ?? inspect?.recommended_strength;
  if (r && typeof r === "object") {
    const min = Number(r.min), max = Number(r.max);
    if (Number.isFinite(min) && Number.isFinite(max) && min <= max) return { min, max };
  }
  return null;
}

/**
 * Fill `box` with the panel content.
 * @param {HTMLElement} box
 * @param {{name: string, inspect?: any, inspectError?: string|null, coverage?: any, report?: string|null}} data
 */
export function renderInfo(box, data) {
  box.replaceChildren();
  box.append(el("div", { cls: "pb-info-name", text: data.name, attrs: { "data-testid": "pb-info-name" } }));
  if (data.inspectError) box.append(el("div", { cls: "pb-error", text: data.inspectError }));
  const i = data.inspect;
  if (i) {
    const md = i.metadata ?? {};
    const file = el("div", { cls: "pb-section" }, [
      el("div", { cls: "pb-section-title", text: "File" }),
      field("title", md.title), field("format", i.format), field("kinds", i.kinds),
      field("modules", i.modules), field("ranks", i.ranks), field("alphas", i.alphas),
      field("trained base", md.trained_base), field("network", md.network_module ?? md.algo),
    ]);
    if (md.description) file.append(field("description", md.description));
    if (i.hash) file.append(field("sha256", i.hash.sha256), field("autov2", i.hash.autov2));
    for (const n of [...(i.notes ?? []), ...(md.warnings ?? [])]) file.append(el("div", { cls: "pb-note", text: String(n) }));
    box.append(file);
    const words = triggerWords(md.trigger_words);
    const trig = el("div", { cls: "pb-section", attrs: { "data-testid": "pb-triggers" } },
                    [el("div", { cls: "pb-section-title", text: "Trigger words" })]);
    if (!words.length) trig.append(el("div", { cls: "pb-note", text: "none in the file" }));
    const chips = el("div", { cls: "pb-chips" });
    trig.append(chips);
    for (const [w, n] of words) {
      const b = el("button", { cls: "pb-chip", text: n === null ? w : `${w} (${n})`, title: "Copy",
                               attrs: { type: "button", "data-testid": "pb-trigger" } });
      b.addEventListener("click", async () => { if (await copyText(w)) b.classList.add("pb-copied"); });
      chips.append(b);
    }
    if (words.length > 1) {
      const all = el("button", { cls: "pb-chip pb-chip-all", text: "Copy all", attrs: { type: "button" } });
      all.addEventListener("click", async () => { if (await copyText(words.map(([w]) => w).join(", "))) all.classList.add("pb-copied"); });
      chips.append(all);
    }
    box.append(trig);
  }
  const c = data.coverage;
  const cov = el("div", { cls: "pb-section", attrs: { "data-testid": "pb-coverage" } },
                 [el("div", { cls: "pb-section-title", text: "Coverage (last run)" })]);
  if (c) {
    cov.append(field("matched", `${c.matched ?? "?"} matched, ${c.unmatched ?? "?"} unmatched`),
               field("families", `LoRA ${show(c.lora_family)} · model ${show(c.model_family)}`));
    if (c.family_warning) cov.append(el("div", { cls: "pb-warn", text: String(c.family_warning) }));
    const keys = Array.isArray(c.unmatched_keys) ? c.unmatched_keys : [];
    for (const u of keys.slice(0, 50)) {
      cov.append(el("div", { cls: "pb-unmatched", text: `${show(u.module)}: ${show(u.reason)}${u.detail ? " — " + show(u.detail) : ""}` }));
    }
    if (keys.length > 50) cov.append(el("div", { cls: "pb-note", text: `… ${keys.length - 50} more` }));
    for (const n of c.notes ?? []) cov.append(el("div", { cls: "pb-note", text: String(n) }));
  } else {
    cov.append(el("div", { cls: "pb-note", text: "no run with this file yet" }));
  }
  if (data.inspect !== undefined || data.coverage !== undefined) box.append(cov);
  if (data.report) box.append(el("pre", { cls: "pb-report", text: data.report, attrs: { "data-testid": "pb-report" } }));
}

/**
 * "Your notes": the recommended strength range the rows warn outside of.
 * @param {any} api @param {string} name @param {(r: import("./notes.js").Range|null) => void} onSaved
 */
function notesSection(api, name, onSaved) {
  const box = el("div", { cls: "pb-section", attrs: { "data-testid": "pb-notes" } },
                 [el("div", { cls: "pb-section-title", text: "Your notes: recommended strength" })]);
  const input = (/** @type {string} */ label) => /** @type {HTMLInputElement} */ (el("input", {
    cls: "pb-range", attrs: { type: "text", inputmode: "decimal", placeholder: label, "aria-label": label,
                              "data-testid": `pb-range-${label}` } }));
  const lo = input("min"), hi = input("max");
  const save = el("button", { cls: "pb-btn", text: "Save", attrs: { type: "button", "data-testid": "pb-range-save" } });
  const state = el("span", { cls: "pb-note" });
  loadNotes(api).then((notes) => {
    const r = notes[name];
    if (r) { lo.value = String(r.min); hi.value = String(r.max); }
  });
  save.addEventListener("click", async () => {
    const empty = !lo.value.trim() && !hi.value.trim();
    const r = empty ? null : asRange({ min: lo.value.replace(",", "."), max: hi.value.replace(",", ".") });
    if (!empty && !r) { state.textContent = "two numbers, min ≤ max"; return; }
    try {
      await saveRange(api, name, r);
      state.textContent = r ? "saved" : "cleared";
      onSaved(r);
    } catch (e) {
      state.textContent = `not saved: ${String(e).slice(0, 120)}`;
    }
  });
  box.append(el("div", { cls: "pb-range-row" }, [lo, el("span", { text: "to" }), hi, save, state]));
  return box;
}

/**
 * The panel for one row: fetches inspect and coverage, then renders.
 * @param {{anchor: HTMLElement, api: any, name: string, onInspect?: (i: any) => void,
 *          onRange?: (r: import("./notes.js").Range|null) => void}} opts
 */
export function openInfoPanel({ anchor, api, name, onInspect, onRange }) {
  const popup = openPopup(anchor, "patchbay-info-panel");
  const box = el("div", { cls: "pb-info" });
  popup.panel.append(el("div", { cls: "pb-popup-title", text: "LoRA info" }), box,
                     notesSection(api, name, (r) => onRange?.(r)));
  box.append(el("div", { cls: "pb-note", text: "reading the file header…" }));
  Promise.all([
    inspectLora(api, name).catch((e) => ({ ok: false, status: 0, body: { error: String(e) } })),
    coverageOf(api, name).catch(() => null),
  ]).then(([ins, cov]) => {
    const err = ins.ok ? null : (ins.body?.error ? String(ins.body.error) : `inspect failed (HTTP ${ins.status})`);
    renderInfo(box, { name, inspect: ins.ok ? ins.body : null, inspectError: err, coverage: cov });
    if (ins.ok) onInspect?.(ins.body);
  });
  return popup;
}
