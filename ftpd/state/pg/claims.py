"""Upload claims in PostgreSQL: one upload per target across nodes, with leases.

A claim is a row (key, node, token, last touch).  A target whose holder has written no
touch for ``takeover_after`` seconds, or whose node's lease ran out, is taken over: the
new holder's row replaces the old one in one transaction, and the old holder finds out at
its node's next flush of touches and is interrupted.  A holder on the same node is
interrupted and waited for, exactly as ``state.local`` does.  ``touch`` only notes the
time: the node's beat writes the touches of all its claims in one statement at most every
``touch_every_s``, so a fast upload never waits on the database.

This module must never let two live holders keep one key, and never delete a row that
another holder's token now owns.
"""

from __future__ import annotations

import logging
import secrets
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from ftpd.errors import ConflictError, UnavailableError
from ftpd.logs import clean
from ftpd.state.pg.db import ALIVE, NOW, CommitUnknownError

if TYPE_CHECKING:
    from ftpd.state.pg.db import Cursor, Database

logger = logging.getLogger(__name__)

_RELEASE = "DELETE FROM ftpd_claim WHERE key = %(key)s AND token = %(token)s"


class PgClaim:
    """One upload's hold on its target, a row in ``ftpd_claim``.  ``touch`` on every
    received chunk only notes it; the node's beat writes touches at most every
    ``touch_every_s``, so bytes never wait on the database."""

    def __init__(
        self, claims: PgClaims, key: str, token: str, interrupt: Callable[[], None]
    ) -> None:
        self.claims = claims
        self.key = key
        self.token = token
        self.interrupt = interrupt
        self.last = claims._db.tick()
        self.touched = False
        self.released = False

    def touch(self) -> None:
        self.last = self.claims._db.tick()
        self.touched = True

    def release(self) -> None:
        self.claims._release(self)

    def __enter__(self) -> PgClaim:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class PgClaims:
    """One upload per target across nodes.

    A target whose holder has written no touch for ``takeover_after`` seconds, or whose
    node's lease ran out, is taken over: the new holder's row replaces the old one at
    once, and the old holder finds out at its node's next beat (``interrupt``).  A holder
    on this node is interrupted and waited for, as in ``state.local``.  A target still
    receiving bytes is refused with a conflict.
    """

    def __init__(
        self, db: Database, takeover_after: float, touch_every_s: float, wait_s: float
    ) -> None:
        self._db = db
        self.takeover_after = takeover_after
        self.touch_every_s = touch_every_s
        self.wait_s = wait_s
        self._lock = threading.Lock()
        self._freed = threading.Condition(self._lock)
        self._mine: dict[str, PgClaim] = {}

    def claim(self, key: str, interrupt: Callable[[], None]) -> PgClaim:
        """Hold ``key``, taking it over from a stalled or dead holder.

        Raises:
            ConflictError: the target is being uploaded by another session.
            UnavailableError: the database is away.
        """
        for _ in range(3):
            token = secrets.token_hex(8)

            def take(cur: Cursor, token: str = token) -> tuple[str, str]:
                return self._take(cur, key, token)

            try:
                outcome, other = self._db.run(take, lease=True)
            except CommitUnknownError:  # it may hold the row now: let it go when it can
                self._db.backlog.add(_RELEASE, {"key": key, "token": token})
                raise
            if outcome in ("won", "took"):
                claim = PgClaim(self, key, token, interrupt)
                with self._lock:
                    self._mine[key] = claim
                if outcome == "took":
                    logger.info("TAKEOVER: a new upload replaces a stalled one (node %s)", other)
                return claim
            if outcome == "busy":
                raise ConflictError("being uploaded by another session; try again later")
            if outcome == "local":
                self._take_from_local(key, other)
        raise ConflictError("another upload to this path is in progress")

    def _take(self, cur: Cursor, key: str, token: str) -> tuple[str, str]:
        """One transaction: insert, or replace a stalled or dead holder's row."""
        params = {
            "key": key,
            "node": self._db.node,
            "token": token,
            "after": self.takeover_after,
            "now": self._db.now(),
        }
        cur.execute(
            f"SELECT node, token, last_touch <= {NOW} - %(after)s, {ALIVE}"
            " FROM ftpd_claim c WHERE key = %(key)s FOR UPDATE",
            params,
        )
        row = cur.fetchone()
        if row is None:
            cur.execute(
                f"INSERT INTO ftpd_claim VALUES (%(key)s, %(node)s, %(token)s, {NOW})"
                " ON CONFLICT (key) DO NOTHING RETURNING 1",
                params,
            )
            return ("won" if cur.fetchone() else "again"), ""
        node, old_token, stalled, alive = row
        if node == self._db.node:
            with self._lock:
                local = self._mine.get(key)
            if local is not None and local.token == old_token:
                return "local", old_token
        if alive and not stalled:
            return "busy", ""
        cur.execute(
            f"UPDATE ftpd_claim SET node = %(node)s, token = %(token)s, last_touch = {NOW}"
            " WHERE key = %(key)s",
            params,
        )
        return "took", str(node)

    def _take_from_local(self, key: str, token: str) -> None:
        """A holder on this node: ``state.local``'s rule on its own last touch."""
        with self._freed:
            holder = self._mine.get(key)
            if holder is None or holder.token != token:
                return  # gone meanwhile: try again
            if self._db.tick() - holder.last < self.takeover_after:
                raise ConflictError("being uploaded by another session; try again later")
            logger.info("TAKEOVER: a new upload replaces a stalled one")
            holder.interrupt()
            if not self._freed.wait_for(lambda: self._mine.get(key) is not holder, self.wait_s):
                raise ConflictError("another upload to this path is in progress")

    def held(self, key: str) -> bool:
        """Whether an upload of ``key`` runs on a live node (a sweep keeps its partial)."""
        with self._lock:
            if key in self._mine:
                return True
        return self._db.run(
            lambda cur: (
                cur.execute(
                    f"SELECT 1 FROM ftpd_claim c WHERE key = %(key)s AND {ALIVE}",
                    {"key": key, "now": self._db.now()},
                ).fetchone()
                is not None
            )
        )

    def _release(self, claim: PgClaim) -> None:
        if claim.released:
            return
        claim.released = True
        params = {"key": claim.key, "token": claim.token}
        try:
            self._db.run(lambda cur: cur.execute(_RELEASE, params))
        except UnavailableError:
            self._db.backlog.add(_RELEASE, params)
        finally:
            with self._freed:
                if self._mine.get(claim.key) is claim:
                    del self._mine[claim.key]
                    self._freed.notify_all()

    def flush(self) -> None:
        """Write the touches noted since the last flush, in one statement, and interrupt
        the holders on this node whose claim another node took over."""
        with self._lock:
            claims = list(self._mine.values())
        if not claims:
            return
        touched = [c.touched for c in claims]
        for claim in claims:
            claim.touched = False
        params = {
            "keys": [c.key for c in claims],
            "tokens": [c.token for c in claims],
            "touched": touched,
            "now": self._db.now(),
        }
        try:
            rows = self._db.run(
                lambda cur: cur.execute(_FLUSH_TOUCHES, params).fetchall(), lease=True
            )
        except BaseException:
            for claim, was in zip(claims, touched, strict=True):
                claim.touched = claim.touched or was
            raise
        lost = {(str(key), str(token)) for key, token in rows}
        for claim in claims:
            if (claim.key, claim.token) in lost:
                self._lose(claim)

    def _lose(self, claim: PgClaim) -> None:
        with self._freed:
            if claim.released or self._mine.get(claim.key) is not claim:
                return  # its own release deleted the row: nothing was taken
            del self._mine[claim.key]
            self._freed.notify_all()
        claim.released = True  # its row is another holder's now: never delete it
        logger.info("TAKEOVER: another node took this upload over: %s", clean(claim.key))
        claim.interrupt()


_FLUSH_TOUCHES = f"""
    WITH v AS (
        SELECT * FROM unnest(%(keys)s::text[], %(tokens)s::text[], %(touched)s::bool[])
            AS v(key, token, touched)
    ), written AS (
        UPDATE ftpd_claim c SET last_touch = {NOW}
        FROM v WHERE v.touched AND c.key = v.key AND c.token = v.token
        RETURNING c.key
    )
    SELECT v.key, v.token FROM v
    WHERE NOT EXISTS (SELECT 1 FROM ftpd_claim c WHERE c.key = v.key AND c.token = v.token)"""
