"""SIGHUP reload through the real daemon process: users, quotas, log settings.

Each test changes the files the daemon was started with, sends SIGHUP, and waits for the
daemon's own "RELOADED" / "RELOAD REJECTED" line (``wait_for_line`` from the mark taken
before the signal) before looking at the effect: no sleeps.  Sessions opened before the
reload are used after it, as the issue asks: a reload must not drop anyone.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import time
from pathlib import Path
from typing import Any

import pytest

from ftp_client.connection import Connection
from ftp_client.transfer import INLINE_MAX, put_file
from ftpd import daemon as daemon_mod
from ftpd import errors
from ftpd.notify import Notifier
from ftpd.units import parse_size
from tests.conftest import FAST, PASSWORDS, DaemonProcess, Project

MiB = 1024 * 1024
DAVE_PW = "dave-pw"


def _users(project: Project, **changes: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    """The fixture's users with per-user changes; a ``None`` change removes the user."""
    table: dict[str, dict[str, Any]] = {
        name: {"password": FAST.hash(pw), "quota": project.quotas.get(name)}
        for name, pw in PASSWORDS.items()
    }
    for name, change in changes.items():
        if change is None:
            table.pop(name)
        else:
            table.setdefault(name, {}).update(change)
    return table


def _reload(daemon: DaemonProcess, expect: str = "RELOADED") -> str:
    mark = len(daemon.lines)
    daemon.signal(signal.SIGHUP)
    return daemon.wait_for_line(expect, start=mark)


def _login(daemon: DaemonProcess, user: str, password: str) -> Connection:
    conn = daemon.connect()
    conn.login(user, password)
    return conn


def _payload(tmp_path: Path, name: str, size: int) -> Path:
    path = tmp_path / name
    path.write_bytes(os.urandom(size))
    return path


def _closed_by_server(conn: Connection) -> bool:
    """True if the server has closed this connection (EOF, not a timeout)."""
    conn.sock.settimeout(5)
    try:
        return conn.reader.read(1) == b""
    except ConnectionResetError:
        return True


# --- the signal handlers ------------------------------------------------------------


def test_reload_signal_handlers_installed_before_listening(
    project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Regression: handlers were installed after the LISTENING line, so a SIGHUP sent as
    # soon as that line showed killed the daemon (the default action) about 1 time in 3.
    stop_signals = (signal.SIGHUP, signal.SIGTERM, signal.SIGINT)
    seen: dict[int, Any] = {}

    class Built(Exception):
        pass

    def fake_build(cfg: Any) -> None:
        seen.update({s: signal.getsignal(s) for s in stop_signals})
        raise Built

    saved = {s: signal.getsignal(s) for s in stop_signals}
    monkeypatch.setattr(daemon_mod, "build_server", fake_build)
    try:
        with pytest.raises(Built):
            daemon_mod.run(project.load(), Notifier(""))
    finally:
        for signum, handler in saved.items():
            signal.signal(signum, handler)
    assert set(seen) == set(stop_signals)
    for handler in seen.values():
        assert handler not in (signal.SIG_DFL, signal.SIG_IGN, signal.default_int_handler)


def test_reload_sighup_right_after_listening_is_a_reload(daemon: DaemonProcess) -> None:
    daemon.start()
    _reload(daemon)  # sent the moment LISTENING is seen
    assert daemon.proc is not None and daemon.proc.poll() is None
    daemon.login("alice").quit()


# --- users --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("user", "before", "after", "ok_before", "ok_after"),
    [
        ("carol", "1MiB", "3MiB", False, True),  # raised: refused, then accepted
        ("bob", None, "1MiB", True, False),  # unlimited, then lowered below the upload
    ],
)
def test_reload_quota_applies_to_next_upload_in_open_session(
    project: Project,
    daemon: DaemonProcess,
    tmp_path: Path,
    user: str,
    before: str | None,
    after: str,
    ok_before: bool,
    ok_after: bool,
) -> None:
    assert project.quotas.get(user) == before
    daemon.start()
    conn = daemon.login(user)
    local = _payload(tmp_path, "two.bin", 2 * MiB)
    assert local.stat().st_size > INLINE_MAX  # the two-phase put, reserved up front

    def attempt(remote: str) -> bool:
        try:
            result = put_file(conn, local, remote)
        except errors.QuotaExceededError as exc:
            assert exc.code == 413
            assert not (project.home(user) / remote).exists()
            return False
        assert result.size == 2 * MiB
        assert (project.home(user) / remote).read_bytes() == local.read_bytes()
        return True

    assert attempt("first.bin") is ok_before
    project.write_users(_users(project, **{user: {"quota": after}}))
    _reload(daemon)
    assert attempt("second.bin") is ok_after  # the same session, no new login
    assert conn.call("quota").data["limit"] == parse_size(after)
    conn.quit()


def test_reload_added_user_logs_in_and_sessions_survive(
    project: Project, daemon: DaemonProcess
) -> None:
    daemon.start()
    alice = daemon.login("alice")
    alice.call("mkdir", path="kept")
    alice.call("cd", path="kept")
    with pytest.raises(errors.LoginFailedError):
        _login(daemon, "dave", DAVE_PW)

    project.write_users(_users(project, dave={"password": FAST.hash(DAVE_PW), "quota": "1MiB"}))
    line = _reload(daemon)
    assert "users=5" in line

    dave = _login(daemon, "dave", DAVE_PW)
    assert dave.call("quota").data["limit"] == MiB
    dave.quit()
    # The session opened before the reload is the same session: its cwd is still there.
    assert alice.call("pwd").data["cwd"] == "/kept"
    alice.quit()


@pytest.mark.parametrize("change", ["removed", "disabled"])
def test_reload_removed_or_disabled_user_session_ends_at_next_command(
    project: Project, daemon: DaemonProcess, change: str
) -> None:
    daemon.start()
    bob = daemon.login("bob")
    alice = daemon.login("alice")
    assert bob.call("pwd").data["cwd"] == "/"

    project.write_users(_users(project, bob=None if change == "removed" else {"disabled": True}))
    _reload(daemon)

    with pytest.raises(errors.UnavailableError) as info:
        bob.call("pwd")
    assert info.value.code == 421
    assert _closed_by_server(bob)
    bob.close()
    with pytest.raises(errors.LoginFailedError):
        daemon.login("bob")
    # Nobody else was touched.
    assert alice.call("pwd").data["cwd"] == "/"
    alice.quit()


def test_reload_enabled_again_user_logs_in(project: Project, daemon: DaemonProcess) -> None:
    project.write_users(_users(project, bob={"disabled": True}))
    daemon.start()
    with pytest.raises(errors.LoginFailedError):
        daemon.login("bob")
    project.write_users(_users(project, bob={"disabled": False}))
    _reload(daemon)
    daemon.login("bob").quit()


def _broken_users(project: Project, kind: str) -> tuple[str, int]:
    """A users file that changes alice's password and adds dave, with one fatal problem.

    Returns the text and the 1-based line of the problem.
    """
    lines = [
        "users:",
        "  alice:",
        f'    password: "{FAST.hash("new-alice-pw")}"',
        "  bob:",
        f'    password: "{FAST.hash(PASSWORDS["bob"])}"',
        "  dave:",
        f'    password: "{FAST.hash(DAVE_PW)}"',
        "    quota: 1MiB",
    ]
    if kind == "yaml":
        lines.append("  - not a mapping entry")  # a YAML syntax error
        bad = len(lines)
    else:
        lines += ["  erin:", '    password: "hunter2"']  # plaintext: not a hash
        bad = len(lines)
    return "\n".join(lines) + "\n", bad


@pytest.mark.parametrize("kind", ["yaml", "plaintext"])
def test_reload_broken_users_file_rejected_whole(
    project: Project, daemon: DaemonProcess, kind: str
) -> None:
    daemon.start()
    before = daemon.login("alice")
    text, bad_line = _broken_users(project, kind)
    project.users_path.write_text(text, encoding="utf-8")

    line = _reload(daemon, "RELOAD REJECTED")
    assert re.search(rf"users\.yaml:{bad_line}\b", line), line
    assert "ERROR" in line

    # The previous users stay in force: old password works, the new one and dave do not.
    daemon.login("alice").quit()
    with pytest.raises(errors.LoginFailedError):
        _login(daemon, "alice", "new-alice-pw")
    with pytest.raises(errors.LoginFailedError):
        _login(daemon, "dave", DAVE_PW)
    assert before.call("pwd").data["cwd"] == "/"  # and serving goes on
    assert daemon.proc is not None and daemon.proc.poll() is None

    # Once fixed, the next SIGHUP applies it.
    project.write_users(_users(project, dave={"password": FAST.hash(DAVE_PW)}))
    _reload(daemon)
    _login(daemon, "dave", DAVE_PW).quit()
    before.quit()


def test_reload_broken_ftpd_yaml_keeps_users(project: Project, daemon: DaemonProcess) -> None:
    daemon.start()
    project.write_users(_users(project, dave={"password": FAST.hash(DAVE_PW)}))
    project.write_config(log_level="LOUD")
    line = _reload(daemon, "RELOAD REJECTED")
    assert re.search(r"ftpd\.yaml:\d+: log_level", line), line
    with pytest.raises(errors.LoginFailedError):
        _login(daemon, "dave", DAVE_PW)
    daemon.login("alice").quit()


# --- log settings -------------------------------------------------------------------


def _ready_after_reload(sock: socket.socket, timeout: float = 20.0) -> None:
    """Wait for RELOADING=1 and then READY=1: the reload is done (its logging applied)."""
    deadline = time.monotonic() + timeout
    seen: list[bytes] = []
    want = b"RELOADING=1"
    while True:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        data = sock.recv(4096)
        seen.append(data)
        if want in data.splitlines():
            if want == b"READY=1":
                return
            want = b"READY=1"
        assert time.monotonic() < deadline, seen


def test_reload_log_level_applies_to_next_command(
    project: Project, tmp_path_factory: pytest.TempPathFactory
) -> None:
    # At WARNING the RELOADED line itself is not logged, so the sd_notify READY=1 that
    # follows the reload is what tells this test the new level is in force.
    sock_path = tmp_path_factory.mktemp("sd") / "notify"
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(str(sock_path))
    proc = DaemonProcess(project, env={"NOTIFY_SOCKET": str(sock_path)})
    log = project.root / "logs" / "ftpd.log"
    try:
        proc.start()
        conn = proc.login("alice")
        with pytest.raises(errors.NotFoundError):
            conn.call("stat", path="before-marker")
        conn.call("pwd")  # same session thread: the stat's CMD line is written by now
        assert "before-marker" in log.read_text(encoding="utf-8")

        project.write_config(log_level="WARNING")
        proc.signal(signal.SIGHUP)
        _ready_after_reload(receiver)

        with pytest.raises(errors.NotFoundError):
            conn.call("stat", path="after-marker")
        conn.call("pwd")
        with pytest.raises(errors.LoginFailedError):
            _login(proc, "alice", "wrong")  # a WARNING line: the file handler still works
        text = log.read_text(encoding="utf-8")
        assert "after-marker" not in text
        assert re.search(r"WARNING ftpd\S* LOGIN FAILED user='alice'", text)
        assert not any("after-marker" in line for line in proc.lines)  # nor on stderr
        conn.quit()
    finally:
        proc.stop()
        receiver.close()
