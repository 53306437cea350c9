"""Pure tests of the FTP front end's sans-IO parts: the line buffer and parser, the reply
map, the listing forms, and the ``ftp:`` section of the configuration."""

from __future__ import annotations

from pathlib import Path

import pytest

from ftpd import cli, config
from ftpd.errors import (
    BadRequestError,
    ConflictError,
    FTPError,
    InvalidPathError,
    LoginFailedError,
    NotFoundError,
    NotLoggedInError,
    PathEscapeError,
    QuotaExceededError,
    StorageFullError,
    UnknownCommandError,
    from_oserror,
)
from ftpd.ftp import commands, listing
from ftpd.ftp.commands import LineBuffer, LineTooLongError, UnimplementedError, parse
from ftpd.ftp.replies import DataConnectionError, Reply, TransferAbortedError, reply_for
from ftpd.storage.base import Entry


def test_ftp_lines_byte_by_byte() -> None:
    buf = LineBuffer()
    got = []
    for byte in b"USER alice\r\nPASS x\nNOOP\r\n":
        buf.feed(bytes([byte]))
        while (line := buf.next_line()) is not None:
            got.append(line)
    assert got == [b"USER alice", b"PASS x", b"NOOP"]


def test_ftp_lines_cap_before_anything_is_kept() -> None:
    buf = LineBuffer(cap=16)
    buf.feed(b"x" * 16)
    with pytest.raises(LineTooLongError):
        buf.feed(b"y")
    buf = LineBuffer(cap=16)
    with pytest.raises(LineTooLongError):
        buf.feed(b"z" * 20 + b"\r\n")


@pytest.mark.parametrize(
    ("raw", "verb", "arg"),
    [
        (b"user alice", "USER", "alice"),
        (b"STOR my file.txt ", "STOR", "my file.txt "),
        (b"\xff\xf4\xff\xf2ABOR", "ABOR", ""),
        (b"CWD caf\xc3\xa9", "CWD", "café"),
        (b"CWD caf\xe9", "CWD", "caf\udce9"),
        (b"xpwd", "XPWD", ""),
    ],
)
def test_ftp_parse(raw: bytes, verb: str, arg: str) -> None:
    command = parse(raw)
    assert (command.verb, command.arg) == (verb, arg)


@pytest.mark.parametrize(
    ("raw", "error"),
    [
        (b"USER a\x00b", BadRequestError),
        (b"USER a\rb", BadRequestError),
        (b"HELLO", UnknownCommandError),
        (b"", UnknownCommandError),
        (b"SMNT x", UnimplementedError),
        (b"\xc3\xa9X", UnknownCommandError),
    ],
)
def test_ftp_parse_refuses(raw: bytes, error: type[FTPError]) -> None:
    with pytest.raises(error):
        parse(raw)


def test_ftp_argument_rules() -> None:
    with pytest.raises(BadRequestError):
        commands.check_arg(parse(b"RETR"))
    with pytest.raises(BadRequestError):
        commands.check_arg(parse(b"PWD x"))
    commands.check_arg(parse(b"LIST"))
    assert parse(b"PASS secret").shown == "PASS ****"


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (NotLoggedInError(), 530),
        (LoginFailedError(), 530),
        (NotFoundError(), 550),
        (PathEscapeError(), 550),
        (ConflictError(), 550),
        (InvalidPathError(), 553),
        (QuotaExceededError(), 552),
        (StorageFullError(), 452),
        (BadRequestError(), 501),
        (UnknownCommandError(), 500),
        (UnimplementedError(), 502),
        (DataConnectionError(), 425),
        (TransferAbortedError(), 426),
        (from_oserror(OSError(5, "EIO")), 451),
    ],
)
def test_ftp_one_map_of_errors_to_codes(exc: FTPError, code: int) -> None:
    assert reply_for(exc).code == code


def test_ftp_reply_lines_cannot_be_forged() -> None:
    assert Reply(550, "a\r\n230 logged in").encode() == b"550 a  230 logged in\r\n"
    multi = Reply(211, "Features:", ["UTF8", "MLST"]).encode()
    assert multi == b"211-Features:\r\n UTF8\r\n MLST\r\n211 End\r\n"


def test_ftp_listing_forms() -> None:
    now = 1_800_000_000.0
    entry = Entry("report.pdf", "file", 1234, now - 3600, 0o644)
    line = listing.ls_line(entry, "alice", now)
    assert line.startswith("-rw-r--r--") and line.endswith(" report.pdf") and " 1234 " in line
    old = listing.ls_line(Entry("d", "dir", 0, now - 400 * 86400, 0o755), "alice", now)
    assert old.startswith("drwxr-xr-x") and old.endswith(" Dec 11  2025 d")  # a year, no time
    facts = listing.facts(entry, "u1")
    assert facts.startswith("type=file;size=1234;modify=") and facts.endswith("; report.pdf")
    assert listing.display_name("bad\udce9\n") == "bad\\xe9\\x0a"
    assert listing.parse_mdtm(listing.mdtm(now)) == now
    assert listing.parse_mdtm("20200101000000.5") == 1577836800.5
    with pytest.raises(ValueError):
        listing.parse_mdtm("2020")
    assert listing.parse_facts("Size;TYPE;bogus;") == ("type", "size")


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "ftpd.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_ftp_config_section_loads(tmp_path: Path) -> None:
    cfg = config.load(_write(tmp_path, "ftp:\n  port: 2100\n  passive_ports: 50000-50100\n"))
    assert cfg.ftp is not None and cfg.ftp.passive_ports == (50000, 50100)
    assert cfg.ftp.tls_session_reuse and not cfg.ftp.active and not cfg.ftp.require_tls
    assert config.load(_write(tmp_path, "port: 2121\n")).ftp is None


@pytest.mark.parametrize(
    ("text", "key", "message"),
    [
        ("ftp:\n  passive_ports: 100-200\n", "ftp.passive_ports", "1024"),
        ("ftp:\n  passive_ports: 6000-5000\n", "ftp.passive_ports", "lower one first"),
        ("ftp:\n  passive_ports: lots\n", "ftp.passive_ports", "LOW-HIGH"),
        ("ftp:\n  port: 2100\n  passive_ports: 2000-3000\n", "ftp.passive_ports", "2100"),
        ("ftp:\n  bogus: 1\n", "ftp.bogus", "unknown key"),
        ("ftp:\n  active: yes please\n", "ftp.active", "true or false"),
        ("ftp:\n  passive_address: nat.example\n", "ftp.passive_address", "IPv4"),
        ("ftp: 7\n", "ftp", "mapping"),
    ],
)
def test_ftp_config_problems_name_file_line_key(
    tmp_path: Path, text: str, key: str, message: str
) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(config.ConfigError) as info:
        config.load(path)
    problem = info.value.problems[0]
    assert problem[0] == str(path) and problem[1] is not None and problem[2] == key
    assert message in problem[3]


def test_ftp_check_config_refuses_an_unbindable_address(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.conftest import FAST

    (tmp_path / "users.yaml").write_text(f'users:\n  a:\n    password: "{FAST.hash("pw")}"\n')
    path = _write(tmp_path, "users_file: users.yaml\nftp:\n  host: 192.0.2.55\n  port: 2100\n")
    assert cli.main(["check-config", "--config", str(path)]) == 1
    err = capsys.readouterr().err
    assert f"{path}:3: ftp.host: cannot listen on 192.0.2.55" in err


def test_ftp_shipped_config_turns_ftp_on() -> None:
    shipped = Path(__file__).resolve().parents[2] / "conf" / "ftpd.yaml"
    cfg = config.load(shipped)
    assert cfg.ftp is not None
    assert (cfg.host, cfg.ftp.port, cfg.ftp.passive_ports) == ("127.0.0.1", 2100, (50000, 50100))
