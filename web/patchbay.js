// @ts-check
// LoRA Patchbay frontend extension: the entry ComfyUI loads (WEB_DIRECTORY is
// ./web; ComfyUI also imports the helper modules under web/patchbay/ on their
// own, which is harmless: they only export, and only this file registers).
//
//   patchbay/rows.js        the stack value: parse (v2, today's list, tags), edit, serialize (pure)
//   patchbay/row_editor.js  the row editor (DOM), built from the `rows` widget text
//   patchbay/picker.js      fuzzy LoRA picker     patchbay/info_panel.js  inspect + coverage panel
//   patchbay/presets.js     presets (user data)   patchbay/server.js      the pack's routes
//   patchbay/stack_node.js  stack nodes' UI       patchbay/info_node.js   LoRA Info's report
//
// Only the public extension API: app.registerExtension, onNodeCreated /
// onConfigure / onExecuted on the node types, node.addDOMWidget, widget
// callbacks.  Every file name and metadata field is written as text.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";
import { INFO_NODE, showInfoReport } from "./patchbay/info_node.js";
import * as rows from "./patchbay/rows.js";
import { onStackExecuted, setupStackNode, STACK_NODES } from "./patchbay/stack_node.js";

const EXT_NAME = "lora-patchbay.web";

/** @param {string} message @param {string} [severity] */
function notify(message, severity = "warn") {
  const toast = app.extensionManager?.toast;
  if (toast?.add) toast.add({ severity, summary: "LoRA Patchbay", detail: message, life: 6000 });
  else console.warn(`[LoRA Patchbay] ${message}`);
}

function addStyles() {
  if (document.querySelector("link[data-patchbay-css]")) return;
  const link = document.createElement("link");
  link.rel = "stylesheet";
  link.href = new URL("./patchbay/patchbay.css", import.meta.url).href;
  link.dataset.patchbayCss = "1";
  document.head.append(link);
}

app.registerExtension({
  name: EXT_NAME,
  setup() {
    addStyles();
  },
  async beforeRegisterNodeDef(/** @type {any} */ nodeType, /** @type {any} */ nodeData) {
    if (nodeData?.name === INFO_NODE) {
      const onExecuted = nodeType.prototype.onExecuted;
      nodeType.prototype.onExecuted = function (/** @type {any} */ message) {
        onExecuted?.apply(this, arguments);
        const parts = message?.text;
        if (parts == null) return;
        showInfoReport(this, Array.isArray(parts) ? parts.join("\n") : String(parts), api);
      };
    }
    if (STACK_NODES.includes(nodeData?.name)) {
      const onNodeCreated = nodeType.prototype.onNodeCreated;
      nodeType.prototype.onNodeCreated = function () {
        const r = onNodeCreated?.apply(this, arguments);
        setupStackNode(app, this, { api, notify });
        return r;
      };
      const onConfigure = nodeType.prototype.onConfigure;
      nodeType.prototype.onConfigure = function () {
        const r = onConfigure?.apply(this, arguments);
        this.patchbayEditor?.sync();
        return r;
      };
      const onExecuted = nodeType.prototype.onExecuted;
      nodeType.prototype.onExecuted = function (/** @type {any} */ message) {
        onExecuted?.apply(this, arguments);
        onStackExecuted(this, message, api);
      };
    }
  },
});

// For tests and other extensions: the pure stack model, no UI.
/** @type {any} */ (globalThis).LoraPatchbay = { rows };
