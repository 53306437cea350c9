"""Group commit (issue 11): pipelined and concurrent puts share their flushes, and an
answer of "stored" is never sent before the flushes that cover the file and its name.

The order is proven on a real daemon by recording, in one list, every flush (its start
and end), every partial sealed, every rename and every answer sent, then checking for
each file: sealed < a flush's start, that flush's end < its rename < another flush's
start, and that flush's end < its answer.
"""

from __future__ import annotations

import hashlib
import json
import socket
import threading
from collections.abc import Callable
from typing import Any

import pytest

from ftp_client.transfer import put_many
from ftpd.framed.session import GROUP_MAX
from ftpd.storage import flush
from tests.conftest import PASSWORDS, RunningServer
from tests.durability import Journal
from tests.support import TIMEOUT, frame, read_frame, read_frame_with_body, wait_until


def _inline_put(path: str, data: bytes, checksum: str | None = None) -> bytes:
    args = {"path": path, "size": len(data), "checksum": checksum or hashlib.md5(data).hexdigest()}
    return frame({"cmd": "put", "args": args, "body": len(data)}, data)


def _login(srv: RunningServer) -> socket.socket:
    sock = srv.raw()
    sock.settimeout(TIMEOUT)
    read_frame(sock)  # greeting
    sock.sendall(frame({"cmd": "login", "args": {"user": "alice", "password": PASSWORDS["alice"]}}))
    assert read_frame(sock)["ok"]
    return sock


def test_pipelined_puts_are_answered_only_after_their_flushes(
    server_factory: Callable[..., RunningServer], journal: Journal, tmp_path: Any
) -> None:
    srv = server_factory(fsync=True)
    files = []
    for i in range(3 * GROUP_MAX):
        local = tmp_path / f"f{i:03}.bin"
        local.write_bytes(f"file {i} ".encode() * 300)
        files.append((local, f"f{i:03}.bin"))
    conn = srv.login()
    try:
        results = put_many(conn, files, window=32)
    finally:
        conn.close()
    assert len(results) == len(files)
    home = srv.project.home("alice")
    for local, remote in files:
        assert (home / remote).read_bytes() == local.read_bytes()
        journal.check_durable_before_answer(remote)
    # Shared: a flush per file and per name would be 2 per file.
    assert len(journal.flushes()) < len(files), journal.flushes()


def test_a_batch_sent_at_once_shares_two_flushes_and_keeps_the_order(
    server_factory: Callable[..., RunningServer], journal: Journal
) -> None:
    srv = server_factory(fsync=True)
    sock = _login(srv)
    payloads = {f"p{i:02}": bytes([i]) * (1000 + i) for i in range(GROUP_MAX - 1)}
    bad = "p07"
    wire = b"".join(
        _inline_put(name, data, "0" * 32 if name == bad else None)
        for name, data in payloads.items()
    )
    wire += frame({"cmd": "ls", "args": {"path": "/"}})  # must see every stored file
    sock.sendall(wire)
    answers = [read_frame(sock) for _ in payloads]
    listing, body = read_frame_with_body(sock)
    sock.close()
    for (name, _), answer in zip(payloads.items(), answers, strict=True):
        if name == bad:  # only this one fails, in its place, and nothing is installed
            assert not answer["ok"] and answer["code"] == 422, answer
        else:
            assert answer["ok"] and answer["data"]["path"] == f"/{name}", answer
            journal.check_durable_before_answer(name)
    listed = {json.loads(line)["name"] for line in body.decode().splitlines()}
    assert listed == set(payloads) - {bad}
    # One write of under 64 KiB reaches the daemon at once: one batch, two flushes (a
    # little slack for a scheduler that wakes the session between two segments).
    assert len(journal.flushes()) <= 4, journal.flushes()
    home = srv.project.home("alice")
    assert not (home / bad).exists()
    assert all((home / n).read_bytes() == d for n, d in payloads.items() if n != bad)


def test_fsync_off_flushes_nothing(
    server_factory: Callable[..., RunningServer], journal: Journal
) -> None:
    srv = server_factory(fsync=False)
    sock = _login(srv)
    sock.sendall(b"".join(_inline_put(f"n{i}", b"x" * i) for i in range(1, 6)))
    assert all(read_frame(sock)["ok"] for _ in range(5))
    sock.close()
    assert journal.flushes() == []


def test_concurrent_sessions_share_flushes(
    server_factory: Callable[..., RunningServer], journal: Journal
) -> None:
    srv = server_factory(fsync=True, max_per_ip=64)
    socks = [_login(srv) for _ in range(8)]
    start = threading.Barrier(len(socks))
    errors: list[BaseException] = []

    def one(i: int, sock: socket.socket) -> None:
        try:
            start.wait(TIMEOUT)
            for k in range(5):
                sock.sendall(_inline_put(f"s{i}-{k}", b"y" * (100 + k)))
                assert read_frame(sock)["ok"]
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(i, s)) for i, s in enumerate(socks)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT * 4)
    for s in socks:
        s.close()
    assert not errors, errors
    for i in range(len(socks)):
        for k in range(5):
            journal.check_durable_before_answer(f"s{i}-{k}")


# --- the flusher alone ----------------------------------------------------------------


class SlowDisk:
    """A syncfs that records who had asked when each flush started, and can be held."""

    def __init__(self) -> None:
        self.hold = threading.Event()
        self.started = threading.Event()
        self.calls = 0
        self.fail_call: int | None = None
        self.failure: BaseException = OSError(5, "Input/output error")

    def __call__(self, fd: int) -> None:
        self.calls += 1
        call = self.calls
        self.started.set()
        assert self.hold.wait(TIMEOUT)
        if call == self.fail_call:
            raise self.failure


def test_flusher_serves_waiters_with_the_next_flush_and_never_an_earlier_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    disk = SlowDisk()
    monkeypatch.setattr(flush, "syncfs", disk)
    flusher = flush.Flusher()
    done: list[int] = []
    first = threading.Thread(target=lambda: (flusher.flush(0), done.append(0)))
    first.start()
    assert disk.started.wait(TIMEOUT)  # flush 1 is running; nobody below asked before it
    waiters = [
        threading.Thread(target=lambda i=i: (flusher.flush(0), done.append(i)))
        for i in range(1, 11)
    ]
    for t in waiters:
        t.start()
    wait_until(lambda: flusher.requests == 11)
    assert done == []  # flush 1 started before they asked: it cannot release them
    disk.hold.set()
    first.join(TIMEOUT)
    for t in waiters:
        t.join(TIMEOUT)
    assert sorted(done) == list(range(11))
    assert disk.calls == 2  # one flush for the first, one shared by the ten others
    assert flusher.flushes == 2


@pytest.mark.parametrize(
    "failure",
    [OSError(5, "Input/output error"), RuntimeError("the flush went wrong")],
    ids=["oserror", "any-exception"],
)
def test_flusher_reports_a_failed_flush_to_every_waiter_it_covered(
    monkeypatch: pytest.MonkeyPatch, failure: BaseException
) -> None:
    """Whatever the flush raised, no waiter of its round is told "durable"; the next
    round is a new flush."""
    disk = SlowDisk()
    disk.fail_call, disk.failure = 2, failure
    monkeypatch.setattr(flush, "syncfs", disk)
    flusher = flush.Flusher()
    first = threading.Thread(target=flusher.flush, args=(0,))
    first.start()
    assert disk.started.wait(TIMEOUT)
    outcomes: list[BaseException | None] = []

    def wait_one() -> None:
        try:
            flusher.flush(0)
            outcomes.append(None)
        except BaseException as exc:  # collected, checked below
            outcomes.append(exc)

    waiters = [threading.Thread(target=wait_one) for _ in range(4)]
    for t in waiters:
        t.start()
    wait_until(lambda: flusher.requests == 5)
    disk.hold.set()
    first.join(TIMEOUT)
    for t in waiters:
        t.join(TIMEOUT)
    assert outcomes == [failure] * 4
    flusher.flush(0)  # the next flush is a new one: it succeeds
    assert disk.calls == 3


def test_the_same_path_twice_in_one_batch_installs_both_in_order(
    server_factory: Callable[..., RunningServer], journal: Journal
) -> None:
    srv = server_factory(fsync=True, takeover_after=0)  # a takeover must not hit ourselves
    home = srv.project.home("alice")
    sock = _login(srv)
    (home / "real").mkdir()
    (home / "link").symlink_to("real")
    wire = (
        _inline_put("real/same", b"first")
        + _inline_put("other", b"o")
        + _inline_put("real/same", b"second")
        + _inline_put("link/same", b"third, by a link")
    )
    sock.sendall(wire)
    answers = [read_frame(sock) for _ in range(4)]
    assert [a["ok"] for a in answers] == [True] * 4, answers
    assert [a["data"]["path"] for a in answers] == [
        "/real/same",
        "/other",
        "/real/same",
        "/link/same",
    ]
    assert (home / "real" / "same").read_bytes() == b"third, by a link"
    assert call_ok(sock, "stat", path="real/same")["data"]["size"] == len(b"third, by a link")
    sock.close()


def call_ok(sock: socket.socket, cmd: str, **args: Any) -> dict[str, Any]:
    sock.sendall(frame({"cmd": cmd, "args": args}))
    answer, _ = read_frame_with_body(sock)
    assert answer["ok"], answer
    return answer


# --- hostile and unlucky clients ------------------------------------------------------


def _login_as(srv: RunningServer, user: str) -> socket.socket:
    sock = srv.raw()
    sock.settimeout(TIMEOUT)
    read_frame(sock)
    sock.sendall(frame({"cmd": "login", "args": {"user": user, "password": PASSWORDS[user]}}))
    assert read_frame(sock)["ok"]
    return sock


def test_a_client_that_hangs_up_after_sending_loses_nothing_it_sent_whole(
    server_factory: Callable[..., RunningServer], journal: Journal, log_records: Any
) -> None:
    """Puts received whole are installed (durably) even if nobody is left to hear the
    answers; the last one, cut in its body, stays a partial; the daemon goes on."""
    srv = server_factory(fsync=True)
    sock = _login(srv)
    whole = {f"h{i}": bytes([65 + i]) * (500 + i) for i in range(6)}
    cut = _inline_put("h-cut", b"z" * 5000)[:-1000]
    sock.sendall(b"".join(_inline_put(n, d) for n, d in whole.items()) + cut)
    sock.close()
    home = srv.project.home("alice")
    log_records.wait_for(r"DISCONNECT ip=\S+ user=alice")
    for name, data in whole.items():
        assert (home / name).read_bytes() == data
        assert journal.covered(journal.index("sealed", name), journal.index("rename", name))
    assert not (home / "h-cut").exists()
    other = _login(srv)  # the daemon and other sessions are unaffected
    assert call_ok(other, "stat", path="h5")["data"]["size"] == len(whole["h5"])
    other.close()


def test_quota_refusal_in_the_middle_of_a_batch_is_answered_in_its_place(
    server_factory: Callable[..., RunningServer], journal: Journal
) -> None:
    """carol has 1 MiB: a pipelined batch that passes it gets 413 for the put that does
    not fit (the ones before still hold their room while they wait for the commit), the
    others are stored, and the ledger ends exact."""
    srv = server_factory(fsync=True)
    sock = _login_as(srv, "carol")
    sizes = [300_000, 300_000, 600_000, 300_000, 100]
    names = [f"q{i}" for i in range(len(sizes))]
    sock.sendall(b"".join(_inline_put(n, bytes(s)) for n, s in zip(names, sizes, strict=True)))
    answers = [read_frame(sock) for _ in names]
    assert [a["code"] for a in answers] == [200, 200, 413, 200, 200], answers
    quota = call_ok(sock, "quota")["data"]
    assert quota["used"] == 300_000 * 3 + 100 and quota["reserved"] == 0, quota
    assert quota["files"] == 4
    sock.close()
    home = srv.project.home("carol")
    assert sorted(p.name for p in home.iterdir() if not p.name.startswith(".")) == [
        "q0",
        "q1",
        "q3",
        "q4",
    ]


def test_pipelined_puts_then_quit_are_all_answered_before_the_goodbye(
    server_factory: Callable[..., RunningServer], journal: Journal
) -> None:
    srv = server_factory(fsync=True)
    sock = _login(srv)
    sock.sendall(
        b"".join(_inline_put(f"b{i}", b"q" * i) for i in range(1, 9))
        + frame({"cmd": "quit", "args": {}})
    )
    answers = [read_frame(sock) for _ in range(9)]
    assert [a["code"] for a in answers[:8]] == [200] * 8
    assert answers[8]["ok"] and answers[8]["code"] == 221, answers[8]
    for i in range(1, 9):
        journal.check_durable_before_answer(f"b{i}")
    sock.close()


def test_a_two_phase_put_is_answered_only_after_its_flushes(
    server_factory: Callable[..., RunningServer], journal: Journal, tmp_path: Any
) -> None:
    """Large files (two-phase, resumable) go through the same flushes, shared with the
    other sessions' commits; the answer follows both."""
    from ftp_client.transfer import INLINE_MAX, put_file

    srv = server_factory(fsync=True)
    local = tmp_path / "big.bin"
    local.write_bytes(bytes(range(256)) * (INLINE_MAX // 256 + 4099))
    conn = srv.login("bob")
    try:
        put_file(conn, local, "big.bin")
    finally:
        conn.close()
    assert (srv.project.home("bob") / "big.bin").read_bytes() == local.read_bytes()
    journal.check_durable_before_answer("big.bin")


def test_puts_are_answered_when_the_next_request_stalls_half_sent(
    server_factory: Callable[..., RunningServer], journal: Journal
) -> None:
    """A client that pipelines and then stalls inside the next frame (its header, or
    its body) must not keep the puts before it unanswered, nor their claims held."""
    srv = server_factory(fsync=True)
    sock = _login(srv)
    first = b"".join(_inline_put(f"s{i}", b"s" * (100 + i)) for i in range(3))
    stalled = _inline_put("s-late", b"L" * 5000)
    for cut in (2, 60, len(stalled) - 100):  # in the length, in the header, in the body
        sock.sendall(first + stalled[:cut])
        answers = [read_frame(sock) for _ in range(3)]  # would time out if held
        assert [a["code"] for a in answers] == [200] * 3, answers
        sock.sendall(stalled[cut:])
        assert read_frame(sock)["code"] == 200
    other = _login(srv)  # nothing is held: the same targets can be uploaded at once
    other.sendall(_inline_put("s0", b"again"))
    assert read_frame(other)["code"] == 200
    other.close()
    sock.close()


def test_a_batch_that_replaces_files_is_not_refused_for_room_it_frees(
    server_factory: Callable[..., RunningServer], journal: Journal
) -> None:
    """carol (1 MiB) replaces a 600 KB file and adds 300 KB in one pipelined batch: one
    at a time both fit, so together they must too (the replaced bytes are freed once
    the first is installed; the second waits for that, not for a refusal)."""
    srv = server_factory(fsync=True)
    sock = _login_as(srv, "carol")
    sock.sendall(_inline_put("a", bytes(600_000)))
    assert read_frame(sock)["code"] == 200
    sock.sendall(_inline_put("a", b"\1" * 300_000) + _inline_put("b", bytes(300_000)))
    answers = [read_frame(sock) for _ in range(2)]
    assert [a["code"] for a in answers] == [200, 200], answers
    quota = call_ok(sock, "quota")["data"]
    assert quota["used"] == 600_000 and quota["reserved"] == 0, quota
    sock.close()


def test_an_oversize_frame_after_pipelined_puts_is_refused_after_their_answers(
    server_factory: Callable[..., RunningServer], journal: Journal
) -> None:
    """A length prefix past the header limit, or a truncated one, behind a batch: the
    puts before it are answered and installed first, then the frame is refused."""
    srv = server_factory(fsync=True)
    home = srv.project.home("alice")
    for tail in (b"\xff\xff\xff\xff", b"\x00\x00"):
        sock = _login(srv)
        names = [f"o{len(tail)}-{i}" for i in range(3)]
        sock.sendall(b"".join(_inline_put(n, n.encode()) for n in names) + tail)
        if len(tail) < 4:
            sock.shutdown(socket.SHUT_WR)  # the prefix stays truncated for good
        answers = [read_frame(sock) for _ in names]
        assert [a["code"] for a in answers] == [200] * 3, answers
        if len(tail) == 4:
            refusal = read_frame(sock)
            assert refusal["code"] == 431 and refusal["error"] == "header_too_large", refusal
        sock.close()
        for n in names:
            assert (home / n).read_bytes() == n.encode()
            journal.check_durable_before_answer(n)
