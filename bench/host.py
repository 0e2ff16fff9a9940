"""Host benchmark: a slider change inside ComfyUI's ModelPatcher, ours vs core.

Drives a real ComfyUI in-process (no server) on the stack of bench/patch.py:
100 ``Linear(1280, 1280)`` fp16 layers wrapped in ``ModelPatcher``; four
kohya LoRA files, fp16 factors, alpha = rank/2: L8 (0.8, all layers), L16
(0.6, all), L32 (0.5, layers 0–24: the "quarter LoRA"), L64 (0.7, all).

Measured, as wall time from the re-executed loader node(s) to the weights
being ready for the first sampling step (node execution + ``load_models_gpu``,
which unpatches and re-patches every key; the forward itself is the same
for both and left out):

* a stack of 4 LoRAs, the quarter LoRA's strength changes — ours (4 chained
  PatchbayLoraLoader) vs core (4 chained loaders; loaders 3 and 4 re-run);
* one LoRA (L64, every layer), strength change (every key changes; each
  key's strength-free product B·A is cached at the first load, so the move
  is one scaled add per key and no GEMM);
* the same change reverted (ours serves unchanged ΔW sums from its cache);
* bypass mode: the slider change cost, and the per-step forward cost vs
  merged on an fp32 copy of the first 16 layers (fp16 matmul on CPU is
  slow and unrepresentative);
* strength 0: the node returns its input (no clone, nothing to load).

Usage: python bench/host.py [--comfy ~/ComfyUI] [--layers 100] [--repeat 3] [--threads 2]
       [--quick] [--device cpu|cuda]
Thread count is fixed inside (``torch.set_num_threads``, default 2) so runs
compare; ``--quick`` is a smoke run (fewer layers, one repeat); ``--device
cuda`` runs ComfyUI without ``--cpu`` with the model loaded on the GPU
(skips cleanly when CUDA is missing).  Prints ratios and a final JSON line
whose ``rows`` hold the issue-11 ratios: ``stack_slider_core_vs_ours``,
``one_lora_slider_core_vs_ours``, ``bypass_fwd_vs_merged``.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# (rank, strength, first layer, end layer or None = all)
LORAS = ((8, 0.8, 0, None), (16, 0.6, 0, None), (32, 0.5, 0, "quarter"), (64, 0.7, 0, None))
RANKS = tuple(r for r, *_ in LORAS)
QUARTER = 2


def _end(hi, n):
    """End layer of a LoRA: all layers, or the first quarter (the "quarter LoRA")."""
    return n if hi is None else max(1, n // 4)


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--comfy", default=os.path.expanduser(os.environ.get("COMFYUI_DIR", "~/ComfyUI")))
    ap.add_argument("--layers", type=int, default=100)
    ap.add_argument("--dim", type=int, default=1280)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=512, help="tokens per forward (bypass step cost)")
    ap.add_argument("--step-layers", type=int, default=16, help="fp32 layers for the per-step cost")
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (fixed for comparable runs)")
    ap.add_argument("--quick", action="store_true", help="smoke run: 24 layers, one repeat")
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    args = ap.parse_args()
    if args.quick:
        args.layers, args.repeat, args.step_layers = min(args.layers, 24), 1, min(args.step_layers, 8)
    return args


def main():
    args = parse_args()
    import torch
    torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("CUDA not available: skipped")
        print(json.dumps({"device": "cuda", "skipped": True}))
        return
    sys.path.insert(0, args.comfy)
    argv, sys.argv = sys.argv, [sys.argv[0]] + (["--cpu"] if args.device == "cpu" else [])
    import comfy.options
    comfy.options.enable_args_parsing()
    import folder_paths
    import comfy.lora
    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy.utils
    sys.argv = argv
    from safetensors.torch import save_file

    spec = importlib.util.spec_from_file_location("lora-patchbay", os.path.join(REPO, "__init__.py"),
                                                  submodule_search_locations=[REPO])
    pack = importlib.util.module_from_spec(spec)
    sys.modules["lora-patchbay"] = pack
    spec.loader.exec_module(pack)
    host = sys.modules["lora-patchbay.nodes.host"]
    Loader = pack.NODE_CLASS_MAPPINGS["PatchbayLoraLoader"]

    n, dim = args.layers, args.dim
    tmp = tempfile.mkdtemp(prefix="patchbay-bench-host-")
    folder_paths.folder_names_and_paths["loras"] = ([tmp], {".safetensors"})
    g = torch.Generator().manual_seed(0)
    names = []
    for r, _, lo, hi in LORAS:
        sd = {}
        for i in range(lo, _end(hi, n)):
            k = f"lora_unet_blocks_{i}"
            sd[f"{k}.lora_up.weight"] = (torch.randn(dim, r, generator=g) * 0.02).half()
            sd[f"{k}.lora_down.weight"] = (torch.randn(r, dim, generator=g) * 0.02).half()
            sd[f"{k}.alpha"] = torch.tensor(r / 2.0)
        name = f"r{r}.safetensors"
        save_file(sd, os.path.join(tmp, name))
        names.append(name)

    class Net(torch.nn.Module):
        def __init__(self, n=n):
            super().__init__()
            self.diffusion_model = torch.nn.Module()
            self.diffusion_model.blocks = torch.nn.ModuleList(
                [torch.nn.Linear(dim, dim, bias=False) for _ in range(n)])

        def forward(self, x):
            for b in self.diffusion_model.blocks:
                x = b(x)
            return x

    with torch.no_grad():
        net = Net().half()
        for b in net.diffusion_model.blocks:
            b.weight.normal_(0, dim ** -0.5)
    cpu = torch.device("cpu")
    dev = torch.device(args.device)
    base = comfy.model_patcher.ModelPatcher(net, dev, cpu)
    base_sd = {k: v.clone() for k, v in net.state_dict().items()}
    key_map = {f"lora_unet_blocks_{i}": f"diffusion_model.blocks.{i}.weight" for i in range(n)}
    core_files = {}

    def core_loader(patcher, name, strength):
        # What LoraLoader does per execution: file from its instance cache,
        # key map + load_lora + clone + add_patches.
        sd = core_files.get(name)
        if sd is None:
            sd = core_files[name] = comfy.utils.load_torch_file(os.path.join(tmp, name), safe_load=True)
        out = patcher.clone()
        out.add_patches(comfy.lora.load_lora(sd, dict(key_map), log_missing=False), strength)
        return out

    def ours_loader(patcher, name, strength, mode="merge"):
        return Loader().load(patcher, name, strength, 0.0, True, mode)[0]

    def first_step(patcher):
        mm.load_models_gpu([patcher], force_full_load=True)
        if dev.type == "cuda":
            torch.cuda.synchronize()

    def chain(loader, prefix, names_, strengths, **kw):
        # prefix: the cached upstream outputs; only the rest re-executes
        p = prefix
        for nm, s in zip(names_, strengths):
            p = loader(p, nm, s, **kw)
        return p

    def timed(fn):
        t0 = time.perf_counter()
        out = fn()
        return time.perf_counter() - t0, out

    def slider_bench(loader, names_, changed, s0, **kw):
        """Median seconds of: re-run loaders from ``changed`` on + load."""
        upstream = chain(loader, base, names_[:changed], s0[:changed], **kw)
        first_step(chain(loader, upstream, names_[changed:], s0[changed:], **kw))  # warm: patched once
        times = []
        for rep in range(args.repeat):
            s = list(s0)
            s[changed] = s0[changed] + 0.01 * (rep + 1)
            t, _ = timed(lambda: first_step(chain(loader, upstream, names_[changed:], s[changed:], **kw)))
            times.append(t)
        return statistics.median(times)

    def revert_bench(loader, names_, changed, s0, **kw):
        """Slider moved then moved back: the second change re-uses cached ΔW sums (ours)."""
        upstream = chain(loader, base, names_[:changed], s0[:changed], **kw)
        first_step(chain(loader, upstream, names_[changed:], s0[changed:], **kw))
        s1 = list(s0)
        s1[changed] = s0[changed] + 0.1
        first_step(chain(loader, upstream, names_[changed:], s1[changed:], **kw))
        t, _ = timed(lambda: first_step(chain(loader, upstream, names_[changed:], s0[changed:], **kw)))
        return t

    def check_same_as_core(names_, strengths):
        ours = chain(ours_loader, base, names_, strengths)
        core = chain(core_loader, base, names_, strengths)
        first_step(ours)
        wo = {k: v.float().clone() for k, v in net.state_dict().items()}
        first_step(core)
        err = 0.0
        for k, v in net.state_dict().items():
            d = (v.float() - base_sd[k].float()).abs().max().item()
            err = max(err, (wo[k] - v.float()).abs().max().item() / max(d, 1e-12))
        return err

    def forward_time(patcher, xs):
        first_step(patcher)
        with torch.no_grad():
            patcher.model(xs)
            ts = []
            for _ in range(3):
                t0 = time.perf_counter()
                patcher.model(xs)
                if dev.type == "cuda":
                    torch.cuda.synchronize()
                ts.append(time.perf_counter() - t0)
        return statistics.median(ts)

    results = {"layers": n, "dim": dim, "ranks": list(RANKS), "host": ".".join(map(str, host.HOST_VERSION))}
    print(f"ComfyUI {results['host']} at {args.comfy}; {n} × Linear({dim},{dim}) fp16; LoRAs "
          + ", ".join(f"r{r}@{s_} layers {lo}–{_end(hi, n) - 1}" for r, s_, lo, hi in LORAS))
    results["max_rel_err_vs_core"] = check_same_as_core(names, [0.8, -0.5, 1.1, 0.6])
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {dev}, load average "
          f"{os.getloadavg()[0]:.1f} (timings are only meaningful on an idle machine)")
    print(f"weights vs core LoraLoader chain: max |ours−core| / max|ΔW| = {results['max_rel_err_vs_core']:.2e}")

    strengths = [s for _, s, _, _ in LORAS]
    results["stack_core_s"] = slider_bench(core_loader, names, QUARTER, strengths)
    results["stack_ours_s"] = slider_bench(ours_loader, names, QUARTER, strengths)
    results["stack_speedup"] = results["stack_core_s"] / results["stack_ours_s"]
    print(f"stack of 4, quarter-LoRA slider → weights ready: core {results['stack_core_s']*1e3:.0f} ms, "
          f"ours {results['stack_ours_s']*1e3:.0f} ms  ({results['stack_speedup']:.2f}×)")

    results["revert_core_s"] = revert_bench(core_loader, names, QUARTER, strengths)
    results["revert_ours_s"] = revert_bench(ours_loader, names, QUARTER, strengths)
    results["revert_speedup"] = results["revert_core_s"] / results["revert_ours_s"]
    print(f"stack of 4, slider moved back → weights ready: core {results['revert_core_s']*1e3:.0f} ms, "
          f"ours {results['revert_ours_s']*1e3:.0f} ms  ({results['revert_speedup']:.2f}×)")

    one = [names[-1]]
    results["one_core_s"] = slider_bench(core_loader, one, 0, [0.7])
    results["one_ours_s"] = slider_bench(ours_loader, one, 0, [0.7])
    results["one_speedup"] = results["one_core_s"] / results["one_ours_s"]
    print(f"one LoRA (L64, every layer) slider → weights ready: core {results['one_core_s']*1e3:.0f} ms, "
          f"ours {results['one_ours_s']*1e3:.0f} ms  ({results['one_speedup']:.2f}×)")

    results["bypass_slider_s"] = slider_bench(ours_loader, names, QUARTER, strengths, mode="bypass")
    print(f"stack of 4 in bypass, quarter slider → ready: {results['bypass_slider_s']*1e3:.0f} ms "
          f"({results['stack_core_s'] / results['bypass_slider_s']:.2f}× faster than core merge)")

    with torch.no_grad():
        net32 = Net(args.step_layers).float()
        for b32, b16 in zip(net32.diffusion_model.blocks, net.diffusion_model.blocks):
            b32.weight.copy_(b16.weight.float())
    base32 = comfy.model_patcher.ModelPatcher(net32, dev, cpu)
    x32 = torch.randn(args.tokens, dim, generator=g).to(dev)
    merged = chain(ours_loader, base32, names, strengths)
    bypass = chain(ours_loader, base32, names, strengths, mode="bypass")
    results["step_merged_s"] = forward_time(merged, x32)
    results["step_bypass_s"] = forward_time(bypass, x32)
    results["bypass_step_overhead"] = results["step_bypass_s"] / results["step_merged_s"]
    print(f"per-step forward ({args.step_layers} fp32 layers, {args.tokens} tokens): merged "
          f"{results['step_merged_s']*1e3:.1f} ms, bypass (4 LoRAs) {results['step_bypass_s']*1e3:.1f} ms "
          f"({results['bypass_step_overhead']:.2f}×)")

    first_step(base)
    t0 = time.perf_counter()
    out = ours_loader(base, names[0], 0.0)
    first_step(out)
    results["strength0_s"] = time.perf_counter() - t0
    results["strength0_identity"] = out is base
    print(f"strength 0: returns its input: {out is base}; node + first step {results['strength0_s']*1e3:.1f} ms")

    ok = results["stack_speedup"] >= 3.0
    results["target_3x_met"] = ok
    print(f"target ≥3× on the stack slider change: {'met' if ok else 'NOT met'}")
    cache = host.DELTA_CACHES.get(str(dev)) or host.DELTA_CACHES.get("cpu")
    if cache is not None:
        print(f"ΔW cache ({dev}): {cache.hits} hits, {cache.misses} misses, {cache.bytes >> 20} MiB held, "
              f"budget {cache.max_bytes >> 20} MiB")
    results["device"] = str(dev)
    results["threads"] = torch.get_num_threads()
    results["rows"] = {"stack_slider_core_vs_ours": round(results["stack_speedup"], 3),
                       "one_lora_slider_core_vs_ours": round(results["one_speedup"], 3),
                       "bypass_fwd_vs_merged": round(results["bypass_step_overhead"], 3)}
    print(json.dumps(results))


if __name__ == "__main__":
    main()
