// @ts-check
// The LoRA picker: fuzzy search across subfolders, grouped by folder, keyboard
// navigation, a family badge per file (flagged when it differs from the
// connected model's family), and a preview image with a plain fallback.
import { el, openPopup } from "./dom.js";
import { routeUrl } from "./server.js";

/** @typedef {import("./server.js").LoraFile} LoraFile */

const MAX_SHOWN = 300;

/**
 * Fuzzy score of `query` against `text`: null when the query's characters are
 * not all found in order; higher is better (consecutive runs, word starts and
 * matches in the file's base name count more).  Whitespace splits the query
 * into words that must all match.
 * @param {string} query @param {string} text
 * @returns {number|null}
 */
export function fuzzyScore(query, text) {
  const words = query.toLowerCase().split(/\s+/).filter(Boolean);
  if (!words.length) return 0;
  const t = text.toLowerCase();
  const baseStart = t.lastIndexOf("/") + 1;
  let total = 0;
  for (const w of words) {
    let score = 0, ti = 0, run = 0;
    for (const ch of w) {
      const at = t.indexOf(ch, ti);
      if (at < 0) return null;
      run = at === ti ? run + 1 : 1;
      const wordStart = at === 0 || "/_-. ".includes(t[at - 1]);
      score += 1 + run * 2 + (wordStart ? 3 : 0) + (at >= baseStart ? 1 : 0) - Math.min(3, (at - ti) * 0.1);
      ti = at + 1;
    }
    if (t.includes(w)) score += 10 + (t.slice(baseStart).includes(w) ? 5 : 0);
    total += score;
  }
  return total;
}

/**
 * Files matching `query`, grouped by folder (root first, then by name; by best score while searching).
 * @param {LoraFile[]} files @param {string} query
 * @returns {{folder: string, items: LoraFile[]}[]}
 */
export function searchGroups(files, query) {
  /** @type {Map<string, {folder: string, items: {f: LoraFile, s: number}[], best: number}>} */
  const groups = new Map();
  for (const f of files) {
    const s = fuzzyScore(query, f.name);
    if (s === null) continue;
    let g = groups.get(f.folder);
    if (!g) groups.set(f.folder, (g = { folder: f.folder, items: [], best: -Infinity }));
    g.items.push({ f, s });
    g.best = Math.max(g.best, s);
  }
  const list = [...groups.values()];
  const searching = !!query.trim();
  for (const g of list) g.items.sort((a, b) => (searching ? b.s - a.s : 0) || a.f.name.localeCompare(b.f.name));
  list.sort((a, b) => (searching ? b.best - a.best : 0) || (a.folder === "" ? -1 : b.folder === "" ? 1 : 0)
    || a.folder.localeCompare(b.folder));
  return list.map((g) => ({ folder: g.folder, items: g.items.map((x) => x.f) }));
}

/** @param {LoraFile} f @param {string|null} modelFamily */
function badge(f, modelFamily) {
  if (!f.family) return null;
  const off = !!modelFamily && f.family !== modelFamily;
  return el("span", {
    cls: "pb-badge" + (off ? " pb-badge-warn" : ""), text: f.family,
    title: (off ? `made for ${f.family_label ?? f.family}; the connected model is ${modelFamily}`
      : `made for ${f.family_label ?? f.family}`),
    attrs: { "data-testid": "pb-family" },
  });
}

/**
 * Open the picker next to `anchor`.
 * @param {{anchor: HTMLElement, api: any, files: Promise<LoraFile[]>, modelFamily: string|null,
 *          title: string, onPick: (f: LoraFile) => void}} opts
 */
export function openPicker({ anchor, api, files, modelFamily, title, onPick }) {
  const popup = openPopup(anchor, "patchbay-picker");
  const search = /** @type {HTMLInputElement} */ (el("input", {
    cls: "pb-search", attrs: { type: "search", placeholder: "Search LoRAs (fuzzy, all folders)", "data-testid": "pb-search",
                               "aria-label": "Search LoRAs" },
  }));
  const list = el("div", { cls: "pb-picker-list", attrs: { role: "listbox" } });
  const preview = el("div", { cls: "pb-preview", attrs: { "data-testid": "pb-preview" } });
  popup.panel.append(el("div", { cls: "pb-popup-title", text: title }), search,
                     el("div", { cls: "pb-picker-body" }, [list, preview]));
  /** @type {LoraFile[]} */
  let all = [];
  /** @type {{f: LoraFile, node: HTMLElement}[]} */
  let shown = [];
  let active = 0;

  /** @param {LoraFile|undefined} f */
  function showPreview(f) {
    preview.replaceChildren();
    if (!f) return;
    const plain = () => preview.replaceChildren(el("div", { cls: "pb-preview-none", text: "no preview" }),
                                                 el("div", { cls: "pb-preview-name", text: f.name }));
    if (!f.preview) return plain();
    const img = /** @type {HTMLImageElement} */ (el("img", { attrs: { alt: "", loading: "lazy" } }));
    img.addEventListener("error", plain, { once: true });
    img.src = routeUrl(api, f.preview.replace(/^\/api(?=\/)/, ""));
    preview.append(img, el("div", { cls: "pb-preview-name", text: f.name }));
  }

  /** @param {number} i */
  function setActive(i) {
    if (!shown.length) return showPreview(undefined);
    active = Math.max(0, Math.min(shown.length - 1, i));
    shown.forEach((s, j) => s.node.classList.toggle("pb-active", j === active));
    shown[active].node.scrollIntoView({ block: "nearest" });
    showPreview(shown[active].f);
  }

  function render() {
    const groups = searchGroups(all, search.value);
    list.replaceChildren();
    shown = [];
    let count = 0;
    for (const g of groups) {
      if (count >= MAX_SHOWN) break;
      list.append(el("div", { cls: "pb-folder", text: g.folder ? g.folder + "/" : "(loras)",
                              attrs: { "data-testid": "pb-folder" } }));
      for (const f of g.items) {
        if (count++ >= MAX_SHOWN) break;
        const base = g.folder ? f.name.slice(g.folder.length + 1) : f.name;
        const node = el("div", {
          cls: "pb-item", title: f.name,
          attrs: { role: "option", "data-testid": "pb-item", "data-name": f.name },
        }, [el("span", { cls: "pb-item-name", text: base }), badge(f, modelFamily)]);
        const index = shown.length;
        node.addEventListener("pointerenter", () => setActive(index));
        node.addEventListener("click", () => pick(f));
        shown.push({ f, node });
        list.append(node);
      }
    }
    const total = groups.reduce((n, g) => n + g.items.length, 0);
    if (total > MAX_SHOWN) list.append(el("div", { cls: "pb-more", text: `${total - MAX_SHOWN} more: refine the search` }));
    if (!total) list.append(el("div", { cls: "pb-empty", text: all.length ? "no LoRA matches" : "no LoRA files found in models/loras" }));
    setActive(0);
  }

  /** @param {LoraFile} f */
  function pick(f) {
    popup.close();
    onPick(f);
  }

  search.addEventListener("input", render);
  search.addEventListener("keydown", (e) => {
    if (e.key === "ArrowDown") { setActive(active + 1); e.preventDefault(); }
    else if (e.key === "ArrowUp") { setActive(active - 1); e.preventDefault(); }
    else if (e.key === "PageDown") { setActive(active + 10); e.preventDefault(); }
    else if (e.key === "PageUp") { setActive(active - 10); e.preventDefault(); }
    else if (e.key === "Enter" && shown[active]) { pick(shown[active].f); e.preventDefault(); }
  });
  list.append(el("div", { cls: "pb-empty", text: "loading…" }));
  files.then((f) => { all = f; render(); }, (e) => {
    list.replaceChildren(el("div", { cls: "pb-empty", text: `could not list LoRAs: ${String(e).slice(0, 200)}` }));
  });
  setTimeout(() => search.focus(), 0);
  return popup;
}
