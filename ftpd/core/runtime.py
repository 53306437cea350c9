"""The runtime registry every listener shares: live sessions, limits, transfers, stopping.

Each front end's server admits connections here (so ``max_connections`` and
``max_per_ip`` count every protocol together), registers its sessions, counts its
transfers, takes upload claims through here, and is stopped through here: graceful stop
and the idle farewells reach every session of every listener.

This module must never touch a socket itself: it talks to sessions only through the
small ``Session`` interface (``farewell``, ``interrupt``), which each front end
implements for its own wire.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Protocol

from ftpd.state.base import Claim, Claims

logger = logging.getLogger(__name__)


class Session(Protocol):
    """What the runtime needs of a session, whatever its protocol."""

    ip: str
    busy: bool  # inside a command: graceful stop waits for it
    closing: bool

    def farewell(self, reason: str) -> None: ...
    def interrupt(self) -> None: ...


class Runtime:
    """Shared by every listener's threads; all state behind one lock."""

    def __init__(self, max_connections: int, max_per_ip: int, claims: Claims) -> None:
        self.max_connections = max_connections
        self.max_per_ip = max_per_ip
        self.claims = claims
        self.stopping = False
        self._lock = threading.Lock()
        # connection -> client address (None: behind a balancer, not known yet)
        self._admitted: dict[object, str | None] = {}
        self._sessions: set[Session] = set()
        self.transfers = 0

    # --- connections ----------------------------------------------------------------

    def admit(self, key: object, ip: str | None) -> str | None:
        """Count a new connection; returns why it is refused, or None if admitted.

        ``ip`` None: a trusted balancer's connection, whose client address comes later
        in its PROXY header; it counts against ``max_connections`` only until ``place``.
        """
        with self._lock:
            if self.stopping:
                return "the server is shutting down"
            if len(self._admitted) >= self.max_connections:
                return "too many connections; try again later"
            if ip is not None and (
                sum(1 for peer in self._admitted.values() if peer == ip) >= self.max_per_ip
            ):  # a balancer's connections wait for their address: counted at ``place``
                return "too many connections from your address"
            self._admitted[key] = ip
            return None

    def place(self, key: object, ip: str) -> str | None:
        """Give an admitted connection its client address (from a PROXY header) and count
        it against ``max_per_ip``; returns why it is refused, or None."""
        with self._lock:
            if sum(1 for k, peer in self._admitted.items() if peer == ip and k is not key) >= (
                self.max_per_ip
            ):
                return "too many connections from your address"
            self._admitted[key] = ip
            return None

    def release(self, key: object) -> None:
        with self._lock:
            self._admitted.pop(key, None)

    def set_limits(self, max_connections: int, max_per_ip: int) -> None:
        self.max_connections, self.max_per_ip = max_connections, max_per_ip

    @property
    def session_count(self) -> int:
        with self._lock:
            return len(self._admitted)

    def register(self, session: Session) -> None:
        with self._lock:
            self._sessions.add(session)

    def unregister(self, session: Session) -> None:
        with self._lock:
            self._sessions.discard(session)

    # --- transfers and claims -----------------------------------------------------------

    @contextlib.contextmanager
    def transfer(self) -> Iterator[None]:
        """Count a running transfer (status line, graceful stop)."""
        with self._lock:
            self.transfers += 1
        try:
            yield
        finally:
            with self._lock:
                self.transfers -= 1

    def claim(self, key: str, interrupt: Callable[[], None]) -> Claim:
        """One upload per target (see ``state.local.LocalClaims``)."""
        return self.claims.claim(key, interrupt)

    def status(self) -> str:
        return f"{self.session_count} sessions, {self.transfers} transfers"

    # --- stopping ---------------------------------------------------------------------

    def close_idle(self, all_sessions: bool = False) -> int:
        """Close sessions not inside a command (or all); returns how many were closed."""
        with self._lock:
            targets = [s for s in self._sessions if all_sessions or not s.busy]
        for session in targets:
            if not session.closing and not session.busy:
                session.closing = True
                session.farewell("the server is shutting down")
            session.closing = True
            session.interrupt()
        return len(targets)

    def drain(self, grace_s: float) -> bool:
        """Graceful stop: refuse new work, wait for running commands up to ``grace_s``.

        Returns True when every session ended within the grace period.
        """
        self.stopping = True
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline:
            self.close_idle()
            with self._lock:
                if not self._sessions:
                    return True
            time.sleep(0.05)  # the sessions' own threads are finishing; nothing to wait on
        self.close_idle(all_sessions=True)
        return False
