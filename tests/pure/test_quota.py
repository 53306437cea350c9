"""Pure tests of the quota ledger: counting bytes on disk, and reservations under threads."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from ftpd.errors import QuotaExceededError
from ftpd.quota import QuotaLedger, Reservation, scan_usage


def _file(path: Path, size: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * size)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    root = tmp_path / "home" / "alice"
    root.mkdir(parents=True)
    return root


def test_quota_scan_counts_nested_files(home: Path) -> None:
    _file(home / "a", 10)
    _file(home / "d" / "b", 20)
    _file(home / "d" / "e" / "f" / "c", 30)
    _file(home / "d" / "empty", 0)
    (home / "emptydir").mkdir()
    _file(home / ".ftpd" / "partial" / "p", 40)  # partial uploads count too
    _file(home / "文件" / "😀", 5)
    assert scan_usage(home) == 105


def test_quota_scan_does_not_follow_symlinks(home: Path, tmp_path: Path) -> None:
    _file(tmp_path / "outside" / "big", 10_000)
    _file(home / "small", 7)
    (home / "link_file").symlink_to(tmp_path / "outside" / "big")
    (home / "link_dir").symlink_to(tmp_path / "outside")
    (home / "link_self").symlink_to(home)
    (home / "link_inside").symlink_to(home / "small")
    (home / "dangling").symlink_to(home / "nowhere")
    assert scan_usage(home) == 7


def test_quota_scan_missing_root_is_zero(tmp_path: Path) -> None:
    assert scan_usage(tmp_path / "nope") == 0


def test_quota_scan_ignores_fifo(home: Path) -> None:
    os.mkfifo(home / "pipe")
    _file(home / "f", 3)
    assert scan_usage(home) == 3


def test_quota_ledger_counts_disk_lazily(home: Path) -> None:
    ledger = QuotaLedger(home)
    _file(home / "a", 100)  # written before the first question: counted
    assert ledger.usage() == (100, 0)
    _file(home / "b", 50)  # not the daemon's doing: seen only on rescan
    assert ledger.usage() == (100, 0)
    assert ledger.usage(rescan=True) == (150, 0)


def test_quota_reserve_and_close(home: Path) -> None:
    _file(home / "a", 100)
    ledger = QuotaLedger(home)
    held = ledger.reserve(400, limit=1000)
    assert isinstance(held, Reservation) and held.nbytes == 400
    assert ledger.usage() == (100, 400)
    held.close(300)  # wrote less than reserved
    assert ledger.usage() == (400, 0)
    held.close(300)  # once only
    assert ledger.usage() == (400, 0)


def test_quota_reserve_up_to_exact_limit(home: Path) -> None:
    _file(home / "a", 100)
    ledger = QuotaLedger(home)
    ledger.reserve(900, limit=1000)
    with pytest.raises(QuotaExceededError):
        ledger.reserve(1, limit=1000)
    ledger.reserve(0, limit=1000)


def test_quota_exceeded_carries_available(home: Path) -> None:
    _file(home / "a", 100)
    ledger = QuotaLedger(home)
    ledger.reserve(300, limit=1000)
    with pytest.raises(QuotaExceededError) as info:
        ledger.reserve(601, limit=1000)
    exc = info.value
    assert (exc.code, exc.name) == (413, "quota_exceeded")
    assert exc.data == {"available": 600, "limit": 1000, "used": 100}
    assert ledger.usage() == (100, 300)  # the refusal held nothing


def test_quota_available_never_negative(home: Path) -> None:
    _file(home / "a", 2000)  # over the limit already (e.g. the admin lowered it)
    ledger = QuotaLedger(home)
    with pytest.raises(QuotaExceededError) as info:
        ledger.reserve(1, limit=1000)
    assert info.value.data["available"] == 0


def test_quota_unlimited(home: Path) -> None:
    ledger = QuotaLedger(home)
    ledger.reserve(1 << 50, limit=None)
    assert ledger.usage() == (0, 1 << 50)


def test_quota_grow_skips_limit_check(home: Path) -> None:
    ledger = QuotaLedger(home)
    held = ledger.reserve(1000, limit=1000)
    held.grow(200)  # bytes the same upload just freed (e.g. replacing a file)
    assert held.nbytes == 1200
    assert ledger.usage() == (0, 1200)
    held.close(1100)
    assert ledger.usage() == (1100, 0)


def test_quota_adjust(home: Path) -> None:
    _file(home / "a", 100)
    ledger = QuotaLedger(home)
    ledger.usage()
    ledger.adjust(+50)
    assert ledger.usage() == (150, 0)
    ledger.adjust(-1000)
    assert ledger.usage() == (0, 0)


def test_quota_adjust_before_first_count_is_not_double_counted(home: Path) -> None:
    ledger = QuotaLedger(home)
    _file(home / "a", 100)
    ledger.adjust(+100)  # the daemon wrote "a" before the ledger ever counted
    assert ledger.usage() == (100, 0)


def test_quota_concurrent_reservations_never_exceed_limit(home: Path) -> None:
    _file(home / "existing", 10)
    ledger = QuotaLedger(home)
    limit, chunk, threads_n = 1000, 7, 8
    barrier = threading.Barrier(threads_n)
    granted: list[int] = []
    refused: list[int] = []
    lock = threading.Lock()

    def worker() -> None:
        barrier.wait(timeout=10)
        for _ in range(50):
            try:
                ledger.reserve(chunk, limit)
            except QuotaExceededError as exc:
                assert 0 <= exc.data["available"] < chunk  # type: ignore[operator]
                with lock:
                    refused.append(chunk)
            else:
                with lock:
                    granted.append(chunk)

    threads = [threading.Thread(target=worker) for _ in range(threads_n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
        assert not t.is_alive()
    assert sum(granted) == (limit - 10) // chunk * chunk  # exactly as many as fit
    assert 10 + sum(granted) <= limit
    assert len(granted) + len(refused) == threads_n * 50
    assert ledger.usage() == (10, sum(granted))


def test_quota_concurrent_reserve_close_cycles_balance(home: Path) -> None:
    ledger = QuotaLedger(home)
    limit = 10_000
    barrier = threading.Barrier(8)
    peaks: list[int] = []

    def worker(n: int) -> None:
        barrier.wait(timeout=10)
        for _ in range(200):
            try:
                held = ledger.reserve(100 + n, limit)
            except QuotaExceededError:
                continue
            used, reserved = ledger.usage()
            peaks.append(used + reserved)
            held.close(0)  # an aborted upload: nothing written

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert ledger.usage() == (0, 0)
    assert max(peaks) <= limit
