"""Raw limits for small operations, and the settle step before every big timed one.

Its one job: give ``run.py`` the machine's floor for what the daemon does per request
(create + write + rename of a small file, durable one by one or a group at a time; a
loopback ping-pong between two processes), and the same memory state before each timed
1 GiB step, raw or daemon.
rawlimits.py owns the big-throughput limits; this module only wraps them.  It must never
leave a file behind outside the directory it is given.
"""

from __future__ import annotations

import ctypes
import multiprocessing as mp
import os
import socket
import time
from pathlib import Path
from typing import Any

import rawlimits

MiB = 1 << 20


def settle(tmp: Path, size: int) -> None:
    """Put the machine in the same state before every timed big transfer, raw or daemon.

    Flush dirty pages (no writeback from an earlier step), then write and delete
    2 x ``size`` so the step's page-cache writes reuse freshly freed pages.  On a VM with
    free page reporting (this one) untouched memory costs a host fault per page; without
    this, the same 1 GiB get measured anywhere between 270 and 530 MB/s.
    """
    os.sync()
    zeros, path = bytes(16 * MiB), tmp / "settle.bin"
    with open(path, "wb") as f:
        for _ in range(2 * size // len(zeros)):
            f.write(zeros)
    path.unlink()


def raw_limits(tmp: Path, size: int) -> dict[str, float]:
    """md5 hashing and the bare loopback limit (sendfile -> recv_into), each big step after
    ``settle``.  The verified limits are measured by ``run.py`` right beside each of our
    transfers (``rawlimits.loopback_verified_limit``)."""
    res = {"md5_MBps": rawlimits.digest_throughput("md5", size)}
    settle(tmp, size)
    res["loopback_raw_MBps"] = rawlimits.loopback_raw_limit(size)
    return res


def raw_small_files(tmp: Path, count: int, fsync: bool) -> float:
    """files/s of a bare create + write 4 KiB + close + rename loop; with ``fsync``, durable
    one by one as an upload is: fsync of the file before the rename, of the folder after."""
    folder, data = tmp / f"raw-small-{fsync}", os.urandom(4096)
    folder.mkdir()
    os.sync()
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        t0 = time.perf_counter()
        for i in range(count):
            fd = os.open(folder / f"p{i}", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            os.write(fd, data)
            if fsync:
                os.fsync(fd)
            os.close(fd)
            os.replace(folder / f"p{i}", folder / f"f{i}")
            if fsync:
                os.fsync(dir_fd)
        return count / (time.perf_counter() - t0)
    finally:
        os.close(dir_fd)


def _syncfs(fd: int) -> None:
    """syncfs(2): flush every dirty page and inode of the file system holding ``fd``."""
    if ctypes.CDLL(None, use_errno=True).syncfs(fd) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def raw_small_files_grouped(tmp: Path, count: int, group: int = 32) -> float:
    """files/s of the same loop made durable ``group`` files at a time by one syncfs: the
    floor for uploads that share their flushes (group commit)."""
    folder, data = tmp / "raw-small-grouped", os.urandom(4096)
    folder.mkdir()
    os.sync()
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        t0 = time.perf_counter()
        for i in range(count):
            fd = os.open(folder / f"p{i}", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            os.write(fd, data)
            os.close(fd)
            os.replace(folder / f"p{i}", folder / f"f{i}")
            if (i + 1) % group == 0 or i + 1 == count:
                _syncfs(dir_fd)
        return count / (time.perf_counter() - t0)
    finally:
        os.close(dir_fd)


def _echo(ports: Any) -> None:
    """The other end of raw_round_trips: answer every small message with 100 bytes."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        ports.put(listener.getsockname()[1])
        conn, _ = listener.accept()
    with conn:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        while conn.recv(65536):
            conn.sendall(b"r" * 100)


def raw_round_trips(count: int = 2000) -> float:
    """Round trips/s of 100-byte ping-pong between two Python processes over loopback.

    The median of 5 batches after a warm-up one: a short run often has both processes on
    one vCPU (~6 us a round trip here); the scheduler soon spreads them, and a wake-up
    across vCPUs of this VM costs ~40 us each way.  The spread state is the steady one.
    """
    ctx = mp.get_context("spawn")
    ports = ctx.Queue()
    echo = ctx.Process(target=_echo, args=(ports,))
    echo.start()
    with socket.create_connection(("127.0.0.1", ports.get(timeout=30)), timeout=30) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        rates = []
        for _ in range(6):
            t0 = time.perf_counter()
            for _ in range(count):
                sock.sendall(b"q" * 100)
                sock.recv(65536)  # strictly alternating, so one recv is one answer
            rates.append(count / (time.perf_counter() - t0))
        rate = sorted(rates[1:])[2]
    echo.join(10)
    return rate
