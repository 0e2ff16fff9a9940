// @ts-check
// The pack's server routes (/patchbay/…, see STACK_CONTRACT.md) with plain
// fallbacks to core's routes, so the editor still lists files when the pack's
// routes are missing (an older server side).  `api` is the frontend's api
// object (api.fetchApi prefixes /api); nothing here touches the DOM.

/**
 * A file as the picker shows it.
 * @typedef {Object} LoraFile
 * @property {string} name        "/" separated, as rows store it
 * @property {string} folder      "" for the loras root
 * @property {string|null} family  base family the engine guesses from the header
 * @property {string|null} [family_label]  its readable name
 * @property {string|null} format
 * @property {string|null} preview  image URL or null
 */

/** @param {any} api @param {string} path */
async function getJson(api, path) {
  const res = await api.fetchApi(path, { cache: "no-store" });
  let body = null;
  try { body = await res.json(); } catch { /* not JSON */ }
  return { ok: res.ok, status: res.status, body };
}

/** @param {string} name */
function folderOf(name) {
  const i = name.lastIndexOf("/");
  return i < 0 ? "" : name.slice(0, i);
}

/** @param {string} s */
const q = (s) => encodeURIComponent(s);

/**
 * The installed LoRAs.  /patchbay/loras (with family badges and previews), else core's /models/loras.
 * @param {any} api
 * @returns {Promise<LoraFile[]>}
 */
export async function listLoras(api) {
  try {
    const r = await getJson(api, "/patchbay/loras");
    if (r.ok && r.body && Array.isArray(r.body.loras)) {
      return r.body.loras.filter((x) => x && typeof x.name === "string").map((x) => {
        const name = String(x.name).replace(/\\/g, "/");
        return {
          name, folder: typeof x.folder === "string" ? x.folder.replace(/\\/g, "/") : folderOf(name),
          family: typeof x.family === "string" ? x.family : null,
          family_label: typeof x.family_label === "string" ? x.family_label : null,
          format: typeof x.format === "string" ? x.format : null,
          preview: typeof x.preview === "string" && x.preview.startsWith("/") ? x.preview : null,
        };
      });
    }
  } catch { /* fall back below */ }
  const r = await getJson(api, "/models/loras");
  const names = Array.isArray(r.body) ? r.body.filter((n) => typeof n === "string") : [];
  return names.map((n) => {
    const name = n.replace(/\\/g, "/");
    return { name, folder: folderOf(name), family: null, format: null, preview: null };
  });
}

/** @param {any} api @param {string} name @returns {Promise<{ok: boolean, status: number, body: any}>} */
export function inspectLora(api, name, withHash = true) {
  return getJson(api, `/patchbay/inspect?name=${q(name)}${withHash ? "&hash=1" : ""}`);
}

/** Last run's coverage of a file, or null before any run. @param {any} api @param {string} name */
export async function coverageOf(api, name) {
  const r = await getJson(api, `/patchbay/coverage?name=${q(name)}`);
  return r.ok ? r.body : null;
}

/**
 * An installed name for a missing row: by hash first, then by name.
 * @param {any} api @param {string} name @param {string|undefined} hash
 * @returns {Promise<{name: string|null, by: string|null}>}
 */
export async function resolveLora(api, name, hash) {
  const r = await getJson(api, `/patchbay/resolve?name=${q(name)}${hash ? `&hash=${q(hash)}` : ""}`);
  if (r.ok && r.body && (typeof r.body.name === "string" || r.body.name === null)) return r.body;
  return { name: null, by: null };
}

/** The URL of a route for <img src>, with the frontend's base path. @param {any} api @param {string} path */
export function routeUrl(api, path) {
  return typeof api.apiURL === "function" ? api.apiURL(path) : "/api" + path;
}
