"""Upload claims across nodes: the cases of tests/pure/test_ledger.py on one node, then
what only a shared table must prove: a conflict while the holder's touches reach the
database, a takeover once it has been silent ``takeover_after`` seconds, and a takeover
once its node's lease has run out, whatever its last touch said."""

from __future__ import annotations

import threading

import pytest

from ftpd.errors import ConflictError
from tests.pg.conftest import FakeClock, Nodes

# --- one node: state.local's rules ------------------------------------------------------------


def test_pg_claim_release_and_other_keys(nodes: Nodes) -> None:
    claims = nodes(takeover_after=60).claims
    first = claims.claim("alice/a", lambda: None)
    claims.claim("alice/b", lambda: None).release()
    claims.claim("bob/a", lambda: None)
    with pytest.raises(ConflictError):
        claims.claim("alice/a", lambda: None)
    first.release()
    first.release()
    with claims.claim("alice/a", lambda: None):
        assert claims.held("alice/a")
    assert not claims.held("alice/a")
    claims.claim("alice/a", lambda: None)


def test_pg_claim_of_a_receiving_holder_is_refused(nodes: Nodes, clock: FakeClock) -> None:
    claims = nodes(takeover_after=60).claims
    interrupted: list[str] = []
    held = claims.claim("k", lambda: interrupted.append("first"))
    clock.advance(59)
    with pytest.raises(ConflictError):
        claims.claim("k", lambda: None)
    clock.advance(59)
    held.touch()
    clock.advance(59)
    with pytest.raises(ConflictError):
        claims.claim("k", lambda: None)
    assert interrupted == []


def test_pg_claim_takes_over_a_stalled_holder(nodes: Nodes, clock: FakeClock) -> None:
    claims = nodes(takeover_after=60).claims
    interrupted = threading.Event()
    first = claims.claim("k", interrupted.set)

    def holder() -> None:  # the old session's thread: stops when interrupted
        if interrupted.wait(10):
            first.release()

    thread = threading.Thread(target=holder)
    thread.start()
    clock.advance(60)
    second = claims.claim("k", lambda: None)
    thread.join(10)
    assert interrupted.is_set()
    first.release()  # the old holder's late release does not free the new claim
    with pytest.raises(ConflictError):
        claims.claim("k", lambda: None)
    second.release()


def test_pg_claim_takeover_gives_up_when_the_holder_never_lets_go(nodes: Nodes) -> None:
    claims = nodes(takeover_after=0, wait_s=0.05).claims
    calls: list[int] = []
    claims.claim("k", lambda: calls.append(1))
    with pytest.raises(ConflictError):
        claims.claim("k", lambda: None)
    assert calls == [1]


# --- across nodes -----------------------------------------------------------------------------


def test_pg_claims_conflict_across_nodes_while_touched(nodes: Nodes, clock: FakeClock) -> None:
    a, b = nodes(takeover_after=60, lease_s=300), nodes(takeover_after=60, lease_s=300)
    interrupted: list[str] = []
    held = a.claims.claim("alice/f", lambda: interrupted.append("a"))
    assert b.claims.held("alice/f")
    with pytest.raises(ConflictError):
        b.claims.claim("alice/f", lambda: None)
    for _ in range(5):  # receiving for five minutes, touches written by a's beat
        clock.advance(59)
        held.touch()
        a.flush()
        with pytest.raises(ConflictError):
            b.claims.claim("alice/f", lambda: None)
    assert interrupted == []
    held.release()
    assert not b.claims.held("alice/f")
    b.claims.claim("alice/f", lambda: None)


def test_pg_claims_touch_never_writes_by_itself(nodes: Nodes, clock: FakeClock) -> None:
    """A fast upload touches on every chunk without waiting on the database: only the
    node's flush (the beat, each second) writes, so an unflushed touch is not seen."""
    a, b = nodes(takeover_after=60, lease_s=300), nodes(takeover_after=60, lease_s=300)
    held = a.claims.claim("alice/f", lambda: None)
    clock.advance(50)
    for _ in range(10_000):
        held.touch()  # never waits on the database
    clock.advance(20)  # 70 s after the claim, 20 s after the touches: not yet flushed
    b.claims.claim("alice/g", lambda: None)  # (b works meanwhile)
    taken = b.claims.claim("alice/f", lambda: None)  # silent for 70 s as far as b knows
    taken.release()


def test_pg_claims_takeover_after_takeover_after(nodes: Nodes, clock: FakeClock) -> None:
    a, b = nodes(takeover_after=60, lease_s=300), nodes(takeover_after=60, lease_s=300)
    interrupted = threading.Event()
    old = a.claims.claim("alice/f", interrupted.set)
    clock.advance(30)
    old.touch()
    a.flush()
    clock.advance(59)
    with pytest.raises(ConflictError):
        b.claims.claim("alice/f", lambda: None)
    clock.advance(1)  # silent for 60 s: stalled
    new = b.claims.claim("alice/f", lambda: None)
    assert not interrupted.is_set()  # a learns at its next flush
    a.flush()
    assert interrupted.is_set()
    assert a.claims.held("alice/f")  # held by b now
    old.release()  # the old holder's late release frees nothing
    with pytest.raises(ConflictError):
        a.claims.claim("alice/f", lambda: None)
    new.release()
    a.claims.claim("alice/f", lambda: None)


def test_pg_claims_takeover_when_the_holders_node_dies(nodes: Nodes, clock: FakeClock) -> None:
    """A node killed mid-upload: its claim is taken over once its lease ran out, even if
    the claim's last touch is recent and ``takeover_after`` is long."""
    a, b = nodes(takeover_after=3600, lease_s=60), nodes(takeover_after=3600, lease_s=60)
    held = a.claims.claim("alice/f", lambda: None)
    clock.advance(40)
    held.touch()
    a.flush()  # a's last words: a touch, and its lease renewed until +100
    clock.advance(59)
    b.beat()
    assert b.claims.held("alice/f")
    with pytest.raises(ConflictError):
        b.claims.claim("alice/f", lambda: None)
    clock.advance(2)  # a's lease ran out (nothing renews it: it is dead)
    assert not b.claims.held("alice/f")
    b.claims.claim("alice/f", lambda: None)


def test_pg_dead_nodes_claims_are_dropped_by_the_beat(nodes: Nodes, clock: FakeClock) -> None:
    a, b = nodes(lease_s=60), nodes(lease_s=60)
    a.claims.claim("alice/f", lambda: None)
    a.claims.claim("alice/g", lambda: None)
    clock.advance(61)
    b.beat()
    c = nodes(lease_s=60)
    assert not c.claims.held("alice/f") and not c.claims.held("alice/g")
    c.claims.claim("alice/f", lambda: None)


def test_pg_claims_many_nodes_race_for_one_key(nodes: Nodes) -> None:
    """Eight threads on four nodes claim one key at once: exactly one wins each round."""
    states = [nodes(clock=None, takeover_after=3600) for _ in range(4)]
    for round_ in range(10):
        key = f"alice/race{round_}"
        start = threading.Barrier(8)
        won: list[object] = []
        refused: list[int] = []

        def racer(
            index: int, key: str, start: threading.Barrier, won: list[object], refused: list[int]
        ) -> None:
            start.wait(timeout=30)
            try:
                won.append(states[index % 4].claims.claim(key, lambda: None))
            except ConflictError:
                refused.append(1)

        threads = [
            threading.Thread(target=racer, args=(i, key, start, won, refused)) for i in range(8)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert (len(won), len(refused)) == (1, 7)
