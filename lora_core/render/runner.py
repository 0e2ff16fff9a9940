"""Render every cell of a sweep on one or more ComfyUI servers, then a contact sheet.

Dispatch is deliberately small (ComfyUI is the engine and keeps its own
queue): one worker thread per server keeps up to ``depth`` prompts queued on
it, taking cells from one shared queue; a server that stops answering hands
its queued cells back to that queue for the others, and its worker ends.
Only the main thread writes files: the images of a finished prompt
(atomically), then the index (atomically), so Ctrl-C or a crash leaves an
index whose ``done`` cells are all on disk.  When every cell is done the
contact sheet (a labelled grid of each cell's first image) is written.
"""
from __future__ import annotations

import os
import queue
import re
import sys
import threading
import time
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch

from ..errors import RenderError
from ..grid import GridLayout, grid_image, read_png, write_atomic, write_png
from ..stack import LoraStack
from ..sweep import SweepCell, SweepSpec
from ..tags import format_tag
from .comfy import ComfyServer, PromptFailed, ServerGone, check_entry, images_of
from .index import CellRecord, RenderIndex, load_index, resume_from, write_index
from .workflow import cell_prompt, prompt_key

SHEET_NAME = "contact-sheet.png"


@dataclass(frozen=True)
class RenderJob:
    workflow_name: str
    stack_node: str
    prompts: tuple           # one API prompt per cell, reading order
    cells: tuple             # SweepCell per prompt
    columns: int
    rows: int
    title_x: str
    title_y: str


def make_job(workflow: dict, workflow_name: str, node_id: str, stack: LoraStack,
             spec: Optional[SweepSpec], seed: Optional[int]) -> RenderJob:
    if spec is None:
        cells = (SweepCell(0, 0, stack, seed if seed is not None else 0, "", ""),)
        columns, rows, titles = 1, 1, ("", "")
    else:
        cells = spec.cells(stack, seed if seed is not None else 0)
        columns, rows, titles = spec.columns, spec.rows, spec.titles(stack)
    uses_seed = seed is not None or (spec is not None and "seed" in (spec.x.kind, spec.y.kind if spec.y else ""))
    prompts = tuple(cell_prompt(workflow, node_id, c.stack, c.seed if uses_seed else None) for c in cells)
    return RenderJob(workflow_name, node_id, prompts, cells, columns, rows, titles[0], titles[1])


def stack_tags(stack: LoraStack) -> str:
    return " ".join(format_tag(e.lora, e.strength_model, e.strength_clip) for e in stack.entries if e.enabled)


def _index_for(job: RenderJob) -> RenderIndex:
    cells = []
    for cell, prompt in zip(job.cells, job.prompts):
        cells.append(CellRecord(key=prompt_key(prompt), ix=cell.ix, iy=cell.iy, label_x=cell.label_x,
                                label_y=cell.label_y, stack=cell.stack.to_rows(), tags=stack_tags(cell.stack),
                                seed=cell.seed))
    return RenderIndex(workflow=job.workflow_name, stack_node=job.stack_node, columns=job.columns,
                       rows=job.rows, title_x=job.title_x, title_y=job.title_y, cells=cells)


_EXT = re.compile(r"\.([A-Za-z0-9]{1,5})$")


def _image_name(key: str, n: int, server_name: str) -> str:
    m = _EXT.search(server_name)
    ext = m.group(1).lower() if m else "png"
    return f"images/{key}_{n}.{ext}"


def _stderr(line: str) -> None:
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


class Runner:
    def __init__(self, servers: Sequence[ComfyServer], out_dir: str, *, timeout: float = 600.0, depth: int = 2,
                 log: Callable[[str], None] = _stderr,
                 on_cell_done: Optional[Callable[[CellRecord, RenderIndex], None]] = None,
                 poll: float = 1.0, show_steps: bool = False):
        if not servers:
            raise RenderError("no server given", fix="pass --server http://127.0.0.1:8188")
        self.servers = list(servers)
        self.out_dir = out_dir
        self.timeout = timeout
        self.depth = max(1, depth)
        self.log = log
        self.on_cell_done = on_cell_done
        self.poll = poll
        self.show_steps = show_steps  # sampler steps of running prompts, from the websocket
        self._stop = threading.Event()

    # ------------------------------------------------------------- public
    def run(self, job: RenderJob) -> RenderIndex:
        index_path = os.path.join(self.out_dir, "index.json")
        index = _index_for(job)
        kept = resume_from(load_index(index_path), index, self.out_dir)
        todo = [i for i, c in enumerate(index.cells) if c.status != "done"]
        if kept:
            self.log(f"resuming: {kept} of {len(index.cells)} cells already rendered")
        live = self._reachable() if todo else []
        os.makedirs(os.path.join(self.out_dir, "images"), exist_ok=True)  # only once a server answers
        write_index(index, self.out_dir)
        if todo:
            self._dispatch(job, index, todo, live)
        counts = index.counts()
        if counts["done"] + counts["failed"] == len(index.cells):
            self._contact_sheet(index)
            write_index(index, self.out_dir)
        failed = [c for c in index.cells if c.status == "failed"]
        if failed:
            first = failed[0]
            raise RenderError(f"{len(failed)} of {len(index.cells)} prompts failed; first: cell "
                              f"{_cell_name(first)}: {first.error}",
                              fix="see index.html; fix the workflow and run again (finished cells are kept)")
        return index

    # ------------------------------------------------------------- internals
    def _reachable(self) -> list[ComfyServer]:
        live, errors = [], []
        for s in self.servers:
            try:
                s.check()
                live.append(s)
            except ServerGone as e:
                errors.append(str(e))
                self.log(f"warning: {e}")
        if not live:
            raise RenderError("no server is reachable: " + "; ".join(errors),
                              fix="start ComfyUI (python main.py --listen) or fix the --server address")
        return live

    def _dispatch(self, job: RenderJob, index: RenderIndex, todo: list[int], servers: list[ComfyServer]) -> None:
        pending: "queue.Queue[int]" = queue.Queue()
        for i in todo:
            pending.put(i)
        events: "queue.Queue[tuple]" = queue.Queue()
        remaining = [len(todo)]
        lock = threading.Lock()
        inflight: dict[str, tuple[ComfyServer, str]] = {}
        workers = []
        for server in servers:
            t = threading.Thread(target=self._worker, args=(server, job, pending, events, remaining, lock,
                                                            inflight), daemon=True, name=f"render-{server.name}")
            t.start()
            workers.append(t)
        alive = len(workers)
        finished = 0
        try:
            while finished < len(todo):
                try:
                    event = events.get(timeout=0.2)
                except queue.Empty:
                    if not any(t.is_alive() for t in workers):
                        alive = 0
                    if alive == 0:
                        break
                    continue
                kind = event[0]
                if kind == "done":
                    _, i, server, prompt_id, images, seconds = event
                    cell = index.cells[i]
                    paths = []
                    for n, (ref, data) in enumerate(images):
                        rel = _image_name(cell.key, n, ref.filename)
                        write_atomic(os.path.join(self.out_dir, rel), data)
                        paths.append(rel)
                    cell.status, cell.server, cell.prompt_id = "done", server.name, prompt_id
                    cell.images, cell.seconds, cell.error = paths, round(seconds, 3), ""
                    if not paths:
                        cell.status, cell.error = "failed", "the prompt produced no image (add a SaveImage node)"
                    finished += 1
                    write_index(index, self.out_dir)
                    self.log(f"[{finished}/{len(todo)}] {_cell_name(cell)} {cell.status} on {server.name} "
                             f"({seconds:.1f}s)")
                    if self.on_cell_done is not None:
                        self.on_cell_done(cell, index)
                elif kind == "failed":
                    _, i, server, message = event
                    cell = index.cells[i]
                    cell.status, cell.server, cell.error = "failed", server.name, message
                    finished += 1
                    write_index(index, self.out_dir)
                    self.log(f"[{finished}/{len(todo)}] {_cell_name(cell)} FAILED on {server.name}: {message}")
                elif kind == "gone":
                    _, server, message, requeued = event
                    alive -= 1
                    self.log(f"warning: {message}; {requeued} queued prompt(s) go to the other servers")
                elif kind == "progress" and self.show_steps:
                    _, i, server, value, total = event
                    self.log(f"  {_cell_name(index.cells[i])} on {server.name}: step {value}/{total}")
            if finished < len(todo):
                left = len(todo) - finished
                raise RenderError(f"every server went away; {left} of {len(index.cells)} prompts are not "
                                  "rendered", fix="start a server and run the same command again: finished "
                                                  "cells are kept")
        except BaseException:
            self._stop.set()
            with lock:
                for server, prompt_id in list(inflight.values()):
                    server.delete([prompt_id])  # best effort: do not leave our queue behind
            write_index(index, self.out_dir)
            raise
        finally:
            self._stop.set()

    def _worker(self, server: ComfyServer, job: RenderJob, pending, events, remaining, lock, inflight) -> None:
        mine: list[tuple[int, str, float]] = []  # (cell, prompt id, submitted at)
        try:
            while not self._stop.is_set():
                while len(mine) < self.depth and not self._stop.is_set():
                    try:
                        i = pending.get_nowait()
                    except queue.Empty:
                        break
                    try:
                        prompt_id = server.submit(job.prompts[i])
                    except PromptFailed as e:
                        with lock:
                            remaining[0] -= 1
                        events.put(("failed", i, server, str(e)))
                        continue
                    except ServerGone:
                        pending.put(i)
                        raise
                    mine.append((i, prompt_id, time.monotonic()))
                    with lock:
                        inflight[prompt_id] = (server, prompt_id)
                if not mine:
                    with lock:
                        if remaining[0] <= 0:
                            return
                    time.sleep(0.1)  # another server may still hand cells back if it goes away
                    continue
                i, prompt_id, started = mine[0]
                try:
                    entry = server.wait(prompt_id, self.timeout, poll=self.poll, cancelled=self._stop.is_set,
                                        progress=self._stepper(events, i, server))
                    check_entry(entry)
                    images = [(ref, server.view(ref)) for ref in images_of(entry)]
                except PromptFailed as e:
                    mine.pop(0)
                    self._forget(lock, inflight, prompt_id, remaining)
                    events.put(("failed", i, server, str(e)))
                    continue
                mine.pop(0)
                self._forget(lock, inflight, prompt_id, remaining)
                events.put(("done", i, server, prompt_id, images, time.monotonic() - started))
        except ServerGone as e:
            with lock:
                for i, prompt_id, _ in mine:
                    inflight.pop(prompt_id, None)
                    pending.put(i)
            events.put(("gone", server, str(e), len(mine)))
        finally:
            server.close()

    def _stepper(self, events, i: int, server: ComfyServer):
        """A progress callback that forwards at most one step event per second to the main thread."""
        last = [0.0]

        def step(value: int, total: int) -> None:
            now = time.monotonic()
            if self.show_steps and (now - last[0] >= 1.0 or value >= total):
                last[0] = now
                events.put(("progress", i, server, value, total))
        return step

    @staticmethod
    def _forget(lock, inflight, prompt_id, remaining) -> None:
        with lock:
            inflight.pop(prompt_id, None)
            remaining[0] -= 1

    def _contact_sheet(self, index: RenderIndex) -> None:
        images, size = [], None
        for cell in index.cells:
            img = None
            if cell.status == "done" and cell.images:
                with open(os.path.join(self.out_dir, cell.images[0]), "rb") as f:
                    img = read_png(f.read())
                size = size or tuple(img.shape[:2])
            images.append(img)
        if size is None:
            return
        cells = []
        for img in images:
            if img is None or tuple(img.shape[:2]) != size:
                img = torch.full((*size, 3), 0.5)  # a failed (or odd-sized) cell shows grey
            cells.append(img)
        has_x = any(c.label_x for c in index.cells)
        layout = GridLayout(columns=index.columns, rows=index.rows,
                            labels_x=tuple(c.label_x for c in index.cells[:index.columns]) if has_x else (),
                            labels_y=tuple(index.cells[r * index.columns].label_y for r in range(index.rows))
                            if index.rows > 1 else (),
                            title_x=index.title_x, title_y=index.title_y,
                            cell_text=tuple(c.tags if c.status == "done" else f"FAILED {c.error}"
                                            for c in index.cells),
                            font_size=max(10, min(24, size[1] // 12)))
        write_png(os.path.join(self.out_dir, SHEET_NAME), grid_image(cells, layout)[0])
        index.contact_sheet = SHEET_NAME


def _cell_name(cell: CellRecord) -> str:
    parts = [p for p in (cell.label_y, cell.label_x) if p]
    return " / ".join(parts) if parts else cell.key


__all__ = ["Runner", "RenderJob", "make_job", "stack_tags", "SHEET_NAME"]
