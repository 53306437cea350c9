"""PROXY protocol on the FTP listener (``ftp.proxy_protocol``), through the real servers.

127.0.0.1 is the trusted balancer; 127.0.0.2 is anyone else; 127.0.0.3 plays a real
client whose data connections come to the node directly (docs/security.md).
"""

from __future__ import annotations

import ipaddress
import re
import socket
import struct
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from ftpd import proxy
from tests.conftest import PASSWORDS
from tests.ftp.conftest import FTPRunning
from tests.support import LogRecords, closed_within, wait_until

TIMEOUT = 5.0
CLIENT = "203.0.113.7"


def v1(src: str = CLIENT) -> bytes:
    return f"PROXY TCP4 {src} 127.0.0.1 40000 21\r\n".encode()


def v2(src: str = CLIENT) -> bytes:
    body = (
        ipaddress.ip_address(src).packed
        + ipaddress.ip_address("127.0.0.1").packed
        + struct.pack(">HH", 40000, 21)
    )
    return proxy.V2_SIGNATURE + b"\x21\x11" + struct.pack(">H", len(body)) + body


class Control:
    """A raw FTP control connection (bound to ``source``), header sent first."""

    def __init__(self, srv: FTPRunning, header: bytes = b"", source: str = "127.0.0.1") -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.settimeout(TIMEOUT)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.bind((source, 0))
        self.sock.connect((srv.host, srv.port))
        if header:
            self.sock.sendall(header)
        self.file = self.sock.makefile("rb")

    def reply(self) -> str:
        """One whole reply (the last line of a multi-line one), or "" at EOF."""
        while True:
            line = self.file.readline().decode()
            if not line or re.match(r"^\d{3} ", line):
                return line.strip()

    def cmd(self, line: str) -> str:
        self.sock.sendall(line.encode() + b"\r\n")
        return self.reply()

    def login(self, user: str = "alice", password: str | None = None) -> str:
        assert self.cmd(f"USER {user}").startswith("331")
        return self.cmd(f"PASS {password or PASSWORDS[user]}")

    def closed(self) -> bool:
        try:
            return self.sock.recv(1024) == b""
        except ConnectionResetError:
            return True

    def closed_within(self, seconds: float) -> bool:
        return closed_within(self.sock, seconds)

    def close(self) -> None:
        self.file.close()
        self.sock.close()


@contextmanager
def controls() -> Iterator[list[Control]]:
    held: list[Control] = []
    try:
        yield held
    finally:
        for control in held:
            control.close()


@pytest.mark.parametrize("make_header", [v1, v2], ids=["v1", "v2"])
def test_ftp_proxy_session_uses_the_real_address(
    balanced: Callable[..., FTPRunning], log_records: LogRecords, make_header: Any
) -> None:
    srv = balanced()
    with controls() as held:
        control = Control(srv, make_header())
        held.append(control)
        assert control.reply().startswith("220")
        assert control.login().startswith("230")
        assert control.cmd("STAT").startswith("211")
        log_records.wait_for(rf"CONNECT proto=ftp ip={CLIENT} via=127\.0\.0\.1")
        log_records.wait_for(rf"LOGIN OK user='alice' ip={CLIENT}")
        log_records.wait_for(rf"CMD proto=ftp ip={CLIENT} user=alice PASS")


def test_ftp_proxy_only_the_framed_listener_is_unaffected(
    balanced: Callable[..., FTPRunning], log_records: LogRecords
) -> None:
    """``ftp.proxy_protocol`` is the FTP listener's: the framed one takes no header."""
    srv = balanced()
    srv.framed_client().close()
    log_records.wait_for(r"LOGIN OK user='alice' ip=127\.0\.0\.1")


def test_ftp_proxy_max_per_ip_counts_the_real_address(
    balanced: Callable[..., FTPRunning],
) -> None:
    srv = balanced(max_per_ip=2)
    with controls() as held:
        for header in (v1(), v2()):
            held.append(Control(srv, header))
            assert held[-1].reply().startswith("220")
        third = Control(srv, v1())
        held.append(third)
        assert third.reply().startswith("421")
        assert third.closed()
        held.append(Control(srv, v2("203.0.113.8")))
        assert held[-1].reply().startswith("220")


def test_ftp_proxy_brake_locks_the_real_address(balanced: Callable[..., FTPRunning]) -> None:
    srv = balanced(login_max_failures_per_ip=2, login_max_failures=5)
    with controls() as held:
        attacker = Control(srv, v1())
        held.append(attacker)
        attacker.reply()
        for _ in range(2):
            assert attacker.login(password="wrong").startswith("530")
        assert not attacker.login().startswith("230")  # the address is locked
        other = Control(srv, v1("203.0.113.8"))
        held.append(other)
        other.reply()
        assert other.login().startswith("230")


def test_ftp_proxy_passive_data_must_come_from_the_real_client(
    balanced: Callable[..., FTPRunning], log_records: LogRecords
) -> None:
    """Only the control connection goes through the balancer: a passive data connection
    from the balancer's address is dropped (theft), the client's own is taken."""
    srv = balanced()
    with controls() as held:
        control = Control(srv, v1("127.0.0.3"))
        held.append(control)
        control.reply()
        assert control.login().startswith("230")
        (srv.home() / "hello.txt").write_bytes(b"hi")
        reply = control.cmd("EPSV")
        port = int(re.search(r"\|\|\|(\d+)\|", reply).group(1))  # type: ignore[union-attr]
        thief = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        control.sock.sendall(b"NLST\r\n")
        log_records.wait_for(r"DATA THEFT ip=127\.0\.0\.1 expected=127\.0\.0\.3")
        thief.close()
        data = socket.socket()
        data.settimeout(TIMEOUT)
        data.bind(("127.0.0.3", 0))
        data.connect(("127.0.0.1", port))
        assert control.reply().startswith("150")
        listing = b""
        while chunk := data.recv(4096):
            listing += chunk
        data.close()
        assert b"hello.txt" in listing
        assert control.reply().startswith("226")


@pytest.mark.parametrize("make_header", [v1, v2], ids=["v1", "v2"])
def test_ftp_proxy_header_from_an_untrusted_peer_is_refused(
    balanced: Callable[..., FTPRunning], log_records: LogRecords, make_header: Any
) -> None:
    srv = balanced()
    with controls() as held:
        control = Control(srv, make_header(), source="127.0.0.2")
        held.append(control)
        assert control.reply().startswith("220")  # the greeting goes out before it reads
        assert control.reply() == ""  # then closed, nothing of the header executed
        log_records.wait_for(r"PROXY REFUSED proto=ftp ip=127\.0\.0\.2: .*not in proxy_protocol")


def test_ftp_proxy_trusted_peer_without_header_is_refused_after_the_deadline(
    balanced: Callable[..., FTPRunning], log_records: LogRecords
) -> None:
    srv = balanced(login_timeout=0.5)
    with controls() as held:
        control = Control(srv)
        held.append(control)
        assert control.closed()  # no 220: closed once login_timeout passed
        log_records.wait_for(r"PROXY REFUSED proto=ftp ip=127\.0\.0\.1: .*deadline")
        wait_until(lambda: srv.services.runtime.session_count == 0)
