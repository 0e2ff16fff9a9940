"""Randomized chains through a real ComfyUI server (issue 8), on every installed version.

One server per version, started by this file with a test-only probe pack in
its own ``custom_nodes`` and small cache budgets (so the caches evict during
the run).  Many prompts of random chains over the tiny SD1.5 UNet: LoRA
Loader, LoRA Stack → Apply LoRA Stack and LoRA Stack Loader nodes, modes
merge / bypass / auto, random strengths (0 and negative included), rows off
and loaders disabled, files of every adapter kind the engine supports (LoRA,
LoCon, LoHa, LoKr, DoRA, OFT, BOFT, IA3, GLoRA, full diff), two files per
kind written here in the kohya/LyCORIS layouts and one written by lycoris-lora
itself (``create_lycoris`` on a mirror of the probed modules; the oracle is
checked against lycoris' own forward on those); interleaved with bad requests (unknown names,
traversal, NaN and huge strengths, malformed rows, a corrupt file) that must
be refused with a clear message while the server keeps serving.

Checks per prompt:
* the chain's weights, read back through the probe node, equal a from-scratch
  merge of its merge/auto rows against W0 computed here with lora_core on the
  base state dict (plain LoRA rows also against ``W0 + s·α/r·up·down``);
* its all-merge twin's weights equal the from-scratch merge of all its rows;
* the chain's sampled latent equals the twin's (bypass rows included);
* every cache of the pack stays within its byte bound.
At the end the base is bit-identical to the file and RSS growth is bounded.

Seed: random per run, written to the terminal (even under ``-q``) and named by every failure;
``PATCHBAY_RANDOM_SEED=N`` replays a run, ``PATCHBAY_RANDOM_PROMPTS=N`` sets
how many chain prompts run (default 24) for longer soaks.
"""
from __future__ import annotations

import json
import logging
import os
import random
import uuid
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import comfy_harness as ch
from comfy_harness import Graph, PromptRejected, latent_stats

SEED = int(os.environ.get("PATCHBAY_RANDOM_SEED") or random.SystemRandom().randrange(1, 2**31))
PROMPTS = int(os.environ.get("PATCHBAY_RANDOM_PROMPTS") or 24)
REPLAY = f"(PATCHBAY_RANDOM_SEED={SEED} replays this run)"

# small budgets so that eviction happens within a short run
CACHE_ENV = {"PATCHBAY_DELTA_CACHE_MB": "3", "PATCHBAY_FACTOR_CACHE_MB": "1", "PATCHBAY_ROUTE_CACHE_MB": "1"}
RSS_GROWTH_LIMIT = 256 << 20

BLOCK = "input_blocks.1.1.transformer_blocks.0"
Q = f"{BLOCK}.attn1.to_q"          # (320, 320)
OUT = f"{BLOCK}.attn1.to_out.0"    # (320, 320) + bias
K2 = f"{BLOCK}.attn2.to_k"         # (320, 768)
CONV = "input_blocks.1.0.in_layers.2"  # (320, 320, 3, 3) + bias
PROBE_FILTER = ",".join([Q, OUT, K2, CONV])

PROBE_PACK = "patchbay_random_probe"
PROBE_SOURCE = r'''
"""Test-only probe for test_randomized_chains.py: patched weights to a file, cache sizes, RSS."""
import os, sys
import torch
from safetensors.torch import save_file


def _caches():
    out = {}
    for name, mod in list(sys.modules.items()):
        if name.endswith("lora_core.api") and hasattr(mod, "FILE_CACHE"):
            c = mod.FILE_CACHE
            out["parsed_files"] = [c.bytes, c.max_bytes, len(c)]
        elif name.endswith("nodes.host.merge") and hasattr(mod, "DELTA_CACHES"):
            for dev, c in dict(mod.DELTA_CACHES).items():
                out["delta:" + str(dev)] = [c.bytes, c.max_bytes, len(c)]
            out["factors"] = [mod.FACTOR_CACHE.bytes, mod.FACTOR_CACHE.max_bytes, len(mod.FACTOR_CACHE)]
        elif name.endswith("nodes.routes") and hasattr(mod, "CACHE") and hasattr(mod.CACHE, "max_bytes"):
            out["routes"] = [mod.CACHE.bytes, mod.CACHE.max_bytes, len(mod.CACHE)]
    return out


def _rss():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


class PatchbayRandomProbe:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MODEL",), "key_filter": ("STRING", {"default": ""}),
                             "tag": ("STRING", {"default": ""})}}
    RETURN_TYPES = ()
    FUNCTION = "run"
    OUTPUT_NODE = True
    CATEGORY = "patchbay_test"

    def run(self, model, key_filter, tag):
        import comfy.model_management as mm
        import folder_paths
        mm.load_models_gpu([model], force_full_load=True)
        sd = model.model.state_dict()
        subs = [s for s in key_filter.split(",") if s]
        keep = {k: v.detach().float().cpu().contiguous().clone() for k, v in sd.items()
                if any(s in k for s in subs)}
        d = os.path.join(folder_paths.get_output_directory(), "random_probe")
        os.makedirs(d, exist_ok=True)
        path = os.path.join(d, tag + ".safetensors")
        save_file(keep, path)
        return {"ui": {"probe": [{"file": path, "caches": _caches(), "rss": _rss()}]}}


NODE_CLASS_MAPPINGS = {"PatchbayRandomProbe": PatchbayRandomProbe}
'''


# ---------------------------------------------------------------- LoRA files of every kind

def _kind_tensors(kind: str, g: torch.Generator) -> dict:
    """Kohya/LyCORIS-layout tensors of one kind on a few modules of the tiny SD1.5 UNet."""
    def r(*shape, s=0.05):
        return torch.randn(*shape, generator=g) * s

    def lora(out, inp, rank=4, conv=False):
        down = r(rank, inp, 3, 3) if conv else r(rank, inp)
        up = r(out, rank, 1, 1) if conv else r(out, rank)
        return {".lora_down.weight": down, ".lora_up.weight": up, ".alpha": torch.tensor(float(rank) / 2)}

    mods: dict = {}
    if kind == "lora":
        mods = {Q: lora(320, 320), K2: lora(320, 768, 8)}
    elif kind == "locon":
        mods = {OUT: lora(320, 320), CONV: lora(320, 320, 4, conv=True)}
    elif kind == "loha":
        mods = {Q: {".hada_w1_a": r(320, 4, s=0.2), ".hada_w1_b": r(4, 320, s=0.2), ".hada_w2_a": r(320, 4, s=0.2),
                    ".hada_w2_b": r(4, 320, s=0.2), ".alpha": torch.tensor(4.0)},
                CONV: {".hada_w1_a": r(320, 4, s=0.1), ".hada_w1_b": r(4, 320 * 9, s=0.1),
                       ".hada_w2_a": r(320, 4, s=0.1), ".hada_w2_b": r(4, 320 * 9, s=0.1),
                       ".alpha": torch.tensor(4.0)}}
    elif kind == "lokr":
        mods = {Q: {".lokr_w1": r(16, 16, s=0.1), ".lokr_w2": r(20, 20, s=0.1)},
                K2: {".lokr_w1": r(16, 16, s=0.1), ".lokr_w2": r(20, 48, s=0.1)}}
    elif kind == "dora":
        mods = {}
        for m, (o, i) in ((Q, (320, 320)), (K2, (320, 768))):
            t = lora(o, i)
            t[".dora_scale"] = torch.rand(o, 1, generator=g) * 0.5 + 0.5
            mods[m] = t
    elif kind == "oft":
        mods = {Q: {".oft_blocks": r(8, 40, 40, s=0.02), ".alpha": torch.tensor(0.0)},
                OUT: {".oft_blocks": r(8, 40, 40, s=0.02), ".alpha": torch.tensor(0.0)}}
    elif kind == "boft":
        mods = {Q: {".oft_blocks": r(2, 40, 8, 8, s=0.05), ".alpha": torch.tensor(0.0),
                    ".rescale": torch.rand(320, 1, generator=g) * 0.5 + 0.75}}
    elif kind == "ia3":
        mods = {Q: {".weight": r(320, s=0.3), ".on_input": torch.tensor(0)},
                OUT: {".weight": r(320, s=0.3), ".on_input": torch.tensor(0)}}
    elif kind == "glora":
        mods = {Q: {".a1.weight": r(320, 4, s=0.1), ".a2.weight": r(4, 320, s=0.1), ".b1.weight": r(320, 4),
                    ".b2.weight": r(4, 320), ".alpha": torch.tensor(4.0)}}
    elif kind == "full":
        mods = {OUT: {".diff": r(320, 320, s=0.01), ".diff_b": r(320, s=0.01)},
                K2: {".diff": r(320, 768, s=0.01)}}
    sd = {}
    for module, tensors in mods.items():
        base = "lora_unet_" + module.replace(".", "_")
        for suffix, t in tensors.items():
            sd[base + suffix] = t.contiguous()
    return sd


KINDS = ("lora", "locon", "loha", "lokr", "dora", "oft", "boft", "ia3", "glora", "full")
# variant 3 of each kind: written by lycoris-lora itself (algo, kwargs of create_lycoris)
LYCORIS_ALGOS = {
    "lora": ("lora", {}), "locon": ("locon", {"conv_dim": 4, "conv_alpha": 2.0}),
    "loha": ("loha", {"conv_dim": 4, "conv_alpha": 2.0}), "lokr": ("lokr", {"factor": 4}),
    "dora": ("lora", {"dora_wd": True}), "oft": ("diag-oft", {"rescaled": True}),
    "boft": ("boft", {"rescaled": True}), "ia3": ("ia3", {}), "glora": ("glora", {}), "full": ("full", {}),
}


# kind -> {model key: W' (or b') that lycoris' forward applies at multiplier 1}, filled by _lycoris_tensors
LIBRARY_MERGES: dict = {}


class _Mirror(torch.nn.Module):
    """The probed modules of the tiny UNet under their LDM names, for lycoris-lora to wrap."""

    def __init__(self):
        super().__init__()
        nn = torch.nn
        attn1, attn2, block, st, res = nn.Module(), nn.Module(), nn.Module(), nn.Module(), nn.Module()
        attn1.to_q = nn.Linear(320, 320, bias=False)
        attn1.to_out = nn.ModuleList([nn.Linear(320, 320)])
        attn2.to_k = nn.Linear(768, 320, bias=False)
        block.attn1, block.attn2 = attn1, attn2
        st.transformer_blocks = nn.ModuleList([block])
        res.in_layers = nn.ModuleList([nn.Identity(), nn.Identity(), nn.Conv2d(320, 320, 3, padding=1)])
        self.input_blocks = nn.ModuleList([nn.Identity(), nn.ModuleList([res, st])])


def _lycoris_tensors(kind: str, seed: int, base: dict) -> dict:
    """A file lycoris-lora writes for ``kind`` on the mirror (loaded with W0), keys renamed to kohya's ``lora_unet_``."""
    from lycoris import create_lycoris
    from lycoris.logging import logger
    logger.setLevel(logging.ERROR)
    algo, extra = LYCORIS_ALGOS[kind]
    torch.manual_seed(seed)
    model = _Mirror()
    model.load_state_dict({k: base[k] for k in model.state_dict()})
    net = create_lycoris(model, 1.0, linear_dim={"diag-oft": 8, "boft": 10}.get(algo, 4), linear_alpha=2.0,
                         algo=algo, **extra)
    net.apply_to()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.02)
    from fixtures.lycoris_files import effective_weight
    merged = {}
    for name, module in model.named_modules():
        if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
            w, b = effective_weight(module)  # what lycoris' own forward applies
            merged[f"diffusion_model.{name}.weight"] = w
            if f"{name}.bias" in base:
                merged[f"diffusion_model.{name}.bias"] = b
    LIBRARY_MERGES[kind] = merged
    return {"lora_unet_" + k[len("lycoris_"):]: v.detach().float().contiguous()
            for k, v in net.state_dict().items()}


@pytest.fixture(scope="session")
def kind_files(tmp_path_factory, tiny_model_cache):
    d = tmp_path_factory.mktemp("patchbay-random-loras")
    base = {k[len("diffusion_model."):]: v for k, v in _w0(tiny_model_cache.sd15_unet().path).items()}
    out = {}
    for i, kind in enumerate(KINDS):
        for variant in (1, 2, 3):  # several files per kind, so rows of one kind stack
            p = d / f"{kind}_{variant}.safetensors"
            tensors = (_lycoris_tensors(kind, 100 * i + variant, base) if variant == 3 else
                       _kind_tensors(kind, torch.Generator().manual_seed(100 * i + variant)))
            save_file(tensors, str(p))
            out[f"{kind}_{variant}"] = p
    bad = d / "corrupt.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    out["corrupt"] = bad
    other = d / "flux_only.safetensors"  # made for another model: matches nothing here
    g = torch.Generator().manual_seed(5)
    save_file({"lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight": torch.randn(96, 4, generator=g),
               "lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight": torch.randn(4, 32, generator=g)},
              str(other))
    out["flux_only"] = other
    return out


# ---------------------------------------------------------------- server with the probe pack

@pytest.fixture(scope="session")
def rand_server(comfy_install, tiny_model_cache, kind_files):
    srv = ch.ComfyServer(comfy_install, env=dict(os.environ, **CACHE_ENV))
    srv.prepare()
    probe = srv.base_dir / "custom_nodes" / PROBE_PACK
    probe.mkdir(exist_ok=True)
    (probe / "__init__.py").write_text(PROBE_SOURCE)
    try:
        srv.start()
    except Exception:
        srv.cleanup()
        raise
    unet = tiny_model_cache.sd15_unet()
    srv.unet_name = srv.add_model(unet.folder, unet.path)
    srv.unet_path = unet.path
    srv.lora_names = {k: srv.add_model("loras", p, f"rand/{p.name}") for k, p in kind_files.items()}
    yield srv
    srv.cleanup()


# ---------------------------------------------------------------- oracle (test process, lora_core)

def _w0(unet_path: Path) -> dict:
    """The probed tensors of the tiny UNet file, under the model's ``diffusion_model.`` names."""
    subs = PROBE_FILTER.split(",")
    return {"diffusion_model." + k: v.float().clone() for k, v in load_file(str(unet_path)).items()
            if any(s in k for s in subs)}


class Oracle:
    """From-scratch merges against W0 with the engine's own maths, on the probed keys only."""

    def __init__(self, unet_path: Path, kind_files: dict):
        from lora_core.api import open_lora
        sd = load_file(str(unet_path))
        self.shapes = {"diffusion_model." + k: tuple(v.shape) for k, v in sd.items()}
        self.w0 = _w0(unet_path)
        usable = {k: p for k, p in kind_files.items() if k not in ("corrupt", "flux_only")}
        self.files = {k: open_lora(str(p), cache=None) for k, p in usable.items()}
        self.raw = {k: load_file(str(p)) for k, p in usable.items()}
        self._reports = {}

    def report(self, name):
        from lora_core.resolve import resolve_targets
        if name not in self._reports:
            rep = resolve_targets(self.files[name], self.shapes)
            assert rep.matched, f"{name} matches nothing in the tiny UNet"
            self._reports[name] = rep
        return self._reports[name]

    def merged(self, rows) -> dict:
        """W0 + the rows ``[(file key, strength)]`` merged from scratch."""
        from lora_core.patcher import MergePatcher
        from lora_core.plan import build_plan
        params = {k: v.clone() for k, v in self.w0.items()}
        rows = [(n, s) for n, s in rows if s != 0.0]
        if rows:
            plan = build_plan([(self.report(n), float(s), None) for n, s in rows])
            MergePatcher(params, keep_originals=False).apply(plan)
        return params

    def plain_lora(self, rows) -> dict:
        """The libraries' formula for plain LoRA rows only: W0 + Σ s·(α/r)·up·down."""
        params = {k: v.clone() for k, v in self.w0.items()}
        for n, s in rows:
            sd = self.raw[n]
            for k in sd:
                if not k.endswith(".lora_up.weight"):
                    continue
                m = k[: -len(".lora_up.weight")]
                up, down = sd[k].float(), sd[m + ".lora_down.weight"].float()
                alpha = float(sd[m + ".alpha"]) / down.shape[0]
                target = "diffusion_model." + next(mod for mod in PROBE_FILTER.split(",")
                                                   if "lora_unet_" + mod.replace(".", "_") == m) + ".weight"
                params[target] = params[target] + s * alpha * (up.flatten(1) @ down.flatten(1)).reshape(
                    params[target].shape)
        return params


@pytest.fixture(scope="session")
def oracle(tiny_model_cache, kind_files):
    return Oracle(tiny_model_cache.sd15_unet().path, kind_files)


@pytest.mark.parametrize("kind", KINDS)
def test_lycoris_written_files_merge_as_lycoris_applies_them(oracle, kind):
    """The oracle itself, on the files lycoris-lora wrote: lora_core's merge at strength 1 = lycoris' forward."""
    want = LIBRARY_MERGES[kind]
    got = oracle.merged([(f"{kind}_3", 1.0)])
    for key, w in want.items():
        delta_lib, delta_ours = w - oracle.w0[key], got[key] - oracle.w0[key]
        err = ((delta_ours - delta_lib).norm() / delta_lib.norm().clamp_min(1e-12)).item()
        assert delta_lib.abs().max() > 1e-4 or key.endswith(".bias"), (kind, key)
        if delta_lib.norm() > 1e-6:
            assert err < 1e-4, f"{kind} {key}: ΔW differs from lycoris' by {err:.2e} (relative)"


# ---------------------------------------------------------------- random chains

MODES = ("merge", "bypass", "auto")


def _strength(rng: random.Random) -> float:
    pick = rng.random()
    if pick < 0.12:
        return 0.0
    if pick < 0.2:
        return rng.choice((1.0, -1.0, 2.0))
    return round(rng.uniform(-1.5, 1.5), 3)


def _random_chain(rng: random.Random, i: int) -> list:
    """Elements ``{"node", "mode", "enabled", "rows": [(file key, strength, on)]}``.

    The first prompts give every kind a row in bypass next to merged rows, so
    each run covers every kind in every mode whatever the seed.
    """
    if i < len(KINDS):
        kind, other = KINDS[i], rng.choice(KINDS)
        first = [{"node": "stack_loader", "mode": "merge", "enabled": True,
                  "rows": [(f"{other}_1", _strength(rng) or 0.7, True)]},
                 {"node": rng.choice(("loader", "stack")), "mode": "bypass", "enabled": True,
                  "rows": [(f"{kind}_{rng.randint(1, 3)}", _strength(rng) or -0.8, True)]},
                 {"node": "loader", "mode": "auto", "enabled": True,
                  "rows": [(f"{rng.choice(KINDS)}_2", _strength(rng), True)]}]
        return first[1:] + first[:1] if rng.random() < 0.5 else first
    chain = []
    for _ in range(rng.randint(1, 3)):
        node = rng.choice(("loader", "stack", "stack_loader"))
        n_rows = 1 if node == "loader" else rng.randint(1, 3)
        # a loader has no row toggle (its 'enabled' input is the toggle)
        rows = [(f"{rng.choice(KINDS)}_{rng.randint(1, 3)}", _strength(rng), node == "loader" or rng.random() > 0.15)
                for _ in range(n_rows)]
        chain.append({"node": node, "mode": rng.choice(MODES), "rows": rows,
                      "enabled": rng.random() > 0.1 if node == "loader" else True})
    return chain


def _rows_json(names: dict, rows, legacy: bool) -> str:
    items = [{"on": on, "lora": names[n], "strength": s} for n, s, on in rows]
    if legacy:
        return json.dumps(items)
    return json.dumps({"version": 2, "options": {"separate_clip": False},
                       "rows": [dict(it, id=f"r-{i}", strength_clip=None) for i, it in enumerate(items)]})


def _build(g: Graph, model: list, chain: list, names: dict, force_mode=None) -> list:
    for el in chain:
        mode = force_mode or el["mode"]
        if el["node"] == "loader":
            n, s, _ = el["rows"][0]
            model = g.node("PatchbayLoraLoader", model=model, lora_name=names[n], strength_model=s,
                           strength_clip=0.0, enabled=el["enabled"], mode=mode)[0]
        elif el["node"] == "stack":
            st = g.node("PatchbayLoraStack", rows=_rows_json(names, el["rows"], legacy=True))[0]
            model = g.node("PatchbayApplyLoraStack", model=model, stack=st, mode=mode)[0]
        else:
            model = g.node("PatchbayLoraStackLoader", model=model, rows=_rows_json(names, el["rows"], legacy=False),
                           mode=mode)[0]
    return model


def _effective(chain: list, merged_only: bool = False) -> list:
    rows = []
    for el in chain:
        if not el["enabled"] or (merged_only and el["mode"] == "bypass"):
            continue
        rows += [(n, s) for n, s, on in el["rows"] if on and s != 0.0]
    return rows


def _probe(g: Graph, model: list):
    return g.node("PatchbayRandomProbe", model=model, key_filter=PROBE_FILTER, tag=uuid.uuid4().hex)


def _sample(g: Graph, model: list, cond: list, latent: list):
    lat = g.node("KSampler", model=model, seed=7, steps=1, cfg=1.0, sampler_name="euler", scheduler="simple",
                 positive=cond, negative=cond, latent_image=latent, denoise=1.0)[0]
    return g.node("PatchbayTestLatentStats", samples=lat)


def _read_probe(res, node) -> tuple[dict, dict]:
    info = res.ui(node.id)["probe"][0]
    return load_file(info["file"]), info


def _max_err(got: dict, want: dict) -> tuple[float, float]:
    """(worst |got − want|, scale = max(1, |want|)) over the probed keys."""
    err = max((got[k] - want[k]).abs().max().item() for k in want)
    return err, max(1.0, max(want[k].abs().max().item() for k in want))


# ---------------------------------------------------------------- bad requests

def _bad_requests(names: dict) -> list:
    """(label, build(g, model) -> model, expected text, refused at queue time?)."""
    a = names["lora_1"]

    def loader(name, s=0.5):
        return lambda g, m: g.node("PatchbayLoraLoader", model=m, lora_name=name, strength_model=s,
                                   strength_clip=0.0, enabled=True, mode="merge")[0]

    def stack_loader(rows):
        return lambda g, m: g.node("PatchbayLoraStackLoader", model=m, rows=rows, mode="merge")[0]

    def stack(rows):
        return lambda g, m: g.node("PatchbayApplyLoraStack", model=m, mode="bypass",
                                   stack=g.node("PatchbayLoraStack", rows=rows)[0])[0]

    return [
        ("unknown name", loader("rand/no_such_lora.safetensors"), "not in the loras folder", True),
        ("traversal", loader("../x.safetensors"), "traversal", True),
        ("traversal in a row", stack(json.dumps([{"lora": a}, {"lora": "../x.safetensors"}])), "row 2", True),
        ("absolute path", loader("/etc/passwd"), "absolute", True),
        ("NaN strength", loader(a, float("nan")), "strength_model", True),
        ("infinite strength", loader(a, float("inf")), "strength_model", True),
        ("huge row strength", stack_loader(json.dumps([{"lora": a, "strength": 1e30}])), "strength", True),
        ("negative huge row strength", stack(json.dumps([{"lora": a, "strength": -1e38}])), "strength", True),
        ("malformed rows", stack_loader('[{"lora": "%s", "strength": ' % a), "rows", True),
        ("corrupt file", loader(names["corrupt"], 1.0), "corrupt.safetensors", False),
        ("LoRA for another model", stack_loader(json.dumps([{"lora": a, "strength": 0.5},
                                                            {"lora": names["flux_only"], "strength": 1.0}])),
         "matches nothing", False),
    ]


def _send_bad(srv, label, build, expect, at_queue) -> str:
    g = Graph()
    model = g.node("UNETLoader", unet_name=srv.unet_name, weight_dtype="default")[0]
    _probe(g, build(g, model))
    if at_queue:
        with pytest.raises(PromptRejected) as ei:
            srv.client.queue(g, timeout=240)
        text = str(ei.value)
    else:
        res = srv.client.queue(g, timeout=240, check=False)
        assert not res.ok, f"{label}: ran without an error {REPLAY}"
        text = res.error["exception_message"]
        assert "Traceback" not in text, f"{label}: {text} {REPLAY}"
    assert expect in text, f"{label}: expected {expect!r} in the refusal, got {text!r} {REPLAY}"
    return text


# ---------------------------------------------------------------- the test

def _check_caches(info: dict, where: str) -> None:
    caches = info["caches"]
    assert "factors" in caches and "parsed_files" in caches, f"probe found no caches: {caches}"
    for name, (held, bound, entries) in caches.items():
        if name == "parsed_files":
            # the newest file is always kept, even over the bound
            assert held <= bound or entries <= 1, f"{where}: {name} holds {held} > {bound} bytes {REPLAY}"
        else:
            assert held <= bound, f"{where}: cache {name} holds {held} > {bound} bytes {REPLAY}"


def test_random_chains_through_a_real_server(rand_server, oracle, capsys):
    srv, names = rand_server, rand_server.lora_names
    rng = random.Random(SEED)
    with capsys.disabled():  # shown even under -q and without -s
        print(f"\n[randomized chains] ComfyUI {srv.version}: seed {SEED}, {PROMPTS} prompts {REPLAY}")
    assert srv.pack_import_errors() == []

    # W0 as the server loads it, and the base latent
    g = Graph()
    model = g.node("UNETLoader", unet_name=srv.unet_name, weight_dtype="default")[0]
    cond = g.node("PatchbayTestConditioning", dim=768, tokens=4, pooled_dim=0, seed=3, scale=1.0)[0]
    latent = g.node("EmptyLatentImage", width=32, height=32, batch_size=1)[0]
    p0, s0 = _probe(g, model), _sample(g, model, cond, latent)
    res = srv.client.queue(g, timeout=300)
    w_server0, info0 = _read_probe(res, p0)
    for k, w in oracle.w0.items():
        assert torch.equal(w_server0[k], w), f"server W0 of {k} differs from the file"
    base_latent = torch.tensor(latent_stats(res, s0.id)["values"])

    bad = _bad_requests(names)
    bad_at = set(rng.sample(range(PROMPTS), min(len(bad), PROMPTS)))
    rss = []
    seen_kinds, seen_modes = set(), set()
    failures = []
    worst = {"weights": 0.0, "latent": 0.0}
    for i in range(PROMPTS):
        if i in bad_at:
            label, build, expect, at_queue = bad.pop(0)
            text = _send_bad(srv, label, build, expect, at_queue)
            print(f"  refused {label}: {' '.join(text.split())[:160]}")
        chain = _random_chain(rng, i)
        desc = json.dumps(chain)
        g = Graph()
        model = g.node("UNETLoader", unet_name=srv.unet_name, weight_dtype="default")[0]
        cond = g.node("PatchbayTestConditioning", dim=768, tokens=4, pooled_dim=0, seed=3, scale=1.0)[0]
        latent = g.node("EmptyLatentImage", width=32, height=32, batch_size=1)[0]
        ours = _build(g, model, chain, names)
        twin = _build(g, model, chain, names, force_mode="merge")
        p_ours, p_twin = _probe(g, ours), _probe(g, twin)
        s_ours, s_twin = _sample(g, ours, cond, latent), _sample(g, twin, cond, latent)
        res = srv.client.queue(g, timeout=300, check=False)
        if not res.ok:
            failures.append(f"prompt {i} failed: {res.error_text[:600]} chain={desc}")
            continue
        w_ours, info = _read_probe(res, p_ours)
        w_twin, _ = _read_probe(res, p_twin)
        _check_caches(info, f"prompt {i}")
        rss.append(info["rss"])
        for el in chain:
            seen_modes.add(el["mode"])
            seen_kinds.update(n.rsplit("_", 1)[0] for n, _, _ in el["rows"])

        all_rows, merged_rows = _effective(chain), _effective(chain, merged_only=True)
        for label, got, rows in (("chain", w_ours, merged_rows), ("all-merge twin", w_twin, all_rows)):
            want = oracle.merged(rows)
            err, scale = _max_err(got, want)
            worst["weights"] = max(worst["weights"], err / scale)
            if err > 1e-5 * scale:
                failures.append(f"prompt {i}: {label} weights differ from the from-scratch merge of {rows} "
                                f"by {err:.3g} chain={desc}")
        plain = [(n, s) for n, s in all_rows if n.startswith("lora_")]
        if plain and len(plain) == len(all_rows):
            err, scale = _max_err(w_twin, oracle.plain_lora(plain))
            if err > 1e-5 * scale:
                failures.append(f"prompt {i}: plain LoRA rows differ from W0 + s·α/r·up·down by {err:.3g}")

        lat_ours = torch.tensor(latent_stats(res, s_ours.id)["values"])
        lat_twin = torch.tensor(latent_stats(res, s_twin.id)["values"])
        err = (lat_ours - lat_twin).abs().max().item()
        scale = max(1.0, lat_twin.abs().max().item())
        worst["latent"] = max(worst["latent"], err / scale)
        if not torch.isfinite(lat_ours).all() or err > 1e-4 * scale:
            effect = (lat_twin - base_latent).abs().max().item()
            failures.append(f"prompt {i}: chain latent differs from its all-merge twin by {err:.3g} "
                            f"(rows' effect {effect:.3g}) chain={desc}")
    for label, build, expect, at_queue in bad:  # any left when PROMPTS is small
        _send_bad(srv, label, build, expect, at_queue)

    # the base comes back bit-identical, and samples as before
    g = Graph()
    model = g.node("UNETLoader", unet_name=srv.unet_name, weight_dtype="default")[0]
    cond = g.node("PatchbayTestConditioning", dim=768, tokens=4, pooled_dim=0, seed=3, scale=1.0)[0]
    latent = g.node("EmptyLatentImage", width=32, height=32, batch_size=1)[0]
    p_end, s_end = _probe(g, model), _sample(g, model, cond, latent)
    res = srv.client.queue(g, timeout=300)
    w_end, info_end = _read_probe(res, p_end)
    _check_caches(info_end, "end")
    print(f"[randomized chains] worst relative error: weights {worst['weights']:.2e}, latent "
          f"{worst['latent']:.2e}; kinds {sorted(seen_kinds)}, modes {sorted(seen_modes)}; caches "
          f"{info_end['caches']}; RSS {info0['rss'] >> 20} -> {info_end['rss'] >> 20} MiB")
    assert not failures, f"{len(failures)} of {PROMPTS} prompts wrong {REPLAY}:\n" + "\n".join(failures[:8])
    if PROMPTS >= len(KINDS):
        assert seen_kinds == set(KINDS) and seen_modes == set(MODES), (seen_kinds, seen_modes)
    for k, w in oracle.w0.items():
        assert torch.equal(w_end[k], w), f"base weight {k} changed after the run {REPLAY}"
    assert torch.equal(torch.tensor(latent_stats(res, s_end.id)["values"]), base_latent), REPLAY
    # RSS: growth after the first few prompts (allocator warm-up, model load) stays bounded
    if len(rss) > 4:
        growth = info_end["rss"] - rss[3]
        assert growth < RSS_GROWTH_LIMIT, f"RSS grew {growth >> 20} MiB over the run {REPLAY}"
    assert srv.alive()
