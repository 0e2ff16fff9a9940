// LoRA Patchbay frontend extension.
//
// 1. LoRA Info: shows the node's text output on the node after it runs.
// 2. LoRA Stack: "Add LoRA" (pick from the loras folder) and "Toggle all"
//    buttons that edit the `rows` widget.  The widget value stays a plain JSON
//    string, so saved workflows and API prompts carry the rows as text.
//
// Only the stable extension API is used (app.registerExtension, node
// widgets, LiteGraph.ContextMenu, api.fetchApi), so it runs on frontend 1.27
// (ComfyUI 0.3.64) and 1.38 (ComfyUI 0.14) alike.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const EXT_NAME = "lora-patchbay.web";
const INFO_NODE = "PatchbayLoraInfo";
const STACK_NODE = "PatchbayLoraStack";
const ROWS_WIDGET = "rows";

function notify(message, severity = "warn") {
  const toast = app.extensionManager?.toast;
  if (toast?.add) {
    toast.add({ severity, summary: "LoRA Patchbay", detail: message, life: 5000 });
  } else {
    console.warn(`[LoRA Patchbay] ${message}`);
  }
}

// ------------------------------------------------------------------ rows (pure)

// Parse the rows text; null when it is not a JSON list (e.g. pasted <lora:…> tags).
export function parseRows(text) {
  const t = (text ?? "").trim();
  if (!t) return [];
  try {
    const rows = JSON.parse(t);
    return Array.isArray(rows) ? rows : null;
  } catch {
    return null;
  }
}

// One row per line keeps long stacks readable in the text box and in diffs.
export function formatRows(rows) {
  if (!rows.length) return "[]";
  return "[\n" + rows.map((r) => "  " + JSON.stringify(r)).join(",\n") + "\n]";
}

export function withRow(rows, lora) {
  return [...rows, { on: true, lora, strength: 1.0, strength_clip: 1.0 }];
}

// All on → all off; otherwise → all on.
export function toggledAll(rows) {
  const allOn = rows.length > 0 && rows.every((r) => r.on !== false);
  return rows.map((r) => ({ ...r, on: !allOn }));
}

// ------------------------------------------------------------------ helpers

// For the few frontend APIs that take HTML (ContextMenu entries): text as inert markup.
export function escapeHtml(text) {
  return String(text).replace(/[&<>"']/g, (c) =>
    ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
}

function rowsWidget(node) {
  return node.widgets?.find((w) => w.name === ROWS_WIDGET);
}

function setRows(node, rows) {
  const w = rowsWidget(node);
  if (!w) return;
  w.value = formatRows(rows);
  w.callback?.(w.value);
  node.setDirtyCanvas?.(true, true);
  app.graph?.setDirtyCanvas?.(true, true);
}

async function loraNames() {
  // GET /api/models/loras exists on both supported versions.
  try {
    const res = await api.fetchApi("/models/loras");
    if (res.ok) {
      const names = await res.json();
      if (Array.isArray(names)) return names.filter((n) => typeof n === "string");
    }
  } catch (e) {
    console.warn("[LoRA Patchbay] could not list loras", e);
  }
  return [];
}

function menuEvent(args) {
  const ev = args.find((a) => a && typeof a === "object" && "clientX" in a);
  if (ev) return ev;
  const canvas = app.canvas?.canvas;
  const r = canvas?.getBoundingClientRect?.();
  const x = r ? r.left + r.width / 2 : 100;
  const y = r ? r.top + r.height / 3 : 100;
  return new MouseEvent("click", { clientX: x, clientY: y });
}

async function chooseLora(node, event) {
  const names = await loraNames();
  if (!names.length) {
    notify("No LoRA files found in models/loras.");
    return;
  }
  const Menu = globalThis.LiteGraph?.ContextMenu;
  if (!Menu) {
    notify("This frontend has no context menu; type the row into the rows text instead.");
    return;
  }
  // The frontend's ContextMenu writes an entry's `content`/`title` with innerHTML,
  // so file and folder names (untrusted text) go in escaped; the raw name rides
  // along in `lora`, which the menu never renders.
  const entries = names.map((name) => ({ content: escapeHtml(name), title: escapeHtml(name), lora: name }));
  new Menu(entries, {
    event,
    title: "Add LoRA",
    scale: Math.max(1, app.canvas?.ds?.scale ?? 1),
    className: "patchbay-lora-menu",
    callback: (value) => {
      const name = typeof value?.lora === "string" ? value.lora : null;
      if (name) addLora(node, name);
    },
  });
}

export function addLora(node, name) {
  const w = rowsWidget(node);
  if (!w) return false;
  const rows = parseRows(w.value);
  if (rows === null) {
    notify("The rows text is not a JSON list; Add LoRA only edits JSON rows.");
    return false;
  }
  setRows(node, withRow(rows, name));
  return true;
}

export function toggleAll(node) {
  const w = rowsWidget(node);
  if (!w) return false;
  const rows = parseRows(w.value);
  if (rows === null) {
    notify("The rows text is not a JSON list; Toggle all only edits JSON rows.");
    return false;
  }
  setRows(node, toggledAll(rows));
  return true;
}

// ------------------------------------------------------------------ info text

function showInfo(node, text) {
  let widget = node.widgets?.find((w) => w.name === "patchbay_info");
  if (!widget) {
    if (typeof node.addDOMWidget === "function") {
      const area = document.createElement("textarea");
      area.readOnly = true;
      area.className = "patchbay-info";
      area.style.cssText =
        "width:100%;height:100%;min-height:120px;resize:none;font:11px monospace;" +
        "background:var(--comfy-input-bg,#222);color:var(--input-text,#ddd);border:none;" +
        "box-sizing:border-box;white-space:pre;overflow:auto;";
      widget = node.addDOMWidget("patchbay_info", "patchbay_info", area, {
        serialize: false,
        getValue: () => area.value,
        setValue: (v) => { area.value = String(v ?? ""); },
        getMinHeight: () => 140,
      });
      widget.patchbayArea = area;
    } else {
      widget = node.addWidget("text", "patchbay_info", "", () => {}, { serialize: false });
    }
    const size = node.computeSize?.();
    if (size) node.setSize?.([Math.max(node.size?.[0] ?? 0, 420), Math.max(node.size?.[1] ?? 0, size[1])]);
  }
  if (widget.patchbayArea) widget.patchbayArea.value = text;
  else widget.value = text;
  node.setDirtyCanvas?.(true, true);
}

// ------------------------------------------------------------------ registration

app.registerExtension({
  name: EXT_NAME,
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData?.name === INFO_NODE) {
      const onExecuted = nodeType.prototype.onExecuted;
      nodeType.prototype.onExecuted = function (message) {
        onExecuted?.apply(this, arguments);
        const parts = message?.text;
        if (parts == null) return;
        showInfo(this, Array.isArray(parts) ? parts.join("\n") : String(parts));
      };
    }
    if (nodeData?.name === STACK_NODE) {
      const onNodeCreated = nodeType.prototype.onNodeCreated;
      nodeType.prototype.onNodeCreated = function () {
        const r = onNodeCreated?.apply(this, arguments);
        const node = this;
        node.addWidget("button", "+ Add LoRA", null, (...args) => { chooseLora(node, menuEvent(args)); },
                       { serialize: false });
        node.addWidget("button", "Toggle all", null, () => { toggleAll(node); }, { serialize: false });
        return r;
      };
    }
  },
});

// For tests and other extensions: the row helpers without the UI.
globalThis.LoraPatchbay = { addLora, toggleAll, parseRows, formatRows, withRow, toggledAll, loraNames };
