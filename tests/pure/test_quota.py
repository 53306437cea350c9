"""Pure tests of the quota: counting a home on disk, and ledger reservations under threads.

``LocalTree.usage`` counts (bytes, entries, complete); ``LocalLedger`` keeps those counts
for one user and hands out reservations checked against ``Limits``.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from ftpd.errors import QuotaExceededError
from ftpd.state.base import Limits, Usage
from ftpd.state.local import LocalLedger, LocalReservation
from ftpd.storage.local import LocalTree


def _file(path: Path, size: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * size)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    root = tmp_path / "home" / "alice"
    root.mkdir(parents=True)
    return root


def _ledger(home: Path) -> LocalLedger:
    return LocalLedger(LocalTree(home).usage)


def test_quota_scan_counts_nested_files(home: Path) -> None:
    _file(home / "a", 10)
    _file(home / "d" / "b", 20)
    _file(home / "d" / "e" / "f" / "c", 30)
    _file(home / "d" / "empty", 0)
    (home / "emptydir").mkdir()
    _file(home / ".ftpd" / "partial" / "p", 40)  # partial uploads count too (bytes only)
    _file(home / "文件" / "😀", 5)
    # a, d, d/b, d/e, d/e/f, d/e/f/c, d/empty, emptydir, 文件, 文件/😀
    assert LocalTree(home).usage() == (105, 10, True)


def test_quota_scan_does_not_follow_symlinks(home: Path, tmp_path: Path) -> None:
    _file(tmp_path / "outside" / "big", 10_000)
    _file(home / "small", 7)
    (home / "link_file").symlink_to(tmp_path / "outside" / "big")
    (home / "link_dir").symlink_to(tmp_path / "outside")
    (home / "link_self").symlink_to(home)
    (home / "link_inside").symlink_to(home / "small")
    (home / "dangling").symlink_to(home / "nowhere")
    assert LocalTree(home).usage() == (7, 6, True)  # the links are entries, not bytes


def test_quota_scan_missing_root_is_zero(tmp_path: Path) -> None:
    assert LocalTree(tmp_path / "nope").usage() == (0, 0, True)


def test_quota_scan_ignores_fifo_bytes(home: Path) -> None:
    os.mkfifo(home / "pipe")
    _file(home / "f", 3)
    assert LocalTree(home).usage() == (3, 2, True)


def test_quota_scan_unreadable_folder_is_incomplete(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _file(home / "a", 10)
    _file(home / "locked" / "b", 20)
    real_scandir = os.scandir

    def scandir(path: object) -> object:
        if isinstance(path, int) and os.readlink(f"/proc/self/fd/{path}").endswith("/locked"):
            raise PermissionError(13, "Permission denied")
        return real_scandir(path)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "scandir", scandir)
    nbytes, entries, complete = LocalTree(home).usage()
    assert (nbytes, entries, complete) == (10, 2, False)  # "a" and "locked", not "b"


def test_quota_ledger_counts_disk_lazily(home: Path) -> None:
    ledger = _ledger(home)
    _file(home / "a", 100)  # written before the first question: counted
    assert ledger.usage() == Usage(100, 0, 1, 0)
    _file(home / "b", 50)  # not the daemon's doing: seen only on recount
    assert ledger.usage() == Usage(100, 0, 1, 0)
    assert ledger.recount() is True
    assert ledger.usage() == Usage(150, 0, 2, 0)


def test_quota_reserve_and_close(home: Path) -> None:
    _file(home / "a", 100)
    ledger = _ledger(home)
    held = ledger.reserve(400, 1, Limits(1000))
    assert isinstance(held, LocalReservation) and (held.nbytes, held.entries) == (400, 1)
    assert ledger.usage() == Usage(100, 400, 1, 1)
    held.close(300, 1)  # wrote less than reserved
    assert ledger.usage() == Usage(400, 0, 2, 0)
    held.close(300, 1)  # once only
    assert ledger.usage() == Usage(400, 0, 2, 0)


def test_quota_reservation_as_context_manager_gives_back(home: Path) -> None:
    ledger = _ledger(home)
    with ledger.reserve(10, 1, Limits(100, 5)):
        assert ledger.usage() == Usage(0, 10, 0, 1)
    assert ledger.usage() == Usage(0, 0, 0, 0)


def test_quota_reserve_up_to_exact_limit(home: Path) -> None:
    _file(home / "a", 100)
    ledger = _ledger(home)
    ledger.reserve(900, 0, Limits(1000))
    with pytest.raises(QuotaExceededError):
        ledger.reserve(1, 0, Limits(1000))
    ledger.reserve(0, 0, Limits(1000))


def test_quota_exceeded_carries_available(home: Path) -> None:
    _file(home / "a", 100)
    ledger = _ledger(home)
    ledger.reserve(300, 0, Limits(1000))
    with pytest.raises(QuotaExceededError) as info:
        ledger.reserve(601, 0, Limits(1000))
    exc = info.value
    assert (exc.code, exc.name) == (413, "quota_exceeded")
    assert exc.data == {"available": 600, "limit": 1000, "used": 100}
    assert ledger.usage() == Usage(100, 300, 1, 0)  # the refusal held nothing


def test_quota_available_never_negative(home: Path) -> None:
    _file(home / "a", 2000)  # over the limit already (e.g. the admin lowered it)
    ledger = _ledger(home)
    with pytest.raises(QuotaExceededError) as info:
        ledger.reserve(1, 0, Limits(1000))
    assert info.value.data["available"] == 0


def test_quota_unlimited(home: Path) -> None:
    ledger = _ledger(home)
    ledger.reserve(1 << 50, 1 << 40, Limits())
    assert ledger.usage() == Usage(0, 1 << 50, 0, 1 << 40)


def test_quota_grow_skips_limit_check(home: Path) -> None:
    ledger = _ledger(home)
    held = ledger.reserve(1000, 0, Limits(1000))
    held.grow(200)  # bytes the same upload just freed (e.g. replacing a file)
    assert held.nbytes == 1200
    assert ledger.usage() == Usage(0, 1200, 0, 0)
    held.close(1100, 0)
    assert ledger.usage() == Usage(1100, 0, 0, 0)


def test_quota_adjust(home: Path) -> None:
    _file(home / "a", 100)
    ledger = _ledger(home)
    ledger.usage()
    ledger.adjust(+50, +2)
    assert ledger.usage() == Usage(150, 0, 3, 0)
    ledger.adjust(-1000, -1000)
    assert ledger.usage() == Usage(0, 0, 0, 0)


def test_quota_adjust_before_first_count_is_not_double_counted(home: Path) -> None:
    ledger = _ledger(home)
    _file(home / "a", 100)
    ledger.adjust(+100, +1)  # the daemon wrote "a" before the ledger ever counted
    assert ledger.usage() == Usage(100, 0, 1, 0)


def test_quota_concurrent_reservations_never_exceed_limit(home: Path) -> None:
    _file(home / "existing", 10)
    ledger = _ledger(home)
    limit, chunk, threads_n = 1000, 7, 8
    barrier = threading.Barrier(threads_n)
    granted: list[int] = []
    refused: list[int] = []
    lock = threading.Lock()

    def worker() -> None:
        barrier.wait(timeout=10)
        for _ in range(50):
            try:
                ledger.reserve(chunk, 0, Limits(limit))
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
    assert ledger.usage() == Usage(10, sum(granted), 1, 0)


def test_quota_concurrent_entry_reservations_never_exceed_max_files(home: Path) -> None:
    _file(home / "existing", 1)
    ledger = _ledger(home)
    max_files, threads_n = 100, 8
    barrier = threading.Barrier(threads_n)
    granted = [0] * threads_n

    def worker(n: int) -> None:
        barrier.wait(timeout=10)
        for _ in range(30):
            held = ledger.reserve(0, 0, Limits(None, max_files))
            try:
                held.take_entries(1)
            except QuotaExceededError:
                held.close(0, 0)
            else:
                granted[n] += 1
                held.close(0, 1)  # a folder made

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(threads_n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
        assert not t.is_alive()
    assert sum(granted) == max_files - 1
    assert ledger.usage() == Usage(0 + 1, 0, max_files, 0)


def test_quota_concurrent_reserve_close_cycles_balance(home: Path) -> None:
    ledger = _ledger(home)
    limit = 10_000
    barrier = threading.Barrier(8)
    peaks: list[int] = []
    entry_peaks: list[int] = []

    def worker(n: int) -> None:
        barrier.wait(timeout=10)
        for _ in range(200):
            try:
                held = ledger.reserve(100 + n, 1, Limits(limit, 4))
            except QuotaExceededError:
                continue
            usage = ledger.usage()
            peaks.append(usage.used + usage.reserved)
            entry_peaks.append(usage.entries + usage.reserved_entries)
            held.close(0, 0)  # an aborted upload: nothing written

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert ledger.usage() == Usage(0, 0, 0, 0)
    assert max(peaks) <= limit
    assert max(entry_peaks) <= 4
