"""Benchmark of the merge patcher and the bypass side path (CPU, one run).

Workload (SDXL-sized stack):
  * model: 100 ``nn.Linear(1280, 1280, bias=False)`` layers in fp16, named
    ``layers.<i>``;
  * four LoRAs, fp16 factors, alpha = rank/2:
      - L8  (rank 8),  strength 0.8, all 100 layers
      - L16 (rank 16), strength 0.6, all 100 layers
      - L32 (rank 32), strength 0.5, the first quarter: layers 0–24 (the "quarter LoRA")
      - L64 (rank 64), strength 0.7, all 100 layers
    so Σr = 120 on layers 0–24 and 88 on layers 25–99.

Measured (best of a few runs; the machine is shared):
  * merge: ``MergePatcher.apply`` of the whole stack on a fresh patcher
    (backups included);
  * naive: per layer, upcast to fp32, then per LoRA ``up.float() @
    down.float()``, scale, add, then cast back (no backup: flatters naive);
  * floor: per layer one GEMM (1280×Σr)·(Σr×1280) at the best measured GEMM
    rate for that shape + one read and one write of the fp16 weights at the
    measured memcpy bandwidth;
  * re-patch: ``apply`` after changing only the quarter LoRA's strength, vs
    the full merge;
  * bypass: forward of 8 fp32 layers on 4096×1280 fp32 activations with a
    rank-16 LoRA as side path, vs the same layers with the LoRA merged
    (fp32 because fp16 matmul on CPU is slow);
  * peak extra memory by accounting: bytes of backups + the largest working
    set of one parameter (row-block workspace + concatenated factors), with
    the process high-water-mark (VmHWM) delta around the first merge as a
    cross-check;
  * first touch: the merge gives every parameter new storage (W₀'s own
    storage is the backup), and on a CPU the first write to fresh memory
    takes one page fault per 4 KiB page, which the floor's memcpy into warm
    buffers does not pay.  The bench counts the merge's minor page faults
    (``getrusage``; Linux/macOS) and times writes into never-touched pages
    (an anonymous ``mmap``) to price one fault, so the merge can be read as
    floor + first touch + the rest;
  * ComfyUI core (when ``COMFYUI_DIR`` is set or ``~/ComfyUI`` exists):
    ``ModelPatcher.patch_model`` over the same weights and the same LoRAs
    loaded with ``comfy.lora.load_lora`` from kohya-style dicts, in a
    subprocess.

The last line is JSON: merge_vs_floor, merge_vs_naive, repatch_vs_full,
bypass_vs_merged, peak_extra_mb (and core_vs_merge with ComfyUI), plus
merge_vs_floor_with_backups (the floor + cloning every touched weight into
new memory — what a copied backup would add; the patcher now keeps W₀'s own
storage as the backup and writes W₀ + D into new storage instead),
merge_page_faults, fault_us and merge_vs_floor_after_first_touch (the merge
less its page faults at the measured price, over the floor), and ``rows``
with the issue-11 ratios: ``merge_vs_floor``, ``core_vs_merge``.

Usage: python bench/patch.py [--threads 2] [--quick] [--device cpu|cuda] [--layers 100]
Thread count is fixed inside (``torch.set_num_threads``); ``--quick`` is a
smoke run (24 layers, fewer repeats); ``--device cuda`` runs everything on
the GPU (skips cleanly without CUDA).
"""
from __future__ import annotations

import argparse
import json
import mmap
import os
import subprocess
import sys
import time

import torch
from torch import nn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from lora_core.bypass import install_bypass  # noqa: E402
from lora_core.ir import CoverageReport, LoraWeights, ModulePatch, ResolvedPatch  # noqa: E402
from lora_core.patcher import MergePatcher  # noqa: E402
from lora_core.plan import build_plan  # noqa: E402

N = 1280
LAYERS = 100
# (name, rank, strength, layers)
LORAS = (("L8", 8, 0.8, range(LAYERS)), ("L16", 16, 0.6, range(LAYERS)),
         ("L32", 32, 0.5, range(LAYERS // 4)), ("L64", 64, 0.7, range(LAYERS)))
QUARTER = 2
BYPASS_LAYERS = 8
TOKENS = 4096
DEVICE = "cpu"
RUNS = 3


def configure(layers: int, device: str = "cpu", runs: int = 3) -> None:
    """Set the workload size and device (module globals, also used by the ComfyUI child)."""
    global LAYERS, LORAS, DEVICE, RUNS
    LAYERS, DEVICE, RUNS = layers, device, runs
    LORAS = (("L8", 8, 0.8, range(layers)), ("L16", 16, 0.6, range(layers)),
             ("L32", 32, 0.5, range(max(1, layers // 4))), ("L64", 64, 0.7, range(layers)))


def sync():
    if DEVICE == "cuda":
        torch.cuda.synchronize()


class Stack(nn.Module):
    def __init__(self, weights):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(N, N, bias=False, dtype=w.dtype, device=w.device) for w in weights)
        with torch.no_grad():
            for layer, w in zip(self.layers, weights):
                layer.weight.copy_(w)


def make_weights(seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(N, N, generator=g) * 0.02).half().to(DEVICE) for _ in range(LAYERS)]


def make_loras(seed=1):
    """{name: {layer: (up fp16 (N, r), down fp16 (r, N))}}"""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, rank, _, layers in LORAS:
        out[name] = {i: ((torch.randn(N, rank, generator=g) * 0.02).half().to(DEVICE),
                         (torch.randn(rank, N, generator=g) * 0.02).half().to(DEVICE)) for i in layers}
    return out


def make_reports(loras):
    reports = []
    for name, rank, _, layers in LORAS:
        matched = tuple(ResolvedPatch(ModulePatch(name=f"lora_unet_layers_{i}",
                                                  weight=LoraWeights(up=up, down=down), scale=0.5),
                                      f"layers.{i}.weight")
                        for i, (up, down) in loras[name].items())
        reports.append(CoverageReport(file=f"{name}.safetensors", matched=matched, unmatched=()))
    return reports


def plan_for(reports, strengths):
    return build_plan([(r, s, None) for r, s in zip(reports, strengths)])


def best(fn, runs=None, setup=None, budget_s=20.0):
    """Best wall time of up to ``runs`` runs; stops early once ``budget_s`` is spent."""
    times = []
    for _ in range(runs or RUNS):
        if setup is not None:
            setup()
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
        if sum(times) > budget_s:
            break
    return min(times)


def minor_faults() -> int:
    """Minor page faults of this process so far (0 where ``resource`` is missing)."""
    try:
        import resource
    except ImportError:
        return 0
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def fault_price_s(pages: int = 16384) -> float:
    """Seconds per minor page fault: writes into never-touched anonymous pages, less the same
    writes into those pages once they are mapped (so only the first touch is priced)."""
    if DEVICE != "cpu" or not minor_faults():
        return 0.0
    size = pages * mmap.PAGESIZE
    best_fault = float("inf")
    for _ in range(3):
        region = mmap.mmap(-1, size)
        view = torch.frombuffer(region, dtype=torch.uint8)
        f0, t0 = minor_faults(), time.perf_counter()
        view.fill_(1)
        first, faults = time.perf_counter() - t0, minor_faults() - f0
        t0 = time.perf_counter()
        view.fill_(2)
        warm = time.perf_counter() - t0
        del view
        region.close()
        if faults:
            best_fault = min(best_fault, max(0.0, first - warm) / faults)
    return 0.0 if best_fault == float("inf") else best_fault


def vm_hwm_bytes() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


# ---------------------------------------------------------------- measurements

def measure_floor(ranks_per_layer):
    """Best GEMM time per Σr (whole GEMM, in-place addmm and row blocks) + memcpy bandwidth."""
    gemm = {}
    for r in sorted(set(ranks_per_layer)):
        b, a = torch.randn(N, r, device=DEVICE), torch.randn(r, N, device=DEVICE)
        out = torch.randn(N, N, device=DEVICE)

        def whole():
            for _ in range(10):
                torch.mm(b, a, out=out)

        def inplace():
            for _ in range(10):
                out.addmm_(b, a)

        def blocks():
            for _ in range(10):
                for r0 in range(0, N, 256):
                    out[r0:r0 + 256].addmm_(b[r0:r0 + 256], a)
        gemm[r] = min(best(whole, 3), best(inplace, 3), best(blocks, 3)) / 10
    src = torch.empty(256 << 20, dtype=torch.uint8, device=DEVICE).fill_(1)
    dst = torch.empty_like(src)
    copy_s = best(lambda: dst.copy_(src), 5)
    bandwidth = src.numel() / copy_s  # bytes/s for read+write of src bytes
    del src, dst
    weight_bytes = N * N * 2
    floor = sum(gemm[r] for r in ranks_per_layer) + len(ranks_per_layer) * weight_bytes / bandwidth
    rates = {r: 2 * N * N * r / t / 1e9 for r, t in gemm.items()}
    return floor, rates, bandwidth


def naive_merge(weights, loras):
    strengths = {name: s for name, _, s, _ in LORAS}
    for i, w in enumerate(weights):
        acc = w.float()
        for name, _, _, _ in LORAS:
            pair = loras[name].get(i)
            if pair is None:
                continue
            up, down = pair
            delta = up.float() @ down.float()
            delta = delta * (strengths[name] * 0.5)
            acc = acc + delta
        w.copy_(acc.to(w.dtype))


def bypass_vs_merged(weights, loras):
    base = [w.float() for w in weights[:BYPASS_LAYERS]]
    rank16 = [r for r in make_reports(loras) if r.file.startswith("L16")][0]
    keep = {f"layers.{i}.weight" for i in range(BYPASS_LAYERS)}
    plan = {k: v for k, v in plan_for([rank16], [0.6]).items() if k in keep}
    merged = Stack(base)
    MergePatcher(dict(merged.named_parameters())).apply(plan)
    side = Stack(base)
    handle = install_bypass(side, plan)
    x = torch.randn(TOKENS, N, generator=torch.Generator().manual_seed(3)).to(DEVICE)

    def run(model):
        with torch.inference_mode():
            y = x
            for layer in model.layers:
                y = layer(y)
            return y
    run(merged), run(side)  # warm up
    err = (run(merged) - run(side)).abs().max().item() / run(merged).abs().max().item()
    t_merged = best(lambda: run(merged), 3)
    t_side = best(lambda: run(side), 3)
    handle.remove()
    return t_side, t_merged, err


def comfy_dir():
    path = os.environ.get("COMFYUI_DIR") or os.path.expanduser("~/ComfyUI")
    return path if os.path.isfile(os.path.join(path, "comfy", "model_patcher.py")) else None


def comfy_child(path):
    """Runs in a subprocess: time core's ModelPatcher.patch_model on the same stack.

    argv: --comfy-child PATH THREADS LAYERS DEVICE
    """
    torch.set_num_threads(int(sys.argv[3]))
    configure(int(sys.argv[4]), sys.argv[5])
    sys.argv = [sys.argv[0]] + (["--cpu"] if DEVICE == "cpu" else [])
    sys.path.insert(0, path)
    import logging
    logging.disable(logging.WARNING)
    import comfy.options
    comfy.options.enable_args_parsing()
    import comfy.lora
    import comfy.model_patcher

    weights, loras = make_weights(), make_loras()
    key_map = {f"lora_unet_layers_{i}": f"layers.{i}.weight" for i in range(LAYERS)}
    cpu = torch.device("cpu")
    dev = torch.device(DEVICE)
    times = []
    result = None
    for _ in range(2):
        if times and times[0] > 15:
            break
        model = Stack(weights)
        patcher = comfy.model_patcher.ModelPatcher(model, load_device=dev, offload_device=cpu)
        for name, rank, strength, _ in LORAS:
            sd = {}
            for i, (up, down) in loras[name].items():
                sd[f"lora_unet_layers_{i}.lora_up.weight"] = up
                sd[f"lora_unet_layers_{i}.lora_down.weight"] = down
                sd[f"lora_unet_layers_{i}.alpha"] = torch.tensor(rank / 2)
            patcher.add_patches(comfy.lora.load_lora(sd, key_map, log_missing=False), strength)
        sync()
        t0 = time.perf_counter()
        patcher.patch_model(device_to=dev)
        sync()
        times.append(time.perf_counter() - t0)
        result = model
    ours = Stack(weights)
    MergePatcher(dict(ours.named_parameters())).apply(
        plan_for(make_reports(loras), [s for _, _, s, _ in LORAS]))
    diff = max((a.weight.float() - b.weight.float()).abs().max().item()
               for a, b in zip(result.layers, ours.layers))
    print(json.dumps({"seconds": min(times), "max_abs_diff_vs_ours": diff}))


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=int(os.environ.get("PATCHBAY_BENCH_THREADS", 2)),
                    help="torch.set_num_threads (fixed so runs compare)")
    ap.add_argument("--quick", action="store_true", help="smoke run: 24 layers, fewer repeats")
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--layers", type=int, default=LAYERS)
    return ap.parse_args()


def main():
    args = parse_args()
    torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("CUDA not available: skipped")
        print(json.dumps({"device": "cuda", "skipped": True}))
        return
    configure(min(args.layers, 24) if args.quick else args.layers, args.device, 2 if args.quick else 3)
    torch.manual_seed(0)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {DEVICE}, {os.cpu_count()} cores, "
          f"load average {load:.1f} (timings are only meaningful on an idle machine)")
    t0 = time.perf_counter()
    weights = make_weights()
    loras = make_loras()
    reports = make_reports(loras)
    strengths = [s for _, _, s, _ in LORAS]
    plan = plan_for(reports, strengths)
    ranks_per_layer = [sum(r for _, r, _, layers in LORAS if i in layers) for i in range(LAYERS)]
    print(f"stack: {LAYERS} × Linear {N}×{N} fp16; LoRAs " +
          ", ".join(f"{n} r{r} s{s} on {len(l)} layers" for n, r, s, l in LORAS) +
          f"; Σr = {max(ranks_per_layer)} on layers 0–{LAYERS // 4 - 1}, {min(ranks_per_layer)} elsewhere")

    model = Stack(weights)
    params = dict(model.named_parameters())
    hwm0 = vm_hwm_bytes()
    patcher = MergePatcher(params)
    stats = patcher.apply(plan)
    hwm_delta = vm_hwm_bytes() - hwm0
    accounted = stats.backup_bytes + stats.peak_transient_bytes
    touched = LAYERS * N * N * 2
    budget = touched + 2 * N * N * 4

    patcher.restore()
    naive_weights = [w.clone() for w in weights]
    flip = {"v": 0}

    def full():
        fresh_patcher = MergePatcher(params)
        f0, t0 = minor_faults(), time.perf_counter()
        fresh_patcher.apply(plan)
        elapsed = time.perf_counter() - t0
        return fresh_patcher, elapsed, minor_faults() - f0

    def repatch(p):
        flip["v"] ^= 1
        s = list(strengths)
        s[QUARTER] = 0.9 if flip["v"] else 0.5
        t0 = time.perf_counter()
        st = p.apply(plan_for(reports, s))
        elapsed = time.perf_counter() - t0
        assert st.written == LAYERS // 4 and st.unchanged == LAYERS - LAYERS // 4
        return elapsed

    # Interleaved rounds, best of each: a shared machine's load then hits every method alike.
    merge_s, repatch_s, naive_s = float("inf"), float("inf"), float("inf")
    merge_faults = 0
    spent = time.perf_counter()
    for round_ in range(RUNS):
        p, elapsed, faults = full()
        if elapsed < merge_s:
            merge_s, merge_faults = elapsed, faults
        repatch_s = min(repatch_s, repatch(p), repatch(p))
        p.restore()
        t0 = time.perf_counter()
        naive_merge(naive_weights, loras)
        naive_s = min(naive_s, time.perf_counter() - t0)
        if time.perf_counter() - spent > 60:
            break
    del naive_weights

    floor_s, rates, bandwidth = measure_floor(ranks_per_layer)
    # What exact restore adds on top of the floor: a copy of every touched
    # weight into freshly allocated memory (page faults included).
    backup_s = best(lambda: [w.clone() for w in weights], 3)
    fault_s = fault_price_s()
    first_touch_s = merge_faults * fault_s
    side_s, merged_fwd_s, side_err = bypass_vs_merged(weights, loras)

    print(f"merge (ours):           {merge_s * 1e3:8.1f} ms  ({stats.lora_gemms} rank-concatenated GEMMs, "
          f"{stats.written} weights)")
    print(f"naive sequential fp32:  {naive_s * 1e3:8.1f} ms")
    print(f"floor:                  {floor_s * 1e3:8.1f} ms  (GEMM " +
          ", ".join(f"Σr={r}: {g:.0f} GFLOP/s" for r, g in rates.items()) +
          f"; memcpy {bandwidth / 1e9:.1f} GB/s)")
    print(f"floor + backups:        {(floor_s + backup_s) * 1e3:8.1f} ms  (cloning the touched weights into new "
          f"memory: {backup_s * 1e3:.1f} ms)")
    if fault_s:
        print(f"first touch in merge:   {first_touch_s * 1e3:8.1f} ms  ({merge_faults} minor page faults of the new "
              f"storage × {fault_s * 1e6:.2f} µs measured on fresh pages; merge less first touch ÷ floor = "
              f"{(merge_s - first_touch_s) / floor_s:.2f})")
    print(f"re-patch quarter LoRA:  {repatch_s * 1e3:8.1f} ms  ({LAYERS // 4} of {LAYERS} weights recomputed)")
    print(f"bypass fwd r16 fp32:    {side_s * 1e3:8.1f} ms  vs merged {merged_fwd_s * 1e3:.1f} ms "
          f"({BYPASS_LAYERS} layers, {TOKENS}×{N} fp32 activations; rel. diff {side_err:.1e})")
    print(f"peak extra (accounted): {accounted / 2**20:8.1f} MiB = backups {stats.backup_bytes / 2**20:.1f} "
          f"+ working set {stats.peak_transient_bytes / 2**20:.2f}; budget (touched weights + 2 layers "
          f"fp32 ΔW) {budget / 2**20:.1f} MiB; VmHWM delta {hwm_delta / 2**20:.1f} MiB")

    result = {
        "merge_vs_floor": round(merge_s / floor_s, 3),
        "merge_vs_floor_with_backups": round(merge_s / (floor_s + backup_s), 3),
        "merge_vs_naive": round(merge_s / naive_s, 3),
        "repatch_vs_full": round(repatch_s / merge_s, 3),
        "bypass_vs_merged": round(side_s / merged_fwd_s, 3),
        "peak_extra_mb": round(accounted / 2**20, 1),
        "merge_page_faults": merge_faults,
        "fault_us": round(fault_s * 1e6, 3),
        "merge_vs_floor_after_first_touch": round((merge_s - first_touch_s) / floor_s, 3),
    }
    path = comfy_dir()
    if path:
        try:
            proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--comfy-child", path,
                                   str(torch.get_num_threads()), str(LAYERS), DEVICE],
                                  capture_output=True, text=True, timeout=240)
        except subprocess.TimeoutExpired:
            proc = subprocess.CompletedProcess([], -1, "", "timed out after 240 s")
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
        if proc.returncode == 0 and lines:
            core = json.loads(lines[-1])
            print(f"ComfyUI core patch_model: {core['seconds'] * 1e3:8.1f} ms  ({path}; max |Δ| vs ours "
                  f"{core['max_abs_diff_vs_ours']:.1e})")
            result["core_vs_merge"] = round(core["seconds"] / merge_s, 3)
        else:
            print(f"ComfyUI core: failed ({proc.stderr.strip().splitlines()[-1:] or proc.returncode})")
    else:
        print("ComfyUI core: not found (set COMFYUI_DIR)")
    print(f"total bench time {time.perf_counter() - t0:.0f} s")
    result["device"], result["threads"], result["layers"] = DEVICE, torch.get_num_threads(), LAYERS
    result["rows"] = {"merge_vs_floor": result["merge_vs_floor"], "core_vs_merge": result.get("core_vs_merge")}
    print(json.dumps(result))


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--comfy-child":
        comfy_child(sys.argv[2])
    else:
        main()
