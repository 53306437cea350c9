"""The database going away under a running daemon (``state: backend: postgresql``), seen
from the wire: both listeners of one in-process daemon (local disk, the tests' real
PostgreSQL), the database stopped and started by the test (docs/scale-out.md, "Failure
modes").  ``tests/pg/test_pg_outage.py`` covers the state objects themselves; here it is
what clients see, that the daemon survives and recovers, and that no quota drifts.

The first call to find the database gone waits the state's deadline (``state:
timeout_s``, 2 s here); the calls after it fail at once while the beat probes, so a
test's calls during an outage still run side by side where they could meet that first
wait.
"""

from __future__ import annotations

import ftplib
import hashlib
import io
import socket
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from ftpd.errors import UnavailableError
from ftpd.framed.protocol import READY_FOR_DATA, Data, End, Request
from ftpd.state.base import Limits, Usage
from tests.conftest import PASSWORDS
from tests.ftp.conftest import FTPRunning, ftp_ca, ftp_factory  # noqa: F401 - fixtures
from tests.pg.conftest import Nodes, PgServer
from tests.pure.test_ledger import Counter
from tests.support import call, read_frame, wait_until

STATE_TIMEOUT_S = 2.0  # ``state: timeout_s`` of these daemons (the default is 5)
TIMEOUT_S = 20.0  # a socket's
DEADLINE_S = STATE_TIMEOUT_S + 3.0  # the state's deadline and slack for a loaded machine


@pytest.fixture
def db(pg_server: PgServer, dsn: str) -> Iterator[PgServer]:
    """The session's server, started again if the test left it stopped."""
    yield pg_server
    if not (pg_server.data / "postmaster.pid").exists():
        pg_server.start()


@pytest.fixture
def shared(ftp_factory: Callable[..., FTPRunning], dsn: str) -> Iterator[Callable[..., FTPRunning]]:  # noqa: F811
    """``make(**settings)``: a daemon (framed and FTP) whose state is in PostgreSQL; its
    pool is closed at the end (the FTP fixture does not know about it)."""
    made: list[FTPRunning] = []

    def make(**settings: Any) -> FTPRunning:
        state = {"backend": "postgresql", "dsn": dsn, "timeout_s": STATE_TIMEOUT_S}
        running = ftp_factory(state=state, **settings)
        made.append(running)
        return running

    yield make
    for running in made:
        running.services.close()


def stor_started(
    srv: FTPRunning, name: str, first: bytes
) -> tuple[ftplib.FTP, socket.socket, Path]:
    """A STOR of ``name`` whose ``first`` bytes the daemon has written to its partial:
    the control connection, the data connection (still open) and the partials' folder."""
    ftp = srv.connect(timeout=TIMEOUT_S)
    ftp.voidcmd("TYPE I")
    data = ftp.transfercmd(f"STOR {name}")
    data.sendall(first)
    partial = srv.home() / ".ftpd" / "partial"
    wait_until(lambda: sum(p.stat().st_size for p in partial.iterdir()) >= len(first))
    return ftp, data, partial


def ledger_usage(srv: FTPRunning, user: str = "alice") -> Usage:
    tree = srv.services.accounts.context(user).tree
    return srv.services.ledgers.ledger(user, tree.usage).usage()


def rescan(srv: FTPRunning, user: str = "alice") -> tuple[int, int]:
    nbytes, entries, complete = srv.services.accounts.context(user).tree.usage()
    assert complete
    return nbytes, entries


def settled(srv: FTPRunning, user: str = "alice") -> Usage:
    """The ledger once the daemon's beat wrote its backlog (nothing reserved, nothing
    waiting), polled with a deadline."""
    shared = srv.services.shared

    def done() -> bool:
        try:
            usage = ledger_usage(srv, user)
        except Exception:  # noqa: BLE001 - still coming back
            return False
        return len(shared.db.backlog) == 0 and not usage.reserved and not usage.reserved_entries

    wait_until(done, timeout=30)
    return ledger_usage(srv, user)


def framed_login(srv: FTPRunning) -> dict[str, Any]:
    with socket.create_connection(("127.0.0.1", srv.framed.server_address[1]), TIMEOUT_S) as s:
        read_frame(s)
        return call(s, "login", user="alice", password=PASSWORDS["alice"])


def ftp_login(srv: FTPRunning) -> str:
    client = ftplib.FTP(timeout=TIMEOUT_S)
    client.connect("127.0.0.1", srv.port)
    try:
        return client.login("alice", PASSWORDS["alice"])
    except ftplib.Error as exc:
        return str(exc)
    finally:
        client.close()


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    started = time.monotonic()
    return fn(), time.monotonic() - started


def test_pg_down_logins_and_uploads_get_421_then_the_daemon_recovers(
    shared: Callable[..., FTPRunning], db: PgServer
) -> None:
    srv = shared()
    ftp = srv.connect(timeout=TIMEOUT_S)
    ftp.storbinary("STOR before.bin", io.BytesIO(b"x" * 1000))
    framed = srv.framed_client()
    db.stop()
    try:
        with ThreadPoolExecutor(3) as pool:
            ftp_new = pool.submit(timed, lambda: ftp_login(srv))
            framed_new = pool.submit(timed, lambda: framed_login(srv))

            def stor() -> str:
                try:
                    return ftp.storbinary("STOR during.bin", io.BytesIO(b"y" * 1000))
                except ftplib.Error as exc:
                    return str(exc)

            upload = pool.submit(timed, stor)
            (ftp_reply, t1), (frame, t2), (stor_reply, t3) = (
                ftp_new.result(),
                framed_new.result(),
                upload.result(),
            )
        assert ftp_reply.startswith("421") and "try again later" in ftp_reply, ftp_reply
        assert (frame["ok"], frame["code"]) == (False, 421), frame
        assert stor_reply[:3] in ("421", "451"), stor_reply
        assert max(t1, t2, t3) < DEADLINE_S, (t1, t2, t3)
        # A logged-in session that needs no database goes on.
        assert [e["name"] for e in framed.listdir()] == ["before.bin"]
    finally:
        db.start()
    wait_until(lambda: ftp_login(srv).startswith("230"), timeout=30)
    assert framed_login(srv)["ok"]
    again = srv.connect(timeout=TIMEOUT_S)
    again.storbinary("STOR after.bin", io.BytesIO(b"z" * 500))
    again.quit()
    framed.close()
    assert not (srv.home() / "during.bin").exists()
    usage = settled(srv)
    assert (usage.used, usage.entries) == rescan(srv)


def test_pg_down_mid_put_the_put_finishes_and_the_ledger_catches_up(
    shared: Callable[..., FTPRunning], db: PgServer
) -> None:
    """A framed put that holds its reservation and claim when the database stops gets
    its answer; what it added is written when the database is back, and the claim is
    let go (the path takes another put)."""
    srv = shared()
    conn = srv.framed_client()
    payload = b"p" * 300_000
    conn.send(Request("put", {"path": "mid.bin", "size": len(payload)}))
    assert conn.read_response().code == READY_FOR_DATA
    conn.send(Data(len(payload), 0))
    conn.sock.sendall(payload[:100_000])
    db.stop()
    try:
        conn.sock.sendall(payload[100_000:])
        conn.send(End(hashlib.md5(payload).hexdigest()))
        answer = conn.read_response()
        assert answer.ok and answer.code == 200, answer
        assert (srv.home() / "mid.bin").read_bytes() == payload
    finally:
        db.start()
    usage = settled(srv)
    assert (usage.used, usage.entries) == rescan(srv) == (len(payload), 1)
    again = srv.framed_client()
    assert again.call("put", path="mid.bin", size=1).code == READY_FOR_DATA
    again.close()
    conn.close()


def test_pg_down_mid_stor_keeps_the_partial_and_resumes_after(
    shared: Callable[..., FTPRunning], db: PgServer
) -> None:
    """An FTP STOR (no declared size: room reserved in 1 MiB steps as bytes arrive) that
    needs its next step while the database is away: a clear error, the bytes it had are
    kept, and the same client resumes once the database answers; no quota drift."""
    srv = shared()
    first, rest = b"a" * 512 * 1024, b"b" * 1024 * 1024
    ftp, data, partial = stor_started(srv, "big.bin", first)
    db.stop()
    try:
        try:
            data.sendall(rest)  # the next step needs the database
        except OSError:
            pass
        data.close()
        try:
            reply = ftp.voidresp()
        except ftplib.Error as exc:
            reply = str(exc)
        assert reply[:3] in ("421", "426", "451"), reply
        assert not (srv.home() / "big.bin").exists()
    finally:
        db.start()
        ftp.close()
    kept = sum(p.stat().st_size for p in partial.iterdir())
    assert kept >= len(first)
    wait_until(lambda: ftp_login(srv).startswith("230"), timeout=30)
    resume = srv.connect(timeout=TIMEOUT_S)
    resume.voidcmd("TYPE I")
    held = int(resume.sendcmd("SIZE big.bin").split()[1])
    assert held == kept
    whole = first + rest
    resume.storbinary("STOR big.bin", io.BytesIO(whole[held:]), rest=held)
    resume.quit()
    assert (srv.home() / "big.bin").read_bytes() == whole
    usage = settled(srv)
    assert (usage.used, usage.entries) == rescan(srv) == (len(whole), 1)


def test_pg_down_mid_stor_the_error_comes_within_the_deadline(
    shared: Callable[..., FTPRunning], db: PgServer
) -> None:
    """A long STOR (several 1 MiB steps held) cut by an outage: its client must hear the
    error within the state's deadline, not once per step it held."""
    srv = shared()
    sent = b"c" * 3 * 1024 * 1024
    ftp, data, _ = stor_started(srv, "long.bin", sent)
    db.stop()
    try:
        assert ftp.sock is not None
        ftp.sock.settimeout(DEADLINE_S)
        started = time.monotonic()
        try:
            data.sendall(b"d" * 1024 * 1024)  # the next step needs the database
        except OSError:
            pass
        try:
            reply = ftp.voidresp()
        except (ftplib.Error, OSError) as exc:
            reply = str(exc)
        took = time.monotonic() - started
        assert reply[:3] in ("421", "426", "451") and took < DEADLINE_S, (reply, took)
    finally:
        data.close()
        ftp.close()
        db.start()


def test_pg_unreachable_at_start_the_daemon_serves_421_then_recovers(
    shared: Callable[..., FTPRunning], db: PgServer
) -> None:
    db.stop()
    try:
        srv = shared()  # starts: the pool opens without waiting
        (reply, took), (frame, _) = (
            timed(lambda: ftp_login(srv)),
            timed(lambda: framed_login(srv)),
        )
        assert reply.startswith("421"), reply
        assert took < DEADLINE_S
        assert frame["code"] == 421, frame
    finally:
        db.start()
    wait_until(lambda: ftp_login(srv).startswith("230"), timeout=30)
    assert framed_login(srv)["ok"]


# --- a lost commit answer: what the backlog writes again must not count twice --------


def _lose_commit_answers(monkeypatch: pytest.MonkeyPatch) -> Callable[[], None]:
    """Commits reach the database, their answers are lost (the database went away right
    after it committed).  Returns the undo."""
    import psycopg

    commit = psycopg.Connection.commit

    def lost_answer(self: psycopg.Connection[object]) -> None:
        commit(self)
        raise psycopg.OperationalError("server closed the connection unexpectedly")

    monkeypatch.setattr(psycopg.Connection, "commit", lost_answer)
    return lambda: monkeypatch.setattr(psycopg.Connection, "commit", commit)


def test_pg_settle_whose_answer_was_lost_counts_once(
    nodes: Nodes, monkeypatch: pytest.MonkeyPatch
) -> None:
    a = nodes(clock=None, timeout_s=1.0)
    ledger = a.ledgers.ledger("alice", Counter(0, 0))
    upload = ledger.reserve(100, 1, Limits(10_000, 10))
    undo = _lose_commit_answers(monkeypatch)
    upload.close(100, 1)  # committed; the node does not know it
    undo()
    a.flush()
    assert ledger.usage() == Usage(100, 0, 1, 0)


def test_pg_adjust_whose_answer_was_lost_counts_once(
    nodes: Nodes, monkeypatch: pytest.MonkeyPatch
) -> None:
    a = nodes(clock=None, timeout_s=1.0)
    ledger = a.ledgers.ledger("alice", Counter(1000, 5))
    ledger.usage()
    undo = _lose_commit_answers(monkeypatch)
    ledger.adjust(-300, -1)  # an rm: committed; the node does not know it
    undo()
    a.flush()
    assert ledger.usage() == Usage(700, 0, 4, 0)


def test_pg_backlog_whose_flush_answer_was_lost_counts_once(
    nodes: Nodes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Adjusts summed in the backlog during an outage, then a flush whose commit reached
    the database but whose answer was lost: written again, they count once."""
    a = nodes(clock=None, timeout_s=1.0)
    ledger = a.ledgers.ledger("alice", Counter(1000, 5))
    ledger.usage()
    a.db._down_since = a.db._failed_at = time.monotonic()  # known down: no attempt made
    ledger.adjust(-100, -1)
    ledger.adjust(-200, -1)  # summed with the first
    assert len(a.db.backlog) == 1
    undo = _lose_commit_answers(monkeypatch)
    with pytest.raises(UnavailableError):
        a.flush()  # committed; the node does not know it
    undo()
    a.flush()  # written again under the same key
    assert len(a.db.backlog) == 0
    assert ledger.usage() == Usage(700, 0, 3, 0)
