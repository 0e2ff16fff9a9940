"""The one atomic safetensors writer (the tools and ``api.apply`` share it).

A file is written to a temporary name in the target folder and then moved
into place in one step, so a failure (an error, a full disk, Ctrl-C) never
leaves a partial file under the target name.  Without ``force`` an existing
target is refused, and the final step is a hard link (which fails when a file
of that name appeared meanwhile) instead of a rename.  A target that is one
of the inputs is always refused.
"""
from __future__ import annotations

import json
import os
import tempfile
from typing import Iterable, Mapping, Optional

import torch

from .. import __version__
from ..errors import NonFiniteError, PatchbayError

TEMP_PREFIX = ".patchbay-"


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.abspath(a) == os.path.abspath(b)


def check_target(out: str, *, force: bool = False, inputs: Iterable[str] = ()) -> str:
    """Refuse a target that exists (without ``force``), is an input, or has no folder; return it."""
    out = os.fspath(out)
    for path in inputs:
        if path and _same_file(out, os.fspath(path)):
            raise PatchbayError("output would overwrite an input", file=out, fix="choose another output name")
    if os.path.isdir(out):
        raise PatchbayError("output is a directory", file=out, fix="name a .safetensors file")
    if os.path.exists(out) and not force:
        raise PatchbayError("output file exists", file=out, fix="choose another name or pass --force to overwrite it")
    folder = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(folder):
        raise PatchbayError("output folder does not exist", file=out, fix="create the folder first")
    return out


def check_finite_tensors(tensors: Mapping[str, torch.Tensor], out: str) -> None:
    for key, t in tensors.items():
        if t.is_floating_point() and t.numel() and not bool(torch.isfinite(t).all()):
            raise NonFiniteError("result holds NaN or Inf values; nothing was written", file=out, key=key,
                                 fix="an input is broken or the strengths overflow; check the inputs")


def save_atomic(tensors: Mapping[str, torch.Tensor], out: str, *, metadata: Optional[Mapping[str, str]] = None,
                force: bool = False, inputs: Iterable[str] = ()) -> str:
    """Write ``tensors`` to ``out`` atomically (see the module docstring); return ``out``."""
    from safetensors.torch import save_file

    inputs = tuple(inputs)
    out = check_target(out, force=force, inputs=inputs)
    folder = os.path.dirname(os.path.abspath(out))
    fd, tmp = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=".safetensors", dir=folder)
    os.close(fd)
    try:
        save_file({k: v.contiguous() for k, v in tensors.items()}, tmp,
                  metadata={str(k): str(v) for k, v in (metadata or {}).items()} or None)
        if force:
            os.replace(tmp, out)
        else:
            try:
                os.link(tmp, out)  # fails if the name was taken meanwhile: never overwrite
            except FileExistsError:
                raise PatchbayError("output file exists", file=out,
                                    fix="choose another name or pass --force to overwrite it") from None
            except OSError:  # a file system without hard links
                if os.path.exists(out):
                    raise PatchbayError("output file exists", file=out, fix="choose another name") from None
                os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out


def write_lora(tensors: Mapping[str, torch.Tensor], out: str, *, metadata: Optional[Mapping[str, str]] = None,
               force: bool = False, inputs: Iterable[str] = ()) -> str:
    """:func:`save_atomic` for a LoRA: refuses an empty or non-finite result first."""
    if not tensors:
        raise PatchbayError("nothing to write: the result holds no LoRA module", file=os.fspath(out),
                            fix="check that the inputs hold LoRA modules (see `python -m lora_core inspect`)")
    check_finite_tensors(tensors, os.fspath(out))
    return save_atomic(tensors, out, metadata=metadata, force=force, inputs=inputs)


def source_entry(path: str, strength: Optional[float] = None, *, with_hash: bool = True) -> dict:
    """How a tool names one of its inputs in the output's metadata (no folder, so no private paths)."""
    from ..io import hash_file
    entry: dict = {"file": os.path.basename(os.fspath(path))}
    if strength is not None:
        entry["strength"] = float(strength)
    if with_hash and os.path.isfile(path):
        h = hash_file(path)
        entry["sha256"] = h.sha256
        entry["autov2"] = h.autov2
    return entry


def tool_metadata(tool: str, sources: list[dict], *, rank: Optional[int] = None,
                  extra: Optional[Mapping[str, object]] = None) -> dict[str, str]:
    """The header every tool writes: which tool, from what, with which settings."""
    meta = {
        "patchbay_tool": tool,
        "patchbay_version": __version__,
        "patchbay_sources": json.dumps(sources, sort_keys=True),
        "ss_network_module": "networks.lora",
    }
    if rank is not None:
        meta["ss_network_dim"] = str(rank)
        meta["ss_network_alpha"] = str(rank)
    for k, v in (extra or {}).items():
        meta[f"patchbay_{k}"] = v if isinstance(v, str) else json.dumps(v, sort_keys=True)
    return meta
