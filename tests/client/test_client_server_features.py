"""Client features that need daemon behaviour being added alongside them.

Run separately (``pytest tests/client/test_client_server_features.py``) once the daemon
has: ``rm`` with ``recursive: true``; ``put`` keeping ``mtime``; ``mode`` in listings;
``partial`` / ``expected`` on names an unfinished upload is filling; ``mtime`` in the
``get`` answer; and a ``409 conflict`` ("being uploaded by another session") for an upload
whose target another live session is still receiving, with takeover after
``takeover_after`` seconds of silence.  Everything goes through the real daemon (the
``server`` fixture) and the real client.
"""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ftp_client import cli, transfer
from ftp_client.connection import Connection
from ftp_client.shell import Session, Shell
from ftpd.framed.protocol import Data, End, Request
from tests.conftest import PASSWORDS, RunningServer
from tests.support import wait_until

MiB = 1024 * 1024


@pytest.fixture
def local(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "local"
    folder.mkdir()
    monkeypatch.chdir(folder)
    monkeypatch.setenv("FTP_PASSWORD", PASSWORDS["alice"])
    return folder


@pytest.fixture
def home(server: RunningServer) -> Path:
    server.login("alice").quit()
    return server.project.home("alice")


@pytest.fixture
def shell(server: RunningServer, local: Path) -> Iterator[Shell]:
    session = Session(server.connect, "alice", PASSWORDS["alice"])
    sh = Shell(session, quiet=True, interactive=False)
    yield sh
    session.close()


def run(shell: Shell, line: str, capsys: pytest.CaptureFixture[str]) -> tuple[str, str]:
    shell.stdout = sys.stdout
    shell.onecmd(line)
    captured = capsys.readouterr()
    return captured.out, captured.err


def visible(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name != ".ftpd")


# --- rm -r ----------------------------------------------------------------------------


def test_rm_r_removes_a_whole_tree(
    shell: Shell, home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (home / "tree" / "a" / "b").mkdir(parents=True)
    (home / "tree" / "a" / "b" / "f.txt").write_bytes(b"f")
    (home / "tree" / "g.txt").write_bytes(b"g")
    (home / "keep.txt").write_bytes(b"k")

    _out, err = run(shell, "rm -r tree", capsys)

    assert not shell.last_failed, err
    assert visible(home) == ["keep.txt"]


def test_rm_r_wildcard_removes_matching_trees_and_files(
    shell: Shell, home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (home / "old" / "2023" / "x").mkdir(parents=True)
    (home / "old" / "2023" / "x" / "f.bin").write_bytes(b"f")
    (home / "old" / "2023.tar").write_bytes(b"t")
    (home / "old" / "2024").mkdir()

    _out, err = run(shell, "rm -r old/2023*", capsys)

    assert not shell.last_failed, err
    assert visible(home / "old") == ["2024"]


# --- put -p ---------------------------------------------------------------------------


@pytest.mark.parametrize("size", [100, transfer.INLINE_MAX + 100])
def test_put_p_keeps_the_modification_time(
    shell: Shell, home: Path, local: Path, capsys: pytest.CaptureFixture[str], size: int
) -> None:
    (local / "f.bin").write_bytes(os.urandom(size))
    os.utime(local / "f.bin", (1_500_000_000.5, 1_500_000_000.5))
    (local / "tree").mkdir()
    (local / "tree" / "g.bin").write_bytes(os.urandom(size))
    os.utime(local / "tree" / "g.bin", (1_400_000_000.0, 1_400_000_000.0))

    for line in ("put -p f.bin", "put f.bin plain.bin", "put -r -p tree up"):
        _out, err = run(shell, line, capsys)
        assert not shell.last_failed, (line, err)

    assert (home / "f.bin").stat().st_mtime == pytest.approx(1_500_000_000.5, abs=1e-3)
    assert (home / "plain.bin").stat().st_mtime > 1_700_000_000
    assert (home / "up" / "g.bin").stat().st_mtime == pytest.approx(1_400_000_000.0, abs=1e-3)


def test_get_p_uses_the_mtime_of_the_get_answer(
    shell: Shell,
    home: Path,
    local: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    (home / "f.bin").write_bytes(b"x" * 100)
    os.utime(home / "f.bin", (1_600_000_000.0, 1_600_000_000.0))
    calls: list[str] = []
    real = Connection.call

    def spy(self: Connection, cmd: str, body: bytes | None = None, **args: object):  # type: ignore[no-untyped-def]
        calls.append(cmd)
        return real(self, cmd, body, **args)

    monkeypatch.setattr(Connection, "call", spy)
    _out, err = run(shell, "get -p f.bin", capsys)
    assert not shell.last_failed, err
    assert "stat" not in calls  # the get answer carried the time
    assert (local / "f.bin").stat().st_mtime == pytest.approx(1_600_000_000.0, abs=1e-3)


# --- ls -l with the server's mode, unfinished uploads -----------------------------------


def test_ls_l_shows_the_servers_permission_bits(
    shell: Shell, home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (home / "private.txt").write_bytes(b"p")
    (home / "private.txt").chmod(0o600)
    (home / "run.sh").write_bytes(b"#!/bin/sh\n")
    (home / "run.sh").chmod(0o755)
    (home / "shared").mkdir()
    (home / "shared").chmod(0o750)

    out, err = run(shell, "ls -l", capsys)

    assert not shell.last_failed, err
    lines = out.splitlines()
    assert lines[0].startswith("-rw------- ") and lines[0].endswith("  private.txt")
    assert lines[1].startswith("-rwxr-xr-x ") and lines[1].endswith("  run.sh")
    assert lines[2].startswith("drwxr-x--- ") and lines[2].endswith("  shared")


def test_ls_marks_a_name_an_unfinished_upload_is_filling(
    server: RunningServer, shell: Shell, home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    size, sent = 5 * MiB, 2 * MiB
    cut = server.login("alice")
    cut.send(Request("put", {"path": "big.iso", "size": size}))
    assert cut.read_response().code == 150
    cut.send(Data(size, 0))
    cut.sock.sendall(os.urandom(sent))
    cut.close()

    def listed() -> bool:
        return "big.iso  (unfinished: 40% of 5.0 MiB)" in run(shell, "ls -l", capsys)[0]

    wait_until(listed, timeout=10)  # the daemon writes what it received, then notices the cut


# --- an upload another live session holds: 409, wait, retry ---------------------------


def test_put_waits_for_another_sessions_upload_then_stores(
    server_factory: Callable[..., RunningServer],
    local: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    server = server_factory(takeover_after=15)
    theirs, ours = os.urandom(2 * MiB), os.urandom(3 * MiB)
    (local / "big.bin").write_bytes(ours)
    holder = server.login("alice")
    holder.send(Request("put", {"path": "big.bin", "size": len(theirs)}))
    assert holder.read_response().code == 150
    holder.send(Data(len(theirs), 0))
    holder.sock.sendall(theirs[:MiB])  # alive and receiving: no takeover yet

    pauses: list[float] = []

    def pause(seconds: float) -> None:
        # The other session finishes while we wait (the client's retry pause).
        pauses.append(seconds)
        if len(pauses) == 1:
            holder.sock.sendall(theirs[MiB:])
            holder.send(End(hashlib.md5(theirs).hexdigest()))
            assert holder.read_response().code == 200

    monkeypatch.setattr(transfer, "_sleep", pause)
    session = Session(server.connect, "alice", PASSWORDS["alice"])
    shell = Shell(session, quiet=False, interactive=False)
    _out, err = run(shell, "put big.bin", capsys)

    assert not shell.last_failed, err
    assert pauses, "the client never saw the 409"
    assert "being uploaded by another session; waiting up to 20 s" in err
    assert (server.project.home("alice") / "big.bin").read_bytes() == ours
    session.close()
    holder.close()


def test_cli_put_p_with_a_wildcard(
    server: RunningServer, local: Path, home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (local / "a.log").write_bytes(b"a")
    (local / "b.log").write_bytes(b"b")
    for name in ("a.log", "b.log"):
        os.utime(local / name, (1_300_000_000.0, 1_300_000_000.0))
    status = cli.main(["-q", "-c", "put -p *.log", f"alice@{server.host}:{server.port}"])
    assert status == 0, capsys.readouterr().err
    for name in ("a.log", "b.log"):
        assert (home / name).stat().st_mtime == pytest.approx(1_300_000_000.0, abs=1e-3)
