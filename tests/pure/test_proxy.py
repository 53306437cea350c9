"""The PROXY protocol parser (ftpd.proxy): v1 and v2, every malformed case, in pieces."""

from __future__ import annotations

import ipaddress
import struct

import pytest

from ftpd import proxy
from ftpd.config import parse_networks
from ftpd.proxy import Header, Parser, ProxyError, parse, sniff

SIG = proxy.V2_SIGNATURE


def v2(
    command: int = 0x1,
    family: int = 0x1,
    transport: int = 0x1,
    body: bytes | None = None,
    version: int = 0x2,
    src: str = "203.0.113.7",
    dst: str = "192.0.2.1",
    ports: tuple[int, int] = (40000, 2121),
    extra: bytes = b"",
) -> bytes:
    if body is None:
        body = (
            ipaddress.ip_address(src).packed
            + ipaddress.ip_address(dst).packed
            + struct.pack(">HH", *ports)
        )
    body += extra
    return (
        SIG
        + bytes([version << 4 | command, family << 4 | transport])
        + struct.pack(">H", len(body))
        + body
    )


# --- v1 -------------------------------------------------------------------------------


def test_v1_tcp4() -> None:
    line = b"PROXY TCP4 203.0.113.7 192.0.2.1 40000 2121\r\n"
    assert parse(line) == Header(1, ("203.0.113.7", 40000), ("192.0.2.1", 2121), len(line))


def test_v1_tcp6() -> None:
    line = b"PROXY TCP6 2001:db8::7 2001:db8::1 40000 2121\r\n"
    assert parse(line).source == ("2001:db8::7", 40000)


def test_v1_tcp6_mapped_ipv4_is_shown_as_ipv4() -> None:
    assert parse(b"PROXY TCP6 ::ffff:203.0.113.7 ::1 1 2\r\n").source == ("203.0.113.7", 1)


@pytest.mark.parametrize("line", [b"PROXY UNKNOWN\r\n", b"PROXY UNKNOWN ff::1 ::1 1 2\r\n"])
def test_v1_unknown_keeps_the_socket_address(line: bytes) -> None:
    assert parse(line).source is None


def test_v1_longest_lines_are_accepted() -> None:
    line = (
        b"PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff "
        b"ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n"
    )
    assert parse(line).source == ("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 65535)
    unknown = b"PROXY UNKNOWN " + b"x" * 91 + b"\r\n"
    assert len(unknown) == proxy.V1_MAX
    assert parse(unknown).source is None


@pytest.mark.parametrize(
    "line",
    [
        b"PROXY TCP4 203.0.113.7 192.0.2.1 40000 2121\n",  # LF without CR
        b"PROXY TCP4 203.0.113.7 192.0.2.1 40000 2121\rX\r\n",  # CR inside
        b"PROXY TCP4 203.0.113.7 192.0.2.1 40000\r\n",  # a field missing
        b"PROXY TCP4 203.0.113.7 192.0.2.1 40000 2121 9\r\n",  # a field too many
        b"PROXY TCP4  203.0.113.7 192.0.2.1 40000 2121\r\n",  # two spaces
        b"PROXY TCP5 203.0.113.7 192.0.2.1 40000 2121\r\n",  # unknown protocol
        b"PROXY tcp4 203.0.113.7 192.0.2.1 40000 2121\r\n",  # lower case
        b"PROXY TCP4 2001:db8::7 192.0.2.1 40000 2121\r\n",  # IPv6 under TCP4
        b"PROXY TCP6 203.0.113.7 2001:db8::1 40000 2121\r\n",  # IPv4 under TCP6
        b"PROXY TCP4 203.0.113.256 192.0.2.1 40000 2121\r\n",  # not an address
        b"PROXY TCP4 203.0.113.07 192.0.2.1 40000 2121\r\n",  # leading zero
        b"PROXY TCP6 fe80::1%eth0 ::1 40000 2121\r\n",  # a scope
        b"PROXY TCP4 203.0.113.7 192.0.2.1 65536 2121\r\n",  # port past 65535
        b"PROXY TCP4 203.0.113.7 192.0.2.1 -1 2121\r\n",  # negative port
        b"PROXY TCP4 203.0.113.7 192.0.2.1 040000 2121\r\n",  # leading zero port
        b"PROXY TCP4 203.0.113.7 192.0.2.1 4e4 2121\r\n",  # not decimal
        b"PROXY TCP4 203.0.113.7 192.0.2.1 \xd9\xa1 2121\r\n",  # not ASCII
        b"PROXY\r\n\r\n\r\n\r\n\r\n\r\n",  # too short to be a header
    ],
)
def test_v1_malformed_is_refused(line: bytes) -> None:
    with pytest.raises(ProxyError):
        parse(line)


def test_v1_without_crlf_within_107_bytes_is_refused() -> None:
    parser = Parser()
    with pytest.raises(ProxyError, match="107"):
        for byte in b"PROXY TCP4 " + b"1" * 200:
            parser.feed(bytes([byte]))


def test_v1_line_of_108_bytes_is_refused() -> None:
    line = b"PROXY UNKNOWN " + b"x" * 92 + b"\r\n"
    assert len(line) == 108
    with pytest.raises(ProxyError):
        parse(line)


# --- v2 -------------------------------------------------------------------------------


def test_v2_proxy_ipv4() -> None:
    data = v2()
    assert parse(data) == Header(2, ("203.0.113.7", 40000), ("192.0.2.1", 2121), len(data))


def test_v2_proxy_ipv6() -> None:
    data = v2(family=0x2, src="2001:db8::7", dst="2001:db8::1")
    assert parse(data).source == ("2001:db8::7", 40000)


def test_v2_tlvs_after_the_addresses_are_skipped() -> None:
    data = v2(extra=b"\x04\x00\x03abc")  # a PP2_TYPE_NOOP TLV
    assert parse(data).source == ("203.0.113.7", 40000)


@pytest.mark.parametrize("family", [0x0, 0x1, 0x2, 0x3])
def test_v2_local_keeps_the_socket_address(family: int) -> None:
    assert parse(v2(command=0x0, family=family, transport=0, body=b"")).source is None
    assert parse(v2(command=0x0, family=family)).source is None  # addresses ignored


def test_v2_proxy_unspec_keeps_the_socket_address() -> None:
    assert parse(v2(family=0x0, transport=0x0, body=b"")).source is None


@pytest.mark.parametrize(
    "data",
    [
        v2(version=0x1),  # not version 2
        v2(version=0x3),
        v2(command=0x2),  # unknown command
        v2(command=0xF),
        v2(family=0x3, body=bytes(216)),  # AF_UNIX: no client address
        v2(family=0x4),  # unknown family
        v2(transport=0x2),  # UDP
        v2(transport=0x0),  # INET with an unspecified transport
        v2(body=bytes(11)),  # too short for IPv4 addresses
        v2(family=0x2),  # IPv4-sized block for IPv6
        b"\r\n\r\n\x00\r\nQUIT\r" + bytes(4),  # signature off by one byte
        b"\r\n\r\n\x01\r\nQUIT\n" + bytes(4),
    ],
)
def test_v2_malformed_is_refused(data: bytes) -> None:
    with pytest.raises(ProxyError):
        parse(data)


@pytest.mark.parametrize("data", [b"", b"PROXY TCP4 1.2.3.4", SIG, v2()[:-1]])
def test_incomplete_header_is_refused_by_parse(data: bytes) -> None:
    with pytest.raises(ProxyError, match="incomplete"):
        parse(data)


def test_bytes_after_the_header_are_refused_by_parse() -> None:
    with pytest.raises(ProxyError, match="after"):
        parse(v2() + b"x")


@pytest.mark.parametrize(
    "data", [b"\x00\x00\x00\x10{}", b"USER alice\r\n", b"\x16\x03\x01", b"GET / HTTP/1.1\r\n"]
)
def test_anything_else_is_refused_at_its_first_byte(data: bytes) -> None:
    with pytest.raises(ProxyError, match="no PROXY header"):
        Parser().feed(data[:1])


# --- fed in pieces: never past the header ---------------------------------------------

HEADERS = [
    b"PROXY TCP4 203.0.113.7 192.0.2.1 40000 2121\r\n",
    b"PROXY TCP6 2001:db8::7 2001:db8::1 1 2\r\n",
    b"PROXY UNKNOWN\r\n",
    v2(),
    v2(family=0x2, src="2001:db8::7", dst="2001:db8::1"),
    v2(command=0x0, family=0x0, transport=0x0, body=b""),
    v2(extra=bytes(300)),
]


@pytest.mark.parametrize("header", HEADERS)
def test_byte_by_byte_feeding(header: bytes) -> None:
    parser = Parser()
    results = [parser.feed(bytes([byte])) for byte in header]
    assert all(r is None for r in results[:-1])
    assert results[-1] == parse(header)
    assert parser.need == 0


@pytest.mark.parametrize("header", HEADERS)
def test_need_never_passes_the_header(header: bytes) -> None:
    """Reading ``need`` bytes at a time from header + what follows takes the header only."""
    stream = header + b"\x16\x03\x01 the TLS hello or the first frame"
    parser, pos, result = Parser(), 0, None
    while result is None:
        take = parser.need
        assert take > 0
        result = parser.feed(stream[pos : pos + take])
        pos += take
    assert pos == len(header)


def test_feeding_more_than_need_is_refused() -> None:
    with pytest.raises(ProxyError):
        Parser().feed(b"PROXY UNKNOWN\r\nX")


def test_sniff() -> None:
    assert sniff(b"PROXY ") is True
    assert sniff(SIG) is True
    assert sniff(b"PROX") is None and sniff(b"\r\n\r\n\x00") is None and sniff(b"") is None
    assert sniff(b"PROT P\r\n") is False
    assert sniff(b"\x00\x00") is False
    assert sniff(b"\r\n\r\nX") is False


# --- trusted addresses (config and matching) -------------------------------------------


def test_networks_config() -> None:
    assert parse_networks(None) == ()
    assert parse_networks([]) == ()
    assert parse_networks(["127.0.0.1", "10.1.0.0/24", "2001:db8::/32"]) == (
        "127.0.0.1/32",
        "10.1.0.0/24",
        "2001:db8::/32",
    )


@pytest.mark.parametrize(
    "value", ["127.0.0.1", [1], ["10.1.0.1/24"], ["balancer.example"], [""], {"a": 1}]
)
def test_networks_config_refuses(value: object) -> None:
    with pytest.raises(ValueError):
        parse_networks(value)


def test_trusted_matching() -> None:
    trusted = proxy.Trusted(["127.0.0.1/32", "10.1.0.0/24"])
    assert "127.0.0.1" in trusted and "10.1.0.200" in trusted
    assert "::ffff:10.1.0.3" in trusted  # a dual-stack listener's IPv4 peer
    assert "127.0.0.2" not in trusted and "10.1.1.1" not in trusted and "junk" not in trusted
    assert not proxy.Trusted() and "127.0.0.1" not in proxy.Trusted()
