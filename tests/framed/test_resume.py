"""Interrupted transfers resume, and nothing half-written ever stands under a real name.

The hard cases run real processes: the client (``ftp_client.cli``) is SIGKILLed mid-put
and mid-get, and the daemon is SIGKILLed mid-upload and restarted.  To be sure the kill
lands mid-way, the client runs through a small wrapper that makes it slow (64 KiB per
send or receive, each after a short sleep): that is the client being slow, not the test
sleeping to synchronise; the test polls the partial's size with a deadline.
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ftp_client import transfer
from ftp_client.connection import Connection
from ftpd.framed.protocol import Data, Request
from ftpd.storage.local import PARTIAL_DIR
from tests.conftest import PASSWORDS, DaemonProcess, RunningServer
from tests.support import LogRecords, wait_upload_released

MiB = 1024 * 1024
BIG = 30 * MiB + 123
KILL_AFTER = 4 * MiB

SLOW_CLIENT = '''
"""ftp_client.cli with a slow network: 64 KiB per send/receive after FTP_TEST_DELAY s."""
import os, sys, time
from ftp_client import transfer
from ftp_client.cli import main
from ftpd.framed import streams

delay = float(os.environ.get("FTP_TEST_DELAY", "0"))
if delay:
    transfer.SEND_CHUNK = 64 * 1024

    class SlowSock:
        def __init__(self, sock):
            self._sock = sock

        def sendall(self, data):
            time.sleep(delay)
            return self._sock.sendall(data)

        def __getattr__(self, name):
            return getattr(self._sock, name)

    real_send_body = transfer._send_body

    def send_body(conn, *args):
        real = conn.sock
        conn.sock = SlowSock(real)
        try:
            return real_send_body(conn, *args)
        finally:
            conn.sock = real

    transfer._send_body = send_body
    real_recv_into = streams.SocketReader._recv_into

    def recv_into(self, view):
        time.sleep(delay)
        return real_recv_into(self, view[: 64 * 1024])

    streams.SocketReader._recv_into = recv_into
sys.exit(main(sys.argv[1:]))
'''


def payload(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


def md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def wait_until(
    condition: Callable[[], bool], timeout: float = 20.0, what: str = "condition"
) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met within {timeout} s")
        time.sleep(0.005)


def server_partials(home: Path) -> list[Path]:
    folder = home / PARTIAL_DIR
    return sorted(folder.iterdir()) if folder.is_dir() else []


def partial_size(paths: list[Path]) -> int:
    try:
        return sum(p.stat().st_size for p in paths)
    except FileNotFoundError:
        return 0


def local_partials(folder: Path) -> list[Path]:
    return sorted(folder.glob("*" + transfer.PARTIAL_SUFFIX))


def visible(home: Path) -> list[str]:
    return sorted(p.name for p in home.iterdir() if p.name != ".ftpd")


class Client:
    """Runs the real client CLI as a process (optionally slowed down)."""

    def __init__(self, script: Path, daemon: DaemonProcess, cwd: Path, user: str = "bob") -> None:
        self.script, self.daemon, self.cwd, self.user = script, daemon, cwd, user

    def start(self, command: str, delay: float = 0.0) -> subprocess.Popen[str]:
        env = {
            **os.environ,
            "FTP_PASSWORD": PASSWORDS[self.user],
            "FTP_TEST_DELAY": str(delay),
            "PYTHONUNBUFFERED": "1",
        }
        return subprocess.Popen(
            [
                sys.executable,
                str(self.script),
                "-u",
                self.user,
                "-c",
                command,
                f"127.0.0.1:{self.daemon.port}",
                "--timeout",
                "20",
            ],
            cwd=self.cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def run(self, command: str) -> tuple[int, str, str]:
        proc = self.start(command)
        out, err = proc.communicate(timeout=60)
        return proc.returncode, out, err


def kill_when(proc: subprocess.Popen[str], grown: Callable[[], bool], what: str) -> None:
    """SIGKILL ``proc`` as soon as ``grown()`` holds (polled with a deadline)."""
    try:
        wait_until(lambda: grown() or proc.poll() is not None, what=what)
        assert proc.poll() is None, f"the transfer finished before the kill: {proc.communicate()}"
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)


@pytest.fixture
def slow_client(tmp_path: Path) -> Path:
    script = tmp_path / "slow_client.py"
    script.write_text(SLOW_CLIENT, encoding="utf-8")
    return script


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    folder = tmp_path / "work"
    folder.mkdir()
    return folder


def log_from(daemon: DaemonProcess, verb: str, path: str, size: int, start: int = 0) -> int:
    """The resume offset in the command's one log line, waited for from line ``start`` on.

    "CMD ... user=bob put path=P ... -> 200 ok (...) PUT size=N from=K": the daemon
    writes it after answering, so the client may have exited before it is read.
    """
    shown = re.escape(path.lstrip("/"))
    pattern = rf"user=bob {verb.lower()} path={shown} .* {verb} size={size} from=\d+"
    line = daemon.wait_for_line(pattern, start=start)
    return int(re.search(r"from=(\d+)", line).group(1))  # type: ignore[union-attr]


# --- processes killed -----------------------------------------------------------------


def test_resume_put_after_client_sigkill(
    daemon: DaemonProcess, slow_client: Path, workdir: Path
) -> None:
    daemon.start()
    data = payload(BIG, seed=1)
    (workdir / "big.bin").write_bytes(data)
    client = Client(slow_client, daemon, workdir)
    home = daemon.project.home("bob")

    proc = client.start("put big.bin", delay=0.01)
    kill_when(
        proc, lambda: partial_size(server_partials(home)) > KILL_AFTER, "server partial > 4 MiB"
    )

    assert proc.returncode == -signal.SIGKILL
    assert visible(home) == []  # nothing under the real name
    assert len(server_partials(home)) == 1
    mark = len(daemon.lines)
    status, out, err = client.run("put big.bin; ls")

    assert status == 0, err
    match = re.search(
        r"put big\.bin: (\d+) bytes, md5 ([0-9a-f]{32}) verified, resumed at byte (\d+)", out
    )
    assert match, out
    resumed_at = int(match.group(3))
    assert 0 < resumed_at < BIG
    assert f"resuming upload of big.bin at byte {resumed_at}" in err
    assert match.group(2) == md5(data)
    assert log_from(daemon, "PUT", "/big.bin", BIG, start=mark) == resumed_at
    assert (home / "big.bin").read_bytes() == data
    assert server_partials(home) == []
    assert "big.bin" in out.splitlines()[-1]


def test_resume_get_after_client_sigkill(
    daemon: DaemonProcess, slow_client: Path, workdir: Path
) -> None:
    daemon.start()
    daemon.login("bob").quit()  # the home exists from the first login
    data = payload(BIG, seed=2)
    (daemon.project.home("bob") / "big.bin").write_bytes(data)
    client = Client(slow_client, daemon, workdir)
    partial_name = f".big.bin.{md5(data)}{transfer.PARTIAL_SUFFIX}"

    proc = client.start("get big.bin", delay=0.01)
    kill_when(
        proc, lambda: partial_size(local_partials(workdir)) > KILL_AFTER, "local partial > 4 MiB"
    )

    assert proc.returncode == -signal.SIGKILL
    assert sorted(p.name for p in workdir.iterdir()) == [partial_name]  # not under big.bin
    kept = (workdir / partial_name).stat().st_size
    assert 0 < kept < BIG
    mark = len(daemon.lines)
    status, out, err = client.run("get big.bin")

    assert status == 0, err
    assert f"resumed at byte {kept}" in out
    assert f"resuming download of big.bin at byte {kept}" in err
    assert (workdir / "big.bin").read_bytes() == data
    assert sorted(p.name for p in workdir.iterdir()) == ["big.bin"]
    assert log_from(daemon, "GET", "big.bin", BIG, start=mark) == kept


def test_resume_put_after_daemon_sigkill_and_restart(
    daemon: DaemonProcess, slow_client: Path, workdir: Path
) -> None:
    daemon.start()
    data = payload(BIG, seed=3)
    (workdir / "big.bin").write_bytes(data)
    client = Client(slow_client, daemon, workdir)
    home = daemon.project.home("bob")
    proc = client.start("put big.bin", delay=0.01)

    try:
        wait_until(
            lambda: partial_size(server_partials(home)) > KILL_AFTER or proc.poll() is not None,
            what="server partial > 4 MiB",
        )
        assert proc.poll() is None, proc.communicate()
        daemon.kill()  # SIGKILL
        _out, err = proc.communicate(timeout=30)  # the client notices the lost connection
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)
    assert proc.returncode == 1, err
    assert "connection lost" in err and "Traceback" not in err
    assert visible(home) == []
    kept = partial_size(server_partials(home))
    assert 0 < kept < BIG

    daemon.start()  # a new process: its lines start afresh
    status, out, err = client.run("put big.bin")

    assert status == 0, err
    assert f"resumed at byte {kept}" in out
    assert log_from(daemon, "PUT", "/big.bin", BIG) == kept
    assert (home / "big.bin").read_bytes() == data
    assert server_partials(home) == []


# --- a connection cut in-process ------------------------------------------------------


def cut_upload(server: RunningServer, user: str, remote: str, data: bytes, sent: int) -> None:
    """Start a two-phase put of ``data``, send ``sent`` bytes, then drop the connection."""
    conn = server.login(user)
    conn.send(Request("put", {"path": remote, "size": len(data)}))
    assert conn.read_response().code == 150
    conn.send(Data(len(data), 0))
    conn.sock.sendall(data[:sent])
    home = server.project.home(user)
    wait_until(lambda: partial_size(server_partials(home)) == sent, what="partial written")
    conn.close()
    wait_upload_released(server.server.runtime, user, remote, timeout=20)  # drop settled
    assert not (home / remote).exists()


def spy_body(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Record how many body bytes each upload sends."""
    counts: list[int] = []
    real = transfer._send_body

    def send_body(conn: Connection, f: Any, count: int, hasher: Any, bar: Any) -> None:
        counts.append(count)
        real(conn, f, count, hasher, bar)

    monkeypatch.setattr(transfer, "_send_body", send_body)
    return counts


def test_resume_put_after_connection_cut_sends_only_the_rest(
    server: RunningServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    log_records: LogRecords,
) -> None:
    data = payload(5 * MiB + 11, seed=4)
    src = tmp_path / "src.bin"
    src.write_bytes(data)
    cut_upload(server, "alice", "f.bin", data, 3 * MiB)
    counts = spy_body(monkeypatch)
    notices: list[str] = []
    conn = server.login("alice")
    mark = log_records.mark()

    result = transfer.put_file(conn, src, "f.bin", notice=notices.append)

    assert result.offset == 3 * MiB and not result.restarted
    assert counts == [len(data) - 3 * MiB]
    assert notices == [f"resuming upload of f.bin at byte {3 * MiB} of {len(data)}"]
    # The server logs the put just after answering it: wait for the line, do not race it.
    line = log_records.wait_for(r"user=alice put path=f\.bin .* PUT size=", start=mark)
    assert f"size={len(data)} from={3 * MiB} " in line
    home = server.project.home("alice")
    assert (home / "f.bin").read_bytes() == data
    assert server_partials(home) == []
    conn.quit()


@pytest.mark.parametrize(
    "change, resumed",
    [
        ("same-size-changed-in-prefix", False),
        ("same-size-changed-after-prefix", True),
        ("shorter", False),
        ("longer", False),
    ],
)
def test_resume_put_after_source_changed_is_never_spliced(
    server: RunningServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    change: str,
    resumed: bool,
) -> None:
    old = payload(4 * MiB, seed=5)
    cut_upload(server, "alice", "f.bin", old, 2 * MiB)
    new = bytearray(old)
    if change == "same-size-changed-in-prefix":
        new[100] ^= 0xFF
    elif change == "same-size-changed-after-prefix":
        new[3 * MiB] ^= 0xFF
    elif change == "shorter":
        new = new[: 3 * MiB + 5]
    else:
        new += b"tail"
    src = tmp_path / "src.bin"
    src.write_bytes(new)
    counts = spy_body(monkeypatch)
    conn = server.login("alice")

    result = transfer.put_file(conn, src, "f.bin")

    home = server.project.home("alice")
    assert (home / "f.bin").read_bytes() == bytes(new)
    assert result.checksum == md5(bytes(new))
    if resumed:
        assert result.offset == 2 * MiB and counts == [len(new) - 2 * MiB]
    else:
        assert result.offset == 0 and counts == [len(new)]
        assert result.restarted == (change == "same-size-changed-in-prefix")
    assert server_partials(home) == []
    assert conn.call("quota").data["used"] == len(new)  # no stale partial counted
    conn.quit()


class _Interrupt(Exception):
    pass


def cut_download(conn: Connection, remote: str, local: Path, after: int) -> None:
    """A get that dies (like a Ctrl-C) once ``after`` bytes are in the local partial."""

    class Stop:
        got = 0

        def update(self, n: int) -> None:
            self.got += n
            if self.got >= after:
                raise _Interrupt

        def close(self) -> None:
            pass

    with pytest.raises(_Interrupt):
        transfer.get_file(conn, remote, local, progress=lambda *_a: Stop())
    conn.close()


@pytest.mark.parametrize("change", [None, "same-size", "other-size"])
def test_resume_get_restarts_when_remote_changed(
    server: RunningServer, tmp_path: Path, change: str | None
) -> None:
    old = payload(4 * MiB, seed=6)
    conn = server.login("alice")
    stored = server.project.home("alice") / "f.bin"
    stored.write_bytes(old)
    local = tmp_path / "down" / "f.bin"
    local.parent.mkdir()
    cut_download(conn, "f.bin", local, 2 * MiB)
    assert not local.exists()
    kept = local_partials(local.parent)
    assert [p.name for p in kept] == [f".f.bin.{md5(old)}{transfer.PARTIAL_SUFFIX}"]
    kept_size = kept[0].stat().st_size
    assert kept_size >= 2 * MiB
    new = old
    if change == "same-size":
        new = old[:-1] + bytes([old[-1] ^ 1])
    elif change == "other-size":
        new = old + b"more"
    stored.write_bytes(new)
    notices: list[str] = []
    conn = server.login("alice")

    result = transfer.get_file(conn, "f.bin", local, notice=notices.append)

    assert local.read_bytes() == new
    assert result.checksum == md5(new)
    assert local_partials(local.parent) == []
    if change is None:
        assert result.offset == kept_size
        assert notices and notices[0].startswith("resuming download of f.bin at byte ")
    else:
        assert result.offset == 0
        assert notices == ["f.bin changed on the server since the partial download; restarting"]
    conn.quit()
