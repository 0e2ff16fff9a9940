"""Benchmark of an 8-value strength sweep, three ways, on the SDXL-sized stack of bench/patch.py (CPU, one run).

Workload: bench/patch.py's model (100 × Linear(1280, 1280) fp16) and stack
(L8, L16, L32 on the first quarter, L64); the sweep varies the quarter LoRA
(L32, row 3) over 8 values, the other rows stay at their strengths.

* ``sweep``: our sweep — one ``MergePatcher`` holding the stack; each value
  is an incremental ``apply`` that recomputes only the parameters whose
  contributions changed (the 25 layers L32 touches), from the exact
  originals, so every step is bit-identical to a fresh patch (checked);
* ``full``: 8 full re-patches, core's behaviour on a strength change —
  restore every weight, then patch the whole stack again (with our own
  one-GEMM-per-weight maths, so this baseline is faster than core's);
* ``batched`` vs ``sequential`` sampling: a sampler-sized pass (8 of the
  layers with GELU between them, the 4-LoRA stack as bypass side paths,
  ``STEPS`` denoiser calls) for 8 strengths: 8 passes of batch B with a
  scalar strength each, vs one pass of batch 8·B with a per-sample
  strength vector (the same total batch); outputs are compared.

Threads are fixed (``PATCHBAY_BENCH_THREADS``, default 2).  ``--short`` runs
a reduced model (40 layers, one repeat) to check the script works.  The
last line is JSON: sweep_vs_full_repatch (8 full re-patches ÷ our sweep),
batched_vs_sequential (8 sequential passes ÷ the batched pass), plus the
seconds and the maximum output differences.
"""
from __future__ import annotations

import importlib.util
import json
import os
import sys
import time

import torch
from torch import nn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


def _load_patch_bench():
    """bench/patch.py as a module (its builders are the workload; H5 owns that file)."""
    spec = importlib.util.spec_from_file_location("bench_patch", os.path.join(ROOT, "bench", "patch.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


bp = _load_patch_bench()

from lora_core.bypass import install_bypass  # noqa: E402
from lora_core.patcher import MergePatcher  # noqa: E402

VALUES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0, 1.2, 1.4)
SWEPT = 2          # row of the quarter LoRA (L32) in bench/patch.py's LORAS
SAMPLER_LAYERS = 8
STEPS = 4
TOKENS_PER_SAMPLE = 64   # a small latent (e.g. a 256 px SD1.5 preview at the deepest level has 64 tokens)


def strengths_with(value: float) -> list[float]:
    s = [strength for _, _, strength, _ in bp.LORAS]
    s[SWEPT] = value
    return s


def restrict(plan: dict, layers: int) -> dict:
    keep = {f"layers.{i}.weight" for i in range(layers)}
    return {k: v for k, v in plan.items() if k in keep}


def measure_repatch(weights, reports, layers: int, runs: int):
    """(our sweep seconds, full re-patch seconds, bit-identical to fresh?)."""
    plans = [restrict(bp.plan_for(reports, strengths_with(v)), layers) for v in VALUES]
    base_plan = restrict(bp.plan_for(reports, strengths_with(bp.LORAS[SWEPT][2])), layers)

    model = bp.Stack([w.clone() for w in weights[:layers]])
    ours = MergePatcher(dict(model.named_parameters()))

    def setup_ours():
        ours.apply(base_plan)  # the stack as the user had it before sweeping

    def run_ours():
        for plan in plans:
            ours.apply(plan)

    full_model = bp.Stack([w.clone() for w in weights[:layers]])
    full = MergePatcher(dict(full_model.named_parameters()))

    def setup_full():
        full.apply(base_plan)

    def run_full():
        for plan in plans:
            full.restore()
            full.apply(plan)

    t_ours = bp.best(run_ours, runs, setup=setup_ours, budget_s=60)
    t_full = bp.best(run_full, runs, setup=setup_full, budget_s=60)
    fresh_model = bp.Stack([w.clone() for w in weights[:layers]])
    MergePatcher(dict(fresh_model.named_parameters())).apply(plans[-1])
    identical = all(torch.equal(a.weight, b.weight) for a, b in zip(model.layers, fresh_model.layers))
    return t_ours, t_full, identical


class Sampler(nn.Module):
    """A denoiser-sized stand-in: linear layers with GELU, fp32 (CPU fp16 matmul is slow)."""

    def __init__(self, weights):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(bp.N, bp.N, bias=False) for _ in weights)
        with torch.no_grad():
            for layer, w in zip(self.layers, weights):
                layer.weight.copy_(w.float())

    def forward(self, x):
        for layer in self.layers:
            x = torch.nn.functional.gelu(layer(x))
        return x


def measure_batched(weights, reports, batch: int, runs: int):
    """(sequential seconds, batched seconds, max relative difference)."""
    sampler = Sampler(weights[:SAMPLER_LAYERS])
    plan = restrict(bp.plan_for(reports, [1.0] * len(bp.LORAS)), SAMPLER_LAYERS)
    base = {i: s for i, s in enumerate(strengths_with(1.0))}
    handle = install_bypass(sampler, plan, strengths=base)
    entry = SWEPT  # build_plan numbers entries by report order
    x = torch.randn(batch, TOKENS_PER_SAMPLE, bp.N, generator=torch.Generator().manual_seed(5)) * 0.5

    def denoise(inp):
        y = inp
        for _ in range(STEPS):
            y = inp - 0.1 * sampler(y)
        return y

    def sequential():
        outs = []
        handle.clear_per_sample()
        for v in VALUES:
            handle.set_strength(entry, v)
            outs.append(denoise(x))
        return torch.cat(outs, 0)

    vector = torch.tensor([v for v in VALUES for _ in range(batch)])

    def batched():
        handle.set_strength(entry, vector)
        out = denoise(x.repeat(len(VALUES), 1, 1))
        handle.clear_per_sample()
        return out

    with torch.inference_mode():
        a, b = sequential(), batched()
        err = ((a - b).abs().max() / a.abs().max()).item()
        t_seq = bp.best(sequential, runs, budget_s=60)
        t_bat = bp.best(batched, runs, budget_s=60)
    handle.remove()
    return t_seq, t_bat, err


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    short = "--short" in argv
    threads = int(os.environ.get("PATCHBAY_BENCH_THREADS", "2"))
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    layers = 40 if short else bp.LAYERS  # 40: the quarter LoRA (layers 0-24) touches 25 of them
    runs = 1 if short else 3
    batch = 1
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads (fixed), CPU; "
          f"{layers} layers of {bp.N}x{bp.N} fp16, stack {[n for n, *_ in bp.LORAS]}, "
          f"sweeping {bp.LORAS[SWEPT][0]} over {len(VALUES)} values" + (" [short]" if short else ""))
    weights, loras = bp.make_weights(), bp.make_loras()
    reports = bp.make_reports(loras)
    t0 = time.perf_counter()
    t_ours, t_full, identical = measure_repatch(weights, reports, layers, runs)
    print(f"sweep:      our incremental sweep {t_ours * 1e3:8.1f} ms for 8 values "
          f"(bit-identical to a fresh patch: {identical})")
    print(f"            8 full re-patches      {t_full * 1e3:8.1f} ms  -> {t_full / t_ours:5.2f}x")
    t_seq, t_bat, err = measure_batched(weights, reports, batch, runs)
    print(f"sampling:   8 sequential passes (batch {batch}) {t_seq * 1e3:8.1f} ms, one batched pass "
          f"(batch {batch * len(VALUES)}) {t_bat * 1e3:8.1f} ms -> {t_seq / t_bat:5.2f}x "
          f"(max rel diff {err:.1e})")
    print(f"total {time.perf_counter() - t0:.1f}s")
    print(json.dumps({"sweep_vs_full_repatch": round(t_full / t_ours, 3),
                      "batched_vs_sequential": round(t_seq / t_bat, 3),
                      "sweep_s": round(t_ours, 4), "full_repatch_s": round(t_full, 4),
                      "sequential_s": round(t_seq, 4), "batched_s": round(t_bat, 4),
                      "sweep_bit_identical": identical, "batched_max_rel_diff": err,
                      "threads": threads, "layers": layers, "short": short}))


if __name__ == "__main__":
    main()
