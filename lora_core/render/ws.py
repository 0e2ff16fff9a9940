"""A minimal websocket client (RFC 6455), standard library only.

Enough for ComfyUI's ``/ws`` progress stream: the opening handshake, text and
binary messages (fragmented or not), ping → pong, close.  Client frames are
masked as the RFC requires; server frames must not be.  ``recv`` returns
None on timeout without losing a half-read frame, so a caller can poll.
"""
from __future__ import annotations

import base64
import hashlib
import os
import socket
import struct
import time
import urllib.parse
from typing import Optional, Union

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
MAX_MESSAGE = 64 << 20  # ComfyUI sends previews as binary frames; nothing legitimate is larger


class WebSocketError(ConnectionError):
    """The handshake failed, the stream broke, or the server closed it."""


def accept_key(key: str) -> str:
    """The ``Sec-WebSocket-Accept`` value for a client's ``Sec-WebSocket-Key``."""
    return base64.b64encode(hashlib.sha1((key + GUID).encode("ascii")).digest()).decode("ascii")


class WebSocket:
    def __init__(self, url: str, timeout: float = 10.0):
        u = urllib.parse.urlsplit(url)
        if u.scheme not in ("ws", "http"):
            raise WebSocketError(f"unsupported websocket URL {url!r} (ws:// only)")
        host, port = u.hostname or "127.0.0.1", u.port or 80
        path = (u.path or "/") + (f"?{u.query}" if u.query else "")
        self._buf = bytearray()
        self._parts: list[bytes] = []
        self._opcode = 0
        try:
            self.sock = socket.create_connection((host, port), timeout=timeout)
        except OSError as e:
            raise WebSocketError(f"cannot connect to {host}:{port}: {e}") from None
        key = base64.b64encode(os.urandom(16)).decode("ascii")
        request = (f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
                   f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n")
        try:
            self.sock.sendall(request.encode("ascii"))
            head = self._read_head(timeout)
        except OSError as e:
            self.close()
            raise WebSocketError(f"websocket handshake with {host}:{port} failed: {e}") from None
        lines = head.decode("latin-1").split("\r\n")
        status = lines[0].split(" ", 2)
        headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)}
        if len(status) < 2 or status[1] != "101" or headers.get("sec-websocket-accept") != accept_key(key):
            self.close()
            raise WebSocketError(f"{host}:{port} did not accept a websocket ({lines[0][:80]!r})")

    def _read_head(self, timeout: float) -> bytes:
        deadline = time.monotonic() + timeout
        while b"\r\n\r\n" not in self._buf:
            if time.monotonic() > deadline or len(self._buf) > 65536:
                raise OSError("no handshake answer")
            chunk = self.sock.recv(4096)
            if not chunk:
                raise OSError("connection closed during the handshake")
            self._buf += chunk
        end = self._buf.index(b"\r\n\r\n") + 4
        head = bytes(self._buf[:end])
        del self._buf[:end]
        return head

    # ------------------------------------------------------------- frames
    def _frame(self) -> Optional[tuple[bool, int, bytes]]:
        """One complete frame from the buffer, or None if it is not all there yet."""
        b = self._buf
        if len(b) < 2:
            return None
        fin, opcode = bool(b[0] & 0x80), b[0] & 0x0F
        masked, n = bool(b[1] & 0x80), b[1] & 0x7F
        pos = 2
        if n == 126:
            if len(b) < 4:
                return None
            n, pos = struct.unpack(">H", b[2:4])[0], 4
        elif n == 127:
            if len(b) < 10:
                return None
            n, pos = struct.unpack(">Q", b[2:10])[0], 10
        if n > MAX_MESSAGE:
            raise WebSocketError(f"websocket frame of {n} bytes is over the {MAX_MESSAGE >> 20} MiB limit")
        mask = b""
        if masked:
            if len(b) < pos + 4:
                return None
            mask, pos = bytes(b[pos:pos + 4]), pos + 4
        if len(b) < pos + n:
            return None
        payload = bytes(b[pos:pos + n])
        del b[:pos + n]
        if masked:
            payload = bytes(x ^ mask[i % 4] for i, x in enumerate(payload))
        return fin, opcode, payload

    def _send(self, opcode: int, payload: bytes = b"") -> None:
        mask = os.urandom(4)
        n = len(payload)
        head = bytes([0x80 | opcode])
        if n < 126:
            head += bytes([0x80 | n])
        elif n < 65536:
            head += bytes([0x80 | 126]) + struct.pack(">H", n)
        else:
            head += bytes([0x80 | 127]) + struct.pack(">Q", n)
        self.sock.sendall(head + mask + bytes(x ^ mask[i % 4] for i, x in enumerate(payload)))

    def recv(self, timeout: float = 1.0) -> Optional[Union[str, bytes]]:
        """The next message (str for text, bytes for binary), or None after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            frame = self._frame()
            if frame is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self.sock.settimeout(left)
                try:
                    chunk = self.sock.recv(65536)
                except socket.timeout:
                    return None
                except OSError as e:
                    raise WebSocketError(f"websocket broke: {e}") from None
                if not chunk:
                    raise WebSocketError("the server closed the connection")
                self._buf += chunk
                continue
            fin, opcode, payload = frame
            if opcode == 0x8:
                try:
                    self._send(0x8, payload[:2])
                except OSError:
                    pass
                raise WebSocketError("the server closed the websocket")
            if opcode == 0x9:
                self._send(0xA, payload)
                continue
            if opcode == 0xA:
                continue
            if opcode in (0x1, 0x2):
                self._opcode, self._parts = opcode, [payload]
            elif opcode == 0x0:
                self._parts.append(payload)
                if sum(len(p) for p in self._parts) > MAX_MESSAGE:
                    raise WebSocketError("websocket message over the size limit")
            else:
                raise WebSocketError(f"unknown websocket opcode {opcode}")
            if fin:
                data = b"".join(self._parts)
                self._parts = []
                return data.decode("utf-8", errors="replace") if self._opcode == 0x1 else data

    def close(self) -> None:
        try:
            self._send(0x8, struct.pack(">H", 1000))
        except OSError:
            pass
        try:
            self.sock.close()
        except OSError:
            pass


__all__ = ["WebSocket", "WebSocketError", "accept_key"]
