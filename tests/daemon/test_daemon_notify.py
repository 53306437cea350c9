"""sd_notify through the real daemon process: READY, RELOADING, STATUS, STOPPING, in order.

The test binds the AF_UNIX datagram socket systemd would own and points the daemon's
``$NOTIFY_SOCKET`` at it.  Every receive has a timeout; waiting for a datagram is how the
test synchronises with the daemon, never a sleep.
"""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ftpd.framed.protocol import Data, End
from tests.conftest import DaemonProcess, Project

# A periodic STATUS comes every ftpd.daemon.STATUS_EVERY_S; allow a few plus start-up.
RECV_TIMEOUT_S = 20.0

Fields = dict[str, str]


class Receiver:
    """The systemd side: one bound datagram socket, every datagram kept in order."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / "notify"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.settimeout(RECV_TIMEOUT_S)
        self.sock.bind(str(self.path))
        self.seen: list[Fields] = []

    def next(self) -> Fields:
        data = self.sock.recv(4096).decode("utf-8")
        assert data.endswith("\n"), data
        fields = dict(line.split("=", 1) for line in data.splitlines())
        self.seen.append(fields)
        return fields

    def until(self, match: Callable[[Fields], bool], timeout: float = RECV_TIMEOUT_S) -> Fields:
        """Receive until a datagram matches; the ones skipped stay in ``seen``."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no matching datagram; got {self.seen}")
            self.sock.settimeout(left)
            try:
                fields = self.next()
            except TimeoutError:
                raise AssertionError(f"no matching datagram; got {self.seen}") from None
            if match(fields):
                return fields

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def receiver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Receiver]:
    # tmp_path embeds the test name and can pass the 108-byte AF_UNIX limit; mktemp is short.
    recv = Receiver(tmp_path_factory.mktemp("sd"))
    yield recv
    recv.close()


@pytest.fixture
def notified(project: Project, receiver: Receiver) -> Iterator[DaemonProcess]:
    proc = DaemonProcess(project, env={"NOTIFY_SOCKET": str(receiver.path)})
    try:
        yield proc
    finally:
        proc.stop()


def _is(key: str) -> Callable[[Fields], bool]:
    return lambda fields: key in fields


def _status_says(text: str) -> Callable[[Fields], bool]:
    return lambda fields: text in fields.get("STATUS", "")


def _monotonic_usec() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


def test_daemon_notify_ready_after_listening_with_status(
    notified: DaemonProcess, receiver: Receiver
) -> None:
    notified.start()
    first = receiver.next()
    assert first == {"READY": "1", "STATUS": "0 sessions, 0 transfers"}
    # READY comes after the socket listens: a client gets in at once.
    conn = notified.login("bob")
    assert conn.call("pwd").data["cwd"] == "/"
    conn.quit()


def test_daemon_notify_lifecycle_order(notified: DaemonProcess, receiver: Receiver) -> None:
    notified.start()
    assert receiver.until(_is("READY"))["READY"] == "1"

    before = _monotonic_usec()
    mark = len(notified.lines)
    notified.signal(signal.SIGHUP)
    reloading = receiver.until(_is("RELOADING"))
    after = _monotonic_usec()
    assert set(reloading) == {"RELOADING", "MONOTONIC_USEC"}
    assert reloading["RELOADING"] == "1"
    # The same CLOCK_MONOTONIC as ours (system-wide), read between our two readings.
    assert before <= int(reloading["MONOTONIC_USEC"]) <= after
    ready = receiver.until(_is("READY"))
    assert ready == {"READY": "1", "STATUS": "0 sessions, 0 transfers"}
    notified.wait_for_line("RELOADED", start=mark)

    notified.signal(signal.SIGTERM)
    assert receiver.until(_is("STOPPING")) == {"STOPPING": "1"}
    assert notified.wait() == 0

    # Whatever periodic STATUS datagrams came in between, the lifecycle is in this order.
    lifecycle = [
        key
        for fields in receiver.seen
        for key in ("READY", "RELOADING", "STOPPING")
        if key in fields
    ]
    assert lifecycle == ["READY", "RELOADING", "READY", "STOPPING"]


def test_daemon_notify_rejected_reload_still_ends_with_ready(
    project: Project, notified: DaemonProcess, receiver: Receiver
) -> None:
    notified.start()
    receiver.until(_is("READY"))
    project.users_path.write_text("users:\n  alice: [unclosed\n", encoding="utf-8")
    mark = len(notified.lines)
    notified.signal(signal.SIGHUP)
    receiver.until(_is("RELOADING"))
    # systemd must not be left in "reloading": the daemon serves on with the old users.
    assert receiver.until(_is("READY"))["READY"] == "1"
    notified.wait_for_line("RELOAD REJECTED", start=mark)
    notified.login("alice").quit()


def test_daemon_notify_periodic_status_counts_sessions_and_transfers(
    notified: DaemonProcess, receiver: Receiver
) -> None:
    notified.start()
    receiver.until(_is("READY"))
    conn = notified.login("bob")
    try:
        # A two-phase put held open mid-body by this (the client) side: one live transfer.
        payload = os.urandom(256 * 1024)
        ready = conn.call("put", path="held.bin", size=len(payload))
        assert ready.code == 150 and ready.data["offset"] == 0
        conn.send(Data(len(payload), 0))
        conn.sock.sendall(payload[:1000])
        receiver.until(_status_says("1 sessions, 1 transfers"))
        conn.sock.sendall(payload[1000:])
        conn.send(End(hashlib.md5(payload).hexdigest()))
        assert conn.read_response().code == 200
    finally:
        conn.quit()
    receiver.until(_status_says("0 sessions, 0 transfers"))
    assert (notified.project.home("bob") / "held.bin").read_bytes() == payload


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_daemon_notify_stopping_on_stop_signals(
    notified: DaemonProcess, receiver: Receiver, signum: int
) -> None:
    notified.start()
    receiver.until(_is("READY"))
    notified.signal(signum)
    assert receiver.until(_is("STOPPING")) == {"STOPPING": "1"}
    assert notified.wait() == 0


def test_daemon_notify_socket_gone_does_not_stop_the_daemon(
    project: Project, tmp_path_factory
) -> None:
    missing = tmp_path_factory.mktemp("sd") / "nobody"
    proc = DaemonProcess(project, env={"NOTIFY_SOCKET": str(missing)})
    try:
        proc.start()
        proc.wait_for_line("sd_notify to .* failed")
        conn = proc.login("bob")
        assert conn.call("pwd").data["cwd"] == "/"
        conn.quit()
        proc.signal(signal.SIGTERM)
        assert proc.wait() == 0
    finally:
        proc.stop()
