"""``ftpd check-config``: exit 0 on good files; exit 1 naming file, line and key otherwise.

Each broken case writes one problem into an otherwise good project (conftest's
``project``) and expects exactly that problem on stderr, as ``path:line: key: message``.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ftpd.cli import main
from tests.conftest import FAST, PASSWORDS, ROOT, Project


def _check(config: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    capsys.readouterr()
    status = main(["check-config", "--config", str(config)])
    out, err = capsys.readouterr()
    return status, out, err


def _line_of(path: Path, pattern: str) -> int:
    """The 1-based number of the first line of ``path`` matching ``pattern``."""
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if re.search(pattern, line):
            return number
    raise AssertionError(f"{pattern!r} not in {path}")


def _users(project: Project, **changes: dict[str, Any]) -> None:
    table: dict[str, dict[str, Any]] = {
        name: {"password": FAST.hash(pw), "quota": project.quotas.get(name)}
        for name, pw in PASSWORDS.items()
    }
    for name, change in changes.items():
        table[name].update(change)
    project.write_users(table)


def _append_users(project: Project, text: str) -> None:
    project.users_path.write_text(
        project.users_path.read_text(encoding="utf-8") + text, encoding="utf-8"
    )


# --- valid files --------------------------------------------------------------------


def test_check_config_shipped_conf_is_valid(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    conf = tmp_path / "conf"
    shutil.copytree(ROOT / "conf", conf)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    status, out, err = _check(conf / "ftpd.yaml", capsys)
    assert status == 0, err
    assert "are valid (1 users)" in out
    assert err == ""
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before  # it only reads


def test_check_config_project_is_valid_from_any_cwd(
    project: Project,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # relative paths resolve against the config's folder
    status, out, err = _check(project.config_path, capsys)
    assert status == 0, err
    assert f"{project.users_path} are valid (4 users)" in out


def test_check_config_as_a_process(tmp_path: Path) -> None:
    conf = tmp_path / "conf"
    shutil.copytree(ROOT / "conf", conf)
    proc = subprocess.run(
        [sys.executable, "-m", "ftpd", "check-config", "--config", str(conf / "ftpd.yaml")],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert "valid" in proc.stdout


# --- one problem each ---------------------------------------------------------------

#: (id, break the project, which file, pattern of the bad line or None, key, message part)
Case = tuple[str, Callable[[Project], None], str, str | None, str, str]

CASES: list[Case] = [
    (
        "port-too-big",
        lambda p: p.write_config(port=70000),
        "config",
        r"^port:",
        "port",
        "0 to 65535",
    ),
    (
        "port-not-a-number",
        lambda p: p.write_config(port="abc"),
        "config",
        r"^port:",
        "port",
        "integer port",
    ),
    (
        "unknown-key",
        lambda p: p.write_config(colour="blue"),
        "config",
        r"^colour:",
        "colour",
        "unknown key",
    ),
    (
        "bad-log-level",
        lambda p: p.write_config(log_level="LOUD"),
        "config",
        r"^log_level:",
        "log_level",
        "DEBUG, INFO",
    ),
    (
        "negative-seconds",
        lambda p: p.write_config(grace_period=-1),
        "config",
        r"^grace_period:",
        "grace_period",
        "positive number of seconds",
    ),
    (
        "tls-cert-missing",
        lambda p: p.write_config(tls={"cert": "nocert.pem", "key": "ftpd.yaml"}),
        "config",
        r"^tls:",
        "tls",
        "nocert.pem does not exist",
    ),
    (
        "config-yaml-syntax",
        lambda p: p.config_path.write_text("host: 127.0.0.1\nport: [2121\nfsync: false\n"),
        "config",
        r"^fsync:",
        "",
        "YAML syntax error",
    ),
    (
        "plaintext-password",
        lambda p: _users(p, alice={"password": "alice-pw"}),
        "users",
        r"password: \"alice-pw\"",
        "users.alice.password",
        "plaintext?",
    ),
    (
        "unknown-hash-scheme",
        lambda p: _users(p, bob={"password": "$9$xyz"}),
        "users",
        r"\$9\$xyz",
        "users.bob.password",
        "not a recognised password hash",
    ),
    (
        "bad-quota-unit",
        lambda p: _users(p, carol={"quota": "5 parsecs"}),
        "users",
        r"quota: 5 parsecs",
        "users.carol.quota",
        "bad size",
    ),
    (
        "unknown-user-key",
        lambda p: _users(p, bob={"shell": "/bin/sh"}),
        "users",
        r"shell:",
        "users.bob.shell",
        "unknown key",
    ),
    (
        "bad-user-name",
        lambda p: _append_users(p, f'  ../evil:\n    password: "{FAST.hash("x")}"\n'),
        "users",
        r"\.\./evil:",
        "users.../evil",
        "user name",
    ),
    (
        "users-yaml-syntax",
        lambda p: _append_users(p, "  - stray item\n"),
        "users",
        r"- stray item",
        "",
        "YAML syntax error",
    ),
    (
        "users-file-missing",
        lambda p: p.write_config(users_file="missing-users.yaml"),
        "missing-users.yaml",
        None,
        "",
        "file not found",
    ),
]


@pytest.mark.parametrize(
    ("breaker", "which", "line_pattern", "key", "message"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_check_config_reports_problem_with_file_line_key(
    project: Project,
    capsys: pytest.CaptureFixture[str],
    breaker: Callable[[Project], None],
    which: str,
    line_pattern: str | None,
    key: str,
    message: str,
) -> None:
    breaker(project)
    path = {"config": project.config_path, "users": project.users_path}.get(
        which, project.root / which
    )
    status, out, err = _check(project.config_path, capsys)
    assert status == 1
    assert out == ""
    problems = [line for line in err.splitlines() if not line.startswith("ftpd: ")]
    assert len(problems) == 1, err
    where = str(path) if line_pattern is None else f"{path}:{_line_of(path, line_pattern)}"
    expected = f"{where}: {key}: " if key else f"{where}: "
    assert problems[0].startswith(expected), (problems[0], expected)
    assert message in problems[0]
    assert err.splitlines()[-1] == "ftpd: 1 problem(s) found"


# --- many problems at once ----------------------------------------------------------


def test_check_config_lists_every_problem_in_ftpd_yaml(
    project: Project, capsys: pytest.CaptureFixture[str]
) -> None:
    project.write_config(port=70000, colour="blue", grace_period=-1, log_level="LOUD")
    status, _, err = _check(project.config_path, capsys)
    assert status == 1
    for key in ("port", "colour", "grace_period", "log_level"):
        line = _line_of(project.config_path, rf"^{key}:")
        assert f"{project.config_path}:{line}: {key}: " in err, (key, err)
    assert "ftpd: 4 problem(s) found" in err


def test_check_config_lists_every_problem_in_users_yaml(
    project: Project, capsys: pytest.CaptureFixture[str]
) -> None:
    _users(
        project,
        alice={"password": "alice-pw"},
        bob={"shell": "/bin/sh", "disabled": "maybe"},
        carol={"quota": "5 parsecs"},
    )
    status, _, err = _check(project.config_path, capsys)
    assert status == 1
    expected = {
        "users.alice.password": r"password: \"alice-pw\"",
        "users.bob.shell": r"shell:",
        "users.bob.disabled": r"disabled: maybe",
        "users.carol.quota": r"5 parsecs",
    }
    for key, pattern in expected.items():
        line = _line_of(project.users_path, pattern)
        assert f"{project.users_path}:{line}: {key}: " in err, (key, err)
    assert "ftpd: 4 problem(s) found" in err


def test_check_config_refuses_a_tls_pair_that_does_not_load(project, capsys):
    from ftpd.cli import main

    cert, key = project.root / "cert.pem", project.root / "key.pem"
    cert.write_text("-----BEGIN CERTIFICATE-----\nnot really\n-----END CERTIFICATE-----\n")
    key.write_text("garbage\n")
    project.write_config(tls={"cert": "cert.pem", "key": "key.pem"})
    assert main(["check-config", "--config", str(project.config_path)]) == 1
    err = capsys.readouterr().err
    assert "tls" in err and "cannot load the certificate and key" in err
