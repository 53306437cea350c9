"""``ftpd quota rescan``: the ledger corrected from the store, by asking the running daemon.

Issue 12 (Reconciliation).  The daemon runs as a process (conftest's ``daemon``); bytes put
in a home by hand are unknown to its in-memory ledger until a rescan counts them.  A
ledger that a running upload holds is reported busy, not forced (in-process, against the
control server's own answer).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ftpd import control
from ftpd.accounts.users import UserStore
from ftpd.core.services import Services
from ftpd.state.base import Limits
from tests.conftest import DaemonProcess, Project


def _ftpd(project: Project, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ftpd", *argv, "--config", str(project.config_path)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=project.root,
    )


def _used(daemon: DaemonProcess) -> tuple[int, int]:
    conn = daemon.login("alice")
    try:
        data = conn.call("quota").data
        return int(data["used"]), int(data["files"])
    finally:
        conn.close()


def test_rescan_counts_bytes_placed_by_hand(project: Project, daemon: DaemonProcess) -> None:
    project.write_config()
    daemon.start()
    daemon.wait_for_line(r"CONTROL socket=")
    before = _used(daemon)  # the ledger is counted at first use
    (project.home("alice") / "dropped.bin").write_bytes(b"x" * 12345)
    assert _used(daemon) == before  # the ledger does not know yet
    result = _ftpd(project, "quota", "rescan", "alice")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("alice: corrected "), result.stdout
    assert "rescanned 1 of 1 user(s)" in result.stdout
    assert _used(daemon) == (before[0] + 12345, before[1] + 1)
    again = _ftpd(project, "quota", "rescan")  # every home; alice's now agrees
    assert again.returncode == 0, again.stderr
    assert "alice: unchanged" in again.stdout


def test_rescan_of_a_user_without_a_home_is_refused(
    project: Project, daemon: DaemonProcess
) -> None:
    project.write_config()
    daemon.start()
    daemon.wait_for_line(r"CONTROL socket=")
    result = _ftpd(project, "quota", "rescan", "nobody")
    assert result.returncode == 1
    assert "has no home" in result.stderr


def test_rescan_without_a_running_daemon_is_exit_1(project: Project) -> None:
    project.write_config()
    result = _ftpd(project, "quota", "rescan", "alice")
    assert result.returncode == 1
    assert result.stderr.startswith("ftpd: no daemon answers on "), result.stderr
    assert "Traceback" not in result.stderr


def test_rescan_of_a_ledger_held_by_an_upload_says_busy(
    project: Project, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    project.write_config()
    cfg = project.load()
    services = Services.build(cfg, UserStore.load(cfg.users_file))
    home = services.accounts.context("alice")  # the home and its ledger
    home.ledger.usage()  # counted now, before the bytes below arrive
    (project.home("alice") / "dropped.bin").write_bytes(b"y" * 100)
    monkeypatch.setattr(control, "RESCAN_WAIT_S", 0.0)
    server = control.ControlServer(tmp_path / "c.sock", services.accounts.throttle, None, services)
    try:
        held = home.ledger.reserve(10, 1, Limits())
        reply = server.answer(b'{"cmd": "rescan", "user": "alice"}')
        assert reply["ok"], reply
        (row,) = reply["data"]["users"]
        assert row["status"] == "busy" and row["before"] == row["after"]
        assert row["after"]["reserved"] == 10
        held.close(0, 0)
        reply = server.answer(b'{"cmd": "rescan", "user": "alice"}')
        (row,) = reply["data"]["users"]
        assert row["status"] == "recounted"
        assert row["after"]["used"] == row["before"]["used"] + 100
    finally:
        server.server_close()
        services.close()
