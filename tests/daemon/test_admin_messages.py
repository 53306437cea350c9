"""What the admin CLI says: every user subcommand confirms, and a password bcrypt cannot take
is refused in one line, never with a traceback (issue 9).

In-process through ``ftpd.cli.main`` (stdin is one line: not a TTY), plus the process
itself for the traceback case, as the admin runs it.
"""

from __future__ import annotations

import io
import subprocess
import sys

import pytest

from ftpd.accounts.users import UserStore
from ftpd.admin import commands as admin
from ftpd.cli import main
from tests.conftest import FAST, Project


@pytest.fixture(autouse=True)
def fast_hash(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(admin, "hash_password", FAST.hash)


def _run(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    *argv: str,
    stdin: str = "",
) -> tuple[int, str, str]:
    """``ftpd ARGV``: status, stdout, stderr (a ``SystemExit("text")`` is status 1)."""
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    capsys.readouterr()
    try:
        status = main(list(argv))
    except SystemExit as exc:
        if isinstance(exc.code, str):
            print(exc.code, file=sys.stderr)
            status = 1
        else:
            status = exc.code or 0
    out, err = capsys.readouterr()
    return status, out, err


# --- enable / disable confirm -----------------------------------------------------------


@pytest.mark.parametrize(
    ("verb", "line"),
    [
        ("disable", "disabled bob; reload the daemon to apply"),
        ("enable", "enabled bob; reload the daemon to apply"),
    ],
)
def test_admin_messages_enable_and_disable_confirm(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    project: Project,
    verb: str,
    line: str,
) -> None:
    config = str(project.config_path)
    status, out, err = _run(monkeypatch, capsys, "user", "--config", config, verb, "bob")
    assert (status, out, err) == (0, line + "\n", "")
    assert UserStore.load(project.users_path).users["bob"].disabled is (verb == "disable")


def test_admin_messages_enable_of_unknown_user_fails_without_confirming(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], project: Project
) -> None:
    config = str(project.config_path)
    status, out, err = _run(monkeypatch, capsys, "user", "--config", config, "enable", "zed")
    assert status == 1 and out == "" and "no user 'zed'" in err


# --- passwords bcrypt cannot take ---------------------------------------------------------

TOO_LONG = [
    ("a" * 73, "the password is 73 bytes long; at most 72 bytes (UTF-8)"),
    ("é" * 37, "the password is 74 bytes long; at most 72 bytes (UTF-8)"),
    ("x" * 5000, "the password is 5000 bytes long"),
    ("a\0b", "a password cannot contain a NUL character"),
]


@pytest.mark.parametrize(("password", "message"), TOO_LONG)
@pytest.mark.parametrize("argv", [("add", "dave"), ("passwd", "alice")])
def test_admin_messages_unhashable_password_refused_in_one_line(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    project: Project,
    argv: tuple[str, ...],
    password: str,
    message: str,
) -> None:
    before = project.users_path.read_bytes()
    config = str(project.config_path)
    status, out, err = _run(
        monkeypatch, capsys, "user", "--config", config, *argv, stdin=password + "\n"
    )
    assert status == 1 and out == ""
    assert err.count("\n") == 1 and err.startswith("ftpd: ") and message in err, err
    assert project.users_path.read_bytes() == before  # nothing written


@pytest.mark.parametrize(("password", "message"), TOO_LONG)
def test_admin_messages_hash_password_refuses_unhashable_password(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    password: str,
    message: str,
) -> None:
    status, out, err = _run(monkeypatch, capsys, "hash-password", stdin=password + "\n")
    assert status == 1 and out == "" and message in err


@pytest.mark.parametrize("password", ["p" * 72, "é" * 36, "ü" * 24 + "a" * 24])
def test_admin_messages_password_of_72_bytes_works(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    project: Project,
    password: str,
) -> None:
    config = str(project.config_path)
    status, out, err = _run(
        monkeypatch, capsys, "user", "--config", config, "add", "dave", stdin=password + "\n"
    )
    assert status == 0, err
    store = UserStore.load(project.users_path)
    assert store.authenticate("dave", password) is not None
    assert store.authenticate("dave", password[:-1]) is None


def test_admin_messages_long_password_as_a_process_is_no_traceback(project: Project) -> None:
    """The console script, as the admin ran it: a bcrypt ValueError traceback before."""
    result = subprocess.run(
        [sys.executable, "-m", "ftpd", "user", "add", "dave", "--config", str(project.config_path)],
        input="z" * 100 + "\n",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.strip() == (
        "ftpd: the password is 100 bytes long; at most 72 bytes (UTF-8) are allowed, bcrypt's limit"
    )
    assert "dave" not in project.users_path.read_text(encoding="utf-8")
