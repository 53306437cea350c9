"""The login brake in PostgreSQL, so a lock holds on every node.

The rules and the interface are ``accounts.throttle.LoginThrottle``'s: attempts counted
when they start (``begin``), per (name, address) pair and per address; the attempt that
reaches a limit locks behind it; a success gives its attempt back and clears its pair
(``succeeded``), a failure says so (``failed``); an attempt held up only by attempts still
being checked waits for them (up to ``wait_s``) instead of being refused.  Each attempt is
counted by an upsert on the pair's row and then the address's, in one transaction under
their row locks, so parallel attempts on several nodes get no more checks than the same
attempts one after another, and a refusal counts nothing.  The clock is the database's
(or an injected one, the same on every node).

A waiting attempt is woken at once by an answer on its own node and looks again every
``_POLL_S`` for answers on the others; it never waits inside a transaction.

This module must never decide whether a password is right; it only counts.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ftpd.errors import TooManyAttemptsError
from ftpd.state.pg.db import NOW

if TYPE_CHECKING:
    from ftpd.state.pg.db import Cursor, Database

_NAME_KEY_CHARS = 100  # as accounts.throttle: longer names share one key
_MAX_DELAY_S = 10.0
_MAX_DOUBLINGS = 64
_POLL_S = 0.05  # a waiting attempt's look at answers given on other nodes


@dataclass(frozen=True)
class Unlocked:
    """What ``unlock_user`` did (the shape of ``accounts.throttle.Unlocked``)."""

    unlocked: tuple[str, ...]
    cleared: int
    addresses_locked: tuple[str, ...]


class _Refused(Exception):
    """A count was refused: its savepoint is rolled back."""


class _Locked(Exception):
    """Refused: locked until ``until``; ``in_flight``: only by attempts still checked."""

    def __init__(self, until: float, now: float, in_flight: bool) -> None:
        self.wait = max(int(until - now) + 1, 1)
        self.in_flight = in_flight

    def error(self) -> TooManyAttemptsError:
        return TooManyAttemptsError(
            f"too many failed logins; try again in {self.wait} s", retry_after=self.wait
        )


def _count_sql(table: str, keys: str, values: str) -> str:
    """Count one attempt (and one in flight) on a key unless it is locked; an expired
    count starts over, and the attempt that reaches the limit locks behind it."""
    now = "excluded.last"
    expired = f"({now} >= t.until AND (t.until > 0 OR {now} - t.last > %(lockout)s))"
    attempts = f"(CASE WHEN {expired} THEN 1 ELSE t.attempts + 1 END)"
    return f"""
        INSERT INTO {table} AS t ({keys}, attempts, last, until, pending)
        VALUES ({values}, 1, {NOW},
                CASE WHEN 1 >= %(limit)s THEN {NOW} + %(lockout)s ELSE 0 END, 1)
        ON CONFLICT ({keys}) DO UPDATE SET
            attempts = {attempts},
            last = {now},
            until = CASE WHEN {attempts} >= %(limit)s THEN {now} + %(lockout)s ELSE 0 END,
            pending = CASE WHEN {expired} THEN 1 ELSE t.pending + 1 END
        WHERE NOT t.until > {now}
        RETURNING attempts"""


_COUNT_PAIR = _count_sql("ftpd_login_pair", "user_name, address", "%(user)s, %(ip)s")
_COUNT_ADDRESS = _count_sql("ftpd_login_address", "address", "%(ip)s")
# The locks in the way: (until, pending) of the pair and the address while locked.
_LOCKS = f"""
    SELECT until, pending, {NOW} FROM ftpd_login_pair
    WHERE user_name = %(user)s AND address = %(ip)s AND until > {NOW}
    UNION ALL
    SELECT until, pending, {NOW} FROM ftpd_login_address
    WHERE address = %(ip)s AND until > {NOW}"""
_FAILED = (
    "UPDATE ftpd_login_pair SET pending = pending - 1"
    " WHERE user_name = %(user)s AND address = %(ip)s AND pending > 0",
    "UPDATE ftpd_login_address SET pending = pending - 1 WHERE address = %(ip)s AND pending > 0",
)


class PgThrottle:
    """``accounts.throttle.LoginThrottle`` with its counts in the database, so a lock
    holds on every node.  Same rules, same interface; the clock is the database's (or
    the injected one, seconds since the epoch, the same on every node).  Shared by every
    session thread; the node's beat calls ``prune``."""

    def __init__(
        self,
        db: Database,
        max_failures: int,
        lockout_s: float,
        delay_s: float,
        clock: Callable[[], float] | None = None,
        *,
        max_failures_per_ip: int = 20,
        wait_s: float = 0.0,
    ) -> None:
        self._db = db
        self.max_failures = max_failures
        self.max_failures_per_ip = max_failures_per_ip
        self.lockout_s = lockout_s
        self.delay_s = delay_s
        #: How long an attempt waits when the only thing in its way is attempts still
        #: being checked (colleagues logging in at once); 0: refuse at once.
        self.wait_s = wait_s
        self._clock = clock
        self._answered = threading.Condition()  # an attempt on this node was answered

    def _params(self, user: str = "", ip: str = "") -> dict[str, Any]:
        now = self._clock() if self._clock is not None else self._db.now()
        return {"user": user[:_NAME_KEY_CHARS], "ip": ip, "now": now, "lockout": self.lockout_s}

    def begin(self, user: str, ip: str) -> int:
        """Count a login attempt before its password is checked, or refuse it.

        Returns:
            The attempt's number on its pair (what ``delay`` grows with).

        Raises:
            TooManyAttemptsError: the pair or the address is locked (``retry_after`` s).
            UnavailableError: the database is away (no attempt without the brake).
        """
        deadline = time.monotonic() + self.wait_s
        while True:
            try:
                return self._db.run(lambda cur: self._count(cur, self._params(user, ip)))
            except _Locked as locked:
                # Locked only by attempts still being checked: they may be colleagues
                # with the right password (a success lifts the lock), so wait for them
                # rather than refuse; a lock of known failures refuses at once.
                left = deadline - time.monotonic()
                if left <= 0 or not locked.in_flight:
                    raise locked.error() from None
                with self._answered:
                    self._answered.wait(min(left, _POLL_S))

    def _count(self, cur: Cursor, params: dict[str, Any]) -> int:
        try:
            with cur.connection.transaction():  # a savepoint: a refusal undoes both counts
                row = cur.execute(_COUNT_PAIR, {**params, "limit": self.max_failures}).fetchone()
                limit = self.max_failures_per_ip
                if (
                    row is None
                    or not cur.execute(_COUNT_ADDRESS, {**params, "limit": limit}).fetchone()
                ):
                    raise _Refused()
                return int(row[0])
        except _Refused:
            _refuse(cur, params, counted=True)  # the locks as they were before this attempt
            raise

    def failed(self, user: str, ip: str) -> None:
        """An attempt ``begin`` counted turned out wrong: it stays counted, and attempts
        waiting behind it learn that its lock is now one of known failures."""
        params = self._params(user, ip)

        def work(cur: Cursor) -> None:
            for sql in _FAILED:
                cur.execute(sql, params)

        try:
            self._db.run(work)
        finally:
            self._wake()

    def check(self, user: str, ip: str) -> None:
        """Refuse as ``begin`` would, counting nothing.

        Raises:
            TooManyAttemptsError: the pair or the address is locked (``retry_after`` s).
        """
        params = self._params(user, ip)
        try:
            self._db.run(lambda cur: _refuse(cur, params))
        except _Locked as locked:
            raise locked.error() from None

    def delay(self, attempt: int) -> float:
        """Seconds a failed ``attempt`` waits before its answer; doubles, capped."""
        doublings = min(max(attempt - 1, 0), _MAX_DOUBLINGS)
        return min(self.delay_s * 2.0**doublings, _MAX_DELAY_S)

    def succeeded(self, user: str, ip: str) -> None:
        """A good login: its pair starts over (still counting the attempts of it in
        flight), and the address gets its attempt back (it keeps its failures)."""
        params = {**self._params(user, ip), "limit": self.max_failures_per_ip}

        def work(cur: Cursor) -> None:
            pair = "WHERE user_name = %(user)s AND address = %(ip)s"
            cur.execute(f"DELETE FROM ftpd_login_pair {pair} AND pending <= 1", params)
            cur.execute(
                "UPDATE ftpd_login_pair SET attempts = 0, last = 0, until = 0,"
                f" pending = pending - 1 {pair}",
                params,
            )
            cur.execute(
                "UPDATE ftpd_login_address SET attempts = greatest(0, attempts - 1),"
                " pending = greatest(0, pending - 1),"
                " until = CASE WHEN attempts - 1 < %(limit)s THEN 0 ELSE until END"
                " WHERE address = %(ip)s",
                params,
            )

        try:
            self._db.run(work)
        finally:
            self._wake()

    def _wake(self) -> None:
        with self._answered:
            self._answered.notify_all()

    def unlock_user(self, user: str) -> Unlocked:
        """Lift the locks of ``user`` from every address, and forget its failures there."""
        sql = f"""
            WITH gone AS (
                DELETE FROM ftpd_login_pair WHERE user_name = %(user)s RETURNING address, until
            )
            SELECT g.address, g.until > {NOW}, coalesce(a.until > {NOW}, false)
            FROM gone g LEFT JOIN ftpd_login_address a USING (address) ORDER BY g.address"""
        params = self._params(user)
        rows = self._db.run(lambda cur: cur.execute(sql, params).fetchall())
        unlocked = tuple(str(ip) for ip, locked, _ in rows if locked)
        return Unlocked(unlocked, len(rows), tuple(str(ip) for ip, _, held in rows if held))

    def clear(self) -> int:
        """Lift every lock and forget every count, on every node; returns the locks lifted."""
        sql = f"""
            WITH a AS (DELETE FROM ftpd_login_pair RETURNING until),
                 b AS (DELETE FROM ftpd_login_address RETURNING until)
            SELECT (SELECT count(*) FROM a WHERE until > {NOW})
                 + (SELECT count(*) FROM b WHERE until > {NOW})"""
        params = self._params()
        row = self._db.run(lambda cur: cur.execute(sql, params).fetchone())
        return int(row[0]) if row else 0

    def prune(self) -> None:
        """Forget expired counts (the node's beat): a lock served, or a quiet lockout."""
        params = self._params()

        def work(cur: Cursor) -> None:
            for table in ("ftpd_login_pair", "ftpd_login_address"):
                cur.execute(
                    f"DELETE FROM {table} WHERE {NOW} >= until"
                    f" AND (until > 0 OR {NOW} - last > %(lockout)s)",
                    params,
                )

        self._db.run(work)


def _refuse(cur: Cursor, params: dict[str, Any], counted: bool = False) -> None:
    """Raise ``_Locked`` while the pair or the address is locked (``counted``: a count
    was refused, so it is, whatever the clock says now)."""
    rows = cur.execute(_LOCKS, params).fetchall()
    if rows or counted:
        now = float(rows[0][2]) if rows else 0.0
        until = max((float(row[0]) for row in rows), default=now)
        # No lock left to see: an answer lifted it since the count; worth another look.
        raise _Locked(until, now, in_flight=all(row[1] for row in rows))
