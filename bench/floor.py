"""The minimal-server floor: the least a Python server with our framing can cost here.

Its one job: a server process that speaks the framed protocol's wire format (4-byte
length, JSON header, optional body) with a thread per connection, as the daemon does,
and does nothing else: it greets, answers ``login`` and every other command with a
fixed ``200``, and ``ls`` with a fixed 10-entry listing.  Whatever ``run.py`` measures
against it (``ls`` round trips, daemon CPU per command, memory per idle session) is the
floor that the daemon's own figure sits above.  It listens on 127.0.0.1 only and stops
on SIGTERM.

    python bench/floor.py        # prints "LISTENING port=N", then serves
"""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
from pathlib import Path

LENGTH = struct.Struct(">I")
ENTRIES = 10


def _frame(header: dict, body: bytes = b"") -> bytes:
    if body:
        header = {**header, "body": len(body)}
    raw = json.dumps(header, separators=(",", ":")).encode()
    return LENGTH.pack(len(raw)) + raw + body


def _listing() -> bytes:
    lines = "".join(
        json.dumps({"name": f"e{i}", "type": "file", "size": 100, "mtime": 1.7e9, "mode": 420})
        + "\n"
        for i in range(ENTRIES)
    ).encode()
    return _frame(
        {"ok": True, "code": 200, "message": "", "data": {"path": "/", "count": ENTRIES}}, lines
    )


GREETING = _frame({"ok": True, "code": 220, "message": "floor ready", "data": {"protocol": 1}})
OK = _frame({"ok": True, "code": 200, "message": "ok", "data": {"cwd": "/"}})
BYE = _frame({"ok": True, "code": 221, "message": "bye"})
LISTING = _listing()


def serve_one(sock: socket.socket) -> None:
    """One session: frames in, fixed answers out, until the peer goes or says quit."""
    sock.settimeout(600)
    with sock:
        sock.sendall(GREETING)
        pending = b""
        while True:
            try:
                chunk = sock.recv(65536)
            except OSError:
                return
            if not chunk:
                return
            pending += chunk
            while len(pending) >= 4:
                (size,) = LENGTH.unpack_from(pending)
                if len(pending) < 4 + size:
                    break
                header = json.loads(pending[4 : 4 + size])
                body = header.get("body") or 0
                if len(pending) < 4 + size + body:
                    break
                pending = pending[4 + size + body :]
                cmd = header.get("cmd")
                if cmd == "quit":
                    sock.sendall(BYE)
                    return
                sock.sendall(LISTING if cmd == "ls" else OK)


def main() -> int:
    listener = socket.create_server(("127.0.0.1", 0), backlog=1024)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    print(f"LISTENING port={listener.getsockname()[1]}", flush=True)

    def accept() -> None:
        while True:
            try:
                sock, _ = listener.accept()
            except OSError:
                return
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            threading.Thread(target=serve_one, args=(sock,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    stop.wait()
    listener.close()
    return 0


class Floor:
    """The floor server as a child process of the benchmark."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve())],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()  # blocks until it listens (or dies: EOF)
        if not line.startswith("LISTENING port="):
            self.stop()
            raise RuntimeError("the floor server did not start")
        self.port = int(line.split("=", 1)[1])

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
