"""Graceful stop of the real daemon process: SIGTERM / SIGINT, grace period, resume.

A client thread uploads ~40 MiB with the real ``ftp_client.transfer.put_file``; its socket
is wrapped so that, a few MiB into the body, the sender holds until the test lets it go.
That pins "mid-body when the signal arrives" without any sleep: the test releases the
sender either while the daemon is still draining (the transfer completes) or after the
daemon has given up and exited (the partial stays, and a restarted daemon resumes it).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ftp_client import transfer as client_transfer
from ftp_client.connection import ConnectError, Connection
from ftpd import errors
from ftpd.storage.local import PARTIAL_DIR
from tests.conftest import DaemonProcess, Project

MiB = 1024 * 1024
BIG = 40 * MiB
HOLD_AFTER = 4 * MiB  # the sender holds once this much has gone out
WAIT_S = 30.0


class HeldSocket:
    """The client's socket: after ``hold_after`` bytes, ``sendall`` waits for ``release``.

    Everything but ``sendall`` goes to the real socket (the connection reads through its
    own reader on the real socket).
    """

    def __init__(self, sock: Any, hold_after: int) -> None:
        self._sock = sock
        self._left = hold_after
        self.holding = threading.Event()
        self.release = threading.Event()

    def sendall(self, data: Any) -> None:
        if self._left <= 0 and not self.release.is_set():
            self.holding.set()
            if not self.release.wait(WAIT_S):
                raise TimeoutError("the test never released the sender")
        self._sock.sendall(data)
        self._left -= len(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


class Upload(threading.Thread):
    """``put_file`` in a thread over a held socket; keeps the result or the exception."""

    def __init__(self, conn: Connection, local: Path, remote: str) -> None:
        super().__init__(daemon=True)
        self.held = HeldSocket(conn.sock, HOLD_AFTER)
        conn.sock = self.held  # type: ignore[assignment]
        self.conn, self.local, self.remote = conn, local, remote
        self.result: client_transfer.Result | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.result = client_transfer.put_file(self.conn, self.local, self.remote)
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            self.error = exc

    def wait_holding(self) -> None:
        assert self.held.holding.wait(WAIT_S), f"the upload never got under way: {self.error!r}"

    def finish(self) -> None:
        self.held.release.set()
        self.join(WAIT_S)
        assert not self.is_alive()


@pytest.fixture
def big_file(tmp_path: Path) -> Path:
    path = tmp_path / "big.bin"
    path.write_bytes(os.urandom(BIG))
    return path


@pytest.fixture
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    # Small sends, so the hold point falls inside the body with little overshoot.
    monkeypatch.setattr(client_transfer, "SEND_CHUNK", 256 * 1024)


@pytest.fixture
def stopped_daemon(project: Project) -> Iterator[DaemonProcess]:
    proc = DaemonProcess(project)
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture
def start_upload() -> Iterator[Callable[[Connection, Path, str], Upload]]:
    started: list[Upload] = []

    def start(conn: Connection, local: Path, remote: str) -> Upload:
        upload = Upload(conn, local, remote)
        started.append(upload)
        upload.start()
        return upload

    yield start
    for upload in started:  # a failed test must not leave a sender waiting
        upload.held.release.set()


def _partials(project: Project, user: str) -> list[Path]:
    folder = project.home(user) / PARTIAL_DIR
    return sorted(folder.iterdir()) if folder.is_dir() else []


def _signal_and_wait_stopping(daemon: DaemonProcess, signum: int) -> None:
    mark = len(daemon.lines)
    daemon.signal(signum)
    daemon.wait_for_line("STOPPING: no new connections", start=mark)


@pytest.mark.usefixtures("small_chunks")
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_stop_running_upload_finishes_within_grace_period(
    project: Project,
    stopped_daemon: DaemonProcess,
    start_upload: Callable[..., Upload],
    big_file: Path,
    signum: int,
) -> None:
    project.write_config(grace_period=20)
    daemon = stopped_daemon.start()
    upload = start_upload(daemon.login("bob"), big_file, "big.bin")
    upload.wait_holding()  # mid-body

    _signal_and_wait_stopping(daemon, signum)
    with pytest.raises(ConnectError):  # the port is closed: new connections are refused
        daemon.connect(timeout=5)
    assert daemon.proc is not None and daemon.proc.poll() is None  # waiting for the upload

    upload.finish()
    assert upload.error is None, repr(upload.error)
    assert upload.result is not None and upload.result.offset == 0 and upload.result.size == BIG
    assert daemon.wait() == 0
    assert (project.home("bob") / "big.bin").read_bytes() == big_file.read_bytes()
    assert _partials(project, "bob") == []
    assert any("STOPPED cleanly" in line for line in daemon.lines)


@pytest.mark.usefixtures("small_chunks")
def test_stop_grace_period_over_keeps_partial_and_resumes_after_restart(
    project: Project,
    stopped_daemon: DaemonProcess,
    start_upload: Callable[..., Upload],
    big_file: Path,
) -> None:
    project.write_config(grace_period=1)
    daemon = stopped_daemon.start()
    upload = start_upload(daemon.login("bob"), big_file, "big.bin")
    upload.wait_holding()

    _signal_and_wait_stopping(daemon, signal.SIGTERM)
    assert daemon.wait(timeout=20) == 0  # gave up on the upload after the grace period
    assert any("STOPPED after closing sessions still running" in line for line in daemon.lines)
    upload.finish()  # the sender goes on into a closed connection
    assert upload.result is None
    assert isinstance(upload.error, (errors.FTPError, OSError)), repr(upload.error)

    assert not (project.home("bob") / "big.bin").exists()
    [partial] = _partials(project, "bob")
    kept = partial.stat().st_size
    assert 0 < kept < BIG
    assert partial.read_bytes() == big_file.read_bytes()[:kept]

    daemon.start()  # a new process on a new port
    conn = daemon.login("bob")
    result = client_transfer.put_file(conn, big_file, "big.bin")
    assert result.offset == kept and not result.restarted
    assert (project.home("bob") / "big.bin").read_bytes() == big_file.read_bytes()
    assert _partials(project, "bob") == []
    conn.quit()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_stop_idle_sessions_closed_at_once(
    project: Project, stopped_daemon: DaemonProcess, signum: int
) -> None:
    grace_s = 20
    project.write_config(grace_period=grace_s)
    daemon = stopped_daemon.start()
    logged_in = daemon.login("alice")
    greeted = daemon.connect()  # connected, not logged in

    started = time.monotonic()
    daemon.signal(signum)
    assert daemon.wait(timeout=grace_s) == 0
    # Idle sessions are not waited for: far less than the grace period.
    assert time.monotonic() - started < grace_s / 4
    assert any("STOPPED cleanly" in line for line in daemon.lines)
    for conn in (logged_in, greeted):
        conn.sock.settimeout(5)
        # Told why (a 421 farewell frame), then closed by the daemon, not timed out.
        with pytest.raises(errors.UnavailableError, match="shutting down"):
            conn.read_response()
        try:
            assert conn.reader.read(1) == b""
        except ConnectionResetError:
            pass
        conn.close()


def test_stop_without_sessions_exits_zero(stopped_daemon: DaemonProcess) -> None:
    daemon = stopped_daemon.start()
    daemon.signal(signal.SIGTERM)
    assert daemon.wait(timeout=10) == 0
    assert any("STOPPED cleanly" in line for line in daemon.lines)
