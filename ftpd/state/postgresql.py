"""The shared state in PostgreSQL (``state: backend: postgresql``, issue 12).

``PgState`` is one node's handle on state that several daemons share through one
database: the quota ledgers (``ledgers``), the upload claims (``claims``), the state of
unfinished multipart uploads (``uploads``) and the login brake (``throttle(...)``), so that
a limit, a claim or a lock holds on every node at once.  Its parts live in
``state/pg/``: ``db`` (the pool, the deadline on every call, the node's lease, the
backlog), ``schema`` (versioned migrations, ``ftpd state init``), ``ledger``, ``claims``,
``uploads`` and ``throttle``.  A background thread renews the lease, writes the claims'
touches and the backlog, and releases what dead nodes held.

If the database is unreachable every call raises ``UnavailableError`` within
``timeout_s`` (the front ends answer 421/451); what already happened on the storage is
written when it answers again.

This module must never be imported unless the configuration asks for PostgreSQL
(psycopg is imported by the constructors), and never block a session on the background
thread.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable

from ftpd.errors import UnavailableError
from ftpd.state.pg.claims import PgClaim, PgClaims
from ftpd.state.pg.db import Database
from ftpd.state.pg.ledger import PgLedger, PgLedgers, PgReservation
from ftpd.state.pg.schema import init_schema, schema_version
from ftpd.state.pg.throttle import PgThrottle, Unlocked
from ftpd.state.pg.uploads import PgUploads, UploadRecord

logger = logging.getLogger(__name__)

__all__ = [
    "PgClaim",
    "PgClaims",
    "PgLedger",
    "PgLedgers",
    "PgReservation",
    "PgState",
    "PgThrottle",
    "PgUploads",
    "Unlocked",
    "UploadRecord",
    "init_schema",
    "schema_version",
]


class PgState:
    """One node's handle on the shared state.  Built once by the main thread; every
    session thread calls its parts, and one background thread keeps the node's lease.

    Args:
        dsn: libpq connection string or URI (a password belongs in ~/.pgpass or
            PGPASSWORD rather than in ftpd.yaml).
        pool_min, pool_max: connections kept open, and the most opened at once.
        timeout_s: the longest any call waits, connection included.
        node: this node's name in the tables (default: host, pid and a random part, so a
            restarted daemon is a new node whose old rows expire with the old lease).
        lease_s: how long a silent node's reservations and claims are kept for it.
        takeover_after: a claim whose holder is silent this long is taken over.
        touch_every_s: how often the claims' touches are written (and lost claims found).
        wait_s: how long a takeover waits for a holder on this node to let go.
        clock: seconds since the epoch shared by all nodes (tests); None: the database's.
        background: run the beat in a thread (tests call ``beat`` and ``flush`` instead).
    """

    def __init__(
        self,
        dsn: str,
        pool_min: int = 1,
        pool_max: int = 10,
        timeout_s: float = 5.0,
        *,
        node: str | None = None,
        lease_s: float = 60.0,
        takeover_after: float = 15.0,
        touch_every_s: float = 1.0,
        wait_s: float = 10.0,
        clock: Callable[[], float] | None = None,
        background: bool = True,
    ) -> None:
        node = node or f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self.db = Database(dsn, node, pool_min, pool_max, timeout_s, lease_s, clock)
        self.node = node
        self.ledgers = PgLedgers(self.db)
        self.claims = PgClaims(self.db, takeover_after, touch_every_s, wait_s)
        self.uploads = PgUploads(self.db)
        self._throttles: list[PgThrottle] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if background:
            self._thread = threading.Thread(target=self._loop, name="state-beat", daemon=True)
            self._thread.start()

    def throttle(
        self,
        max_failures: int,
        lockout_s: float,
        delay_s: float,
        clock: Callable[[], float] | None = None,
        *,
        max_failures_per_ip: int = 20,
        wait_s: float = 0.0,
    ) -> PgThrottle:
        """The login brake with its counts in the database (``LoginThrottle``'s interface);
        its stale counts are pruned by the beat."""
        brake = PgThrottle(
            self.db,
            max_failures,
            lockout_s,
            delay_s,
            clock,
            max_failures_per_ip=max_failures_per_ip,
            wait_s=wait_s,
        )
        self._throttles.append(brake)
        return brake

    def flush(self) -> None:
        """Write the claims' touches and the backlog now (what the beat does each second)."""
        self.claims.flush()
        self.db.flush()

    def beat(self) -> None:
        """One full beat: lease, touches, backlog, what dead nodes held, stale login counts.

        Raises:
            UnavailableError: the database is away.
        """
        self.db.renew()
        self.flush()
        self.db.release_expired()
        for brake in self._throttles:
            brake.prune()

    def _loop(self) -> None:
        next_beat = 0.0
        while True:
            try:
                if time.monotonic() >= next_beat:
                    self.beat()
                    next_beat = time.monotonic() + self.db.lease_s / 4
                else:
                    self.flush()
            except UnavailableError:
                next_beat = 0.0  # logged once by the database; renew as soon as it answers
            except Exception:  # a bug here must not stop the lease
                logger.exception("STATE beat failed")
            if self._stop.wait(self.claims.touch_every_s):
                return

    def close(self) -> None:
        """Leave: stop the beat, write the backlog, end this node's lease (so what it still
        holds is released at once) and close the pool.  After the sessions have ended."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.db.timeout_s + self.claims.touch_every_s + 1)
        try:
            self.db.flush()
            self.db.leave()
        except UnavailableError:
            lost = len(self.db.backlog)
            if lost:
                logger.error(
                    "STATE %d changes never reached the database; run `ftpd quota rescan`", lost
                )
        self.db.close()

    def __enter__(self) -> PgState:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
