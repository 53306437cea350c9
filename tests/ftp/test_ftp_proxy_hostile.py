"""PROXY protocol on the FTP listener, from a hostile peer's side (docs/security.md).

What ``tests/ftp/test_ftp_proxy.py`` does not cover: the header and the first command in
one segment, a header dripped a byte at a time, stalled or malformed headers, IPv6
sources, v2 LOCAL, a CIDR list, a header sent twice, and peers that half-close inside a
signature.  127.0.0.1 is the trusted balancer; 127.0.0.2 is anyone else.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
import time
from collections.abc import Callable
from typing import Any

import pytest

from ftpd import proxy
from tests.conftest import PASSWORDS
from tests.ftp.conftest import FTPRunning
from tests.ftp.test_ftp_proxy import Control, controls
from tests.support import LogRecords, wait_until

TIMEOUT = 5.0
CLIENT = "203.0.113.7"
CLIENT6 = "2001:db8::7"


def v1(src: str = CLIENT) -> bytes:
    family, dst = ("TCP6", "::1") if ":" in src else ("TCP4", "127.0.0.1")
    return f"PROXY {family} {src} {dst} 40000 21\r\n".encode()


def v2(src: str = CLIENT, command: int = 0x1) -> bytes:
    six = ":" in src
    body = (
        ipaddress.ip_address(src).packed
        + ipaddress.ip_address("::1" if six else "127.0.0.1").packed
        + struct.pack(">HH", 40000, 21)
    )
    return (
        proxy.V2_SIGNATURE
        + bytes([0x20 | command, 0x21 if six else 0x11])
        + struct.pack(">H", len(body))
        + body
    )


LOGIN = f"USER alice\r\nPASS {PASSWORDS['alice']}\r\n".encode()


@pytest.mark.parametrize("make_header", [v1, v2], ids=["v1", "v2"])
def test_ftp_proxy_header_and_first_commands_in_one_segment(
    balanced: Callable[..., FTPRunning], log_records: LogRecords, make_header: Any
) -> None:
    srv = balanced()
    with controls() as held:
        control = Control(srv, make_header() + LOGIN)
        held.append(control)
        assert control.reply().startswith("220")
        assert control.reply().startswith("331")
        assert control.reply().startswith("230")
        log_records.wait_for(rf"LOGIN OK user='alice' ip={CLIENT}")


@pytest.mark.parametrize("make_header", [v1, v2], ids=["v1", "v2"])
def test_ftp_proxy_header_dripped_one_byte_per_segment(
    balanced: Callable[..., FTPRunning], log_records: LogRecords, make_header: Any
) -> None:
    srv = balanced()
    with controls() as held:
        control = Control(srv)
        held.append(control)
        for byte in make_header():
            control.sock.sendall(bytes([byte]))
        assert control.reply().startswith("220")
        log_records.wait_for(rf"CONNECT proto=ftp ip={CLIENT} via=127\.0\.0\.1")


@pytest.mark.parametrize("partial", [v1()[:20], v2()[:20]], ids=["v1", "v2"])
def test_ftp_proxy_partial_header_then_stall_is_cut_at_the_deadline(
    balanced: Callable[..., FTPRunning], log_records: LogRecords, partial: bytes
) -> None:
    srv = balanced(login_timeout=0.5)
    with controls() as held:
        control = Control(srv, partial)
        held.append(control)
        assert control.closed_within(TIMEOUT)
        log_records.wait_for(r"PROXY REFUSED proto=ftp ip=127\.0\.0\.1: .*deadline")
        wait_until(lambda: srv.services.runtime.session_count == 0)


@pytest.mark.parametrize(
    "bad",
    [
        b"PROXY TCP4 " + b"1" * 120 + b"\r\n",
        b"PROXY TCP4 203.0.113.7 127.0.0.1 70000 21\r\n",
        b"PROXY TCP6 203.0.113.7 ::1 40000 21\r\n",
        b"USER alice\r\n",  # a command where the header must be
    ],
    ids=["oversize", "port", "v4-as-v6", "command"],
)
def test_ftp_proxy_malformed_headers_are_refused_at_once(
    balanced: Callable[..., FTPRunning], log_records: LogRecords, bad: bytes
) -> None:
    srv = balanced()  # login_timeout 30 s
    with controls() as held:
        control = Control(srv, bad)
        held.append(control)
        assert control.closed_within(TIMEOUT)
        log_records.wait_for(r"PROXY REFUSED proto=ftp ip=127\.0\.0\.1")


@pytest.mark.parametrize("make_header", [v1, v2], ids=["v1", "v2"])
def test_ftp_proxy_ipv6_source_is_the_session_address(
    balanced: Callable[..., FTPRunning], log_records: LogRecords, make_header: Any
) -> None:
    srv = balanced()
    with controls() as held:
        control = Control(srv, make_header(CLIENT6) + LOGIN)
        held.append(control)
        assert control.reply().startswith("220")
        control.reply()
        assert control.reply().startswith("230")
        log_records.wait_for(rf"CONNECT proto=ftp ip={CLIENT6} via=127\.0\.0\.1")
        log_records.wait_for(rf"LOGIN OK user='alice' ip={CLIENT6}")


@pytest.mark.parametrize("header", [b"PROXY UNKNOWN\r\n", v2(command=0x0)], ids=["v1", "v2"])
def test_ftp_proxy_unknown_and_local_keep_the_balancer_address(
    balanced: Callable[..., FTPRunning], log_records: LogRecords, header: bytes
) -> None:
    srv = balanced()
    with controls() as held:
        control = Control(srv, header + LOGIN)
        held.append(control)
        assert control.reply().startswith("220")
        control.reply()
        assert control.reply().startswith("230")
        log_records.wait_for(r"LOGIN OK user='alice' ip=127\.0\.0\.1")


def test_ftp_proxy_cidr_entry_trusts_the_network(
    balanced: Callable[..., FTPRunning], log_records: LogRecords
) -> None:
    srv = balanced(trusted=["127.0.0.0/30"])
    with controls() as held:
        control = Control(srv, v2(), source="127.0.0.2")
        held.append(control)
        assert control.reply().startswith("220")
        log_records.wait_for(rf"CONNECT proto=ftp ip={CLIENT} via=127\.0\.0\.2")
        outside = Control(srv, v2(), source="127.0.0.5")
        held.append(outside)
        assert outside.reply().startswith("220")
        assert outside.reply() == ""
        log_records.wait_for(r"PROXY REFUSED proto=ftp ip=127\.0\.0\.5: .*not in proxy_protocol")


def test_ftp_proxy_second_header_is_not_taken_as_an_address(
    balanced: Callable[..., FTPRunning], log_records: LogRecords
) -> None:
    srv = balanced()
    with controls() as held:
        control = Control(srv, v1() + v1("198.51.100.9"))
        held.append(control)
        assert control.reply().startswith("220")
        assert not control.reply().startswith("2")  # the second header is no command
        assert control.cmd("USER alice").startswith("331")
        assert control.cmd(f"PASS {PASSWORDS['alice']}").startswith("230")
        log_records.wait_for(rf"LOGIN OK user='alice' ip={CLIENT}")
        assert not any("198.51.100.9" in m for m in log_records.messages() if "LOGIN" in m)


@pytest.mark.parametrize("prefix", [b"PROX", b"\r\n\r\n"], ids=["v1", "v2"])
def test_ftp_proxy_untrusted_peer_half_closing_inside_a_signature_is_let_go(
    balanced: Callable[..., FTPRunning], prefix: bytes
) -> None:
    srv = balanced(login_timeout=20)
    with controls() as held:
        control = Control(srv, source="127.0.0.2")
        held.append(control)
        assert control.reply().startswith("220")
        started = time.process_time()
        control.sock.sendall(prefix)
        control.sock.shutdown(socket.SHUT_WR)
        closed = control.closed_within(3.0)
        spent = time.process_time() - started
        assert (closed, spent < 1.0) == (True, True), f"open: {not closed}, CPU {spent:.1f} s"


def test_ftp_proxy_pending_balancer_connections_do_not_share_one_per_ip_budget(
    balanced: Callable[..., FTPRunning],
) -> None:
    srv = balanced(max_per_ip=2, max_connections=20, login_timeout=10)
    with controls() as held:
        for _ in range(2):  # their headers are still on their way
            held.append(Control(srv))
        wait_until(lambda: srv.services.runtime.session_count == 2)
        fresh = Control(srv, v1("198.51.100.20"))
        held.append(fresh)
        assert fresh.reply().startswith("220")
