"""Quota against a real server: carol has 1 MiB, and the home never holds more.

A refused upload is refused before its first byte is written and leaves nothing behind;
concurrent sessions of one user share one ledger; partials count; ``rm`` frees space;
``quota`` re-counts the real bytes.  (A reload with a new quota is tested elsewhere.)
"""

from __future__ import annotations

import hashlib
import os
import random
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ftp_client import transfer
from ftp_client.connection import Connection
from ftpd import errors
from ftpd.framed.protocol import READY_FOR_DATA, Data, End, Request, Response
from ftpd.storage.local import PARTIAL_DIR, LocalTree
from tests.conftest import RunningServer
from tests.support import wait_upload_released


def scan_usage(home):  # bytes under a home, by descriptor
    return LocalTree(home).usage()[0]


KiB = 1024
LIMIT = 1024 * KiB  # carol's quota in the fixture's users.yaml


def payload(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


def md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.005)


def partials(home: Path) -> list[Path]:
    folder = home / PARTIAL_DIR
    return sorted(folder.iterdir()) if folder.is_dir() else []


BYTE_FIELDS = ("used", "limit", "reserved", "available")


def quota(conn: Connection) -> dict[str, Any]:
    """The byte figures of `quota` (the file counts are checked in their own tests)."""
    data = conn.call("quota").data
    assert {"files", "max_files", "reserved_files"} <= set(data)
    return {k: data[k] for k in BYTE_FIELDS}


def begin_put(conn: Connection, remote: str, size: int) -> Response:
    """The first phase of a two-phase put: the reservation is held from the 150 on."""
    conn.send(Request("put", {"path": remote, "size": size}))
    return conn.read_response()


def finish_put(conn: Connection, data: bytes) -> Response:
    conn.send(Data(len(data), 0))
    conn.sock.sendall(data)
    conn.send(End(md5(data)))
    return conn.read_response()


def put_bytes(conn: Connection, tmp_path: Path, remote: str, data: bytes) -> transfer.Result:
    src = tmp_path / f"src-{len(data)}-{md5(data)[:8]}"
    src.write_bytes(data)
    return transfer.put_file(conn, src, remote)


@pytest.fixture
def carol(server: RunningServer) -> Iterator[Connection]:
    conn = server.login("carol")
    yield conn
    conn.close()


@pytest.fixture
def home(server: RunningServer, carol: Connection) -> Path:
    return server.project.home("carol")


# --- refusals -------------------------------------------------------------------------


@pytest.mark.parametrize("form", ["inline", "two-phase"])
@pytest.mark.parametrize("size", [LIMIT + 1, 3 * LIMIT])
def test_quota_oversize_upload_is_413_before_any_byte(
    carol: Connection, home: Path, form: str, size: int
) -> None:
    data = payload(size)
    with pytest.raises(errors.QuotaExceededError) as info:
        if form == "inline":
            carol.call("put", body=data, path="big.bin", size=size, checksum=md5(data))
        else:
            begin_put(carol, "big.bin", size)  # 413 instead of 150: no data frame is asked for

    exc = info.value
    assert exc.code == 413 and exc.name == "quota_exceeded"
    assert exc.data["available"] == LIMIT and exc.data["limit"] == LIMIT and exc.data["used"] == 0
    assert not (home / "big.bin").exists()
    assert partials(home) == []
    assert quota(carol) == {"used": 0, "limit": LIMIT, "reserved": 0, "available": LIMIT}


@pytest.mark.parametrize("form", ["inline", "two-phase"])
def test_quota_exact_fit_succeeds_then_one_byte_more_is_413(
    carol: Connection, home: Path, form: str, tmp_path: Path
) -> None:
    data = payload(LIMIT, seed=1)
    if form == "inline":
        put_bytes(carol, tmp_path, "full.bin", data)  # LIMIT == INLINE_MAX: one frame
    else:
        assert begin_put(carol, "full.bin", LIMIT).code == READY_FOR_DATA
        assert finish_put(carol, data).code == 200
    assert (home / "full.bin").read_bytes() == data
    assert quota(carol) == {"used": LIMIT, "limit": LIMIT, "reserved": 0, "available": 0}

    with pytest.raises(errors.QuotaExceededError) as info:
        put_bytes(carol, tmp_path, "one.bin", b"x")
    assert info.value.data["available"] == 0
    assert not (home / "one.bin").exists()
    assert scan_usage(home) == LIMIT


def test_quota_refused_upload_leaves_nothing_behind(
    carol: Connection, home: Path, tmp_path: Path
) -> None:
    put_bytes(carol, tmp_path, "a.bin", payload(600 * KiB, seed=2))
    before = sorted(p.relative_to(home) for p in home.rglob("*"))

    for size in (500 * KiB, 2 * LIMIT):
        with pytest.raises(errors.QuotaExceededError) as info:
            put_bytes(carol, tmp_path, "b.bin", payload(size, seed=3))
        assert info.value.data["available"] == LIMIT - 600 * KiB

    assert sorted(p.relative_to(home) for p in home.rglob("*")) == before
    assert partials(home) == []
    assert quota(carol)["reserved"] == 0
    assert carol.call("pwd").data["cwd"] == "/"  # an inline body was drained: the session goes on


# --- concurrent sessions share one ledger ---------------------------------------------


def test_quota_concurrent_sessions_cannot_jointly_pass_the_limit(
    server: RunningServer, home: Path, tmp_path: Path
) -> None:
    first, second = server.login("carol"), server.login("carol")
    a, b = payload(700 * KiB, seed=4), payload(700 * KiB, seed=5)

    assert begin_put(first, "a.bin", len(a)).code == READY_FOR_DATA  # holds 700 KiB from now
    with pytest.raises(errors.QuotaExceededError) as info:
        begin_put(second, "b.bin", len(b))
    assert info.value.data["available"] == LIMIT - 700 * KiB
    with pytest.raises(errors.QuotaExceededError):
        put_bytes(second, tmp_path, "b.bin", b)  # inline too
    assert scan_usage(home) <= LIMIT
    assert quota(second)["reserved"] == 700 * KiB

    assert finish_put(first, a).code == 200
    with pytest.raises(errors.QuotaExceededError):
        put_bytes(second, tmp_path, "b.bin", b)

    assert (home / "a.bin").read_bytes() == a
    assert not (home / "b.bin").exists()
    assert scan_usage(home) == 700 * KiB <= LIMIT
    assert quota(second) == {
        "used": 700 * KiB,
        "limit": LIMIT,
        "reserved": 0,
        "available": LIMIT - 700 * KiB,
    }
    first.quit()
    second.quit()


# --- what counts ----------------------------------------------------------------------


def test_quota_partial_of_interrupted_upload_counts(
    server: RunningServer, home: Path, tmp_path: Path
) -> None:
    data = payload(600 * KiB, seed=6)
    cut = server.login("carol")
    assert begin_put(cut, "part.bin", len(data)).code == READY_FOR_DATA
    cut.send(Data(len(data), 0))
    cut.sock.sendall(data[: 300 * KiB])
    wait_until(lambda: sum(p.stat().st_size for p in partials(home)) == 300 * KiB)
    cut.close()
    wait_upload_released(server.server.runtime, "carol", "part.bin", timeout=10)
    conn = server.login("carol")

    assert quota(conn) == {
        "used": 300 * KiB,
        "limit": LIMIT,
        "reserved": 0,
        "available": LIMIT - 300 * KiB,
    }
    with pytest.raises(errors.QuotaExceededError) as info:
        put_bytes(conn, tmp_path, "other.bin", payload(800 * KiB, seed=7))
    assert info.value.data["available"] == LIMIT - 300 * KiB
    # The same file sent inline (600 KiB <= INLINE_MAX) starts afresh: the partial's bytes
    # are freed before the reservation, so it fits.
    src = tmp_path / "part.bin"
    src.write_bytes(data)
    result = transfer.put_file(conn, src, "part.bin")
    assert result.offset == 0
    assert quota(conn)["used"] == 600 * KiB
    assert partials(home) == []
    conn.quit()


def test_quota_resume_of_partial_reserves_only_the_rest(server: RunningServer, home: Path) -> None:
    data = payload(900 * KiB, seed=8)
    cut = server.login("carol")
    begin_put(cut, "part.bin", len(data))
    cut.send(Data(len(data), 0))
    cut.sock.sendall(data[: 500 * KiB])
    wait_until(lambda: sum(p.stat().st_size for p in partials(home)) == 500 * KiB)
    cut.close()
    wait_upload_released(server.server.runtime, "carol", "part.bin", timeout=10)
    conn = server.login("carol")
    conn.call(
        "put",
        body=b"y" * (100 * KiB),
        path="y.bin",
        size=100 * KiB,
        checksum=md5(b"y" * (100 * KiB)),
    )
    # used: 500 KiB partial + 100 KiB; a fresh 900 KiB would not fit, the 400 KiB rest does.

    ready = begin_put(conn, "part.bin", len(data))
    assert ready.data["offset"] == 500 * KiB
    conn.send(Data(len(data) - 500 * KiB, 500 * KiB))
    conn.sock.sendall(data[500 * KiB :])
    conn.send(End(md5(data)))
    assert conn.read_response().data["offset"] == 500 * KiB

    assert (home / "part.bin").read_bytes() == data
    assert quota(conn) == {"used": 1000 * KiB, "limit": LIMIT, "reserved": 0, "available": 24 * KiB}
    conn.quit()


def test_quota_rm_frees_space_for_the_next_upload(
    carol: Connection, home: Path, tmp_path: Path
) -> None:
    put_bytes(carol, tmp_path, "f.bin", payload(900 * KiB, seed=9))
    g = payload(LIMIT, seed=10)
    with pytest.raises(errors.QuotaExceededError):
        put_bytes(carol, tmp_path, "g.bin", g)

    carol.call("rm", path="f.bin")
    put_bytes(carol, tmp_path, "g.bin", g)  # no quota call between: the ledger itself learnt

    assert (home / "g.bin").read_bytes() == g
    assert scan_usage(home) == LIMIT


def test_quota_counts_files_placed_by_hand_after_a_recount(
    carol: Connection, home: Path, tmp_path: Path, server: RunningServer
) -> None:
    put_bytes(carol, tmp_path, "a.bin", payload(100 * KiB, seed=11))
    (home / "sub").mkdir()
    (home / "sub" / "hand.bin").write_bytes(b"h" * (500 * KiB))
    (home / "hand2.bin").write_bytes(b"k" * 1000)
    # `quota` answers from the ledger; files placed behind the daemon's back are seen at
    # the next recount (at start, on reload, on an admin's request): a reload's here.
    assert quota(carol)["used"] == 100 * KiB
    server.server.services.ledgers.recount_all()

    data = quota(carol)

    assert data["used"] == 600 * KiB + 1000 == scan_usage(home)
    assert data["available"] == LIMIT - data["used"] and data["limit"] == LIMIT
    with pytest.raises(errors.QuotaExceededError):
        put_bytes(carol, tmp_path, "b.bin", payload(data["available"] + 1, seed=12))
    put_bytes(carol, tmp_path, "b.bin", payload(data["available"], seed=12))
    assert scan_usage(home) == LIMIT


# --- replacing a file -----------------------------------------------------------------


def test_quota_replace_near_limit_needs_room_for_full_new_size_while_old_stands(
    carol: Connection, home: Path, tmp_path: Path
) -> None:
    """The old file stands until the new one is verified, so both must fit for a moment."""
    old = payload(900 * KiB, seed=13)
    put_bytes(carol, tmp_path, "f.bin", old)

    with pytest.raises(errors.QuotaExceededError) as info:  # 500 KiB > 124 KiB free
        put_bytes(carol, tmp_path, "f.bin", payload(500 * KiB, seed=14))
    assert info.value.data["available"] == LIMIT - 900 * KiB
    assert (home / "f.bin").read_bytes() == old

    smaller = payload(100 * KiB, seed=15)  # fits beside the old one: allowed
    put_bytes(carol, tmp_path, "f.bin", smaller)
    assert (home / "f.bin").read_bytes() == smaller
    # The ledger credited the replaced 900 KiB: what is free now fits exactly.
    rest = payload(LIMIT - 100 * KiB, seed=16)
    put_bytes(carol, tmp_path, "g.bin", rest)
    with pytest.raises(errors.QuotaExceededError):
        put_bytes(carol, tmp_path, "h.bin", b"z")
    assert scan_usage(home) == LIMIT


def test_quota_mv_over_a_file_frees_its_bytes(
    carol: Connection, home: Path, tmp_path: Path
) -> None:
    put_bytes(carol, tmp_path, "a.bin", payload(600 * KiB, seed=17))
    put_bytes(carol, tmp_path, "b.bin", payload(300 * KiB, seed=18))
    carol.call("mv", src="b.bin", dst="a.bin")  # a.bin's 600 KiB are gone
    put_bytes(carol, tmp_path, "c.bin", payload(LIMIT - 300 * KiB, seed=19))
    assert scan_usage(home) == LIMIT


def test_quota_unlimited_user_has_no_limit(server: RunningServer, tmp_path: Path) -> None:
    conn = server.login("bob")
    put_bytes(conn, tmp_path, "big.bin", payload(3 * LIMIT, seed=20))
    assert quota(conn) == {"used": 3 * LIMIT, "limit": None, "reserved": 0, "available": None}
    conn.quit()


def test_quota_command_during_an_upload_does_not_count_it_twice(server, tmp_path):
    """A recount while an upload is open would see its partial, which the upload adds again."""
    from ftpd.framed import protocol as proto

    payload = os.urandom(600_000)
    uploader = server.login("carol")  # 1 MiB quota
    ready = uploader.call("put", path="a.bin", size=len(payload))
    assert ready.code == proto.READY_FOR_DATA
    uploader.send(proto.Data(len(payload), 0))
    uploader.sock.sendall(payload)
    other = server.login("carol")
    assert other.call("quota").data["used"] <= len(payload)
    uploader.send(proto.End(hashlib.md5(payload).hexdigest()))
    assert uploader.read_response().code == 200
    small = tmp_path / "b.bin"
    small.write_bytes(b"y" * 300_000)
    transfer.put_file(other, small, "b.bin")  # fits: 900,000 of 1 MiB
    assert other.call("quota").data["used"] == 900_000
    uploader.close()
    other.close()


def test_quota_rm_of_an_interrupted_upload_gives_its_space_back(server, tmp_path):
    """Partials are invisible but count: ``rm NAME`` is how a user abandons one."""
    payload = os.urandom(600_000)
    conn = server.login("carol")
    assert conn.call("put", path="big.bin", size=len(payload)).code == READY_FOR_DATA
    conn.send(Data(len(payload), 0))
    conn.sock.sendall(payload[:400_000])
    conn.close()  # cut mid-body: the partial stays, resumable, and counts
    # The quota is settled before the claim is let go: a quota that shows the partial
    # does not mean the claim is free yet (rm would be a 409 "being uploaded").
    wait_upload_released(server.server.runtime, "carol", "big.bin", timeout=10)
    other = server.login("carol")
    assert other.call("quota").data["used"] == 400_000
    assert other.call("rm", path="big.bin").message == "removed the interrupted upload of /big.bin"
    assert other.call("quota").data["used"] == 0
    with pytest.raises(errors.NotFoundError):
        other.call("rm", path="big.bin")
    other.close()
