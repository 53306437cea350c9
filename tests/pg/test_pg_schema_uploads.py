"""The schema (``ftpd state init``: from an empty database, idempotent, concurrent, and
a database without it) and the unfinished uploads' state (a round trip across nodes)."""

from __future__ import annotations

import argparse
import logging
import secrets
import threading
from pathlib import Path

import pytest

from ftpd.admin import state as admin_state
from ftpd.errors import ConfigError, UnavailableError
from ftpd.state.pg.schema import MIGRATIONS, TABLES
from ftpd.state.postgresql import init_schema, schema_version
from tests.pg.conftest import Nodes, PgServer


@pytest.fixture
def empty_dsn(pg_server: PgServer) -> str:
    """A new database with nothing in it."""
    return pg_server.create_database(f"ftpd_empty_{secrets.token_hex(4)}")


def _tables(dsn: str) -> set[str]:
    import psycopg

    with psycopg.connect(dsn, connect_timeout=10) as conn:
        rows = conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
        ).fetchall()
    return {str(row[0]) for row in rows}


# --- schema ------------------------------------------------------------------------------------


def test_pg_schema_init_from_an_empty_database(empty_dsn: str) -> None:
    assert schema_version(empty_dsn) == 0
    assert init_schema(empty_dsn) == (0, len(MIGRATIONS))
    assert schema_version(empty_dsn) == len(MIGRATIONS)
    assert _tables(empty_dsn) == {*TABLES, "ftpd_schema_version"}


def test_pg_schema_init_is_idempotent(empty_dsn: str) -> None:
    init_schema(empty_dsn)
    assert init_schema(empty_dsn) == (len(MIGRATIONS), len(MIGRATIONS))
    assert init_schema(empty_dsn) == (len(MIGRATIONS), len(MIGRATIONS))


def test_pg_schema_init_from_several_nodes_at_once(empty_dsn: str) -> None:
    results: list[tuple[int, int]] = []
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def init() -> None:
        start.wait(timeout=30)
        try:
            results.append(init_schema(empty_dsn))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=init) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    n = len(MIGRATIONS)
    assert sorted(results) == [(0, n)] + [(n, n)] * 3


def test_pg_schema_newer_than_the_code_is_refused(empty_dsn: str) -> None:
    import psycopg

    init_schema(empty_dsn)
    with psycopg.connect(empty_dsn, connect_timeout=10) as conn:
        conn.execute("INSERT INTO ftpd_schema_version VALUES (%s)", [len(MIGRATIONS) + 1])
    with pytest.raises(UnavailableError, match="newer than this ftpd"):
        init_schema(empty_dsn)


def test_pg_state_without_a_schema_says_to_run_init(
    empty_dsn: str, nodes: Nodes, caplog: pytest.LogCaptureFixture
) -> None:
    node = nodes(empty_dsn, timeout_s=2)
    caplog.set_level(logging.WARNING)
    with pytest.raises(UnavailableError) as info:
        node.ledgers.ledger("alice", lambda: (0, 0, True)).usage()
    assert info.value.code == 421
    assert "try again later" in info.value.message
    assert "ftpd state init" in caplog.text


def test_pg_init_unreachable_database_is_a_clear_error(pg_server: PgServer) -> None:
    dead = f"postgresql://postgres@127.0.0.1:{_closed_port()}/ftpd"
    with pytest.raises(UnavailableError) as info:
        init_schema(dead, timeout_s=2)
    assert "PostgreSQL at 127.0.0.1:" in info.value.message


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # closed again when this returns: nobody listens


# --- ftpd state init ---------------------------------------------------------------------------


def _parse(argv: list[str], default_config: Path) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="ftpd")
    admin_state.add_parser(parser.add_subparsers(metavar="COMMAND"), default_config)
    return parser.parse_args(argv)


def test_pg_state_init_command_reads_the_config(
    empty_dsn: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "ftpd.yaml"
    config.write_text(f"state:\n  backend: postgresql\n  dsn: {empty_dsn}\n")
    args = _parse(["state", "init", "--config", str(config)], tmp_path / "nowhere.yaml")
    assert args.func(args) == 0
    assert f"now at schema version {len(MIGRATIONS)} (was 0)" in capsys.readouterr().out
    args = _parse(["state", "--config", str(config), "init"], tmp_path / "nowhere.yaml")
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert f"is current (schema version {len(MIGRATIONS)})" in out and "postgres@" not in out
    assert schema_version(empty_dsn) == len(MIGRATIONS)


def test_pg_state_init_command_dsn_option(
    empty_dsn: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = _parse(["state", "init", "--dsn", empty_dsn], tmp_path / "ftpd.yaml")
    assert args.func(args) == 0
    assert schema_version(empty_dsn) == len(MIGRATIONS)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("port: 2121\n", "no `state:` section"),
        ("state:\n  backend: local\n", "backend: postgresql"),
        ("state:\n  backend: postgresql\n", "DSN is needed"),
    ],
)
def test_pg_state_init_command_config_problems(tmp_path: Path, text: str, problem: str) -> None:
    config = tmp_path / "ftpd.yaml"
    config.write_text(text)
    args = _parse(["state", "init", "--config", str(config)], config)
    with pytest.raises(ConfigError, match=problem):
        args.func(args)


def test_pg_state_init_command_unreachable(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dead = f"postgresql://postgres:secret@127.0.0.1:{_closed_port()}/ftpd"
    args = _parse(["state", "init", "--dsn", dead], tmp_path / "ftpd.yaml")
    assert args.func(args) == 1
    err = capsys.readouterr().err
    assert "PostgreSQL at 127.0.0.1:" in err and "secret" not in err


# --- unfinished uploads ------------------------------------------------------------------------


def test_pg_uploads_round_trip_across_nodes(nodes: Nodes) -> None:
    a, b = nodes(clock=None), nodes(clock=None)
    state = {"upload_id": "abc", "parts": [{"n": 1, "etag": "x", "size": 5 << 20}], "md5": None}
    a.uploads.put("alice/big.iso", "alice", state)
    a.uploads.put("alice/b", "alice", {"upload_id": "b"})
    a.uploads.put("bob/x", "bob", {"upload_id": "x"})
    assert b.uploads.get("alice/big.iso") == state
    assert b.uploads.get("alice/none") is None
    assert [r.key for r in b.uploads.list_user("alice")] == ["alice/b", "alice/big.iso"]
    assert [r.key for r in b.uploads.list_all()] == ["alice/b", "alice/big.iso", "bob/x"]
    state["parts"].append({"n": 2, "etag": "y", "size": 5 << 20})
    b.uploads.put("alice/big.iso", "alice", state)  # the upload resumed on b
    record = a.uploads.list_user("alice")[1]
    assert record.state == state and record.user == "alice" and record.updated > 0
    assert a.uploads.delete("alice/big.iso") is True
    assert a.uploads.delete("alice/big.iso") is False
    assert b.uploads.get("alice/big.iso") is None
