"""Hostile and broken frames against a real FramedServer, over raw sockets.

Each test reads the greeting first, then sends bytes no honest client would: oversize or
truncated frames, headers that are not JSON objects, wrong argument types, internal
method names, slow drips.  The server must answer with the right error frame, close the
connection only when the stream cannot be trusted, and keep serving everyone else.
"""

from __future__ import annotations

import json
import select
import socket
import struct
import time
from typing import Any

import pytest

from ftpd.framed import protocol
from ftpd.framed.session import FramedSession
from tests.conftest import PASSWORDS, RunningServer
from tests.support import call, frame, read_frame, read_frame_with_body, recv_exact, wait_until

TIMEOUT = 5.0


# --- raw frame helpers --------------------------------------------------------------


def assert_closed(sock: socket.socket, within: float = TIMEOUT) -> None:
    """The server closed its end: EOF (or a reset) within ``within`` seconds."""
    sock.settimeout(within)
    try:
        rest = sock.recv(65536)
    except ConnectionResetError:
        return
    assert rest == b"", f"expected EOF, got {rest[:200]!r}"


def assert_error(header: dict[str, Any], code: int, name: str) -> None:
    assert header["ok"] is False, header
    assert (header["code"], header["error"]) == (code, name), header


def greeted(srv: RunningServer) -> socket.socket:
    sock = srv.raw(timeout=TIMEOUT)
    greeting = read_frame(sock)
    assert (greeting["ok"], greeting["code"]) == (True, 220)
    return sock


def logged_in(srv: RunningServer, user: str = "alice") -> socket.socket:
    sock = greeted(srv)
    header = call(sock, "login", user=user, password=PASSWORDS[user])
    assert header["code"] == 200, header
    return sock


def assert_alive(sock: socket.socket) -> None:
    header = call(sock, "pwd")
    assert (header["ok"], header["code"], header["data"]["cwd"]) == (True, 200, "/"), header


# --- oversize and truncated frames --------------------------------------------------


@pytest.mark.parametrize("length", [protocol.MAX_HEADER_BYTES + 1, 1 << 20, 0xFFFFFFFF])
@pytest.mark.parametrize("when", ["before-login", "after-login"])
def test_hostile_oversize_length_refused_without_reading(server, length, when):
    sock = greeted(server) if when == "before-login" else logged_in(server)
    started = time.monotonic()
    sock.sendall(struct.pack(">I", length))  # and not one byte of the announced header
    header = read_frame(sock)
    assert time.monotonic() - started < 2.0  # answered at once, not after a wait
    assert_error(header, 431, "header_too_large")
    assert_closed(sock)
    assert_alive(logged_in(server))


def test_hostile_header_at_cap_is_read(server):
    sock = logged_in(server)
    raw = json.dumps({"cmd": "pwd", "args": {}}).encode()
    raw += b" " * (protocol.MAX_HEADER_BYTES - len(raw))  # JSON allows trailing space
    sock.sendall(frame(raw))
    header, _ = read_frame_with_body(sock)
    assert header["code"] == 200
    assert_alive(sock)


@pytest.mark.parametrize(
    "partial",
    [b"\x00", b"\x00\x00\x01", struct.pack(">I", 100) + b'{"cmd": "p', frame({"cmd": "pwd"})[:-1]],
    ids=["1-byte-prefix", "3-byte-prefix", "half-header", "header-minus-1"],
)
def test_hostile_truncated_frame_then_close_keeps_server_serving(server, partial):
    other = logged_in(server, "bob")
    sock = logged_in(server)
    sock.sendall(partial)
    sock.close()
    assert_alive(other)
    wait_until(lambda: server.server.session_count == 1)
    assert_alive(logged_in(server))


# --- headers that are not a request object: 400 protocol_error, then close ---------

NOT_A_REQUEST = {
    "not-json": b"hello",
    "truncated-json": b'{"cmd": "pwd"',
    "list": b'["pwd"]',
    "string": b'"pwd"',
    "number": b"42",
    "null": b"null",
    "true": b"true",
    "non-utf8": b'{"cmd": "pwd\xff\xfe"}',
    "nan": b'{"cmd": "ls", "args": {"path": NaN}}',
    "infinity": b'{"cmd": "get", "args": {"path": "x", "offset": Infinity}}',
    "deep-nesting": b"[" * 30000 + b"]" * 30000,
    "no-cmd": b'{"args": {}}',
    "cmd-not-string": b'{"cmd": 5}',
    "cmd-null": b'{"cmd": null}',
    "body-negative": b'{"cmd": "put", "args": {}, "body": -1}',
    "body-string": b'{"cmd": "put", "args": {}, "body": "3"}',
    "body-float": b'{"cmd": "put", "args": {}, "body": 1.5}',
    "body-on-bodiless-cmd": b'{"cmd": "ls", "args": {}, "body": 3}',
    "body-over-inline-cap": b'{"cmd": "put", "args": {}, "body": 999999999999}',
}


@pytest.mark.parametrize("raw", NOT_A_REQUEST.values(), ids=NOT_A_REQUEST.keys())
@pytest.mark.parametrize("when", ["before-login", "after-login"])
def test_hostile_bad_header_is_protocol_error_and_close(server, raw, when):
    sock = greeted(server) if when == "before-login" else logged_in(server)
    sock.sendall(frame(raw))
    header = read_frame(sock)
    assert_error(header, 400, "protocol_error")
    assert_closed(sock)
    assert_alive(logged_in(server))


def test_hostile_zero_length_header_is_protocol_error(server):
    sock = greeted(server)
    sock.sendall(struct.pack(">I", 0))
    assert_error(read_frame(sock), 400, "protocol_error")
    assert_closed(sock)


# --- wrong arguments: 400 bad_request, and the session goes on ---------------------

BAD_ARGS = {
    "missing-path": {"cmd": "cd"},
    "missing-in-args": {"cmd": "cd", "args": {}},
    "path-int": {"cmd": "cd", "args": {"path": 5}},
    "path-null": {"cmd": "stat", "args": {"path": None}},
    "path-list": {"cmd": "stat", "args": {"path": ["a"]}},
    "all-string": {"cmd": "ls", "args": {"all": "yes"}},
    "all-int": {"cmd": "ls", "args": {"all": 1}},
    "offset-negative": {"cmd": "get", "args": {"path": "x", "offset": -1}},
    "offset-bool": {"cmd": "get", "args": {"path": "x", "offset": True}},
    "offset-float": {"cmd": "get", "args": {"path": "x", "offset": 1.5}},
    "size-float": {"cmd": "put", "args": {"path": "x", "size": 1e3}},
    "size-huge": {"cmd": "put", "args": {"path": "x", "size": 1 << 60}},
    "mv-no-dst": {"cmd": "mv", "args": {"src": "a"}},
    "args-list": {"cmd": "ls", "args": []},
    "args-string": {"cmd": "ls", "args": "path"},
    "unknown-arg": {"cmd": "ls", "args": {"bogus": 1}},
    "unknown-field": {"cmd": "ls", "args": {}, "extra": 1},
    "parents-string": {"cmd": "mkdir", "args": {"path": "d", "parents": "true"}},
}


@pytest.mark.parametrize("header", BAD_ARGS.values(), ids=BAD_ARGS.keys())
def test_hostile_bad_arguments_are_400_and_session_continues(server, project, header):
    sock = logged_in(server)
    sock.sendall(frame(header))
    reply, _ = read_frame_with_body(sock)
    assert_error(reply, 400, "bad_request")
    assert_alive(sock)
    assert sorted(p.name for p in project.home("alice").iterdir() if p.name != ".ftpd") == []


@pytest.mark.parametrize("escaped", ["\\ud800", "\\udcff", "a\\udfffb", "\\u0000", "\\u001b"])
def test_hostile_surrogates_and_controls_in_json_are_invalid_path(server, escaped):
    sock = logged_in(server)
    for cmd in ("stat", "mkdir", "cd"):
        sock.sendall(frame(f'{{"cmd": "{cmd}", "args": {{"path": "{escaped}"}}}}'.encode()))
        assert_error(read_frame(sock), 400, "invalid_path")
    assert_alive(sock)


# --- unknown and internal names: 501, and the session goes on ----------------------

INTERNAL_NAMES = [
    "handle",
    "__init__",
    "setup",
    "finish",
    "dispatch",
    "respond",
    "send",
    "cmd_ls",
    "cmd_pwd",
    "_check_account",
    "_fail",
    "_drain",
    "_jail",
    "account",
    "__class__",
    "__dict__",
    "__getattribute__",
    "server",
    "request",
    "sock",
    "closing",
    "user",
    "LS",
    "Pwd",
    "ls ",
    " pwd",
    "",
    "nope",
    "x" * 300,
    "\ud800",
    "pwd\udcff",
    "\x00",
]


@pytest.mark.parametrize("when", ["before-login", "after-login"])
def test_hostile_unknown_or_internal_name_is_501(server, when):
    sock = greeted(server) if when == "before-login" else logged_in(server)
    for name in INTERNAL_NAMES:
        reply = call(sock, name)
        assert (reply["code"], reply.get("error")) == (501, "unknown_command"), (name, reply)
        assert len(reply["message"]) <= 200  # the client's text is not echoed unbounded
    if when == "before-login":
        assert call(sock, "login", user="alice", password=PASSWORDS["alice"])["code"] == 200
    assert_alive(sock)
    assert server.server.session_count == 1


# --- before login: only login and quit ---------------------------------------------

VALID_ARGS = {
    "pwd": {},
    "cd": {"path": "/"},
    "ls": {},
    "stat": {"path": "/"},
    "mkdir": {"path": "d"},
    "rm": {"path": "f"},
    "rmdir": {"path": "d"},
    "mv": {"src": "a", "dst": "b"},
    "quota": {},
    "put": {"path": "f", "size": 0},
    "get": {"path": "f"},
}


def test_hostile_every_command_but_login_and_quit_needs_login(server, project):
    assert set(VALID_ARGS) == {n for n, c in protocol.COMMANDS.items() if c.login_required}
    sock = greeted(server)
    for cmd, args in VALID_ARGS.items():
        assert_error(call(sock, cmd, **args), 401, "not_logged_in")
    assert not project.home("alice").exists() or list(project.home("alice").iterdir()) == []
    assert call(sock, "login", user="alice", password=PASSWORDS["alice"])["code"] == 200
    assert_alive(sock)
    reply = call(sock, "quit")
    assert (reply["ok"], reply["code"]) == (True, 221)
    assert_closed(sock)


def test_hostile_quit_before_login_says_bye_and_closes(server):
    sock = greeted(server)
    assert call(sock, "quit")["code"] == 221
    assert_closed(sock)


# --- bodies on refused requests are drained (after login; before it, see
# tests/framed/test_bounded.py: no body is read at all) -------------------

# If the server did not skip the body, it would read this as the next frame and say bye.
TRAP = frame({"cmd": "quit", "args": {}})
N = len(TRAP)


@pytest.mark.parametrize(
    ("header", "code", "name"),
    [
        ({"cmd": "nope", "args": {}}, 501, "unknown_command"),
        ({"cmd": "put", "args": {"path": 5, "size": 0}}, 400, "bad_request"),
        ({"cmd": "put", "args": {"path": "f"}}, 400, "bad_request"),
        ({"cmd": "put", "args": {}, "extra": 1}, 400, "bad_request"),
        ({"cmd": "put", "args": {"path": "f", "size": 1}}, 400, "bad_request"),
        ({"cmd": "put", "args": {"path": "f", "size": N}}, 400, "bad_request"),
        (
            {"cmd": "put", "args": {"path": "no/dir/f", "size": N, "checksum": "0" * 32}},
            404,
            "not_found",
        ),
        (
            {"cmd": "put", "args": {"path": "/.ftpd/f", "size": N, "checksum": "0" * 32}},
            403,
            "path_escape",
        ),
        (
            {"cmd": "put", "args": {"path": "f", "size": N, "checksum": "0" * 32, "digest": "crc"}},
            400,
            "bad_request",
        ),
    ],
    ids=[
        "unknown",
        "put-bad-type",
        "put-missing-size",
        "put-extra-field",
        "put-size-mismatch",
        "put-no-checksum",
        "put-no-parent",
        "put-reserved",
        "put-bad-digest",
    ],
)
def test_hostile_refused_request_body_is_drained(server, project, header, code, name):
    sock = logged_in(server)
    sock.sendall(frame({**header, "body": len(TRAP)}, TRAP))
    assert_error(read_frame(sock), code, name)
    assert_alive(sock)  # the trap was skipped, not parsed as a quit
    home = project.home("alice")
    assert sorted(p.name for p in home.iterdir() if p.name != ".ftpd") == []


def test_hostile_inline_put_over_quota_is_drained(server, project):
    sock = logged_in(server, "carol")  # 1 MiB quota
    body = b"\x00" * (1024 * 1024 + 1)
    header = {"cmd": "put", "args": {"path": "big", "size": len(body), "checksum": "0" * 32}}
    sock.sendall(frame({**header, "body": len(body)}, body))
    assert_error(read_frame(sock), 413, "quota_exceeded")
    assert_alive(sock)
    assert not (project.home("carol") / "big").exists()


# --- a bug inside a command: 500, close, traceback only in the log -----------------


def test_hostile_crash_in_command_is_500_and_logged(server, monkeypatch, log_file):
    def broken(self, request):
        raise RuntimeError("kaboom at /very/secret/real/path")

    monkeypatch.setattr(FramedSession, "cmd_pwd", broken)
    other = logged_in(server, "bob")
    sock = logged_in(server)
    sock.sendall(frame({"cmd": "pwd", "args": {}}))
    length = struct.unpack(">I", recv_exact(sock, 4))[0]
    raw = recv_exact(sock, length)
    header = json.loads(raw)
    assert_error(header, 500, "internal_error")
    for leak in (b"Traceback", b"RuntimeError", b"kaboom", b"/very/secret", b"handler.py"):
        assert leak not in raw
    assert_closed(sock)
    text = log_file.read_text(encoding="utf-8")
    assert "Traceback (most recent call last)" in text
    assert "RuntimeError: kaboom at /very/secret/real/path" in text
    assert "BUG ip=127.0.0.1 user=alice cmd=pwd" in text
    # Another session, and a new one, keep working.
    ls = call(other, "ls")
    assert (ls["ok"], ls["code"]) == (True, 200)
    assert call(logged_in(server, "alice2"), "stat", path="/")["code"] == 200


# --- deadlines: slow drips, silent clients, idle sessions ---------------------------


def drip(sock: socket.socket, data: bytes, interval: float, limit: float) -> float:
    """Send ``data`` one byte per ``interval`` until the server answers or closes.

    Returns the seconds from the first byte until the socket became readable.
    """
    started = time.monotonic()
    for byte in data:
        readable, _, _ = select.select([sock], [], [], interval)
        if readable:
            return time.monotonic() - started
        assert time.monotonic() - started < limit, "the server kept waiting for the drip"
        try:
            sock.send(bytes([byte]))
        except (BrokenPipeError, ConnectionResetError):
            return time.monotonic() - started
    readable, _, _ = select.select([sock], [], [], limit)
    assert readable, "the server never cut the drip"
    return time.monotonic() - started


def expect_timeout_then_close(sock: socket.socket) -> None:
    try:
        header = read_frame(sock)
    except ConnectionResetError:
        pytest.fail("connection reset before the 408 frame arrived")
    assert_error(header, 408, "timeout")
    assert_closed(sock)


@pytest.mark.parametrize("when", ["before-login", "after-login"])
def test_hostile_slow_drip_header_is_cut_at_deadline(server_factory, when):
    srv = server_factory(idle_timeout=1, login_timeout=1)
    sock = greeted(srv) if when == "before-login" else logged_in(srv)
    payload = frame({"cmd": "login", "args": {"user": "x" * 200, "password": "y" * 200}})
    elapsed = drip(sock, payload, interval=0.1, limit=6.0)
    assert 0.5 < elapsed < 3.0, elapsed
    expect_timeout_then_close(sock)
    wait_until(lambda: srv.server.session_count == 0)
    assert_alive(logged_in(srv))


def test_hostile_slow_drip_after_login_cut_by_idle_timeout(server_factory):
    srv = server_factory(idle_timeout=1, login_timeout=30)
    sock = logged_in(srv)
    elapsed = drip(sock, frame({"cmd": "stat", "args": {"path": "/" + "a" * 500}}), 0.1, 6.0)
    assert 0.5 < elapsed < 3.0, elapsed
    expect_timeout_then_close(sock)


def test_hostile_client_that_never_logs_in_is_closed(server_factory):
    srv = server_factory(login_timeout=1, idle_timeout=30)
    sock = greeted(srv)
    started = time.monotonic()
    readable, _, _ = select.select([sock], [], [], 6.0)
    elapsed = time.monotonic() - started
    assert readable and 0.5 < elapsed < 3.0, elapsed
    expect_timeout_then_close(sock)
    wait_until(lambda: srv.server.session_count == 0)


def test_hostile_chatter_before_login_does_not_extend_login_timeout(server_factory):
    srv = server_factory(login_timeout=1, idle_timeout=30)
    sock = greeted(srv)
    started = time.monotonic()
    while True:
        assert time.monotonic() - started < 4.0, "never cut off"
        sock.sendall(frame({"cmd": "pwd", "args": {}}))
        reply = read_frame(sock)
        if reply["code"] == 408:
            break
        assert reply["code"] == 401
        readable, _, _ = select.select([sock], [], [], 0.2)  # pace the chatter
        if readable:
            assert_error(read_frame(sock), 408, "timeout")
            break
    assert 0.5 < time.monotonic() - started < 3.0
    assert_closed(sock)


def test_hostile_idle_logged_in_session_gets_408(server_factory):
    srv = server_factory(idle_timeout=1, login_timeout=30)
    sock = logged_in(srv)
    # Activity keeps a session alive: four commands 0.4 s apart span more than the timeout.
    for _ in range(4):
        readable, _, _ = select.select([sock], [], [], 0.4)
        assert not readable, "closed while active"
        assert_alive(sock)
    started = time.monotonic()
    readable, _, _ = select.select([sock], [], [], 6.0)
    assert readable and 0.5 < time.monotonic() - started < 3.0
    expect_timeout_then_close(sock)
    wait_until(lambda: srv.server.session_count == 0)
