"""Reading LoRA files: safetensors through a memory map, checked headers,
weights-only pickles, metadata and content hashes.

Tensors come back as zero-copy views of a copy-on-write memory map, so
opening a file reads its header only; pages are read when a tensor is used,
and nothing we do can write to the user's file.
"""
from __future__ import annotations

import hashlib
import json
import mmap
import os
import struct
from dataclasses import dataclass
from typing import Mapping

import torch

from .errors import LoraFileError, NonFiniteError, UnsafeFileError
from .jsontext import JsonNestingError, loads_bounded

SAFETENSORS_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}
for _name, _attr in (("F8_E4M3", "float8_e4m3fn"), ("F8_E5M2", "float8_e5m2")):
    if hasattr(torch, _attr):
        SAFETENSORS_DTYPES[_name] = getattr(torch, _attr)

MAX_HEADER_BYTES = 100 * 1024 * 1024
PICKLE_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin")


@dataclass(frozen=True)
class TensorInfo:
    dtype: str
    shape: tuple[int, ...]
    start: int  # absolute offset in the file
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.start


@dataclass(frozen=True)
class SafetensorsHeader:
    path: str
    metadata: Mapping[str, str]
    tensors: Mapping[str, TensorInfo]
    data_start: int
    file_size: int


def _fail(path: str, message: str, key: str | None = None, fix: str | None = None) -> LoraFileError:
    return LoraFileError(message, file=path, key=key,
                         fix=fix or "re-download or re-export the file; it is damaged or not a LoRA")


def read_header(path: str) -> SafetensorsHeader:
    """Parse and validate a safetensors header without touching tensor data."""
    path = os.fspath(path)
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise _fail(path, "file is too short to be safetensors (truncated?)")
            (n,) = struct.unpack("<Q", head)
            if n <= 1 or n > MAX_HEADER_BYTES or 8 + n > size:
                raise _fail(path, f"safetensors header length {n} does not fit a {size}-byte file "
                                  "(truncated or not safetensors)")
            raw = f.read(n)
    except FileNotFoundError:
        raise LoraFileError("file not found", file=path,
                            fix="check the name and the loras folder") from None
    except IsADirectoryError:
        raise LoraFileError("path is a directory, not a file", file=path) from None
    except PermissionError as e:
        raise LoraFileError(f"file is not readable ({e.strerror})", file=path,
                            fix="check the file's permissions") from None
    except OSError as e:
        raise LoraFileError(f"file cannot be read ({e})", file=path) from None
    try:
        doc = loads_bounded(raw.decode("utf-8"))
    except JsonNestingError as e:
        raise _fail(path, f"safetensors header is not valid JSON ({e})") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise _fail(path, f"safetensors header is not valid JSON ({e.__class__.__name__})") from None
    if not isinstance(doc, dict):
        raise _fail(path, "safetensors header is not a JSON object")
    meta = doc.pop("__metadata__", None) or {}
    if not isinstance(meta, dict):
        raise _fail(path, "safetensors __metadata__ is not an object")
    metadata = {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in meta.items()}
    data_start = 8 + n
    data_len = size - data_start
    tensors: dict[str, TensorInfo] = {}
    spans = []
    for key, info in doc.items():
        if not isinstance(info, dict) or "dtype" not in info or "shape" not in info \
                or "data_offsets" not in info:
            raise _fail(path, "tensor entry is malformed", key)
        dtype = info["dtype"]
        if dtype not in SAFETENSORS_DTYPES:
            raise _fail(path, f"unsupported tensor dtype {dtype!r}", key,
                        fix="convert the file to fp16/bf16/fp32")
        shape = info["shape"]
        offsets = info["data_offsets"]
        if (not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape)
                or not isinstance(offsets, list) or len(offsets) != 2
                or not all(isinstance(o, int) for o in offsets)):
            raise _fail(path, "tensor shape or offsets are malformed", key)
        begin, end = offsets
        itemsize = torch.empty((), dtype=SAFETENSORS_DTYPES[dtype]).element_size()
        numel = 1
        for d in shape:
            numel *= d
        if not (0 <= begin <= end <= data_len):
            raise _fail(path, f"tensor data offsets {begin}..{end} lie outside the file's "
                              f"{data_len} data bytes (truncated file or lying header)", key)
        if end - begin != numel * itemsize:
            raise _fail(path, f"tensor byte length {end - begin} does not match shape {shape} "
                              f"of {dtype}", key)
        spans.append((begin, end, key))
        tensors[key] = TensorInfo(dtype, tuple(shape), data_start + begin, data_start + end)
    spans.sort()
    for (b0, e0, k0), (b1, e1, k1) in zip(spans, spans[1:]):
        if b1 < e0:
            raise _fail(path, f"tensors {k0!r} and {k1!r} overlap in the file", k1)
    return SafetensorsHeader(path, metadata, tensors, data_start, size)


class MappedFile:
    """A copy-on-write memory map of a safetensors file handing out tensor views."""

    def __init__(self, header: SafetensorsHeader):
        self.header = header
        with open(header.path, "rb") as f:
            if header.file_size == 0:
                raise _fail(header.path, "file is empty")
            self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)

    def tensor(self, key: str) -> torch.Tensor:
        info = self.header.tensors[key]
        dtype = SAFETENSORS_DTYPES[info.dtype]
        if info.nbytes == 0:
            return torch.empty(info.shape, dtype=dtype)
        t = torch.frombuffer(self._map, dtype=dtype, count=info.nbytes // _itemsize(dtype),
                             offset=info.start)
        return t.view(info.shape)


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def load_state_dict(path: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Return ``(tensors, metadata)``.  safetensors is memory-mapped (lazy);
    pickles are loaded weights-only, never with arbitrary unpickling."""
    path = os.fspath(path)
    if path.lower().endswith(PICKLE_SUFFIXES):
        return _load_pickle(path), {}
    header = read_header(path)
    mapped = MappedFile(header)
    return {k: mapped.tensor(k) for k in header.tensors}, dict(header.metadata)


def _load_pickle(path: str) -> dict[str, torch.Tensor]:
    if not os.path.isfile(path):
        raise LoraFileError("file not found", file=path, fix="check the name and the loras folder")
    try:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:
            if "mmap" not in str(e):
                raise
            # legacy (non-zip) pickles cannot be memory-mapped; still weights-only
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # weights_only refuses globals with UnpicklingError
        text = str(e).splitlines()[0] if str(e) else e.__class__.__name__
        if "weights_only" in str(e) or e.__class__.__name__ == "UnpicklingError":
            raise UnsafeFileError(
                f"refusing to unpickle: the file needs arbitrary Python objects ({text[:200]})",
                file=path, fix="convert it to .safetensors with a trusted tool") from None
        raise LoraFileError(f"cannot read pickle file ({text[:200]})", file=path) from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise LoraFileError("pickle file does not hold a flat dict of tensors", file=path,
                            fix="convert it to .safetensors")
    return {str(k): v for k, v in obj.items()}


def check_finite(path: str, key: str, tensor: torch.Tensor) -> None:
    if tensor.is_floating_point() and tensor.numel() and not bool(torch.isfinite(tensor).all()):
        raise NonFiniteError("tensor holds NaN or Inf values", file=path, key=key,
                             fix="the LoRA is broken (often an fp16 overflow in training); "
                                 "re-export it or use another version")


@dataclass(frozen=True)
class FileHashes:
    sha256: str
    autov2: str  # first 10 hex digits of the file's sha256 (A1111 / Civitai "AutoV2")
    addnet: str  # sha256 of the tensor data after the header (kohya "sshs" / AddNet)


def hash_file(path: str, chunk: int = 1 << 22) -> FileHashes:
    """Content hashes that name a LoRA portably across machines."""
    full = hashlib.sha256()
    data = hashlib.sha256()
    with open(path, "rb") as f:
        head = f.read(8)
        full.update(head)
        if len(head) == 8 and not path.lower().endswith(PICKLE_SUFFIXES):
            (n,) = struct.unpack("<Q", head)
            hdr = f.read(n)
            full.update(hdr)
        else:
            data.update(head)
        while True:
            block = f.read(chunk)
            if not block:
                break
            full.update(block)
            data.update(block)
    digest = full.hexdigest()
    return FileHashes(sha256=digest, autov2=digest[:10], addnet=data.hexdigest())
