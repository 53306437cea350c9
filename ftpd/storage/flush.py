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
shorter too.  Where ``syncfs`` is missing (not Linux) each caller ``fsync``s its own
descriptors: correct, only not shared.

This module must never release a waiter early: a caller joins a flush that has not
started yet (after its writes), and is released only when that very flush has ended.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
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
        self.error: OSError | None = None


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
        except OSError as exc:
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


def flush(fds: Iterable[int]) -> None:
    """Make durable everything written so far on the file systems of ``fds`` (files
    or folders): one shared flush per file system, or ``fsync`` of each without
    ``syncfs``."""
    if _libc is None:  # pragma: no cover - not Linux
        for fd in fds:
            os.fsync(fd)
        return
    by_dev: dict[int, int] = {}
    for fd in fds:
        by_dev.setdefault(os.fstat(fd).st_dev, fd)
    for dev, fd in by_dev.items():
        flusher(dev).flush(fd)
