// @ts-check
// Tiny DOM helpers.  Text goes in with textContent only: every file name,
// folder name and metadata field is untrusted, so nothing here parses HTML.

/**
 * @param {string} tag
 * @param {{cls?: string, text?: string|number|null, title?: string, attrs?: Record<string, string>,
 *          on?: Record<string, (e: any) => void>}} [opts]
 * @param {(Node|string|null|undefined|false)[]} [children]  strings become text nodes
 * @returns {HTMLElement}
 */
export function el(tag, opts = {}, children = []) {
  const e = document.createElement(tag);
  if (opts.cls) e.className = opts.cls;
  if (opts.text !== undefined && opts.text !== null) e.textContent = String(opts.text);
  if (opts.title) e.title = opts.title;
  for (const [k, v] of Object.entries(opts.attrs ?? {})) e.setAttribute(k, v);
  for (const [k, f] of Object.entries(opts.on ?? {})) e.addEventListener(k, f);
  for (const c of children) {
    if (c === null || c === undefined || c === false) continue;
    e.append(typeof c === "string" ? document.createTextNode(c) : c);
  }
  return e;
}

/** @type {Set<{close: () => void}>} */
const openPopups = new Set();

/**
 * A floating panel (picker, info, presets) on document.body, next to `anchor`.
 * Closes on Escape, on a pointerdown outside, or when another popup of the same kind opens.
 * @param {HTMLElement} anchor
 * @param {string} kind   CSS class and data-testid of the panel
 * @param {() => void} [onClose]
 */
export function openPopup(anchor, kind, onClose) {
  for (const p of [...openPopups]) p.close();
  const panel = el("div", { cls: `patchbay-popup ${kind}`, attrs: { "data-testid": kind, role: "dialog" } });
  const r = anchor.getBoundingClientRect();
  const vw = window.innerWidth, vh = window.innerHeight;
  panel.style.left = `${Math.max(4, Math.min(r.left, vw - 440))}px`;
  const below = r.bottom + 4;
  if (below < vh - 240) panel.style.top = `${below}px`;
  else panel.style.bottom = `${Math.max(4, vh - r.top + 4)}px`;
  /** @param {PointerEvent} e */
  const outside = (e) => {
    const t = /** @type {Node} */ (e.target);
    if (!panel.contains(t) && !anchor.contains(t)) handle.close();
  };
  /** @param {KeyboardEvent} e */
  const esc = (e) => { if (e.key === "Escape" && openPopups.has(handle)) { e.stopPropagation(); handle.close(); } };
  const handle = {
    panel,
    close() {
      if (!openPopups.has(handle)) return;
      openPopups.delete(handle);
      document.removeEventListener("pointerdown", outside, true);
      document.removeEventListener("keydown", esc, true);
      panel.remove();
      onClose?.();
    },
  };
  // Keys and wheel stay in the panel (the canvas would zoom or run shortcuts).
  document.addEventListener("keydown", esc, true);  // Escape closes it wherever the focus is
  for (const ev of ["keydown", "keyup", "wheel", "pointerdown"]) panel.addEventListener(ev, (e) => e.stopPropagation());
  document.body.append(panel);
  setTimeout(() => document.addEventListener("pointerdown", outside, true), 0);
  openPopups.add(handle);
  return handle;
}

export function closePopups() {
  for (const p of [...openPopups]) p.close();
}

/** Copy text; falls back to a hidden textarea where the clipboard API is refused. @param {string} text */
export async function copyText(text) {
  try {
    await navigator.clipboard.writeText(text);
    return true;
  } catch {
    const ta = el("textarea", { cls: "patchbay-copy" });
    /** @type {HTMLTextAreaElement} */ (ta).value = text;
    document.body.append(ta);
    /** @type {HTMLTextAreaElement} */ (ta).select();
    const ok = document.execCommand("copy");
    ta.remove();
    return ok;
  }
}
