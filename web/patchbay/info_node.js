// @ts-check
// LoRA Info (PatchbayLoraInfo): its report on the node, in the same panel as
// the stack rows' info button (file, trigger words, coverage) plus the text
// report the node returns.
import { el } from "./dom.js";
import { renderInfo } from "./info_panel.js";
import { coverageOf, inspectLora } from "./server.js";

export const INFO_NODE = "PatchbayLoraInfo";
const WIDGET = "patchbay_info";

/** @param {any} node @param {string} text @param {any} api */
export function showInfoReport(node, text, api) {
  let widget = node.widgets?.find((/** @type {any} */ w) => w.name === WIDGET);
  if (!widget) {
    const box = el("div", { cls: "patchbay-info-node pb-info", attrs: { "data-testid": "patchbay-info-node" } });
    for (const ev of ["pointerdown", "keydown", "wheel"]) box.addEventListener(ev, (e) => e.stopPropagation(), { passive: true });
    widget = node.addDOMWidget(WIDGET, WIDGET, box, {
      serialize: false, hideOnZoom: false, getValue: () => undefined, setValue: () => {}, getMinHeight: () => 220,
    });
    widget.serialize = false;
    widget.patchbayBox = box;
    const size = node.computeSize?.();
    if (size) node.setSize?.([Math.max(node.size?.[0] ?? 0, 460), Math.max(node.size?.[1] ?? 0, size[1])]);
  }
  const box = /** @type {HTMLElement} */ (widget.patchbayBox);
  const name = String(node.widgets?.find((/** @type {any} */ w) => w.name === "lora_name")?.value ?? "");
  renderInfo(box, { name, report: text });
  if (name) {
    Promise.all([inspectLora(api, name).catch(() => null), coverageOf(api, name).catch(() => null)]).then(([i, c]) => {
      if (i && i.ok) renderInfo(box, { name, inspect: i.body, coverage: c, report: text });
    });
  }
  node.setDirtyCanvas?.(true, true);
}
