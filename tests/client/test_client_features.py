"""The client's newer commands and options against today's daemon (``server`` on port 0).

``ls -l``, ``cd`` alone, wildcards in put/get/rm, ``put FILE DIR``, ``USER@HOST``,
``get -p``, ``EOF`` typed at the prompt, password retries, option checks, whole-script
parsing with line numbers and comments, progress bars (units, short names, the overall
bar, no stale bar), Ctrl-C after the server stored a file, and waiting out an upload
that another session holds.  What needs daemon changes not made yet is in
``test_client_server_features.py``.
"""

from __future__ import annotations

import builtins
import hashlib
import io
import json
import os
import re
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ftp_client import cli, transfer
from ftp_client.connection import Connection
from ftp_client.shell import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    Session,
    Shell,
    run_batch,
    strip_comment,
)
from ftpd.framed import protocol, streams
from tests.conftest import PASSWORDS, RunningServer

MiB = 1024 * 1024


@pytest.fixture
def addr(server: RunningServer) -> str:
    return f"{server.host}:{server.port}"


@pytest.fixture
def local(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The local working directory (restored afterwards: lcd moves the process cwd)."""
    folder = tmp_path / "local"
    folder.mkdir()
    monkeypatch.chdir(folder)
    monkeypatch.setenv("FTP_PASSWORD", PASSWORDS["alice"])
    return folder


@pytest.fixture
def home(server: RunningServer) -> Path:
    server.login("alice").quit()  # homes are made at first login
    return server.project.home("alice")


@pytest.fixture
def shell(server: RunningServer, local: Path) -> Iterator[Shell]:
    session = Session(server.connect, "alice", PASSWORDS["alice"])
    sh = Shell(session, quiet=True, interactive=False)
    yield sh
    session.close()


def main(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = cli.main(list(argv))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def run(shell: Shell, line: str, capsys: pytest.CaptureFixture[str]) -> tuple[str, str]:
    shell.stdout = sys.stdout
    shell.onecmd(line)
    captured = capsys.readouterr()
    return captured.out, captured.err


def assert_one_error_line(err: str) -> None:
    assert len(err.splitlines()) == 1, err
    assert err.startswith("ftp-client: ")
    assert "Traceback" not in err


def visible(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name != ".ftpd")


# --- ls -l, cd --------------------------------------------------------------------------


def test_ls_long_shows_type_permissions_size_time_and_name(
    shell: Shell, home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (home / "docs").mkdir()
    (home / "report.pdf").write_bytes(b"x" * 18231)
    (home / ".hidden").write_bytes(b"h")
    os.utime(home / "report.pdf", (1_700_000_000, 1_700_000_000))
    (home / "docs").chmod(0o755)  # what a daemon that sends no mode is shown with, too
    (home / "report.pdf").chmod(0o644)

    out, err = run(shell, "ls -l", capsys)

    assert not shell.last_failed, err
    lines = out.splitlines()
    assert len(lines) == 2
    assert re.fullmatch(r"drwxr-xr-x +- +\d{4}-\d\d-\d\d \d\d:\d\d  docs", lines[0]), lines[0]
    assert re.fullmatch(r"-rw-r--r-- +18231  \d{4}-\d\d-\d\d \d\d:\d\d  report.pdf", lines[1]), (
        lines[1]
    )
    for flags in ("-la", "-al", "-l -a", "-a -l"):
        out, err = run(shell, f"ls {flags}", capsys)
        assert not shell.last_failed, err
        assert [line.rsplit("  ", 1)[1] for line in out.splitlines()] == [
            ".hidden",
            "docs",
            "report.pdf",
        ]
    out, _ = run(shell, "ls -l report.pdf", capsys)
    assert out.startswith("-rw-r--r--") and out.rstrip().endswith("  report.pdf")


def test_ls_unknown_option_is_a_usage_error(
    shell: Shell, capsys: pytest.CaptureFixture[str]
) -> None:
    _out, err = run(shell, "ls -x", capsys)
    assert shell.last_status == EXIT_USAGE
    assert_one_error_line(err)
    assert "-x" in err


def test_cd_alone_goes_home(shell: Shell, capsys: pytest.CaptureFixture[str]) -> None:
    run(shell, "mkdir -p a/b", capsys)
    run(shell, "cd a/b", capsys)
    assert shell.session.cwd == "/a/b"
    _out, err = run(shell, "cd", capsys)
    assert not shell.last_failed, err
    assert shell.session.cwd == "/"
    assert run(shell, "pwd", capsys)[0] == "/\n"


def test_mv_into_an_existing_folder(
    shell: Shell, home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (home / "sub").mkdir()
    (home / "a.txt").write_bytes(b"a")
    _out, err = run(shell, "mv a.txt sub", capsys)
    assert not shell.last_failed, err
    assert (home / "sub" / "a.txt").read_bytes() == b"a"


# --- a fake server for listings the daemon does not send yet ---------------------------


class FakeServer:
    """One connection speaking the real framing; ``handle(request)`` answers each command.

    ``handle`` returns (response, body) or None for the default reply.  Every socket has
    a timeout.
    """

    def __init__(
        self, handle: Callable[[protocol.Request, Any], tuple[protocol.Response, bytes] | None]
    ):
        self.handle = handle
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(10)
        self.port = self.listener.getsockname()[1]
        self.requests: list[protocol.Request] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        try:
            sock, _ = self.listener.accept()
        except OSError:
            return
        sock.settimeout(10)
        reader = streams.SocketReader(sock)
        sock.sendall(protocol.encode(protocol.Response(True, protocol.GREETING, "fake")))
        try:
            while True:
                request = protocol.to_request(streams.read_header(reader))
                self.requests.append(request)
                body = streams.read_exact(reader, request.body) if request.body else b""
                answer = self.handle(request, body)
                if answer is None:
                    if request.cmd == "quit":
                        sock.sendall(protocol.encode(protocol.Response(True, 221, "bye")))
                        return
                    answer = (protocol.Response(True, 200, "ok", data={"cwd": "/"}), b"")
                response, payload = answer
                sock.sendall(protocol.encode(response) + payload)
        except (streams.ConnectionClosed, OSError):
            pass
        finally:
            sock.close()

    def session(self) -> Session:
        return Session(lambda: Connection("127.0.0.1", self.port, timeout=10), "u", "p")

    def close(self) -> None:
        self.thread.join(timeout=10)
        self.listener.close()


def listing(entries: list[dict[str, Any]]) -> tuple[protocol.Response, bytes]:
    body = "".join(json.dumps(e) + "\n" for e in entries).encode()
    return protocol.Response(True, 200, "", data={"count": len(entries)}, body=len(body)), body


def test_ls_shows_mode_and_unfinished_uploads_from_the_server(
    capsys: pytest.CaptureFixture[str],
) -> None:
    entries = [
        {
            "name": "big.iso",
            "type": "file",
            "size": 0,
            "mtime": 0,
            "partial": 4 * MiB,
            "expected": 10 * MiB,
        },
        {"name": "run.sh", "type": "file", "size": 10, "mtime": 0, "mode": 0o755},
        {"name": "secret", "type": "dir", "size": 0, "mtime": 0, "mode": 0o700},
        {"name": "sticky", "type": "dir", "size": 0, "mtime": 0, "mode": 0o1777},
        {"name": "half", "type": "file", "size": 5, "mtime": 0, "partial": 7},
        {"name": "fifo", "type": "other", "size": 0, "mtime": 0},
        {"name": "odd", "type": "file", "size": "x", "mtime": "y", "mode": "z", "partial": -1},
    ]
    fake = FakeServer(lambda r, _b: listing(entries) if r.cmd == "ls" else None)
    shell = Shell(fake.session(), quiet=True, interactive=False)

    out, err = run(shell, "ls -l", capsys)
    assert not shell.last_failed, err
    lines = out.splitlines()
    assert lines[0].startswith("-rw-r--r-- ") and lines[0].endswith(
        "  big.iso  (unfinished: 40% of 10.0 MiB)"
    )
    assert lines[1].startswith("-rwxr-xr-x ") and lines[1].endswith("  run.sh")
    assert lines[2].startswith("drwx------ ")
    assert lines[3].startswith("drwxrwxrwt ")
    assert lines[4].endswith("  half  (unfinished: 7 B so far)")
    assert lines[5].startswith("?--------- ")
    assert lines[6].startswith("-rw-r--r-- ") and lines[6].endswith("  odd")  # nonsense ignored
    out, _ = run(shell, "ls", capsys)
    assert out.splitlines()[0].endswith("  big.iso  (unfinished: 40% of 10.0 MiB)")
    shell.session.close()
    fake.close()


def test_rm_r_asks_the_server_for_a_recursive_remove(capsys: pytest.CaptureFixture[str]) -> None:
    entries = [
        {"name": "a.tmp", "type": "dir", "size": 0, "mtime": 0},
        {"name": "b.tmp", "type": "file", "size": 1, "mtime": 0},
    ]
    fake = FakeServer(lambda r, _b: listing(entries) if r.cmd == "ls" else None)
    shell = Shell(fake.session(), quiet=True, interactive=False)
    _out, err = run(shell, "rm -r tree", capsys)
    assert not shell.last_failed, err
    _out, err = run(shell, "rm *.tmp other", capsys)  # a folder matched, no -r: nothing sent
    assert shell.last_failed and "a.tmp: is a directory (use rm -r); nothing removed" in err
    _out, err = run(shell, "rm -r *.tmp", capsys)
    assert not shell.last_failed, err
    shell.session.close()
    fake.close()
    removes = [r.args for r in fake.requests if r.cmd == "rm"]
    assert removes == [
        {"path": "tree", "recursive": True},
        {"path": "a.tmp", "recursive": True},
        {"path": "b.tmp", "recursive": True},
    ]


def test_lls_long(shell: Shell, local: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (local / "run.sh").write_bytes(b"#!/bin/sh\n")
    (local / "run.sh").chmod(0o750)
    (local / "d").mkdir()
    (local / "d").chmod(0o700)
    out, err = run(shell, "lls -l", capsys)
    assert not shell.last_failed, err
    lines = out.splitlines()
    assert lines[0].startswith("drwx------ ") and lines[0].endswith("  d")
    assert re.fullmatch(r"-rwxr-x--- +10  .*  run\.sh", lines[1]), lines[1]


# --- wildcards ------------------------------------------------------------------------


def test_put_wildcard_uploads_every_local_match(
    addr: str, local: Path, home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in ("a.log", "b.log", "c.txt", ".d.log"):
        (local / name).write_bytes(name.encode())
    (local / "dir.log").mkdir()

    status, out, err = main(
        capsys, "-q", "-u", "alice", "-c", "put *.log; mkdir logs; put *.log logs", addr
    )

    assert status == 0, err
    assert visible(home) == ["a.log", "b.log", "logs"]  # no dot file, no folder
    assert visible(home / "logs") == ["a.log", "b.log"]
    assert [line.split(":")[0] for line in out.splitlines()] == [
        "put a.log",
        "put b.log",
        "put logs/a.log",
        "put logs/b.log",
    ]
    assert (home / "logs" / "b.log").read_bytes() == b"b.log"


def test_put_wildcard_into_something_not_a_folder_fails(
    addr: str, local: Path, home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in ("a.log", "b.log"):
        (local / name).write_bytes(b"x")
    status, _out, err = main(capsys, "-u", "alice", "-c", "put *.log nowhere", addr)
    assert status == 1
    assert_one_error_line(err)
    assert "nowhere: not a directory" in err
    assert visible(home) == []


@pytest.mark.parametrize(
    "command, pattern",
    [("put *.nothing", "*.nothing"), ("get logs/*.none", "logs/*.none"), ("rm *.tmp", "*.tmp")],
)
def test_a_pattern_that_matches_nothing_is_an_error_naming_it(
    addr: str,
    local: Path,
    home: Path,
    capsys: pytest.CaptureFixture[str],
    command: str,
    pattern: str,
) -> None:
    (home / "logs").mkdir()
    (home / "keep.txt").write_bytes(b"k")
    status, _out, err = main(capsys, "-u", "alice", "-c", f"{command}; mkdir after", addr)
    assert status == 1
    assert_one_error_line(err)
    assert f"no match for {pattern}" in err
    assert "command 1" in err
    assert visible(home) == ["keep.txt", "logs"]


def test_get_wildcard_into_cwd_and_into_a_folder(
    addr: str, local: Path, home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (home / "logs" / "sub.gz").mkdir(parents=True)
    for name in ("a.gz", "b.gz", "c.txt"):
        (home / "logs" / name).write_bytes(name.encode() * 100)
    (local / "dl").mkdir()

    status, out, err = main(
        capsys, "-q", "-u", "alice", "-c", "get logs/*.gz; get /logs/?.gz dl", addr
    )

    assert status == 0, err
    assert visible(local) == ["a.gz", "b.gz", "dl"]
    assert visible(local / "dl") == ["a.gz", "b.gz"]
    assert (local / "dl" / "b.gz").read_bytes() == b"b.gz" * 100
    assert [line.split(":")[0] for line in out.splitlines()] == [
        "got logs/a.gz",
        "got logs/b.gz",
        "got /logs/a.gz",
        "got /logs/b.gz",
    ]


def test_get_r_wildcard_takes_folders_too(
    addr: str, local: Path, home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (home / "2024-01" / "deep").mkdir(parents=True)
    (home / "2024-01" / "deep" / "x.bin").write_bytes(b"x")
    (home / "2024-02").mkdir()
    (home / "2024-notes.txt").write_bytes(b"n")
    (home / "2023").mkdir()

    status, _out, err = main(capsys, "-q", "-u", "alice", "-c", "get -r 2024*", addr)

    assert status == 0, err
    assert visible(local) == ["2024-01", "2024-02", "2024-notes.txt"]
    assert (local / "2024-01" / "deep" / "x.bin").read_bytes() == b"x"


def test_wildcards_only_in_the_last_component(
    addr: str, local: Path, home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, _out, err = main(capsys, "-u", "alice", "-c", "get */x.txt", addr)
    assert status == 2
    assert_one_error_line(err)
    assert "only after the last '/'" in err


def test_rm_wildcard_removes_matches_only(
    shell: Shell, home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (home / "old").mkdir()
    for name in ("a.tmp", "b.tmp", "c.txt", ".d.tmp"):
        (home / "old" / name).write_bytes(b"x")

    _out, err = run(shell, "rm old/*.tmp", capsys)

    assert not shell.last_failed, err
    assert sorted(p.name for p in (home / "old").iterdir()) == [".d.tmp", "c.txt"]


def test_rm_wildcard_matching_a_folder_removes_nothing_without_r(
    shell: Shell, home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (home / "a.tmp").write_bytes(b"x")
    (home / "b.tmp").mkdir()
    _out, err = run(shell, "rm *.tmp", capsys)
    assert shell.last_status == EXIT_FAILED
    assert_one_error_line(err)
    assert "b.tmp: is a directory (use rm -r)" in err
    assert visible(home) == ["a.tmp", "b.tmp"]


def test_names_that_look_like_patterns_are_taken_literally(
    shell: Shell, home: Path, local: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (local / "[1].txt").write_bytes(b"one")
    (local / "1.txt").write_bytes(b"not me")
    _out, err = run(shell, "put '[1].txt'", capsys)
    assert not shell.last_failed, err
    assert visible(home) == ["[1].txt"]
    (local / "[1].txt").unlink()
    _out, err = run(shell, "get '[1].txt'", capsys)
    assert not shell.last_failed, err
    assert (local / "[1].txt").read_bytes() == b"one"
    _out, err = run(shell, "rm '[1].txt'", capsys)
    assert not shell.last_failed, err
    assert visible(home) == []


# --- put FILE DIR, get FILE DIR -------------------------------------------------------


def test_put_and_get_into_existing_folders(
    shell: Shell, home: Path, local: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (local / "a.txt").write_bytes(b"a")
    (home / "up").mkdir()
    for line in ("put a.txt up", "put a.txt up/b.txt", "put a.txt new.txt"):
        _out, err = run(shell, line, capsys)
        assert not shell.last_failed, err
    assert visible(home / "up") == ["a.txt", "b.txt"]
    assert (home / "new.txt").read_bytes() == b"a"
    (local / "down").mkdir()
    _out, err = run(shell, "get up/b.txt down", capsys)
    assert not shell.last_failed, err
    assert (local / "down" / "b.txt").read_bytes() == b"a"


# --- USER@HOST ------------------------------------------------------------------------


def test_user_at_host_and_u_wins(
    server: RunningServer,
    local: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    target = f"alice@{server.host}:{server.port}"
    status, out, err = main(capsys, "-c", "pwd", target)
    assert (status, out) == (0, "/\n"), err
    # -u wins: bob's password, and bob@ in the address is ignored.
    monkeypatch.setenv("FTP_PASSWORD", PASSWORDS["bob"])
    status, out, err = main(capsys, "-u", "bob", "-c", "mkdir by-bob", target)
    assert status == 0, err
    assert (server.project.home("bob") / "by-bob").is_dir()


# --- get -p ---------------------------------------------------------------------------


def test_get_p_keeps_the_modification_time(
    shell: Shell, home: Path, local: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (home / "t").mkdir()
    for name, size in (("small.bin", 100), ("big.bin", transfer.INLINE_MAX + 5)):
        (home / "t" / name).write_bytes(os.urandom(size))
        os.utime(home / "t" / name, (1_600_000_000.25, 1_600_000_000.25))

    for line in (
        "get -p t/small.bin",
        "get -p t/big.bin",
        "get t/small.bin plain.bin",
        "get -r -p t tree",
    ):
        _out, err = run(shell, line, capsys)
        assert not shell.last_failed, (line, err)

    assert (local / "small.bin").stat().st_mtime == pytest.approx(1_600_000_000.25, abs=1e-3)
    assert (local / "big.bin").stat().st_mtime == pytest.approx(1_600_000_000.25, abs=1e-3)
    assert (local / "plain.bin").stat().st_mtime > 1_700_000_000
    assert (local / "tree" / "big.bin").stat().st_mtime == pytest.approx(1_600_000_000.25, abs=1e-3)


# --- EOF, Ctrl-D ----------------------------------------------------------------------


def test_eof_typed_is_an_unknown_command_and_ctrl_d_quits(
    shell: Shell, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    typed = iter(["EOF", "pwd"])

    def fake_input(prompt: str = "") -> str:
        try:
            return next(typed)
        except StopIteration:
            raise EOFError from None  # Ctrl-D

    monkeypatch.setattr(builtins, "input", fake_input)
    shell.stdout = sys.stdout
    shell.intro = None
    shell.cmdloop()
    captured = capsys.readouterr()
    assert "unknown command: 'EOF'" in captured.err
    assert captured.out == "/\n\n"  # pwd, then the newline after ^D
    assert shell.session.conn is None  # quit closed the session


# --- passwords ------------------------------------------------------------------------


@pytest.mark.parametrize("right_on", [1, 3, None])
def test_a_wrong_prompted_password_is_asked_again_three_times(
    addr: str,
    local: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    right_on: int | None,
) -> None:
    monkeypatch.delenv("FTP_PASSWORD")
    prompts: list[str] = []

    def getpass(prompt: str = "") -> str:
        prompts.append(prompt)
        return PASSWORDS["alice"] if len(prompts) == right_on else "wrong"

    monkeypatch.setattr("getpass.getpass", getpass)
    status, out, err = main(capsys, "-u", "alice", "-c", "pwd", addr)
    if right_on is None:
        assert status == 3
        assert len(prompts) == 3
        assert err.splitlines()[-1] == "ftp-client: login incorrect"
    else:
        assert (status, out) == (0, "/\n"), err
        assert len(prompts) == right_on
    assert "wrong" not in err


# --- options --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["--timeout", "-1"],
        ["--timeout", "0"],
        ["--timeout", "nan"],
        ["--timeout", "inf"],
        ["--timeout", "1e300"],
        ["--timeout", "soon"],
        ["--insecure"],
        ["--cafile", "CA"],
        ["--tls", "--cafile", "missing.pem"],
        ["--tls", "--cafile", "junk.pem"],
        ["--tls", "--cafile", "."],
        ["--tls", "--insecure", "--cafile", "CA"],
        ["--digest", "crc32"],
        ["-u", ""],
        ["-u", "a b"],
    ],
)
def test_every_bad_option_is_one_usage_line(
    addr: str, local: Path, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    (local / "junk.pem").write_text("not a certificate\n")
    (local / "CA").write_text("not a certificate either\n")
    status, _out, err = main(capsys, *argv, "-c", "pwd", addr)
    assert status == 2
    assert_one_error_line(err)


@pytest.mark.parametrize(
    "address", ["127.0.0.1:99999", "@127.0.0.1", "alice@", "[::1]:x", "h:1:2:z"]
)
def test_bad_addresses_are_one_usage_line(
    local: Path, capsys: pytest.CaptureFixture[str], address: str
) -> None:
    status, _out, err = main(capsys, "-c", "pwd", address)
    assert status == 2
    assert_one_error_line(err)


def test_missing_address_is_one_usage_line(local: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, _out, err = main(capsys, "-c", "pwd")
    assert status == 2
    assert_one_error_line(err)


def test_bad_timeout_in_a_real_process_is_one_line(addr: str, local: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "ftp_client", "--timeout", "nan", "-c", "pwd", addr],
        cwd=local,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 2
    assert_one_error_line(done.stderr)


# --- batch scripts --------------------------------------------------------------------


def test_a_quoting_error_anywhere_runs_nothing(
    addr: str, local: Path, home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (local / "cmds.txt").write_text("mkdir a\nmkdir b\nput 'oops\nmkdir c\n")
    status, out, err = main(capsys, "-u", "alice", "-b", "cmds.txt", addr)
    assert status == 2
    assert_one_error_line(err)
    assert "line 3" in err and "put 'oops" in err
    assert visible(home) == []
    assert out == ""


def test_an_error_names_the_line_and_the_command(
    addr: str, local: Path, home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (local / "cmds.txt").write_text("# backup\nmkdir a\n\nput missing.txt   # the file\nmkdir b\n")
    status, _out, err = main(capsys, "-u", "alice", "-b", "cmds.txt", addr)
    assert status == 1
    assert err == "ftp-client: line 4: put missing.txt: no such file or directory\n"
    assert visible(home) == ["a"]


def test_comments_end_lines_but_not_inside_quotes_or_words(
    addr: str, local: Path, home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (local / "f.txt").write_bytes(b"f")
    (local / "cmds.txt").write_text(
        "mkdir 'a # b'   # a folder with a hash\n"
        'put f.txt "a # b"/f#1.txt#not-a-comment  # the upload\n'
        "ls 'a # b'#not-a-comment-either\n"
    )
    status, out, err = main(capsys, "-q", "-u", "alice", "-b", "cmds.txt", addr)
    assert status == 1
    assert err.startswith("ftp-client: line 3: ls 'a # b'#not-a-comment-either: ")
    assert visible(home / "a # b") == ["f#1.txt#not-a-comment"]
    (local / "cmds.txt").write_text("ls 'a # b' #\n")
    status, out, err = main(capsys, "-q", "-u", "alice", "-b", "cmds.txt", addr)
    assert status == 0, err
    assert out.endswith("  f#1.txt#not-a-comment\n")


@pytest.mark.parametrize(
    "line, expected",
    [
        ("put a # c", "put a"),
        ("put a#b", "put a#b"),
        ("put 'a # b' c", "put 'a # b' c"),
        ('put "a # b" # c', 'put "a # b"'),
        ("put a\\ #b", "put a\\ #b"),
        ("# all", ""),
        ("put a\t# tab", "put a"),
    ],
)
def test_strip_comment(line: str, expected: str) -> None:
    assert strip_comment(line) == expected


def test_c_errors_name_the_command_number(
    addr: str, local: Path, home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, _out, err = main(capsys, "-u", "alice", "-c", "mkdir a; cd nope; mkdir b", addr)
    assert status == 1
    assert_one_error_line(err)
    assert err.startswith("ftp-client: command 2: cd nope: ")


@pytest.mark.parametrize(
    "text, status, made",
    [
        ("mkdir a\nmkdir b\n", 0, ["a", "b"]),
        ("mkdir a\ncd nope\nmkdir b\n", 1, ["a"]),
        ("mkdir a\nfrobnicate\nmkdir b\n", 2, ["a"]),
    ],
)
def test_commands_piped_to_stdin_are_a_batch(
    addr: str,
    local: Path,
    home: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    text: str,
    status: int,
    made: list[str],
) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO(text))  # not a terminal
    got, _out, err = main(capsys, "-u", "alice", addr)
    assert got == status, err
    assert visible(home) == made


def test_commands_piped_to_a_real_process(addr: str, local: Path, home: Path) -> None:
    env = {**os.environ, "FTP_PASSWORD": PASSWORDS["alice"]}
    done = subprocess.run(
        [sys.executable, "-m", "ftp_client", "-u", "alice", addr],
        input="mkdir x\nmkdir x\nmkdir y\n",
        cwd=local,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    assert_one_error_line(done.stderr)
    assert done.stderr.startswith("ftp-client: line 2: mkdir x: ")
    assert visible(home) == ["x"]


# --- Ctrl-C ---------------------------------------------------------------------------


@pytest.mark.parametrize("size", [1000, transfer.INLINE_MAX + 1000])
def test_ctrl_c_after_the_server_stored_the_file_says_stored(
    shell: Shell, home: Path, local: Path, capsys: pytest.CaptureFixture[str], size: int
) -> None:
    data = os.urandom(size)
    (local / "f.bin").write_bytes(data)
    conn = shell.session.open()
    real = conn.read_response
    answers = {"n": 0}
    final = 1 if size <= transfer.INLINE_MAX else 2  # two-phase: the 150 comes first

    def read_response() -> protocol.Response:
        answers["n"] += 1
        if answers["n"] == final:
            raise KeyboardInterrupt  # Ctrl-C while the server is finishing
        return real()

    conn.read_response = read_response  # type: ignore[method-assign]

    assert run_batch(shell, ["put f.bin", "mkdir after"]) == EXIT_INTERRUPTED
    captured = capsys.readouterr()
    assert captured.out.startswith(
        f"put f.bin: {size} bytes, md5 {hashlib.md5(data).hexdigest()} verified"
    )
    assert "stopped after f.bin was stored" in captured.err
    assert "re-issue" not in captured.err and "interrupted" not in captured.err
    assert (home / "f.bin").read_bytes() == data
    assert visible(home) == ["f.bin"]  # the batch stopped there
    assert shell.session.conn is conn  # still in step: the answer was read


def test_ctrl_c_mid_transfer_is_interrupted_and_resumable(
    shell: Shell, home: Path, local: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = os.urandom(3 * MiB)
    (local / "big.bin").write_bytes(data)

    class CtrlC:
        sent = 0

        def update(self, n: int) -> None:
            self.sent += n
            if self.sent >= MiB:
                raise KeyboardInterrupt

        def close(self) -> None:
            pass

    shell.progress = lambda *_a: CtrlC()
    assert run_batch(shell, ["put big.bin", "mkdir after"]) == EXIT_INTERRUPTED
    err = capsys.readouterr().err
    assert_one_error_line(err)
    assert "interrupted; re-issue the command to resume" in err
    assert visible(home) == []

    shell.progress = transfer.no_progress
    _out, err = run(shell, "put big.bin", capsys)
    assert not shell.last_failed, err
    assert (home / "big.bin").read_bytes() == data


# --- an upload another session holds (409) --------------------------------------------


def busy_server(refusals: int | None) -> FakeServer:
    """Refuses ``put`` with the daemon's 409 ``refusals`` times (None: always)."""
    state = {"left": refusals}

    def handle(request: protocol.Request, body: bytes) -> tuple[protocol.Response, bytes] | None:
        if request.cmd != "put":
            return None
        if state["left"] is None or state["left"] > 0:
            if state["left"] is not None:
                state["left"] -= 1
            message = f"/{request.args['path']}: being uploaded by another session"
            return protocol.Response(False, 409, message, "conflict"), b""
        data = {
            "path": "/" + request.args["path"],
            "size": len(body),
            "offset": 0,
            "checksum": hashlib.md5(body).hexdigest(),
            "digest": "md5",
        }
        return protocol.Response(True, 200, "stored", data=data), b""

    return FakeServer(handle)


@pytest.fixture
def fake_clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """transfer's clock and pause: pauses advance the clock instead of waiting."""
    pauses: list[float] = []
    now = [1000.0]
    monkeypatch.setattr(transfer, "_clock", lambda: now[0])

    def pause(seconds: float) -> None:
        pauses.append(seconds)
        now[0] += seconds

    monkeypatch.setattr(transfer, "_sleep", pause)
    return pauses


def test_put_waits_while_another_session_uploads_then_stores(
    local: Path, fake_clock: list[float], capsys: pytest.CaptureFixture[str]
) -> None:
    (local / "f.bin").write_bytes(b"payload")
    fake = busy_server(3)
    session = fake.session()
    shell = Shell(session, quiet=False, interactive=False)
    out, err = run(shell, "put f.bin", capsys)
    assert not shell.last_failed, err
    assert out.startswith("put f.bin: 7 bytes")
    assert "being uploaded by another session; waiting up to 20 s" in err
    assert len(fake_clock) == 3 and sum(fake_clock) < 20
    session.close()
    fake.close()


def test_put_gives_up_after_about_20_s(
    local: Path, fake_clock: list[float], capsys: pytest.CaptureFixture[str]
) -> None:
    (local / "f.bin").write_bytes(b"payload")
    fake = busy_server(None)
    session = fake.session()
    shell = Shell(session, quiet=True, interactive=False)
    assert run_batch(shell, ["put f.bin"]) == EXIT_FAILED
    err = capsys.readouterr().err
    assert_one_error_line(err)
    assert "still being uploaded by another session after 20 s; try again later" in err
    assert sum(fake_clock) == pytest.approx(transfer.BUSY_WAIT_S)
    session.close()
    fake.close()


# --- progress bars --------------------------------------------------------------------


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def screen(text: str) -> list[str]:
    """What a terminal shows after ``text``: \\r, \\n and tqdm's cursor-up (ESC [A)."""
    rows: list[str] = [""]
    row = col = 0
    i = 0
    while i < len(text):
        if text.startswith("\x1b[A", i):
            row = max(0, row - 1)
            i += 3
            continue
        ch = text[i]
        i += 1
        if ch == "\r":
            col = 0
        elif ch == "\n":
            row += 1
            col = 0
            if row == len(rows):
                rows.append("")
        else:
            line = rows[row].ljust(col)
            rows[row] = line[:col] + ch + line[col + 1 :]
            col += 1
    return [r.rstrip() for r in rows if r.strip()]


def drawn(text: str) -> list[str]:
    """Every line tqdm drew, however briefly."""
    return [part for part in re.split(r"[\r\n]|\x1b\[A", text) if part.strip()]


def fake_terminal(monkeypatch: pytest.MonkeyPatch) -> FakeTTY:
    """stderr becomes an 80-column terminal (set in the test body: pytest's own capture
    replaces sys.stderr again after fixtures have run)."""
    monkeypatch.setenv("COLUMNS", "80")
    out = FakeTTY()
    monkeypatch.setattr(sys, "stderr", out)
    monkeypatch.setattr(sys, "stdout", io.StringIO())
    return out


def test_progress_uses_binary_units_and_keeps_figures_in_80_columns(
    addr: str, local: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tty = fake_terminal(monkeypatch)
    name = "a-very-long-file-name-that-would-push-the-figures-off-an-80-column-line.tar.gz"
    (local / name).write_bytes(os.urandom(3 * MiB))

    assert cli.main(["-u", "alice", "-c", f"put {name}; get {name} back.bin", addr]) == 0

    lines = drawn(tty.getvalue())
    assert lines, repr(tty.getvalue())
    for line in lines:
        assert len(line) <= 80, line
        assert re.search(r"\d+%\|", line), line
        assert re.search(r"/\d+\.\d MiB (\? B/s|\d+(\.\d)? (B|KiB|MiB|GiB)/s) eta ", line), line
        assert not re.search(r"\d ?[kMG]B\b", line), line  # never MB next to MiB
    assert any("…" in line and line.startswith("a-very") and ".tar.gz:" in line for line in lines)
    assert any("100%" in line for line in lines)


def test_recursive_and_wildcard_transfers_show_an_overall_bar(
    addr: str, local: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tty = fake_terminal(monkeypatch)
    (local / "tree" / "sub").mkdir(parents=True)
    (local / "tree" / "a.bin").write_bytes(os.urandom(100))
    (local / "tree" / "sub" / "b.bin").write_bytes(os.urandom(2 * MiB))
    (local / "c.log").write_bytes(b"c")
    (local / "d.log").write_bytes(b"d")

    commands = "put -r tree up; put *.log; get -r up down"
    assert cli.main(["-u", "alice", "-c", commands, addr]) == 0

    text = tty.getvalue()
    shown = screen(text)
    assert any(line.startswith("all: 2/2 files: 100%") for line in shown), shown
    assert sum(1 for line in shown if line.startswith("all: 2/2 files: 100%")) == 3
    assert any(line.startswith("all: 1/2 files") for line in drawn(text))  # it moved file by file
    assert not any("b.bin:" in line for line in shown), shown  # the file bars were wiped


def test_a_failed_put_leaves_no_stale_bar(
    addr: str, local: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tty = fake_terminal(monkeypatch)
    (local / "small.bin").write_bytes(b"x" * 1000)
    (local / "empty.bin").write_bytes(b"")  # nothing to show: no bar stuck at 0% either
    assert (
        cli.main(["-u", "alice", "-c", "put empty.bin; put small.bin nodir/small.bin", addr]) == 1
    )
    shown = screen(tty.getvalue())
    assert not any("%" in line for line in shown), shown
    assert any("no such directory" in line for line in shown)
