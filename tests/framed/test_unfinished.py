"""Unfinished uploads in plain sight (issue 9): shown by ls, stat and quota, given up by
rm, swept after ``partial_ttl``; and a healthy upload is never killed by a second one."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import pytest

from ftpd import errors
from ftpd.core.files import sweep_partials
from ftpd.framed import protocol
from ftpd.storage.local import PARTIAL_DIR
from tests.conftest import RunningServer
from tests.support import wait_until, wait_upload_released

MiB = 1024 * 1024
DAY = 24 * 3600


def partials(home: Path) -> list[Path]:
    folder = home / PARTIAL_DIR
    return sorted(folder.iterdir()) if folder.is_dir() else []


def interrupted(server: RunningServer, name: str, size: int, sent: int) -> None:
    """Leave an upload of ``size`` bytes cut after ``sent`` of them."""
    cut = server.login("alice")
    ready = cut.call("put", path=name, size=size)
    assert ready.code == protocol.READY_FOR_DATA
    cut.send(protocol.Data(size, 0))
    cut.sock.sendall(os.urandom(sent))
    home = server.project.home("alice")
    wait_until(lambda: any(p.stat().st_size == sent for p in partials(home)))
    cut.close()
    wait_upload_released(server.server.runtime, "alice", name)  # its quota settled too


def age(home: Path, seconds: float) -> None:
    """Make every partial look idle for ``seconds``."""
    then = time.time() - seconds
    for path in partials(home):
        os.utime(path, (then, then))


def test_unfinished_upload_is_listed_and_given_up_by_rm(server: RunningServer) -> None:
    interrupted(server, "big.iso", 3 * MiB, MiB)
    conn = server.login("alice")
    before = conn.call("quota").data
    assert before["used"] == MiB and before["partial_bytes"] == MiB
    (entry,) = conn.listdir("/")
    assert (entry["name"], entry["partial"], entry["expected"]) == ("big.iso", MiB, 3 * MiB)
    assert "removed the interrupted upload" in conn.call("rm", path="big.iso").message
    after = conn.call("quota").data
    assert (after["used"], after["partial_bytes"], after["partials"]) == (0, 0, [])
    assert conn.listdir("/") == []
    assert partials(server.project.home("alice")) == []


@pytest.mark.parametrize("asks", ["quota", "ls", "stat"])
def test_unfinished_upload_past_ttl_is_removed_when_its_owner_asks(
    server_factory, log_file: Path, asks: str
) -> None:
    server = server_factory(partial_ttl=DAY)
    interrupted(server, "old.bin", 2 * MiB, MiB)
    home = server.project.home("alice")
    age(home, DAY + 60)
    conn = server.login("alice")
    if asks == "quota":
        data = conn.call("quota").data
        assert (data["used"], data["partial_count"]) == (0, 0)
    elif asks == "ls":
        assert conn.listdir("/") == []
    else:
        with pytest.raises(errors.NotFoundError):
            conn.call("stat", path="old.bin")
    assert partials(home) == []
    assert conn.call("quota").data["used"] == 0
    wait_until(lambda: "PARTIAL EXPIRED user=alice path=/old.bin" in log_file.read_text())


def test_unfinished_upload_younger_than_ttl_is_kept(server_factory) -> None:
    server = server_factory(partial_ttl=DAY)
    interrupted(server, "young.bin", 2 * MiB, MiB)
    home = server.project.home("alice")
    age(home, DAY - 600)
    conn = server.login("alice")
    assert conn.call("quota").data["partial_bytes"] == MiB
    assert len(partials(home)) == 1


def test_sweep_never_removes_an_upload_still_receiving(server_factory) -> None:
    server = server_factory(partial_ttl=60)
    conn = server.login("alice")
    ready = conn.call("put", path="live.bin", size=2 * MiB)
    assert ready.code == protocol.READY_FOR_DATA
    conn.send(protocol.Data(2 * MiB, 0))
    conn.sock.sendall(os.urandom(MiB))
    home = server.project.home("alice")
    wait_until(lambda: any(p.stat().st_size == MiB for p in partials(home)))
    age(home, 3600)  # looks old on disk, but its upload holds the claim
    services = server.server.services
    runtime = services.runtime
    assert sweep_partials(services.accounts.storage, services.ledgers, runtime.claims, 60) == 0
    other = server.login("alice")
    assert other.call("quota").data["partial_bytes"] == MiB  # the owner's view keeps it too
    conn.sock.sendall(os.urandom(MiB))
    conn.send(protocol.End("0" * 32))  # a wrong digest: refused, but it arrived whole
    with pytest.raises(errors.ChecksumError):
        conn.read_response()


def test_daemon_sweeps_idle_partials_periodically(server_factory, log_file: Path) -> None:
    server = server_factory(partial_ttl=DAY)
    interrupted(server, "swept.bin", 2 * MiB, MiB)
    home = server.project.home("alice")
    age(home, 2 * DAY)
    services = server.server.services
    freed = sweep_partials(
        services.accounts.storage, services.ledgers, services.runtime.claims, DAY
    )
    assert freed == MiB and partials(home) == []
    assert server.login("alice").call("quota").data["used"] == 0


def test_healthy_upload_is_never_killed_by_a_second_one(server: RunningServer) -> None:
    """Two cron jobs uploading the same name: the second is told to wait (409), the
    first, still receiving bytes, finishes."""
    data = os.urandom(4 * MiB)
    first = server.login("alice")
    ready = first.call("put", path="job.bin", size=len(data))
    assert ready.code == protocol.READY_FOR_DATA
    first.send(protocol.Data(len(data), 0))
    first.sock.sendall(data[:MiB])
    home = server.project.home("alice")
    wait_until(lambda: any(p.stat().st_size == MiB for p in partials(home)))

    second = server.login("alice")
    with pytest.raises(errors.ConflictError) as info:
        second.call("put", path="job.bin", size=len(data))
    assert "being uploaded by another session" in info.value.message
    assert second.call("pwd").data["cwd"] == "/"  # the refused session goes on

    first.sock.sendall(data[MiB:])
    first.send(protocol.End(hashlib.md5(data).hexdigest()))
    assert first.read_response().code == 200
    assert (home / "job.bin").read_bytes() == data


def test_unfinished_upload_of_undeclared_size_is_shown_and_swept(server_factory, log_file) -> None:
    """An FTP STOR declares no size: its partial is listed (no ``expected``), counted in
    ``quota`` and swept after ``partial_ttl`` like any other."""
    server = server_factory(partial_ttl=DAY)
    tree = server.server.services.accounts.storage.tree("alice")
    tree.ensure()
    stored = tree.begin_upload(("stor.bin",), None, resume=True)
    stored.write(memoryview(b"x" * 1000))
    stored.close()
    conn = server.login("alice")
    (entry,) = conn.listdir("/")
    assert (entry["name"], entry["partial"], entry["expected"]) == ("stor.bin", 1000, None)
    quota = conn.call("quota").data
    assert quota["partials"][0]["path"] == "/stor.bin" and quota["partial_bytes"] == 1000
    age(server.project.home("alice"), 2 * DAY)
    assert conn.listdir("/") == []
    assert partials(server.project.home("alice")) == []
    wait_until(
        lambda: (
            "PARTIAL EXPIRED user=alice path=/stor.bin held=1000 of None" in log_file.read_text()
        )
    )
