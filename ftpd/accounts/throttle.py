"""Brute-force braking for logins: a growing delay, then a temporary lock.

Failures are counted per user name and per source address, across connections, so an
attacker gains nothing by reconnecting.  The clock is injectable so tests need no sleeps.
This module must never decide whether a password is right; it only counts failures.
"""

from __future__ import annotations

import threading
import time
from typing import Callable

from ftpd.errors import TooManyAttemptsError

_MAX_KEYS = 100_000
_MAX_DELAY_S = 10.0


class LoginThrottle:
    """Shared by every session thread of one server; all state behind one lock."""

    def __init__(
        self,
        max_failures: int,
        lockout_s: float,
        delay_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_failures = max_failures
        self.lockout_s = lockout_s
        self.delay_s = delay_s
        self._clock = clock
        self._lock = threading.Lock()
        # key -> (consecutive failures, time of the last one, locked until)
        self._state: dict[tuple[str, str], tuple[int, float, float]] = {}

    def _keys(self, user: str, ip: str) -> tuple[tuple[str, str], tuple[str, str]]:
        return ("user", user), ("ip", ip)

    def _fresh(self, key: tuple[str, str], now: float) -> tuple[int, float, float]:
        count, last, until = self._state.get(key, (0, 0.0, 0.0))
        if count and now - last > self.lockout_s and now >= until:
            return 0, 0.0, 0.0  # forgiven after a quiet lockout period
        return count, last, until

    def check(self, user: str, ip: str) -> None:
        """Refuse while the user name or the address is locked.

        Raises:
            TooManyAttemptsError: with ``retry_after`` seconds.
        """
        now = self._clock()
        with self._lock:
            until = max(self._fresh(k, now)[2] for k in self._keys(user, ip))
        if until > now:
            wait = int(until - now) + 1
            raise TooManyAttemptsError(
                f"too many failed logins; try again in {wait} s", retry_after=wait
            )

    def failed(self, user: str, ip: str) -> float:
        """Count a failure; returns the delay (seconds) to wait before answering."""
        now = self._clock()
        worst = 0
        with self._lock:
            if len(self._state) > _MAX_KEYS:
                self._prune(now)
            for key in self._keys(user, ip):
                count, _, until = self._fresh(key, now)
                count += 1
                if count >= self.max_failures:
                    until = now + self.lockout_s
                self._state[key] = (count, now, until)
                worst = max(worst, count)
        return min(self.delay_s * 2 ** (worst - 1), _MAX_DELAY_S)

    def succeeded(self, user: str, ip: str) -> None:
        """A good login clears the user's count (the address keeps its record)."""
        with self._lock:
            self._state.pop(("user", user), None)

    def _prune(self, now: float) -> None:
        """Forget forgiven keys; if a spray of fresh ones still overflows, drop half of
        them, unlocked before locked and oldest first, so live lockouts survive a flood."""
        stale = [k for k, (_, last, until) in self._state.items() if now - last > self.lockout_s and now >= until]
        for key in stale:
            del self._state[key]
        if len(self._state) > _MAX_KEYS:
            by_age = sorted(self._state, key=lambda k: (self._state[k][2] > now, self._state[k][1]))
            for key in by_age[: len(by_age) // 2]:
                del self._state[key]
