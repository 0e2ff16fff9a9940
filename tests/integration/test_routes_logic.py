"""The /patchbay route handlers' logic without a server: the pack imported into a
plain Python process next to each installed ComfyUI, its functions called directly.

Checks: the cache by path+mtime+size (a second list is all hits, an edited file
is re-read), the name gate's statuses, preview precedence, JSON that holds no
markup characters and no NaN, the run summary text, the bounded coverage log,
and registration once on a route table.
"""
from __future__ import annotations

import json
import textwrap

import pytest

from comfy_harness import discover_installs, run_pack_child

CHILD = textwrap.dedent(r'''
from safetensors.torch import save_file
routes = sys.modules["lora-patchbay.nodes.routes"]
cov = sys.modules["lora-patchbay.nodes.coverage"]
stack_mod = sys.modules["lora-patchbay.lora_core.stack"]
out = {}
d = tempfile.mkdtemp()
folder_paths.folder_names_and_paths["loras"] = ([d], {".safetensors"})
os.makedirs(os.path.join(d, "sub"))
def lora(path, seed):
    g = torch.Generator().manual_seed(seed)
    k = "lora_unet_input_blocks_1_1_transformer_blocks_0_attn2_to_k"
    save_file({k + ".lora_up.weight": torch.randn(320, 4, generator=g),
               k + ".lora_down.weight": torch.randn(4, 768, generator=g),
               k + ".alpha": torch.tensor(4.0)}, path, metadata={"modelspec.title": "<b>x</b>", "n": "nan"})
lora(os.path.join(d, "sub", "a.safetensors"), 1)
lora(os.path.join(d, "b.safetensors"), 2)
for name in ("sub/a.png", "sub/a.preview.webp", "b.jpg"):
    open(os.path.join(d, name), "wb").write(b"img")

api = sys.modules["lora-patchbay.lora_core.api"]
cached_files = len(api.FILE_CACHE)
first = routes.list_loras()
hits, misses = routes.CACHE.hits, routes.CACHE.misses
second = routes.list_loras()
out["same_list"] = first == second
out["second_all_hits"] = [routes.CACHE.hits - hits, routes.CACHE.misses - misses]
time.sleep(0.01)
lora(os.path.join(d, "b.safetensors"), 3)  # edited: new mtime (and same size)
misses = routes.CACHE.misses
routes.list_loras()
out["edited_reread"] = routes.CACHE.misses - misses
out["file_cache_growth"] = len(api.FILE_CACHE) - cached_files  # listing keeps no parsed files
out["list"] = first
out["preview_a"] = os.path.basename(routes.preview_path(os.path.join(d, "sub", "a.safetensors"))[0])
out["preview_b"] = routes.preview_path(os.path.join(d, "b.safetensors"))[1]
statuses = {}
for name in ("../x.safetensors", "/etc/passwd", "", None, "sub/zz.safetensors", "sub/a.png", "sub\\a.safetensors"):
    try:
        routes.gate(name)
        statuses[repr(name)] = 200
    except routes.RouteError as e:
        statuses[repr(name)] = e.status
out["gate"] = statuses
out["json_text"] = routes.json_text({"t": "<script>&</script>", "x": float("nan"), "i": [float("inf"), 1.5]})
out["inspect_title"] = routes.inspect_lora("sub/a.safetensors")["metadata"]["title"]
out["resolve"] = [routes.resolve_row("elsewhere/a.safetensors"), routes.resolve_row("gone.safetensors")]
S = stack_mod.LoraStack(tuple(stack_mod.StackEntry(f"{i}.safetensors", enabled=i < 3) for i in range(5)))
out["summary"] = cov.stack_summary(S, [{"matched": 600, "unmatched": 12}, {"matched": 12, "unmatched": 0}], 1)
out["summary_no_keys"] = cov.stack_summary(S, [], 0)["text"]
log = cov.CoverageLog(max_files=2)
for n in ("a", "b", "c"):
    log.record([n], {})
out["log_kept"] = [log.get(n) is not None for n in ("a", "b", "c")]
from aiohttp import web
table = web.RouteTableDef()
out["register"] = [routes.register(table), routes.register(table), sorted(r.path for r in table)]
out["register_no_server"] = routes.register()
print("RESULT " + json.dumps(out))
''')


@pytest.fixture(scope="module", params=discover_installs() or [None], ids=lambda i: i.id if i else "none")
def result(request):
    inst = request.param
    if inst is None:
        pytest.skip("no ComfyUI found")
    return run_pack_child(inst, CHILD)


def test_list_is_cached_by_path_mtime_and_size(result):
    assert result["same_list"]
    assert result["second_all_hits"] == [2, 0]
    assert result["edited_reread"] == 1
    assert result["file_cache_growth"] == 0
    names = [i["name"] for i in result["list"]["loras"]]
    assert names == ["b.safetensors", "sub/a.safetensors"]
    a = result["list"]["loras"][1]
    assert a["folder"] == "sub" and a["family"] == "sd1" and a["preview"] == "/patchbay/preview?name=sub%2Fa.safetensors"


def test_preview_precedence(result):
    assert result["preview_a"] == "a.preview.webp"
    assert result["preview_b"] == "image/jpeg"


def test_name_gate(result):
    assert result["gate"] == {"'../x.safetensors'": 400, "'/etc/passwd'": 400, "''": 400, "None": 400,
                              "'sub/zz.safetensors'": 404, "'sub/a.png'": 404, "'sub\\\\a.safetensors'": 200}


def test_json_text_has_no_markup_and_no_nan(result):
    text = result["json_text"]
    assert "<" not in text and ">" not in text and "&" not in text and "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {"t": "<script>&</script>", "x": None, "i": [None, 1.5]}
    assert result["inspect_title"] == "<b>x</b>"


def test_resolve(result):
    assert result["resolve"] == [{"name": "sub/a.safetensors", "by": "basename"}, {"name": None, "by": None}]


def test_summary_and_coverage_log(result):
    assert result["summary"] == {"on": 3, "total": 5, "matched": 612, "keys": 624, "missing": 1,
                                 "text": "3 of 5 on · 612 of 624 keys matched · 1 missing"}
    assert result["summary_no_keys"] == "3 of 5 on"
    assert result["log_kept"] == [False, True, True]


def test_register_once(result):
    assert result["register"] == [True, False, ["/patchbay/coverage", "/patchbay/inspect", "/patchbay/loras",
                                                "/patchbay/preview", "/patchbay/resolve"]]
    assert result["register_no_server"] is False
