"""Host behaviour that needs object identity or ComfyUI internals, run in a child
process that imports each installed ComfyUI directly (no server).

Checks: strength 0 / disabled return the very input objects; ΔW cache hits
are bit-identical to fresh computes; two branches on one base keep their own
weights and the base is restored bit-exactly; LowVramPatch (per-forward)
gives the merged result in the compute dtype; chained bypass loaders form
one injection whose eject restores the module; our patches compose with
core's LoRA patches; results equal core's maths within fp rounding.
"""
from __future__ import annotations

import textwrap

import pytest

import comfy_harness as ch


CHILD = textwrap.dedent(r'''
import folder_paths, comfy.lora, comfy.utils, comfy.model_patcher, comfy.model_management as mm
from safetensors.torch import save_file
host = sys.modules["lora-patchbay.nodes.host"]
Loader = pack.NODE_CLASS_MAPPINGS["PatchbayLoraLoader"]
out = {}

d = tempfile.mkdtemp()
folder_paths.folder_names_and_paths["loras"] = ([d], {".safetensors"})
N, L = 48, 4
g = torch.Generator().manual_seed(0)
def lora(rank, layers, seed, fused=False):
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for i in layers:
        k = f"lora_unet_blocks_{i}"
        sd[k + ".lora_up.weight"] = (torch.randn(N, rank, generator=g) * 0.1).half()
        sd[k + ".lora_down.weight"] = (torch.randn(rank, N, generator=g) * 0.1).half()
        sd[k + ".alpha"] = torch.tensor(rank / 2.0)
    return sd
files = {"a": lora(4, range(L), 1), "b": lora(8, range(L), 2), "q": lora(2, range(1), 3)}
for n_, sd in files.items():
    save_file(sd, os.path.join(d, n_ + ".safetensors"))
# an IC-LoRA (small-grid, k = 2) whose metadata must not hide behind later rows
save_file(lora(2, range(1), 4), os.path.join(d, "ic.safetensors"), metadata={"reference_downscale_factor": "2"})

class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.diffusion_model = torch.nn.Module()
        self.diffusion_model.blocks = torch.nn.ModuleList([torch.nn.Linear(N, N) for _ in range(L)])
    def forward(self, x):
        for b in self.diffusion_model.blocks:
            x = b(x)
        return x
net = Net().half()
cpu = torch.device("cpu")
base = comfy.model_patcher.ModelPatcher(net, cpu, cpu)
orig = {k: v.clone() for k, v in net.state_dict().items()}
KEYMAP = {f"lora_unet_blocks_{i}": f"diffusion_model.blocks.{i}.weight" for i in range(L)}

def weights(p):
    mm.load_models_gpu([p], force_full_load=True)
    return {k: v.clone() for k, v in net.state_dict().items()}
def core(p, name, s):
    n = p.clone(); n.add_patches(comfy.lora.load_lora(dict(files[name]), dict(KEYMAP), log_missing=False), s); return n
def ours(p, name, s, mode="merge", enabled=True):
    return Loader().load(p, name + ".safetensors", s, 1.0, enabled, mode)[0]

# identity
out["zero_is_input"] = ours(base, "a", 0.0) is base
out["disabled_is_input"] = ours(base, "a", 1.0, enabled=False) is base

# vs core, chained stack (one adapter per key)
A = ours(ours(base, "a", 0.7), "b", -0.4)
C = core(core(base, "a", 0.7), "b", -0.4)
out["one_adapter_per_key"] = all(len(A.patches[k]) == 1 for k in A.patches)
wa = weights(A); wc = weights(C)
w0 = {k: orig[k].float() for k in orig}
out["rel_err_vs_core"] = max(((wa[k].float() - wc[k].float()).abs().max() /
                             (wc[k].float() - w0[k]).abs().max().clamp_min(1e-12)).item()
                            for k in KEYMAP.values())

# cache exactness: warm result == fresh result with every cache cleared
hits0 = host.DELTA_CACHES["cpu"].hits
A2 = ours(ours(base, "a", 0.7), "b", -0.4)
wa2 = weights(A2)
out["cache_hit"] = host.DELTA_CACHES["cpu"].hits > hits0
host.clear_caches()
wa3 = weights(ours(ours(base, "a", 0.7), "b", -0.4))
out["cache_bit_identical"] = all(torch.equal(wa2[k], wa3[k]) and torch.equal(wa[k], wa3[k]) for k in wa)

# two branches + restore
B = ours(base, "q", 1.3)
wb = weights(B)
wa4 = weights(A)
out["branches_differ"] = not torch.equal(wa4[KEYMAP["lora_unet_blocks_0"]], wb[KEYMAP["lora_unet_blocks_0"]])
out["branch_a_stable"] = all(torch.equal(wa4[k], wa[k]) for k in wa)
out["branch_b_only_block0"] = all(torch.equal(wb[k], orig[k]) for k in wb if "blocks.0." not in k)
wbase = weights(base)
out["base_restored"] = all(torch.equal(wbase[k], orig[k]) for k in orig)

# lowvram: LowVramPatch-style call in the compute dtype
key = KEYMAP["lora_unet_blocks_1"]
w16 = orig[key].clone()
lv = comfy.lora.calculate_weight(A.patches[key], w16.clone(), key, intermediate_dtype=torch.float16)
out["lowvram_dtype"] = str(lv.dtype)
out["lowvram_err"] = (lv.float() - wa[key].float()).abs().max().item()

# composing with core: core a then ours b == core a then core b
M = ours(core(base, "a", 0.7), "b", -0.4)
wm = weights(M)
out["mixed_rel_err"] = max(((wm[k].float() - wc[k].float()).abs().max() /
                           (wc[k].float() - w0[k]).abs().max().clamp_min(1e-12)).item() for k in KEYMAP.values())

# bypass: chain of two loaders, one injection, eject restores forward
x = torch.randn(3, N).half()
Y = ours(ours(base, "a", 0.7, "bypass"), "b", -0.4, "bypass")
out["bypass_injections"] = [k for k in Y.injections if k.startswith(host.BYPASS_KEY_PREFIX)]
mm.load_models_gpu([Y], force_full_load=True)
with torch.no_grad():
    yb = net(x).float()
mm.load_models_gpu([A], force_full_load=True)
with torch.no_grad():
    ym = net(x).float()
out["bypass_vs_merge"] = (yb - ym).abs().max().item() / ym.abs().max().item()
mm.load_models_gpu([base], force_full_load=True)
out["bypass_ejected"] = all("forward" not in b.__dict__ for b in net.diffusion_model.blocks)
inj = host.bypass_injection(Y)
mm.load_models_gpu([Y], force_full_load=True)
inj.set_strength(0, 0.0); inj.set_strength(1, 0.0)
with torch.no_grad():
    y0 = net(x).float()
mm.load_models_gpu([base], force_full_load=True)
with torch.no_grad():
    yref = net(x).float()
out["bypass_live_strength_zero"] = (y0 - yref).abs().max().item()
# stack node: A1111 tags, community (name, model, clip) tuple lists, text outputs
Stack = pack.NODE_CLASS_MAPPINGS["PatchbayLoraStack"]; Apply = pack.NODE_CLASS_MAPPINGS["PatchbayApplyLoraStack"]
# the stack nodes return {"ui": {"patchbay_summary": [...]}, "result": (...)}
build = lambda rows: Stack().build(rows)["result"]
apply = lambda *a: Apply().apply(*a)["result"]
st, = build("<lora:a:0.7> <lora:b:-0.4:0.2>")
out["tag_rows"] = [[e.lora, e.strength_model, e.strength_clip] for e in st.entries]
ms, cs, text, words, _ = apply(base, st, "merge")
wst = weights(ms)
out["tags_equal_chain"] = all(torch.equal(wst[k], wa[k]) for k in wa)
out["tags_text"] = text
mt, _, text2, _, _ = apply(base, [("a.safetensors", 0.7, 1.0), ("b.safetensors", -0.4, 1.0)], "merge")
wt = weights(mt)
out["tuples_equal_chain"] = all(torch.equal(wt[k], wa[k]) for k in wa)
out["empty_stack_is_input"] = apply(base, build("[]")[0], "merge")[0] is base
# IC rows: the stack carries the IC-LoRA's own factor even with a plain LoRA after it
ic_rows = json.dumps([{"on": True, "lora": "ic.safetensors", "strength": 1.0, "iclora": True},
                      {"on": True, "lora": "a.safetensors", "strength": 0.5}])
ic = apply(base, build(ic_rows)[0], "merge")[4]
out["ic_factor"] = ic.reference_downscale_factor  # a typed ICLora
out["ic_enabled"] = ic.enabled
ic_off = apply(base, build(ic_rows.replace('"strength": 1.0', '"strength": 0.0'))[0], "merge")[4]
out["ic_zero_enabled"] = ic_off.enabled
print("RESULT " + json.dumps(out))
''')


@pytest.fixture(scope="session")
def child_result(comfy_install):
    return ch.run_pack_child(comfy_install, CHILD, timeout=300)


def test_strength_zero_and_disabled_return_the_input_object(child_result):
    assert child_result["zero_is_input"] is True
    assert child_result["disabled_is_input"] is True


def test_chained_loaders_share_one_adapter_and_match_core(child_result):
    assert child_result["one_adapter_per_key"] is True
    assert child_result["rel_err_vs_core"] < 5e-3  # fp16 storage: one rounding step apart at most
    assert child_result["mixed_rel_err"] < 5e-3


def test_delta_cache_is_bit_identical_to_fresh_compute(child_result):
    assert child_result["cache_hit"] is True
    assert child_result["cache_bit_identical"] is True


def test_branches_keep_their_own_weights_and_base_is_restored(child_result):
    assert child_result["branches_differ"] is True
    assert child_result["branch_a_stable"] is True
    assert child_result["branch_b_only_block0"] is True
    assert child_result["base_restored"] is True


def test_lowvram_patch_keeps_compute_dtype(child_result):
    assert child_result["lowvram_dtype"] == "torch.float16"
    assert child_result["lowvram_err"] <= 2e-3


def test_bypass_chain_is_one_injection_and_ejects(child_result):
    assert len(child_result["bypass_injections"]) == 1
    assert child_result["bypass_vs_merge"] < 5e-3
    assert child_result["bypass_ejected"] is True
    assert child_result["bypass_live_strength_zero"] == 0.0


def test_stack_carries_the_iclora_rows_own_parameters(child_result):
    assert child_result["ic_factor"] == 2
    assert child_result["ic_enabled"] is True
    # strength 0 on the IC row: its guides must be dropped too
    assert child_result["ic_zero_enabled"] is False


def test_stack_accepts_a1111_tags_and_community_stacks(child_result):
    assert child_result["tag_rows"] == [["a", 0.7, 0.7], ["b", -0.4, 0.2]]
    assert child_result["tags_equal_chain"] is True
    assert child_result["tuples_equal_chain"] is True
    assert child_result["tags_text"] == "<lora:a:0.7> <lora:b:-0.4>"
    assert child_result["empty_stack_is_input"] is True
