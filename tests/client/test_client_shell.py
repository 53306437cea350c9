"""The client shell's own behaviour: help, completion, command splitting, local commands,
and reconnecting after the server closed the session.

The shell is driven directly (``Shell.onecmd`` and the ``complete_*`` methods) with a
``Session`` against a real server on port 0.
"""

from __future__ import annotations

import inspect
import os
import socket
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ftp_client import transfer
from ftp_client.shell import EXIT_FAILED, EXIT_USAGE, Session, Shell, split_commands
from ftpd.units import format_size
from tests.conftest import PASSWORDS, RunningServer


@pytest.fixture
def shell(server: RunningServer) -> Iterator[Shell]:
    session = Session(server.connect, "alice", PASSWORDS["alice"])
    sh = Shell(session, quiet=True, interactive=False)
    yield sh
    session.close()


@pytest.fixture
def remote_tree(server: RunningServer, shell: Shell) -> Path:
    """docs/, docs/inner/, docs/readme.md, data/, d.txt, other.txt, .hidden in alice's home."""
    shell.session.open()
    home = server.project.home("alice")
    (home / "docs" / "inner").mkdir(parents=True)
    (home / "docs" / "readme.md").write_text("hi\n")
    (home / "data").mkdir()
    (home / "d.txt").write_text("d\n")
    (home / "other.txt").write_text("o\n")
    (home / ".hidden").write_text("h\n")
    return home


def run(shell: Shell, line: str, capsys: pytest.CaptureFixture[str]) -> tuple[str, str]:
    shell.stdout = sys.stdout  # cmd.Cmd binds stdout when made (help writes there); capsys swaps it
    shell.onecmd(line)
    captured = capsys.readouterr()
    return captured.out, captured.err


# --- help -----------------------------------------------------------------------------


def test_shell_help_lists_every_command(shell: Shell, capsys: pytest.CaptureFixture[str]) -> None:
    out, _ = run(shell, "help", capsys)
    listed = set(out.split())
    for name in (
        "cd",
        "get",
        "lcd",
        "lls",
        "lpwd",
        "ls",
        "mkdir",
        "mv",
        "put",
        "pwd",
        "quit",
        "quota",
        "rm",
        "rmdir",
        "stat",
    ):
        assert name in listed, name
    assert "EOF" not in listed and "exit" not in listed
    assert not shell.last_failed


@pytest.mark.parametrize("name", ["put", "get", "ls", "lcd"])
def test_shell_help_command_prints_its_docstring(
    shell: Shell, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    out, _ = run(shell, f"help {name}", capsys)
    doc = inspect.cleandoc(getattr(Shell, f"do_{name}").__doc__)  # without the source's indent
    assert out == doc + "\n"
    assert out.startswith(name)


# --- completion -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "method, line, text, expected",
    [
        ("complete_cd", "cd ", "", ["data/", "docs/"]),
        ("complete_cd", "cd d", "d", ["data/", "docs/"]),
        ("complete_cd", "cd /do", "/do", ["/docs/"]),
        ("complete_cd", "cd docs/", "docs/", ["docs/inner/"]),
        ("complete_get", "get d", "d", ["d.txt", "data/", "docs/"]),
        ("complete_get", "get docs/", "docs/", ["docs/inner/", "docs/readme.md"]),
        ("complete_get", "get /docs/r", "/docs/r", ["/docs/readme.md"]),
        ("complete_get", "get o", "o", ["other.txt"]),
        ("complete_get", "get .", ".", [".hidden"]),  # never the daemon's .ftpd
        ("complete_get", "get zz", "zz", []),
        ("complete_rm", "rm d.", "d.", ["d.txt"]),
        ("complete_ls", "ls ", "", [".hidden", "d.txt", "data/", "docs/", "other.txt"]),
    ],
)
def test_shell_completes_remote_paths(
    shell: Shell, remote_tree: Path, method: str, line: str, text: str, expected: list[str]
) -> None:
    begidx = len(line) - len(text)
    assert getattr(shell, method)(text, line, begidx, len(line)) == expected


def test_shell_put_completes_local_first_then_remote(
    shell: Shell, remote_tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    local = tmp_path / "local"
    (local / "album").mkdir(parents=True)
    (local / "album" / "pic.jpg").write_bytes(b"jpg")
    (local / "alpha.txt").write_text("a\n")
    (local / "beta.txt").write_text("b\n")
    monkeypatch.chdir(local)

    assert shell.complete_put("al", "put al", 4, 6) == ["album/", "alpha.txt"]
    assert shell.complete_put("album/", "put album/", 4, 10) == ["album/pic.jpg"]
    assert shell.complete_put("", "put ", 4, 4) == ["album/", "alpha.txt", "beta.txt"]
    # The second argument is the remote name.
    assert shell.complete_put("d", "put alpha.txt d", 14, 15) == ["d.txt", "data/", "docs/"]
    assert shell.complete_lcd("a", "lcd a", 4, 5) == ["album/"]
    assert shell.complete_lls("a", "lls a", 4, 5) == ["album/", "alpha.txt"]


def test_shell_completion_after_remote_cd_is_relative_to_cwd(
    shell: Shell, remote_tree: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run(shell, "cd docs", capsys)
    shell.precmd("")  # what cmdloop does before each line: drop the listing cache
    assert shell.complete_get("", "get ", 4, 4) == ["inner/", "readme.md"]


def test_shell_command_names_complete_without_eof(shell: Shell) -> None:
    assert shell.completenames("l") == ["lcd ", "lls ", "lpwd ", "ls "]
    assert "EOF " not in shell.completenames("")


# --- splitting -c text ----------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("pwd", ["pwd"]),
        ("a; b", ["a", "b"]),
        ("a;b;c", ["a", "b", "c"]),
        ("  a  ;  b  ", ["a", "b"]),
        ("a;; ;b;", ["a", "b"]),
        ("", []),
        (" ; ; ", []),
        ('put "a;b" c', ['put "a;b" c']),
        ("put 'a;b' c; ls", ["put 'a;b' c", "ls"]),
        ("""put "it's;here"; ls""", ['''put "it's;here"''', "ls"]),
        ("""put 'say "hi;"'; ls""", ["""put 'say "hi;"'""", "ls"]),
        (r"put a\;b; ls", [r"put a\;b", "ls"]),
        (r"""put "a\";b"; ls""", [r'''put "a\";b"''', "ls"]),
        ("put 'unclosed;quote", ["put 'unclosed;quote"]),
        ("cd 文件夹; put 报告.txt", ["cd 文件夹", "put 报告.txt"]),
    ],
)
def test_shell_split_commands(text: str, expected: list[str]) -> None:
    assert split_commands(text) == expected


# --- local commands -------------------------------------------------------------------


def test_shell_lcd_lpwd_lls(
    shell: Shell,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)  # restored afterwards: lcd changes the process cwd
    place = tmp_path / "place"
    (place / "sub").mkdir(parents=True)
    (place / "file.bin").write_bytes(b"x" * 2048)

    out, _ = run(shell, "lcd place", capsys)
    assert out == f"{place}\n" and Path.cwd() == place
    out, _ = run(shell, "lpwd", capsys)
    assert out == f"{place}\n"
    out, _ = run(shell, "lls", capsys)
    lines = out.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("- ") and lines[0].endswith("  file.bin")
    assert format_size(2048) in lines[0]
    assert lines[1].startswith("d ") and lines[1].endswith("  sub/")
    out, _ = run(shell, "lls file.bin", capsys)
    assert out.rstrip().endswith("file.bin") and len(out.splitlines()) == 1
    assert not shell.last_failed


@pytest.mark.parametrize(
    "line, status",
    [
        ("lcd /nonexistent-dir-for-test", EXIT_FAILED),
        ("lls /nonexistent-dir-for-test", EXIT_FAILED),
        ("lcd a b", EXIT_USAGE),
        ("lpwd extra", EXIT_USAGE),
        ("frobnicate", EXIT_USAGE),
        ("put", EXIT_USAGE),
        ("cd 'unclosed", EXIT_USAGE),
    ],
)
def test_shell_local_errors_are_one_line(
    shell: Shell, capsys: pytest.CaptureFixture[str], line: str, status: int
) -> None:
    cwd = os.getcwd()
    out, err = run(shell, line, capsys)
    assert shell.last_failed and shell.last_status == status
    assert out == ""
    assert len(err.splitlines()) == 1 and err.startswith("ftp-client: ")
    assert "Traceback" not in err
    assert os.getcwd() == cwd


def test_shell_put_and_get_relative_to_local_cwd(
    shell: Shell,
    server: RunningServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "note.txt").write_bytes(b"note\n")
    run(shell, "lcd work", capsys)
    out, err = run(shell, "put note.txt", capsys)
    assert not shell.last_failed, err
    assert out.startswith("put note.txt: 5 bytes, md5 ")
    run(shell, "lcd ..", capsys)
    out, err = run(shell, "get note.txt", capsys)
    assert not shell.last_failed, err
    assert (tmp_path / "note.txt").read_bytes() == b"note\n"
    assert (server.project.home("alice") / "note.txt").read_bytes() == b"note\n"


# --- reconnecting ---------------------------------------------------------------------


def test_shell_reconnects_after_server_closed_session_and_keeps_cwd(
    shell: Shell, server: RunningServer, capsys: pytest.CaptureFixture[str]
) -> None:
    run(shell, "mkdir -p a/b", capsys)
    run(shell, "cd a/b", capsys)
    old = shell.session.conn
    assert old is not None
    assert server.server.close_idle(all_sessions=True) == 1
    # The server has said goodbye (a 421 farewell frame) and hung up before the next
    # command is typed: wait until the farewell, or the end of the stream, is readable.
    old.sock.settimeout(5)
    assert old.sock.recv(1, socket.MSG_PEEK) in (b"", b"\x00")

    out, err = run(shell, "pwd", capsys)

    assert not shell.last_failed, err
    assert out == "/a/b\n"
    assert shell.session.conn is not old
    assert shell.session.cwd == "/a/b"


def test_shell_reconnects_after_a_lost_transfer_and_resumes(
    shell: Shell, server: RunningServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A connection that breaks mid-command fails that command; the next one reconnects."""
    data = os.urandom(3 * 1024 * 1024)
    src = tmp_path / "big.bin"
    src.write_bytes(data)
    run(shell, "cd /", capsys)
    conn = shell.session.open()

    class Cut:
        sent = 0

        def update(self, n: int) -> None:
            self.sent += n
            if self.sent >= 1024 * 1024:
                conn.sock.shutdown(socket.SHUT_RDWR)

        def close(self) -> None:
            pass

    shell.progress = lambda *_a: Cut()
    out, err = run(shell, f"put {src} big.bin", capsys)
    assert shell.last_failed and "connection lost" in err and len(err.splitlines()) == 1
    assert not (server.project.home("alice") / "big.bin").exists()

    shell.progress = transfer.no_progress
    out, err = run(shell, f"put {src} big.bin", capsys)
    assert not shell.last_failed, err
    assert ", resumed at byte " in out
    assert (server.project.home("alice") / "big.bin").read_bytes() == data


def test_shell_reconnects_after_idle_timeout_farewell(
    server_factory: Callable[..., RunningServer], capsys: pytest.CaptureFixture[str]
) -> None:
    server = server_factory(idle_timeout=0.5)
    session = Session(server.connect, "alice", PASSWORDS["alice"])
    shell = Shell(session, quiet=True, interactive=False)
    run(shell, "mkdir a", capsys)
    run(shell, "cd a", capsys)
    old = session.conn
    assert old is not None and not old.is_stale()
    # The daemon sends a 408 frame and hangs up; wait for that (it is the server's clock).
    deadline = time.monotonic() + 10
    while server.server.session_count:
        assert time.monotonic() < deadline, "the idle session was not closed"
        time.sleep(0.01)
    assert old.is_stale()

    out, err = run(shell, "pwd", capsys)

    assert not shell.last_failed, err
    assert out == "/a\n" and session.conn is not old
    session.close()
