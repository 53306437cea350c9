"""The state of unfinished multipart uploads in PostgreSQL: what a resume on another
node needs, by key.

The storage backend owns the JSON's shape; the claim on the key says who may write it.
This module must never interpret the state it keeps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ftpd.state.pg.db import NOW

if TYPE_CHECKING:
    from ftpd.state.pg.db import Database


@dataclass(frozen=True)
class UploadRecord:
    """One unfinished upload's state, as the storage backend wrote it."""

    key: str
    user: str
    state: dict[str, Any]
    updated: float


class PgUploads:
    """What a resume on another node needs of an unfinished multipart upload, by key.

    The storage backend owns the JSON's shape; the claim on the key says who may write
    it.  Thread-safe.
    """

    def __init__(self, db: Database) -> None:
        self._db = db

    def put(self, key: str, user: str, state: dict[str, Any]) -> None:
        from psycopg.types.json import Jsonb

        params = {"key": key, "user": user, "state": Jsonb(state), "now": self._db.now()}
        self._db.run(
            lambda cur: cur.execute(
                f"INSERT INTO ftpd_upload VALUES (%(key)s, %(user)s, %(state)s, {NOW})"
                " ON CONFLICT (key) DO UPDATE SET user_name = excluded.user_name,"
                " state = excluded.state, updated = excluded.updated",
                params,
            )
        )

    def get(self, key: str) -> dict[str, Any] | None:
        row = self._db.run(
            lambda cur: cur.execute(
                "SELECT state FROM ftpd_upload WHERE key = %s", [key]
            ).fetchone()
        )
        return None if row is None else dict(row[0])

    def delete(self, key: str) -> bool:
        """Forget ``key``; returns whether it was there."""
        return self._db.run(
            lambda cur: (
                cur.execute("DELETE FROM ftpd_upload WHERE key = %s RETURNING 1", [key]).fetchone()
                is not None
            )
        )

    def list_user(self, user: str) -> list[UploadRecord]:
        """One user's unfinished uploads, by key."""
        return self._select(" WHERE user_name = %s", [user])

    def list_all(self) -> list[UploadRecord]:
        """Everyone's unfinished uploads, by key (``storage gc`` finds the old ones)."""
        return self._select("", [])

    def _select(self, condition: str, params: list[str]) -> list[UploadRecord]:
        sql = f"SELECT key, user_name, state, updated FROM ftpd_upload{condition} ORDER BY key"
        rows = self._db.run(lambda cur: cur.execute(sql, params).fetchall())
        return [UploadRecord(str(k), str(u), dict(s), float(t)) for k, u, s, t in rows]
