"""PROXY protocol on the framed listener (``proxy_protocol``), through the real server.

127.0.0.1 is the trusted balancer; 127.0.0.2 (also loopback on Linux) is anyone else.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from ftpd import proxy
from tests.conftest import PASSWORDS, RunningServer
from tests.support import LogRecords, call, read_frame, wait_until

TIMEOUT = 5.0
CLIENT = "203.0.113.7"


def v1(src: str = CLIENT, port: int = 2121) -> bytes:
    return f"PROXY TCP4 {src} 127.0.0.1 40000 {port}\r\n".encode()


def v2(src: str = CLIENT, port: int = 2121, command: int = 0x1) -> bytes:
    body = (
        ipaddress.ip_address(src).packed
        + ipaddress.ip_address("127.0.0.1").packed
        + struct.pack(">HH", 40000, port)
    )
    return proxy.V2_SIGNATURE + bytes([0x20 | command, 0x11]) + struct.pack(">H", len(body)) + body


def dial(srv: RunningServer, header: bytes = b"", source: str = "127.0.0.1") -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(TIMEOUT)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind((source, 0))
    sock.connect((srv.host, srv.port))
    if header:
        sock.sendall(header)
    return sock


def assert_closed(sock: socket.socket) -> None:
    """The server closes: EOF (or a reset) before the timeout, whatever was sent first."""
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        pass


@contextmanager
def sockets() -> Iterator[list[socket.socket]]:
    held: list[socket.socket] = []
    try:
        yield held
    finally:
        for sock in held:
            sock.close()


@pytest.mark.parametrize("make_header", [v1, v2], ids=["v1", "v2"])
def test_proxy_trusted_header_gives_the_session_the_real_address(
    balanced: Callable[..., RunningServer], log_records: LogRecords, make_header: Any
) -> None:
    srv = balanced()
    with sockets() as held:
        sock = dial(srv, make_header())
        held.append(sock)
        assert read_frame(sock)["ok"]
        assert call(sock, "login", user="alice", password=PASSWORDS["alice"])["ok"]
        log_records.wait_for(rf"CONNECT ip={CLIENT} via=127\.0\.0\.1")
        log_records.wait_for(rf"LOGIN OK user='alice' ip={CLIENT}")
        log_records.wait_for(rf"CMD proto=framed ip={CLIENT} user=alice login")


def test_proxy_v2_local_keeps_the_balancer_address(
    balanced: Callable[..., RunningServer], log_records: LogRecords
) -> None:
    srv = balanced()
    with sockets() as held:
        sock = dial(srv, v2(command=0x0))  # the balancer's own health check
        held.append(sock)
        assert read_frame(sock)["ok"]
        log_records.wait_for(r"CONNECT ip=127\.0\.0\.1 via=127\.0\.0\.1")


def test_proxy_max_per_ip_counts_the_real_address(
    balanced: Callable[..., RunningServer],
) -> None:
    srv = balanced(max_per_ip=2, max_connections=10)
    with sockets() as held:
        for header in (v1(), v2()):  # two from the same client: admitted
            held.append(dial(srv, header))
            assert read_frame(held[-1])["ok"]
        third = dial(srv, v1())
        held.append(third)
        refused = read_frame(third)
        assert (refused["ok"], refused["code"]) == (False, 421)
        assert "from your address" in refused["message"]
        assert_closed(third)
        # Another client through the same balancer (its 4th connection) still gets in.
        held.append(dial(srv, v1("203.0.113.8")))
        assert read_frame(held[-1])["ok"]
        assert srv.server.session_count == 3


def test_proxy_brake_locks_the_real_address_not_the_balancer(
    balanced: Callable[..., RunningServer], log_records: LogRecords
) -> None:
    srv = balanced(login_max_failures_per_ip=2, login_max_failures=5)
    with sockets() as held:
        attacker = dial(srv, v2())
        held.append(attacker)
        read_frame(attacker)
        for _ in range(2):
            assert call(attacker, "login", user="alice", password="wrong")["code"] == 430
        locked = call(attacker, "login", user="alice", password=PASSWORDS["alice"])
        assert (locked["ok"], locked["error"]) == (False, "too_many_attempts")
        log_records.wait_for(rf"LOGIN FAILED user='alice' ip={CLIENT}")
        # Someone else behind the same balancer is not locked out.
        other = dial(srv, v1("203.0.113.8"))
        held.append(other)
        read_frame(other)
        assert call(other, "login", user="alice", password=PASSWORDS["alice"])["ok"]


@pytest.mark.parametrize("make_header", [v1, v2], ids=["v1", "v2"])
def test_proxy_header_from_an_untrusted_peer_is_refused(
    balanced: Callable[..., RunningServer], log_records: LogRecords, make_header: Any
) -> None:
    srv = balanced()
    with sockets() as held:
        sock = dial(srv, make_header(), source="127.0.0.2")
        held.append(sock)
        assert read_frame(sock)["ok"]  # in clear the greeting goes out before it reads
        assert_closed(sock)
        log_records.wait_for(r"PROXY REFUSED ip=127\.0\.0\.2: .*not in proxy_protocol")
        assert not any(CLIENT in m for m in log_records.messages())


def test_proxy_header_is_refused_when_no_balancer_is_configured(
    server: RunningServer, log_records: LogRecords
) -> None:
    with sockets() as held:
        sock = dial(server, v1())
        held.append(sock)
        read_frame(sock)
        assert_closed(sock)
        log_records.wait_for(r"PROXY REFUSED ip=127\.0\.0\.1")


def test_proxy_untrusted_peer_without_header_is_served(
    balanced: Callable[..., RunningServer], log_records: LogRecords
) -> None:
    srv = balanced()
    with sockets() as held:
        sock = dial(srv, source="127.0.0.2")
        held.append(sock)
        read_frame(sock)
        assert call(sock, "login", user="alice", password=PASSWORDS["alice"])["ok"]
        log_records.wait_for(r"LOGIN OK user='alice' ip=127\.0\.0\.2")


def test_proxy_trusted_peer_without_header_is_refused_after_the_deadline(
    balanced: Callable[..., RunningServer], log_records: LogRecords
) -> None:
    srv = balanced(login_timeout=0.5)
    with sockets() as held:
        sock = dial(srv)  # sends nothing
        held.append(sock)
        assert sock.recv(100) == b""  # no greeting: closed once login_timeout passed
        log_records.wait_for(r"PROXY REFUSED ip=127\.0\.0\.1: .*deadline")
        wait_until(lambda: srv.server.session_count == 0)  # released as the thread ends


def test_proxy_trusted_peer_sending_something_else_is_refused_at_once(
    balanced: Callable[..., RunningServer], log_records: LogRecords
) -> None:
    srv = balanced()  # login_timeout 30 s: the refusal cannot be the deadline's
    with sockets() as held:
        sock = dial(srv, b"\x00\x00\x00\x10")  # a frame, not a header
        held.append(sock)
        assert_closed(sock)
        log_records.wait_for(r"PROXY REFUSED ip=127\.0\.0\.1: no PROXY header")
        malformed = dial(srv, b"PROXY TCP4 203.0.113.7 127.0.0.1 99999 1\r\n")
        held.append(malformed)
        assert_closed(malformed)
        log_records.wait_for(r"PROXY REFUSED ip=127\.0\.0\.1: v1 header: port")
