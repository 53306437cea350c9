"""Pure tests of the in-process state (``ftpd.state.local``): ledger rules and claims.

The ledger is given a counter callable (what ``LocalTree.usage`` is in the daemon), so
these tests decide exactly what a count says and when.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest

from ftpd.errors import ConflictError, QuotaExceededError
from ftpd.state.base import Limits, Usage
from ftpd.state.local import LocalClaims, LocalLedger, LocalLedgers


class Counter:
    """A fake storage count: returns ``result``; ``during`` runs inside the count."""

    def __init__(self, nbytes: int = 0, entries: int = 0, complete: bool = True) -> None:
        self.result = (nbytes, entries, complete)
        self.during: Callable[[], None] | None = None
        self.calls = 0

    def __call__(self) -> tuple[int, int, bool]:
        self.calls += 1
        if self.during is not None:
            self.during()
        return self.result


# --- entries ----------------------------------------------------------------------------------


def test_entries_limit_and_error_data() -> None:
    ledger = LocalLedger(Counter(0, 3))
    held = ledger.reserve(0, 2, Limits(None, 5))
    with pytest.raises(QuotaExceededError) as info:
        ledger.reserve(0, 1, Limits(None, 5))
    assert info.value.code == 413
    assert info.value.data == {"available_files": 0, "max_files": 5, "files": 3}
    held.close(0, 1)  # one of the two was made
    assert ledger.usage() == Usage(0, 0, 4, 0)
    ledger.reserve(0, 1, Limits(None, 5)).close(0, 1)
    with pytest.raises(QuotaExceededError):
        ledger.reserve(0, 1, Limits(None, 5))


def test_zero_entries_pass_a_full_ledger() -> None:
    """Replacing a file, writing to a held partial: no new entry, no entry check."""
    ledger = LocalLedger(Counter(0, 9))
    ledger.reserve(10, 0, Limits(100, 5)).close(10, 0)
    assert ledger.usage() == Usage(10, 0, 9, 0)


def test_take_entries_checks_and_gives_back() -> None:
    ledger = LocalLedger(Counter(0, 0))
    held = ledger.reserve(0, 0, Limits(None, 2))
    held.take_entries(1)
    held.take_entries(1)
    with pytest.raises(QuotaExceededError):
        held.take_entries(1)
    assert (held.entries, ledger.usage().reserved_entries) == (2, 2)
    held.take_entries(-1)  # a folder someone else made meanwhile
    assert ledger.usage().reserved_entries == 1
    held.close(0, 1)
    assert ledger.usage() == Usage(0, 0, 1, 0)


def test_bytes_and_entries_checked_together() -> None:
    ledger = LocalLedger(Counter(900, 4))
    with pytest.raises(QuotaExceededError) as info:
        ledger.reserve(50, 1, Limits(1000, 4))
    assert "max_files" in info.value.data
    with pytest.raises(QuotaExceededError) as info:
        ledger.reserve(101, 0, Limits(1000, 4))
    assert info.value.data["available"] == 100
    assert ledger.usage() == Usage(900, 0, 4, 0)


# --- recount ----------------------------------------------------------------------------------


def test_first_use_counts_once() -> None:
    counter = Counter(10, 2)
    ledger = LocalLedger(counter)
    assert counter.calls == 0  # lazily
    assert ledger.usage() == Usage(10, 0, 2, 0)
    ledger.reserve(1, 1, Limits())
    ledger.usage()
    assert counter.calls == 1


def test_recount_takes_a_complete_count_even_lower() -> None:
    counter = Counter(100, 5)
    ledger = LocalLedger(counter)
    ledger.usage()
    counter.result = (40, 2, True)
    assert ledger.recount() is True
    assert ledger.usage() == Usage(40, 0, 2, 0)


def test_recount_incomplete_never_lowers() -> None:
    counter = Counter(100, 5)
    ledger = LocalLedger(counter)
    ledger.usage()
    counter.result = (40, 2, False)  # a folder could not be read
    assert ledger.recount() is True
    assert ledger.usage() == Usage(100, 0, 5, 0)
    counter.result = (150, 3, False)  # but it may raise what it knew
    assert ledger.recount() is True
    assert ledger.usage() == Usage(150, 0, 5, 0)
    counter.result = (10, 9, False)
    ledger.recount()
    assert ledger.usage() == Usage(150, 0, 9, 0)


def test_recount_incomplete_first_count_is_taken() -> None:
    ledger = LocalLedger(Counter(70, 3, False))
    assert ledger.recount() is True
    assert ledger.usage() == Usage(70, 0, 3, 0)


@pytest.mark.parametrize(("nbytes", "entries"), [(10, 0), (0, 1), (10, 1)])
def test_recount_skipped_while_reserved(nbytes: int, entries: int) -> None:
    counter = Counter(100, 5)
    ledger = LocalLedger(counter)
    held = ledger.reserve(nbytes, entries, Limits())
    counter.result = (0, 0, True)
    assert ledger.recount() is False
    assert ledger.usage().used == 100
    held.close(0, 0)
    assert ledger.recount() is True
    assert ledger.usage() == Usage(0, 0, 0, 0)


@pytest.mark.parametrize(
    "change",
    [
        lambda ledger: ledger.adjust(5, 1),
        lambda ledger: ledger.reserve(5, 0, Limits()).close(5, 0),
        lambda ledger: ledger.reserve(5, 0, Limits()),  # still held when the count ends
    ],
)
def test_recount_discarded_when_something_changed_meanwhile(
    change: Callable[[LocalLedger], object],
) -> None:
    """A change during the count may or may not be in it: the count is thrown away."""
    counter = Counter(100, 5)
    ledger = LocalLedger(counter)
    ledger.usage()
    counter.result = (1, 1, True)
    counter.during = lambda: change(ledger)
    assert ledger.recount() is False
    assert ledger.usage().used in (100, 105)  # never the stale count


def test_recount_runs_outside_the_lock() -> None:
    """A big home must not stall uploads: the ledger answers while a recount counts."""
    counter = Counter(10, 1)
    ledger = LocalLedger(counter)
    ledger.usage()
    counting, answered = threading.Event(), threading.Event()
    seen: list[Usage] = []

    def during() -> None:
        counting.set()
        assert answered.wait(10), "the ledger was locked during the count"

    def asker() -> None:
        counting.wait(10)
        seen.append(ledger.usage())
        answered.set()

    counter.during = during
    thread = threading.Thread(target=asker)
    thread.start()
    ledger.recount()
    thread.join(10)
    assert not thread.is_alive() and seen == [Usage(10, 0, 1, 0)]


def test_ledgers_one_per_user_and_recount_all() -> None:
    ledgers = LocalLedgers()
    a_count, b_count = Counter(1, 1), Counter(2, 2)
    a = ledgers.ledger("alice", a_count)
    assert ledgers.ledger("alice", Counter(99, 99)) is a  # the first counter stays
    b = ledgers.ledger("bob", b_count)
    a.usage(), b.usage()
    held = b.reserve(1, 0, Limits())  # bob is uploading: his recount is skipped
    a_count.result, b_count.result = (10, 10, True), (20, 20, True)
    ledgers.recount_all()
    assert a.usage() == Usage(10, 0, 10, 0)
    assert b.usage() == Usage(2, 1, 2, 0)
    held.close(0, 0)


# --- claims -----------------------------------------------------------------------------------


class FakeTime:
    now = 1000.0

    @classmethod
    def monotonic(cls) -> float:
        return cls.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> type[FakeTime]:
    import ftpd.state.local as local

    FakeTime.now = 1000.0
    monkeypatch.setattr(local, "time", FakeTime)
    return FakeTime


def test_claim_release_and_other_keys() -> None:
    claims = LocalClaims(takeover_after=60)
    first = claims.claim("alice/a", lambda: None)
    claims.claim("alice/b", lambda: None).release()
    claims.claim("bob/a", lambda: None)
    with pytest.raises(ConflictError):
        claims.claim("alice/a", lambda: None)
    first.release()
    first.release()  # twice is harmless
    with claims.claim("alice/a", lambda: None):
        pass
    claims.claim("alice/a", lambda: None)


def test_claim_of_a_receiving_holder_is_refused(clock: type[FakeTime]) -> None:
    claims = LocalClaims(takeover_after=60)
    interrupted: list[str] = []
    held = claims.claim("k", lambda: interrupted.append("first"))
    clock.now += 59
    with pytest.raises(ConflictError):
        claims.claim("k", lambda: None)
    clock.now += 59
    held.touch()  # still receiving
    clock.now += 59
    with pytest.raises(ConflictError):
        claims.claim("k", lambda: None)
    assert interrupted == []


def test_claim_takes_over_a_stalled_holder(clock: type[FakeTime]) -> None:
    claims = LocalClaims(takeover_after=60)
    interrupted = threading.Event()
    first = claims.claim("k", interrupted.set)

    def holder() -> None:  # the old session's thread: stops when interrupted
        if interrupted.wait(10):
            first.release()

    thread = threading.Thread(target=holder)
    thread.start()
    clock.now += 60
    second = claims.claim("k", lambda: None)
    thread.join(10)
    assert interrupted.is_set()
    first.release()  # the old holder's late release does not free the new claim
    with pytest.raises(ConflictError):
        claims.claim("k", lambda: None)
    second.release()


def test_claim_takeover_gives_up_when_the_holder_never_lets_go() -> None:
    claims = LocalClaims(takeover_after=0, wait_s=0.05)
    calls: list[int] = []
    claims.claim("k", lambda: calls.append(1))  # its thread is stuck: never released
    with pytest.raises(ConflictError):
        claims.claim("k", lambda: None)
    assert calls == [1]
