"""File reading: memory-mapped safetensors, header validation, pickles, hashes."""
import hashlib
import json
import os
import pickle
import struct

import pytest
import torch
from safetensors.torch import save_file

from lora_core.errors import LoraFileError, UnsafeFileError
from lora_core.io import hash_file, load_state_dict, read_header


@pytest.fixture(scope="module")
def small_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("io") / "small.safetensors"
    tensors = {"a.lora_down.weight": torch.randn(4, 8), "a.lora_up.weight": torch.randn(8, 4),
               "a.alpha": torch.tensor(2.0)}
    save_file(tensors, str(path), metadata={"ss_network_dim": "4"})
    return path, tensors


def test_roundtrip_is_lazy_and_exact(small_file):
    path, tensors = small_file
    loaded, meta = load_state_dict(str(path))
    assert meta == {"ss_network_dim": "4"}
    for k, v in tensors.items():
        assert torch.equal(loaded[k], v)
    before = path.read_bytes()
    loaded["a.lora_down.weight"].add_(1.0)  # copy-on-write: the file never changes
    assert path.read_bytes() == before


def test_header_only(small_file):
    path, _ = small_file
    header = read_header(str(path))
    assert header.tensors["a.lora_up.weight"].shape == (8, 4)
    assert header.metadata["ss_network_dim"] == "4"


def _write_raw(path, header: dict, data: bytes):
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)


@pytest.mark.parametrize("case", ["truncated", "garbage", "offsets", "short", "overlap", "dtype", "empty"])
def test_corrupt_files_name_file_and_key(tmp_path, small_file, case):
    path = tmp_path / f"{case}.safetensors"
    good = small_file[0].read_bytes()
    if case == "truncated":
        path.write_bytes(good[: len(good) - 10])
    elif case == "garbage":
        path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")
    elif case == "offsets":
        _write_raw(path, {"x.lora_up.weight": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 1600]}},
                   b"\0" * 16)
    elif case == "short":
        path.write_bytes(b"\x01\x02")
    elif case == "overlap":
        _write_raw(path, {"x": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                          "y": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, b"\0" * 12)
    elif case == "dtype":
        _write_raw(path, {"x": {"dtype": "Q4", "shape": [2], "data_offsets": [0, 1]}}, b"\0")
    elif case == "empty":
        path.write_bytes(b"")
    before = path.read_bytes()
    with pytest.raises(LoraFileError) as err:
        load_state_dict(str(path))
    text = str(err.value)
    assert str(path) in text
    if case in ("offsets", "overlap", "dtype"):
        assert "key" in text
    assert path.read_bytes() == before


def test_missing_and_unreadable(tmp_path):
    with pytest.raises(LoraFileError, match="not found"):
        load_state_dict(str(tmp_path / "nope.safetensors"))
    with pytest.raises(LoraFileError, match="directory"):
        load_state_dict(str(tmp_path))
    locked = tmp_path / "locked.safetensors"
    locked.write_bytes(b"x" * 64)
    os.chmod(locked, 0)
    if os.geteuid() == 0:  # root reads anything; the header check still refuses it
        with pytest.raises(LoraFileError):
            load_state_dict(str(locked))
    else:
        with pytest.raises(LoraFileError, match="not readable"):
            load_state_dict(str(locked))


class _Payload:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_pickle_payload_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"x.lora_up.weight": _Payload()}, f)
    with pytest.raises(UnsafeFileError, match="refusing to unpickle"):
        load_state_dict(str(path))


def test_weights_only_pickle_loads(tmp_path):
    path = tmp_path / "ok.pt"
    t = torch.randn(3, 3)
    torch.save({"m.lora_up.weight": t}, path)
    loaded, meta = load_state_dict(str(path))
    assert torch.equal(loaded["m.lora_up.weight"], t) and meta == {}


def test_hashes(small_file):
    path, _ = small_file
    data = path.read_bytes()
    h = hash_file(str(path))
    assert h.sha256 == hashlib.sha256(data).hexdigest()
    assert h.autov2 == h.sha256[:10]
    (n,) = struct.unpack("<Q", data[:8])
    assert h.addnet == hashlib.sha256(data[8 + n:]).hexdigest()


DEEP = 300_000  # far past Python's recursion limit; json.loads alone raises RecursionError


@pytest.mark.parametrize("where", ["tensor", "metadata", "shape"])
def test_deeply_nested_header_is_a_header_fault(tmp_path, where):
    nest = "[" * DEEP + "]" * DEEP
    if where == "tensor":
        raw = '{"x": ' + nest + "}"
    elif where == "metadata":
        raw = '{"__metadata__": {"k": ' + nest + "}}"
    else:
        raw = '{"x": {"dtype": "F32", "shape": ' + nest + ', "data_offsets": [0, 0]}}'
    path = tmp_path / "deep.safetensors"
    path.write_bytes(struct.pack("<Q", len(raw)) + raw.encode())
    with pytest.raises(LoraFileError) as err:
        read_header(str(path))
    text = str(err.value)
    assert "deep.safetensors" in text and "header" in text and "\n" not in text


def test_moderate_nesting_is_refused_too(tmp_path):
    # Parses with json.loads but is no safetensors header: later walks must never see it.
    raw = '{"__metadata__": {"k": ' + "[" * 500 + "]" * 500 + "}}"
    path = tmp_path / "deepish.safetensors"
    path.write_bytes(struct.pack("<Q", len(raw)) + raw.encode())
    with pytest.raises(LoraFileError, match="nested"):
        read_header(str(path))
