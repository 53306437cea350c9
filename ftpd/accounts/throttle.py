"""Brute-force braking for logins: locks per (user name, address) and per address.

sshd's PerSourcePenalties and fail2ban are the anchors: the brake stops an attacker, not
the colleagues behind the same address, and nobody can lock a named account from afar.
Attempts are counted per (name, address) pair, locked after ``max_failures``, and per
address across every name, locked after ``max_failures_per_ip``.  A lock on a pair never
blocks the same name from another address, nor another name from that address.

An attempt is counted when it *starts* (``begin``, before the password is checked), so a
burst of parallel attempts gets no more checks than the same attempts one after another;
a success gives its attempt back and clears its pair (``succeeded``), a failure says so
(``failed``).  An attempt held up only by attempts still being checked waits for them
(up to ``wait_s``) instead of being refused: colleagues logging in at once all get in.
``unlock_user`` and ``clear`` lift locks without a restart.  The clock is injectable so
tests need no sleeps.  This module must never decide whether a password is right; it
only counts.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from ftpd.errors import TooManyAttemptsError

_MAX_KEYS = 100_000  # per table; a spray of new names or addresses evicts, it never grows
_MAX_DELAY_S = 10.0
_MAX_DOUBLINGS = 64  # 2.0**64 times any configured delay is far past the cap, and finite
# Names are at most 64 characters (accounts.users.MAX_NAME): longer ones are no user's,
# so they share a key past this length rather than each costing up to a 64 KiB header.
_NAME_KEY_CHARS = 100
_Key = TypeVar("_Key")


@dataclass
class _Count:
    """Attempts on one key: failed ones, and ones still being checked."""

    attempts: int = 0
    last: float = 0.0  # when the latest attempt started
    until: float = 0.0  # locked until then; 0.0: not locked
    pending: int = 0  # begun, not yet known to have failed or succeeded


@dataclass(frozen=True)
class Unlocked:
    """What ``unlock_user`` did: the addresses the name was locked from, the pairs it
    forgot, and the addresses among them that stay locked for every name."""

    unlocked: tuple[str, ...]
    cleared: int
    addresses_locked: tuple[str, ...]


class LoginThrottle:
    """Shared by every session thread of every listener; all state behind one lock.

    The control socket's thread calls ``unlock_user``, the main thread ``clear`` on reload.
    """

    def __init__(
        self,
        max_failures: int,
        lockout_s: float,
        delay_s: float,
        clock: Callable[[], float] = time.monotonic,
        *,
        max_failures_per_ip: int = 20,
        wait_s: float = 0.0,
    ) -> None:
        self.max_failures = max_failures
        self.max_failures_per_ip = max_failures_per_ip
        self.lockout_s = lockout_s
        self.delay_s = delay_s
        #: How long an attempt waits when the only thing in its way is attempts still
        #: being checked (colleagues logging in at once); 0: refuse at once.
        self.wait_s = wait_s
        self._clock = clock
        self._lock = threading.Lock()
        self._resolved = threading.Condition(self._lock)
        self._pairs: dict[tuple[str, str], _Count] = {}
        self._addresses: dict[str, _Count] = {}

    def begin(self, user: str, ip: str) -> int:
        """Count a login attempt before its password is checked, or refuse it.

        Returns:
            The attempt's number on its pair (1 for the first since the pair was clear):
            what ``delay`` grows with.

        Raises:
            TooManyAttemptsError: the pair or the address is locked (``retry_after`` s).
        """
        key = (user[:_NAME_KEY_CHARS], ip)
        deadline = time.monotonic() + self.wait_s
        with self._resolved:
            while True:
                now = self._clock()
                pair = self._live(self._pairs, key, now)
                address = self._live(self._addresses, ip, now)
                try:
                    _refuse_while_locked(pair, address, now)
                    break
                except TooManyAttemptsError:
                    # Locked only by attempts still being checked: they may be colleagues
                    # with the right password (a success lifts the lock), so wait for
                    # them rather than refuse; a lock of known failures refuses at once.
                    locks = [c for c in (pair, address) if c is not None and c.until > now]
                    left = deadline - time.monotonic()
                    if left <= 0 or not all(c.pending for c in locks):
                        raise
                    self._resolved.wait(left)
            # Not refused: only now are keys added, so a spray while locked adds none.
            pair = pair or self._add(self._pairs, key, now)
            address = address or self._add(self._addresses, ip, now)
            self._count(pair, self.max_failures, now)
            self._count(address, self.max_failures_per_ip, now)
            pair.pending += 1
            address.pending += 1
            return pair.attempts

    def failed(self, user: str, ip: str) -> None:
        """An attempt ``begin`` counted turned out wrong: it stays counted, and attempts
        waiting behind it learn that its lock is now one of known failures."""
        with self._resolved:
            for count in (self._pairs.get((user[:_NAME_KEY_CHARS], ip)), self._addresses.get(ip)):
                if count is not None and count.pending:
                    count.pending -= 1
            self._resolved.notify_all()

    def check(self, user: str, ip: str) -> None:
        """Refuse as ``begin`` would, counting nothing.

        Raises:
            TooManyAttemptsError: the pair or the address is locked (``retry_after`` s).
        """
        key, now = (user[:_NAME_KEY_CHARS], ip), self._clock()
        with self._lock:
            pair, address = self._live(self._pairs, key, now), self._live(self._addresses, ip, now)
            _refuse_while_locked(pair, address, now)

    def delay(self, attempt: int) -> float:
        """Seconds a failed ``attempt`` (``begin``'s number) waits before its answer.

        Doubles with each attempt up to ``_MAX_DELAY_S``; the exponent is capped first, so
        no count, however large, overflows a float (it did at the 1,025th failure).
        """
        doublings = min(max(attempt - 1, 0), _MAX_DOUBLINGS)
        return min(self.delay_s * 2.0**doublings, _MAX_DELAY_S)

    def succeeded(self, user: str, ip: str) -> None:
        """A good login: its pair starts over, and the address gets its attempt back
        (the address keeps the failures it had)."""
        with self._resolved:
            pair = self._pairs.pop((user[:_NAME_KEY_CHARS], ip), None)
            if pair is not None and pair.pending > 1:
                # Other attempts of this pair are still being checked: they start over
                # on a clean count, still in flight.
                self._pairs[(user[:_NAME_KEY_CHARS], ip)] = _Count(pending=pair.pending - 1)
            address = self._addresses.get(ip)
            if address is not None:
                address.attempts = max(0, address.attempts - 1)
                address.pending = max(0, address.pending - 1)
                if address.attempts < self.max_failures_per_ip:
                    address.until = 0.0  # the lock was this attempt's, counted at its start
            self._resolved.notify_all()

    def unlock_user(self, user: str) -> Unlocked:
        """Lift the locks of ``user`` from every address, and forget its failures there."""
        name, now = user[:_NAME_KEY_CHARS], self._clock()
        with self._lock:
            ips = sorted(ip for key_name, ip in self._pairs if key_name == name)
            counts = {ip: self._pairs.pop((name, ip)) for ip in ips}
            unlocked = tuple(ip for ip in ips if counts[ip].until > now)
            held = tuple(ip for ip in ips if self._addresses.get(ip, _Count()).until > now)
        return Unlocked(unlocked, len(ips), held)

    def clear(self) -> int:
        """Lift every lock and forget every count (a reload); returns the locks lifted."""
        now = self._clock()
        with self._lock:
            counts = [*self._pairs.values(), *self._addresses.values()]
            self._pairs.clear()
            self._addresses.clear()
        return sum(1 for count in counts if count.until > now)

    # --- under the lock ----------------------------------------------------------------

    def _expired(self, count: _Count, now: float) -> bool:
        """A lock served, or (never locked) a quiet ``lockout_s`` since the last attempt."""
        return now >= count.until and (count.until > 0 or now - count.last > self.lockout_s)

    def _live(self, table: dict[_Key, _Count], key: _Key, now: float) -> _Count | None:
        """The key's count, or None if it has none (an expired one is forgotten)."""
        count = table.get(key)
        if count is not None and self._expired(count, now):
            del table[key]
            return None
        return count

    def _add(self, table: dict[_Key, _Count], key: _Key, now: float) -> _Count:
        if len(table) >= _MAX_KEYS:
            self._prune(table, now)
        count = table[key] = _Count()
        return count

    def _count(self, count: _Count, limit: int, now: float) -> None:
        count.attempts += 1
        count.last = now
        if count.attempts >= limit:
            count.until = now + self.lockout_s  # the last allowed attempt locks behind it

    def _prune(self, table: dict[_Key, _Count], now: float) -> None:
        """Forget expired keys; if a spray of fresh ones still fills the table, drop half of
        them, unlocked before locked and oldest first, so live locks survive a flood."""
        for key in [k for k, count in table.items() if self._expired(count, now)]:
            del table[key]
        if len(table) >= _MAX_KEYS:
            by_age = sorted(table, key=lambda k: (table[k].until > now, table[k].last))
            for key in by_age[: len(by_age) // 2]:
                del table[key]


def _refuse_while_locked(pair: _Count | None, address: _Count | None, now: float) -> None:
    until = max(count.until if count else 0.0 for count in (pair, address))
    if until > now:
        wait = int(until - now) + 1
        raise TooManyAttemptsError(
            f"too many failed logins; try again in {wait} s", retry_after=wait
        )
