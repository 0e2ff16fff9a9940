// @ts-check
// The stack value: parse (v2, today's JSON list, <lora:…> tags), edit, serialize.
// Pure functions over plain data (no DOM, no frontend), so they run under
// `node --test` too.  Every edit returns a new value; the `rows` STRING widget
// holding `serializeStack(value)` is the one source of truth.
//
// Mirrors /tmp/patchbay/STACK_CONTRACT.md (v2):
//   {"version": 2, "options": {"separate_clip": false},
//    "rows": [{"id": "r-<8 hex>", "on": true, "lora": "sub/x.safetensors",
//              "strength": 1.0, "strength_clip": null, "hash": "<sha256>"}]}

/**
 * One row.  Unknown fields (e.g. `iclora`) are kept untouched.
 * @typedef {Object} StackRow
 * @property {string} id              stable id "r-<8 hex>"
 * @property {boolean} on
 * @property {string} lora            name as ComfyUI lists it, "/" separated
 * @property {number} strength
 * @property {number|null} strength_clip  a number when options.separate_clip, else null (= strength)
 * @property {string} [hash]          sha256 hex, finds a renamed/moved file
 */

/**
 * @typedef {Object} StackOptions
 * @property {boolean} separate_clip  show and use a CLIP strength per row
 */

/**
 * @typedef {Object} StackValue
 * @property {2} version
 * @property {StackOptions} options
 * @property {StackRow[]} rows
 */

/**
 * @typedef {Object} Parsed
 * @property {StackValue|null} value   null when the text is not a stack
 * @property {"v2"|"legacy"|"tags"|"empty"|"invalid"} source
 * @property {string} [error]          one line, when invalid
 */

/** The sliders' range (nodes' strength_input); the backend enforces it too. */
export const STRENGTH_MIN = -4;
export const STRENGTH_MAX = 4;
export const STEP = 0.05;
export const FINE_STEP = 0.01;

const TAG = /<lora:([^:>]+):([^:>]+)(?::([^:>]+))?>/gi;

/** @returns {StackValue} */
export function emptyStack() {
  return { version: 2, options: { separate_clip: false }, rows: [] };
}

/** A fresh row id. */
export function newId() {
  const bytes = new Uint8Array(4);
  globalThis.crypto.getRandomValues(bytes);
  return "r-" + Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

/** Round to the widget's 0.001 grid and keep it inside the sliders' range. */
export function clampStrength(x) {
  const n = Number(x);
  if (!Number.isFinite(n)) return null;
  return Math.round(Math.min(STRENGTH_MAX, Math.max(STRENGTH_MIN, n)) * 1000) / 1000;
}

/** @param {unknown} v @param {number} fallback */
function num(v, fallback) {
  if (v === null || v === undefined || v === "") return fallback;
  const n = Number(v);
  return Number.isFinite(n) ? n : fallback;
}

/**
 * @param {any} raw   a row object from any accepted shape
 * @param {number} index
 * @param {Set<string>} seen   ids already used (duplicates get a new one)
 * @returns {StackRow|null}
 */
function normalizeRow(raw, index, seen) {
  if (!raw || typeof raw !== "object" || Array.isArray(raw)) return null;
  const lora = raw.lora ?? raw.name ?? "";
  const strength = num(raw.strength, 1.0);
  const clipRaw = "strength_clip" in raw ? raw.strength_clip : raw.strengthTwo;
  const clip = clipRaw === null || clipRaw === undefined ? null : num(clipRaw, strength);
  let id = typeof raw.id === "string" && /^r-[0-9a-z-]{1,32}$/i.test(raw.id) ? raw.id : "";
  // Rows of today's format have no id: derive one from the position, so that
  // parsing the same text twice gives the same ids (focus survives a rebuild).
  if (!id || seen.has(id)) id = seen.has(`r-${index.toString(16).padStart(8, "0")}`) ? newId()
    : `r-${index.toString(16).padStart(8, "0")}`;
  seen.add(id);
  const { name: _n, strengthTwo: _s2, active: _a, ...rest } = raw;
  /** @type {StackRow} */
  const row = { ...rest, id, on: raw.on ?? raw.active ?? true, lora: String(lora), strength, strength_clip: clip };
  row.on = row.on !== false;
  if (raw.hash === undefined || raw.hash === null || raw.hash === "") delete row.hash;
  return row;
}

/**
 * @param {any[]} list
 * @param {boolean|undefined} separate  options.separate_clip when given (v2)
 * @returns {StackValue}
 */
function fromList(list, separate) {
  const seen = new Set();
  const rows = /** @type {StackRow[]} */ (list.map((r, i) => normalizeRow(r, i, seen)).filter(Boolean));
  // Today's rows always carry strength_clip; the CLIP column is on when any differs.
  const sep = separate ?? rows.some((r) => r.strength_clip !== null && r.strength_clip !== r.strength);
  for (const r of rows) r.strength_clip = sep ? (r.strength_clip ?? r.strength) : null;
  return { version: 2, options: { separate_clip: sep }, rows };
}

/**
 * Read the `rows` widget text.
 * @param {string|null|undefined} text
 * @returns {Parsed}
 */
export function parseStack(text) {
  const t = String(text ?? "").trim();
  if (!t) return { value: emptyStack(), source: "empty" };
  if (t[0] === "[" || t[0] === "{") {
    let data;
    try {
      data = JSON.parse(t);
    } catch (e) {
      return { value: null, source: "invalid", error: `rows text is not valid JSON (${String(e).slice(0, 120)})` };
    }
    if (Array.isArray(data)) return { value: fromList(data, undefined), source: "legacy" };
    if (data && typeof data === "object" && Array.isArray(data.rows)) {
      const sep = data.options && typeof data.options === "object" ? !!data.options.separate_clip : undefined;
      const value = fromList(data.rows, sep);
      return { value: { ...value, options: { ...(data.options ?? {}), separate_clip: value.options.separate_clip } },
               source: "v2" };
    }
    return { value: null, source: "invalid", error: "rows JSON is neither a list of rows nor {\"rows\": [...]}" };
  }
  const rows = [];
  for (const m of t.matchAll(TAG)) {
    const row = { on: true, lora: m[1].trim(), strength: num(m[2], 1.0) };
    if (m[3] !== undefined) row.strength_clip = num(m[3], row.strength);
    rows.push(row);
  }
  if (!rows.length) return { value: null, source: "invalid", error: "rows text is neither JSON rows nor <lora:name:strength> tags" };
  return { value: fromList(rows, undefined), source: "tags" };
}

/**
 * The widget text: v2, one row per line so long stacks stay readable in the raw box and in diffs.
 * @param {StackValue} value
 */
export function serializeStack(value) {
  const sep = !!value.options.separate_clip;
  const rows = value.rows.map((r) => {
    const { id, on, lora, strength, strength_clip, hash, ...rest } = r;
    /** @type {Record<string, any>} */
    const out = { id, on, lora, strength, strength_clip: sep ? (strength_clip ?? strength) : null };
    if (hash) out.hash = hash;
    return { ...out, ...rest };
  });
  const head = `{"version": 2, "options": ${JSON.stringify({ ...value.options, separate_clip: sep })}, "rows": [`;
  if (!rows.length) return head + "]}";
  return head + "\n" + rows.map((r) => "  " + JSON.stringify(r)).join(",\n") + "\n]}";
}

// ------------------------------------------------------------------ edits

/** @param {StackValue} v @param {(rows: StackRow[]) => StackRow[]} f @returns {StackValue} */
function withRows(v, f) {
  return { ...v, rows: f(v.rows.map((r) => ({ ...r }))) };
}

/** @param {StackValue} v @param {string} lora @param {string} [hash] */
export function addRow(v, lora, hash) {
  /** @type {StackRow} */
  const row = { id: newId(), on: true, lora, strength: 1.0, strength_clip: v.options.separate_clip ? 1.0 : null };
  if (hash) row.hash = hash;
  return withRows(v, (rows) => [...rows, row]);
}

/** @param {StackValue} v @param {string} id */
export function removeRow(v, id) {
  return withRows(v, (rows) => rows.filter((r) => r.id !== id));
}

/** Move a row by `delta` places (clamped). @param {StackValue} v @param {string} id @param {number} delta */
export function moveRow(v, id, delta) {
  const i = v.rows.findIndex((r) => r.id === id);
  if (i < 0) return v;
  return moveRowTo(v, id, Math.max(0, Math.min(v.rows.length - 1, i + delta)));
}

/** Put a row at `index` of the resulting list. @param {StackValue} v @param {string} id @param {number} index */
export function moveRowTo(v, id, index) {
  const i = v.rows.findIndex((r) => r.id === id);
  if (i < 0 || i === index) return v;
  return withRows(v, (rows) => {
    const [row] = rows.splice(i, 1);
    rows.splice(Math.max(0, Math.min(rows.length, index)), 0, row);
    return rows;
  });
}

/** @param {StackValue} v @param {string} id @param {boolean} on */
export function setOn(v, id, on) {
  return withRows(v, (rows) => rows.map((r) => (r.id === id ? { ...r, on } : r)));
}

/** All on → all off; otherwise → all on. @param {StackValue} v */
export function toggleAll(v) {
  const allOn = v.rows.length > 0 && v.rows.every((r) => r.on);
  return withRows(v, (rows) => rows.map((r) => ({ ...r, on: !allOn })));
}

/**
 * @param {StackValue} v @param {string} id
 * @param {"strength"|"strength_clip"} field @param {number} value
 */
export function setStrength(v, id, field, value) {
  const x = clampStrength(value);
  if (x === null) return v;
  return withRows(v, (rows) => rows.map((r) => (r.id === id ? { ...r, [field]: x } : r)));
}

/** Switch the CLIP column; switching on starts each CLIP strength at the row's strength. */
export function setSeparateClip(/** @type {StackValue} */ v, /** @type {boolean} */ on) {
  const rows = v.rows.map((r) => ({ ...r, strength_clip: on ? (r.strength_clip ?? r.strength) : null }));
  return { ...v, options: { ...v.options, separate_clip: on }, rows };
}

/** Point a row at another file (picker, missing-LoRA resolve); the old hash no longer applies. */
export function setLora(/** @type {StackValue} */ v, /** @type {string} */ id, /** @type {string} */ lora,
                        /** @type {string|undefined} */ hash) {
  return withRows(v, (rows) => rows.map((r) => {
    if (r.id !== id) return r;
    const { hash: _h, ...rest } = r;
    return hash ? { ...rest, lora, hash } : { ...rest, lora };
  }));
}

/** Same rows, same order, same numbers (ids and key order aside)? For "did anything change". */
export function sameStack(/** @type {StackValue} */ a, /** @type {StackValue} */ b) {
  return serializeStack(a) === serializeStack(b);
}

/** "3 of 5 on" for the toolbar. @param {StackValue} v */
export function countText(v) {
  const on = v.rows.filter((r) => r.on).length;
  return `${on} of ${v.rows.length} on`;
}

/** Normalize a listed name for matching ("\" from Windows servers → "/"). */
export function normName(/** @type {string} */ name) {
  return String(name).replace(/\\/g, "/");
}
