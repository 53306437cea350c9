"""``ftp-client`` as scripts use it: -c / -b batches, exit statuses, one-line errors.

Most cases call ``ftp_client.cli.main(argv)`` in-process (capsys); a few run
``python -m ftp_client`` as a real process to check the same contract end to end.
"""

from __future__ import annotations

import hashlib
import io
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from ftp_client import cli, transfer
from ftp_client import shell as shell_mod
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


def main(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = cli.main(list(argv))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def assert_one_error_line(err: str) -> None:
    assert len(err.splitlines()) == 1, err
    assert err.startswith("ftp-client: ")
    assert "Traceback" not in err


# --- -c and -b --------------------------------------------------------------------------


def test_cli_commands_with_quotes_and_semicolons(
    addr: str, local: Path, home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (local / "a b.txt").write_bytes(b"spaced\n")
    commands = "mkdir 'my dir'; cd \"my dir\"; put 'a b.txt' 'x;y.txt'; ls; pwd"

    status, out, err = main(capsys, "-q", "-u", "alice", "-c", commands, addr)

    assert status == 0, err
    assert (home / "my dir" / "x;y.txt").read_bytes() == b"spaced\n"
    lines = out.splitlines()
    assert lines[0].startswith("put x;y.txt: 7 bytes, md5 ")
    assert lines[1].endswith("  x;y.txt")
    assert lines[2] == "/my dir"
    assert err == ""


@pytest.mark.parametrize("source", ["file", "stdin"])
def test_cli_batch_from_file_or_stdin(
    addr: str,
    local: Path,
    home: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    source: str,
) -> None:
    (local / "f.txt").write_bytes(b"batch\n")
    text = "# a comment\n\nmkdir d\n  cd d  \nput f.txt\n\nls\n"
    if source == "file":
        (local / "cmds.txt").write_text(text, encoding="utf-8")
        arg = "cmds.txt"
    else:
        monkeypatch.setattr(sys, "stdin", io.StringIO(text))
        arg = "-"

    status, out, err = main(capsys, "-q", "-u", "alice", "-b", arg, addr)

    assert status == 0, err
    assert (home / "d" / "f.txt").read_bytes() == b"batch\n"
    assert out.splitlines()[-1].endswith("  f.txt")


@pytest.mark.parametrize(
    "commands, status, made",
    [
        ("mkdir a; cd nope; mkdir b", 1, ["a"]),
        ("mkdir a; get nope.bin; mkdir b", 1, ["a"]),
        ("mkdir a; frobnicate x; mkdir b", 2, ["a"]),
        ("mkdir a; cd a b; mkdir b", 2, ["a"]),  # wrong arguments: a usage error
        ("mkdir a; mkdir a; mkdir b", 1, ["a"]),
        ("mkdir a; mkdir b", 0, ["a", "b"]),
    ],
)
def test_cli_batch_stops_at_first_failure(
    addr: str,
    local: Path,
    home: Path,
    capsys: pytest.CaptureFixture[str],
    commands: str,
    status: int,
    made: list[str],
) -> None:
    got, _out, err = main(capsys, "-u", "alice", "-c", commands, addr)

    assert got == status
    assert sorted(p.name for p in home.iterdir() if p.name != ".ftpd") == made
    if status:
        assert_one_error_line(err)
    else:
        assert err == ""


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["-u", "alice"],
        ["-u", "alice", "-c", "pwd", "-b", "cmds.txt", "ADDR"],
        ["-u", "alice", "127.0.0.1:99999"],
        ["-u", "alice", "127.0.0.1:0"],
        ["-u", "alice", "127.0.0.1:abc"],
        ["-u", "alice", ":2121"],
        ["-u", "alice", "--bogus", "ADDR"],
        ["-u", "alice", "-b", "missing-file.txt", "ADDR"],
    ],
    ids=[
        "nothing",
        "no-address",
        "c-and-b",
        "port-too-big",
        "port-zero",
        "port-not-a-number",
        "no-host",
        "unknown-option",
        "missing-batch-file",
    ],
)
def test_cli_bad_usage_is_exit_2(
    addr: str, local: Path, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    status, _out, err = main(capsys, *[addr if a == "ADDR" else a for a in argv])
    assert status == 2
    assert "Traceback" not in err and err


def test_cli_wrong_password_is_exit_3(
    addr: str, local: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("FTP_PASSWORD", "wrong")
    status, _out, err = main(capsys, "-u", "alice", "-c", "mkdir x", addr)
    assert status == 3
    assert_one_error_line(err)
    assert "login incorrect" in err
    assert "wrong" not in err  # never the password


def test_cli_unreachable_port_is_exit_3(local: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as unused:  # bound, not listening: connections are refused
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
        status, _out, err = main(
            capsys, "-u", "alice", "--timeout", "5", "-c", "pwd", f"127.0.0.1:{port}"
        )
    assert status == 3
    assert_one_error_line(err)
    assert f"127.0.0.1:{port}" in err


def test_cli_password_from_env_never_prompts(
    addr: str, local: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def no_prompt(prompt: str = "") -> str:
        raise AssertionError("prompted although FTP_PASSWORD is set")

    monkeypatch.setattr("getpass.getpass", no_prompt)
    status, out, err = main(capsys, "-u", "alice", "-c", "pwd", addr)
    assert (status, out) == (0, "/\n"), err


def test_cli_password_prompt_without_env(
    addr: str, local: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    prompts: list[str] = []
    monkeypatch.delenv("FTP_PASSWORD")
    monkeypatch.setattr(
        "getpass.getpass", lambda prompt="": prompts.append(prompt) or PASSWORDS["alice"]
    )
    status, out, err = main(capsys, "-u", "alice", "-c", "pwd", addr)
    assert (status, out) == (0, "/\n"), err
    assert prompts == ["Password for alice@127.0.0.1: "]


def test_cli_non_ascii_names_through_batch(
    addr: str, local: Path, home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = "中文内容\n".encode() * 1000
    (local / "报告.txt").write_bytes(data)
    (local / "cmds.txt").write_text(
        "mkdir 文件夹\ncd 文件夹\nput 报告.txt\nls\ncd /\nls\n"
        "get 文件夹/报告.txt 副本.txt\nstat 文件夹/报告.txt\n",
        encoding="utf-8",
    )

    status, out, err = main(capsys, "-q", "-u", "alice", "-b", "cmds.txt", addr)

    assert status == 0, err
    assert (home / "文件夹" / "报告.txt").read_bytes() == data
    assert (local / "副本.txt").read_bytes() == data
    lines = out.splitlines()
    assert (
        lines[0] == f"put 报告.txt: {len(data)} bytes, md5 {hashlib.md5(data).hexdigest()} verified"
    )
    assert lines[1].endswith("  报告.txt")
    assert lines[2].endswith("  文件夹/")
    assert lines[3].startswith("got 文件夹/报告.txt: ")
    assert "    path: /文件夹/报告.txt" in lines


@pytest.mark.parametrize(
    "command",
    [
        "get nope.bin",
        "cd nope",
        "rm nope",
        "rmdir /",
        "mkdir a/b/c",
        "put /nonexistent-dir-for-test/f.bin",
        "get .ftpd/partial/x",
        "ls ../../etc",
        "mv nope other",
        "stat 'back\\slash'",
    ],
)
def test_cli_errors_are_one_line_without_traceback(
    addr: str, local: Path, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    status, _out, err = main(capsys, "-u", "alice", "-c", command, addr)
    assert status == 1
    assert_one_error_line(err)
    assert str(local.parent) not in err.replace(str(local), "")  # no server-side real path


# --- progress and notices ---------------------------------------------------------------


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("quiet", [False, True])
def test_cli_progress_only_on_a_tty_and_not_with_q(
    addr: str, local: Path, monkeypatch: pytest.MonkeyPatch, quiet: bool
) -> None:
    (local / "big.bin").write_bytes(os.urandom(2 * MiB))
    tty = FakeTTY()
    monkeypatch.setattr(sys, "stderr", tty)
    monkeypatch.setattr(sys, "stdout", io.StringIO())

    status = cli.main(["-u", "alice", *(["-q"] if quiet else []), "-c", "put big.bin", addr])

    assert status == 0
    if quiet:
        assert tty.getvalue() == ""
    else:
        assert "100%" in tty.getvalue() and "big.bin" in tty.getvalue()


def test_cli_no_progress_bar_when_stderr_is_not_a_tty(
    server: RunningServer, local: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    session = shell_mod.Session(server.connect, "alice", PASSWORDS["alice"])
    assert shell_mod.Shell(session, quiet=False).progress is transfer.no_progress
    assert shell_mod.Shell(session, quiet=True).progress is transfer.no_progress


@pytest.mark.parametrize("quiet", [False, True])
def test_cli_q_suppresses_notices(
    addr: str, local: Path, capsys: pytest.CaptureFixture[str], quiet: bool
) -> None:
    (local / "tree" / "sub").mkdir(parents=True)
    (local / "tree" / "one.txt").write_bytes(b"1")
    (local / "tree" / "sub" / "two.txt").write_bytes(b"2")
    argv = ["-u", "alice", *(["-q"] if quiet else []), "-c", "put -r tree up", addr]

    status, out, err = main(capsys, *argv)

    assert status == 0
    assert out == "put 2 files, 2 directories to up\n"
    if quiet:
        assert err == ""
    else:
        assert err.splitlines() == ["[1/2] up/one.txt", "[2/2] up/sub/two.txt"]


# --- the real process -------------------------------------------------------------------


@pytest.fixture
def run_client(addr: str, local: Path) -> Iterator:
    def run(
        *argv: str, password: str = PASSWORDS["alice"], stdin: str = ""
    ) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "FTP_PASSWORD": password, "PYTHONIOENCODING": "utf-8"}
        return subprocess.run(
            [sys.executable, "-m", "ftp_client", *[addr if a == "ADDR" else a for a in argv]],
            check=False,
            cwd=local,
            env=env,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=60,
        )

    yield run


def test_cli_process_success_and_no_progress_on_a_pipe(run_client, local: Path, home: Path) -> None:
    data = os.urandom(2 * MiB + 1)
    (local / "big.bin").write_bytes(data)

    done = run_client("-u", "alice", "-c", "put big.bin; get big.bin copy.bin; ls", "ADDR")

    assert done.returncode == 0, done.stderr
    assert (home / "big.bin").read_bytes() == data == (local / "copy.bin").read_bytes()
    assert done.stderr == ""  # not a TTY: no tqdm bar, and nothing else to say
    assert done.stdout.splitlines()[-1].endswith("  big.bin")


@pytest.mark.parametrize(
    "argv, password, status, one_line",
    [
        (["-u", "alice", "-c", "pwd", "ADDR"], "wrong", 3, True),
        (["-u", "alice", "-c", "pwd"], PASSWORDS["alice"], 2, False),  # argparse's usage text
        (["-u", "alice", "-c", "mkdir x; cd nope; mkdir y", "ADDR"], PASSWORDS["alice"], 1, True),
        (["-u", "alice", "-c", "nosuchcommand; mkdir y", "ADDR"], PASSWORDS["alice"], 2, True),
    ],
    ids=["wrong-password", "no-address", "failed-command", "unknown-command"],
)
def test_cli_process_exit_status(
    run_client, home: Path, argv: list[str], password: str, status: int, one_line: bool
) -> None:
    done = run_client(*argv, password=password)
    assert done.returncode == status
    assert "Traceback" not in done.stderr and done.stderr
    if one_line:
        assert_one_error_line(done.stderr)
    assert not (home / "y").exists()


def test_cli_process_batch_from_stdin_with_non_ascii(run_client, local: Path, home: Path) -> None:
    (local / "été.txt").write_bytes("ça va\n".encode())
    done = run_client(
        "-q", "-u", "alice", "-b", "-", "ADDR", stdin="mkdir 目录\ncd 目录\nput été.txt\nls\n"
    )
    assert done.returncode == 0, done.stderr
    assert (home / "目录" / "été.txt").read_bytes() == "ça va\n".encode()
    assert done.stdout.splitlines()[-1].endswith("  été.txt")
