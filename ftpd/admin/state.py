"""``ftpd state init``: create or migrate the shared state's schema in PostgreSQL.

The DSN comes from ``--dsn`` or from the ``state:`` section of ftpd.yaml
(``backend: postgresql``, ``dsn: ...``).  Running it again, or from several nodes at
once, changes nothing once the schema is current (``state.pg.schema``).  This module
must never print a DSN's password, and never import psycopg unless a command runs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ftpd import yamldoc
from ftpd.errors import ConfigError, UnavailableError


def add_parser(sub: argparse._SubParsersAction, default_config: Path) -> None:
    state = sub.add_parser("state", help="the shared state of several daemons (PostgreSQL)")
    state.add_argument(
        "--config", type=Path, default=default_config, help="ftpd.yaml (default: %(default)s)"
    )
    verbs = state.add_subparsers(metavar="ACTION", required=True)
    # Also after the action, as `ftpd user list --config X` takes it.
    after = argparse.ArgumentParser(add_help=False)
    after.add_argument("--config", type=Path, default=argparse.SUPPRESS, help="ftpd.yaml")
    after.add_argument("--dsn", help="PostgreSQL DSN (default: state.dsn in the config)")

    init = verbs.add_parser(
        "init", parents=[after], help="create or migrate the schema (safe to run again)"
    )
    init.set_defaults(func=init_command)


def configured_dsn(config: Path) -> str:
    """``state.dsn`` of ftpd.yaml, with ``state.backend: postgresql``.

    Raises:
        ConfigError: no such section, another backend, or no DSN (file and line named).
    """
    doc = yamldoc.load(Path(config).absolute())
    data = doc.data if isinstance(doc.data, dict) else {}
    section = data.get("state")
    if not isinstance(section, dict):
        raise ConfigError([doc.problem("no `state:` section (backend: postgresql, dsn: ...)")])
    if section.get("backend") != "postgresql":
        raise ConfigError([doc.problem("state init needs `backend: postgresql`", "state")])
    dsn = section.get("dsn")
    if not isinstance(dsn, str) or not dsn.strip():
        raise ConfigError([doc.problem("a PostgreSQL DSN is needed", "state", "dsn")])
    return dsn


def init_command(args: argparse.Namespace) -> int:
    """Bring the schema to the newest version; prints what was done."""
    from ftpd.state.pg.db import where
    from ftpd.state.pg.schema import init_schema

    dsn = args.dsn or configured_dsn(args.config)
    try:
        before, after = init_schema(dsn)
    except UnavailableError as exc:
        print(f"ftpd: {exc.message}", file=sys.stderr)
        return 1
    if before == after:
        print(f"the shared state at {where(dsn)} is current (schema version {after})")
    else:
        print(f"the shared state at {where(dsn)} is now at schema version {after} (was {before})")
    return 0
