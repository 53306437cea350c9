"""The PROXY protocol (HAProxy's spec, v1 and v2): a client's real address from a balancer.

A TCP load balancer in front of the daemon hides the client's address: every connection
comes from the balancer.  With ``proxy_protocol: [ADDRESS, ...]`` on a listener, a
connection from one of those addresses must start with a PROXY header (before the
greeting, within ``login_timeout``), and the session then uses the header's source address
for everything that is about the client: ``max_per_ip``, the login brake, the logs, the
FTP data connection check.  A header from any other address is refused, and so is a
trusted peer that sends no valid header (docs/security.md: spoofing).

``Parser`` is sans-IO: bytes in, a ``Header`` or a ``ProxyError`` out, fed in pieces of any
size; ``Parser.need`` says how many bytes may be read next without passing the header's
end, so ``read_header`` (the one blocking part) never takes a byte of what follows (a TLS
ClientHello, the first frame).  This module must never decide what a session does with
the address; it only reads it.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
import time
from collections.abc import Iterable
from dataclasses import dataclass

#: v1: the longest line the spec allows, CRLF included.
V1_MAX = 107
V1_PREFIX = b"PROXY "
#: v1: no header is shorter than this ("PROXY UNKNOWN\r\n"), so it is a safe first read.
V1_MIN = 15
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V2_FIXED = 16  # signature, version/command, family/transport, length
_V2_LOCAL, _V2_PROXY = 0x0, 0x1
_V2_ADDRESS_BYTES = {0x1: 12, 0x2: 36}  # AF_INET, AF_INET6 (addresses and ports)


class ProxyError(ValueError):
    """A malformed or unacceptable PROXY header (the connection is refused)."""


@dataclass(frozen=True)
class Header:
    """A parsed header.  ``source`` is None when the connection's own address stays
    (v2 LOCAL: the balancer's own health check; v1 UNKNOWN, v2 UNSPEC)."""

    version: int
    source: tuple[str, int] | None
    destination: tuple[str, int] | None
    length: int  # bytes the header took on the wire


class Parser:
    """One header, fed in pieces; ``feed`` returns the ``Header`` once it is whole."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self.header: Header | None = None

    @property
    def need(self) -> int:
        """How many bytes may be read next without reading past the header's end."""
        buf = self._buf
        if self.header is not None:
            return 0
        if len(buf) < V1_MIN:
            return V1_MIN - len(buf)
        if buf.startswith(V1_PREFIX):
            return 1 if buf.endswith(b"\r") else 2  # at least CRLF (or LF) is still to come
        if len(buf) < V2_FIXED:
            return V2_FIXED - len(buf)
        return V2_FIXED + struct.unpack_from(">H", buf, 14)[0] - len(buf)

    def feed(self, data: bytes) -> Header | None:
        """Take ``data`` (never more than ``need``); the header, or None for more.

        Raises:
            ProxyError: the bytes so far cannot start a valid header, or are one that
                is malformed.
        """
        if self.header is not None:
            raise ProxyError("the header is already complete")
        if len(data) > self.need:
            raise ProxyError("more bytes than the header can hold")
        self._buf += data
        buf = bytes(self._buf)
        if sniff(buf) is False:
            raise ProxyError("no PROXY header (v1 or v2) at the start of the connection")
        if buf.startswith(V1_PREFIX):
            if b"\n" in buf:
                self.header = _parse_v1(buf)
            elif len(buf) >= V1_MAX:
                raise ProxyError(f"v1 header without CRLF within {V1_MAX} bytes")
        elif len(buf) >= V2_FIXED and self.need == 0:
            self.header = _parse_v2(buf)
        return self.header


def parse(data: bytes) -> Header:
    """A whole header (and nothing after it) -> ``Header``.

    Raises:
        ProxyError: malformed, incomplete, or followed by other bytes.
    """
    parser = Parser()
    pos = 0
    while pos < len(data):
        take = parser.need
        if take == 0:
            raise ProxyError("bytes after the header")
        parser.feed(data[pos : pos + take])
        pos += take
    if parser.header is None:
        raise ProxyError("incomplete header")
    return parser.header


def sniff(data: bytes) -> bool | None:
    """Whether ``data`` (a connection's first bytes) is a PROXY header: True, False, or
    None when it is too short to say (a strict prefix of a signature)."""
    for signature in (V1_PREFIX, V2_SIGNATURE):
        common = min(len(data), len(signature))
        if data[:common] == signature[:common]:
            return True if len(data) >= len(signature) else None
    return False


def _parse_v1(line: bytes) -> Header:
    if not line.endswith(b"\r\n") or line.index(b"\n") != len(line) - 1:
        raise ProxyError("v1 header must end with CRLF")
    if len(line) > V1_MAX:
        raise ProxyError(f"v1 header longer than {V1_MAX} bytes")
    try:
        text = line[:-2].decode("ascii")
    except UnicodeDecodeError:
        raise ProxyError("v1 header is not ASCII") from None
    parts = text.split(" ")
    if len(parts) >= 2 and parts[1] == "UNKNOWN":
        return Header(1, None, None, len(line))  # the rest of the line is ignored (spec)
    if len(parts) != 6 or parts[1] not in ("TCP4", "TCP6"):
        raise ProxyError("v1 header must be PROXY TCP4|TCP6 SRC DST SPORT DPORT")
    family = ipaddress.IPv4Address if parts[1] == "TCP4" else ipaddress.IPv6Address
    if "%" in parts[2] or "%" in parts[3]:
        raise ProxyError("v1 header: an address with a scope is no client's")
    try:
        source, destination = family(parts[2]), family(parts[3])
    except ValueError:
        raise ProxyError(f"v1 header: addresses are not {parts[1]} addresses") from None
    sport, dport = _v1_port(parts[4]), _v1_port(parts[5])
    return Header(1, (_shown(source), sport), (_shown(destination), dport), len(line))


def _v1_port(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or len(text) > 5 or text != str(int(text)):
        raise ProxyError(f"v1 header: {text[:8]!r} is not a port")
    port = int(text)
    if port > 65535:
        raise ProxyError(f"v1 header: port {port} is past 65535")
    return port


def _parse_v2(buf: bytes) -> Header:
    version, command = buf[12] >> 4, buf[12] & 0xF
    if version != 2:
        raise ProxyError(f"v2 header: version {version} (only 2 exists)")
    if command not in (_V2_LOCAL, _V2_PROXY):
        raise ProxyError(f"v2 header: unknown command {command}")
    family, transport = buf[13] >> 4, buf[13] & 0xF
    body = buf[V2_FIXED:]
    if command == _V2_LOCAL:
        return Header(2, None, None, len(buf))  # family and addresses are ignored (spec)
    if family == 0x0:
        return Header(2, None, None, len(buf))  # UNSPEC: the connection's own addresses
    if family not in _V2_ADDRESS_BYTES:
        raise ProxyError(f"v2 header: family {family} is not IPv4 or IPv6")
    if transport != 0x1:
        raise ProxyError(f"v2 header: transport {transport} is not a stream (TCP)")
    size = _V2_ADDRESS_BYTES[family]
    if len(body) < size:
        raise ProxyError(f"v2 header: {len(body)} address bytes, {size} needed")
    half = (size - 4) // 2
    src = ipaddress.ip_address(body[:half])
    dst = ipaddress.ip_address(body[half : 2 * half])
    sport, dport = struct.unpack_from(">HH", body, 2 * half)
    return Header(2, (_shown(src), sport), (_shown(dst), dport), len(buf))


def _shown(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    """An address as sessions show and count it (an IPv4-mapped one as IPv4)."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)


# --- on a socket ----------------------------------------------------------------------


def read_header(sock: socket.socket, deadline: float) -> Header:
    """Read exactly one header from ``sock`` before ``deadline`` (``time.monotonic``).

    Never reads a byte past the header.  The socket's timeout is changed; the caller
    sets its own afterwards.

    Raises:
        ProxyError: malformed, or the connection ended inside it.
        TimeoutError: the deadline passed first.
        OSError: the connection failed.
    """
    parser = Parser()
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("no PROXY header before the deadline")
        sock.settimeout(left)
        try:
            data = sock.recv(parser.need)
        except TimeoutError:
            raise TimeoutError("no PROXY header before the deadline") from None
        if not data:
            raise ProxyError("the connection ended before a whole PROXY header")
        header = parser.feed(data)
        if header is not None:
            return header


def sent_header(sock: socket.socket, deadline: float) -> bool:
    """Whether an untrusted peer's first bytes are a PROXY header (it is then refused).

    Only peeks (MSG_PEEK): nothing is taken from the stream.  Waits for the first byte,
    and only while the bytes are a strict prefix of a signature for more (SO_RCVLOWAT,
    so the wait is no busy loop); any other first byte decides at once.  A timeout, an
    error or an end of stream is "no" (the session's own reads then meet it).
    """
    want = 1
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            sock.settimeout(left)
            if want > 1:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, want)
            data = sock.recv(len(V2_SIGNATURE), socket.MSG_PEEK)
            if len(data) < want:  # the stream ended (a FIN ends the low-water wait)
                return False
            verdict = sniff(data)
            if verdict is not None:
                return verdict
            want = len(data) + 1
    except OSError:  # TimeoutError included
        return False
    finally:
        if want > 1:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, 1)
            except OSError:
                pass


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class Trusted:
    """The balancers a listener takes PROXY headers from (empty: none, the default)."""

    def __init__(self, networks: Iterable[str] = ()) -> None:
        self.networks: tuple[Network, ...] = tuple(ipaddress.ip_network(n) for n in networks)

    def __bool__(self) -> bool:
        return bool(self.networks)

    def __contains__(self, ip: object) -> bool:
        if not self.networks or not isinstance(ip, str):
            return False
        try:
            address = ipaddress.ip_address(ip.partition("%")[0])
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in network for network in self.networks)


def client_ip(
    sock: socket.socket, peer_ip: str, trusted: Trusted, deadline: float, check: bool = False
) -> str:
    """The session's client address: the header's source for a trusted peer (which
    must send one), the peer's own address otherwise (and for LOCAL and UNKNOWN).
    ``check``: also refuse an untrusted peer whose first bytes are a header (only where
    the client speaks first, e.g. before a TLS handshake; ``sent_header`` waits for them).

    Raises:
        ProxyError, TimeoutError, OSError: a trusted peer sent no valid header in time,
            or (``check``) an untrusted one sent a header.
    """
    if peer_ip not in trusted:
        if check and sent_header(sock, deadline):
            raise ProxyError(UNTRUSTED)
        return peer_ip
    header = read_header(sock, deadline)
    return header.source[0] if header.source is not None else peer_ip


UNTRUSTED = "a PROXY header from an address not in proxy_protocol"
