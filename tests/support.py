"""Raw-socket helpers for tests that speak the wire format byte by byte, as a hostile
client would (no ``ftp_client`` in the way)."""

from __future__ import annotations

import json
import socket
import struct
import time
from typing import Any

from ftpd.framed import protocol

TIMEOUT = 5.0


def frame(header: dict[str, Any] | bytes, body: bytes = b"") -> bytes:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack(">I", len(raw)) + raw + body


def recv_exact(sock: socket.socket, size: int) -> bytes:
    out = b""
    while len(out) < size:
        chunk = sock.recv(size - len(out))
        if not chunk:
            raise EOFError(f"closed after {len(out)} of {size} bytes")
        out += chunk
    return out


def read_frame(sock: socket.socket) -> dict[str, Any]:
    """One header (its body, if any, is left unread)."""
    (length,) = struct.unpack(">I", recv_exact(sock, 4))
    assert length <= protocol.MAX_HEADER_BYTES
    return json.loads(recv_exact(sock, length))


def read_frame_with_body(sock: socket.socket) -> tuple[dict[str, Any], bytes]:
    header = read_frame(sock)
    return header, recv_exact(sock, header.get("body", 0))


def call(sock: socket.socket, cmd: str, **args: Any) -> dict[str, Any]:
    """Send one request, return the response header (its body read and dropped)."""
    sock.sendall(frame({"cmd": cmd, "args": args}))
    header, _ = read_frame_with_body(sock)
    return header


def wait_until(predicate: Any, timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)  # polling an external condition, not synchronising
