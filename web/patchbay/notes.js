// @ts-check
// The user's own notes per LoRA (for now: a recommended strength range), in
// ComfyUI's user data so they follow the user between browsers:
//   lora-patchbay/notes.json = {"version": 1, "loras": {"<name>": {"min": 0.4, "max": 0.9}}}

export const NOTES_FILE = "lora-patchbay/notes.json";

/** @typedef {{min: number, max: number}} Range */

/** @type {Promise<Record<string, Range>>|null} */
let cache = null;

/** @param {any} v @returns {Range|null} */
export function asRange(v) {
  const min = Number(v?.min), max = Number(v?.max);
  return Number.isFinite(min) && Number.isFinite(max) && min <= max ? { min, max } : null;
}

/** @param {any} api @returns {Promise<Record<string, Range>>} */
async function read(api) {
  const res = await api.getUserData(NOTES_FILE);
  if (res.status === 404) return {};
  if (!res.ok) throw new Error(`could not read ${NOTES_FILE} (HTTP ${res.status})`);
  const data = await res.json();
  /** @type {Record<string, Range>} */
  const out = {};
  for (const [name, v] of Object.entries(data?.loras ?? {})) {
    const r = asRange(v);
    if (r) out[name] = r;
  }
  return out;
}

/** All notes (read once per page; saving refreshes). @param {any} api */
export function loadNotes(api) {
  if (!cache) cache = read(api).catch(() => ({}));
  return cache;
}

/**
 * Set or clear (null) the recommended range of one LoRA.
 * @param {any} api @param {string} name @param {Range|null} range
 */
export async function saveRange(api, name, range) {
  const notes = await read(api).catch(() => ({}));
  if (range) notes[name] = range;
  else delete notes[name];
  await api.storeUserData(NOTES_FILE, { version: 1, loras: notes },
                          { overwrite: true, stringify: true, throwOnError: true, full_info: false });
  cache = Promise.resolve(notes);
  return notes;
}
