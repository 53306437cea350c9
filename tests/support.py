"""Raw-socket helpers for tests that speak the wire format byte by byte, as a hostile
client would (no ``ftp_client`` in the way)."""

from __future__ import annotations

import json
import logging
import re
import socket
import struct
import threading
import time
from typing import Any

from ftpd.core.files import claim_key
from ftpd.core.runtime import Runtime
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
    """Poll a condition nothing signals (a server counter, a file's size) with a deadline.

    Not for log lines: wait for those with ``LogRecords.wait_for``.
    """
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)  # polling an external condition, not synchronising


def wait_upload_released(runtime: Runtime, user: str, path: str, timeout: float = TIMEOUT) -> None:
    """Until the upload of ``user``'s ``path`` (no links on the way) has let go of its claim.

    For an upload whose connection was cut: its session settles it on its own time.  The
    claim goes last (``Upload._release``: the transfer count, then the quota and the
    partial, then the claim), so once it is free the partial, the quota and the claim are
    all final.  ``transfers == 0`` is not enough: the count drops first, and a test that
    sees it may still find the quota unsettled or get a 409 for the same path.  Only for
    an upload known to hold its claim (its 150 was read): a free claim proves nothing
    before that.
    """
    key = claim_key(user, tuple(part for part in path.split("/") if part))
    wait_until(lambda: not runtime.claims.held(key), timeout)


class LogRecords(logging.Handler):
    """Collects log records and lets a test wait for one, woken by each new record.

    The server logs a command's line after sending its answer, so a test that has its
    answer may still be ahead of the line: ``wait_for`` blocks (with a deadline) until a
    matching record arrives instead of reading too early or sleeping.
    """

    def __init__(self, level: int = logging.NOTSET) -> None:
        super().__init__(level)
        self.records: list[logging.LogRecord] = []
        self._changed = threading.Condition()

    def emit(self, record: logging.LogRecord) -> None:
        with self._changed:
            self.records.append(record)
            self._changed.notify_all()

    def messages(self, start: int = 0) -> list[str]:
        with self._changed:
            return [record.getMessage() for record in self.records[start:]]

    def mark(self) -> int:
        """A position to pass as ``start``: only records emitted after it will match."""
        with self._changed:
            return len(self.records)

    def wait_for(self, pattern: str, timeout: float = TIMEOUT, start: int = 0) -> str:
        """The first message from ``start`` on that matches ``pattern`` (``re.search``)."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        seen = start
        with self._changed:
            while True:
                for record in self.records[seen:]:
                    message = record.getMessage()
                    if regex.search(message):
                        return message
                seen = max(seen, len(self.records))
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    got = "\n".join(r.getMessage() for r in self.records[-50:])
                    raise AssertionError(f"no log record matching {pattern!r}; got:\n{got}")
                self._changed.wait(remaining)


def closed_within(sock: socket.socket, seconds: float) -> bool:
    """Whether the server closes (EOF or reset) within ``seconds``, reading what comes."""
    sock.settimeout(seconds)
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False
    finally:
        sock.settimeout(TIMEOUT)
    return True
