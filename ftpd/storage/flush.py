"""Group commit: uploads that finish close together share one flush of the disk.

An upload is answered "stored" only when its bytes and its name are durable.  Flushing
each file on its own (``fsync`` of the file, then of its folder) costs a journal commit
and a disk cache flush per file: about 1,000 files/s on a good virtual disk, whatever
the CPU.  Databases meet the same wall and answer it with group commit; so do we.

Every upload that needs durability calls ``flush(fds)``.  Per file system (``st_dev``)
one ``Flusher`` elects a leader among the threads that ask: the leader runs one
``syncfs(2)``, which makes *everything* written on that file system before the call
durable (data, inodes and folder entries), and releases every thread that asked before
it started.  Threads that ask while it runs are served by the next flush, led by one of
them.  So N sessions committing at once pay for about two flushes, not N, and a session
that commits a batch of pipelined uploads (``ftpd.framed`` does, see
``commit_many`` in ``ftpd.storage.local``) pays for two per batch.

``syncfs`` also writes back other files' dirty data, e.g. a large upload in progress;
uploads start the writeback of what they receive as they go (``start_writeback``), so
little is ever left for a flush to wait on, and a large upload's own final flush is
shorter too (data dirtied by other programs on the same file system still counts: keep
the homes on a file system of their own).  A ``syncfs`` reports write-back errors by
file system, and only those after the descriptor it was given was opened, so after it
each file's own error state is read too (``sync_file_range``, which waits on nothing
by then).  Where ``syncfs`` is missing (not Linux) or does not report errors (Linux
before 5.8), each caller ``fsync``s its own descriptors: correct, only not shared.

This module must never release a waiter early: a caller joins a flush that has not
started yet (after its writes), and is released only when that very flush has ended.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import stat as stat_mod
import threading
from collections.abc import Iterable
from typing import Any

__all__ = ["Flusher", "flush", "start_writeback", "syncfs"]


def _load_libc() -> ctypes.CDLL | None:
    with contextlib.suppress(OSError):
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        if hasattr(libc, "syncfs"):
            return libc
    return None


_libc = _load_libc()
_SYNC_FILE_RANGE_WRITE = 2
_sync_file_range: Any
if _libc is not None and hasattr(_libc, "sync_file_range"):
    _sync_file_range = _libc.sync_file_range
    _sync_file_range.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    _sync_file_range.restype = ctypes.c_int
else:  # pragma: no cover - not Linux
    _sync_file_range = None


def syncfs(fd: int) -> None:
    """``syncfs(2)``: make everything written on ``fd``'s file system durable."""
    assert _libc is not None
    if _libc.syncfs(fd) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def start_writeback(fd: int, offset: int, nbytes: int) -> None:
    """Start writing ``nbytes`` at ``offset`` of ``fd`` to disk, without waiting
    (``sync_file_range(SYNC_FILE_RANGE_WRITE)``): the final flush then finds little left
    to do, and overlaps the transfer.  Durability still comes from the flush only."""
    if _sync_file_range is not None:
        _sync_file_range(fd, offset, nbytes, _SYNC_FILE_RANGE_WRITE)  # advisory: no errors


class _Round:
    """One flush and the callers it serves: those who asked before it started."""

    __slots__ = ("done", "error")

    def __init__(self) -> None:
        self.done = False
        self.error: BaseException | None = None


class Flusher:
    """The flushes of one file system, shared by every thread that commits on it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._next = _Round()  # gathering callers; starts when the running one ends
        self._running: _Round | None = None
        #: Flushes run and requests served (tests, benchmarks).
        self.flushes = 0
        self.requests = 0

    def flush(self, fd: int) -> None:
        """Return once everything written on ``fd``'s file system before this call is on
        disk.  Raises the OSError of the flush that covered this call, if it failed."""
        with self._changed:
            self.requests += 1
            mine = self._next  # not started yet: it will cover what we wrote
            while not mine.done:
                if self._running is None:
                    self._lead(mine, fd)
                else:
                    self._changed.wait()
            if mine.error is not None:
                raise mine.error

    def _lead(self, round_: _Round, fd: int) -> None:
        """Run ``round_``'s flush (called with the lock held; released meanwhile)."""
        self._next = _Round()
        self._running = round_
        self._lock.release()
        try:
            syncfs(fd)  # looked up at each call: tests record the flushes through it
        except BaseException as exc:  # whatever it is, nobody in the round is durable
            round_.error = exc
        finally:
            self._lock.acquire()
            round_.done = True
            self._running = None
            self.flushes += 1
            self._changed.notify_all()


_flushers: dict[int, Flusher] = {}
_flushers_lock = threading.Lock()


def flusher(dev: int) -> Flusher:
    """The one ``Flusher`` of the file system ``dev``."""
    with _flushers_lock:
        found = _flushers.get(dev)
        if found is None:
            found = _flushers[dev] = Flusher()
        return found


def _kernel_reports_syncfs_errors() -> bool:
    """Linux 5.8 and later report write-back errors from ``syncfs``; before, only
    ``fsync`` of each file does."""
    try:
        major, minor = (int(x) for x in os.uname().release.split(".")[:2])
    except ValueError:
        return False
    return (major, minor) >= (5, 8)


#: Whether flushes are shared (``syncfs``) or each descriptor is ``fsync``ed.
SHARED = _libc is not None and _kernel_reports_syncfs_errors()
_WAIT_ALL = 1 | 2 | 4  # SYNC_FILE_RANGE_WAIT_BEFORE | WRITE | WAIT_AFTER


def _check_written(fd: int) -> None:
    """Raise the write-back error of this file, if its pages failed to reach the disk
    (after the shared flush has written them, this only waits on nothing and reads
    the file's own error state: a ``syncfs`` reports errors by file system, and only
    those that happened after the descriptor it was given was opened)."""
    if _sync_file_range is not None and _sync_file_range(fd, 0, 0, _WAIT_ALL) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def flush(fds: Iterable[int]) -> None:
    """Make durable everything written so far on the file systems of ``fds`` (files
    or folders): one shared flush per file system, then each file's own write-back
    error checked; or ``fsync`` of each where ``syncfs`` cannot be trusted to report
    errors (not Linux, Linux before 5.8)."""
    if not SHARED:
        for fd in fds:
            os.fsync(fd)
        return
    by_dev: dict[int, list[int]] = {}
    files: list[int] = []
    for fd in fds:
        st = os.fstat(fd)
        by_dev.setdefault(st.st_dev, []).append(fd)
        if stat_mod.S_ISREG(st.st_mode):
            files.append(fd)
    for dev, group in by_dev.items():
        flusher(dev).flush(group[0])
    for fd in files:
        _check_written(fd)
