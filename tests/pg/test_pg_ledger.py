"""The ledger contract (the cases of tests/pure/test_ledger.py) against ``PgLedger``, and
what only a shared ledger must prove: two nodes reserving at once from many threads never
jointly pass a limit, and a dead node's reservations are released by another node once
its lease has run out."""

from __future__ import annotations

import random
import threading
from collections.abc import Callable

import pytest

from ftpd.errors import QuotaExceededError
from ftpd.state.base import Limits, Usage
from ftpd.state.postgresql import PgLedger, PgState
from tests.pg.conftest import FakeClock, Nodes
from tests.pure.test_ledger import Counter


@pytest.fixture
def node(nodes: Nodes) -> PgState:
    return nodes()


@pytest.fixture
def make(node: PgState) -> Callable[..., PgLedger]:
    """``make(counter, user="alice")``: that user's ledger on the node."""

    def ledger(counter: Counter, user: str = "alice") -> PgLedger:
        return node.ledgers.ledger(user, counter)

    return ledger


# --- entries ----------------------------------------------------------------------------------


def test_pg_entries_limit_and_error_data(make: Callable[..., PgLedger]) -> None:
    ledger = make(Counter(0, 3))
    held = ledger.reserve(0, 2, Limits(None, 5))
    with pytest.raises(QuotaExceededError) as info:
        ledger.reserve(0, 1, Limits(None, 5))
    assert info.value.code == 413
    assert info.value.data == {"available_files": 0, "max_files": 5, "files": 3}
    held.close(0, 1)
    assert ledger.usage() == Usage(0, 0, 4, 0)
    ledger.reserve(0, 1, Limits(None, 5)).close(0, 1)
    with pytest.raises(QuotaExceededError):
        ledger.reserve(0, 1, Limits(None, 5))


def test_pg_zero_entries_pass_a_full_ledger(make: Callable[..., PgLedger]) -> None:
    ledger = make(Counter(0, 9))
    ledger.reserve(10, 0, Limits(100, 5)).close(10, 0)
    assert ledger.usage() == Usage(10, 0, 9, 0)


def test_pg_take_entries_checks_and_gives_back(make: Callable[..., PgLedger]) -> None:
    ledger = make(Counter(0, 0))
    held = ledger.reserve(0, 0, Limits(None, 2))
    held.take_entries(1)
    held.take_entries(1)
    with pytest.raises(QuotaExceededError):
        held.take_entries(1)
    assert (held.entries, ledger.usage().reserved_entries) == (2, 2)
    held.take_entries(-1)
    assert ledger.usage().reserved_entries == 1
    held.close(0, 1)
    assert ledger.usage() == Usage(0, 0, 1, 0)


def test_pg_bytes_and_entries_checked_together(make: Callable[..., PgLedger]) -> None:
    ledger = make(Counter(900, 4))
    with pytest.raises(QuotaExceededError) as info:
        ledger.reserve(50, 1, Limits(1000, 4))
    assert "max_files" in info.value.data
    with pytest.raises(QuotaExceededError) as info:
        ledger.reserve(101, 0, Limits(1000, 4))
    assert info.value.data == {"available": 100, "limit": 1000, "used": 900}
    assert "100 B free" in info.value.message
    assert ledger.usage() == Usage(900, 0, 4, 0)


def test_pg_grow_holds_more_without_a_check(make: Callable[..., PgLedger]) -> None:
    ledger = make(Counter(0, 0))
    held = ledger.reserve(100, 0, Limits(100, None))
    held.grow(50)  # bytes the operation itself just freed
    assert ledger.usage() == Usage(0, 150, 0, 0)
    held.close(120, 1)
    assert ledger.usage() == Usage(120, 0, 1, 0)
    held.close(999, 9)  # once only
    assert ledger.usage() == Usage(120, 0, 1, 0)


def test_pg_context_manager_releases(make: Callable[..., PgLedger]) -> None:
    ledger = make(Counter(5, 1))
    with ledger.reserve(10, 1, Limits()):
        assert ledger.usage() == Usage(5, 10, 1, 1)
    assert ledger.usage() == Usage(5, 0, 1, 0)


def test_pg_adjust_never_goes_below_zero(make: Callable[..., PgLedger]) -> None:
    ledger = make(Counter(10, 1))
    ledger.adjust(5, 5)  # before the first count: the count will see it (state.local)
    assert ledger.usage() == Usage(10, 0, 1, 0)
    ledger.adjust(-50, -5)
    assert ledger.usage() == Usage(0, 0, 0, 0)
    ledger.adjust(7, 2)
    assert ledger.usage() == Usage(7, 0, 2, 0)


# --- recount ----------------------------------------------------------------------------------


def test_pg_first_use_counts_once(make: Callable[..., PgLedger]) -> None:
    counter = Counter(10, 2)
    ledger = make(counter)
    assert counter.calls == 0
    assert ledger.usage() == Usage(10, 0, 2, 0)
    ledger.reserve(1, 1, Limits())
    ledger.usage()
    assert counter.calls == 1


def test_pg_first_count_is_made_by_one_node(nodes: Nodes) -> None:
    """The row the first node made is every node's: the second never counts."""
    a, b = nodes(), nodes()
    a_count, b_count = Counter(10, 2), Counter(99, 99)
    assert a.ledgers.ledger("alice", a_count).usage() == Usage(10, 0, 2, 0)
    assert b.ledgers.ledger("alice", b_count).usage() == Usage(10, 0, 2, 0)
    assert (a_count.calls, b_count.calls) == (1, 0)


def test_pg_recount_takes_a_complete_count_even_lower(make: Callable[..., PgLedger]) -> None:
    counter = Counter(100, 5)
    ledger = make(counter)
    ledger.usage()
    counter.result = (40, 2, True)
    assert ledger.recount() is True
    assert ledger.usage() == Usage(40, 0, 2, 0)


def test_pg_recount_incomplete_never_lowers(make: Callable[..., PgLedger]) -> None:
    counter = Counter(100, 5)
    ledger = make(counter)
    ledger.usage()
    counter.result = (40, 2, False)
    assert ledger.recount() is True
    assert ledger.usage() == Usage(100, 0, 5, 0)
    counter.result = (150, 3, False)
    assert ledger.recount() is True
    assert ledger.usage() == Usage(150, 0, 5, 0)
    counter.result = (10, 9, False)
    ledger.recount()
    assert ledger.usage() == Usage(150, 0, 9, 0)


def test_pg_recount_incomplete_first_count_is_taken(make: Callable[..., PgLedger]) -> None:
    ledger = make(Counter(70, 3, False))
    assert ledger.recount() is True
    assert ledger.usage() == Usage(70, 0, 3, 0)


@pytest.mark.parametrize(("nbytes", "entries"), [(10, 0), (0, 1), (10, 1)])
def test_pg_recount_skipped_while_reserved(
    make: Callable[..., PgLedger], nbytes: int, entries: int
) -> None:
    counter = Counter(100, 5)
    ledger = make(counter)
    held = ledger.reserve(nbytes, entries, Limits())
    counter.result = (0, 0, True)
    assert ledger.recount() is False
    assert ledger.usage().used == 100
    held.close(0, 0)
    assert ledger.recount() is True
    assert ledger.usage() == Usage(0, 0, 0, 0)


def test_pg_recount_skipped_while_another_node_reserves(nodes: Nodes) -> None:
    a, b = nodes(), nodes()
    counter = Counter(100, 5)
    ledger = a.ledgers.ledger("alice", counter)
    held = b.ledgers.ledger("alice", Counter()).reserve(10, 0, Limits())
    counter.result = (0, 0, True)
    assert ledger.recount() is False
    held.close(0, 0)
    assert ledger.recount() is True


@pytest.mark.parametrize(
    "change",
    [
        lambda ledger: ledger.adjust(5, 1),
        lambda ledger: ledger.reserve(5, 0, Limits()).close(5, 0),
        lambda ledger: ledger.reserve(5, 0, Limits()),  # still held when the count ends
    ],
)
def test_pg_recount_discarded_when_something_changed_meanwhile(
    make: Callable[..., PgLedger], change: Callable[[PgLedger], object]
) -> None:
    counter = Counter(100, 5)
    ledger = make(counter)
    ledger.usage()
    counter.result = (1, 1, True)
    counter.during = lambda: change(ledger)
    assert ledger.recount() is False
    assert ledger.usage().used in (100, 105)


def test_pg_recount_holds_no_transaction_while_counting(make: Callable[..., PgLedger]) -> None:
    """A big home must not stall uploads: the ledger answers while a recount counts."""
    counter = Counter(10, 1)
    ledger = make(counter)
    ledger.usage()
    counting, answered = threading.Event(), threading.Event()
    seen: list[Usage] = []

    def during() -> None:
        counting.set()
        assert answered.wait(10), "the ledger was locked during the count"

    def asker() -> None:
        counting.wait(10)
        seen.append(ledger.usage())
        ledger.reserve(1, 0, Limits()).close(0, 0)
        answered.set()

    counter.during = during
    thread = threading.Thread(target=asker)
    thread.start()
    ledger.recount()
    thread.join(10)
    assert not thread.is_alive() and seen == [Usage(10, 0, 1, 0)]


def test_pg_ledgers_one_per_user_and_recount_all(node: PgState) -> None:
    ledgers = node.ledgers
    a_count, b_count = Counter(1, 1), Counter(2, 2)
    a = ledgers.ledger("alice", a_count)
    assert ledgers.ledger("alice", Counter(99, 99)) is a
    b = ledgers.ledger("bob", b_count)
    a.usage(), b.usage()
    held = b.reserve(1, 0, Limits())
    a_count.result, b_count.result = (10, 10, True), (20, 20, True)
    ledgers.recount_all()
    assert a.usage() == Usage(10, 0, 10, 0)
    assert b.usage() == Usage(2, 1, 2, 0)
    held.close(0, 0)


def test_pg_existing_finds_another_nodes_ledger_without_counting(nodes: Nodes) -> None:
    a, b = nodes(), nodes()
    assert b.ledgers.existing("alice") is None
    a.ledgers.ledger("alice", Counter(30, 3)).usage()
    found = b.ledgers.existing("alice")
    assert found is not None
    found.adjust(-10, 0)  # a sweep on node b freed a partial
    assert a.ledgers.ledger("alice", Counter()).usage() == Usage(20, 0, 3, 0)


# --- across nodes -----------------------------------------------------------------------------


def _race(nodes: list[PgState], user: str, limits: Limits, threads: int, step: int) -> int:
    """``threads`` threads per node reserve ``step`` bytes and one entry at a time and
    settle them, until the ledger refuses; returns the reservations that passed."""
    ledgers = [node.ledgers.ledger(user, Counter(0, 0)) for node in nodes]
    ledgers[0].usage()  # counted once, before the race
    start = threading.Barrier(threads * len(nodes))
    passed: list[int] = []
    errors: list[BaseException] = []

    def worker(ledger: PgLedger, seed: int) -> None:
        rnd = random.Random(seed)
        try:
            start.wait(timeout=30)
            while True:
                try:
                    held = ledger.reserve(step, 1, limits)
                except QuotaExceededError:
                    return
                passed.append(1)
                # Some keep it, some give it back at once, some hold it for a while.
                if rnd.random() < 0.8:
                    held.close(step, 1)
                else:
                    held.close(0, 0)
                    passed.pop()
        except BaseException as exc:
            errors.append(exc)

    workers = [
        threading.Thread(target=worker, args=(ledger, n * 100 + i))
        for n, ledger in enumerate(ledgers)
        for i in range(threads)
    ]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join(120)
    assert errors == [] and not any(t.is_alive() for t in workers)
    return len(passed)


def test_pg_two_nodes_never_jointly_pass_a_limit(nodes: Nodes) -> None:
    a, b = nodes(clock=None, pool_max=4), nodes(clock=None, pool_max=4)
    for round_ in range(8):
        user = f"user{round_}"
        step, room = 1000 + round_, 37
        limits = Limits(step * room + step // 2, None)  # room for 37 and a half
        kept = _race([a, b], user, limits, threads=4, step=step)
        usage = a.ledgers.ledger(user, Counter()).usage()
        assert kept == room, f"round {round_}: {kept} reservations were kept"
        assert usage == Usage(step * room, 0, room, 0)


def test_pg_two_nodes_never_jointly_pass_the_entries_limit(nodes: Nodes) -> None:
    a, b = nodes(clock=None), nodes(clock=None)
    for round_ in range(4):
        user = f"files{round_}"
        kept = _race([a, b], user, Limits(None, 25), threads=4, step=1)
        assert kept == 25
        assert b.ledgers.ledger(user, Counter()).usage() == Usage(25, 0, 25, 0)


def test_pg_held_reservations_never_pass_the_limit_at_any_moment(nodes: Nodes) -> None:
    """Reservations that stay open: what is held at once never passes the limit."""
    a, b = nodes(clock=None), nodes(clock=None)
    limit = 10_000
    ledgers = [a.ledgers.ledger("alice", Counter(0, 0)), b.ledgers.ledger("alice", Counter())]
    ledgers[0].usage()
    start = threading.Barrier(8)
    holds: list[int] = []
    lock = threading.Lock()

    def worker(ledger: PgLedger, seed: int) -> None:
        rnd = random.Random(seed)
        start.wait(timeout=30)
        for _ in range(60):
            size = rnd.randint(1, 900)
            try:
                ledger.reserve(size, 0, Limits(limit, None))
            except QuotaExceededError:
                continue
            with lock:
                holds.append(size)

    workers = [threading.Thread(target=worker, args=(ledgers[i % 2], i)) for i in range(8)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join(120)
    usage = ledgers[1].usage()
    assert sum(holds) == usage.reserved <= limit
    assert limit - usage.reserved < 900  # and it was filled, not refused early


def test_pg_dead_nodes_reservations_are_released_after_its_lease(
    nodes: Nodes, clock: FakeClock
) -> None:
    a, b = nodes(lease_s=60), nodes(lease_s=60)
    limits = Limits(1000, None)
    a.ledgers.ledger("alice", Counter(0, 0)).reserve(900, 0, limits)  # a dies holding it
    ledger = b.ledgers.ledger("alice", Counter())
    with pytest.raises(QuotaExceededError):
        ledger.reserve(200, 0, limits)
    clock.advance(59)
    with pytest.raises(QuotaExceededError):  # the lease still holds
        ledger.reserve(200, 0, limits)
    clock.advance(2)
    ledger.reserve(200, 0, limits).close(200, 1)  # released by b's own retry
    assert ledger.usage() == Usage(200, 0, 1, 0)


def test_pg_a_late_settle_of_a_released_reservation_counts_once(
    nodes: Nodes, clock: FakeClock
) -> None:
    """A node cut off past its lease: its hold was released by another node; when it
    comes back and settles, the bytes it wrote count and the hold is not given back
    twice."""
    a, b = nodes(lease_s=60), nodes(lease_s=60)
    held = a.ledgers.ledger("alice", Counter(0, 0)).reserve(500, 1, Limits())
    clock.advance(61)
    b.beat()  # releases what a held
    ledger = b.ledgers.ledger("alice", Counter())
    assert ledger.usage() == Usage(0, 0, 0, 0)
    held.close(300, 1)
    assert ledger.usage() == Usage(300, 0, 1, 0)
