"""PROXY protocol on the framed listener, from a hostile peer's side (docs/security.md).

What ``tests/framed/test_proxy_listener.py`` and ``tests/pure/test_proxy.py`` do not
cover: headers on the wire in pieces, stalled or oversize, followed at once by the first
frame, IPv6 sources, CIDR lists, a header sent twice, and peers that half-close inside a
signature.  127.0.0.1 is the trusted balancer; 127.0.0.2 is anyone else.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import trustme

from ftpd import daemon as daemon_mod
from ftpd import proxy
from ftpd.accounts.users import UserStore
from ftpd.core.services import Services
from ftpd.framed.server import FramedServer
from tests.conftest import PASSWORDS, Project, RunningServer, stop_server
from tests.framed.test_proxy_listener import dial, sockets
from tests.support import LogRecords, call, closed_within, frame, read_frame, wait_until

TIMEOUT = 5.0
CLIENT = "203.0.113.7"
CLIENT6 = "2001:db8::7"


def v1(src: str = CLIENT) -> bytes:
    family = "TCP6" if ":" in src else "TCP4"
    dst = "::1" if ":" in src else "127.0.0.1"
    return f"PROXY {family} {src} {dst} 40000 2121\r\n".encode()


def v2(src: str = CLIENT, command: int = 0x1, version: int = 0x2, extra: bytes = b"") -> bytes:
    six = ":" in src
    body = (
        ipaddress.ip_address(src).packed
        + ipaddress.ip_address("::1" if six else "127.0.0.1").packed
        + struct.pack(">HH", 40000, 2121)
        + extra
    )
    fam = 0x21 if six else 0x11
    return (
        proxy.V2_SIGNATURE
        + bytes([version << 4 | command, fam])
        + struct.pack(">H", len(body))
        + body
    )


LOGIN = frame({"cmd": "login", "args": {"user": "alice", "password": PASSWORDS["alice"]}})


def login_in_one_segment(
    srv: RunningServer, log_records: LogRecords, header: bytes, ip: str
) -> None:
    """The header and the login frame in one send: the frame is not swallowed (the
    greeting, then the login sent before the greeting was read), and ``ip`` logs in."""
    with sockets() as held:
        sock = dial(srv, header + LOGIN)
        held.append(sock)
        assert read_frame(sock)["ok"]
        assert read_frame(sock)["ok"]
        log_records.wait_for(rf"LOGIN OK user='alice' ip={re.escape(ip)}")


@pytest.mark.parametrize("make_header", [v1, v2], ids=["v1", "v2"])
def test_proxy_header_and_first_frame_in_one_segment(
    balanced: Callable[..., RunningServer], log_records: LogRecords, make_header: Any
) -> None:
    login_in_one_segment(balanced(), log_records, make_header(), CLIENT)


@pytest.mark.parametrize("make_header", [v1, v2], ids=["v1", "v2"])
def test_proxy_header_dripped_one_byte_per_segment(
    balanced: Callable[..., RunningServer], log_records: LogRecords, make_header: Any
) -> None:
    srv = balanced()
    with sockets() as held:
        sock = dial(srv)
        held.append(sock)
        for byte in make_header():
            sock.sendall(bytes([byte]))
        assert read_frame(sock)["ok"]
        assert call(sock, "login", user="alice", password=PASSWORDS["alice"])["ok"]
        log_records.wait_for(rf"LOGIN OK user='alice' ip={CLIENT}")


@pytest.mark.parametrize(
    "partial",
    [v1()[:20], v2()[:14], v2()[:20], b"PROXY TCP4 1.2.3.4"],
    ids=["v1-half", "v2-in-signature", "v2-in-body", "v1-no-crlf"],
)
def test_proxy_partial_header_then_stall_is_cut_at_the_deadline(
    balanced: Callable[..., RunningServer], log_records: LogRecords, partial: bytes
) -> None:
    srv = balanced(login_timeout=0.5)
    with sockets() as held:
        sock = dial(srv, partial)
        held.append(sock)
        assert closed_within(sock, TIMEOUT)  # no greeting, closed at the deadline
        log_records.wait_for(r"PROXY REFUSED ip=127\.0\.0\.1: .*deadline")
        wait_until(lambda: srv.server.session_count == 0)


def test_proxy_v2_length_past_what_is_sent_is_cut_at_the_deadline(
    balanced: Callable[..., RunningServer], log_records: LogRecords
) -> None:
    srv = balanced(login_timeout=0.5)
    header = v2()
    lying = header[:14] + struct.pack(">H", 60000) + header[16:]
    with sockets() as held:
        sock = dial(srv, lying)
        held.append(sock)
        assert closed_within(sock, TIMEOUT)
        log_records.wait_for(r"PROXY REFUSED ip=127\.0\.0\.1: .*deadline")


@pytest.mark.parametrize(
    "bad",
    [
        b"PROXY TCP4 " + b"1" * 120 + b"\r\n",  # past 107 bytes
        b"PROXY TCP4 203.0.113.7 127.0.0.1 -1 2121\r\n",
        b"PROXY TCP4 203.0.113.7 127.0.0.1 040000 2121\r\n",
        b"PROXY TCP4 2001:db8::7 127.0.0.1 40000 2121\r\n",  # an IPv6 address as TCP4
        b"PROXY TCP4 203.0.113.256 127.0.0.1 40000 2121\r\n",
        b"PROXY UDP4 203.0.113.7 127.0.0.1 40000 2121\r\n",
        b"PROXY TCP4 203.0.113.7 127.0.0.1 40000 2121\n",  # LF alone
        v2(version=0x1),
        b"\r\n\r\n\x00\r\nQUIX\n" + bytes(4),  # wrong signature
    ],
    ids=["oversize", "neg-port", "zero-pad", "v6-as-v4", "bad-octet", "udp", "lf", "v2v1", "sig"],
)
def test_proxy_malformed_headers_are_refused_at_once(
    balanced: Callable[..., RunningServer], log_records: LogRecords, bad: bytes
) -> None:
    srv = balanced()  # login_timeout 30 s: a refusal within 5 s is not the deadline's
    with sockets() as held:
        sock = dial(srv, bad)
        held.append(sock)
        assert closed_within(sock, TIMEOUT)
        log_records.wait_for(r"PROXY REFUSED ip=127\.0\.0\.1")
        assert not any(CLIENT in m for m in log_records.messages() if "CONNECT" in m)


@pytest.mark.parametrize("make_header", [v1, v2], ids=["v1", "v2"])
def test_proxy_ipv6_source_is_the_session_address(
    balanced: Callable[..., RunningServer], log_records: LogRecords, make_header: Any
) -> None:
    srv = balanced(login_max_failures_per_ip=1, login_max_failures=5)
    with sockets() as held:
        sock = dial(srv, make_header(CLIENT6))
        held.append(sock)
        read_frame(sock)
        log_records.wait_for(rf"CONNECT ip={CLIENT6} via=127\.0\.0\.1")
        assert call(sock, "login", user="alice", password="wrong")["code"] == 430
        log_records.wait_for(rf"LOGIN FAILED user='alice' ip={CLIENT6}")
        # The brake locked the IPv6 client, not the balancer or another client.
        other = dial(srv, v1())
        held.append(other)
        read_frame(other)
        assert call(other, "login", user="alice", password=PASSWORDS["alice"])["ok"]


@pytest.mark.parametrize(
    "header", [b"PROXY UNKNOWN\r\n", b"PROXY UNKNOWN ff::1 ::1 1 2\r\n", v2(command=0x0)]
)
def test_proxy_unknown_and_local_keep_the_balancer_and_lose_no_frame(
    balanced: Callable[..., RunningServer], log_records: LogRecords, header: bytes
) -> None:
    login_in_one_segment(balanced(), log_records, header, "127.0.0.1")


def test_proxy_v2_with_tlvs_is_taken_and_the_frame_after_kept(
    balanced: Callable[..., RunningServer], log_records: LogRecords
) -> None:
    tlvs = b"\x04" + struct.pack(">H", 8) + b"\xff" * 8 + b"\x02\x00\x0bexample.com"
    login_in_one_segment(balanced(), log_records, v2(extra=tlvs), CLIENT)


def test_proxy_cidr_entry_trusts_the_network(
    balanced: Callable[..., RunningServer], log_records: LogRecords
) -> None:
    srv = balanced(trusted=["127.0.0.0/30"])
    with sockets() as held:
        sock = dial(srv, v1(), source="127.0.0.2")
        held.append(sock)
        read_frame(sock)
        log_records.wait_for(rf"CONNECT ip={CLIENT} via=127\.0\.0\.2")
        outside = dial(srv, v1(), source="127.0.0.5")
        held.append(outside)
        read_frame(outside)  # untrusted in clear: greeted, then its header refused
        assert closed_within(outside, TIMEOUT)
        log_records.wait_for(r"PROXY REFUSED ip=127\.0\.0\.5: .*not in proxy_protocol")


def test_proxy_second_header_is_not_taken_as_an_address(
    balanced: Callable[..., RunningServer], log_records: LogRecords
) -> None:
    """A balancer (or a client through it) sending a second header: the first one
    counts, the second is only bad bytes (never a new client address)."""
    srv = balanced()
    with sockets() as held:
        sock = dial(srv, v1() + v1("198.51.100.9"))
        held.append(sock)
        assert read_frame(sock)["ok"]
        assert closed_within(sock, TIMEOUT)
        log_records.wait_for(rf"CONNECT ip={CLIENT} via=127\.0\.0\.1")
        assert not any("198.51.100.9" in m for m in log_records.messages())


@pytest.mark.parametrize("prefix", [b"PRO", b"\r\n\r\n\x00"], ids=["v1", "v2"])
def test_proxy_untrusted_peer_half_closing_inside_a_signature_is_let_go(
    balanced: Callable[..., RunningServer], log_records: LogRecords, prefix: bytes
) -> None:
    """An untrusted peer sends the start of a signature, then its FIN.  The server must
    see the end of the stream and close at once, not spin on the peeked bytes (a busy
    loop of the session's thread) until login_timeout."""
    srv = balanced(login_timeout=20)
    with sockets() as held:
        sock = dial(srv, source="127.0.0.2")
        held.append(sock)
        assert read_frame(sock)["ok"]
        started = time.process_time()
        sock.sendall(prefix)
        sock.shutdown(socket.SHUT_WR)
        closed = closed_within(sock, 3.0)
        spent = time.process_time() - started
        assert (closed, spent < 1.0) == (True, True), f"open: {not closed}, CPU {spent:.1f} s"


def test_proxy_pending_balancer_connections_do_not_share_one_per_ip_budget(
    balanced: Callable[..., RunningServer], log_records: LogRecords
) -> None:
    """Connections from the balancer whose header is not read yet (a burst: accepted
    faster than their sessions read headers) are counted against max_per_ip as one
    address ("None"), so a client behind the balancer is refused "too many connections
    from your address" although it has none.  The balancer must count against
    max_connections only until its header is read (docs/security.md)."""
    srv = balanced(max_per_ip=2, max_connections=20, login_timeout=10)
    with sockets() as held:
        for _ in range(2):  # their headers are still on their way
            held.append(dial(srv))
        wait_until(lambda: srv.server.session_count == 2)
        fresh = dial(srv, v1("198.51.100.20"))
        held.append(fresh)
        greeting = read_frame(fresh)
        assert greeting["ok"], greeting


# --- over TLS: the header comes before the ClientHello -----------------------------------


@pytest.fixture
def tls_balanced(project: Project) -> Iterator[tuple[RunningServer, trustme.CA]]:
    ca = trustme.CA()
    issued = ca.issue_cert("127.0.0.1")
    issued.private_key_and_cert_chain_pem.write_to_path(str(project.root / "server.pem"))
    project.write_config(
        tls={"cert": "server.pem", "key": "server.pem"}, proxy_protocol=["127.0.0.1"]
    )
    cfg = project.load()
    services = Services.build(cfg, UserStore.load(cfg.users_file))
    server = FramedServer(cfg, services, ssl_context=daemon_mod.tls_context(cfg))
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    host, port = server.server_address[:2]
    try:
        yield RunningServer(server, str(host), port, project), ca
    finally:
        stop_server(server, thread)


def test_proxy_header_and_client_hello_in_one_segment_over_tls(
    tls_balanced: tuple[RunningServer, trustme.CA], log_records: LogRecords
) -> None:
    srv, ca = tls_balanced
    context = ssl.create_default_context()
    ca.configure_trust(context)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname="127.0.0.1")
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    with sockets() as held:
        sock = dial(srv, v2() + outgoing.read())  # one segment: header, then the hello
        held.append(sock)
        greeting = b""
        while not greeting:
            data = sock.recv(65536)
            assert data, "closed during the handshake"
            incoming.write(data)
            try:
                tls.do_handshake()
                greeting = tls.read(4)
            except ssl.SSLWantReadError:
                pass
            if pending := outgoing.read():
                sock.sendall(pending)
        log_records.wait_for(rf"CONNECT ip={CLIENT} via=127\.0\.0\.1")


def test_proxy_header_from_an_untrusted_peer_over_tls_is_refused_before_the_handshake(
    tls_balanced: tuple[RunningServer, trustme.CA], log_records: LogRecords
) -> None:
    srv, _ = tls_balanced
    with sockets() as held:
        sock = dial(srv, v1(), source="127.0.0.2")
        held.append(sock)
        assert closed_within(sock, TIMEOUT)
        log_records.wait_for(r"PROXY REFUSED ip=127\.0\.0\.2: .*not in proxy_protocol")
        assert not any(CLIENT in m for m in log_records.messages())
