"""``python -m lora_core render``: batch-render a stack or a sweep on running ComfyUI servers.

    python -m lora_core render workflow_api.json --server 127.0.0.1:8188 [--server …] --out DIR
        [--node ID] [--stack '<lora:a:1> <lora:b:0.5>' | --stack '[{"lora": …}]']
        [--vary strength|lora|seed --row N --values "0, 0.5, 1" | "0:1:5" [--part both|model|clip]]
        [--y-vary … --y-row N --y-values …] [--seed N] [--timeout S] [--depth N] [--json]

Writes DIR/images/, DIR/index.json (resumable), DIR/index.html and, when
every cell is rendered, DIR/contact-sheet.png.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Optional

from ..errors import RenderError, SweepError
from ..stack import LoraStack, parse_rows
from ..sweep import AXIS_KINDS, PARTS, SweepSpec, axis
from ..tags import has_tags, parse_prompt_tags


def add_render_parser(sub) -> None:
    r = sub.add_parser("render", help="batch-render a stack or sweep on ComfyUI servers (HTTP API)",
                       description="Submit one prompt per sweep cell to ComfyUI servers, collect the images, "
                                   "and write a labelled contact sheet plus an index (JSON/HTML). Resumable.")
    r.add_argument("workflow", help="API-format workflow JSON (ComfyUI: Workflow → Export (API))")
    r.add_argument("--server", action="append", required=True, metavar="URL",
                   help="a ComfyUI server, e.g. 127.0.0.1:8188 (repeat to spread prompts over several)")
    r.add_argument("--out", required=True, help="output folder (images/, index.json, index.html, contact sheet)")
    r.add_argument("--node", help="id of the Patchbay stack node to write into (when there are several)")
    r.add_argument("--stack", help="the stack: JSON rows or <lora:name:strength> tags (default: the node's rows)")
    for prefix, dest in (("", "x"), ("y-", "y")):
        r.add_argument(f"--{prefix}vary", dest=f"{dest}_vary", choices=AXIS_KINDS,
                       help=f"what the {'second' if dest == 'y' else 'first'} axis varies")
        r.add_argument(f"--{prefix}row", dest=f"{dest}_row", type=int, default=1,
                       help="stack row to vary (1-based)")
        r.add_argument(f"--{prefix}values", dest=f"{dest}_values",
                       help='values: "0, 0.5, 1", or start:stop:count such as "0:1:5"; LoRA names; seeds')
        r.add_argument(f"--{prefix}part", dest=f"{dest}_part", choices=PARTS, default="both",
                       help="strength axes: model, clip or both strengths")
        r.add_argument(f"--{prefix}labels", dest=f"{dest}_labels", help="comma-separated labels, one per value")
        r.add_argument(f"--{prefix}title", dest=f"{dest}_title", default="", help="axis title")
    r.add_argument("--seed", type=int, help="seed written into every sampler (default: the workflow's)")
    r.add_argument("--timeout", type=float, default=600.0, help="seconds one prompt may take (default 600)")
    r.add_argument("--depth", type=int, default=2, help="prompts kept queued per server (default 2)")
    r.add_argument("--json", action="store_true", help="print the summary as JSON")
    r.set_defaults(handler=run_render)


def _stack_arg(text: str) -> LoraStack:
    if has_tags(text) and text.strip()[:1] not in "[{":
        tags = parse_prompt_tags(text)
        tags.raise_problems()
        return parse_rows([t.as_row() for t in tags.rows])
    return parse_rows(text)


def _axis(args, dest: str):
    kind, values = getattr(args, f"{dest}_vary"), getattr(args, f"{dest}_values")
    if kind is None and values is None:
        return None
    if values is None:
        raise SweepError(f"--{'y-' if dest == 'y' else ''}vary {kind} needs --{'y-' if dest == 'y' else ''}values")
    return axis(kind or "strength", values, row=getattr(args, f"{dest}_row") - 1, part=getattr(args, f"{dest}_part"),
                labels=getattr(args, f"{dest}_labels"), title=getattr(args, f"{dest}_title"))


def run_render(args, runner_factory=None) -> int:
    from .comfy import ComfyServer
    from .runner import Runner, make_job
    from .workflow import find_stack_node, load_workflow, stack_of

    workflow = load_workflow(args.workflow)
    node_id = find_stack_node(workflow, args.node)
    stack = _stack_arg(args.stack) if args.stack else stack_of(workflow, node_id)
    x, y = _axis(args, "x"), _axis(args, "y")
    if y is not None and x is None:
        raise SweepError("--y-vary needs a first axis (--vary/--values)")
    spec = SweepSpec(x, y) if x is not None else None
    if spec is not None:
        spec.check_stack(stack)
    try:
        servers = [ComfyServer(u, timeout=30.0) for u in args.server]
    except ValueError as e:
        raise RenderError(str(e), fix="write servers as host:port or http://host:port") from None
    job = make_job(workflow, os.path.basename(args.workflow), node_id, stack, spec, args.seed)
    runner = (runner_factory or Runner)(servers, args.out, timeout=args.timeout, depth=args.depth,
                                        show_steps=sys.stderr.isatty())
    index = runner.run(job)
    counts = index.counts()
    sheet = os.path.join(args.out, index.contact_sheet) if index.contact_sheet else None
    summary = {"out": args.out, "cells": len(index.cells), "done": counts["done"], "failed": counts["failed"],
               "contact_sheet": sheet, "index": os.path.join(args.out, "index.json"),
               "servers": sorted({c.server for c in index.cells if c.server})}
    if args.json:
        print(json.dumps(summary, indent=2, sort_keys=True))
    else:
        print(f"rendered {counts['done']} of {len(index.cells)} cells on {', '.join(summary['servers']) or '-'}")
        if sheet:
            print(f"contact sheet: {sheet}")
        print(f"index: {os.path.join(args.out, 'index.html')}")
    return 0


__all__ = ["add_render_parser", "run_render"]
