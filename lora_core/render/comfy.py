"""One ComfyUI server over its HTTP API (standard library only).

Routes used: ``POST /prompt`` (queue a prompt), ``GET /history/{id}`` (its
outputs and status), ``GET /view`` (an output image), ``POST /queue``
(``{"delete": [...]}``), ``GET /system_stats`` (reachability), and the
``/ws?clientId=…`` websocket for progress.  Two kinds of failure are kept
apart, because the runner treats them differently:

* :class:`ServerGone` — the server cannot be reached (refused, reset,
  timed out): its prompts go to another server;
* :class:`PromptFailed` — the server answered that this prompt is invalid or
  failed while running: the prompt is reported, not retried elsewhere.
"""
from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Optional

from .ws import WebSocket, WebSocketError


class ServerGone(ConnectionError):
    """The server did not answer (connection refused, reset, or timed out)."""


class PromptFailed(RuntimeError):
    """The server rejected the prompt or its execution failed; ``str`` says which node and why."""


@dataclass(frozen=True)
class ImageRef:
    filename: str
    subfolder: str
    type: str
    node: str


def normalize_url(url: str) -> str:
    url = url.strip().rstrip("/")
    if "://" not in url:
        url = "http://" + url
    u = urllib.parse.urlsplit(url)
    if u.scheme not in ("http", "https") or not u.hostname:
        raise ValueError(f"server {url!r} is not an http:// address")
    return url


def rejection_text(body: Any) -> str:
    """One line from ComfyUI's 400 answer: the error and each node's errors."""
    if not isinstance(body, dict):
        return str(body)[:300]
    err = body.get("error")
    parts = []
    if isinstance(err, dict):
        parts.append(str(err.get("message") or err.get("type") or err))
        if err.get("details"):
            parts.append(str(err["details"]))
    elif err:
        parts.append(str(err))
    for node_id, info in (body.get("node_errors") or {}).items():
        if not isinstance(info, dict):
            continue
        for e in info.get("errors", []):
            if isinstance(e, dict):
                detail = e.get("details") or e.get("message")
                parts.append(f"node {node_id} ({info.get('class_type', '?')}): {detail}")
    return "; ".join(p for p in parts if p)[:1000] or "the server rejected the prompt"


def execution_error_text(status: dict) -> str:
    for event, data in status.get("messages", []) or []:
        if event == "execution_error" and isinstance(data, dict):
            return (f"node {data.get('node_id')} ({data.get('node_type')}): "
                    f"{data.get('exception_type', 'error')}: {str(data.get('exception_message', '')).strip()}")
        if event == "execution_interrupted":
            return "the prompt was interrupted on the server"
    return f"the prompt ended with status {status.get('status_str', '?')!r}"


class ComfyServer:
    """HTTP + websocket client of one ComfyUI server."""

    def __init__(self, url: str, timeout: float = 30.0):
        self.url = normalize_url(url)
        self.timeout = timeout
        self.client_id = uuid.uuid4().hex
        self._ws: Optional[WebSocket] = None
        self._ws_failed = False

    def __repr__(self) -> str:
        return f"ComfyServer({self.url})"

    @property
    def name(self) -> str:
        return urllib.parse.urlsplit(self.url).netloc

    # ------------------------------------------------------------- HTTP
    def _request(self, method: str, path: str, body: Any = None, raw: bool = False, timeout=None):
        data = json.dumps(body).encode("utf-8") if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"} if data else {})
        try:
            with urllib.request.urlopen(req, timeout=timeout or self.timeout) as resp:
                payload = resp.read()
                status = resp.status
        except urllib.error.HTTPError as e:
            payload, status = e.read(), e.code
        except (urllib.error.URLError, ConnectionError, socket.timeout, TimeoutError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise ServerGone(f"server {self.url} is unreachable ({reason})") from None
        if raw:
            return status, payload
        try:
            return status, json.loads(payload.decode("utf-8")) if payload else None
        except ValueError:
            return status, payload.decode("utf-8", errors="replace")[:300]

    def check(self) -> dict:
        """``/system_stats`` (raises :class:`ServerGone` when unreachable)."""
        status, body = self._request("GET", "/system_stats", timeout=min(self.timeout, 10))
        if status != 200 or not isinstance(body, dict):
            raise ServerGone(f"server {self.url} answered /system_stats with HTTP {status}; is it ComfyUI?")
        return body

    def submit(self, prompt: dict) -> str:
        status, body = self._request("POST", "/prompt", {"prompt": prompt, "client_id": self.client_id})
        if status == 200 and isinstance(body, dict) and body.get("prompt_id"):
            return str(body["prompt_id"])
        if status >= 500 and status != 503:
            raise ServerGone(f"server {self.url} failed with HTTP {status}")
        raise PromptFailed(f"rejected by {self.name}: {rejection_text(body)}")

    def history(self, prompt_id: str) -> Optional[dict]:
        status, body = self._request("GET", f"/history/{urllib.parse.quote(prompt_id)}")
        if status != 200 or not isinstance(body, dict):
            return None
        return body.get(prompt_id)

    def view(self, ref: ImageRef) -> bytes:
        q = urllib.parse.urlencode({"filename": ref.filename, "subfolder": ref.subfolder, "type": ref.type})
        status, payload = self._request("GET", f"/view?{q}", raw=True)
        if status != 200:
            raise PromptFailed(f"{self.name} could not serve image {ref.filename!r} (HTTP {status})")
        return payload

    def delete(self, prompt_ids: list[str]) -> None:
        try:
            self._request("POST", "/queue", {"delete": list(prompt_ids)}, timeout=5)
        except ServerGone:
            pass

    # ------------------------------------------------------------- progress
    def _socket(self) -> Optional[WebSocket]:
        if self._ws is None and not self._ws_failed:
            ws_url = "ws" + self.url[4:] if self.url.startswith("http") else self.url
            try:
                self._ws = WebSocket(f"{ws_url}/ws?clientId={self.client_id}", timeout=min(self.timeout, 10))
            except WebSocketError:
                self._ws_failed = True  # polling /history from now on
        return self._ws

    def close(self) -> None:
        if self._ws is not None:
            self._ws.close()
            self._ws = None

    def wait(self, prompt_id: str, timeout: float, progress: Optional[Callable[[int, int], None]] = None,
             poll: float = 1.0, cancelled: Optional[Callable[[], bool]] = None) -> dict:
        """Wait for ``prompt_id`` to finish; returns its history entry.

        Progress comes from the websocket when it connects; /history is polled
        every ``poll`` seconds in any case (and is the only source without a
        websocket), so a lost message never hangs the wait.
        """
        deadline = time.monotonic() + timeout
        next_poll = 0.0
        while True:
            now = time.monotonic()
            if now >= next_poll:
                entry = self.history(prompt_id)
                if entry is not None and _finished(entry):
                    return entry
                next_poll = now + poll
            if cancelled is not None and cancelled():
                raise PromptFailed(f"prompt {prompt_id}: waiting was cancelled")
            if now > deadline:
                raise PromptFailed(f"prompt {prompt_id} did not finish on {self.name} within {timeout:.0f}s")
            ws = self._socket()
            if ws is None:
                time.sleep(min(poll, max(0.0, next_poll - time.monotonic())) or 0.05)
                continue
            try:
                msg = ws.recv(timeout=max(0.05, min(poll, next_poll - time.monotonic())))
            except WebSocketError:
                self._ws = None
                self.check()  # raises ServerGone when the server itself went away
                continue
            if not isinstance(msg, str):
                continue
            try:
                event = json.loads(msg)
            except ValueError:
                continue
            kind, data = event.get("type"), event.get("data") or {}
            if data.get("prompt_id") not in (None, prompt_id):
                continue
            if kind == "progress" and progress is not None:
                try:
                    progress(int(data.get("value", 0)), int(data.get("max", 0)))
                except (TypeError, ValueError):
                    pass
            elif (kind == "executing" and data.get("node") is None and data.get("prompt_id") == prompt_id) or \
                    kind in ("execution_success", "execution_error", "execution_interrupted"):
                next_poll = 0.0  # finished: read the history now


def _finished(entry: dict) -> bool:
    status = entry.get("status") or {}
    return bool(status.get("completed")) or status.get("status_str") in ("success", "error") or \
        (not status and bool(entry.get("outputs")))


def images_of(entry: dict) -> list[ImageRef]:
    """The images of a history entry's outputs, in node-id order."""
    out = []
    outputs = entry.get("outputs") or {}

    def order(k):
        return (0, int(k)) if str(k).isdigit() else (1, str(k))

    for node_id in sorted(outputs, key=order):
        for img in (outputs[node_id] or {}).get("images", []) or []:
            if isinstance(img, dict) and img.get("filename"):
                out.append(ImageRef(str(img["filename"]), str(img.get("subfolder", "")),
                                    str(img.get("type", "output")), str(node_id)))
    return out


def check_entry(entry: dict) -> None:
    status = entry.get("status") or {}
    if status.get("status_str") == "error" or (status and not status.get("completed", True)):
        raise PromptFailed(execution_error_text(status))


__all__ = ["ComfyServer", "ServerGone", "PromptFailed", "ImageRef", "images_of", "check_entry",
           "normalize_url", "rejection_text"]
