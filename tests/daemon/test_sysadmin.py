"""The sysadmin's side (issue 9): check-config checks what the daemon will need, nothing
is created by mistake, a bind failure names the address, a reload says what only a
restart applies."""

from __future__ import annotations

import re
import signal
import socket
from pathlib import Path

import pytest

from ftpd.cli import main
from tests.conftest import DaemonProcess, Project


def _check(
    project: Project, capsys: pytest.CaptureFixture[str], **settings: object
) -> tuple[int, str]:
    project.write_config(**settings)
    capsys.readouterr()
    status = main(["check-config", "--config", str(project.config_path)])
    return status, capsys.readouterr().err


def _line(path: Path, key: str) -> int:
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.startswith(f"{key}:"):
            return number
    raise AssertionError(key)


def test_check_config_refuses_a_host_this_machine_cannot_listen_on(project, capsys) -> None:
    # 192.0.2.1 (TEST-NET-1) is never one of this machine's addresses: only bind() is tried.
    status, err = _check(project, capsys, host="192.0.2.1")
    assert status == 1
    line = _line(project.config_path, "host")
    assert re.search(rf"ftpd.yaml:{line}: host: cannot listen on 192\.0\.2\.1", err), err


@pytest.mark.parametrize("key", ["home_root", "log_dir"])
def test_check_config_refuses_a_folder_whose_parent_is_missing(project, capsys, key) -> None:
    status, err = _check(project, capsys, **{key: "typo/nested/folder"})
    assert status == 1
    assert f"{key}: " in err and "does not exist" in err, err
    assert not (project.root / "typo").exists()  # nothing made by the check


def test_check_config_accepts_folders_it_can_make(project, capsys) -> None:
    status, err = _check(project, capsys, home_root="new-homes", log_dir="new-logs")
    assert status == 0, err
    assert not (project.root / "new-homes").exists() and not (project.root / "new-logs").exists()


def test_serve_with_a_log_dir_typo_creates_nothing_and_says_why(project, capsys) -> None:
    project.write_config(log_dir="logz/ftpd")
    status = main(["serve", "--config", str(project.config_path)])
    assert status == 1
    assert "log_dir" in capsys.readouterr().err
    assert not (project.root / "logz").exists()


def test_bind_failure_names_the_address_and_port(project: Project) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        project.write_config(port=port)
        proc = DaemonProcess(project)
        with pytest.raises(RuntimeError):
            proc.start(timeout=10)
    assert any(f"cannot listen on 127.0.0.1 port {port}" in line for line in proc.lines), proc.lines


def test_reload_names_settings_that_need_a_restart(project: Project, daemon: DaemonProcess) -> None:
    daemon.start()
    mark = len(daemon.lines)
    project.write_config(max_connections=7, idle_timeout=45)
    daemon.signal(signal.SIGHUP)
    line = daemon.wait_for_line(r"RELOAD: .* take effect after a restart", start=mark)
    assert "max_connections" in line and "idle_timeout" in line
    assert "log_level" not in line


def test_ftpd_reload_reports_success_and_rejection(
    project: Project, daemon: DaemonProcess, capsys
) -> None:
    """systemd's ExecReload is `ftpd reload`: it fails when the daemon rejects the files."""
    daemon.start()
    capsys.readouterr()
    assert main(["reload", "--config", str(project.config_path)]) == 0
    assert "reloaded: 4 users" in capsys.readouterr().out
    daemon.wait_for_line(r"RELOADED users=4")

    good = project.users_path.read_text(encoding="utf-8")
    project.users_path.write_text(good + "  broken: [\n", encoding="utf-8")
    assert main(["reload", "--config", str(project.config_path)]) == 1
    err = capsys.readouterr().err
    assert "reload rejected" in err and "users.yaml" in err, err
    with daemon.login("alice") as conn:  # the previous users stay in force
        assert conn.call("pwd").data["cwd"] == "/"


def test_ftpd_reload_without_a_daemon_fails_clearly(project: Project, capsys) -> None:
    assert main(["reload", "--config", str(project.config_path)]) == 1
    assert "no daemon answers" in capsys.readouterr().err
