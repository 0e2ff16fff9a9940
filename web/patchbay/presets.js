// @ts-check
// Presets: whole stacks saved under a name, stored through ComfyUI's user-data
// API (they follow the user between browsers):
//   lora-patchbay/presets.json = {"version": 1, "presets": {"<name>": <v2 stack value>}}
import { el, openPopup } from "./dom.js";
import { parseStack } from "./rows.js";

/** @typedef {import("./rows.js").StackValue} StackValue */

export const PRESETS_FILE = "lora-patchbay/presets.json";

/** @param {any} api @returns {Promise<Record<string, StackValue>>} */
export async function loadPresets(api) {
  const res = await api.getUserData(PRESETS_FILE);
  if (res.status === 404) return {};
  if (!res.ok) throw new Error(`could not read ${PRESETS_FILE} (HTTP ${res.status})`);
  const data = await res.json();
  /** @type {Record<string, StackValue>} */
  const out = {};
  for (const [name, v] of Object.entries(data?.presets ?? {})) {
    const p = parseStack(JSON.stringify(v));
    if (p.value) out[name] = p.value;
  }
  return out;
}

/** @param {any} api @param {Record<string, StackValue>} presets */
export async function storePresets(api, presets) {
  // All four options: a partial options object would drop the defaults (stringify).
  await api.storeUserData(PRESETS_FILE, { version: 1, presets },
                          { overwrite: true, stringify: true, throwOnError: true, full_info: false });
}

/**
 * The presets panel: save the current stack under a name; load, rename, delete.
 * @param {{anchor: HTMLElement, api: any, current: () => StackValue, onLoad: (v: StackValue) => void,
 *          notify: (msg: string, severity?: string) => void}} opts
 */
export function openPresets({ anchor, api, current, onLoad, notify }) {
  const popup = openPopup(anchor, "patchbay-presets");
  const name = /** @type {HTMLInputElement} */ (el("input", {
    cls: "pb-preset-name", attrs: { type: "text", placeholder: "Preset name", "data-testid": "pb-preset-name",
                                    maxlength: "120" } }));
  const save = el("button", { cls: "pb-btn", text: "Save", attrs: { type: "button", "data-testid": "pb-preset-save" } });
  const list = el("div", { cls: "pb-preset-list" });
  popup.panel.append(el("div", { cls: "pb-popup-title", text: "Presets" }),
                     el("div", { cls: "pb-preset-new" }, [name, save]), list);
  /** @type {Record<string, StackValue>} */
  let presets = {};

  /** @param {(p: Record<string, StackValue>) => void} change */
  async function update(change) {
    try {
      presets = await loadPresets(api);  // re-read: another tab may have saved meanwhile
      change(presets);
      await storePresets(api, presets);
    } catch (e) {
      notify(`Presets: ${String(e)}`, "error");
    }
    render();
  }

  function render() {
    list.replaceChildren();
    const names = Object.keys(presets).sort((a, b) => a.localeCompare(b));
    if (!names.length) list.append(el("div", { cls: "pb-empty", text: "no presets yet" }));
    for (const n of names) {
      const row = el("div", { cls: "pb-preset", attrs: { "data-testid": "pb-preset", "data-name": n } });
      const load = el("button", { cls: "pb-preset-load", text: n, title: `Load "${n}" (${presets[n].rows.length} rows)`,
                                  attrs: { type: "button", "data-testid": "pb-preset-load" } });
      load.addEventListener("click", () => { popup.close(); onLoad(presets[n]); });
      const ren = el("button", { cls: "pb-icon", text: "✎", title: "Rename",
                                 attrs: { type: "button", "data-testid": "pb-preset-rename", "aria-label": "Rename" } });
      ren.addEventListener("click", () => {
        const input = /** @type {HTMLInputElement} */ (el("input", { cls: "pb-preset-name", attrs: { type: "text" } }));
        input.value = n;
        row.replaceChildren(input);
        input.focus();
        input.select();
        input.addEventListener("keydown", (e) => {
          if (e.key === "Enter" && input.value.trim() && input.value.trim() !== n) {
            const to = input.value.trim();
            update((p) => { if (p[n]) { p[to] = p[n]; delete p[n]; } });
          } else if (e.key === "Enter" || e.key === "Escape") {
            e.stopPropagation();
            render();
          }
        });
      });
      const del = el("button", { cls: "pb-icon", text: "✕", title: "Delete",
                                 attrs: { type: "button", "data-testid": "pb-preset-delete", "aria-label": "Delete" } });
      del.addEventListener("click", () => update((p) => { delete p[n]; }));
      row.append(load, ren, del);
      list.append(row);
    }
  }

  const doSave = () => {
    const n = name.value.trim();
    if (!n) { name.focus(); return; }
    const value = current();
    update((p) => { p[n] = value; });
    name.value = "";
  };
  save.addEventListener("click", doSave);
  name.addEventListener("keydown", (e) => { if (e.key === "Enter") doSave(); });
  list.append(el("div", { cls: "pb-empty", text: "loading…" }));
  loadPresets(api).then((p) => { presets = p; render(); }, (e) => notify(`Presets: ${String(e)}`, "error"));
  setTimeout(() => name.focus(), 0);
  return popup;
}
