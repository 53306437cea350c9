"""Folders and wildcards at full speed: pipelined ``get -r``/``put -r`` against the real daemon.

``get_many`` keeps up to 32 ``get`` requests in flight for small files (the daemon answers
in order, each answer followed by its body) and streams large files one at a time; every
file still goes through the verified local partial.  These tests count the requests in
flight by wrapping ``Connection.send`` and ``Connection.read_response``, check that the
answers are taken in the order asked, that the first failure (a file removed on the
server after the listing, a local write error, a quota refusal) stops the transfer with
the connection still in step, and that a second run, or a run after Ctrl-C, resumes.
"""

from __future__ import annotations

import hashlib
import os
import random
import sys
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from ftp_client import transfer
from ftp_client.connection import Connection
from ftp_client.shell import EXIT_INTERRUPTED, Session, Shell
from ftpd import errors
from tests.conftest import PASSWORDS, RunningServer

KiB, MiB = 1024, 1024 * 1024
SMALL_FILES = 300
BIG_SIZES = (transfer.PIPELINE_MAX + 1, 2 * MiB + 7, 3 * MiB)


def md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def tree_of(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` by relative path, without the daemon's bookkeeping."""
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and ".ftpd" not in p.parts
    }


def partials_in(root: Path) -> list[Path]:
    return sorted(root.rglob(f"*{transfer.PARTIAL_SUFFIX}"))


def make_tree(root: Path, small: int = SMALL_FILES, big: tuple[int, ...] = BIG_SIZES) -> None:
    """``small`` files of 0..8 KiB in five folders (one nested), and the ``big`` ones."""
    rng = random.Random(11)
    folders = ["", "a", "b", "b/deep", "c"]
    for folder in folders:
        (root / folder).mkdir(parents=True, exist_ok=True)
    for i in range(small):
        size = rng.choice([0, 1, 100, 4 * KiB, 8 * KiB - 1])
        (root / folders[i % len(folders)] / f"f{i:03d}.bin").write_bytes(rng.randbytes(size))
    for i, size in enumerate(big):
        (root / "b" / f"big{i}.bin").write_bytes(rng.randbytes(size))


@dataclass
class Wire:
    """What went over the connection: each request sent, and each answer read.

    ``waits[cmd]`` holds, for each answer read to a ``cmd`` request, how many requests
    were in flight just before it (1 = a full round trip; more = pipelined).
    """

    in_flight: deque[str] = field(default_factory=deque)
    sent: dict[str, int] = field(default_factory=dict)
    waits: dict[str, list[int]] = field(default_factory=dict)

    def clear(self) -> None:
        self.in_flight.clear()
        self.sent.clear()
        self.waits.clear()

    def most_in_flight(self, cmd: str) -> int:
        return max(self.waits.get(cmd, [0]))

    def round_trips(self, cmd: str) -> int:
        """Answers to ``cmd`` that the client waited for with nothing else in flight."""
        return sum(1 for n in self.waits.get(cmd, []) if n == 1)


@pytest.fixture
def wire(monkeypatch: pytest.MonkeyPatch) -> Wire:
    record = Wire()
    send, read = Connection.send, Connection.read_response

    def counted_send(self: Connection, message: Any, body: Any = b"") -> None:
        cmd = getattr(message, "cmd", None)
        if cmd is not None:  # data and end frames of a streamed put get no answer of their own
            record.in_flight.append(cmd)
            record.sent[cmd] = record.sent.get(cmd, 0) + 1
        send(self, message, body)

    def counted_read(self: Connection) -> Any:
        depth = len(record.in_flight)
        cmd = record.in_flight[0] if record.in_flight else "?"
        response = None
        try:
            response = read(self)
        finally:
            if record.in_flight and not (response is not None and response.code == 150):
                record.in_flight.popleft()  # a 150 is the interim answer: the 200 follows
            record.waits.setdefault(cmd, []).append(depth)
        return response

    monkeypatch.setattr(Connection, "send", counted_send)
    monkeypatch.setattr(Connection, "read_response", counted_read)
    return record


@pytest.fixture
def local(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "local"
    folder.mkdir()
    monkeypatch.chdir(folder)
    return folder


@pytest.fixture
def home(server: RunningServer) -> Path:
    server.login("bob").quit()  # homes are made at first login; bob has no quota
    return server.project.home("bob")


class Connects:
    """A Session's connect that counts connections (a reconnect shows as a second one)."""

    def __init__(self, server: RunningServer) -> None:
        self.server, self.count = server, 0

    def __call__(self) -> Connection:
        self.count += 1
        return self.server.connect()


@pytest.fixture
def connects(server: RunningServer) -> Connects:
    return Connects(server)


def make_shell(connects: Connects, user: str = "bob", quiet: bool = True) -> Shell:
    shell = Shell(Session(connects, user, PASSWORDS[user]), quiet=quiet, interactive=False)
    shell.stdout = sys.stdout
    return shell


@pytest.fixture
def shell(connects: Connects, local: Path) -> Iterator[Shell]:
    sh = make_shell(connects)
    yield sh
    sh.session.close()


def run(shell: Shell, line: str, capsys: pytest.CaptureFixture[str]) -> tuple[str, str]:
    shell.onecmd(line)
    captured = capsys.readouterr()
    return captured.out, captured.err


# --- a whole tree, both ways -------------------------------------------------------------


def test_get_r_of_300_small_and_3_large_files_is_byte_identical_and_pipelined(
    shell: Shell, home: Path, local: Path, wire: Wire, capsys: pytest.CaptureFixture[str]
) -> None:
    make_tree(home / "tree")
    shell.conn  # log in before counting  # noqa: B018
    wire.clear()

    out, err = run(shell, "get -r tree down", capsys)

    assert not shell.last_failed, err
    assert tree_of(local / "down") == tree_of(home / "tree")
    assert partials_in(local) == []
    assert out.splitlines()[-1] == f"got {SMALL_FILES + 3} files, 5 directories into down"
    assert wire.sent["get"] == SMALL_FILES + 3
    assert wire.most_in_flight("get") == 32  # the window is used to the full
    # Only the three large files (one at a time, by design) and the ends of the
    # pipeline runs they split wait out a whole round trip; 300 small files do not.
    assert wire.round_trips("get") <= 3 + 4, wire.waits["get"]


def test_put_r_pipelines_the_files_and_the_folders(
    shell: Shell, home: Path, local: Path, wire: Wire, capsys: pytest.CaptureFixture[str]
) -> None:
    make_tree(local / "tree", big=())
    shell.conn  # noqa: B018
    wire.clear()

    _out, err = run(shell, "put -r tree up", capsys)

    assert not shell.last_failed, err
    assert tree_of(home / "up") == tree_of(local / "tree")
    assert wire.sent["put"] == SMALL_FILES
    assert wire.most_in_flight("put") == 32
    assert wire.round_trips("put") <= 1
    assert wire.sent["mkdir"] == 5
    assert wire.most_in_flight("mkdir") == 5  # all the folders asked for at once


def test_wildcard_get_is_pipelined_too(
    shell: Shell, home: Path, local: Path, wire: Wire, capsys: pytest.CaptureFixture[str]
) -> None:
    (home / "logs").mkdir()
    for i in range(100):
        (home / "logs" / f"{i:03d}.gz").write_bytes(os.urandom(i * 10))
    (home / "logs" / "other.txt").write_bytes(b"not me")
    (local / "dl").mkdir()
    shell.conn  # noqa: B018
    wire.clear()

    out, err = run(shell, "get logs/*.gz dl", capsys)

    assert not shell.last_failed, err
    assert sorted(p.name for p in (local / "dl").iterdir()) == [f"{i:03d}.gz" for i in range(100)]
    assert tree_of(local / "dl") == {
        k: v for k, v in tree_of(home / "logs").items() if k.endswith(".gz")
    }
    # one line per file, in the order asked (the listing's order: by name)
    assert [line.split(":")[0] for line in out.splitlines()] == [
        f"got logs/{i:03d}.gz" for i in range(100)
    ]
    assert wire.most_in_flight("get") == 32
    assert wire.round_trips("get") <= 1


# --- the order of answers ------------------------------------------------------------------


def test_get_many_takes_the_answers_in_the_order_asked(
    server: RunningServer, home: Path, tmp_path: Path
) -> None:
    names = [f"n{i:03d}" for i in range(80)]
    sizes = {
        name: (transfer.PIPELINE_MAX + 10 if i % 25 == 7 else 3 * i) for i, name in enumerate(names)
    }
    for name in names:
        (home / name).write_bytes(name.encode() * (sizes[name] // 4) + b"x" * (sizes[name] % 4))
    order = names[:]
    random.Random(3).shuffle(order)  # neither the listing's order nor by size
    jobs = [(f"/{name}", tmp_path / name, {"size": sizes[name]}) for name in order]
    told: list[tuple[str, int, int]] = []
    conn = server.login("bob")

    results = transfer.get_many(conn, jobs, done=lambda r, i, n: told.append((r.path, i, n)))

    assert [r.path for r in results] == [f"/{name}" for name in order]
    assert told == [(f"/{name}", i, len(order)) for i, name in enumerate(order, 1)]
    for name in names:
        assert (tmp_path / name).read_bytes() == (home / name).read_bytes()
    assert all(r.checksum == md5((home / r.path[1:]).read_bytes()) for r in results)
    assert conn.call("pwd").data["cwd"] == "/"
    conn.close()


# --- stopping at the first failure -------------------------------------------------------


def test_a_file_removed_after_the_listing_stops_get_r_cleanly_and_a_rerun_completes(
    shell: Shell,
    connects: Connects,
    home: Path,
    local: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    make_tree(home / "tree")
    listed: list[str] = []
    walk = transfer.walk_remote_entries

    def walk_then_remove(conn: Connection, root: str) -> Any:
        dirs, files = walk(conn, root)
        listed[:] = [path for path, _entry in files]
        if len(listed) > 150:
            (home / listed[150]).unlink()  # gone between the listing and its get
        return dirs, files

    monkeypatch.setattr(transfer, "walk_remote_entries", walk_then_remove)
    shell.quiet = False

    _out, err = run(shell, "get -r tree down", capsys)

    assert shell.last_failed
    lines = err.splitlines()
    assert lines[-1] == f"ftp-client: /{listed[150]}: no such file or directory"
    assert any(line.startswith("stopped at the first failure: got ") for line in lines), lines
    got = {
        p.relative_to(local / "down").as_posix() for p in (local / "down").rglob("*") if p.is_file()
    }
    relative = [path.removeprefix("tree/") for path in listed]
    assert set(relative[:150]) <= got  # everything before the failure arrived
    assert relative[150] not in got
    assert len(got - set(relative[:150])) <= 31  # and at most what was already in flight
    for name in got:
        assert (local / "down" / name).read_bytes() == (home / "tree" / name).read_bytes()
    # The connection is in step: the next command runs on it, without a reconnect.
    assert run(shell, "pwd", capsys)[0] == "/\n"
    assert connects.count == 1

    monkeypatch.setattr(transfer, "walk_remote_entries", walk)
    _out, err = run(shell, "get -r tree down", capsys)

    assert not shell.last_failed, err
    assert tree_of(local / "down") == tree_of(home / "tree")
    assert partials_in(local) == []
    assert connects.count == 1


def test_a_local_write_error_mid_pipeline_keeps_the_connection_in_step(
    server: RunningServer, home: Path, tmp_path: Path
) -> None:
    for i in range(100):
        (home / f"f{i:02d}").write_bytes(os.urandom(100 + i))
    down = tmp_path / "down"
    down.mkdir()
    (tmp_path / "not-a-folder").write_bytes(b"a file where a folder should be")
    jobs = [(f"/f{i:02d}", down / f"f{i:02d}", {"size": 100 + i}) for i in range(100)]
    jobs[40] = ("/f40", tmp_path / "not-a-folder" / "f40", {"size": 140})
    conn = server.login("bob")
    stored: list[str] = []

    with pytest.raises(NotADirectoryError):
        transfer.get_many(conn, jobs, done=lambda r, i, n: stored.append(r.path))

    assert stored[:40] == [f"/f{i:02d}" for i in range(40)]
    assert "/f40" not in stored
    assert len(stored) <= 40 + 31
    assert conn.call("pwd").data["cwd"] == "/"  # the failed file's body was read and dropped
    jobs[40] = ("/f40", down / "f40", {"size": 140})
    transfer.get_many(conn, jobs)
    assert tree_of(down) == {k: v for k, v in tree_of(home).items()}
    conn.close()


def test_a_local_error_on_a_large_body_closes_and_the_next_command_reconnects(
    shell: Shell,
    connects: Connects,
    home: Path,
    local: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    (home / "big.bin").write_bytes(os.urandom(2 * MiB))
    (local / "nofolder").write_bytes(b"x")
    monkeypatch.setattr(
        transfer, "DRAIN_MAX", 64 * KiB
    )  # dropping 2 MiB costs more than a reconnect

    _out, err = run(shell, "get big.bin nofolder/big.bin", capsys)

    assert shell.last_failed
    assert "not a directory" in err
    assert run(shell, "pwd", capsys)[0] == "/\n"
    assert connects.count == 2


def test_put_r_stops_at_the_quota_with_the_connection_in_step(
    server: RunningServer, connects: Connects, local: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (local / "tree").mkdir()
    for i in range(300):  # 1.2 MiB against carol's 1 MiB quota
        (local / "tree" / f"f{i:03d}").write_bytes(os.urandom(4 * KiB))
    shell = make_shell(connects, "carol")

    _out, err = run(shell, "put -r tree up", capsys)

    assert shell.last_failed
    assert "quota" in err.lower()
    assert run(shell, "pwd", capsys)[0] == "/\n"
    assert connects.count == 1
    stored = tree_of(server.project.home("carol") / "up")
    assert 0 < len(stored) < 300
    assert all(stored[name] == (local / "tree" / name).read_bytes() for name in stored)
    shell.session.close()


# --- resuming --------------------------------------------------------------------------------


class CtrlCAfter:
    """A progress factory whose bar for ``name`` raises KeyboardInterrupt past ``limit`` bytes."""

    def __init__(self, name: str, limit: int) -> None:
        self.name, self.limit = name, limit

    def __call__(self, label: str, total: int, initial: int) -> Any:
        outer = self

        class Bar:
            seen = 0

            def update(self, n: int) -> None:
                self.seen += n
                if label.endswith(outer.name) and self.seen > outer.limit:
                    raise KeyboardInterrupt

            def close(self) -> None:
                pass

        return Bar()


def test_get_r_interrupted_in_a_large_file_resumes_it_on_the_next_run(
    shell: Shell,
    connects: Connects,
    home: Path,
    local: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    make_tree(home / "tree", small=60, big=(4 * MiB,))
    shell.quiet = False
    shell.progress = CtrlCAfter("big0.bin", MiB)

    _out, err = run(shell, "get -r tree down", capsys)

    assert shell.last_status == EXIT_INTERRUPTED
    assert "re-issue the command to resume" in err
    [partial] = partials_in(local)
    kept = partial.stat().st_size
    assert kept > MiB

    shell.progress = transfer.no_progress
    _out, err = run(shell, "get -r tree down", capsys)

    assert not shell.last_failed, err
    assert f"resuming download of tree/b/big0.bin at byte {kept} of {4 * MiB}" in err
    assert tree_of(local / "down") == tree_of(home / "tree")
    assert partials_in(local) == []
    assert connects.count == 2  # Ctrl-C in a body: the stream was dropped, then re-made


def test_ctrl_c_with_answers_in_flight_closes_and_the_rerun_completes(
    server: RunningServer, home: Path, tmp_path: Path
) -> None:
    for i in range(120):
        (home / f"f{i:03d}").write_bytes(os.urandom(200))
    (tmp_path / "down").mkdir()
    jobs = [(f"/f{i:03d}", tmp_path / "down" / f"f{i:03d}", {"size": 200}) for i in range(120)]
    conn = server.login("bob")

    def stop_at_50(result: transfer.Result, index: int, count: int) -> None:
        if index == 50:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        transfer.get_many(conn, jobs, done=stop_at_50)
    assert conn.closed  # answers were still coming: this stream is out of step for good

    conn = server.login("bob")
    results = transfer.get_many(conn, jobs)
    assert len(results) == 120
    assert tree_of(tmp_path / "down") == tree_of(home)
    conn.close()


def test_a_pipelined_small_file_resumes_from_the_partial_a_cut_left(
    server: RunningServer, home: Path, tmp_path: Path
) -> None:
    data = os.urandom(300 * KiB)
    (home / "s.bin").write_bytes(data)
    other = os.urandom(10 * KiB)
    (home / "t.bin").write_bytes(other)
    # What an interrupted run leaves: the first 100 KiB under the remote digest's name,
    # and for t.bin a partial of an older version of the file.
    (tmp_path / f".s.bin.{md5(data)}{transfer.PARTIAL_SUFFIX}").write_bytes(data[: 100 * KiB])
    stale = tmp_path / f".t.bin.{md5(b'old')}{transfer.PARTIAL_SUFFIX}"
    stale.write_bytes(b"old")
    notices: list[str] = []
    conn = server.login("bob")
    jobs = [
        ("/s.bin", tmp_path / "s.bin", {"size": len(data)}),
        ("/t.bin", tmp_path / "t.bin", {"size": len(other)}),
    ]

    s, t = transfer.get_many(conn, jobs, notice=notices.append, done=lambda *_a: None)

    assert (s.offset, t.offset) == (100 * KiB, 0)
    assert (tmp_path / "s.bin").read_bytes() == data
    assert (tmp_path / "t.bin").read_bytes() == other
    assert partials_in(tmp_path) == []
    assert notices == [
        f"resuming download of /s.bin at byte {100 * KiB} of {len(data)}",
        "/t.bin changed on the server since the partial download; restarting",
    ]
    conn.close()


def test_a_corrupted_partial_is_not_spliced(
    server: RunningServer, home: Path, tmp_path: Path
) -> None:
    data = os.urandom(50 * KiB)
    (home / "s.bin").write_bytes(data)
    bad = bytes(b ^ 0xFF for b in data[: 10 * KiB])  # right name, wrong bytes
    (tmp_path / f".s.bin.{md5(data)}{transfer.PARTIAL_SUFFIX}").write_bytes(bad)
    conn = server.login("bob")

    with pytest.raises(errors.ChecksumError):
        transfer.get_many(conn, [("/s.bin", tmp_path / "s.bin", {"size": len(data)})])

    assert not (tmp_path / "s.bin").exists()
    assert partials_in(tmp_path) == []  # dropped, so the next run starts afresh
    [result] = transfer.get_many(conn, [("/s.bin", tmp_path / "s.bin", {"size": len(data)})])
    assert result.offset == 0
    assert (tmp_path / "s.bin").read_bytes() == data
    conn.close()


def test_one_get_per_line_lists_the_folder_once_and_still_sees_new_partials(
    server: RunningServer, home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch of single ``get``s must not list the local folder once per file (1,000
    gets into a folder of 1,000 files would list 1,000,000 names), yet a partial that
    appears there between two gets (another run, cut) is still offered for a resume,
    and one that vanished is not offered."""
    files = {f"g{i:02}.bin": os.urandom(2 * KiB + i) for i in range(20)}
    for name, data in files.items():
        (home / name).write_bytes(data)
    big = os.urandom(200 * KiB)
    (home / "late.bin").write_bytes(big)
    scans: list[Path] = []
    real_scan = transfer._scan_partials

    def counting_scan(folder: Path) -> dict[str, list[Path]]:
        scans.append(folder)
        return real_scan(folder)

    monkeypatch.setattr(transfer, "_scan_partials", counting_scan)
    monkeypatch.setattr(transfer, "_KNOWN", transfer._KnownPartials())
    conn = server.login("bob")
    for name in files:
        transfer.get_file(conn, f"/{name}", tmp_path / name)
    assert scans == [tmp_path]  # one listing for the twenty gets
    assert all((tmp_path / n).read_bytes() == d for n, d in files.items())

    # Left by another run after the listing: offered, and resumed.
    (tmp_path / f".late.bin.{md5(big)}{transfer.PARTIAL_SUFFIX}").write_bytes(big[: 50 * KiB])
    result = transfer.get_file(conn, "/late.bin", tmp_path / "late.bin")
    assert result.offset == 50 * KiB
    assert (tmp_path / "late.bin").read_bytes() == big

    # Listed, then removed by someone else before the get: not offered, no error.
    (tmp_path / f".g00.bin.{md5(files['g00.bin'])}{transfer.PARTIAL_SUFFIX}").write_bytes(b"x")
    (tmp_path / "g00.bin").unlink()
    assert transfer._KNOWN.of(tmp_path / "g00.bin")  # listed now
    stamp = os.stat(tmp_path).st_mtime_ns
    for partial in partials_in(tmp_path):
        partial.unlink()
    os.utime(tmp_path, ns=(stamp, stamp))  # as if within one tick of a coarse clock
    assert transfer._KNOWN.of(tmp_path / "g00.bin")  # still believed there
    result = transfer.get_file(conn, "/g00.bin", tmp_path / "g00.bin")
    assert result.offset == 0
    assert (tmp_path / "g00.bin").read_bytes() == files["g00.bin"]
    conn.close()
