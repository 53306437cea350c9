"""Quota ledgers in PostgreSQL: used and reserved bytes and entries per user, on every node.

A reservation is one conditional ``UPDATE ... WHERE used + reserved + n <= limit`` that
also inserts the reservation's row (naming this node), so two nodes cannot both see the
same free bytes; settling it is one statement that deletes the row and counts what was
really added, so a hold is given back exactly once, whether by its owner or, after the
owner's node died, by any node's release of expired leases.  The first use of a ledger
counts the home outside any transaction; a recount is kept only if nothing changed
meanwhile and nothing is reserved, and an incomplete count never lowers (``state.local``).

This module must never let a reservation pass a limit, nor hold a transaction open while
it counts a home.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from ftpd.errors import ConflictError, QuotaExceededError, UnavailableError
from ftpd.logs import clean
from ftpd.state.base import Limits, Usage, check_room
from ftpd.state.pg.db import ADJUST, FIRST, LOST, CommitUnknownError, write_key

if TYPE_CHECKING:
    from ftpd.state.pg.db import Cursor, Database

logger = logging.getLogger(__name__)

Counter = Callable[[], tuple[int, int, bool]]

_USAGE = "SELECT used, reserved, entries, reserved_entries FROM ftpd_ledger WHERE user_name = %s"
_CREATE = """
    INSERT INTO ftpd_ledger (user_name, used, entries) VALUES (%(user)s, %(nbytes)s, %(entries)s)
    ON CONFLICT (user_name) DO NOTHING RETURNING 1"""
# The one conditional UPDATE that holds room: under the row's lock, so two nodes cannot
# both see the same free bytes.  A zero amount is not checked (replacing a file).
_RESERVE = """
    WITH held AS (
        UPDATE ftpd_ledger
        SET reserved = reserved + %(nbytes)s, reserved_entries = reserved_entries + %(entries)s,
            version = version + 1
        WHERE user_name = %(user)s
          AND (%(nbytes)s::bigint = 0 OR %(max_bytes)s::bigint IS NULL
               OR used + reserved + %(nbytes)s <= %(max_bytes)s::bigint)
          AND (%(entries)s::bigint = 0 OR %(max_entries)s::bigint IS NULL
               OR entries + reserved_entries + %(entries)s <= %(max_entries)s::bigint)
        RETURNING user_name
    )
    INSERT INTO ftpd_reservation (id, user_name, node, nbytes, entries)
    SELECT %(id)s, user_name, %(node)s, %(nbytes)s, %(entries)s FROM held RETURNING id"""
# Settling in one statement: the row's hold is given back once (a row a dead node's
# release already took gives nothing back), what was really added is counted.
#: Settles a reservation once (its key is ``settle:<id>``): the room it still holds goes
#: back (none if a dead node's release took it), and what the operation added counts.
_SETTLE = f"""
    WITH {FIRST},
    gone AS (
        DELETE FROM ftpd_reservation WHERE id = %(id)s AND EXISTS (SELECT 1 FROM first)
        RETURNING nbytes, entries
    )
    UPDATE ftpd_ledger SET
        reserved = reserved - coalesce((SELECT nbytes FROM gone), 0),
        reserved_entries = reserved_entries - coalesce((SELECT entries FROM gone), 0),
        used = greatest(0, used + %(nbytes)s), entries = greatest(0, entries + %(entries)s),
        version = version + 1
    WHERE user_name = %(user)s AND EXISTS (SELECT 1 FROM first)"""
_GROW = """
    WITH mine AS (
        UPDATE ftpd_reservation SET nbytes = nbytes + %(nbytes)s WHERE id = %(id)s
        RETURNING user_name
    )
    UPDATE ftpd_ledger l SET reserved = l.reserved + %(nbytes)s, version = l.version + 1
    FROM mine WHERE l.user_name = mine.user_name RETURNING 1"""
_TAKE_ENTRIES = """
    UPDATE ftpd_ledger SET reserved_entries = reserved_entries + %(entries)s,
        version = version + 1
    WHERE user_name = %(user)s
      AND (%(entries)s::bigint <= 0 OR %(max_entries)s::bigint IS NULL
           OR entries + reserved_entries + %(entries)s <= %(max_entries)s::bigint)
    RETURNING 1"""
_RECOUNT = """
    UPDATE ftpd_ledger SET
        used = CASE WHEN %(complete)s THEN %(nbytes)s ELSE greatest(used, %(nbytes)s) END,
        entries = CASE WHEN %(complete)s THEN %(entries)s
                       ELSE greatest(entries, %(entries)s) END
    WHERE user_name = %(user)s AND version = %(version)s
      AND reserved = 0 AND reserved_entries = 0
    RETURNING 1"""


def _usage(cur: Cursor, user: str) -> Usage | None:
    cur.execute(_USAGE, [user])
    row = cur.fetchone()
    return None if row is None else Usage(*(int(v) for v in row))


class PgLedger:
    """One user's counts in ``ftpd_ledger``, shared by the user's sessions on every node.

    The first use counts the home (outside any transaction) and inserts the count unless
    another node was first; nothing can be reserved before the row exists.
    """

    def __init__(self, db: Database, user: str, count: Counter | None) -> None:
        self._db = db
        self.user = user
        self.count = count

    def usage(self) -> Usage:
        for _ in range(3):
            usage = self._db.run(lambda cur: _usage(cur, self.user))
            if usage is not None:
                return usage
            self._first_count()
        raise UnavailableError(LOST)  # removed as often as it was made: give up

    def _first_count(self) -> None:
        if self.count is None:  # a ledger found by ``existing`` whose row went away
            raise UnavailableError(LOST)
        nbytes, entries, _ = self.count()
        params = {"user": self.user, "nbytes": nbytes, "entries": entries}
        self._db.run(lambda cur: cur.execute(_CREATE, params))

    def reserve(self, nbytes: int, entries: int, limits: Limits) -> PgReservation:
        """Hold room for an operation, or refuse with how much is left.

        Raises:
            QuotaExceededError: bytes or entries would pass ``limits``.
        """
        # Named here, not by the database: a commit whose answer was lost can still be
        # settled by name (the backlog gives back whatever it may have held).
        rid = secrets.token_hex(12)
        params = {
            "id": rid,
            "user": self.user,
            "node": self._db.node,
            "nbytes": nbytes,
            "entries": entries,
            "max_bytes": limits.nbytes,
            "max_entries": limits.entries,
        }

        def work(cur: Cursor) -> tuple[bool, Usage | None]:
            cur.execute(_RESERVE, params)
            return (True, None) if cur.fetchone() else (False, _usage(cur, self.user))

        swept = False
        for _ in range(5):
            try:
                held, usage = self._db.run(work, lease=True)
            except CommitUnknownError:
                self._db.backlog.add(
                    _SETTLE,
                    {
                        "key": f"settle:{rid}",
                        "id": rid,
                        "user": self.user,
                        "nbytes": 0,
                        "entries": 0,
                    },
                )
                raise
            if held:
                return PgReservation(self, rid, nbytes, entries, limits)
            if usage is None:
                self._first_count()
                continue
            try:
                check_room(usage, nbytes, entries, limits)
            except QuotaExceededError:
                # A dead node's reservations may be what fills it: release them, once.
                if swept or not (usage.reserved or usage.reserved_entries):
                    raise
                swept = True
                if self.user not in self._db.release_expired(unless_within_s=1.0):
                    raise
            # else: room was freed between the two statements; try again
        raise ConflictError("the quota changes too fast; try again")

    def adjust(self, nbytes: int, entries: int) -> None:
        """Record bytes and entries the daemon added (+) or removed (-); kept for later
        when the database is away (the change already happened)."""
        if not nbytes and not entries:
            return
        params = {
            "key": write_key("adjust"),
            "user": self.user,
            "nbytes": nbytes,
            "entries": entries,
        }
        try:
            self._db.run(lambda cur: cur.execute(ADJUST, params))
        except CommitUnknownError:  # it may be in: written again under its key, it counts once
            self._db.backlog.add(ADJUST, params)
        except UnavailableError:  # surely not in: summed with the others
            self._db.backlog.adjust(self.user, nbytes, entries)

    def changing(self) -> contextlib.AbstractContextManager[None]:
        """Around an rm/mv/rmdir.  Each change is one UPDATE here and a recount compares
        versions in the database, so nothing more is needed than a marker."""
        return contextlib.nullcontext()

    def recount(self) -> bool:
        """Count again from the storage; kept only if nothing changed meanwhile and nothing
        is reserved, and an incomplete count never lowers.  Returns whether it was kept."""
        if self.count is None:
            return False

        def read(cur: Cursor) -> tuple[int, Usage] | None:
            cur.execute(
                "SELECT version, used, reserved, entries, reserved_entries FROM ftpd_ledger"
                " WHERE user_name = %s",
                [self.user],
            )
            row = cur.fetchone()
            return None if row is None else (int(row[0]), Usage(*(int(v) for v in row[1:])))

        try:
            seen = self._db.run(read)
            if seen is not None and (seen[1].reserved or seen[1].reserved_entries):
                return False
            nbytes, entries, complete = self.count()
            params = {"user": self.user, "nbytes": nbytes, "entries": entries}
            if seen is None:
                sql = _CREATE
            else:
                sql = _RECOUNT
                params.update(version=seen[0], complete=complete)
            return self._db.run(lambda cur: cur.execute(sql, params).fetchone() is not None)
        except UnavailableError:
            return False


class PgReservation:
    """Room held by one operation, a row in ``ftpd_reservation`` naming this node; owned
    by one session thread.  ``close`` settles it once."""

    def __init__(
        self, ledger: PgLedger, rid: str, nbytes: int, entries: int, limits: Limits
    ) -> None:
        self.ledger = ledger
        self.id = rid
        self.nbytes = nbytes
        self.entries = entries
        self.limits = limits
        self._open = True

    def grow(self, nbytes: int) -> None:
        """Hold ``nbytes`` more without a limit check: bytes this operation just freed.

        Raises:
            UnavailableError: the database is away, or the hold was released.
        """
        params = {"id": self.id, "nbytes": nbytes}
        if not self.ledger._db.run(lambda cur: cur.execute(_GROW, params).fetchone()):
            raise UnavailableError(LOST)
        self.nbytes += nbytes

    def take_entries(self, n: int) -> None:
        """Hold ``n`` more entries (checked against the limit; negative gives back).

        Raises:
            QuotaExceededError: past ``max_files``.
            UnavailableError: the database is away, or the hold was released.
        """
        user, limits = self.ledger.user, self.limits
        params = {"user": user, "entries": n, "max_entries": limits.entries, "id": self.id}

        def work(cur: Cursor) -> None:
            cur.execute("SELECT 1 FROM ftpd_reservation WHERE id = %s FOR UPDATE", [self.id])
            if cur.fetchone() is None:
                raise UnavailableError(LOST)
            for _ in range(3):
                if cur.execute(_TAKE_ENTRIES, params).fetchone():
                    cur.execute(
                        "UPDATE ftpd_reservation SET entries = entries + %(entries)s"
                        " WHERE id = %(id)s",
                        params,
                    )
                    return
                usage = _usage(cur, user)
                if usage is None:
                    raise UnavailableError(LOST)
                check_room(usage, 0, n, limits)
            raise ConflictError("the quota changes too fast; try again")

        self.ledger._db.run(work)
        self.entries += n

    def close(self, nbytes: int, entries: int) -> None:
        """Give back what was held and count what the operation really added; when the
        database is away the settle waits in the backlog (the bytes are on the storage)."""
        if not self._open:
            return
        self._open = False
        params = {
            "key": f"settle:{self.id}",
            "id": self.id,
            "user": self.ledger.user,
            "nbytes": nbytes,
            "entries": entries,
        }
        try:
            self.ledger._db.run(lambda cur: cur.execute(_SETTLE, params))
        except UnavailableError:
            self.ledger._db.backlog.add(_SETTLE, params)

    def __enter__(self) -> PgReservation:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close(0, 0)


class PgLedgers:
    """Every user's ledger as this node sees it; one ``PgLedger`` per user per node."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._lock = threading.Lock()
        self._ledgers: dict[str, PgLedger] = {}

    def ledger(self, user: str, count: Counter) -> PgLedger:
        with self._lock:
            ledger = self._ledgers.get(user)
            if ledger is None:
                ledger = self._ledgers[user] = PgLedger(self._db, user, count)
            elif ledger.count is None:  # made by ``existing``: the first real counter stays
                ledger.count = count
            return ledger

    def existing(self, user: str) -> PgLedger | None:
        """The user's ledger if any node made one (a sweep must not start a count)."""
        with self._lock:
            if user in self._ledgers:
                return self._ledgers[user]
        if self._db.run(lambda cur: _usage(cur, user)) is None:
            return None
        with self._lock:
            return self._ledgers.setdefault(user, PgLedger(self._db, user, None))

    def recount_all(self) -> None:
        """Count every user this node knows again (on reload), one after the other."""
        with self._lock:
            ledgers = list(self._ledgers.items())
        for user, ledger in ledgers:
            if not ledger.recount():
                logger.info("RECOUNT user=%s skipped: uploads are running", clean(user))
