// @ts-check
// The stack nodes' UI (PatchbayLoraStack, PatchbayLoraStackLoader): the row
// editor as a DOM widget over the backend's `rows` STRING widget.
//
// `rows` stays the one source of truth and the only serialized value; the
// editor widget is `serialize: false` and rebuilds from `rows` on configure
// (load, paste, undo, subgraph), on the widget's callback (loadApiJson) and
// on a light poll (anything else that writes the value).
import { StackEditor } from "./row_editor.js";
import { coverageOf } from "./server.js";

export const STACK_NODES = ["PatchbayLoraStack", "PatchbayLoraStackLoader"];
export const ROWS_WIDGET = "rows";
export const EDITOR_WIDGET = "patchbay_editor";

/** @type {Set<{node: any, editor: StackEditor}>} */
const live = new Set();
/** @type {ReturnType<typeof setInterval>|null} */
let poll = null;

/** Is this node object still the one in its graph (not replaced by undo, tab switch or load)? */
function isCurrent(/** @type {any} */ node) {
  return !!node.graph && node.graph.getNodeById?.(node.id) === node;
}

/**
 * Nodes 2.0 reuses a node's widget component when undo or a tab switch rebuilds
 * the graph (1.38: WidgetDOM keeps the old element mounted and never mounts the
 * new widget's).  The still-mounted element of a replaced node is handed to the
 * replacement's editor, which renders into it from its own `rows` widget.
 */
function adoptOrphans() {
  const entries = [...live];
  for (const old of entries) {
    if (isCurrent(old.node)) continue;
    if (!old.editor.root.isConnected) { live.delete(old); continue; }
    const heir = entries.find((e) => e !== old && isCurrent(e.node) && e.node.id === old.node.id
                                     && e.node.type === old.node.type && !e.editor.root.isConnected);
    if (!heir) continue;
    live.delete(old);
    heir.editor.adopt(old.editor.root);
  }
}

function startPoll() {
  if (poll) return;
  poll = setInterval(() => {
    adoptOrphans();
    for (const entry of [...live]) {
      if (!entry.node.graph && !entry.editor.root.isConnected) { live.delete(entry); continue; }
      entry.editor.sync();
    }
    if (!live.size && poll) { clearInterval(poll); poll = null; }
  }, 250);
}

/** "1.27.10" → [1, 27, 10] */
function version() {
  const v = String(globalThis.__COMFYUI_FRONTEND_VERSION__ ?? "0");
  return v.split(".").map((x) => parseInt(x, 10) || 0);
}

/** Nodes 2.0 renders DOM widgets from frontend 1.30 on (before: not at all). */
export function vueShowsDomWidgets() {
  const [a, b] = version();
  return a > 1 || (a === 1 && b >= 30);
}

let noticeShown = false;

/**
 * @param {any} app @param {any} node
 * @param {{api: any, notify: (msg: string, severity?: string) => void}} ctx
 */
export function setupStackNode(app, node, ctx) {
  const rows = node.widgets?.find((/** @type {any} */ w) => w.name === ROWS_WIDGET);
  if (!rows || node.widgets.some((/** @type {any} */ w) => w.name === EDITOR_WIDGET) || typeof node.addDOMWidget !== "function") return null;
  const vue = !!globalThis.LiteGraph?.vueNodesMode;
  if (vue && !vueShowsDomWidgets()) {
    // This frontend's Nodes 2.0 cannot show the editor: the raw JSON stays, with one notice.
    if (!noticeShown) {
      noticeShown = true;
      ctx.notify("This frontend's Nodes 2.0 cannot show the LoRA stack editor: the rows show as JSON text "
                 + "(they still queue). Switch Nodes 2.0 off for the editor.", "info");
    }
    return null;
  }
  const checkState = () => {
    const tracker = app.extensionManager?.workflow?.activeWorkflow?.changeTracker
      ?? app.workflowManager?.activeWorkflow?.changeTracker;
    tracker?.checkState?.();
  };
  /** @type {any} */
  let widget = null;
  const editor = new StackEditor({
    api: ctx.api,
    notify: ctx.notify,
    getText: () => String(rows.value ?? ""),
    setText: (text) => {
      rows.value = text;
      rows.callback?.(text);
      checkState();
    },
    onLayout: () => {
      editor.root.dataset.node = String(node.id);  // for tests and styles; the id changes on paste
      fit(node, editor, widget);
    },
  });
  // Hidden in both renderers (classic honours widget.hidden, Vue options.hidden); still serialized.
  rows.hidden = true;
  rows.options = rows.options ?? {};
  rows.options.hidden = true;
  // Before 1.30 the classic layout still gives hidden DOM widgets their height,
  // except the "hidden" type (DOMWidgetImpl.computeLayoutSize → 0).
  if (!vueShowsDomWidgets()) rows.type = "hidden";
  const cb = rows.callback;
  rows.callback = function (/** @type {any[]} */ ...args) {
    const r = cb?.apply(this, args);
    editor.sync();
    return r;
  };
  widget = node.addDOMWidget(EDITOR_WIDGET, EDITOR_WIDGET, editor.root, {
    serialize: false,
    hideOnZoom: false,
    getValue: () => undefined,
    setValue: () => {},
    getMinHeight: () => editor.preferredHeight(),
    getHeight: () => editor.preferredHeight(),
  });
  widget.serialize = false;
  node.patchbayEditor = editor;
  editor.sync(true);
  live.add({ node, editor });
  startPoll();
  setTimeout(adoptOrphans, 60);
  return editor;
}

/** Grow/shrink the node to the editor (setSize, never node.size mutation). */
function fit(/** @type {any} */ node, /** @type {StackEditor} */ editor, /** @type {any} */ widget) {
  if (!widget || !node.setSize || !node.computeSize) return;
  const want = node.computeSize();
  const w = Math.max(node.size?.[0] ?? 0, editor.preferredWidth());
  if (Math.abs((node.size?.[1] ?? 0) - want[1]) > 1 || w !== node.size?.[0]) node.setSize([w, want[1]]);
  node.setDirtyCanvas?.(true, true);
}

/** After a run: the one-line summary, and the model's family from the coverage of the first row. */
export function onStackExecuted(/** @type {any} */ node, /** @type {any} */ message, /** @type {any} */ api) {
  const editor = /** @type {StackEditor|undefined} */ (node.patchbayEditor);
  if (!editor) return;
  const s = message?.patchbay_summary;
  const item = Array.isArray(s) ? s[0] : s;
  const text = typeof item === "string" ? item : item?.text;
  if (typeof text === "string") editor.setSummary(text);
  const first = editor.current().rows.find((r) => r.on && r.lora);
  if (first) {
    coverageOf(api, first.lora).then((c) => {
      if (c && typeof c.model_family === "string") editor.modelFamily = c.model_family;
    }, () => {});
  }
}
