"""The in-process state: quota ledgers and upload claims behind locks (the default).

A ledger learns of every change the daemon makes (uploads, removals, new folders) and is
counted from the storage at first use, on reload and on an admin's request, never on a
user's ``quota``.  A recount runs outside the lock (a big home must not stall uploads)
and is kept only if nothing changed meanwhile and nothing is reserved; a recount that
could not read everything never lowers what the ledger knew.

This module must never let a reservation pass a limit: every check and every change of a
count happens under the ledger's lock.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator

from ftpd.errors import ConflictError
from ftpd.state.base import Limits, Usage, check_room

logger = logging.getLogger(__name__)

Counter = Callable[[], tuple[int, int, bool]]


class LocalLedger:
    """Used and reserved bytes and entries of one user.  Thread-safe."""

    def __init__(self, count: Counter) -> None:
        self._count = count
        self._lock = threading.Lock()
        self._used: int | None = None
        self._entries = 0
        self._reserved = 0
        self._reserved_entries = 0
        self._version = 0  # bumped by every change, so a recount can tell it is stale
        self._changing = 0  # operations removing or moving things right now

    def _ensure(self) -> None:
        """First use: count (under the lock, so nothing is reserved against a guess)."""
        if self._used is None:
            nbytes, entries, _ = self._count()
            self._used, self._entries = nbytes, entries

    def usage(self) -> Usage:
        with self._lock:
            self._ensure()
            assert self._used is not None
            return Usage(self._used, self._reserved, self._entries, self._reserved_entries)

    @contextlib.contextmanager
    def changing(self) -> Iterator[None]:
        """Around an operation that changes the disk before it tells the ledger (``rm``,
        ``mv``, ``rmdir``): a recount that overlaps it is not kept, or it would count the
        change and the operation's own adjustment would count it again."""
        with self._lock:
            self._changing += 1
            self._version += 1
        try:
            yield
        finally:
            with self._lock:
                self._changing -= 1
                self._version += 1

    def recount(self) -> bool:
        """Count again from the storage; returns whether the count was taken."""
        with self._lock:
            version = self._version
            busy = bool(self._reserved or self._reserved_entries or self._changing)
        if busy:
            return False
        nbytes, entries, complete = self._count()
        with self._lock:
            if self._version != version or self._reserved or self._reserved_entries:
                return False
            if self._changing:
                return False
            if complete or self._used is None:
                self._used, self._entries = nbytes, entries
            else:  # an unreadable part must not hide bytes: never lower on such a count
                self._used = max(self._used, nbytes)
                self._entries = max(self._entries, entries)
            return True

    def reserve(self, nbytes: int, entries: int, limits: Limits) -> LocalReservation:
        """Hold room for an operation, or refuse with how much is left.

        Raises:
            QuotaExceededError: bytes or entries would pass ``limits``.
        """
        with self._lock:
            self._ensure()
            self._check(nbytes, entries, limits)
            self._reserved += nbytes
            self._reserved_entries += entries
            self._version += 1
        return LocalReservation(self, nbytes, entries, limits)

    def _check(self, nbytes: int, entries: int, limits: Limits) -> None:
        assert self._used is not None
        usage = Usage(self._used, self._reserved, self._entries, self._reserved_entries)
        check_room(usage, nbytes, entries, limits)

    def adjust(self, nbytes: int, entries: int) -> None:
        """Record bytes and entries the daemon added (+) or removed (-)."""
        with self._lock:
            self._version += 1
            if self._used is not None:
                self._used = max(0, self._used + nbytes)
                self._entries = max(0, self._entries + entries)

    def _settle(self, held: int, held_entries: int, nbytes: int, entries: int) -> None:
        with self._lock:
            self._reserved -= held
            self._reserved_entries -= held_entries
            self._version += 1
            if self._used is not None:
                self._used = max(0, self._used + nbytes)
                self._entries = max(0, self._entries + entries)


class LocalReservation:
    """Room held by one operation, owned by one thread; ``close`` settles it once."""

    def __init__(self, ledger: LocalLedger, nbytes: int, entries: int, limits: Limits) -> None:
        self.ledger = ledger
        self.nbytes = nbytes
        self.entries = entries
        self.limits = limits
        self._open = True

    def grow(self, nbytes: int) -> None:
        """Hold ``nbytes`` more without a limit check: bytes this operation just freed."""
        with self.ledger._lock:
            self.ledger._reserved += nbytes
        self.nbytes += nbytes

    def take_entries(self, n: int) -> None:
        """Hold ``n`` more entries (checked against the limit; negative gives back)."""
        with self.ledger._lock:
            if n > 0:
                self.ledger._check(0, n, self.limits)
            self.ledger._reserved_entries += n
            self.ledger._version += 1
        self.entries += n

    def close(self, nbytes: int, entries: int) -> None:
        """Release what was held and count what the operation really added."""
        if self._open:
            self._open = False
            self.ledger._settle(self.nbytes, self.entries, nbytes, entries)

    def __enter__(self) -> LocalReservation:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close(0, 0)


class LocalLedgers:
    """Every user's ledger in this process, made at first use."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ledgers: dict[str, LocalLedger] = {}

    def ledger(self, user: str, count: Counter) -> LocalLedger:
        with self._lock:
            ledger = self._ledgers.get(user)
            if ledger is None:
                ledger = self._ledgers[user] = LocalLedger(count)
            return ledger

    def existing(self, user: str) -> LocalLedger | None:
        """The user's ledger if one was made (a sweep must not start a count)."""
        with self._lock:
            return self._ledgers.get(user)

    def recount_all(self) -> None:
        """Count every known user again (on reload), one after the other."""
        with self._lock:
            ledgers = list(self._ledgers.items())
        for user, ledger in ledgers:
            if not ledger.recount():
                logger.info("RECOUNT user=%s skipped: uploads are running", user)


class LocalClaim:
    """One upload's hold on its target.  ``touch`` on every received chunk."""

    def __init__(self, claims: LocalClaims, key: str, interrupt: Callable[[], None]) -> None:
        self.claims = claims
        self.key = key
        self.interrupt = interrupt
        self.last = time.monotonic()

    def touch(self) -> None:
        self.last = time.monotonic()

    def release(self) -> None:
        self.claims._release(self)

    def __enter__(self) -> LocalClaim:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class LocalClaims:
    """One upload per target in this process.

    A newer upload of a target takes over from one that has received nothing for
    ``takeover_after`` seconds (a client reconnecting after a network cut, whose old
    connection the daemon has not noticed yet): the old holder is interrupted and its
    partial handed over.  A target still receiving bytes is refused with a conflict.
    """

    def __init__(self, takeover_after: float = 0.0, wait_s: float = 10.0) -> None:
        self.takeover_after = takeover_after
        self.wait_s = wait_s
        self._lock = threading.Lock()
        self._freed = threading.Condition(self._lock)
        self._held: dict[str, LocalClaim] = {}

    def claim(self, key: str, interrupt: Callable[[], None]) -> LocalClaim:
        """Hold ``key``, taking it over from a stalled holder.

        Raises:
            ConflictError: the target is being uploaded by another session.
        """
        with self._freed:
            holder = self._held.get(key)
            if holder is not None:
                if time.monotonic() - holder.last < self.takeover_after:
                    raise ConflictError("being uploaded by another session; try again later")
                logger.info("TAKEOVER: a new upload replaces a stalled one")
                holder.interrupt()
                if not self._freed.wait_for(lambda: key not in self._held, self.wait_s):
                    raise ConflictError("another upload to this path is in progress")
            claim = self._held[key] = LocalClaim(self, key, interrupt)
            return claim

    def held(self, key: str) -> bool:
        """Whether an upload of ``key`` is running (a sweep never removes its partial)."""
        with self._lock:
            return key in self._held

    def _release(self, claim: LocalClaim) -> None:
        with self._freed:
            if self._held.get(claim.key) is claim:
                del self._held[claim.key]
                self._freed.notify_all()
