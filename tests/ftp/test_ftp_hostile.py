"""Hostile input on the FTP listener, byte by byte on raw sockets: over-long lines, NUL
and CR, commands before login, data connection theft from another address, passive
port exhaustion, bounce attempts, bugs that must not reach the wire, and FileZilla's
own command sequence replayed."""

from __future__ import annotations

import ftplib
import io
import socket
from collections.abc import Callable

import pytest

from ftpd.ftp import commands
from tests.conftest import PASSWORDS
from tests.ftp.conftest import TIMEOUT_S, FTPRunning
from tests.support import LogRecords, wait_until


class Raw:
    """A bare control connection that reads whole replies (multi-line ones too)."""

    def __init__(self, server: FTPRunning, timeout: float = TIMEOUT_S) -> None:
        self.sock = socket.create_connection((server.host, server.port), timeout=timeout)
        self.reader = self.sock.makefile("rb")
        self.greeting = self.reply()

    def reply(self) -> str:
        line = self.reader.readline().decode("utf-8", "replace")
        if not line:
            return ""
        if line[3:4] == "-":
            code = line[:3]
            while True:
                more = self.reader.readline().decode("utf-8", "replace")
                line += more
                if not more or (more.startswith(code) and more[3:4] == " "):
                    break
        return line

    def send(self, raw: bytes) -> str:
        self.sock.sendall(raw)
        return self.reply()

    def cmd(self, line: str) -> str:
        return self.send(line.encode() + b"\r\n")

    def login(self, user: str = "alice") -> None:
        assert self.cmd(f"USER {user}").startswith("331")
        assert self.cmd(f"PASS {PASSWORDS[user]}").startswith("230")

    def pasv(self) -> tuple[str, int]:
        reply = self.cmd("PASV")
        assert reply.startswith("227"), reply
        numbers = reply[reply.index("(") + 1 : reply.index(")")].split(",")
        return ".".join(numbers[:4]), int(numbers[4]) * 256 + int(numbers[5])

    def closed(self) -> bool:
        try:
            return self.sock.recv(1) == b""
        except (ConnectionError, TimeoutError):
            return True

    def close(self) -> None:
        self.sock.close()


def test_ftp_hostile_long_line_is_refused_and_closed(ftp_server: FTPRunning) -> None:
    raw = Raw(ftp_server)
    reply = raw.send(b"USER " + b"a" * (commands.MAX_LINE + 100))
    assert reply.startswith("500")
    assert raw.closed()
    raw = Raw(ftp_server)
    assert raw.send(b"NOOP " + b"b" * 5000 + b"\r\n").startswith("500")
    assert raw.closed()


def test_ftp_hostile_nul_and_cr_inside_are_501(ftp_server: FTPRunning) -> None:
    raw = Raw(ftp_server)
    assert raw.send(b"USER al\x00ice\r\n").startswith("501")
    assert raw.send(b"USER al\rice\r\n").startswith("501")
    raw.login()
    assert raw.send(b"MKD a\x00b\r\n").startswith("501")
    assert raw.cmd("NOOP").startswith("200")  # the session goes on
    raw.close()


def test_ftp_hostile_unknown_and_unimplemented_commands(ftp_server: FTPRunning) -> None:
    raw = Raw(ftp_server)
    assert raw.cmd("FOO bar").startswith("500")
    assert raw.cmd("__init__").startswith("500")
    assert raw.cmd("SMNT /").startswith("502")
    assert raw.cmd("").startswith("500")
    assert raw.send(b"\xff\xfe\xfd\r\n").startswith("500")
    assert raw.cmd("NOOP").startswith("200")
    raw.close()


BEFORE_LOGIN_REFUSED = [
    "CWD /", "PWD", "LIST", "NLST", "MLSD", "RETR a", "STOR a", "APPE a", "STOU", "DELE a",
    "MKD a", "RMD a", "RNFR a", "RNTO a", "SIZE a", "MDTM a", "MFMT 20200101000000 a",
    "PASV", "EPSV", "PORT 127,0,0,1,4,1", "REST 0", "TYPE I", "STAT", "SITE HELP", "REIN",
    "ABOR", "HASH a", "XMD5 a", "XPWD", "CDUP", "ALLO 1", "MLST", "MODE S", "STRU F",
]  # fmt: skip


@pytest.mark.parametrize("line", BEFORE_LOGIN_REFUSED)
def test_ftp_hostile_commands_before_login_are_530(ftp_server: FTPRunning, line: str) -> None:
    raw = Raw(ftp_server)
    assert raw.cmd(line).startswith("530")
    raw.close()


def test_ftp_hostile_allowed_before_login(ftp_server: FTPRunning) -> None:
    raw = Raw(ftp_server)
    for line in ("FEAT", "SYST", "NOOP", "HELP", "OPTS UTF8 ON", "CLNT x", "ACCT x"):
        assert raw.cmd(line)[0] == "2", line
    assert raw.cmd("PBSZ 0").startswith("503")  # allowed, but only after AUTH
    assert raw.cmd("PASS x").startswith("503")
    assert raw.cmd("QUIT").startswith("221")
    assert raw.closed()


def test_ftp_hostile_table_and_methods_in_step() -> None:
    from ftpd.ftp.session import FTPSession

    for spec in commands.COMMANDS.values():
        assert callable(getattr(FTPSession, "ftp_" + spec.method)), spec.name
    methods = {name[4:] for name in dir(FTPSession) if name.startswith("ftp_")}
    assert methods == {spec.method for spec in commands.COMMANDS.values()}
    assert {
        "USER", "PASS", "ACCT", "AUTH", "PBSZ", "PROT", "FEAT", "OPTS", "SYST", "NOOP",
        "QUIT", "HELP", "CLNT",
    } == commands.BEFORE_LOGIN  # fmt: skip


def test_ftp_hostile_data_connection_from_another_address_is_dropped(
    ftp_server: FTPRunning, log_records: LogRecords
) -> None:
    raw = Raw(ftp_server)
    raw.login()
    host, port = raw.pasv()
    thief = socket.socket()
    thief.settimeout(TIMEOUT_S)
    thief.bind(("127.0.0.2", 0))
    thief.connect((host, port))
    honest = socket.create_connection((host, port), timeout=TIMEOUT_S)
    assert raw.cmd("LIST").startswith("150")
    assert raw.reply().startswith("226")
    honest.close()
    try:
        stolen = thief.recv(1024)
    except ConnectionError:
        stolen = b""
    assert stolen == b""
    log_records.wait_for(r"DATA THEFT ip=127\.0\.0\.2")
    thief.close()
    raw.close()


def test_ftp_hostile_only_a_thief_connects_gives_425(
    ftp_factory: Callable[..., FTPRunning],
) -> None:
    server = ftp_factory(idle_timeout=1)
    raw = Raw(server)
    raw.login()
    host, port = raw.pasv()
    thief = socket.socket()
    thief.settimeout(TIMEOUT_S)
    thief.bind(("127.0.0.2", 0))
    thief.connect((host, port))
    assert raw.cmd("NLST").startswith("150")
    assert raw.reply().startswith("425")  # after the passive timeout, not a hang
    thief.close()
    raw.close()


def test_ftp_hostile_passive_range_exhausted_is_425(ftp_factory: Callable[..., FTPRunning]) -> None:
    server = ftp_factory(passive_count=2)
    first, second, third = Raw(server), Raw(server), Raw(server)
    for raw in (first, second, third):
        raw.login()
    first.pasv()
    second.pasv()
    assert third.cmd("PASV").startswith("425")
    assert third.cmd("EPSV").startswith("425")
    assert first.cmd("ABOR").startswith("226")  # gives its port back
    third.pasv()
    for raw in (first, second, third):
        raw.close()


def test_ftp_hostile_unused_passive_port_closes_with_the_session(
    ftp_factory: Callable[..., FTPRunning],
) -> None:
    server = ftp_factory(idle_timeout=1)
    raw = Raw(server)
    raw.login()
    host, port = raw.pasv()
    assert raw.reply().startswith("421")  # the idle timeout closes the session...
    assert raw.closed()
    with pytest.raises(ConnectionRefusedError):  # ...and its passive port
        socket.create_connection((host, port), timeout=TIMEOUT_S).close()


def test_ftp_hostile_unused_passive_port_closes_after_the_idle_timeout(
    ftp_factory: Callable[..., FTPRunning],
) -> None:
    server = ftp_factory(idle_timeout=1)
    raw = Raw(server)
    raw.login()
    host, port = raw.pasv()

    def port_closed() -> bool:
        assert raw.cmd("NOOP").startswith("200")  # the session itself stays busy
        try:
            socket.create_connection((host, port), timeout=TIMEOUT_S).close()
        except ConnectionRefusedError:
            return True
        return False

    wait_until(port_closed, timeout=5)
    raw.close()


def test_ftp_hostile_port_and_eprt_refused_when_active_is_off(ftp: ftplib.FTP) -> None:
    with pytest.raises(ftplib.error_perm, match="^502"):
        ftp.sendcmd("PORT 127,0,0,1,200,10")
    with pytest.raises(ftplib.error_perm, match="^502"):
        ftp.sendcmd("EPRT |1|127.0.0.1|51210|")


def test_ftp_hostile_no_bounce_with_active_on(ftp_factory: Callable[..., FTPRunning]) -> None:
    server = ftp_factory(ftp={"active": True})
    client = server.connect()
    with pytest.raises(ftplib.error_perm, match="^502"):
        client.sendcmd("PORT 127,0,0,2,200,10")  # not the control connection's address
    with pytest.raises(ftplib.error_perm, match="^502"):
        client.sendcmd("PORT 127,0,0,1,0,21")  # a privileged port
    with pytest.raises(ftplib.error_perm, match="^502"):
        client.sendcmd("EPRT |1|127.0.0.2|51210|")
    client.set_pasv(False)  # active mode towards itself works
    client.storbinary("STOR active.bin", io.BytesIO(b"active data"))
    assert (server.home() / "active.bin").read_bytes() == b"active data"
    assert client.nlst() == ["active.bin"]
    client.quit()


def test_ftp_hostile_bug_is_421_without_traceback_and_others_go_on(
    ftp_server: FTPRunning, monkeypatch: pytest.MonkeyPatch, log_records: LogRecords
) -> None:
    from ftpd.core.files import FileService

    bystander = ftp_server.connect("bob")
    victim = Raw(ftp_server)
    victim.login()

    def boom(self: FileService, vpath: str) -> str:
        raise RuntimeError("secret /real/path detail")

    monkeypatch.setattr(FileService, "mkdir", boom)
    reply = victim.cmd("MKD x")
    assert reply.startswith("421") and "secret" not in reply and "Traceback" not in reply
    assert victim.closed()
    log_records.wait_for(r"BUG proto=ftp")
    monkeypatch.undo()
    assert bystander.sendcmd("NOOP").startswith("200")
    bystander.mkd("fine")
    bystander.quit()


def test_ftp_hostile_login_timeout(ftp_factory: Callable[..., FTPRunning]) -> None:
    server = ftp_factory(login_timeout=1)
    raw = Raw(server)
    assert raw.cmd("NOOP").startswith("200")  # chatter does not extend it
    assert raw.reply().startswith("421")
    assert raw.closed()


def test_ftp_hostile_slow_drip_line_is_cut(ftp_factory: Callable[..., FTPRunning]) -> None:
    server = ftp_factory(idle_timeout=1)
    raw = Raw(server)
    raw.login()
    raw.sock.sendall(b"NO")  # and never the rest
    assert raw.reply().startswith("421")
    assert raw.closed()


def test_ftp_hostile_connection_limit_counts_both_listeners(
    ftp_factory: Callable[..., FTPRunning],
) -> None:
    server = ftp_factory(max_connections=1)
    framed = server.framed_client()
    raw = Raw(server)
    assert raw.greeting.startswith("421")
    assert raw.closed()
    framed.close()


def test_ftp_hostile_telnet_abort_sequence_is_understood(ftp: ftplib.FTP) -> None:
    # ftplib's abort(): IAC IP IAC DM, then ABOR (sent as urgent data).
    assert ftp.abort().startswith("225")
    assert ftp.sendcmd("NOOP").startswith("200")


# --- FileZilla, replayed ---------------------------------------------------------------


def test_ftp_filezilla_command_sequence(ftp_server: FTPRunning) -> None:
    """What FileZilla 3 sends to connect, browse, upload and keep the time."""
    raw = Raw(ftp_server)
    raw.login()
    assert raw.cmd("SYST").startswith("215 UNIX")
    feat = raw.cmd("FEAT")
    assert feat.startswith("211-") and "MLST" in feat and "UTF8" in feat
    assert raw.cmd("OPTS UTF8 ON").startswith("200")
    assert raw.cmd("PWD").startswith('257 "/"')
    assert raw.cmd("TYPE I").startswith("200")
    host, port = raw.pasv()
    data = socket.create_connection((host, port), timeout=TIMEOUT_S)
    assert raw.cmd("MLSD").startswith("150")
    assert data.recv(1024) == b""
    data.close()
    assert raw.reply().startswith("226")
    host, port = raw.pasv()
    data = socket.create_connection((host, port), timeout=TIMEOUT_S)
    assert raw.cmd("STOR fz.txt").startswith("150")
    data.sendall(b"uploaded by FileZilla")
    data.close()
    assert raw.reply().startswith("226")
    assert raw.cmd("MFMT 20240102030405 fz.txt").startswith("213 Modify=20240102030405")
    assert raw.cmd("MLST fz.txt").startswith("250-")
    assert (ftp_server.home() / "fz.txt").read_bytes() == b"uploaded by FileZilla"
    assert raw.cmd("QUIT").startswith("221")
