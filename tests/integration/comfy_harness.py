"""Run a real ComfyUI as a subprocess with this pack installed, and talk to it.

Used by tests/integration/conftest.py; usable on its own too::

    from comfy_harness import discover_installs, ComfyServer
    inst = discover_installs()[0]
    with ComfyServer(inst) as srv:
        print(srv.client.object_info("LoraLoader"))

Nothing here imports ComfyUI: the server runs in its own process with the
install's own Python (see ``python_candidates``: ``$COMFYUI_PYTHON``, a venv
inside the tree, a portable install's ``python_embeded``, else the caller's
``sys.executable``), chosen once per session by a cheap probe of ComfyUI's
requirements (``find_installs``); an install no Python can start is skipped
with one line saying what is missing.  It runs from its own install dir, with
``--base-directory`` pointing at a throw-away tree whose ``custom_nodes``
holds a symlink to this repository (the pack) and a small helper pack
(``patchbay_test_helpers``, see HELPER_NODES_SOURCE) with test-only nodes.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

REPO_ROOT = Path(__file__).resolve().parents[2]
PACK_DIR_NAME = "lora-patchbay"
HELPER_PACK_NAME = "patchbay_test_helpers"

NO_COMFY_REASON = ("no ComfyUI found: set COMFYUI_DIR to a ComfyUI checkout "
                   "(several separated by '%s') or install one at ~/ComfyUI" % os.pathsep)

MODEL_FOLDERS = ("loras", "diffusion_models", "unet", "checkpoints", "text_encoders", "clip",
                 "vae", "clip_vision", "embeddings", "controlnet", "model_patches",
                 "upscale_models", "latent_upscale_models")


# --------------------------------------------------------------------------
# discovery
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class ComfyInstall:
    path: Path
    version: str
    python: str = sys.executable  # the interpreter that starts this ComfyUI

    @property
    def version_tuple(self) -> Tuple[int, ...]:
        return version_tuple(self.version)

    @property
    def id(self) -> str:
        return "comfy-" + self.version

    def cli_flags(self) -> frozenset:
        return supported_cli_flags(self.path)


def version_tuple(v: str) -> Tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", v)[:3])


def read_version(comfy_dir: os.PathLike) -> Optional[str]:
    """``__version__`` from comfyui_version.py (falls back to pyproject.toml)."""
    d = Path(comfy_dir)
    for name, pat in (("comfyui_version.py", r"__version__\s*=\s*['\"]([^'\"]+)"),
                      ("pyproject.toml", r"(?m)^version\s*=\s*['\"]([^'\"]+)")):
        try:
            m = re.search(pat, (d / name).read_text())
        except OSError:
            continue
        if m:
            return m.group(1)
    return None


def _is_comfy(d: Path) -> bool:
    return (d / "main.py").is_file() and (d / "comfy").is_dir() and (d / "nodes.py").is_file()


def discover_installs(env: Optional[dict] = None) -> List[ComfyInstall]:
    """The usable installs of ``find_installs`` (each with the Python that starts it)."""
    return find_installs(env)[0]


def find_installs(env: Optional[dict] = None) -> Tuple[List[ComfyInstall], List["UnusableInstall"]]:
    """Installs found (see ``found_installs``), split into those a Python can
    start and those it cannot (with the reason); probed once per process."""
    usable: List[ComfyInstall] = []
    unusable: List[UnusableInstall] = []
    env = os.environ if env is None else env
    for inst in found_installs(env):
        python, missing = choose_python(inst.path, env)
        if missing is None:
            usable.append(ComfyInstall(path=inst.path, version=inst.version, python=python))
        else:
            unusable.append(UnusableInstall(path=inst.path, version=inst.version, python=python,
                                            missing=missing))
    return usable, unusable


def found_installs(env: Optional[dict] = None) -> List[ComfyInstall]:
    """COMFYUI_DIR (os.pathsep-separated) if set, else ~/ComfyUI + ~/ComfyUI-v* siblings."""
    env = os.environ if env is None else env
    cands: List[Path] = []
    raw = env.get("COMFYUI_DIR", "").strip()
    if raw:
        cands = [Path(p).expanduser() for p in raw.split(os.pathsep) if p.strip()]
    else:
        home = Path.home()
        cands = [home / "ComfyUI"] + sorted(home.glob("ComfyUI-v*"))
    out: List[ComfyInstall] = []
    seen_ids = set()
    seen_paths = set()
    for c in cands:
        if not _is_comfy(c):
            continue
        rp = c.resolve()
        if rp in seen_paths:
            continue
        seen_paths.add(rp)
        v = read_version(c) or c.name
        ident = v
        n = 2
        while ident in seen_ids:  # two checkouts of one version: keep both, unique ids
            ident = f"{v}-{n}"
            n += 1
        seen_ids.add(ident)
        out.append(ComfyInstall(path=c, version=ident))
    return out


# --------------------------------------------------------------------------
# which Python starts an install
# --------------------------------------------------------------------------

PYTHON_ENV = "COMFYUI_PYTHON"
# Requirements ComfyUI imports only in nodes that need them (audio), so a server
# starts and our tests run without them.
STARTUP_OPTIONAL = frozenset({"torchaudio"})
# pip names whose import name is not the name with '-'/'.' as '_'
IMPORT_NAMES = {"pyyaml": "yaml", "pillow": "PIL"}

# Run by the candidate Python: prints the requirement names it lacks (a
# distribution or, for odd packaging, an importable module counts).  It looks
# packages up without importing them, so it takes well under a second.
PROBE_SOURCE = r"""
import importlib.metadata as md, importlib.util, json, re, sys
names, aliases = json.loads(sys.argv[1]), json.loads(sys.argv[2])
missing = []
for name in names:
    try:
        md.distribution(name)
        continue
    except Exception:
        pass
    low = name.lower()
    if importlib.util.find_spec(aliases.get(low, re.sub(r"[-.]", "_", low))) is None:
        missing.append(name)
print("PATCHBAY-PROBE " + json.dumps(missing))
"""


@dataclass(frozen=True)
class UnusableInstall:
    """A ComfyUI found on disk that no candidate Python can start."""
    path: Path
    version: str
    python: str
    missing: Tuple[str, ...]  # requirement names, or ("a working Python",) when it did not run


def startup_requirements(comfy_dir: os.PathLike) -> List[str]:
    """Requirement names above requirements.txt's "non essential" line, minus STARTUP_OPTIONAL."""
    try:
        text = (Path(comfy_dir) / "requirements.txt").read_text()
    except OSError:
        return []
    names = []
    for line in text.splitlines():
        if re.match(r"\s*#.*non[ -]essential", line, re.I):
            break
        m = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", line.split("#", 1)[0])
        if m and m.group(1).lower() not in STARTUP_OPTIONAL:
            names.append(m.group(1))
    return names


def python_candidates(comfy_dir: os.PathLike, env: Optional[dict] = None) -> List[str]:
    """``$COMFYUI_PYTHON`` alone when set (a user's explicit choice is never
    second-guessed); else a venv inside the tree, a portable install's embedded
    Python beside it, then the caller's own interpreter."""
    env = os.environ if env is None else env
    explicit = env.get(PYTHON_ENV, "").strip()
    if explicit:
        return [str(Path(explicit).expanduser())]
    d = Path(comfy_dir)
    own = [d / v / sub for v in (".venv", "venv") for sub in ("bin/python", "Scripts/python.exe")]
    own += [root / "python_embeded" / exe for root in (d.parent, d) for exe in ("python.exe", "python")]
    return [str(p) for p in own if p.is_file()] + [sys.executable]


_PROBE_CACHE: Dict[Tuple[str, Tuple[str, ...]], Optional[Tuple[str, ...]]] = {}


def probe_python(python: str, requirements: Sequence[str]) -> Tuple[str, ...]:
    """The requirements ``python`` lacks (empty: it can start ComfyUI); cached."""
    key = (python, tuple(requirements))
    if key not in _PROBE_CACHE:
        try:
            proc = subprocess.run([python, "-c", PROBE_SOURCE, json.dumps(list(requirements)),
                                   json.dumps(IMPORT_NAMES)], capture_output=True, text=True,
                                  timeout=120, stdin=subprocess.DEVNULL)
            line = next((l for l in proc.stdout.splitlines() if l.startswith("PATCHBAY-PROBE ")), None)
            found = tuple(json.loads(line.split(" ", 1)[1])) if line else ("a working Python",)
        except (OSError, subprocess.SubprocessError, ValueError):
            found = ("a working Python",)
        _PROBE_CACHE[key] = found
    return _PROBE_CACHE[key]


def choose_python(comfy_dir: os.PathLike, env: Optional[dict] = None) -> Tuple[str, Optional[Tuple[str, ...]]]:
    """``(python, None)`` for the first candidate that can start the install,
    else ``(first candidate, what it lacks)``."""
    reqs = startup_requirements(comfy_dir)
    cands = python_candidates(comfy_dir, env)
    first_missing = None
    for py in cands:
        missing = probe_python(py, reqs)
        if not missing:
            return py, None
        first_missing = missing if first_missing is None else first_missing
    return cands[0], first_missing


def python_for(comfy_dir: os.PathLike, env: Optional[dict] = None) -> str:
    """The Python to run ComfyUI code from ``comfy_dir`` with (child processes of tests)."""
    return choose_python(comfy_dir, env)[0]


def _home(p: os.PathLike) -> str:
    text, home = str(p), str(Path.home())
    return "~" + text[len(home):] if text.startswith(home + os.sep) else text


def unusable_line(unusable: Sequence[UnusableInstall]) -> str:
    """One line: which installs cannot start with which Python, what it lacks, the fix."""
    by_python: Dict[str, List[UnusableInstall]] = {}
    for u in unusable:
        by_python.setdefault(u.python, []).append(u)
    parts = []
    for python, group in by_python.items():
        where = " and ".join(f"{u.version} ({_home(u.path)})" for u in group)
        missing = group[0].missing
        if missing == ("a working Python",):
            parts.append(f"ComfyUI {where} cannot start: {_home(python)} does not run")
            continue
        lacks = ", ".join(missing[:6]) + (f" and {len(missing) - 6} more" if len(missing) > 6 else "")
        parts.append(f"ComfyUI {where} cannot start with {_home(python)}, which lacks {lacks}; install "
                     f"them with `{_home(python)} -m pip install -r {_home(group[0].path / 'requirements.txt')}`")
    return (f"integration tests skipped: {'; '.join(parts)} (or set {PYTHON_ENV} to a Python that has "
            "ComfyUI's requirements)")


_FLAG_CACHE: Dict[Path, frozenset] = {}


def supported_cli_flags(comfy_dir: os.PathLike) -> frozenset:
    """Long options defined in <comfy>/comfy/cli_args.py (read as text)."""
    p = Path(comfy_dir)
    if p not in _FLAG_CACHE:
        try:
            src = (p / "comfy" / "cli_args.py").read_text()
        except OSError:
            src = ""
        _FLAG_CACHE[p] = frozenset(re.findall(r"add_argument\(\s*['\"](--[a-z0-9-]+)", src))
    return _FLAG_CACHE[p]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------
# errors and results
# --------------------------------------------------------------------------


class ComfyError(RuntimeError):
    pass


class PromptRejected(ComfyError):
    """POST /prompt answered 400 (validation failed).

    ``.error`` is the server's {"type", "message", "details", "extra_info"},
    ``.node_errors`` its {node_id: {"errors": [...], "class_type": ...}};
    ``str(exc)`` / ``.text`` joins every message and detail, so tests can do
    ``with pytest.raises(PromptRejected, match="strength")``.
    """

    def __init__(self, status: int, body: Any):
        self.status = status
        self.body = body if isinstance(body, dict) else {"error": {"message": str(body)}}
        err = self.body.get("error", {})
        self.error = err if isinstance(err, dict) else {"message": str(err)}
        self.node_errors = self.body.get("node_errors", {}) or {}
        self.text = format_rejection(self.body)
        super().__init__(self.text)

    def messages(self) -> List[str]:
        """Flat list of every node error 'message: details' string."""
        out = []
        for nid, ne in self.node_errors.items():
            for e in ne.get("errors", []):
                out.append(f"{e.get('message', '')}: {e.get('details', '')}".strip(": "))
        return out


def format_rejection(body: dict) -> str:
    err = body.get("error", {})
    if not isinstance(err, dict):
        err = {"message": str(err)}
    parts = [f"prompt rejected: {err.get('type', '')}: {err.get('message', '')}".rstrip(": ")]
    if err.get("details"):
        parts.append(f"  details: {err['details']}")
    for nid, ne in (body.get("node_errors") or {}).items():
        ct = ne.get("class_type", "?")
        for e in ne.get("errors", []):
            parts.append(f"  node {nid} ({ct}): {e.get('message', '')}: {e.get('details', '')}")
    return "\n".join(parts)


class PromptExecutionFailed(ComfyError):
    """The prompt was accepted but a node raised while executing."""

    def __init__(self, result: "PromptResult"):
        self.result = result
        super().__init__(result.error_text or "prompt failed")


@dataclass
class PromptResult:
    prompt_id: str
    outputs: Dict[str, Any]
    status: Dict[str, Any]
    history: Dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status.get("status_str") == "success"

    @property
    def messages(self) -> List[Tuple[str, dict]]:
        return [tuple(m) for m in self.status.get("messages", [])]

    @property
    def error(self) -> Optional[dict]:
        """The 'execution_error' payload (node_id, node_type, exception_type,
        exception_message, traceback, ...) or None."""
        for ev, data in self.messages:
            if ev == "execution_error":
                return data
        return None

    @property
    def error_text(self) -> Optional[str]:
        e = self.error
        if e is None:
            return None if self.ok else f"prompt status {self.status}"
        tb = "".join(e.get("traceback", []) or [])
        return (f"node {e.get('node_id')} ({e.get('node_type')}) raised "
                f"{e.get('exception_type')}: {e.get('exception_message')}\n{tb}")

    @property
    def executed_nodes(self) -> List[str]:
        """Node ids that actually ran (not served from ComfyUI's cache)."""
        cached = set()
        for ev, data in self.messages:
            if ev == "execution_cached":
                cached.update(data.get("nodes", []))
        return [n for n in self.history.get("prompt", [None, None, {}])[2].keys() if n not in cached]

    @property
    def cached_nodes(self) -> List[str]:
        out: List[str] = []
        for ev, data in self.messages:
            if ev == "execution_cached":
                out.extend(data.get("nodes", []))
        return out

    def ui(self, node_id: str, key: Optional[str] = None):
        """Output-node UI payload of ``node_id`` (optionally one key of it)."""
        o = self.outputs.get(str(node_id), {})
        return o if key is None else o.get(key)


# --------------------------------------------------------------------------
# HTTP client
# --------------------------------------------------------------------------


class ComfyClient:
    def __init__(self, base_url: str, timeout: float = 30.0):
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.client_id = uuid.uuid4().hex
        self.last_node_errors: Dict[str, Any] = {}

    # raw HTTP ---------------------------------------------------------------
    def request(self, method: str, path: str, body: Any = None,
                timeout: Optional[float] = None) -> Tuple[int, Any]:
        data = None
        headers = {}
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        req = urllib.request.Request(self.base_url + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=timeout or self.timeout) as r:
                status, raw = r.status, r.read()
        except urllib.error.HTTPError as e:
            status, raw = e.code, e.read()
        try:
            payload = json.loads(raw.decode() or "null")
        except ValueError:
            payload = raw.decode(errors="replace")
        return status, payload

    def get(self, path: str, **kw) -> Any:
        status, payload = self.request("GET", path, **kw)
        if status != 200:
            raise ComfyError(f"GET {path} -> HTTP {status}: {payload}")
        return payload

    def post(self, path: str, body: Any = None, **kw) -> Any:
        status, payload = self.request("POST", path, body if body is not None else {}, **kw)
        if status != 200:
            raise ComfyError(f"POST {path} -> HTTP {status}: {payload}")
        return payload

    # API ------------------------------------------------------------------------
    def object_info(self, node_class: Optional[str] = None) -> dict:
        """GET /object_info (all nodes) or /object_info/<class> (that node's entry)."""
        if node_class is None:
            return self.get("/object_info", timeout=120)
        info = self.get("/object_info/" + urllib.parse.quote(node_class))
        if node_class not in info:
            raise KeyError(f"node {node_class!r} not registered")
        return info[node_class]

    def system_stats(self) -> dict:
        return self.get("/system_stats")

    def submit(self, prompt: dict, extra_data: Optional[dict] = None) -> str:
        """POST /prompt; returns prompt_id; raises PromptRejected on HTTP 400."""
        if isinstance(prompt, Graph):
            prompt = prompt.to_api()
        body = {"prompt": prompt, "client_id": self.client_id}
        if extra_data:
            body["extra_data"] = extra_data
        status, payload = self.request("POST", "/prompt", body)
        if status == 400:
            raise PromptRejected(status, payload)
        if status != 200:
            raise ComfyError(f"POST /prompt -> HTTP {status}: {payload}")
        # HTTP 200 with node_errors: accepted, but some output branches were
        # invalid and will not run; kept here for tests that care
        self.last_node_errors = payload.get("node_errors") or {}
        return payload["prompt_id"]

    def history(self, prompt_id: str) -> Optional[dict]:
        h = self.get("/history/" + prompt_id)
        return h.get(prompt_id) if isinstance(h, dict) else None

    def wait(self, prompt_id: str, timeout: float = 300.0, poll: float = 0.1) -> PromptResult:
        t0 = time.monotonic()
        while True:
            h = self.history(prompt_id)
            if h is not None:
                st = h.get("status", {}) or {}
                if st.get("completed") or st.get("status_str") in ("success", "error"):
                    return PromptResult(prompt_id, h.get("outputs", {}), st, h,
                                        time.monotonic() - t0)
            if time.monotonic() - t0 > timeout:
                self.interrupt()
                raise TimeoutError(f"prompt {prompt_id} not finished after {timeout:.0f}s")
            time.sleep(poll)
            poll = min(poll * 1.5, 1.0)

    def queue(self, prompt, timeout: float = 300.0, check: bool = True,
              extra_data: Optional[dict] = None) -> PromptResult:
        """Submit, wait until done, return the PromptResult.

        Raises PromptRejected (validation, HTTP 400) and, when ``check``,
        PromptExecutionFailed (a node raised; message = exception + traceback).
        With ``check=False`` inspect ``result.ok`` / ``result.error_text``.
        """
        pid = self.submit(prompt, extra_data)
        res = self.wait(pid, timeout)
        if check and not res.ok:
            raise PromptExecutionFailed(res)
        return res

    def interrupt(self) -> None:
        try:
            self.request("POST", "/interrupt", {})
        except Exception:
            pass

    def free(self, unload_models: bool = True, free_memory: bool = True) -> None:
        """POST /free: takes effect before the next prompt runs."""
        self.post("/free", {"unload_models": unload_models, "free_memory": free_memory})

    def queue_state(self) -> dict:
        return self.get("/queue")


# --------------------------------------------------------------------------
# prompt builder
# --------------------------------------------------------------------------


class NodeRef:
    def __init__(self, node_id: str):
        self.id = node_id

    def __getitem__(self, output_index: int) -> list:
        return [self.id, output_index]

    def out(self, output_index: int = 0) -> list:
        return [self.id, output_index]


class Graph:
    """Tiny API-format prompt builder.

        g = Graph()
        m = g.node("UNETLoader", unet_name="x.safetensors", weight_dtype="default")
        s = g.node("KSampler", model=m[0], ...)
        client.queue(g)          # or g.to_api()
    """

    def __init__(self):
        self.nodes: Dict[str, dict] = {}
        self._n = 0

    def node(self, class_type: str, _id: Optional[str] = None, **inputs) -> NodeRef:
        self._n += 1
        nid = str(_id) if _id is not None else str(self._n)
        self.nodes[nid] = {"class_type": class_type, "inputs": dict(inputs)}
        return NodeRef(nid)

    def to_api(self) -> dict:
        return json.loads(json.dumps(self.nodes))


# --------------------------------------------------------------------------
# helper nodes (test-only pack written into <base>/custom_nodes)
# --------------------------------------------------------------------------

HELPER_NODES_SOURCE = r'''
"""Test-only nodes for LoRA Patchbay's integration tests (written by the harness)."""
import hashlib
import torch

_CAT = "patchbay_test"


def _stats(t):
    t = t.detach().float().cpu()
    d = {"shape": list(t.shape), "sum": float(t.sum()), "abs_sum": float(t.abs().sum()),
         "mean": float(t.mean()) if t.numel() else 0.0,
         "std": float(t.std()) if t.numel() > 1 else 0.0,
         "finite": bool(torch.isfinite(t).all()),
         "sha256": hashlib.sha256(t.contiguous().numpy().tobytes()).hexdigest()}
    if t.numel() <= 4096:
        d["values"] = t.flatten().tolist()
    return d


class PatchbayTestConditioning:
    """Random (or zero) CONDITIONING of any width, no text encoder needed."""
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "dim": ("INT", {"default": 4096, "min": 1, "max": 65536}),
            "tokens": ("INT", {"default": 4, "min": 1, "max": 4096}),
            "pooled_dim": ("INT", {"default": 0, "min": 0, "max": 65536}),
            "seed": ("INT", {"default": 0, "min": 0, "max": 2**31 - 1}),
            "scale": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 100.0, "step": 0.001}),
        }, "optional": {
            # LTX-Video needs one (T5 encoders attach it); all ones = attend to every token
            "attention_mask": ("BOOLEAN", {"default": False}),
        }}
    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "make"
    CATEGORY = _CAT

    def make(self, dim, tokens, pooled_dim, seed, scale, attention_mask=False):
        g = torch.Generator().manual_seed(seed)
        cond = torch.randn((1, tokens, dim), generator=g) * scale
        extra = {}
        if pooled_dim:
            extra["pooled_output"] = torch.randn((1, pooled_dim), generator=g) * scale
        if attention_mask:
            extra["attention_mask"] = torch.ones((1, tokens))
        return ([[cond, extra]],)


class PatchbayTestLatentStats:
    """Output node: stats (+ values if small) of a LATENT, in the history 'outputs'."""
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"samples": ("LATENT",)}}
    RETURN_TYPES = ()
    FUNCTION = "run"
    OUTPUT_NODE = True
    CATEGORY = _CAT

    def run(self, samples):
        return {"ui": {"latent_stats": [_stats(samples["samples"])]}}


class PatchbayTestConditioningStats:
    """Output node: stats of every CONDITIONING entry (tensor + pooled_output)."""
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"conditioning": ("CONDITIONING",)}}
    RETURN_TYPES = ()
    FUNCTION = "run"
    OUTPUT_NODE = True
    CATEGORY = _CAT

    def run(self, conditioning):
        out = []
        for t, extra in conditioning:
            d = {"cond": _stats(t)}
            d["cond"].pop("values", None)
            p = extra.get("pooled_output") if isinstance(extra, dict) else None
            if p is not None:
                d["pooled"] = _stats(p)
            out.append(d)
        return {"ui": {"conditioning_stats": out}}


class PatchbayTestModelProbe:
    """Output node: loads MODEL (applies its patches) and reports weight stats.

    ui.patch_keys: sorted keys with patches; ui.weights: {key: stats} for the
    state-dict keys containing ``key_filter`` (comma-separated substrings;
    at most ``max_keys``), computed on the patched model.
    """
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("MODEL",),
            "key_filter": ("STRING", {"default": ""}),
            "max_keys": ("INT", {"default": 64, "min": 0, "max": 100000}),
        }}
    RETURN_TYPES = ()
    FUNCTION = "run"
    OUTPUT_NODE = True
    CATEGORY = _CAT

    def run(self, model, key_filter, max_keys):
        import comfy.model_management as mm
        mm.load_models_gpu([model], force_full_load=True)
        sd = model.model.state_dict()
        subs = [s.strip() for s in key_filter.split(",") if s.strip()]
        weights = {}
        for k in sorted(sd):
            if len(weights) >= max_keys:
                break
            if not subs or any(s in k for s in subs):
                weights[k] = _stats(sd[k])
                weights[k].pop("values", None)
        return {"ui": {"patch_keys": [sorted(model.patches.keys())],
                       "patches_uuid": [str(getattr(model, "patches_uuid", ""))],
                       "weights": [weights]}}


NODE_CLASS_MAPPINGS = {
    "PatchbayTestConditioning": PatchbayTestConditioning,
    "PatchbayTestLatentStats": PatchbayTestLatentStats,
    "PatchbayTestModelProbe": PatchbayTestModelProbe,
    "PatchbayTestConditioningStats": PatchbayTestConditioningStats,
}
'''


# --------------------------------------------------------------------------
# server
# --------------------------------------------------------------------------


class ComfyServer:
    """One ComfyUI process with its own temporary base directory.

    ``base_dir`` layout: custom_nodes/lora-patchbay -> REPO_ROOT (symlink),
    custom_nodes/patchbay_test_helpers/, models/<folder>/, input/, output/,
    temp/, user/, comfyui.log.
    """

    def __init__(self, install: ComfyInstall, base_dir: Optional[os.PathLike] = None,
                 pack_dir: os.PathLike = REPO_ROOT, helper_nodes: bool = True,
                 extra_args: Sequence[str] = (), startup_timeout: float = 180.0,
                 env: Optional[dict] = None):
        self.install = install
        self._own_base = base_dir is None
        self.base_dir = Path(base_dir) if base_dir else Path(
            tempfile.mkdtemp(prefix=f"patchbay-comfy-{install.version}-"))
        self.pack_dir = Path(pack_dir)
        self.helper_nodes = helper_nodes
        self.extra_args = list(extra_args)
        env_extra = os.environ.get("PATCHBAY_COMFY_ARGS", "").split()
        self.extra_args += env_extra
        self.startup_timeout = startup_timeout
        self.env = env
        self.port: Optional[int] = None
        self.proc: Optional[subprocess.Popen] = None
        self.log_path = self.base_dir / "comfyui.log"
        self._log_fh = None
        self.client: Optional[ComfyClient] = None

    # layout ---------------------------------------------------------------------
    @property
    def version(self) -> str:
        return self.install.version

    @property
    def version_tuple(self) -> Tuple[int, ...]:
        return self.install.version_tuple

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def models_dir(self) -> Path:
        return self.base_dir / "models"

    @property
    def output_dir(self) -> Path:
        return self.base_dir / "output"

    @property
    def input_dir(self) -> Path:
        return self.base_dir / "input"

    def prepare(self) -> None:
        cn = self.base_dir / "custom_nodes"
        cn.mkdir(parents=True, exist_ok=True)
        link = cn / PACK_DIR_NAME
        if not link.exists():
            link.symlink_to(self.pack_dir, target_is_directory=True)
        if self.helper_nodes:
            hp = cn / HELPER_PACK_NAME
            hp.mkdir(exist_ok=True)
            (hp / "__init__.py").write_text(HELPER_NODES_SOURCE)
        for f in MODEL_FOLDERS:
            (self.models_dir / f).mkdir(parents=True, exist_ok=True)
        for d in ("input", "output", "temp", "user"):
            (self.base_dir / d).mkdir(exist_ok=True)

    def add_model(self, folder: str, src: os.PathLike, name: Optional[str] = None,
                  copy: bool = False) -> str:
        """Make ``src`` visible in models/<folder>; returns the name ComfyUI lists.

        ``name`` may contain '/' for a subfolder.  Symlinks unless ``copy``.
        """
        src = Path(src).resolve()
        name = name or src.name
        dst = self.models_dir / folder / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        if dst.is_symlink() or dst.exists():
            if dst.resolve() == src:
                return name
            dst.unlink()
        if copy:
            shutil.copy2(src, dst)
        else:
            dst.symlink_to(src)
        return name

    # process --------------------------------------------------------------------
    def command(self) -> List[str]:
        flags = self.install.cli_flags()
        cmd = [self.install.python, "-u", "main.py", "--cpu",
               "--base-directory", str(self.base_dir),
               "--listen", "127.0.0.1", "--port", str(self.port)]
        optional = [
            ("--disable-auto-launch", []),
            ("--disable-api-nodes", []),        # no API nodes, no frontend internet calls
            ("--disable-assets-autoscan", []),  # [0.14] no asset DB scan at startup
            ("--database-url", [f"sqlite:///{self.base_dir / 'user' / 'comfyui.db'}"]),
        ]
        for flag, vals in optional:
            if flag in flags:
                cmd += [flag, *vals]
        return cmd + self.extra_args

    def start(self) -> "ComfyServer":
        self.prepare()
        self.port = free_port()
        env = dict(os.environ if self.env is None else self.env)
        env.update({"PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                    "HF_HUB_DISABLE_TELEMETRY": "1", "DO_NOT_TRACK": "1",
                    "TOKENIZERS_PARALLELISM": "false"})
        env.pop("PYTHONPATH", None)  # the server imports ComfyUI's own packages first
        self._log_fh = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.command(), cwd=str(self.install.path), env=env,
                                     stdout=self._log_fh, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        self.client = ComfyClient(self.url)
        self.wait_ready()
        return self

    def wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        last = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ComfyError(f"ComfyUI {self.version} exited with {self.proc.returncode} "
                                 f"during startup; log tail:\n{self.log_tail()}")
            try:
                st, payload = self.client.request("GET", "/object_info", timeout=60)
                if st == 200 and isinstance(payload, dict) and payload:
                    return
                last = f"HTTP {st}"
            except (urllib.error.URLError, ConnectionError, socket.timeout, OSError) as e:
                last = repr(e)
            time.sleep(0.5)
        self.stop()
        raise ComfyError(f"ComfyUI {self.version} did not answer /object_info within "
                         f"{self.startup_timeout:.0f}s ({last}); log tail:\n{self.log_tail()}")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 15.0) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)  # own session: only this server
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.proc.wait(5)
        if self._log_fh:
            self._log_fh.close()
            self._log_fh = None

    def cleanup(self) -> None:
        self.stop()
        if self._own_base and not os.environ.get("PATCHBAY_KEEP_COMFY_BASE"):
            shutil.rmtree(self.base_dir, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.cleanup()

    # log ----------------------------------------------------------------------------
    def read_log(self, since: int = 0) -> str:
        """Whole server log (stdout+stderr), or from byte offset ``since``."""
        if self._log_fh:
            self._log_fh.flush()
        try:
            with open(self.log_path, "rb") as f:
                f.seek(since)
                return f.read().decode("utf-8", errors="replace")
        except OSError:
            return ""

    def log_mark(self) -> int:
        """Current log size; pass to read_log(since=...) to see only newer lines."""
        try:
            return self.log_path.stat().st_size
        except OSError:
            return 0

    def log_tail(self, n: int = 60) -> str:
        return "\n".join(self.read_log().splitlines()[-n:])

    def pack_import_errors(self) -> List[str]:
        """Log lines reporting a failed import of the pack (empty list = loaded fine)."""
        log = self.read_log()
        bad = []
        for line in log.splitlines():
            if PACK_DIR_NAME in line and ("IMPORT FAILED" in line or "Cannot import" in line):
                bad.append(line)
        return bad

    def pack_loaded(self) -> bool:
        """True if ComfyUI's 'Import times for custom nodes' lists the pack as OK."""
        for line in self.read_log().splitlines():
            if line.rstrip().endswith(f"custom_nodes/{PACK_DIR_NAME}") and "IMPORT FAILED" not in line:
                return True
        return False


# --------------------------------------------------------------------------
# installed test models + graph snippets
# --------------------------------------------------------------------------


@dataclass
class InstalledModel:
    """A tiny model made visible to one server, with graph-building helpers.

    ``family``: flux / ltxv / sd15 / clip_l / sd15_checkpoint.  ``cond_dim`` /
    ``pooled_dim``: the CONDITIONING widths the model expects (feed them to
    PatchbayTestConditioning).  Typical use::

        g = Graph()
        model = tiny_flux.load(g)                     # [node, 0] MODEL
        model = g.node("SomeLoraNode", model=model, ...)[0]
        latent = tiny_flux.sample(g, model, steps=1)  # [node, 0] LATENT
        g.node("PatchbayTestLatentStats", samples=latent)
        res = comfy.client.queue(g)
    """
    family: str
    name: str
    folder: str
    path: Path
    cond_dim: int = 0
    pooled_dim: int = 0
    config: Any = None

    def load(self, g: Graph, weight_dtype: str = "default") -> list:
        """Loader node; returns the MODEL (or, for clip_l, CLIP) output ref."""
        if self.folder == "diffusion_models":
            return g.node("UNETLoader", unet_name=self.name, weight_dtype=weight_dtype)[0]
        if self.family == "clip_l":
            return g.node("CLIPLoader", clip_name=self.name, type="stable_diffusion")[0]
        if self.folder == "checkpoints":
            return g.node("CheckpointLoaderSimple", ckpt_name=self.name)[0]
        raise ValueError(self.family)

    def load_checkpoint(self, g: Graph) -> Tuple[list, list]:
        """(MODEL, CLIP) refs from CheckpointLoaderSimple (sd15_checkpoint only)."""
        n = g.node("CheckpointLoaderSimple", ckpt_name=self.name)
        return n[0], n[1]

    def cond(self, g: Graph, seed: int = 0, tokens: int = 4, scale: float = 1.0) -> list:
        """Random CONDITIONING of the width this model expects (no text encoder)."""
        return g.node("PatchbayTestConditioning", dim=self.cond_dim, tokens=tokens,
                      pooled_dim=self.pooled_dim, seed=seed, scale=scale,
                      attention_mask=self.family == "ltxv")[0]

    def empty_latent(self, g: Graph, size: int = 0) -> list:
        if self.family == "flux":
            return g.node("EmptySD3LatentImage", width=size or 16, height=size or 16, batch_size=1)[0]
        if self.family == "ltxv":
            return g.node("EmptyLTXVLatentVideo", width=size or 64, height=size or 64,
                          length=1, batch_size=1)[0]
        return g.node("EmptyLatentImage", width=size or 32, height=size or 32, batch_size=1)[0]

    def sample(self, g: Graph, model: list, positive: Optional[list] = None,
               negative: Optional[list] = None, latent: Optional[list] = None,
               steps: int = 1, seed: int = 0, cfg: float = 1.0,
               sampler_name: str = "euler", scheduler: str = "simple",
               denoise: float = 1.0) -> list:
        """KSampler on this model; returns the LATENT ref.  cfg 1.0 skips the negative pass."""
        positive = positive if positive is not None else self.cond(g)
        negative = negative if negative is not None else positive
        latent = latent if latent is not None else self.empty_latent(g)
        return g.node("KSampler", model=model, seed=seed, steps=steps, cfg=cfg,
                      sampler_name=sampler_name, scheduler=scheduler, positive=positive,
                      negative=negative, latent_image=latent, denoise=denoise)[0]


def latent_stats(result: PromptResult, node_id: Optional[str] = None) -> dict:
    """The PatchbayTestLatentStats payload of ``node_id`` (or the only such node)."""
    if node_id is None:
        hits = [o for o in result.outputs.values() if "latent_stats" in o]
        if len(hits) != 1:
            raise KeyError(f"expected one latent_stats output, got {len(hits)}")
        return hits[0]["latent_stats"][0]
    return result.outputs[str(node_id)]["latent_stats"][0]


# The start of every child script that imports ComfyUI (CPU) and then our pack the way ComfyUI's loader does
# (package "lora-patchbay" from the repo's __init__.py); the script's own code follows and prints
# "RESULT <json>".  The child runs in the install's folder with the install's own Python.
PACK_CHILD_PRELUDE = r'''
import importlib.util, json, os, sys, tempfile, time
sys.argv = [sys.argv[0], "--cpu"]
sys.path.insert(0, os.getcwd())
import comfy.options; comfy.options.enable_args_parsing()
import torch
import folder_paths
REPO = os.environ["PATCHBAY_REPO"]
spec = importlib.util.spec_from_file_location("lora-patchbay", os.path.join(REPO, "__init__.py"),
                                              submodule_search_locations=[REPO])
pack = importlib.util.module_from_spec(spec); sys.modules["lora-patchbay"] = pack; spec.loader.exec_module(pack)
'''


def run_pack_child(install: "ComfyInstall", script: str, timeout: int = 300) -> dict:
    """Run PACK_CHILD_PRELUDE + script with the install's Python; return its RESULT object."""
    env = dict(os.environ, PATCHBAY_REPO=str(REPO_ROOT))
    env.pop("PYTHONPATH", None)
    proc = subprocess.run([install.python, "-c", PACK_CHILD_PRELUDE + script], cwd=str(install.path), env=env,
                          capture_output=True, text=True, timeout=timeout)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stdout[-3000:] + proc.stderr[-6000:]
    return json.loads(lines[-1][len("RESULT "):])
