"""Pure tests of the login brake with an injected clock: no sleeps anywhere.

The rules (issue 9; docs/protocol.md §7): attempts are counted when they start, per
(user name, address) pair and per address; a pair is locked after ``max_failures``, an
address after ``max_failures_per_ip``; a lock on a pair never blocks the name from
elsewhere nor other names from that address; a success clears its pair.
"""

from __future__ import annotations

import math
import threading

import pytest

from ftpd.accounts import throttle
from ftpd.accounts.throttle import LoginThrottle
from ftpd.errors import TooManyAttemptsError

MAX_FAILURES, PER_IP, LOCKOUT_S, DELAY_S = 3, 7, 60.0, 0.5
A, B = "10.0.0.1", "10.0.0.2"


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def brake(clock: FakeClock) -> LoginThrottle:
    return LoginThrottle(MAX_FAILURES, LOCKOUT_S, DELAY_S, clock=clock, max_failures_per_ip=PER_IP)


def _locked(brake: LoginThrottle, user: str, ip: str) -> bool:
    try:
        brake.check(user, ip)
    except TooManyAttemptsError:
        return True
    return False


def _fail(brake: LoginThrottle, user: str, ip: str, times: int = 1) -> None:
    """``times`` attempts that are not followed by a success: failures."""
    for _ in range(times):
        brake.begin(user, ip)


# --- the delay ------------------------------------------------------------------------


def test_throttle_delays_double_then_cap(clock: FakeClock) -> None:
    brake = LoginThrottle(100, LOCKOUT_S, 1.0, clock=clock)
    delays = [brake.delay(brake.begin("alice", A)) for _ in range(8)]
    assert delays == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0, 10.0, 10.0]


@pytest.mark.parametrize("attempt", [1025, 1100, 10**6, 10**18])
def test_throttle_delay_never_overflows(brake: LoginThrottle, attempt: int) -> None:
    # 1.0 * 2 ** 1024 overflowed a float: the 1,025th failure was a 500 (issue 9).
    assert brake.delay(attempt) == 10.0


def test_throttle_delay_of_the_1025th_failure(clock: FakeClock) -> None:
    brake = LoginThrottle(10**9, LOCKOUT_S, 0.001, clock=clock, max_failures_per_ip=10**9)
    attempts = [brake.begin("alice", A) for _ in range(1100)]
    assert attempts[-1] == 1100
    assert all(math.isfinite(brake.delay(n)) for n in attempts)
    assert brake.delay(attempts[1024]) == 10.0


# --- who gets locked ------------------------------------------------------------------


def test_throttle_fresh_start_allows(brake: LoginThrottle) -> None:
    brake.check("alice", A)
    assert brake.begin("alice", A) == 1


def test_throttle_locks_the_pair_not_the_name(brake: LoginThrottle) -> None:
    _fail(brake, "alice", A, MAX_FAILURES - 1)
    assert not _locked(brake, "alice", A)
    _fail(brake, "alice", A)
    assert _locked(brake, "alice", A)
    # Nobody can lock a named account from afar, nor the colleagues behind that address.
    assert not _locked(brake, "alice", B)
    assert not _locked(brake, "bob", A)
    with pytest.raises(TooManyAttemptsError):
        brake.begin("alice", A)


def test_throttle_name_failing_from_many_addresses_is_never_locked(brake: LoginThrottle) -> None:
    for i in range(20):
        _fail(brake, "alice", f"10.1.0.{i}", MAX_FAILURES - 1)
    assert not _locked(brake, "alice", "10.9.9.9")
    assert not _locked(brake, "alice", "10.1.0.0")


def test_throttle_typos_across_names_lock_nobody(clock: FakeClock) -> None:
    """Five typos over seven minutes across three names locked the whole office (issue 9)."""
    brake = LoginThrottle(5, 300.0, 1.0, clock=clock)  # the shipped defaults
    for name in ("alice", "bob", "carol", "alice", "bob"):
        _fail(brake, name, A)
        clock.advance(7 * 60 / 5)
    for name in ("alice", "bob", "carol", "dave"):
        assert not _locked(brake, name, A), name


def test_throttle_locks_the_address_after_max_failures_per_ip(brake: LoginThrottle) -> None:
    for i in range(PER_IP - 1):
        _fail(brake, f"user{i}", A)  # one each: no pair reaches its limit
        assert not _locked(brake, "somebody", A)
    _fail(brake, "user-last", A)
    assert _locked(brake, "somebody", A)  # every name from that address
    assert not _locked(brake, "somebody", B)
    assert not _locked(brake, "user0", B)


def test_throttle_pair_lock_leaves_others_below_the_address_limit(brake: LoginThrottle) -> None:
    _fail(brake, "mallory", A, MAX_FAILURES)
    _fail(brake, "eve", A, MAX_FAILURES)
    assert _locked(brake, "mallory", A) and _locked(brake, "eve", A)
    assert 2 * MAX_FAILURES < PER_IP
    assert not _locked(brake, "bob", A)


def test_throttle_lock_reports_retry_after(brake: LoginThrottle, clock: FakeClock) -> None:
    _fail(brake, "alice", A, MAX_FAILURES)
    clock.advance(20.5)
    with pytest.raises(TooManyAttemptsError) as info:
        brake.begin("alice", A)
    assert info.value.code == 429
    assert info.value.data["retry_after"] == 40  # 39.5 s left, rounded up
    assert "40 s" in info.value.message


def test_throttle_refusal_while_locked_counts_nothing(brake: LoginThrottle) -> None:
    _fail(brake, "alice", A, MAX_FAILURES)
    for _ in range(50):
        with pytest.raises(TooManyAttemptsError):
            brake.begin("alice", A)
    assert brake._addresses[A].attempts == MAX_FAILURES  # the address did not pay for them
    assert not _locked(brake, "bob", A)


def test_throttle_lock_expires_and_counting_starts_over(
    brake: LoginThrottle, clock: FakeClock
) -> None:
    _fail(brake, "alice", A, MAX_FAILURES)
    clock.advance(LOCKOUT_S - 0.01)
    assert _locked(brake, "alice", A)
    clock.advance(0.01)
    assert not _locked(brake, "alice", A)
    assert brake.begin("alice", A) == 1  # a served lock gives a fresh allowance
    assert not _locked(brake, "alice", A)


def test_throttle_quiet_period_forgives(brake: LoginThrottle, clock: FakeClock) -> None:
    _fail(brake, "alice", A, MAX_FAILURES - 1)
    clock.advance(LOCKOUT_S + 1)
    assert brake.begin("alice", A) == 1  # counting starts over
    assert not _locked(brake, "alice", A)


# --- counted when they start ----------------------------------------------------------


def test_throttle_attempts_in_flight_count_before_their_check(brake: LoginThrottle) -> None:
    """Begun but not yet answered: the next one is refused without a check."""
    assert [brake.begin("alice", A) for _ in range(MAX_FAILURES)] == [1, 2, 3]
    with pytest.raises(TooManyAttemptsError):
        brake.begin("alice", A)


def test_throttle_parallel_burst_gets_max_failures_checks(clock: FakeClock) -> None:
    brake = LoginThrottle(5, LOCKOUT_S, 0.0, clock=clock)
    barrier = threading.Barrier(31)
    allowed, refused = [], []

    def guess() -> None:
        barrier.wait(timeout=10)
        try:
            allowed.append(brake.begin("alice", A))
        except TooManyAttemptsError:
            refused.append(1)

    threads = [threading.Thread(target=guess) for _ in range(31)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert sorted(allowed) == [1, 2, 3, 4, 5]
    assert len(refused) == 26


def test_throttle_success_clears_its_pair_even_at_the_limit(brake: LoginThrottle) -> None:
    _fail(brake, "alice", A, MAX_FAILURES - 1)
    brake.begin("alice", A)  # the last allowed attempt: the pair is locked behind it...
    assert _locked(brake, "alice", A)
    brake.succeeded("alice", A)  # ...and it was the right password
    assert not _locked(brake, "alice", A)
    assert brake.begin("alice", A) == 1


def test_throttle_success_gives_the_address_its_attempt_back(brake: LoginThrottle) -> None:
    _fail(brake, "mallory", A, 2)
    for _ in range(3 * PER_IP):  # a busy office: logins all day from one address
        brake.begin("alice", A)
        brake.succeeded("alice", A)
    assert not _locked(brake, "bob", A)
    assert brake._addresses[A].attempts == 2  # the failures are kept


def test_throttle_success_at_the_address_limit_lifts_that_lock(brake: LoginThrottle) -> None:
    for i in range(PER_IP - 1):
        _fail(brake, f"user{i}", A)
    brake.begin("alice", A)  # the PER_IP-th attempt locks the address behind it
    assert _locked(brake, "bob", A)
    brake.succeeded("alice", A)  # it was no failure: PER_IP - 1 failures lock nothing
    assert not _locked(brake, "bob", A)
    _fail(brake, "bob", A)
    assert _locked(brake, "carol", A)


# --- lifting locks without a restart --------------------------------------------------


def test_throttle_unlock_user_lifts_every_pair_of_that_name(brake: LoginThrottle) -> None:
    _fail(brake, "alice", A, MAX_FAILURES)
    _fail(brake, "alice", B, MAX_FAILURES)
    _fail(brake, "alice", "10.0.0.3")  # one failure: forgotten, not a lock
    _fail(brake, "mallory", B, MAX_FAILURES)
    _fail(brake, "bob", A, MAX_FAILURES - 1)
    lifted = brake.unlock_user("alice")
    assert lifted.unlocked == (A, B)
    assert lifted.cleared == 3
    assert lifted.addresses_locked == ()
    assert not _locked(brake, "alice", A) and not _locked(brake, "alice", B)
    assert brake.begin("alice", "10.0.0.3") == 1
    assert _locked(brake, "mallory", B)  # other names keep their locks and counts
    _fail(brake, "bob", A)
    assert _locked(brake, "bob", A)


def test_throttle_unlock_user_names_addresses_still_locked(brake: LoginThrottle) -> None:
    _fail(brake, "alice", A)
    for i in range(PER_IP - 1):
        _fail(brake, f"user{i}", A)
    assert _locked(brake, "alice", A)
    lifted = brake.unlock_user("alice")
    assert (lifted.unlocked, lifted.cleared, lifted.addresses_locked) == ((), 1, (A,))
    assert _locked(brake, "alice", A)  # the address lock holds every name


def test_throttle_unlock_unknown_user_does_nothing(brake: LoginThrottle) -> None:
    _fail(brake, "alice", A, MAX_FAILURES)
    lifted = brake.unlock_user("nobody")
    assert (lifted.unlocked, lifted.cleared, lifted.addresses_locked) == ((), 0, ())
    assert _locked(brake, "alice", A)


def test_throttle_clear_lifts_every_lock(brake: LoginThrottle) -> None:
    _fail(brake, "alice", A, MAX_FAILURES)
    for i in range(PER_IP):
        _fail(brake, f"user{i}", B)
    _fail(brake, "bob", "10.0.0.3")
    assert brake.clear() == 2  # alice at A, and the address B
    assert not _locked(brake, "alice", A) and not _locked(brake, "x", B)
    assert brake.begin("bob", "10.0.0.3") == 1


# --- memory ---------------------------------------------------------------------------


def test_throttle_long_names_share_one_key(brake: LoginThrottle) -> None:
    for i in range(MAX_FAILURES):
        _fail(brake, "x" * 200 + str(i), A)  # no user has a name this long
    assert len(brake._pairs) == 1
    assert _locked(brake, "x" * 300, A)


def test_throttle_prune_drops_stale_entries(
    monkeypatch: pytest.MonkeyPatch, brake: LoginThrottle, clock: FakeClock
) -> None:
    monkeypatch.setattr(throttle, "_MAX_KEYS", 100)
    for i in range(40):
        _fail(brake, f"user{i}", f"10.0.{i}.1")
    assert len(brake._pairs) == len(brake._addresses) == 40
    clock.advance(LOCKOUT_S + 1)
    for i in range(61):  # the 61st goes over the cap: stale entries go first
        _fail(brake, f"fresh{i}", f"10.9.9.{i}")
    assert len(brake._pairs) == len(brake._addresses) == 61  # every fresh one kept
    assert brake.begin("user0", "10.0.0.1") == 1


def test_throttle_spray_of_fresh_keys_stays_under_a_hard_cap(
    monkeypatch: pytest.MonkeyPatch, brake: LoginThrottle
) -> None:
    """Thousands of new addresses inside one lockout window: the oldest are evicted."""
    monkeypatch.setattr(throttle, "_MAX_KEYS", 100)
    for i in range(1000):
        _fail(brake, f"user{i}", f"2001:db8::{i:x}")
        assert len(brake._pairs) <= 100 and len(brake._addresses) <= 100
    assert not _locked(brake, "user999", "2001:db8::3e7")  # one failure locks nothing


def test_throttle_prune_keeps_memory_bounded_over_time(
    monkeypatch: pytest.MonkeyPatch, brake: LoginThrottle, clock: FakeClock
) -> None:
    """A steady spray of new names and addresses, slower than the cap per lockout period."""
    monkeypatch.setattr(throttle, "_MAX_KEYS", 100)
    peak = 0
    for i in range(5000):
        _fail(brake, f"user{i}", f"10.{i // 256 % 256}.{i % 256}.1")
        clock.advance(LOCKOUT_S / 20)
        peak = max(peak, len(brake._pairs), len(brake._addresses))
    assert peak <= 100


def test_throttle_prune_keeps_locks(
    monkeypatch: pytest.MonkeyPatch, brake: LoginThrottle, clock: FakeClock
) -> None:
    monkeypatch.setattr(throttle, "_MAX_KEYS", 10)
    _fail(brake, "alice", A, MAX_FAILURES)
    clock.advance(LOCKOUT_S / 2)
    for i in range(20):
        _fail(brake, f"user{i}", f"10.1.0.{i}")
    assert _locked(brake, "alice", A)


def test_throttle_threads_count_every_attempt(clock: FakeClock) -> None:
    brake = LoginThrottle(1000, LOCKOUT_S, 0.001, clock=clock, max_failures_per_ip=1000)
    barrier = threading.Barrier(8)

    def hammer() -> None:
        barrier.wait(timeout=10)
        for _ in range(100):
            brake.begin("alice", A)

    threads = [threading.Thread(target=hammer) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert brake._pairs[("alice", A)].attempts == 800
    assert brake._addresses[A].attempts == 800


# --- colleagues logging in at once ----------------------------------------------------


def test_throttle_concurrent_right_passwords_all_get_in(clock: FakeClock) -> None:
    """100 sessions of one user from one address at once (a backup tool, an office
    behind NAT): the attempts beyond the limits wait for the ones being checked, and
    each success lets the next ones in; nobody is refused."""
    brake = LoginThrottle(5, LOCKOUT_S, 0.0, clock=clock, max_failures_per_ip=20, wait_s=30)
    barrier = threading.Barrier(100)
    refused: list[int] = []

    def login() -> None:
        barrier.wait(timeout=10)
        try:
            brake.begin("alice", A)
        except TooManyAttemptsError:
            refused.append(1)
            return
        brake.succeeded("alice", A)

    threads = [threading.Thread(target=login) for _ in range(100)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert refused == []
    assert not _locked(brake, "alice", A)


def test_throttle_waiting_burst_of_wrong_guesses_gets_max_failures_checks(
    clock: FakeClock,
) -> None:
    """With waiting on, a parallel burst still gets exactly max_failures checks: the
    waiters are refused as soon as the checked ones are known to have failed."""
    brake = LoginThrottle(5, LOCKOUT_S, 0.0, clock=clock, wait_s=30)
    barrier = threading.Barrier(31)
    allowed: list[int] = []
    refused: list[int] = []

    def guess() -> None:
        barrier.wait(timeout=10)
        try:
            allowed.append(brake.begin("alice", A))
        except TooManyAttemptsError:
            refused.append(1)
            return
        brake.failed("alice", A)

    threads = [threading.Thread(target=guess) for _ in range(31)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert sorted(allowed) == [1, 2, 3, 4, 5]
    assert len(refused) == 26
    assert _locked(brake, "alice", A)
