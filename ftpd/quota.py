"""Disk quota: how many bytes a home holds, and reservations so uploads never overshoot.

One ``QuotaLedger`` per user is shared by all that user's sessions.  An upload reserves
its remaining bytes before the first byte is written, so two sessions of one user can
never jointly pass the limit; the ledger learns of every change the daemon itself makes
and is re-counted from the real bytes on disk when a user asks (``quota``).

This module must never let a reservation succeed past the limit: every check and every
change happens under the ledger's lock.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from ftpd.errors import QuotaExceededError
from ftpd.units import format_size


def scan_usage(root: Path) -> int:
    """Bytes of every regular file under ``root`` (partials included, links not followed)."""
    total = 0
    stack = [str(root)]
    while stack:
        try:
            with os.scandir(stack.pop()) as entries:
                for entry in entries:
                    try:
                        if entry.is_dir(follow_symlinks=False):
                            stack.append(entry.path)
                        elif entry.is_file(follow_symlinks=False):
                            total += entry.stat(follow_symlinks=False).st_size
                    except OSError:
                        continue  # vanished or unreadable while we walked
        except OSError:
            continue
    return total


class QuotaLedger:
    """Used and reserved bytes of one home.  Thread-safe; owned by the server."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._lock = threading.Lock()
        self._used: int | None = None
        self._reserved = 0
        self._version = 0  # bumped by every change, so a recount can tell it is stale

    def _ensure(self) -> int:
        if self._used is None:
            self._used = scan_usage(self.root)
        return self._used

    def usage(self, rescan: bool = False) -> tuple[int, int]:
        """(used, reserved) bytes; ``rescan`` re-counts the real bytes on disk first.

        The walk runs outside the lock (a big home must not stall this user's uploads),
        and its result is kept only if nothing changed meanwhile and no upload is open:
        an open upload's partial is on disk, and the upload adds those bytes when it
        closes, so a recount then would count them twice.
        """
        if rescan:
            with self._lock:
                version, busy = self._version, bool(self._reserved)
            if not busy:
                counted = scan_usage(self.root)
                with self._lock:
                    if self._version == version and not self._reserved:
                        self._used = counted
        with self._lock:
            return self._ensure(), self._reserved

    def reserve(self, nbytes: int, limit: int | None) -> "Reservation":
        """Hold ``nbytes`` for an upload, or refuse with how much room is left.

        Raises:
            QuotaExceededError: ``used + reserved + nbytes`` would pass ``limit``.
        """
        with self._lock:
            used = self._ensure()
            if limit is not None and used + self._reserved + nbytes > limit:
                room = max(0, limit - used - self._reserved)
                raise QuotaExceededError(
                    f"quota exceeded: {format_size(nbytes)} needed, {format_size(room)} free "
                    f"of {format_size(limit)}",
                    available=room,
                    limit=limit,
                    used=used,
                )
            self._reserved += nbytes
            self._version += 1
        return Reservation(self, nbytes)

    def adjust(self, delta: int) -> None:
        """Record bytes the daemon added (+) or freed (-) on disk."""
        with self._lock:
            self._version += 1
            if self._used is not None:
                self._used = max(0, self._used + delta)

    def _release(self, nbytes: int, written: int) -> None:
        with self._lock:
            self._reserved -= nbytes
            self._version += 1
            if self._used is not None:
                self._used = max(0, self._used + written)


class Reservation:
    """Space held by one upload.  ``close(written)`` turns it into used bytes, once."""

    def __init__(self, ledger: QuotaLedger, nbytes: int) -> None:
        self.ledger = ledger
        self.nbytes = nbytes
        self._open = True

    def grow(self, nbytes: int) -> None:
        """Hold ``nbytes`` more without a limit check: for bytes just freed by the same upload."""
        with self.ledger._lock:
            self.ledger._reserved += nbytes
        self.nbytes += nbytes

    def close(self, written: int) -> None:
        """Release the hold and count the ``written`` bytes now on disk."""
        if self._open:
            self._open = False
            self.ledger._release(self.nbytes, written)
