"""Lifting login locks without a restart: ``ftpd user unlock``, the control socket, reload.

Issue 9: only a restart lifted a lock.  The daemon runs as a process (conftest's
``daemon``); its control socket serves once its ``CONTROL socket=`` line is out.  A second
loopback address (127.0.0.2) gives a second source address.  The control socket's own
rules (bad requests, a stale or live socket at the path) are tested in-process.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ftpd import config as config_mod
from ftpd import control
from ftpd.accounts.throttle import LoginThrottle
from ftpd.errors import ConfigError
from tests.conftest import PASSWORDS, DaemonProcess, Project
from tests.support import call, read_frame

TIMEOUT = 10.0
OTHER_IP = "127.0.0.2"
LOCKING = {
    "login_max_failures": 3,
    "login_max_failures_per_ip": 10,
    "login_lockout": 300,
    "login_delay": 0.01,
}


@pytest.fixture
def other_ip() -> str:
    probe = socket.socket()
    try:
        probe.bind((OTHER_IP, 0))
    except OSError:
        pytest.skip(f"cannot bind {OTHER_IP} on this machine")
    finally:
        probe.close()
    return OTHER_IP


def _login(daemon: DaemonProcess, user: str, password: str, source: str = "127.0.0.1") -> int:
    """One login on a fresh connection from ``source``; returns the reply's code."""
    address = ("127.0.0.1", daemon.port)
    with socket.create_connection(address, timeout=TIMEOUT, source_address=(source, 0)) as sock:
        assert read_frame(sock)["code"] == 220
        return int(call(sock, "login", user=user, password=password)["code"])


def _lock(daemon: DaemonProcess, user: str, source: str = "127.0.0.1") -> None:
    for _ in range(LOCKING["login_max_failures"]):
        assert _login(daemon, user, "wrong", source) == 430
    assert _login(daemon, user, PASSWORDS.get(user, "x"), source) == 429


def _start(project: Project, daemon: DaemonProcess, **settings: Any) -> DaemonProcess:
    project.write_config(**{**LOCKING, **settings})
    daemon.start()
    daemon.wait_for_line(r"CONTROL socket=")  # logged once the socket serves
    return daemon


def _ftpd(project: Project, *argv: str) -> subprocess.CompletedProcess[str]:
    """``ftpd ARGV --config <project>`` as a process, as an admin types it."""
    return subprocess.run(
        [sys.executable, "-m", "ftpd", *argv, "--config", str(project.config_path)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=project.root,
    )


# --- ftpd user unlock ----------------------------------------------------------------


def test_unlock_lifts_one_names_locks_without_a_restart(
    project: Project, daemon: DaemonProcess, other_ip: str
) -> None:
    _start(project, daemon)
    _lock(daemon, "alice")
    _lock(daemon, "alice", other_ip)
    _lock(daemon, "bob")
    mark = len(daemon.lines)
    result = _ftpd(project, "user", "unlock", "alice")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "unlocked alice from 2 address(es)"
    daemon.wait_for_line(r"UNLOCKED user='alice' addresses=2", start=mark)
    assert _login(daemon, "alice", PASSWORDS["alice"]) == 200
    assert _login(daemon, "alice", PASSWORDS["alice"], other_ip) == 200
    assert _login(daemon, "bob", PASSWORDS["bob"]) == 429  # other names keep their locks


def test_unlock_of_a_name_not_locked_says_so(project: Project, daemon: DaemonProcess) -> None:
    _start(project, daemon)
    assert _login(daemon, "carol", "wrong") == 430
    result = _ftpd(project, "user", "unlock", "carol")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "carol was not locked; its failed logins are forgotten"
    result = _ftpd(project, "user", "unlock", "carol")
    assert result.stdout.strip() == "carol was not locked and had no failed logins on record"


def test_unlock_without_a_running_daemon_says_so(project: Project) -> None:
    result = _ftpd(project, "user", "unlock", "alice")
    assert result.returncode == 1
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert lines[0].startswith("ftpd: no daemon answers on ")
    assert str(project.home_root / ".ftpd-control.sock") in lines[0]


def test_unlock_after_the_daemon_stopped_says_so(project: Project, daemon: DaemonProcess) -> None:
    _start(project, daemon)
    path = project.home_root / ".ftpd-control.sock"
    assert path.exists()
    daemon.signal(signal.SIGTERM)
    assert daemon.wait() == 0
    assert not path.exists()  # removed on the way out
    result = _ftpd(project, "user", "unlock", "alice")
    assert result.returncode == 1 and "no daemon answers on" in result.stderr


def test_unlock_control_socket_is_private(project: Project, daemon: DaemonProcess) -> None:
    _start(project, daemon)
    st = os.lstat(project.home_root / ".ftpd-control.sock")
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o600
    assert [p.name for p in project.home_root.iterdir() if p.name.endswith(".tmp")] == []


def test_unlock_control_socket_at_the_configured_path(
    project: Project, daemon: DaemonProcess
) -> None:
    _start(project, daemon, control_socket="ctl.sock")  # relative to ftpd.yaml's folder
    assert stat.S_ISSOCK(os.lstat(project.root / "ctl.sock").st_mode)
    _lock(daemon, "alice")
    result = _ftpd(project, "user", "unlock", "alice")
    assert result.returncode == 0, result.stderr
    assert _login(daemon, "alice", PASSWORDS["alice"]) == 200


# --- reload ----------------------------------------------------------------------------


def test_unlock_reload_lifts_every_lock(
    project: Project, daemon: DaemonProcess, other_ip: str
) -> None:
    _start(project, daemon, login_max_failures_per_ip=4)
    _lock(daemon, "alice")
    for name in ("u1", "u2", "u3"):  # with alice's three, the fourth locks the address
        assert _login(daemon, name, "guess", other_ip) == 430
    assert _login(daemon, "u4", "guess", other_ip) == 430
    assert _login(daemon, "bob", PASSWORDS["bob"], other_ip) == 429
    mark = len(daemon.lines)
    daemon.signal(signal.SIGHUP)
    daemon.wait_for_line(r"LOCKS LIFTED by the reload: 2", start=mark)
    daemon.wait_for_line(r"RELOADED", start=mark)
    assert _login(daemon, "alice", PASSWORDS["alice"]) == 200
    assert _login(daemon, "bob", PASSWORDS["bob"], other_ip) == 200


# --- the control socket itself (in-process) --------------------------------------------


@pytest.fixture
def control_server(tmp_path: Path) -> Iterator[tuple[control.ControlServer, LoginThrottle]]:
    brake = LoginThrottle(3, 60.0, 0.0)
    server = control.start(tmp_path / "ctl.sock", brake)
    assert server is not None
    yield server, brake
    server.stop()


def _raw(path: Path, payload: bytes) -> dict[str, Any]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(TIMEOUT)
        sock.connect(str(path))
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        with sock.makefile("rb") as answer:
            return dict(json.loads(answer.readline()))


@pytest.mark.parametrize(
    ("payload", "error"),
    [
        (b"not json\n", "not one JSON line"),
        (b"[1, 2]\n", 'must be an object with a "cmd"'),
        (b'{"cmd": "shutdown"}\n', "unknown command (known: gc, reload, rescan, unlock)"),
        (b'{"cmd": "__init__"}\n', "unknown command"),
        (b'{"cmd": "unlock"}\n', "unlock needs a user name"),
        (b'{"cmd": "unlock", "user": 5}\n', "unlock needs a user name"),
        (b'{"cmd": "unlock", "user": "' + b"x" * 5000 + b'"}\n', "longer than 4096 bytes"),
    ],
)
def test_unlock_control_refuses_bad_requests(
    control_server: tuple[control.ControlServer, LoginThrottle], payload: bytes, error: str
) -> None:
    server, _ = control_server
    reply = _raw(server.path, payload)
    assert reply["ok"] is False and error in reply["error"], reply


def test_unlock_control_answers_one_line(
    control_server: tuple[control.ControlServer, LoginThrottle],
) -> None:
    server, brake = control_server
    for _ in range(3):
        brake.begin("alice", "10.0.0.1")
    reply = control.ask(server.path, {"cmd": "unlock", "user": "alice"})
    assert reply == {
        "ok": True,
        "message": "unlocked alice from 1 address(es)",
        "data": {"user": "alice", "unlocked": ["10.0.0.1"], "cleared": 1, "addresses_locked": []},
    }
    brake.check("alice", "10.0.0.1")


def test_unlock_control_names_an_address_still_locked(
    control_server: tuple[control.ControlServer, LoginThrottle],
) -> None:
    server, brake = control_server
    brake.begin("alice", "10.0.0.1")
    for i in range(19):  # twenty in all: the default per-address limit
        brake.begin(f"user{i}", "10.0.0.1")
    reply = control.ask(server.path, {"cmd": "unlock", "user": "alice"})
    assert reply["message"] == (
        "alice was not locked; its failed logins are forgotten; "
        "still locked for every name: 10.0.0.1 (a reload lifts it)"
    )


def test_unlock_control_replaces_a_dead_daemons_socket(tmp_path: Path) -> None:
    path = tmp_path / "ctl.sock"
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(path))
    dead.close()  # the node stays, nobody listens: a daemon that was killed
    server = control.start(path, LoginThrottle(3, 60.0, 0.0))
    assert server is not None
    try:
        assert control.ask(path, {"cmd": "unlock", "user": "x"})["ok"] is True
    finally:
        server.stop()
    assert not path.exists()


def test_unlock_control_leaves_a_live_socket_and_other_files_alone(
    tmp_path: Path,
    control_server: tuple[control.ControlServer, LoginThrottle],
    caplog: pytest.LogCaptureFixture,
) -> None:
    live, _ = control_server
    caplog.set_level(logging.ERROR, logger="ftpd.control")
    assert control.start(live.path, LoginThrottle(3, 60.0, 0.0)) is None
    assert "in use by another running daemon" in caplog.text
    assert control.ask(live.path, {"cmd": "unlock", "user": "x"})["ok"] is True  # still ours
    other = tmp_path / "not-a-socket"
    other.write_text("keep me")
    assert control.start(other, LoginThrottle(3, 60.0, 0.0)) is None
    assert other.read_text() == "keep me"
    assert "not a socket" in caplog.text


def test_unlock_control_stop_keeps_a_newer_daemons_socket(tmp_path: Path) -> None:
    path = tmp_path / "ctl.sock"
    first = control.start(path, LoginThrottle(3, 60.0, 0.0))
    assert first is not None
    os.unlink(path)  # as if removed by hand, and then a second daemon took the name
    second = control.start(path, LoginThrottle(3, 60.0, 0.0))
    assert second is not None
    first.stop()
    assert path.exists()
    second.stop()
    assert not path.exists()


# --- the new keys ----------------------------------------------------------------------


def test_unlock_config_keys(project: Project, tmp_path: Path) -> None:
    cfg = project.load()
    assert cfg.login_max_failures_per_ip == 20
    assert cfg.control_path == project.home_root / ".ftpd-control.sock"
    project.write_config(login_max_failures_per_ip=0)
    with pytest.raises(ConfigError, match="login_max_failures_per_ip"):
        project.load()
    project.write_config(control_socket="x" * 120)
    with pytest.raises(ConfigError, match="longer than 107 bytes"):
        project.load()
    project.write_config(control_socket="ctl.sock")
    assert config_mod.load(project.config_path).control_path == project.root / "ctl.sock"
