"""Tell systemd how the daemon is doing, via the sd_notify datagram protocol.

The protocol is one AF_UNIX SOCK_DGRAM datagram of ``KEY=VALUE`` lines sent to the
address in ``$NOTIFY_SOCKET`` (see sd_notify(3)). When that variable is unset, every
call is a cheap no-op, so the daemon runs the same under systemd or in a terminal.

This module must never raise out of a notification: a daemon must not die because
systemd's socket went away. It also depends on nothing but the standard library.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time

logger = logging.getLogger(__name__)

_SEND_TIMEOUT_S = 1.0


class Notifier:
    """One connection to systemd's notify socket.

    Owned by the server; any thread may call it (status updates come from sessions,
    the reload handler and shutdown), so sending is serialised by a lock.
    """

    def __init__(self, address: str | None = None) -> None:
        """Remember the socket address; connect lazily on the first message.

        Args:
            address: an absolute path, or ``@name`` for the abstract namespace.
                ``None`` reads ``$NOTIFY_SOCKET``; empty or unset disables the notifier.
        """
        if address is None:
            address = os.environ.get("NOTIFY_SOCKET", "")
        self._address = address
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        """Whether there is a notify socket to talk to."""
        return bool(self._address)

    def notify(self, **fields: object) -> bool:
        """Send one datagram of ``KEY=VALUE`` lines, e.g. ``notify(READY=1, STATUS="up")``.

        Returns:
            True if the datagram was sent; False if disabled or sending failed.
        """
        if not self.enabled or not fields:
            return False
        data = "".join(f"{key}={_one_line(value)}\n" for key, value in fields.items())
        with self._lock:
            try:
                self._send(data.encode("utf-8", "replace"))
            except (OSError, ValueError) as exc:  # ValueError: malformed address
                logger.warning("sd_notify to %r failed: %s", self._address, exc)
                self._close_locked()
                return False
        logger.debug("sd_notify: %s", data.strip().replace("\n", " "))
        return True

    def ready(self, status: str | None = None) -> bool:
        """Report start-up finished (``READY=1``), optionally with a status line."""
        if status is None:
            return self.notify(READY=1)
        return self.notify(READY=1, STATUS=status)

    def reloading(self) -> bool:
        """Report a configuration reload has begun; send ``ready()`` when it is done."""
        # Type=notify-reload requires MONOTONIC_USEC alongside RELOADING=1 (sd_notify(3)).
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.notify(RELOADING=1, MONOTONIC_USEC=usec)

    def stopping(self) -> bool:
        """Report that shutdown has begun."""
        return self.notify(STOPPING=1)

    def status(self, text: str) -> bool:
        """Set the free-form one-line status shown by ``systemctl status``."""
        return self.notify(STATUS=text)

    def close(self) -> None:
        """Close the socket; a later message reconnects."""
        with self._lock:
            self._close_locked()

    def _send(self, data: bytes) -> None:
        if self._sock is None:
            address = self._address
            if address.startswith("@"):
                address = "\0" + address[1:]
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            sock.settimeout(_SEND_TIMEOUT_S)
            try:
                sock.connect(address)
            except OSError:
                sock.close()
                raise
            self._sock = sock
        self._sock.send(data)

    def _close_locked(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _one_line(value: object) -> str:
    """Flatten a value to one line: a newline would start a bogus new field."""
    return " ".join(str(value).splitlines())
