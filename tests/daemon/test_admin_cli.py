"""``ftpd user ...`` and ``ftpd hash-password``: the admin CLI, in-process and as a process.

The CLI is called as ``ftpd.cli.main(argv)`` with stdin replaced by a StringIO (not a
TTY, so the password is one line of it), and the result is checked where it lands: the
users file on disk, read back by ``UserStore.load`` as the daemon reads it.  One test
runs ``python -m ftpd`` as a subprocess, and one has a running daemon pick a new user up
on SIGHUP.
"""

from __future__ import annotations

import io
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from ftp_client.connection import Connection
from ftpd import errors
from ftpd.accounts.users import CONTEXT, UserStore
from ftpd.admin import commands as admin
from ftpd.cli import main
from tests.conftest import FAST, PASSWORDS, ROOT, DaemonProcess, Project

GiB = 1024**3
MiB = 1024**2


@dataclass
class Outcome:
    status: int
    out: str
    err: str


Run = Callable[..., Outcome]


@pytest.fixture
def fast_hash(monkeypatch: pytest.MonkeyPatch) -> None:
    # Cost 4 instead of the default 12 keeps the suite fast; one test below uses the default.
    monkeypatch.setattr(admin, "hash_password", FAST.hash)


@pytest.fixture
def ftpd(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Run:
    """Run ``ftpd ARGV`` in-process with ``stdin`` text; returns status, stdout, stderr."""

    def run(*argv: str, stdin: str = "") -> Outcome:
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
        capsys.readouterr()
        try:
            status = main(list(argv))
        except SystemExit as exc:  # as the console script turns it into a status
            if isinstance(exc.code, str):
                print(exc.code, file=sys.stderr)
                status = 1
            else:
                status = exc.code or 0
        out, err = capsys.readouterr()
        return Outcome(status, out, err)

    return run


@pytest.fixture
def user_cmd(ftpd: Run, project: Project, fast_hash: None) -> Run:
    """``ftpd user --config <project> ARGV``."""

    def run(*argv: str, stdin: str = "") -> Outcome:
        return ftpd("user", "--config", str(project.config_path), *argv, stdin=stdin)

    return run


def _store(project: Project) -> UserStore:
    return UserStore.load(project.users_path)


# --- add / passwd / quota / disable / enable / del ------------------------------------


def test_admin_add_user_with_quota_can_log_in(user_cmd: Run, project: Project) -> None:
    result = user_cmd("add", "dave", "--quota", "2GiB", stdin="dave-secret\n")
    assert result.status == 0, result.err
    assert "added dave" in result.out
    assert "dave-secret" not in result.out + result.err
    store = _store(project)
    dave = store.get("dave")
    assert dave is not None and dave.quota_bytes == 2 * GiB and not dave.disabled
    assert store.authenticate("dave", "dave-secret") is dave
    assert store.authenticate("dave", "wrong") is None
    assert "dave-secret" not in project.users_path.read_text(encoding="utf-8")
    # The others are untouched.
    assert store.authenticate("alice", PASSWORDS["alice"]) is not None
    assert set(store.users) == {*PASSWORDS, "dave"}


def test_admin_add_without_quota_is_unlimited(user_cmd: Run, project: Project) -> None:
    assert user_cmd("add", "erin", stdin="pw\n").status == 0
    erin = _store(project).get("erin")
    assert erin is not None and erin.quota_bytes is None


def test_admin_add_existing_user_fails(user_cmd: Run, project: Project) -> None:
    before = project.users_path.read_bytes()
    result = user_cmd("add", "alice", stdin="pw\n")
    assert result.status == 1
    assert "already exists" in result.err
    assert project.users_path.read_bytes() == before


def test_admin_add_empty_password_refused(user_cmd: Run, project: Project) -> None:
    before = project.users_path.read_bytes()
    result = user_cmd("add", "dave", stdin="\n")
    assert result.status != 0
    assert "empty password" in result.err
    assert project.users_path.read_bytes() == before


def test_admin_passwd_replaces_password(user_cmd: Run, project: Project) -> None:
    result = user_cmd("passwd", "alice", stdin="brand-new\n")
    assert result.status == 0, result.err
    assert "brand-new" not in result.out + result.err
    store = _store(project)
    assert store.authenticate("alice", "brand-new") is not None
    assert store.authenticate("alice", PASSWORDS["alice"]) is None
    assert store.get("alice").quota_bytes == 10 * MiB  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("size", "quota_bytes"),
    [
        ("5GB", 5 * 1000**3),  # decimal
        ("5GiB", 5 * GiB),  # binary
        ("500MiB", 500 * MiB),
        ("1536", 1536),
        ("none", None),
        ("unlimited", None),
    ],
)
def test_admin_quota_sets_or_removes_limit(
    user_cmd: Run, project: Project, size: str, quota_bytes: int | None
) -> None:
    result = user_cmd("quota", "alice", size)
    assert result.status == 0, result.err
    assert _store(project).get("alice").quota_bytes == quota_bytes  # type: ignore[union-attr]
    text = project.users_path.read_text(encoding="utf-8")
    alice_block = text.split("  alice:\n", 1)[1].split("\n  alice2:", 1)[0]
    if quota_bytes is None:
        assert "quota" not in alice_block  # left out = unlimited
    else:
        assert f"quota: {size}" in alice_block  # written as the admin typed it


def test_admin_disable_then_enable(user_cmd: Run, project: Project) -> None:
    assert user_cmd("disable", "bob").status == 0
    store = _store(project)
    assert store.get("bob").disabled  # type: ignore[union-attr]
    assert store.authenticate("bob", PASSWORDS["bob"]) is None
    assert "disabled: true" in project.users_path.read_text(encoding="utf-8")

    assert user_cmd("enable", "bob").status == 0
    store = _store(project)
    assert not store.get("bob").disabled  # type: ignore[union-attr]
    assert store.authenticate("bob", PASSWORDS["bob"]) is not None
    assert "disabled" not in project.users_path.read_text(encoding="utf-8")


def test_admin_del_removes_user_keeps_home(user_cmd: Run, project: Project) -> None:
    home = project.home("carol")
    home.mkdir(parents=True)
    (home / "keep.txt").write_bytes(b"still here")
    result = user_cmd("del", "carol")
    assert result.status == 0, result.err
    assert "removed carol" in result.out
    assert set(_store(project).users) == set(PASSWORDS) - {"carol"}
    assert (home / "keep.txt").read_bytes() == b"still here"


# --- refusals -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ("add", "dave", "--quota", "5 parsecs"),
        ("add", "dave", "--quota", "2GiBs"),
        ("quota", "alice", "12 furlongs"),
        ("quota", "alice", "-5"),
        ("quota", "alice", "GiB"),
    ],
)
def test_admin_bad_quota_unit_refused(
    user_cmd: Run, project: Project, argv: tuple[str, ...]
) -> None:
    before = project.users_path.read_bytes()
    result = user_cmd(*argv, stdin="pw\n")
    assert result.status != 0
    assert "bad size" in result.err and "MiB" in result.err  # says what would be right
    assert project.users_path.read_bytes() == before


@pytest.mark.parametrize(
    "argv",
    [
        ("passwd", "zed"),
        ("quota", "zed", "1GiB"),
        ("disable", "zed"),
        ("enable", "zed"),
        ("del", "zed"),
    ],
)
def test_admin_unknown_user_exits_1(user_cmd: Run, project: Project, argv: tuple[str, ...]) -> None:
    before = project.users_path.read_bytes()
    result = user_cmd(*argv, stdin="pw\n")
    assert result.status == 1
    assert "no user 'zed'" in result.err
    assert str(project.users_path) in result.err
    assert project.users_path.read_bytes() == before


@pytest.mark.parametrize(
    "name", ["../x", "a/b", ".hidden", "..", "a\\b", "with space", "tab\there", "x" * 65]
)
def test_admin_add_invalid_name_refused(user_cmd: Run, project: Project, name: str) -> None:
    before = project.users_path.read_bytes()
    result = user_cmd("add", name, stdin="pw\n")
    assert result.status != 0
    assert "user name" in result.err
    assert project.users_path.read_bytes() == before
    assert not (project.root / "x").exists() and not (project.root.parent / "x").exists()


def test_admin_missing_config_exits_1(ftpd: Run, tmp_path: Path) -> None:
    result = ftpd("user", "--config", str(tmp_path / "nope.yaml"), "list")
    assert result.status == 1
    assert "nope.yaml" in result.err and "not found" in result.err


# --- list ---------------------------------------------------------------------------

_ROW = re.compile(
    r"^(?P<name>\S+)\s+(?P<used>\d+(?:\.\d)? \S+)\s+(?P<quota>unlimited|\d+(?:\.\d)? \S+)"
    r"\s+(?P<pct>\d+%|-)\s+(?P<state>enabled|disabled)\s+(?P<files>\d+)\s+(?P<max_files>\d+|-)$"
)


def _rows(out: str) -> dict[str, dict[str, str]]:
    lines = out.splitlines()
    assert lines[0].split() == ["USER", "USED", "QUOTA", "USE%", "STATE", "FILES", "MAX_FILES"]
    rows = {}
    for line in lines[1:]:
        match = _ROW.match(line)
        assert match, line
        rows[match["name"]] = match.groupdict()
    return rows


def test_admin_list_shows_real_usage_against_quota(user_cmd: Run, project: Project) -> None:
    def put(user: str, rel: str, size: int) -> None:
        path = project.home(user) / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x" * size)

    put("alice", "a.bin", MiB)
    put("carol", "deep/er/x.bin", 512 * 1024)
    put("carol", ".ftpd/partial/half", 256 * 1024)  # a partial upload counts too
    put("bob", "b.bin", 3000)
    assert user_cmd("disable", "alice2").status == 0

    result = user_cmd("list")
    assert result.status == 0, result.err
    rows = _rows(result.out)
    assert list(rows) == sorted(PASSWORDS)
    assert rows["alice"] == {
        "name": "alice",
        "used": "1 MiB",
        "quota": "10 MiB",
        "pct": "10%",
        "state": "enabled",
        "files": "1",
        "max_files": "-",
    }
    assert (rows["carol"]["used"], rows["carol"]["quota"], rows["carol"]["pct"]) == (
        "768 KiB",
        "1 MiB",
        "75%",
    )
    assert (rows["bob"]["used"], rows["bob"]["quota"], rows["bob"]["pct"]) == (
        "2.9 KiB",
        "unlimited",
        "-",
    )
    assert (rows["alice2"]["used"], rows["alice2"]["pct"], rows["alice2"]["state"]) == (
        "0 B",
        "0%",
        "disabled",
    )
    assert not project.home("alice2").exists()  # listing creates no home


@pytest.mark.parametrize("where", ["before", "after"])
def test_admin_config_option_before_or_after_action(
    ftpd: Run, project: Project, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, where: str
) -> None:
    # Regression: `ftpd user list --config X` was a usage error (exit 2).
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # the default conf/ftpd.yaml does not exist here
    config = ("--config", str(project.config_path))
    argv = ("user", *config, "list") if where == "before" else ("user", "list", *config)
    result = ftpd(*argv)
    assert result.status == 0, result.err
    assert set(_rows(result.out)) == set(PASSWORDS)


def test_admin_user_list_as_a_process(project: Project) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "ftpd", "user", "list", "--config", str(project.config_path)],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=project.root,
    )
    assert proc.returncode == 0, proc.stderr
    assert set(_rows(proc.stdout)) == set(PASSWORDS)


# --- comments survive ---------------------------------------------------------------


def _comment_lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip().startswith("#")]


def test_admin_edits_keep_every_comment_of_shipped_file(
    ftpd: Run, tmp_path: Path, fast_hash: None
) -> None:
    conf = tmp_path / "conf"
    shutil.copytree(ROOT / "conf", conf)
    users = conf / "users.yaml"
    comments = _comment_lines(users.read_text(encoding="utf-8"))
    assert len(comments) >= 5  # the shipped file explains itself

    steps = [
        (("add", "dave", "--quota", "2GiB"), "dave-pw\n"),
        (("passwd", "dave"), "dave-pw2\n"),
        (("quota", "dave", "5GB"), ""),
        (("quota", "dave", "none"), ""),
        (("disable", "dave"), ""),
        (("enable", "dave"), ""),
        (("passwd", "demo"), "not-demo\n"),
        (("quota", "demo", "1GiB"), ""),
        (("del", "dave"), ""),
        (("del", "demo"), ""),
        (("add", "frank"), "frank-pw\n"),
    ]
    for argv, stdin in steps:
        result = ftpd("user", "--config", str(conf / "ftpd.yaml"), *argv, stdin=stdin)
        assert result.status == 0, (argv, result.err)
        after = _comment_lines(users.read_text(encoding="utf-8"))
        kept = iter(after)
        assert all(line in kept for line in comments), (argv, after)  # all, in order
        UserStore.load(users)  # and still a file the daemon accepts
    store = UserStore.load(users)
    assert set(store.users) == {"frank"}
    assert store.authenticate("frank", "frank-pw") is not None


# --- hash-password ------------------------------------------------------------------


def test_admin_hash_password_from_stdin_verifies(ftpd: Run) -> None:
    result = ftpd("hash-password", stdin="s3cret-pw\n")
    assert result.status == 0, result.err
    hashed = result.out.strip()
    assert "\n" not in hashed and "s3cret-pw" not in hashed
    assert hashed.startswith("$2b$12$")  # bcrypt at the default cost
    assert CONTEXT.verify("s3cret-pw", hashed)
    assert not CONTEXT.verify("s3cret-pw ", hashed)


def test_admin_hash_password_empty_refused(ftpd: Run) -> None:
    result = ftpd("hash-password", stdin="")
    assert result.status != 0
    assert "empty password" in result.err
    assert result.out == ""


# --- with a running daemon ----------------------------------------------------------


def test_admin_added_user_picked_up_by_daemon_on_sighup(
    user_cmd: Run, project: Project, daemon: DaemonProcess
) -> None:
    daemon.start()
    assert user_cmd("add", "dave", "--quota", "1MiB", stdin="dave-pw\n").status == 0
    conn = Connection("127.0.0.1", daemon.port, timeout=10)
    with pytest.raises(errors.LoginFailedError):  # not before the reload
        conn.login("dave", "dave-pw")
    conn.close()

    mark = len(daemon.lines)
    daemon.signal(signal.SIGHUP)
    daemon.wait_for_line("RELOADED users=5", start=mark)
    conn = Connection("127.0.0.1", daemon.port, timeout=10)
    conn.login("dave", "dave-pw")
    assert conn.call("quota").data["limit"] == MiB
    conn.quit()
