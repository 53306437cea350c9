"""A listing's memory is bounded whatever the folder's size (issue 9): one `ls` of
100,000 entries adds less than 16 MiB to the daemon, and a client that does not read
its answer holds no more than that."""

from __future__ import annotations

import os
import socket
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import PASSWORDS, RunningServer
from tests.support import LogRecords, call, frame, read_frame, recv_exact

ENTRIES = 100_000
LIMIT = 16 * 1024 * 1024


@pytest.fixture(scope="module")
def big_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """100,000 empty files, made once for the module (by descriptor: fast)."""
    folder = tmp_path_factory.mktemp("big") / "many"
    folder.mkdir()
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for i in range(ENTRIES):
            os.close(os.open(f"file-{i:06d}.dat", os.O_CREAT | os.O_WRONLY, 0o644, dir_fd=fd))
    finally:
        os.close(fd)
    return folder


@pytest.fixture
def many(server: RunningServer, big_folder: Path) -> Iterator[socket.socket]:
    """A logged-in raw socket for alice, with the big folder moved into her home (a link
    to it would lead out of the home and be refused); it is moved back out afterwards."""
    home = server.project.home("alice")
    home.mkdir(parents=True, exist_ok=True)
    inside = home / "many"
    os.rename(big_folder, inside)
    sock = server.raw(timeout=30)
    try:
        read_frame(sock)
        assert call(sock, "login", user="alice", password=PASSWORDS["alice"])["ok"]
        yield sock
    finally:
        sock.close()
        os.rename(inside, big_folder)


def test_listing_of_100000_entries_adds_less_than_16_mib(many: socket.socket) -> None:
    tracemalloc.start()
    try:
        many.sendall(frame({"cmd": "ls", "args": {"path": "many"}}))
        header = read_frame(many)
        assert header["ok"] and header["data"]["count"] == ENTRIES
        left = header["body"]
        while left:  # read and drop: the client keeps nothing
            left -= len(recv_exact(many, min(left, 1 << 20)))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < LIMIT, f"{peak / 2**20:.1f} MiB"


def test_listing_to_a_client_that_does_not_read_holds_little(
    many: socket.socket, log_records: LogRecords
) -> None:
    many.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    tracemalloc.start()
    try:
        mark = log_records.mark()
        many.sendall(frame({"cmd": "ls", "args": {"path": "many"}}))
        # The answer's header is sent (and its line logged) once the whole listing is
        # spooled; from then on the daemon only waits for this client to read.
        log_records.wait_for(r"CMD .* ls path=many -> 200", timeout=60, start=mark)
        current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < LIMIT, f"peak {peak / 2**20:.1f} MiB"
    assert current < 4 * 1024 * 1024, f"held {current / 2**20:.1f} MiB"
