"""The shared state's tables, created and migrated by versioned SQL (``ftpd state init``).

``ftpd_schema_version`` records each migration applied; ``init_schema`` applies the
missing ones in one transaction under an advisory lock, so running it twice, or from two
nodes at once, changes nothing the second time.  Times are seconds since the epoch on
the clock every node agrees on (``db.NOW``).

This module must never edit a migration once released: a change is a new one, appended.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ftpd.errors import UnavailableError
from ftpd.state.pg.db import connect_timeout, first_line, ms, where

if TYPE_CHECKING:
    import psycopg

_INIT_LOCK = 0x66747064  # "ftpd": serialises concurrent inits

#: Version N is MIGRATIONS[N - 1].
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE ftpd_node (
        node text PRIMARY KEY,
        expires_at double precision NOT NULL
    );
    CREATE TABLE ftpd_ledger (
        user_name text PRIMARY KEY,
        used bigint NOT NULL,
        entries bigint NOT NULL,
        reserved bigint NOT NULL DEFAULT 0,
        reserved_entries bigint NOT NULL DEFAULT 0,
        version bigint NOT NULL DEFAULT 0
    );
    CREATE TABLE ftpd_reservation (
        id text PRIMARY KEY,
        user_name text NOT NULL,
        node text NOT NULL,
        nbytes bigint NOT NULL,
        entries bigint NOT NULL
    );
    CREATE INDEX ftpd_reservation_node ON ftpd_reservation (node);
    CREATE TABLE ftpd_claim (
        key text PRIMARY KEY,
        node text NOT NULL,
        token text NOT NULL,
        last_touch double precision NOT NULL
    );
    CREATE INDEX ftpd_claim_node ON ftpd_claim (node);
    CREATE TABLE ftpd_upload (
        key text PRIMARY KEY,
        user_name text NOT NULL,
        state jsonb NOT NULL,
        updated double precision NOT NULL
    );
    CREATE INDEX ftpd_upload_user ON ftpd_upload (user_name);
    CREATE TABLE ftpd_login_pair (
        user_name text NOT NULL,
        address text NOT NULL,
        attempts integer NOT NULL,
        last double precision NOT NULL,
        until double precision NOT NULL,
        pending integer NOT NULL DEFAULT 0,
        PRIMARY KEY (user_name, address)
    );
    CREATE TABLE ftpd_login_address (
        address text PRIMARY KEY,
        attempts integer NOT NULL,
        last double precision NOT NULL,
        until double precision NOT NULL,
        pending integer NOT NULL DEFAULT 0
    );
    """,
    # 2: the keys of deferrable writes already applied (a settle or an adjust written
    # again after its commit's answer was lost counts once: ``ftpd.state.pg.db.FIRST``).
    """
    CREATE TABLE ftpd_applied (
        key text PRIMARY KEY,
        at timestamptz NOT NULL DEFAULT now()
    );
    CREATE INDEX ftpd_applied_at ON ftpd_applied (at);
    """,
)
#: Every table the migrations make (tests empty them between cases).
TABLES = (
    "ftpd_node",
    "ftpd_ledger",
    "ftpd_reservation",
    "ftpd_claim",
    "ftpd_upload",
    "ftpd_login_pair",
    "ftpd_login_address",
    "ftpd_applied",
)
_VERSION_TABLE = """
    CREATE TABLE IF NOT EXISTS ftpd_schema_version (
        version integer PRIMARY KEY,
        applied_at timestamptz NOT NULL DEFAULT now()
    )"""


def init_schema(dsn: str, timeout_s: float = 10.0) -> tuple[int, int]:
    """Create or migrate the schema to the newest version this code knows.

    Returns:
        The version before and after.

    Raises:
        UnavailableError: the database cannot be reached, or is newer than this code.
    """
    import psycopg

    try:
        with psycopg.connect(dsn, connect_timeout=connect_timeout(timeout_s)) as conn:
            conn.execute("SELECT set_config('lock_timeout', %s, false)", [ms(timeout_s)])
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", [_INIT_LOCK])
                conn.execute(_VERSION_TABLE)
                before = _version(conn)
                if before > len(MIGRATIONS):
                    raise UnavailableError(
                        f"the database's schema is at version {before}, newer than this "
                        f"ftpd knows ({len(MIGRATIONS)}): upgrade ftpd"
                    )
                for version in range(before + 1, len(MIGRATIONS) + 1):
                    conn.execute(MIGRATIONS[version - 1])  # several statements: no parameters
                    conn.execute("INSERT INTO ftpd_schema_version VALUES (%s)", [version])
    except psycopg.Error as exc:
        raise UnavailableError(f"PostgreSQL at {where(dsn)}: {first_line(exc)}") from None
    return before, len(MIGRATIONS)


def schema_version(dsn: str, timeout_s: float = 10.0) -> int:
    """The version the database is at (0: never initialised).

    Raises:
        UnavailableError: the database cannot be reached.
    """
    import psycopg

    try:
        with psycopg.connect(dsn, connect_timeout=connect_timeout(timeout_s)) as conn:
            found = conn.execute("SELECT to_regclass('ftpd_schema_version')").fetchone()
            return _version(conn) if found and found[0] else 0
    except psycopg.Error as exc:
        raise UnavailableError(f"PostgreSQL at {where(dsn)}: {first_line(exc)}") from None


def _version(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("SELECT coalesce(max(version), 0) FROM ftpd_schema_version").fetchone()
    return int(row[0]) if row else 0
