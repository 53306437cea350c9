"""FTP data connections: the passive port range, and one ``DataChannel`` per transfer.

A passive channel listens on one port of ``ftp.passive_ports`` (``PassivePorts`` hands
them out to every session of the listener; a range with no free port is a 425, never a
wait) and accepts one connection, and only from the control connection's own address:
any other peer is dropped and the channel keeps waiting until its deadline (data
connection theft, docs/security.md).  An active channel (PORT/EPRT, off unless
``ftp.active``) connects only to the control connection's peer, to an unprivileged
port (no bounce).  With PROT P the connection is wrapped in TLS from the session's own
context; that context issues no session tickets on data connections (issue 10: tickets
unread by an uploading client turn its close into a reset that cuts the upload), and
with ``ftp.tls_session_reuse`` a data connection that does not resume the control
connection's TLS session is refused.

The session owns its channel and closes it whatever happens; every socket here has a
timeout.  This module must never read or write a file.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import socket
import ssl
import struct
import threading
import time

from ftpd.ftp.replies import DataConnectionError

logger = logging.getLogger(__name__)
#: Connections a passive listener lets wait (one is ours; others are dropped thieves).
BACKLOG = 4


class PassivePorts:
    """The passive range.  Shared by every session thread of one listener (a lock)."""

    def __init__(self, low: int, high: int) -> None:
        self.low, self.high = low, high
        self._next = low
        self._lock = threading.Lock()

    def listen(self, ip: str) -> socket.socket:
        """A listening socket on a free port of the range, bound to ``ip``.

        Raises:
            DataConnectionError: every port of the range is taken (425).
        """
        family = socket.AF_INET6 if ":" in ip else socket.AF_INET
        count = self.high - self.low + 1
        with self._lock:
            start = self._next
            self._next = self.low + (start - self.low + 1) % count
        for i in range(count):
            port = self.low + (start - self.low + i) % count
            sock = socket.socket(family, socket.SOCK_STREAM)
            try:
                # TIME_WAIT leftovers of earlier transfers must not block the port; two
                # listeners on one port still cannot exist (Linux refuses the second).
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind((ip, port))
                sock.listen(BACKLOG)
                return sock
            except OSError as exc:
                sock.close()
                if exc.errno not in (errno.EADDRINUSE, errno.EACCES):
                    raise DataConnectionError(f"cannot open a passive port: {exc}") from None
        raise DataConnectionError("no passive port is free; try again later")


class DataChannel:
    """One data connection of one session: opened by PASV/EPSV/PORT/EPRT, connected by
    the transfer command, closed by the session.  Used by the session thread only."""

    def __init__(
        self,
        peer_ip: str,
        timeout_s: float,
        listener: socket.socket | None = None,
        target: tuple[str, int] | None = None,
    ) -> None:
        self.peer_ip = peer_ip
        self.timeout_s = timeout_s
        self.listener = listener
        self.target = target
        self.opened = time.monotonic()
        self.sock: socket.socket | None = None

    @property
    def port(self) -> int:
        assert self.listener is not None
        return int(self.listener.getsockname()[1])

    @property
    def expired(self) -> bool:
        """A passive port nobody connected to within the timeout (closed by the session)."""
        return self.sock is None and time.monotonic() - self.opened > self.timeout_s

    def connect(
        self, tls: ssl.SSLContext | None = None, require_reuse: bool = False
    ) -> socket.socket:
        """The connected (and with ``tls`` wrapped) data socket.

        Raises:
            DataConnectionError: nobody came in time, the connect failed, the TLS
                handshake failed or did not resume the control connection's session.
        """
        if self.sock is not None:
            return self.sock
        raw = self._accept() if self.listener is not None else self._dial()
        raw.settimeout(self.timeout_s)
        with contextlib.suppress(OSError):
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if tls is None:
            self.sock = raw
            return raw
        try:
            sock = tls.wrap_socket(raw, server_side=True, suppress_ragged_eofs=False)
        except (OSError, ValueError) as exc:
            raw.close()
            message = f"TLS handshake on the data connection failed: {exc}"
            raise DataConnectionError(message) from None
        self.sock = sock
        if require_reuse and not sock.session_reused:
            raise DataConnectionError(
                "the data connection must resume the control connection's TLS session"
            )
        return sock

    def _accept(self) -> socket.socket:
        assert self.listener is not None
        deadline = self.opened + self.timeout_s
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise DataConnectionError("nobody connected to the passive port in time")
            self.listener.settimeout(remaining)
            try:
                conn, addr = self.listener.accept()
            except TimeoutError:
                raise DataConnectionError("nobody connected to the passive port in time") from None
            except OSError as exc:
                raise DataConnectionError(f"cannot accept the data connection: {exc}") from None
            if str(addr[0]) == self.peer_ip:
                self._close_listener()
                return conn
            # Someone else raced for the port (data connection theft): drop and wait on.
            logger.warning("DATA THEFT ip=%s expected=%s: dropped", addr[0], self.peer_ip)
            with contextlib.suppress(OSError):
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            conn.close()

    def _dial(self) -> socket.socket:
        assert self.target is not None
        try:
            return socket.create_connection(self.target, timeout=self.timeout_s)
        except OSError as exc:
            raise DataConnectionError(f"cannot connect to {self.target[0]}: {exc}") from None

    def _close_listener(self) -> None:
        if self.listener is not None:
            with contextlib.suppress(OSError):
                self.listener.close()
            self.listener = None

    def close(self, tls_goodbye: bool = False) -> None:
        """Close everything; ``tls_goodbye``: send close_notify first (a clean end)."""
        self._close_listener()
        sock, self.sock = self.sock, None
        if sock is None:
            return
        if tls_goodbye and isinstance(sock, ssl.SSLSocket):
            with contextlib.suppress(OSError, ValueError):
                sock.settimeout(min(self.timeout_s, 5.0))
                sock = sock.unwrap()
        with contextlib.suppress(OSError):
            sock.close()
