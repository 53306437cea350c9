"""The daemon: a ThreadingTCPServer owning the config, the users, the ledgers and the limits.

One thread per connection runs an ``FramedSession``.  What sessions share lives here: the
current ``UserStore`` (swapped whole on reload, never mutated), the per-user quota
ledgers, the login throttle, and the table of live sessions used for connection limits,
status and graceful stop.  This module must never block the accept loop on a client: refusals
and TLS handshakes happen in the session's thread.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import socketserver
import threading
import time
from pathlib import Path
from typing import Any, Iterator

from ftpd.framed import protocol
from ftpd.config import ServerConfig
from ftpd.errors import ConflictError
from ftpd.framed.session import FramedSession
from ftpd.quota import QuotaLedger
from ftpd.accounts.throttle import LoginThrottle
from ftpd.accounts.users import UserStore

logger = logging.getLogger(__name__)
VERSION = "0.1.0"


class FramedServer(socketserver.ThreadingTCPServer):
    """Owned by the main thread (``serve_forever``); handlers read its shared state."""

    allow_reuse_address = True
    daemon_threads = True
    # Large enough that 100 clients connecting at once all get in (the default is 5).
    request_queue_size = 1024

    def __init__(
        self,
        config: ServerConfig,
        users: UserStore,
        handler: type[FramedSession] = FramedSession,
        ssl_context: Any = None,
    ) -> None:
        self.config = config
        self.users = users
        self.ssl_context = ssl_context
        self.throttle = LoginThrottle(config.login_max_failures, config.login_lockout, config.login_delay)
        self.stopping = False
        self._lock = threading.Lock()
        self._ledgers: dict[str, QuotaLedger] = {}
        self._sessions: dict[socket.socket, str] = {}  # socket -> peer address
        self._handlers: set[FramedSession] = set()
        self._refused: dict[Any, str] = {}
        self._claimed: dict[Path, FramedSession] = {}
        self._claim_freed = threading.Condition(self._lock)
        self.transfers = 0
        self.home_root = Path(config.home_root)
        self.home_root.mkdir(parents=True, exist_ok=True)
        family = socket.AF_INET6 if ":" in config.host else socket.AF_INET
        self.address_family = family
        super().__init__((config.host, config.port), handler)

    # --- shared state for handlers ---------------------------------------------------

    def greeting(self) -> protocol.Response:
        data = {
            "server": protocol.SERVER_NAME,
            "version": VERSION,
            "protocol": protocol.PROTOCOL_VERSION,
            "digests": list(protocol.DIGESTS),
            "max_inline_body": protocol.MAX_INLINE_BODY,
        }
        return protocol.Response(True, protocol.GREETING, f"{protocol.SERVER_NAME} {VERSION} ready", data=data)

    def home_of(self, name: str) -> Path:
        """The user's home, created (0700) at first login."""
        home = self.home_root / name
        home.mkdir(mode=0o700, exist_ok=True)
        return home

    def ledger(self, name: str) -> QuotaLedger:
        with self._lock:
            ledger = self._ledgers.get(name)
            if ledger is None:
                ledger = self._ledgers[name] = QuotaLedger(self.home_of(name))
            return ledger

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

    @property
    def session_count(self) -> int:
        with self._lock:
            return len(self._sessions)

    def set_users(self, users: UserStore) -> None:
        """Swap in a new users snapshot; sessions see it at their next command."""
        self.users = users

    # --- connection limits -----------------------------------------------------------

    def verify_request(self, request: Any, client_address: Any) -> bool:
        """Admit every connection to a thread; over-limit ones are only told why there.

        The refusal (a 421 frame) is sent from the session's own thread, so a slow or
        TLS-handshaking client never stalls the accept loop.
        """
        ip = str(client_address[0])
        with self._lock:
            total = len(self._sessions)
            from_ip = sum(1 for peer in self._sessions.values() if peer == ip)
            reason = None
            if self.stopping:
                reason = "the server is shutting down"
            elif total >= self.config.max_connections:
                reason = "too many connections; try again later"
            elif from_ip >= self.config.max_per_ip:
                reason = "too many connections from your address"
            if reason is None:
                self._sessions[request] = ip
            else:
                self._refused[request] = reason
        return True

    def refusal(self, request: Any) -> str | None:
        """Why this connection was refused at accept time, or None if it was admitted."""
        with self._lock:
            return self._refused.pop(request, None)

    @contextlib.contextmanager
    def claim(self, key: Path, owner: FramedSession, wait_s: float = 10.0) -> Iterator[None]:
        """One upload at a time per target path.

        A newer upload to the same target takes over: the older session is assumed dead
        (a client that reconnected after a network cut, whose old connection the daemon
        has not noticed yet), so its socket is shut down and its partial is handed over.
        """
        with self._claim_freed:
            holder = self._claimed.get(key)
            if holder is not None and holder is not owner:
                logger.info("TAKEOVER user=%s: a new upload replaces a stalled one", owner.user)
                with contextlib.suppress(OSError):
                    holder.sock.shutdown(socket.SHUT_RDWR)
                if not self._claim_freed.wait_for(lambda: key not in self._claimed, wait_s):
                    raise ConflictError("another upload to this path is in progress")
            self._claimed[key] = owner
        try:
            yield
        finally:
            with self._claim_freed:
                del self._claimed[key]
                self._claim_freed.notify_all()

    def shutdown_request(self, request: Any) -> None:
        with self._lock:
            self._sessions.pop(request, None)
            self._refused.pop(request, None)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A handler crash outside dispatch: log it here, never on the client's stream.
        logger.exception("session error ip=%s", client_address[0] if client_address else "-")

    # --- stopping --------------------------------------------------------------------

    def register(self, handler: FramedSession) -> None:
        with self._lock:
            self._handlers.add(handler)

    def unregister(self, handler: FramedSession) -> None:
        with self._lock:
            self._handlers.discard(handler)

    def close_idle(self, all_sessions: bool = False) -> int:
        """Close sessions not inside a command (or all); returns how many were closed."""
        with self._lock:
            targets = [h for h in self._handlers if all_sessions or not h.busy]
        for handler in targets:
            if not handler.closing and not handler.busy:
                handler.closing = True
                handler.farewell("the server is shutting down")
            handler.closing = True
            with contextlib.suppress(OSError):
                handler.sock.shutdown(socket.SHUT_RDWR)
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
                if not self._handlers:
                    return True
            time.sleep(0.05)
        self.close_idle(all_sessions=True)
        return False
