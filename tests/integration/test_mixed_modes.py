"""Chains of merge, bypass and auto loaders over the same rows give the same model
(issue 8: "a base-dependent kind in bypass next to merged rows gives another model").

A child process imports each installed ComfyUI (no server), writes LyCORIS-style
files of every base-dependent kind (DoRA, OFT, BOFT, IA3 of LyCORIS and of PEFT,
whose bias rule scales the layer bias, GLoRA) plus LoKr and
plain LoRA, and runs the pack's loader in chains of every order and mode through
``load_models_gpu``.  Every chain's output must equal the all-merged chain's
(fp32 model, so the tolerance is fp32 rounding), and the base comes back
bit-identical at the end.
"""
from __future__ import annotations

import textwrap

import pytest

import comfy_harness as ch


CHILD = textwrap.dedent(r'''
import folder_paths, comfy.model_patcher, comfy.model_management as mm
from safetensors.torch import load_file, save_file
Loader = pack.NODE_CLASS_MAPPINGS["PatchbayLoraLoader"]

d = tempfile.mkdtemp()
folder_paths.folder_names_and_paths["loras"] = ([d], {".safetensors"})
N, L, R = 32, 3, 4

def rnd(g, *shape, s=0.2):
    return torch.randn(*shape, generator=g) * s

def module_file(name, seed, make):
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for i in range(L):
        for suffix, t in make(g).items():
            sd[f"lora_unet_blocks_{i}{suffix}"] = t.contiguous()
    save_file(sd, os.path.join(d, name + ".safetensors"))

module_file("lora", 1, lambda g: {".lora_up.weight": rnd(g, N, R), ".lora_down.weight": rnd(g, R, N),
                                  ".alpha": torch.tensor(2.0)})
module_file("lokr", 2, lambda g: {".lokr_w1": rnd(g, 4, 4), ".lokr_w2": rnd(g, 8, 8)})
module_file("dora", 3, lambda g: {".lora_up.weight": rnd(g, N, R), ".lora_down.weight": rnd(g, R, N),
                                  ".alpha": torch.tensor(4.0),
                                  ".dora_scale": torch.rand(N, 1, generator=g) + 0.5})
module_file("oft", 4, lambda g: {".oft_blocks": rnd(g, 4, 8, 8, s=0.3), ".alpha": torch.tensor(0.0)})
module_file("boft", 5, lambda g: {".oft_blocks": rnd(g, 2, 8, 4, 4, s=0.3), ".alpha": torch.tensor(0.0),
                                  ".rescale": torch.rand(N, 1, generator=g) + 0.5})
module_file("ia3", 6, lambda g: {".weight": rnd(g, N, s=0.5), ".on_input": torch.tensor(0)})
module_file("glora", 7, lambda g: {".a1.weight": rnd(g, N, R), ".a2.weight": rnd(g, R, N),
                                   ".b1.weight": rnd(g, N, R), ".b2.weight": rnd(g, R, N),
                                   ".alpha": torch.tensor(2.0)})

# PEFT IA3 (no adapter_config: the (out, 1) shape says output axis): scales the bias too
g = torch.Generator().manual_seed(8)
save_file({f"base_model.model.blocks.{i}.ia3_l": (1 + rnd(g, N, 1, s=0.5)).contiguous() for i in range(L)},
          os.path.join(d, "ia3_peft.safetensors"))

class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.diffusion_model = torch.nn.Module()
        self.diffusion_model.blocks = torch.nn.ModuleList([torch.nn.Linear(N, N) for _ in range(L)])
    def forward(self, x):
        for b in self.diffusion_model.blocks:
            x = torch.tanh(b(x))
        return x

torch.manual_seed(0)
net = Net()
cpu = torch.device("cpu")
base = comfy.model_patcher.ModelPatcher(net, cpu, cpu)
orig = {k: v.clone() for k, v in net.state_dict().items()}
x = torch.randn(6, N, generator=torch.Generator().manual_seed(9))

def run(p):
    with torch.inference_mode():  # as ComfyUI executes nodes: inject and forward inside it
        mm.load_models_gpu([p], force_full_load=True)
        return net(x).clone()

def chain(rows):
    p = base
    for name, s, mode in rows:
        p = Loader().load(p, name + ".safetensors", s, 1.0, True, mode)[0]
    return p

def rel(a, b):
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item()

y_base = run(base)
out = {"cases": {}}
KINDS = ["dora", "oft", "boft", "ia3", "ia3_peft", "glora"]
for kind in KINDS:
    rows = [("lokr", 0.8), (kind, 0.7), ("lora", -0.6)]
    want = run(chain([(n, s, "merge") for n, s in rows]))
    effect = rel(run(chain([(n, s, "merge") for n, s in rows if n != kind])), want)
    orders = {
        "merge,bypass,merge": ["merge", "bypass", "merge"],
        "bypass,merge,merge": ["bypass", "merge", "merge"],
        "merge,merge,bypass": ["merge", "merge", "bypass"],
        "auto,bypass,bypass": ["auto", "bypass", "bypass"],
        "bypass,bypass,bypass": ["bypass", "bypass", "bypass"],
    }
    case = {"effect": effect}
    for label, modes in orders.items():
        case[label] = rel(run(chain([(n, s, m) for (n, s), m in zip(rows, modes)])), want)
    # the row order reversed: bypassed kind first, merged LoKr after
    rev = [(kind, 0.7, "bypass"), ("lokr", 0.8, "merge"), ("lora", -0.6, "auto")]
    case["reversed"] = rel(run(chain(rev)), want)
    out["cases"][kind] = case

# PEFT's bias rule reaches the host's merge: b' = b ⊙ v
mm.load_models_gpu([chain([("ia3_peft", 1.0, "merge")])], force_full_load=True)
v = load_file(os.path.join(d, "ia3_peft.safetensors"))["base_model.model.blocks.0.ia3_l"].flatten()
b_now = net.state_dict()["diffusion_model.blocks.0.bias"].clone()
out["peft_ia3_bias_err"] = rel(b_now, orig["diffusion_model.blocks.0.bias"] * v)

# every base-dependent kind bypassed at once next to merged rows
rows = [("lokr", 0.8, "merge")] + [(k, 0.3, "bypass") for k in KINDS] + [("lora", 0.5, "merge")]
want = run(chain([(n, s, "merge") for n, s, _ in rows]))
out["all_kinds"] = rel(run(chain(rows)), want)
run(base)
out["base_restored"] = all(torch.equal(net.state_dict()[k], orig[k]) for k in orig)
out["base_output_same"] = torch.equal(run(base), y_base)
print("RESULT " + json.dumps(out))
''')


@pytest.fixture(scope="session")
def mixed_result(comfy_install):
    return ch.run_pack_child(comfy_install, CHILD, timeout=300)


TOL = 1e-4  # fp32 model: rounding only


@pytest.mark.parametrize("kind", ["dora", "oft", "boft", "ia3", "ia3_peft", "glora"])
def test_any_chain_of_modes_equals_all_merged(mixed_result, kind):
    case = mixed_result["cases"][kind]
    assert case["effect"] > 1e-2, case  # the kind's row really changes the model
    bad = {label: err for label, err in case.items() if label != "effect" and err > TOL}
    assert not bad, f"{kind}: chains differ from all-merged by {bad} (row effect {case['effect']:.3g})"


def test_peft_ia3_scales_the_layer_bias_in_the_host(mixed_result):
    assert mixed_result["peft_ia3_bias_err"] <= TOL


def test_every_kind_bypassed_next_to_merged_rows(mixed_result):
    assert mixed_result["all_kinds"] <= TOL


def test_base_is_bit_identical_afterwards(mixed_result):
    assert mixed_result["base_restored"] is True
    assert mixed_result["base_output_same"] is True
