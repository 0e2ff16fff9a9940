"""A slider change inside ComfyUI rewrites only the parameters whose contributions changed.

Run in a child process per installed ComfyUI (no server), on a model built
from ``comfy.ops`` layers so ComfyUI's lowvram path (``LowVramPatch``) is real.
Checks, each against a fresh full load of the same clone (unpatch, re-patch):

* sibling clones with the same Patchbay keys share one ``patches_uuid``; a
  quarter-LoRA slider change rewrites only its one parameter, bit-identical;
* the host's unpatch gives back the base weights bit for bit;
* two branches on one base, alternately loaded, each get exactly their own
  weights (never each other's LoRAs);
* a lone LoRA's slider move re-uses its cached product ``B·A`` (no GEMM), exactly;
* lowvram: the per-forward patches follow the loaded clone;
* a key with core's LoRA patch before ours is rewritten through core's maths;
* a different key set gets a fresh uuid (ComfyUI's full re-patch);
* an accelerator's ΔW cache is on by default with a free-memory policy, and
  ComfyUI's ``free_memory`` takes it (and that device's factors) back first.
"""
from __future__ import annotations

import textwrap

import pytest

import comfy_harness as ch


CHILD = textwrap.dedent(r'''
import folder_paths, comfy.lora, comfy.ops, comfy.model_patcher, comfy.model_management as mm
from safetensors.torch import save_file
merge = sys.modules["lora-patchbay.nodes.host.merge"]
Loader = pack.NODE_CLASS_MAPPINGS["PatchbayLoraLoader"]
out = {}
d = tempfile.mkdtemp()
folder_paths.folder_names_and_paths["loras"] = ([d], {".safetensors"})
N, L = 32, 4
def lora(rank, layers, seed):
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for i in layers:
        k = f"lora_unet_blocks_{i}"
        sd[k + ".lora_up.weight"] = (torch.randn(N, rank, generator=g) * 0.1).half()
        sd[k + ".lora_down.weight"] = (torch.randn(rank, N, generator=g) * 0.1).half()
        sd[k + ".alpha"] = torch.tensor(rank / 2.0)
    return sd
files = {"a": lora(4, range(L), 1), "b": lora(8, range(L), 2), "q": lora(2, range(1), 3), "h": lora(2, range(2), 4)}
for n_, sd in files.items():
    save_file(sd, os.path.join(d, n_ + ".safetensors"))
KEYMAP = {f"lora_unet_blocks_{i}": f"diffusion_model.blocks.{i}.weight" for i in range(L)}

class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.diffusion_model = torch.nn.Module()
        self.diffusion_model.blocks = torch.nn.ModuleList(
            [comfy.ops.disable_weight_init.Linear(N, N, dtype=torch.float16) for _ in range(L)])
    def forward(self, x):
        for b in self.diffusion_model.blocks:
            x = b(x)
        return x
torch.manual_seed(0)
net = Net()
with torch.no_grad():
    for b in net.diffusion_model.blocks:
        b.weight.normal_(0, 0.2); b.bias.normal_(0, 0.1)
cpu = torch.device("cpu")
base = comfy.model_patcher.ModelPatcher(net, cpu, cpu)
orig = {k: v.clone() for k, v in net.state_dict().items()}
rewrites = []
real_rewrite = merge._rewrite
def counting(patcher, key, param, w0):
    rewrites.append(key); return real_rewrite(patcher, key, param, w0)
merge._rewrite = counting

def ours(p, name, s):
    return Loader().load(p, name + ".safetensors", s, 1.0, True, "merge")[0]
def core(p, name, s):
    n = p.clone(); n.add_patches(comfy.lora.load_lora(dict(files[name]), dict(KEYMAP), log_missing=False), s); return n
def load(p):
    with torch.inference_mode():  # as ComfyUI's executor runs every node
        mm.load_models_gpu([p], force_full_load=True)
        return {k: v.clone() for k, v in net.state_dict().items()}
def fresh(p):
    load(base)  # a different uuid: ComfyUI restores every backup
    return load(p)
def same(x, y):
    return all(torch.equal(x[k], y[k]) for k in y)

up = ours(ours(base, "a", 0.7), "b", -0.4)
P = ours(up, "q", 0.5)
Q = ours(up, "q", 0.6)
out["same_uuid"] = P.patches_uuid == Q.patches_uuid
wp = load(P)
rewrites.clear()
wq = load(Q)
out["slider_rewrites"] = sorted(rewrites)
out["slider_exact"] = same(wq, fresh(Q))
out["slider_changed"] = not torch.equal(wq[KEYMAP["lora_unet_blocks_0"]], wp[KEYMAP["lora_unet_blocks_0"]])
out["slider_others_kept"] = all(torch.equal(wq[k], wp[k]) for k in wq if "blocks.0.weight" not in k)
R = ours(up, "q", 0.8)  # a slider change loaded outside inference_mode (e.g. a training node)
with torch.no_grad():
    mm.load_models_gpu([R], force_full_load=True)
    wr = {k: v.clone() for k, v in net.state_dict().items()}
out["outside_inference_exact"] = same(wr, fresh(R))
# another key set outside inference_mode: ComfyUI's own patch path, recycling ΔW memory made inside it
T = ours(base, "q", 0.9)
with torch.no_grad():
    mm.load_models_gpu([T], force_full_load=True)
    wt = {k: v.clone() for k, v in net.state_dict().items()}
out["outside_inference_full_patch_exact"] = same(wt, fresh(T))
out["unpatch_exact"] = same(load(base), orig)

# two branches on one base, same keys: alternate
A, B = ours(base, "a", 0.7), ours(base, "a", -0.3)
out["branches_same_uuid"] = A.patches_uuid == B.patches_uuid
fa, fb = fresh(A), fresh(B)
ok = True
for p, ref in ((A, fa), (B, fb), (A, fa), (B, fb)):
    ok = ok and same(load(p), ref)
out["branches_exact"] = ok
out["branches_differ"] = not same(fa, fb)

# a lone LoRA's slider: its strength-free product B·A is cached, so the move runs no GEMM
products = []
real_plain = merge._plain_delta
def counting_plain(*a, **k):
    products.append(a[0]); return real_plain(*a, **k)
merge._plain_delta = counting_plain
S1, S2 = ours(base, "a", 0.45), ours(base, "a", -0.85)
load(S1); rewrites.clear(); products.clear()
ws2 = load(S2)
out["lone_rewrites"], out["lone_products"] = len(rewrites), len(products)
out["lone_exact"] = same(ws2, fresh(S2))
merge._plain_delta = real_plain

# core patch before ours on the same key: rewritten through core's maths
C = core(base, "b", 0.5)
M1, M2 = ours(C, "a", 0.7), ours(C, "a", 0.2)
load(M1); rewrites.clear()
wm2 = load(M2)
out["mixed_rewrites"] = len(rewrites)
out["mixed_exact"] = same(wm2, fresh(M2))

# a different key set: fresh uuid, full re-patch by ComfyUI
out["keyset_new_uuid"] = ours(base, "h", 0.5).patches_uuid != ours(base, "q", 0.5).patches_uuid

# lowvram: every module patched per forward; the patches must follow the loaded clone
x = torch.randn(3, N).half()
def lowvram(p, first):
    if first:
        load(base); mm.unload_all_models()
    with torch.inference_mode():
        if first:
            p.patch_model(cpu, lowvram_model_memory=1)
        else:
            p.partially_load(cpu, extra_memory=1)
        return net(x).clone(), net.diffusion_model.blocks[0].weight_function
mm.unload_all_models()
yp, wf = lowvram(P, True)
out["lowvram_used"] = len(wf) == 1
P.detach(unpatch_all=False)
yq, _ = lowvram(Q, False)
Q.detach(unpatch_all=True)
yq_fresh, _ = lowvram(Q, True)
Q.detach(unpatch_all=True)
out["lowvram_follows_clone"] = torch.equal(yq, yq_fresh)
out["lowvram_differs"] = not torch.equal(yq, yp)
out["lowvram_unpatch_exact"] = same({k: v.clone() for k, v in net.state_dict().items()}, orig)
# a lone LoRA per forward: the cached product, scaled, as in a full load
ys1, _ = lowvram(S1, True)
S1.detach(unpatch_all=False)
ys2, _ = lowvram(S2, False)
S2.detach(unpatch_all=True)
ys2_fresh, _ = lowvram(S2, True)
S2.detach(unpatch_all=True)
out["lowvram_lone"] = [torch.equal(ys2, ys2_fresh), not torch.equal(ys2, ys1)]
# accelerators get a ΔW cache whose budget follows free memory (no GPU needed to build it)
gc = merge._delta_cache(torch.device("cuda", 0))
out["gpu_cache_policy"] = (gc is not None and gc.policy is not None and gc.policy.fraction == 0.25
                           and gc.policy.reserve >= 1 << 30)
merge.DELTA_CACHES.pop("cuda:0", None)

# memory pressure: ComfyUI's free_memory takes our accelerator caches back before it unloads a model
meta = torch.device("meta")  # an accelerator stand-in: tensors with sizes and no memory
free0, MiB = 2 << 30, 1 << 20
real_gfm = mm.get_free_memory
mc = merge._delta_cache(meta)
def meta_bytes():
    return mc.bytes + sum(t.numel() * t.element_size() for k in list(merge.FACTOR_CACHE._items)
                          for t in merge.FACTOR_CACHE._items[k][0] if t.device == meta)
start = [0]
def fake_free(dev=None, torch_free_too=False):
    f = free0 + start[0] - meta_bytes()
    return (f, 0) if torch_free_too else f
mm.get_free_memory = fake_free
for i in range(4):
    mc.put((f"pressure.{i}.weight", i), torch.empty(MiB // 4, device=meta))
merge.FACTOR_CACHE.put(("pressure", meta), (torch.empty(MiB // 4, device=meta),))
merge.FACTOR_CACHE.put(("pressure", "cpu"), (torch.empty(MiB // 4),))
start[0] = meta_bytes()
merge._release_before_unloading()  # a second install wraps nothing more
orig_fm = getattr(mm.free_memory, "_patchbay_original", None)
out["pressure_wrapped_once"] = orig_fm is not None and getattr(orig_fm, "_patchbay_original", None) is None
mm.free_memory(free0 // 2, meta)
out["pressure_fits_keeps"] = meta_bytes() == start[0]
mm.free_memory(free0 + 2 * MiB + MiB // 2, meta)
out["pressure_gives_the_shortfall"] = [start[0] - meta_bytes() >= 2 * MiB + MiB // 2, mc.bytes > 0]
mm.free_memory(free0 + 64 * MiB, meta)
out["pressure_gives_all_of_that_device"] = [meta_bytes(), ("pressure", "cpu") in merge.FACTOR_CACHE]
mm.get_free_memory = real_gfm
merge.DELTA_CACHES.pop("meta", None)
print("RESULT " + json.dumps(out))
''')


@pytest.fixture(scope="session")
def sync_result(comfy_install):
    return ch.run_pack_child(comfy_install, CHILD, timeout=300)


def test_slider_change_rewrites_only_the_changed_parameter_bit_exactly(sync_result):
    assert sync_result["same_uuid"] is True
    assert sync_result["slider_rewrites"] == ["diffusion_model.blocks.0.weight"]
    assert sync_result["slider_exact"] is True
    assert sync_result["slider_changed"] is True and sync_result["slider_others_kept"] is True


def test_sync_outside_inference_mode_is_exact_too(sync_result):
    assert sync_result["outside_inference_exact"] is True


def test_full_patch_outside_inference_mode_recycles_no_inference_memory(sync_result):
    assert sync_result["outside_inference_full_patch_exact"] is True


def test_unpatch_gives_back_the_base_bit_for_bit(sync_result):
    assert sync_result["unpatch_exact"] is True
    assert sync_result["lowvram_unpatch_exact"] is True


def test_branches_on_one_base_never_see_each_others_loras(sync_result):
    assert sync_result["branches_same_uuid"] is True
    assert sync_result["branches_exact"] is True
    assert sync_result["branches_differ"] is True


def test_a_lone_loras_slider_runs_no_gemm_and_stays_exact(sync_result):
    assert sync_result["lone_rewrites"] == 4      # every parameter's contribution changed
    assert sync_result["lone_products"] == 0      # served from the cached product B·A
    assert sync_result["lone_exact"] is True


def test_core_patch_on_the_same_key_goes_through_cores_maths(sync_result):
    assert sync_result["mixed_rewrites"] == 4
    assert sync_result["mixed_exact"] is True


def test_another_key_set_gets_a_fresh_uuid(sync_result):
    assert sync_result["keyset_new_uuid"] is True


def test_lowvram_patches_follow_the_loaded_clone(sync_result):
    assert sync_result["lowvram_used"] is True
    assert sync_result["lowvram_differs"] is True
    assert sync_result["lowvram_follows_clone"] is True
    assert sync_result["lowvram_lone"] == [True, True]


def test_accelerator_delta_cache_follows_free_memory(sync_result):
    assert sync_result["gpu_cache_policy"] is True


def test_under_memory_pressure_our_caches_give_way_before_comfyui_unloads_a_model(sync_result):
    assert sync_result["pressure_wrapped_once"] is True
    assert sync_result["pressure_fits_keeps"] is True
    assert sync_result["pressure_gives_the_shortfall"] == [True, True]   # the shortfall, not everything
    assert sync_result["pressure_gives_all_of_that_device"] == [0, True]  # another device's factors stay
