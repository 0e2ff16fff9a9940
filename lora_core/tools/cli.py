"""The ``merge``, ``resize``, ``extract`` and ``convert`` subcommands of ``python -m lora_core``.

``__main__`` only registers these parsers and dispatches here.  Every command
writes atomically, refuses an existing ``--out`` without ``--force``, prints a
one-line summary of the numeric error (the whole per-layer report with
``--json``) and leaves errors to ``__main__`` (one line, exit 2).
"""
from __future__ import annotations

import argparse
import json
from typing import Callable

import torch

from ..errors import PatchbayError

COMMANDS = ("merge", "resize", "extract", "convert")
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def _source(text: str):
    from .merge import Source
    # PATH[:STRENGTH]; the strength is the part after the last colon when it parses.
    if ":" in text:
        head, _, tail = text.rpartition(":")
        try:
            return Source(head, float(tail))
        except ValueError:
            pass
    return Source(text, 1.0)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="the LoRA file to write")
    p.add_argument("--force", action="store_true", help="overwrite an existing --out")
    p.add_argument("--json", action="store_true", help="print the per-layer report as JSON")
    p.add_argument("--dtype", choices=sorted(DTYPES), help="tensor dtype of the output")


def add_parsers(sub) -> None:
    """Register the tool subcommands on ``sub`` (an argparse subparsers object)."""
    m = sub.add_parser("merge", help="merge a LoRA stack into one LoRA file")
    m.add_argument("loras", nargs="+", metavar="LORA[:STRENGTH]")
    m.add_argument("--rank", type=int, help="SVD to this rank (default: exact rank concatenation)")
    m.add_argument("--energy", type=float, help="SVD keeping this fraction of the energy (0-1]")
    m.add_argument("--model", help="base model (safetensors): match modules across namings, "
                                   "and compute kinds that read the base (OFT, IA3, DoRA)")
    m.add_argument("--to", choices=("kohya", "peft", "comfy"), help="naming of the output (needs --model "
                                                                     "when it differs from the inputs')")
    _common(m)
    r = sub.add_parser("resize", help="change a LoRA's rank by SVD")
    r.add_argument("lora")
    r.add_argument("--rank", type=int)
    r.add_argument("--energy", type=float, help="keep this fraction of the energy (0-1] instead of a rank")
    r.add_argument("--model", help="base model, for kinds that read the base weight")
    _common(r)
    e = sub.add_parser("extract", help="extract a LoRA from a base model and a fine-tune of it")
    e.add_argument("--base", required=True, help="base model (safetensors)")
    e.add_argument("--tuned", required=True, help="fine-tuned model (safetensors, same naming)")
    e.add_argument("--rank", type=int)
    e.add_argument("--energy", type=float, help="keep this fraction of each layer's energy (0-1]")
    e.add_argument("--to", choices=("kohya", "peft", "comfy"), default="comfy", help="naming (default comfy)")
    e.add_argument("--no-1d", action="store_true", help="leave out bias and norm changes")
    e.add_argument("--device", default="cpu", help="where the SVDs run, e.g. cuda (default cpu)")
    _common(e)
    c = sub.add_parser("convert", help="rename a LoRA's modules to kohya, PEFT/diffusers or ComfyUI naming")
    c.add_argument("lora")
    c.add_argument("--to", required=True, choices=("kohya", "peft", "comfy"))
    c.add_argument("--model", required=True, help="base model (safetensors, any naming) that names the modules")
    _common(c)


def _print_summary(command: str, out: str, result, as_json: bool) -> None:
    data = result.to_json() | {"out": out, "command": command}
    if as_json:
        print(json.dumps(data, indent=2, sort_keys=True))
        return
    s = result.summary()
    methods = ", ".join(f"{k} {v}" for k, v in sorted(s["methods"].items()))
    ranks = s["ranks"]
    rank_text = (f"rank {ranks[0]}" if len(ranks) == 1 else f"ranks {ranks[0]}-{ranks[-1]}") if ranks else "no rank"
    err = s["rel_error"]
    print(f"wrote {out}: {s['modules']} modules ({methods}), {rank_text}; "
          f"relative error max {err['max']:.3g} mean {err['mean']:.3g}"
          + (f" (worst {err['worst_layer']})" if err["worst_layer"] else "")
          + (f"; energy kept min {s['energy_min']:.4f}" if s["energy_min"] < 1.0 else ""))
    for note in s["notes"]:
        print(f"note: {note}")


def run(args: argparse.Namespace, progress: Callable[[str], Callable[[int, int], None]]) -> int:
    """Run one tool command; ``progress(label)`` makes a progress callback (a bar on a TTY).

    File-system failures (a read-only folder, a full disk) become one-line errors like any bad input."""
    try:
        return _run(args, progress)
    except OSError as e:
        raise PatchbayError(f"cannot read or write a file: {e.strerror or e}", file=e.filename,
                            fix="check the path, its permissions and the free space") from None


def _run(args: argparse.Namespace, progress: Callable[[str], Callable[[int, int], None]]) -> int:
    from .writer import check_target, write_lora
    dtype = DTYPES[args.dtype] if args.dtype else None
    if args.command == "merge":
        from .merge import merge
        sources = [_source(x) for x in args.loras]
        inputs = [s.path for s in sources] + ([args.model] if args.model else [])
        check_target(args.out, force=args.force, inputs=inputs)
        result = merge(sources, rank=args.rank, energy=args.energy, model=args.model, naming=args.to,
                       dtype=dtype, progress=progress("merging"))
    elif args.command == "resize":
        from .resize import resize
        inputs = [args.lora] + ([args.model] if args.model else [])
        check_target(args.out, force=args.force, inputs=inputs)
        result = resize(args.lora, rank=args.rank, energy=args.energy, model=args.model, dtype=dtype,
                        progress=progress("resizing"))
    elif args.command == "extract":
        from .extract import extract
        inputs = [args.base, args.tuned]
        check_target(args.out, force=args.force, inputs=inputs)
        result = extract(args.base, args.tuned, rank=args.rank, energy=args.energy, naming=args.to,
                         dtype=dtype or torch.float16, include_1d=not args.no_1d, progress=progress("extracting"),
                         device=None if args.device == "cpu" else args.device)
    elif args.command == "convert":
        from .convert import convert
        inputs = [args.lora, args.model]
        check_target(args.out, force=args.force, inputs=inputs)
        result = convert(args.lora, to=args.to, model=args.model, dtype=dtype, progress=progress("converting"))
    else:  # pragma: no cover - argparse only dispatches known commands
        raise PatchbayError(f"unknown command {args.command!r}")
    out = write_lora(result.tensors, args.out, metadata=result.metadata, force=args.force, inputs=inputs)
    _print_summary(args.command, out, result, args.json)
    return 0
