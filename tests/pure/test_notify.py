"""Tests for ftpd.notify: sd_notify datagrams to a socket the test binds itself."""

from __future__ import annotations

import socket
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from ftpd.notify import Notifier

TIMEOUT_S = 5.0


def _receiver(address: str | bytes) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.settimeout(TIMEOUT_S)
    sock.bind(address)
    return sock


def _fields(sock: socket.socket) -> dict[str, str]:
    """Receive one datagram and parse its KEY=VALUE lines."""
    data = sock.recv(4096).decode()
    assert data.endswith("\n")
    return dict(line.split("=", 1) for line in data.splitlines())


@pytest.fixture
def sock_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # A short directory: AF_UNIX paths are limited to 108 bytes, and tmp_path embeds
    # the (possibly long) test name.
    return tmp_path_factory.mktemp("ns") / "notify"


@pytest.fixture
def receiver(sock_path: Path) -> Iterator[socket.socket]:
    sock = _receiver(str(sock_path))
    yield sock
    sock.close()


@pytest.fixture
def notifier(sock_path: Path, receiver: socket.socket) -> Iterator[Notifier]:
    n = Notifier(str(sock_path))
    yield n
    n.close()


def test_notifier_sends_lifecycle_in_order(notifier: Notifier, receiver: socket.socket) -> None:
    assert notifier.enabled
    assert notifier.ready("serving on 127.0.0.1:2121")
    assert notifier.status("2 sessions")
    assert notifier.reloading()
    assert notifier.ready()
    assert notifier.stopping()

    assert _fields(receiver) == {"READY": "1", "STATUS": "serving on 127.0.0.1:2121"}
    assert _fields(receiver) == {"STATUS": "2 sessions"}
    reloading = _fields(receiver)
    assert reloading["RELOADING"] == "1"
    assert int(reloading["MONOTONIC_USEC"]) > 0
    assert set(reloading) == {"RELOADING", "MONOTONIC_USEC"}
    assert _fields(receiver) == {"READY": "1"}
    assert _fields(receiver) == {"STOPPING": "1"}


def test_notifier_notify_sends_given_fields(notifier: Notifier, receiver: socket.socket) -> None:
    assert notifier.notify(STATUS="x", ERRNO=0)
    assert receiver.recv(4096) == b"STATUS=x\nERRNO=0\n"


def test_notifier_status_flattens_newlines(notifier: Notifier, receiver: socket.socket) -> None:
    notifier.status("line one\nREADY=1\r\nline three\n")
    assert _fields(receiver) == {"STATUS": "line one READY=1 line three"}


@pytest.mark.skipif(sys.platform != "linux", reason="abstract sockets are Linux-only")
def test_notifier_abstract_namespace() -> None:
    name = f"ftpd-test-{uuid.uuid4().hex}"
    with _receiver("\0" + name) as receiver:
        notifier = Notifier("@" + name)
        try:
            assert notifier.ready()
            assert _fields(receiver) == {"READY": "1"}
        finally:
            notifier.close()


def test_notifier_reads_notify_socket_env(
    monkeypatch: pytest.MonkeyPatch, sock_path: Path, receiver: socket.socket
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(sock_path))
    notifier = Notifier()
    assert notifier.stopping()
    assert _fields(receiver) == {"STOPPING": "1"}
    notifier.close()


@pytest.mark.parametrize("value", [None, ""])
def test_notifier_disabled_without_env(monkeypatch: pytest.MonkeyPatch, value: str | None) -> None:
    if value is None:
        monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    else:
        monkeypatch.setenv("NOTIFY_SOCKET", value)
    notifier = Notifier()
    assert not notifier.enabled
    assert not notifier.ready("x")
    assert not notifier.reloading()
    assert not notifier.status("x")
    assert not notifier.stopping()
    notifier.close()


def test_notifier_vanished_socket_does_not_raise(
    notifier: Notifier, receiver: socket.socket, sock_path: Path
) -> None:
    assert notifier.ready()
    receiver.close()
    sock_path.unlink()

    assert not notifier.status("nobody listening")  # connected peer gone
    assert not notifier.stopping()  # reconnect finds no path

    with _receiver(str(sock_path)) as again:  # systemd came back: reconnects lazily
        assert notifier.status("back")
        assert _fields(again) == {"STATUS": "back"}


def test_notifier_missing_path_does_not_raise(tmp_path: Path) -> None:
    notifier = Notifier(str(tmp_path / "never-bound"))
    assert notifier.enabled
    assert not notifier.ready()


def test_notifier_concurrent_status_datagrams_stay_whole(
    notifier: Notifier, receiver: socket.socket
) -> None:
    threads_n, per_thread = 4, 10

    def send(t: int) -> None:
        for i in range(per_thread):
            notifier.status(f"t{t}-{i}")

    threads = [threading.Thread(target=send, args=(t,)) for t in range(threads_n)]
    for thread in threads:
        thread.start()
    # Receive while the senders run: the kernel queue for datagrams is short.
    got = {_fields(receiver)["STATUS"] for _ in range(threads_n * per_thread)}
    for thread in threads:
        thread.join(TIMEOUT_S)
    assert got == {f"t{t}-{i}" for t in range(threads_n) for i in range(per_thread)}
