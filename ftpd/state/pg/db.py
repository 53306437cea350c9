"""One node's connection to the shared state: pool, deadline, lease, and backlog.

Every statement the PostgreSQL state runs goes through ``Database.run``: one transaction
on a pooled connection, within ``timeout_s`` all told (the pool's wait, the server's
statement and lock timeouts, and a watchdog that cuts the socket of a transaction that
outlives the deadline, since a frozen server answers no cancel request either).  Past it
the caller gets an ``UnavailableError`` (421/451 on the wire) and the cause is logged once
per outage.  A transaction that did not commit (a connection the server closed while
idle in the pool, a deadlock) is simply run again while time is left.

Each row a node holds (a reservation, a claim) names the node, whose lease row
(``ftpd_node``) it renews; what a node held when it died is released by any other once
its lease has run out.  Changes that already happened on the storage when the database
went away wait in a backlog and are written when it answers again.

This module must never hold a transaction open while it waits for anything but the
database, and never put a DSN's password in a message.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from ftpd.errors import UnavailableError

if TYPE_CHECKING:
    import psycopg

    Cursor = psycopg.Cursor[Any]

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: What a client is told; the cause goes to the log (it names the database's address).
UNAVAILABLE = "the server's shared state is unavailable; try again later"
#: After a failed attempt, how long every ``run`` fails at once (the outage is known).
RETRY_S = 2.0
#: This node's lease ran out while it was cut off, and another node released its rows.
LOST = "this server lost its hold on the shared state; try again"
#: The time every node agrees on: the database's, or an injected clock (tests).
NOW = "coalesce(%(now)s::float8, extract(epoch FROM statement_timestamp())::float8)"
#: A node is alive while its lease has not run out (``c`` is the row naming the node).
ALIVE = f"EXISTS (SELECT 1 FROM ftpd_node n WHERE n.node = c.node AND n.expires_at > {NOW})"
#: A write that may be sent twice (its commit's answer lost, then written again from the
#: backlog) names a key, recorded in ``ftpd_applied`` in the same statement: it takes
#: effect only where this CTE made a row, so it counts once however often it is sent.
FIRST = (
    "first AS (INSERT INTO ftpd_applied (key) VALUES (%(key)s)"
    " ON CONFLICT (key) DO NOTHING RETURNING 1)"
)
#: How long an applied key is kept: a backlog is written again within an outage, and lost
#: with its node; a day is far past both.  (One row per settle and adjust: indexed by age,
#: so the beat's delete of the old ones reads only those.)
APPLIED_KEEP = "1 day"
ADJUST = f"""
    WITH {FIRST}
    UPDATE ftpd_ledger SET used = greatest(0, used + %(nbytes)s),
        entries = greatest(0, entries + %(entries)s), version = version + 1
    WHERE user_name = %(user)s AND EXISTS (SELECT 1 FROM first)"""


def write_key(kind: str) -> str:
    """A new key for a write that may be sent twice (``FIRST``)."""
    return f"{kind}:{secrets.token_hex(12)}"


_RELEASE_DEAD = f"""
    WITH gone AS (
        DELETE FROM ftpd_reservation c WHERE NOT {ALIVE}
        RETURNING user_name, nbytes, entries
    ), freed AS (
        SELECT user_name, sum(nbytes)::bigint AS nbytes, sum(entries)::bigint AS entries
        FROM gone GROUP BY user_name
    )
    UPDATE ftpd_ledger l
    SET reserved = l.reserved - freed.nbytes,
        reserved_entries = l.reserved_entries - freed.entries, version = l.version + 1
    FROM freed WHERE l.user_name = freed.user_name
    RETURNING l.user_name"""


def where(dsn: str) -> str:
    """host:port/dbname of a DSN, for messages (never its password)."""
    from psycopg.conninfo import conninfo_to_dict

    try:
        info = conninfo_to_dict(dsn)
    except Exception:  # a malformed DSN is reported by the connect itself
        return "(unparsable dsn)"
    return f"{info.get('host') or 'localhost'}:{info.get('port') or 5432}/{info.get('dbname')}"


def connect_timeout(timeout_s: float) -> int:
    return max(2, math.ceil(timeout_s))  # libpq takes whole seconds, 2 at least


def ms(seconds: float) -> str:
    return str(max(1, int(seconds * 1000)))


def first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


class _Again(Exception):
    """The transaction did not commit and may simply be run again."""


class _CommitFailed(Exception):
    """The commit itself failed (``error``): whether it took effect is unknown."""

    def __init__(self, error: BaseException) -> None:
        self.error = error


class CommitUnknownError(UnavailableError):
    """The database went away during the commit: the change may or may not be there."""


class Database:
    """One node's pool and lease.  Built by ``PgState``; every session thread and the
    background beat call ``run`` at once (the pool hands each its own connection).

    Args:
        timeout_s: the longest any ``run`` takes, connection included.
        node: this node's name in the tables.
        lease_s: how long a silent node's rows are kept for it.
        clock: seconds since the epoch shared by all nodes (tests); None: the database's.
    """

    def __init__(
        self,
        dsn: str,
        node: str,
        pool_min: int,
        pool_max: int,
        timeout_s: float,
        lease_s: float,
        clock: Callable[[], float] | None,
    ) -> None:
        import psycopg
        from psycopg_pool import ConnectionPool

        self._psycopg = psycopg
        self.dsn = dsn
        self.node = node
        self.timeout_s = timeout_s
        self.lease_s = lease_s
        self.pool_max = pool_max
        self._clock = clock
        #: Local intervals (a lease due, a stalled holder): the injected clock or monotonic.
        self.tick: Callable[[], float] = clock or time.monotonic
        self._lease_at: float | None = None
        self._released_at = -math.inf
        self._down_since: float | None = None
        #: When the last attempt failed: for ``retry_s`` after it, ``run`` fails at once.
        self._failed_at = -math.inf
        self.retry_s = min(RETRY_S, timeout_s)
        self.backlog = Backlog()
        self._pool = ConnectionPool(
            dsn,
            kwargs=self._connect_params(),
            min_size=pool_min,
            max_size=pool_max,
            timeout=timeout_s,
            # Give up a backoff series soon (the pool doubles its wait between tries):
            # the next call starts a fresh one, so a database back after a long outage
            # is used within seconds, not at the end of a minutes-long backoff.
            reconnect_timeout=max(2 * timeout_s, 4.0),
            name="ftpd-state",
            open=False,
        )
        self._pool.open(wait=False)  # a database down at start only fails calls

    def _connect_params(self) -> dict[str, Any]:
        from psycopg.conninfo import conninfo_to_dict

        info = conninfo_to_dict(self.dsn)
        # The server ends what outlives the deadline, and a node hung inside a
        # transaction does not hold its row locks for long.
        ours = (
            f"-c statement_timeout={ms(self.timeout_s)} -c lock_timeout={ms(self.timeout_s)}"
            f" -c idle_in_transaction_session_timeout={ms(4 * self.timeout_s)}"
        )
        params: dict[str, Any] = {
            "connect_timeout": connect_timeout(self.timeout_s),
            "options": f"{info.get('options') or ''} {ours}".strip(),
            "tcp_user_timeout": ms(self.timeout_s),
        }
        if not info.get("application_name"):
            params["application_name"] = f"ftpd {self.node}"[:63]
        return params

    def now(self) -> float | None:
        """The ``%(now)s`` parameter: the injected clock's time, or None (the database's)."""
        return self._clock() if self._clock is not None else None

    # --- running statements ---------------------------------------------------------------

    def run(self, work: Callable[[Cursor], T], *, lease: bool = False, probe: bool = False) -> T:
        """Run ``work`` in one transaction, within ``timeout_s`` all told.

        ``lease``: the work writes rows naming this node, so the lease is renewed in the
        same transaction when it is due.  Whatever ``work`` raises rolls it back.
        ``probe``: try even while the database is known to be down (the beat's lease and
        backlog find out when it is back); other calls then fail at once.

        Raises:
            UnavailableError: no connection, no answer or no schema within the deadline.
        """
        if (
            not probe
            and self._down_since is not None
            and time.monotonic() - self._failed_at < self.retry_s
        ):
            # Down a moment ago: fail now rather than wait out the deadline again, so that
            # an upload's settles and releases (each deferred to the backlog) and the
            # client's error come within one deadline, not one per statement.  One call
            # per ``retry_s`` (the beat's, or a session's) finds out whether it is back.
            raise UnavailableError(UNAVAILABLE)
        deadline = time.monotonic() + self.timeout_s
        for _ in range(self.pool_max + 2):  # each stale pooled connection fails at once
            renew = lease and self._lease_due()
            try:
                result = self._attempt(work, renew, deadline)
            except _Again:
                continue
            if renew:
                self._lease_at = self.tick()
            if self._down_since is not None:
                logger.info("STATE back after %.1f s", time.monotonic() - self._down_since)
                self._down_since = None
            return result
        raise self._down("connections keep failing")

    def _attempt(self, work: Callable[[Cursor], T], renew: bool, deadline: float) -> T:
        from psycopg_pool import PoolClosed, PoolTimeout

        errors = self._psycopg.errors
        try:
            conn = self._pool.getconn(timeout=max(deadline - time.monotonic(), 0.001))
        except PoolTimeout:
            raise self._down(f"no connection within {self.timeout_s:g} s") from None
        except PoolClosed:
            raise UnavailableError("the server is shutting down") from None
        watchdog = _Watchdog(conn, deadline - time.monotonic())
        try:
            return self._transact(conn, work, renew)
        except errors.UndefinedTable as exc:
            raise self._down(f"{first_line(exc)}: run `ftpd state init`") from None
        except _CommitFailed as failed:
            self._down(self._cause(failed.error, watchdog))
            raise CommitUnknownError(UNAVAILABLE) from None
        except self._psycopg.OperationalError as exc:
            retry = (errors.DeadlockDetected, errors.SerializationFailure)
            if not watchdog.fired and (conn.broken or isinstance(exc, retry)):
                raise _Again() from None  # not committed: safe to run again
            raise self._down(self._cause(exc, watchdog)) from None
        finally:
            watchdog.cancel()
            self._pool.putconn(conn)  # dropped if broken

    def _transact(
        self, conn: psycopg.Connection[Any], work: Callable[[Cursor], T], renew: bool
    ) -> T:
        """``work`` and the commit; whatever ``work`` raises rolls the transaction back."""
        try:
            with conn.cursor() as cur:
                if renew:
                    self._renew(cur)
                result = work(cur)
        except BaseException:
            if not conn.broken:
                with contextlib.suppress(self._psycopg.Error):
                    conn.rollback()  # ours to end (the pool warns about one left open)
            raise
        try:
            conn.commit()
        except self._psycopg.OperationalError as exc:
            raise _CommitFailed(exc) from None
        return result

    def _cause(self, exc: BaseException, watchdog: _Watchdog) -> str:
        return f"no answer within {self.timeout_s:g} s" if watchdog.fired else first_line(exc)

    def _down(self, cause: str) -> UnavailableError:
        """The client's error; the cause is logged once per outage."""
        self._failed_at = time.monotonic()
        if self._down_since is None:
            self._down_since = time.monotonic()
            logger.warning("STATE unavailable (PostgreSQL at %s): %s", where(self.dsn), cause)
        else:
            logger.debug("STATE still unavailable: %s", cause)
        return UnavailableError(UNAVAILABLE)

    # --- the lease and what dead nodes held ---------------------------------------------

    def _lease_due(self) -> bool:
        return self._lease_at is None or self.tick() - self._lease_at > self.lease_s / 2

    def _renew(self, cur: Cursor) -> None:
        cur.execute(
            f"INSERT INTO ftpd_node VALUES (%(node)s, {NOW} + %(lease)s)"
            " ON CONFLICT (node) DO UPDATE SET expires_at = excluded.expires_at",
            {"node": self.node, "lease": self.lease_s, "now": self.now()},
        )

    def renew(self) -> None:
        """Renew this node's lease now (a probe: it tries even while the database is down)."""
        self.run(self._renew, probe=True)
        self._lease_at = self.tick()

    def release_expired(self, unless_within_s: float = 0.0) -> set[str]:
        """Release what nodes whose lease ran out held: their reservations give their room
        back, their claims are dropped.  Any node may call it; ``unless_within_s``: not
        again so soon (a client hammering its full quota must not hammer the database).
        Returns the users whose ledgers got room back."""
        if unless_within_s and self.tick() - self._released_at < unless_within_s:
            return set()
        self._released_at = self.tick()

        def work(cur: Cursor) -> set[str]:
            params = {"now": self.now()}
            cur.execute(_RELEASE_DEAD, params)
            users = {str(row[0]) for row in cur.fetchall()}
            cur.execute(f"DELETE FROM ftpd_claim c WHERE NOT {ALIVE}", params)
            cur.execute(f"DELETE FROM ftpd_applied WHERE at < now() - interval '{APPLIED_KEEP}'")
            cur.execute(f"DELETE FROM ftpd_node WHERE expires_at <= {NOW}", params)
            return users

        users = self.run(work)
        if users:
            logger.info("STATE released the reservations of dead nodes: users=%d", len(users))
        return users

    def flush(self) -> None:
        """Write what waited for the database (settles, adjusts, releases)."""
        self.backlog.flush(self)

    def leave(self) -> None:
        """End this node's lease, so what it still holds is released at once."""
        params = {"node": self.node, "now": self.now()}
        self.run(
            lambda cur: cur.execute(
                f"UPDATE ftpd_node SET expires_at = {NOW} WHERE node = %(node)s", params
            )
        )
        self.release_expired()

    def close(self) -> None:
        self._pool.close(timeout=self.timeout_s)


class _Watchdog:
    """Cuts a connection's socket when its transaction outlives the deadline.

    A statement timeout needs a live server and a cancel request a live postmaster;
    shutting the socket down wakes the waiting thread whatever the server's state.
    """

    def __init__(self, conn: psycopg.Connection[Any], seconds: float) -> None:
        self.fired = False
        self._conn = conn
        self._lock = threading.Lock()
        self._done = False
        self._timer = threading.Timer(max(seconds, 0.001), self._fire)
        self._timer.daemon = True
        self._timer.start()

    def _fire(self) -> None:
        with self._lock:
            if self._done:
                return
            self.fired = True
            try:
                dup = socket.socket(fileno=os.dup(self._conn.fileno()))
            except Exception:  # already closed: nothing is waiting on it
                return
            try:
                dup.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            finally:
                dup.close()

    def cancel(self) -> None:
        with self._lock:
            self._done = True
        self._timer.cancel()


class Backlog:
    """Changes that already happened on the storage while the database was away, written
    in one transaction when it answers again.  Bounded: no reservation or claim can be
    made during an outage, so only those open before it can add a settle or a release,
    and adjusts are summed per user.  Lost if the node dies first (``ftpd quota rescan``
    recounts)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._statements: list[tuple[str, dict[str, Any]]] = []
        self._adjusts: dict[str, list[int]] = {}

    def add(self, sql: str, params: dict[str, Any]) -> None:
        with self._lock:
            self._statements.append((sql, params))
        logger.warning("STATE deferred a change until the database answers")

    def adjust(self, user: str, nbytes: int, entries: int) -> None:
        """An adjust that surely did not reach the database (summed per user)."""
        with self._lock:
            self._add_adjust(user, nbytes, entries)

    def _add_adjust(self, user: str, nbytes: int, entries: int) -> None:
        held = self._adjusts.setdefault(user, [0, 0])
        held[0] += nbytes
        held[1] += entries

    def __len__(self) -> int:
        with self._lock:
            return len(self._statements) + len(self._adjusts)

    def flush(self, db: Database) -> None:
        with self._lock:
            statements, adjusts = self._statements, self._adjusts
            self._statements, self._adjusts = [], {}
        if not statements and not adjusts:
            return

        # The sums get their keys now (``FIRST``): written again after a lost answer,
        # each counts once.
        summed = [
            (ADJUST, {"key": write_key("adjust"), "user": user, "nbytes": n, "entries": e})
            for user, (n, e) in adjusts.items()
        ]

        def work(cur: Cursor) -> None:
            for sql, params in statements + summed:
                cur.execute(sql, params)

        try:
            db.run(work, probe=True)
        except CommitUnknownError:
            with self._lock:  # maybe in: kept with their keys, ahead of newer ones
                self._statements[:0] = statements + summed
            raise
        except BaseException:
            with self._lock:  # surely not in: kept as they were (the sums stay sums)
                self._statements[:0] = statements
                for user, (nbytes, entries) in adjusts.items():
                    self._add_adjust(user, nbytes, entries)
            raise
        logger.info("STATE wrote %d deferred changes", len(statements) + len(summed))
