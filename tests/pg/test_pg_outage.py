"""The database going away: calls fail with ``UnavailableError`` within the timeout
(stopped server, frozen server, never started), what already happened on the storage is
written when it comes back, and the nodes recover without a restart of their own.

These tests stop and start the session's server; each one leaves it running."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import TypeVar

import pytest

from ftpd.errors import ConflictError, UnavailableError
from ftpd.state.base import Limits, Usage
from ftpd.state.postgresql import PgState
from tests.pg.conftest import Nodes, PgServer
from tests.pure.test_ledger import Counter

T = TypeVar("T")
TIMEOUT_S = 1.0
SLACK_S = 1.5  # scheduling, the pool's bookkeeping


@pytest.fixture
def server(pg_server: PgServer, dsn: str) -> Iterator[PgServer]:
    """The session's server, started again if the test left it stopped."""
    yield pg_server
    if not (pg_server.data / "postmaster.pid").exists():
        pg_server.start()


def _fails_promptly(call: Callable[[], object]) -> UnavailableError:
    started = time.monotonic()
    with pytest.raises(UnavailableError) as info:
        call()
    elapsed = time.monotonic() - started
    assert elapsed < TIMEOUT_S + SLACK_S, f"took {elapsed:.1f} s"
    assert info.value.code == 421
    return info.value


def _once_it_answers(call: Callable[[], T], within_s: float = 60.0) -> T:
    """Call until the database answers again (each try is bounded by the timeout)."""
    deadline = time.monotonic() + within_s
    while True:
        try:
            return call()
        except UnavailableError:
            if time.monotonic() > deadline:
                raise


def test_pg_stopped_mid_way_fails_promptly_and_loses_nothing(
    nodes: Nodes, server: PgServer
) -> None:
    a = nodes(clock=None, timeout_s=TIMEOUT_S)
    b = nodes(clock=None, timeout_s=TIMEOUT_S)
    ledger = a.ledgers.ledger("alice", Counter(1000, 10))
    upload = ledger.reserve(500, 1, Limits(10_000, 100))  # an upload in progress
    claim = a.claims.claim("alice/f", lambda: None)
    brake = a.throttle(5, 60.0, 0.0)
    a.uploads.put("alice/f", "alice", {"parts": 1})

    server.stop()
    assert "try again later" in _fails_promptly(ledger.usage).message
    _fails_promptly(lambda: ledger.reserve(1, 1, Limits()))
    _fails_promptly(lambda: a.claims.claim("alice/g", lambda: None))
    _fails_promptly(lambda: brake.begin("alice", "10.0.0.1"))  # no login without the brake
    _fails_promptly(lambda: a.uploads.get("alice/f"))
    _fails_promptly(lambda: b.claims.held("alice/f"))
    # What already happened on the storage does not fail: it waits for the database.
    claim.touch()
    upload.close(400, 1)  # the upload finished: 400 bytes and a new file
    claim.release()
    ledger.adjust(-100, -1)  # a file removed meanwhile
    assert ledger.recount() is False

    server.start()
    _once_it_answers(a.flush)
    assert b.ledgers.ledger("alice", Counter()).usage() == Usage(1300, 0, 10, 0)
    assert not b.claims.held("alice/f")
    b.claims.claim("alice/f", lambda: None)
    assert b.uploads.get("alice/f") == {"parts": 1}
    assert brake.begin("alice", "10.0.0.1") == 1


def test_pg_frozen_server_never_hangs_a_call(nodes: Nodes, server: PgServer) -> None:
    """A server that keeps its sockets open and answers nothing (SIGSTOP): the watchdog
    cuts the call at the deadline."""
    a = nodes(clock=None, timeout_s=TIMEOUT_S)
    ledger = a.ledgers.ledger("alice", Counter(10, 1))
    ledger.usage()  # a pooled connection, ready
    with server.frozen():
        _fails_promptly(ledger.usage)
        _fails_promptly(lambda: a.claims.claim("alice/f", lambda: None))
    assert _once_it_answers(ledger.usage) == Usage(10, 0, 1, 0)


def test_pg_database_down_at_start(nodes: Nodes, server: PgServer) -> None:
    """A node started while the database is down starts, refuses, then recovers."""
    server.stop()
    a = nodes(clock=None, timeout_s=TIMEOUT_S, background=True, touch_every_s=0.1)
    ledger = a.ledgers.ledger("alice", Counter(7, 1))
    _fails_promptly(ledger.usage)
    server.start()
    assert _once_it_answers(ledger.usage) == Usage(7, 0, 1, 0)
    with a.claims.claim("alice/f", lambda: None), pytest.raises(ConflictError):
        a.claims.claim("alice/f", lambda: None)


def test_pg_restart_with_a_running_beat(nodes: Nodes, server: PgServer) -> None:
    """The background beat rides out an outage and the node's lease is renewed after it."""
    a: PgState = nodes(clock=None, timeout_s=TIMEOUT_S, background=True, touch_every_s=0.05)
    b: PgState = nodes(clock=None, timeout_s=TIMEOUT_S, takeover_after=3600)
    claim = a.claims.claim("alice/f", lambda: None)
    server.stop()
    claim.touch()
    server.start()
    _once_it_answers(b.db.renew)
    with pytest.raises(ConflictError):  # a is alive and holds it
        _once_it_answers(lambda: b.claims.claim("alice/f", lambda: None))
    claim.release()
    _once_it_answers(lambda: b.claims.claim("alice/f", lambda: None))


def test_pg_restart_between_calls_is_not_seen(nodes: Nodes, server: PgServer) -> None:
    """Pooled connections the restart closed fail at once and are replaced: the next
    call simply works."""
    a = nodes(clock=None, timeout_s=5.0, pool_min=3, pool_max=3)
    ledger = a.ledgers.ledger("alice", Counter(3, 1))
    assert ledger.usage() == Usage(3, 0, 1, 0)
    server.stop()
    server.start()
    assert ledger.usage() == Usage(3, 0, 1, 0)
    ledger.reserve(1, 0, Limits()).close(1, 0)


def test_pg_lost_commit_answer_is_settled_later(
    nodes: Nodes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The database committed but its answer was lost: the caller is told to retry, and
    what the commit may have held is given back once the database answers."""
    import psycopg

    a = nodes(clock=None, timeout_s=TIMEOUT_S)
    ledger = a.ledgers.ledger("alice", Counter(0, 0))
    ledger.usage()
    commit = psycopg.Connection.commit

    def lost_answer(self: psycopg.Connection[object]) -> None:
        commit(self)
        raise psycopg.OperationalError("server closed the connection unexpectedly")

    monkeypatch.setattr(psycopg.Connection, "commit", lost_answer)
    with pytest.raises(UnavailableError):
        ledger.reserve(100, 1, Limits(1000, 10))
    with pytest.raises(UnavailableError):
        a.claims.claim("alice/f", lambda: None)
    monkeypatch.setattr(psycopg.Connection, "commit", commit)
    with pytest.raises(UnavailableError):  # known down: calls fail at once, not in 5 s
        ledger.usage()
    a.db.renew()  # the beat's probe finds it back
    assert ledger.usage() == Usage(0, 100, 0, 1)  # held, by nobody who knows it
    a.flush()
    assert ledger.usage() == Usage(0, 0, 0, 0)
    assert not a.claims.held("alice/f")
