"""Pure tests of the login brake with an injected clock: no sleeps anywhere."""

from __future__ import annotations

import threading

import pytest

from ftpd.accounts import throttle
from ftpd.errors import TooManyAttemptsError
from ftpd.accounts.throttle import LoginThrottle

MAX_FAILURES, LOCKOUT_S, DELAY_S = 3, 60.0, 0.5


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
    return LoginThrottle(MAX_FAILURES, LOCKOUT_S, DELAY_S, clock=clock)


def _locked(brake: LoginThrottle, user: str, ip: str) -> bool:
    try:
        brake.check(user, ip)
    except TooManyAttemptsError:
        return True
    return False


def test_throttle_delays_double_then_cap(clock: FakeClock) -> None:
    brake = LoginThrottle(100, LOCKOUT_S, 1.0, clock=clock)
    delays = [brake.failed("alice", "10.0.0.1") for _ in range(8)]
    assert delays == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0, 10.0, 10.0]


def test_throttle_fresh_start_allows(brake: LoginThrottle) -> None:
    brake.check("alice", "10.0.0.1")


def test_throttle_locks_user_after_max_failures(brake: LoginThrottle) -> None:
    for i in range(MAX_FAILURES - 1):
        brake.failed("alice", f"10.0.0.{i}")  # each failure from a new address
        assert not _locked(brake, "alice", "10.9.9.9")
    brake.failed("alice", "10.0.0.99")
    assert _locked(brake, "alice", "10.9.9.9")  # the name is locked from anywhere
    assert not _locked(brake, "bob", "10.9.9.8")  # others unaffected
    assert not _locked(brake, "bob", "10.0.0.1")  # those addresses failed only once each


def test_throttle_locks_ip_after_max_failures(brake: LoginThrottle) -> None:
    for i in range(MAX_FAILURES - 1):
        brake.failed(f"user{i}", "10.0.0.1")  # a different name each time
        assert not _locked(brake, "somebody", "10.0.0.1")
    brake.failed("user-last", "10.0.0.1")
    assert _locked(brake, "somebody", "10.0.0.1")  # any name from that address
    assert not _locked(brake, "somebody", "10.0.0.2")
    assert not _locked(brake, "user0", "10.0.0.2")


def test_throttle_lock_reports_retry_after(brake: LoginThrottle, clock: FakeClock) -> None:
    for _ in range(MAX_FAILURES):
        brake.failed("alice", "10.0.0.1")
    clock.advance(20.5)
    with pytest.raises(TooManyAttemptsError) as info:
        brake.check("alice", "10.0.0.2")
    assert info.value.code == 429
    assert info.value.data["retry_after"] == 40  # 39.5 s left, rounded up
    assert "40 s" in info.value.message


def test_throttle_lock_expires(brake: LoginThrottle, clock: FakeClock) -> None:
    for _ in range(MAX_FAILURES):
        brake.failed("alice", "10.0.0.1")
    clock.advance(LOCKOUT_S - 0.01)
    assert _locked(brake, "alice", "10.0.0.1")
    clock.advance(0.01)
    assert not _locked(brake, "alice", "10.0.0.1")
    clock.advance(0.01)
    assert not _locked(brake, "alice", "10.0.0.1")


def test_throttle_quiet_period_forgives(brake: LoginThrottle, clock: FakeClock) -> None:
    for _ in range(MAX_FAILURES - 1):
        brake.failed("alice", "10.0.0.1")
    clock.advance(LOCKOUT_S + 1)
    assert brake.failed("alice", "10.0.0.1") == DELAY_S  # counting starts over
    assert not _locked(brake, "alice", "10.0.0.1")


def test_throttle_after_expiry_one_failure_does_not_relock_forever(
    brake: LoginThrottle, clock: FakeClock
) -> None:
    for _ in range(MAX_FAILURES):
        brake.failed("alice", "10.0.0.1")
    clock.advance(LOCKOUT_S + 1)
    brake.failed("alice", "10.0.0.1")
    assert not _locked(brake, "alice", "10.0.0.1")


def test_throttle_success_clears_user_not_ip(brake: LoginThrottle) -> None:
    for i in range(MAX_FAILURES - 1):
        brake.failed("alice", "10.0.0.1")
    brake.succeeded("alice", "10.0.0.1")
    # The name starts over: two more failures from elsewhere do not lock it.
    for i in range(MAX_FAILURES - 1):
        brake.failed("alice", f"10.1.0.{i}")
    assert not _locked(brake, "alice", "10.2.0.1")
    # The address kept its record: one more failure from it locks it.
    brake.failed("bob", "10.0.0.1")
    assert _locked(brake, "carol", "10.0.0.1")


def test_throttle_success_does_not_unlock_locked_ip(brake: LoginThrottle) -> None:
    for i in range(MAX_FAILURES):
        brake.failed(f"u{i}", "10.0.0.1")
    brake.succeeded("u0", "10.0.0.1")
    assert _locked(brake, "u0", "10.0.0.1")


def test_throttle_prune_drops_stale_entries(
    monkeypatch: pytest.MonkeyPatch, brake: LoginThrottle, clock: FakeClock
) -> None:
    monkeypatch.setattr(throttle, "_MAX_KEYS", 100)
    for i in range(40):
        brake.failed(f"user{i}", f"10.0.{i}.1")
    assert len(brake._state) == 80
    clock.advance(LOCKOUT_S + 1)
    for i in range(12):  # the 12th goes over the cap: stale entries go first
        brake.failed(f"fresh{i}", f"10.9.9.{i}")
    assert len(brake._state) == 24  # the 80 stale ones gone, every fresh one kept
    assert not _locked(brake, "user0", "10.0.0.1")


def test_throttle_spray_of_fresh_keys_stays_under_a_hard_cap(
    monkeypatch: pytest.MonkeyPatch, brake: LoginThrottle, clock: FakeClock
) -> None:
    """Thousands of new addresses inside one lockout window: the oldest are evicted."""
    monkeypatch.setattr(throttle, "_MAX_KEYS", 100)
    for i in range(1000):
        brake.failed(f"user{i}", f"2001:db8::{i:x}")
        assert len(brake._state) <= 100 + 2
    assert _locked(brake, "user999", "2001:db8::3e7") is False  # one failure locks nothing


def test_throttle_prune_keeps_memory_bounded_over_time(
    monkeypatch: pytest.MonkeyPatch, brake: LoginThrottle, clock: FakeClock
) -> None:
    """A steady spray of new names and addresses, slower than the cap per lockout period."""
    monkeypatch.setattr(throttle, "_MAX_KEYS", 100)
    peak = 0
    for i in range(5000):
        brake.failed(f"user{i}", f"10.{i // 256 % 256}.{i % 256}.1")
        clock.advance(LOCKOUT_S / 20)  # 20 failures (40 keys) per lockout period
        peak = max(peak, len(brake._state))
    assert peak <= 100 + 2


def test_throttle_prune_keeps_locks(
    monkeypatch: pytest.MonkeyPatch, brake: LoginThrottle, clock: FakeClock
) -> None:
    monkeypatch.setattr(throttle, "_MAX_KEYS", 10)
    for _ in range(MAX_FAILURES):
        brake.failed("alice", "10.0.0.1")
    clock.advance(LOCKOUT_S / 2)
    for i in range(20):
        brake.failed(f"user{i}", f"10.1.0.{i}")
    assert _locked(brake, "alice", "10.5.5.5")


def test_throttle_threads_count_every_failure(clock: FakeClock) -> None:
    brake = LoginThrottle(1000, LOCKOUT_S, 0.001, clock=clock)
    barrier = threading.Barrier(8)

    def hammer() -> None:
        barrier.wait(timeout=10)
        for _ in range(100):
            brake.failed("alice", "10.0.0.1")

    threads = [threading.Thread(target=hammer) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert brake._state[("user", "alice")][0] == 800
    assert brake._state[("ip", "10.0.0.1")][0] == 800
