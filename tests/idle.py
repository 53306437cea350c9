"""Idle sessions: a socket wrapper that tells whether its owner ever waits inside
``recv``, and a daemon's resident memory.

An idle session is a thread blocked on its connection.  Blocked in ``recv(n)`` it holds
an ``n``-byte buffer for as long as it waits; waiting for readability first (``poll``)
and receiving only once bytes are there holds none.  ``Watched`` records each receive
and whether the kernel had anything to give at that moment, so a test can tell the
two apart by inspecting calls, not by timing or memory.
"""

from __future__ import annotations

import select
import socket
import threading
from collections.abc import Callable
from typing import Any


class Watched:
    """Wraps a socket: ``recv``/``recv_into`` are recorded, everything else passes.

    ``events`` lists, in order, ``"wait"`` (``fileno()`` was asked: a poll is being
    set up), ``"recv"`` (a receive with bytes or the end of stream already there) and
    ``"blind"`` (a receive entered with nothing to read: it waits inside ``recv``).
    """

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self.events: list[str] = []
        self.changed = threading.Condition()

    def _note(self, event: str) -> None:
        with self.changed:
            self.events.append(event)
            self.changed.notify_all()

    def _readable(self) -> bool:
        poller = select.poll()
        poller.register(self._sock, select.POLLIN)
        return bool(poller.poll(0))

    def fileno(self) -> int:
        self._note("wait")
        return self._sock.fileno()

    def recv(self, size: int, *flags: int) -> bytes:
        self._note("recv" if self._readable() else "blind")
        return self._sock.recv(size, *flags)

    def recv_into(self, buffer: Any, *args: int) -> int:
        self._note("recv" if self._readable() else "blind")
        return self._sock.recv_into(buffer, *args)

    def wait_for_idle(self, timeout: float) -> list[str]:
        """Block until the owner waits again after its last receive (its last event is
        a ``wait`` or a ``blind`` receive); the events so far."""
        with self.changed:
            ok = self.changed.wait_for(
                lambda: bool(self.events) and self.events[-1] in ("wait", "blind"), timeout
            )
            assert ok, f"the session never went back to waiting: {self.events[-10:]}"
            return list(self.events)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


def rss_kib(pid: int) -> int:
    """A process's resident memory (VmRSS), KiB."""
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise KeyError("VmRSS")


def per_session_kib(pid: int, open_one: Callable[[], Any], count: int) -> tuple[float, list[Any]]:
    """RSS growth of process ``pid`` per session while ``count`` sessions sit idle.

    A few sessions are opened first and kept (first logins count the user's usage and
    import what they need), so only what each further session costs is measured.  The
    caller closes the sessions returned.
    """
    sessions = [open_one() for _ in range(5)]
    before = rss_kib(pid)
    for _ in range(count):
        sessions.append(open_one())
    return (rss_kib(pid) - before) / count, sessions
