// node --test: the stack model (web/patchbay/rows.js) and the picker's fuzzy search, without a browser.
import assert from "node:assert/strict";
import test from "node:test";

import * as R from "../../../web/patchbay/rows.js";
import { fuzzyScore, searchGroups } from "../../../web/patchbay/picker.js";

const TODAY = '[{"on": true, "lora": "a.safetensors", "strength": 0.8, "strength_clip": 1.0, "iclora": true},'
  + ' {"on": false, "lora": "sub/b.safetensors", "strength": 1.0, "strength_clip": 1.0, "hash": "ab12"}]';

test("today's rows parse; the CLIP column is on when a clip strength differs; unknown fields stay", () => {
  const p = R.parseStack(TODAY);
  assert.equal(p.source, "legacy");
  assert.equal(p.value.options.separate_clip, true);
  assert.deepEqual(p.value.rows.map((r) => [r.lora, r.on, r.strength, r.strength_clip]),
                   [["a.safetensors", true, 0.8, 1.0], ["sub/b.safetensors", false, 1.0, 1.0]]);
  assert.equal(p.value.rows[0].iclora, true);
  assert.equal(p.value.rows[1].hash, "ab12");
  // ids derive from the position, so parsing twice gives the same ids
  assert.deepEqual(R.parseStack(TODAY).value.rows.map((r) => r.id), p.value.rows.map((r) => r.id));
});

test("v2 round trip: serialize → parse gives the same stack; strength_clip is null without the CLIP column", () => {
  let v = R.addRow(R.emptyStack(), "x.safetensors");
  v = R.addRow(v, "y/z.safetensors", "ff00");
  const text = R.serializeStack(v);
  const data = JSON.parse(text);
  assert.equal(data.version, 2);
  assert.deepEqual(data.options, { separate_clip: false });
  assert.equal(data.rows[0].strength_clip, null);
  assert.match(data.rows[0].id, /^r-[0-9a-f]{8}$/);
  assert.equal(data.rows[1].hash, "ff00");
  const again = R.parseStack(text);
  assert.equal(again.source, "v2");
  assert.equal(R.serializeStack(again.value), text);
});

test("edits: move, toggle all, strengths clamp to the sliders' range, CLIP column starts at strength", () => {
  let v = R.parseStack(TODAY).value;
  const [a, b] = v.rows.map((r) => r.id);
  v = R.moveRow(v, b, -1);
  assert.deepEqual(v.rows.map((r) => r.id), [b, a]);
  v = R.moveRowTo(v, b, 5);
  assert.deepEqual(v.rows.map((r) => r.id), [a, b]);
  v = R.toggleAll(v);  // mixed → all on
  assert.deepEqual(v.rows.map((r) => r.on), [true, true]);
  v = R.toggleAll(v);
  assert.deepEqual(v.rows.map((r) => r.on), [false, false]);
  v = R.setStrength(v, a, "strength", 1e30);
  assert.equal(v.rows[0].strength, R.STRENGTH_MAX);
  assert.equal(R.setStrength(v, a, "strength", NaN), v);  // not a number: no change
  v = R.setStrength(v, a, "strength", 0.12345);
  assert.equal(v.rows[0].strength, 0.123);
  v = R.setSeparateClip(v, false);
  assert.equal(v.rows[0].strength_clip, null);
  v = R.setSeparateClip(v, true);
  assert.equal(v.rows[0].strength_clip, 0.123);
  v = R.setLora(R.removeRow(v, b), a, "new.safetensors");
  assert.deepEqual(v.rows.map((r) => r.lora), ["new.safetensors"]);
});

test("A1111 tags and bad text", () => {
  const p = R.parseStack("<lora:foo:0.8> and <lora:bar:1:0.5>");
  assert.equal(p.source, "tags");
  assert.deepEqual(p.value.rows.map((r) => [r.lora, r.strength, r.strength_clip]), [["foo", 0.8, 0.8], ["bar", 1, 0.5]]);
  assert.equal(R.parseStack("[{").source, "invalid");
  assert.equal(R.parseStack('{"x": 1}').source, "invalid");
  assert.equal(R.parseStack("just words").value, null);
  assert.equal(R.parseStack("").source, "empty");
});

test("fuzzy search across folders, grouped by folder", () => {
  assert.equal(fuzzyScore("zz", "abc"), null);
  assert.ok(fuzzyScore("stya", "anime/style_a.safetensors") > fuzzyScore("stya", "s/t/y/a.safetensors"));
  const files = ["anime/style_a.safetensors", "anime/chars/char_b.safetensors", "detail_c.safetensors"]
    .map((name) => ({ name, folder: name.includes("/") ? name.slice(0, name.lastIndexOf("/")) : "",
                      family: null, format: null, preview: null }));
  assert.deepEqual(searchGroups(files, "").map((g) => g.folder), ["", "anime", "anime/chars"]);
  assert.deepEqual(searchGroups(files, "chars b").map((g) => g.items.map((f) => f.name)),
                   [["anime/chars/char_b.safetensors"]]);
});

test("info panel helpers: trigger words in any shape, ranges from metadata or notes", async () => {
  const { triggerWords, recommendedRange } = await import("../../../web/patchbay/info_panel.js");
  const { asRange } = await import("../../../web/patchbay/notes.js");
  assert.deepEqual(triggerWords(["a", ["b", 3], { word: "c", count: "2" }, 7, ""]),
                   [["a", null], ["b", 3], ["c", 2], ["7", null]]);
  assert.deepEqual(triggerWords(null), []);
  assert.deepEqual(recommendedRange({ metadata: { recommended_strength: { min: 0.4, max: 0.9 } } }), { min: 0.4, max: 0.9 });
  assert.equal(recommendedRange({ metadata: {} }), null);
  assert.deepEqual(asRange({ min: "0.2", max: "1.2" }), { min: 0.2, max: 1.2 });
  assert.equal(asRange({ min: 2, max: 1 }), null);
  assert.equal(asRange({ min: "x", max: 1 }), null);
});
