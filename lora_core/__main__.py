"""``python -m lora_core``: inspect, check and apply LoRA files; merge, resize, extract and convert
them (the tools live in ``lora_core/tools``).

Exit codes: 0 success; 1 ``check --strict`` found unmatched keys; 2 bad input
(unreadable or corrupt file, a LoRA ``apply`` refuses, bad arguments).  Errors print one line on stderr.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Optional, Sequence

from . import __version__
from .errors import FormatError, ModelMismatchError, PatchbayError


class ProgressBar:
    """A minimal stderr progress bar (no dependency beyond the standard library)."""

    def __init__(self, label: str, enabled: bool):
        self.label = label
        self.enabled = enabled and sys.stderr.isatty()
        self.start = time.perf_counter()

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled or total <= 0:
            return
        width = 30
        filled = int(width * done / total)
        elapsed = time.perf_counter() - self.start
        sys.stderr.write(f"\r{self.label} [{'#' * filled}{'.' * (width - filled)}] "
                         f"{done}/{total} {elapsed:5.1f}s")
        if done >= total:
            sys.stderr.write("\n")
        sys.stderr.flush()


def _lora_arg(text: str) -> tuple[str, float]:
    # PATH[:STRENGTH]; the strength is the part after the last colon when it parses.
    if ":" in text:
        head, _, tail = text.rpartition(":")
        try:
            return head, float(tail)
        except ValueError:
            pass
    return text, 1.0


def _print_inspect(info: dict) -> None:
    print(f"file:     {info['file']}")
    print(f"format:   {info['format']}")
    print(f"kinds:    {', '.join(f'{k} {v}' for k, v in sorted(info['kinds'].items()))}")
    print(f"modules:  {info['modules']}  tensors: {info['tensors']}")
    print(f"ranks:    {info['ranks']}   alphas: {info['alphas']}")
    if info["dora"]:
        print(f"dora:     {info['dora']} modules")
    meta = info["metadata"]
    if meta["trained_base"]:
        print(f"trained:  {meta['trained_base']}")
    if meta["trigger_words"]:
        print(f"triggers: {', '.join(meta['trigger_words'][:20])}")
    if meta["iclora_reference_downscale_factor"]:
        print(f"ic-lora:  reference_downscale_factor {meta['iclora_reference_downscale_factor']}")
    for w in meta["warnings"]:
        print(f"warning:  {w}")
    if "hash" in info:
        print(f"sha256:   {info['hash']['sha256']}  (autov2 {info['hash']['autov2']})")
    if info["unused"]:
        print(f"unused:   {len(info['unused'])} keys")
        for u in info["unused"][:20]:
            print(f"  {u['key']}: {u['reason']} {u['detail']}")
    for n in info["notes"]:
        print(f"note:     {n}")


def _print_report(data: dict) -> None:
    print(f"{data['file']}: {data['matched']} matched, {data['unmatched']} unmatched"
          f" (LoRA family {data['lora_family'] or '?'}, model family {data['model_family'] or '?'})")
    if data["family_warning"]:
        print(f"warning: {data['family_warning']}")
    if data["elsewhere"]:
        print(f"  for another component (e.g. a text encoder): {len(data['elsewhere'])}")
    for note in data["notes"]:
        print(f"note: {note}")
    by_reason: dict[str, list[dict]] = {}
    for u in data["unmatched_keys"]:
        by_reason.setdefault(u["reason"], []).append(u)
    for reason, items in by_reason.items():
        print(f"  {reason}: {len(items)}")
        for u in items[:10]:
            print(f"    {u['module']}{': ' + u['detail'] if u['detail'] else ''}")
        if len(items) > 10:
            print(f"    … {len(items) - 10} more")


def _apply_refusal(path: str, model: str, partial: bool) -> Optional[PatchbayError]:
    """Why ``apply`` must not bake this LoRA into this model, or None.

    A file that matches nothing is refused even with ``--partial`` (the output
    would be the input); damaged modules (invalid tensors) and modules that do
    not fit the model are refused unless ``--partial`` asks for what fits.
    """
    from . import api
    report = api.check(path, model)
    damaged = api.open_lora(path).unused
    if not report.matched:
        first = next(iter(report.unmatched or report.elsewhere), None)
        why = report.family_warning or (f"{first.reason}: {first.detail}" if first else "no modules")
        key = first.keys[0] if first and first.keys else (damaged[0].key if damaged else None)
        return ModelMismatchError(f"the LoRA matches nothing in this model ({why})", file=path, key=key,
                                  fix="use the model the LoRA was made for")
    if partial:
        return None
    fix = "re-export the LoRA, or pass --partial to bake only the modules that fit"
    if damaged:
        u = damaged[0]
        return FormatError(f"{len(damaged)} keys of the LoRA are damaged ({u.reason}: {u.detail})",
                           file=path, key=u.key, fix=fix)
    if report.unmatched:
        u = report.unmatched[0]
        return ModelMismatchError(f"{len(report.unmatched)} modules of the LoRA do not fit this model "
                                  f"({u.reason}: {u.detail})", file=path,
                                  key=u.keys[0] if u.keys else u.name, fix=fix)
    return None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m lora_core",
                                description="Inspect, check and apply LoRA files.")
    p.add_argument("--version", action="version", version=f"lora_core {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    i = sub.add_parser("inspect", help="summarise a LoRA file from its header")
    i.add_argument("lora")
    i.add_argument("--json", action="store_true")
    i.add_argument("--no-hash", action="store_true", help="skip hashing the file")
    c = sub.add_parser("check", help="coverage report of a LoRA against a model")
    c.add_argument("lora")
    c.add_argument("--model", required=True, help="safetensors state dict of the model")
    c.add_argument("--json", action="store_true")
    c.add_argument("--strict", action="store_true", help="exit 1 when anything is unmatched")
    a = sub.add_parser("apply", help="bake a LoRA stack into a copy of a model")
    a.add_argument("--model", required=True)
    a.add_argument("--lora", action="append", required=True, metavar="LORA[:STRENGTH]")
    a.add_argument("--out", required=True)
    a.add_argument("--force", action="store_true", help="overwrite an existing --out")
    a.add_argument("--json", action="store_true")
    a.add_argument("--partial", action="store_true",
                   help="bake the modules that fit and skip damaged or unmatched ones "
                        "(default: refuse the whole bake)")
    # LoRA tools (merge, resize, extract, convert): parsers and code in lora_core/tools/cli.py
    from .tools.cli import add_parsers as add_tool_parsers
    add_tool_parsers(sub)
    # render (batch rendering on ComfyUI servers): parser and code in lora_core/render/cli.py
    from .render.cli import add_render_parser
    add_render_parser(sub)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    from . import api
    args = build_parser().parse_args(argv)
    try:
        if args.command == "render":  # lora_core/render/cli.py
            return args.handler(args)
        from .tools import cli as tools_cli
        if args.command in tools_cli.COMMANDS:
            return tools_cli.run(args, lambda label: ProgressBar(label, True))
        if args.command == "inspect":
            info = api.inspect(args.lora, with_hash=not args.no_hash)
            if args.json:
                print(json.dumps(info, indent=2, sort_keys=True))
            else:
                _print_inspect(info)
            return 0
        if args.command == "check":
            data = api.report_to_json(api.check(args.lora, args.model))
            if args.json:
                print(json.dumps(data, indent=2, sort_keys=True))
            else:
                _print_report(data)
            return 1 if args.strict and (data["unmatched"] or data["family_warning"]) else 0
        if args.command == "apply":
            loras = [_lora_arg(x) for x in args.lora]
            for path, _ in loras:
                refusal = _apply_refusal(path, args.model, args.partial)
                if refusal is not None:
                    raise refusal
            result = api.apply(args.model, loras, args.out, force=args.force,
                               progress=ProgressBar("patching", True))
            summary = {"out": result.out, "changed_parameters": result.changed,
                       "loras": [api.report_to_json(r) | {"targets": None} for r in result.reports]}
            for entry in summary["loras"]:
                entry.pop("targets")
                # file keys that formed no module (damaged tensors, unknown suffixes)
                entry["unused_keys"] = [{"key": u.key, "reason": u.reason, "detail": u.detail}
                                        for u in api.open_lora(entry["file"]).unused]
            if args.json:
                print(json.dumps(summary, indent=2, sort_keys=True))
            else:
                for r in summary["loras"]:
                    print(f"{r['file']}: {r['matched']} matched, {r['unmatched']} unmatched"
                          + (f", {len(r['unused_keys'])} damaged or unknown keys" if r["unused_keys"] else ""))
                print(f"wrote {result.out} ({result.changed} parameters changed)")
            return 0
    except PatchbayError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    return 2


if __name__ == "__main__":
    sys.exit(main())
