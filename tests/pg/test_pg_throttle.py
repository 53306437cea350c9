"""The login brake with its counts in PostgreSQL: the rules of tests/pure/test_throttle.py
(its cases that use only the public interface run here unchanged, against ``PgThrottle``),
and a lock made on one node holding on the others."""

from __future__ import annotations

import threading
import time

import pytest

from ftpd.errors import TooManyAttemptsError
from ftpd.state.postgresql import PgState, PgThrottle
from tests.pg.conftest import Nodes
from tests.pure.test_throttle import (  # noqa: F401 - collected here against PgThrottle
    DELAY_S,
    LOCKOUT_S,
    MAX_FAILURES,
    PER_IP,
    A,
    B,
    FakeClock,
    _fail,
    _locked,
    test_throttle_attempts_in_flight_count_before_their_check,
    test_throttle_clear_lifts_every_lock,
    test_throttle_delay_never_overflows,
    test_throttle_fresh_start_allows,
    test_throttle_lock_expires_and_counting_starts_over,
    test_throttle_lock_reports_retry_after,
    test_throttle_locks_the_address_after_max_failures_per_ip,
    test_throttle_locks_the_pair_not_the_name,
    test_throttle_name_failing_from_many_addresses_is_never_locked,
    test_throttle_pair_lock_leaves_others_below_the_address_limit,
    test_throttle_quiet_period_forgives,
    test_throttle_success_at_the_address_limit_lifts_that_lock,
    test_throttle_success_clears_its_pair_even_at_the_limit,
    test_throttle_unlock_unknown_user_does_nothing,
    test_throttle_unlock_user_lifts_every_pair_of_that_name,
    test_throttle_unlock_user_names_addresses_still_locked,
)


@pytest.fixture
def clock() -> FakeClock:
    """The pure tests' clock (it starts at 1000.0), shared by every node of a test."""
    return FakeClock()


@pytest.fixture
def node(nodes: Nodes) -> PgState:
    return nodes(clock=None)


def _brake(node: PgState, clock: FakeClock, **kw: int) -> PgThrottle:
    settings = {"max_failures": MAX_FAILURES, "max_failures_per_ip": PER_IP, **kw}
    return node.throttle(
        settings["max_failures"],
        LOCKOUT_S,
        DELAY_S,
        clock=clock,
        max_failures_per_ip=settings["max_failures_per_ip"],
    )


@pytest.fixture
def brake(node: PgState, clock: FakeClock) -> PgThrottle:
    return _brake(node, clock)


def _address_attempts(node: PgState, ip: str) -> int:
    row = node.db.run(
        lambda cur: cur.execute(
            "SELECT attempts FROM ftpd_login_address WHERE address = %s", [ip]
        ).fetchone()
    )
    return int(row[0]) if row else 0


# --- the pure cases that read internals, through the table instead ----------------------------


def test_pg_throttle_refusal_while_locked_counts_nothing(brake: PgThrottle, node: PgState) -> None:
    _fail(brake, "alice", A, MAX_FAILURES)
    for _ in range(50):
        with pytest.raises(TooManyAttemptsError):
            brake.begin("alice", A)
    assert _address_attempts(node, A) == MAX_FAILURES
    assert not _locked(brake, "bob", A)


def test_pg_throttle_success_gives_the_address_its_attempt_back(
    brake: PgThrottle, node: PgState
) -> None:
    _fail(brake, "mallory", A, 2)
    for _ in range(3 * PER_IP):
        brake.begin("alice", A)
        brake.succeeded("alice", A)
    assert not _locked(brake, "bob", A)
    assert _address_attempts(node, A) == 2


def test_pg_throttle_long_names_share_one_key(brake: PgThrottle, node: PgState) -> None:
    for i in range(MAX_FAILURES):
        _fail(brake, "x" * 200 + str(i), A)
    rows = node.db.run(lambda cur: cur.execute("SELECT count(*) FROM ftpd_login_pair").fetchone())
    assert rows is not None and rows[0] == 1
    assert _locked(brake, "x" * 300, A)


def test_pg_throttle_delays_double_then_cap(node: PgState, clock: FakeClock) -> None:
    brake = node.throttle(100, LOCKOUT_S, 1.0, clock=clock)
    delays = [brake.delay(brake.begin("alice", A)) for _ in range(8)]
    assert delays == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0, 10.0, 10.0]


def test_pg_throttle_typos_across_names_lock_nobody(node: PgState, clock: FakeClock) -> None:
    brake = node.throttle(5, 300.0, 1.0, clock=clock)
    for name in ("alice", "bob", "carol", "alice", "bob"):
        _fail(brake, name, A)
        clock.advance(7 * 60 / 5)
    for name in ("alice", "bob", "carol", "dave"):
        assert not _locked(brake, name, A), name


def test_pg_throttle_prune_forgets_expired_counts_and_keeps_locks(
    brake: PgThrottle, node: PgState, clock: FakeClock
) -> None:
    _fail(brake, "alice", A, MAX_FAILURES)  # locked
    for i in range(30):
        _fail(brake, f"user{i}", f"10.1.0.{i}")  # one failure each
    clock.advance(LOCKOUT_S / 2)
    _fail(brake, "bob", B)
    clock.advance(LOCKOUT_S / 2 + 1)  # the quiet ones and alice's lock have expired
    brake.prune()
    count = node.db.run(lambda cur: cur.execute("SELECT count(*) FROM ftpd_login_pair").fetchone())
    assert count is not None and count[0] == 1  # bob's, still counting
    assert brake.begin("bob", B) == 2


# --- across nodes ------------------------------------------------------------------------------


def test_pg_throttle_lock_holds_on_every_node(nodes: Nodes, clock: FakeClock) -> None:
    a, b = _brake(nodes(clock=None), clock), _brake(nodes(clock=None), clock)
    _fail(a, "alice", A, MAX_FAILURES - 1)
    _fail(b, "alice", A)  # the last allowed attempt, on the other node
    assert _locked(a, "alice", A) and _locked(b, "alice", A)
    with pytest.raises(TooManyAttemptsError):
        a.begin("alice", A)
    assert not _locked(b, "alice", B) and not _locked(b, "bob", A)
    lifted = b.unlock_user("alice")  # the admin asks one node
    assert lifted.unlocked == (A,)
    assert not _locked(a, "alice", A)


def test_pg_throttle_parallel_burst_across_nodes_gets_max_failures_checks(
    nodes: Nodes, clock: FakeClock
) -> None:
    """31 guesses at once from threads of three nodes: five get a password check."""
    brakes = [_brake(nodes(clock=None, pool_max=8), clock, max_failures=5) for _ in range(3)]
    barrier = threading.Barrier(31)
    allowed: list[int] = []
    refused: list[int] = []

    def guess(index: int) -> None:
        barrier.wait(timeout=30)
        try:
            allowed.append(brakes[index % 3].begin("alice", A))
        except TooManyAttemptsError:
            refused.append(1)

    threads = [threading.Thread(target=guess, args=(i,)) for i in range(31)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(allowed) == [1, 2, 3, 4, 5]
    assert len(refused) == 26


def test_pg_throttle_threads_on_two_nodes_count_every_attempt(
    nodes: Nodes, clock: FakeClock
) -> None:
    brakes = [
        _brake(nodes(clock=None), clock, max_failures=1000, max_failures_per_ip=1000)
        for _ in range(2)
    ]
    barrier = threading.Barrier(8)

    def hammer(index: int) -> None:
        barrier.wait(timeout=30)
        for _ in range(50):
            brakes[index % 2].begin("alice", A)

    threads = [threading.Thread(target=hammer, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert brakes[0].begin("alice", A) == 401


def test_pg_throttle_database_clock(nodes: Nodes) -> None:
    """Without an injected clock the database's time counts (the same on every node)."""
    node = nodes(clock=None)
    brake = node.throttle(2, 3600.0, 0.0)
    brake.begin("alice", A)
    brake.begin("alice", A)
    with pytest.raises(TooManyAttemptsError) as info:
        brake.check("alice", A)
    assert 3590 <= info.value.data["retry_after"] <= 3601
    assert brake.clear() == 1
    brake.check("alice", A)


# --- colleagues logging in at once, on several nodes -------------------------------------------


def test_pg_throttle_concurrent_right_passwords_on_two_nodes_all_get_in(
    nodes: Nodes, clock: FakeClock
) -> None:
    """40 sessions of one user from one address at once, spread over two nodes: those
    beyond the limits wait for the ones being checked, and nobody is refused."""
    brakes = [
        nodes(clock=None, pool_max=8).throttle(
            5, LOCKOUT_S, 0.0, clock=clock, max_failures_per_ip=20, wait_s=30
        )
        for _ in range(2)
    ]
    barrier = threading.Barrier(40)
    refused: list[int] = []

    def login(index: int) -> None:
        brake = brakes[index % 2]
        barrier.wait(timeout=30)
        try:
            brake.begin("alice", A)
        except TooManyAttemptsError:
            refused.append(1)
            return
        brake.succeeded("alice", A)

    threads = [threading.Thread(target=login, args=(i,)) for i in range(40)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert refused == [] and not any(t.is_alive() for t in threads)
    assert not _locked(brakes[0], "alice", A)


def test_pg_throttle_waiting_burst_of_wrong_guesses_on_two_nodes(
    nodes: Nodes, clock: FakeClock
) -> None:
    """With waiting on, a burst over two nodes still gets exactly max_failures checks:
    the waiters are refused once the checked ones are known to have failed."""
    brakes = [
        nodes(clock=None, pool_max=8).throttle(5, LOCKOUT_S, 0.0, clock=clock, wait_s=30)
        for _ in range(2)
    ]
    barrier = threading.Barrier(31)
    allowed: list[int] = []
    refused: list[int] = []

    def guess(index: int) -> None:
        brake = brakes[index % 2]
        barrier.wait(timeout=30)
        try:
            allowed.append(brake.begin("alice", A))
        except TooManyAttemptsError:
            refused.append(1)
            return
        brake.failed("alice", A)

    threads = [threading.Thread(target=guess, args=(i,)) for i in range(31)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(allowed) == [1, 2, 3, 4, 5]
    assert len(refused) == 26
    assert _locked(brakes[1], "alice", A)


def test_pg_throttle_a_lock_of_known_failures_refuses_at_once(
    nodes: Nodes, clock: FakeClock
) -> None:
    a = nodes(clock=None).throttle(2, LOCKOUT_S, 0.0, clock=clock, wait_s=30)
    b = nodes(clock=None).throttle(2, LOCKOUT_S, 0.0, clock=clock, wait_s=30)
    for _ in range(2):
        a.begin("alice", A)
        a.failed("alice", A)
    started = time.monotonic()
    with pytest.raises(TooManyAttemptsError):
        b.begin("alice", A)
    assert time.monotonic() - started < 5  # not the 30 s of waiting
