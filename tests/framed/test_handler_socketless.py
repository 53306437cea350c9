"""The handler layer without a listening socket: FramedSession on one end of a socketpair.

The FramedServer object supplies the shared state (config, users, throttle, ledgers), as it
does in production, but no connection goes through its accept loop: the test builds
``FramedSession(sock, address, server)`` itself (CPython's SocketlessRequestHandler idea)
and speaks ``protocol.encode`` frames to the other end.  This pins down dispatch: the
order of its checks, and that reflection never sees a name outside COMMANDS.
"""

from __future__ import annotations

import hashlib
import json
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from ftpd.accounts.users import UserStore
from ftpd.framed import protocol, streams
from ftpd.framed.protocol import Request, Response
from ftpd.framed.server import VERSION, FramedServer
from ftpd.framed.session import FramedSession
from tests.conftest import FAST, PASSWORDS

TIMEOUT = 5.0


class Pair:
    """An FramedSession serving one end of a socketpair in a thread; the test holds the other."""

    def __init__(self, server: FramedServer, address: tuple[str, int] = ("127.0.0.1", 0)) -> None:
        self.client, theirs = socket.socketpair()
        self.client.settimeout(TIMEOUT)
        self.reader = streams.SocketReader(self.client)
        self.error: BaseException | None = None
        self.thread = threading.Thread(
            target=self._serve, args=(theirs, address, server), daemon=True
        )
        self.thread.start()

    def _serve(self, sock: socket.socket, address: tuple[str, int], server: FramedServer) -> None:
        try:
            FramedSession(sock, address, server)  # setup, handle, finish: the whole session
        except BaseException as exc:  # noqa: BLE001 - reported by the test, not swallowed
            self.error = exc
        finally:
            sock.close()

    def send(self, header: dict[str, Any] | Request, body: bytes = b"") -> None:
        if isinstance(header, Request):
            data = protocol.encode(header)
        else:
            raw = json.dumps(header).encode()
            data = protocol.LENGTH.pack(len(raw)) + raw
        self.client.sendall(data + body)

    def recv(self) -> tuple[Response, bytes]:
        response = protocol.to_response(streams.read_header(self.reader))
        return response, streams.read_exact(self.reader, response.body or 0)

    def call(self, cmd: str, body: bytes | None = None, **args: Any) -> Response:
        self.send(Request(cmd, args, None if body is None else len(body)), body or b"")
        return self.recv()[0]

    def login(self, user: str = "alice") -> None:
        response = self.call("login", user=user, password=PASSWORDS[user])
        assert (response.ok, response.code) == (True, 200), response

    def ended(self) -> bool:
        """True once the handler closed the session (EOF seen, thread finished)."""
        self.client.settimeout(TIMEOUT)
        try:
            rest = self.client.recv(1)
        except ConnectionResetError:
            rest = b""
        self.thread.join(TIMEOUT)
        return rest == b"" and not self.thread.is_alive()

    def close(self) -> None:
        self.client.close()
        self.thread.join(TIMEOUT)
        assert not self.thread.is_alive(), "the handler did not end when its peer left"
        assert self.error is None, repr(self.error)


@pytest.fixture
def ftp_server(server) -> FramedServer:
    return server.server


@pytest.fixture
def pair(ftp_server: FramedServer) -> Iterator[Pair]:
    p = Pair(ftp_server)
    greeting, _ = p.recv()
    assert greeting.code == protocol.GREETING
    yield p
    p.close()


def code(response: Response) -> tuple[int, str]:
    return response.code, response.error or "ok"


# --- greeting and the session loop --------------------------------------------------


def test_handler_socketless_greets_first(ftp_server):
    p = Pair(ftp_server)
    greeting, body = p.recv()
    assert (greeting.ok, greeting.code, body) == (True, 220, b"")
    assert greeting.message == f"ftpd {VERSION} ready"
    assert greeting.data["server"] == "ftpd"
    assert greeting.data["protocol"] == protocol.PROTOCOL_VERSION
    assert greeting.data["digests"] == list(protocol.DIGESTS)
    assert greeting.data["max_inline_body"] == protocol.MAX_INLINE_BODY
    p.close()


def test_handler_socketless_quit_ends_the_handler(pair):
    assert code(pair.call("quit")) == (221, "ok")
    assert pair.ended()


def test_handler_socketless_peer_leaving_ends_the_handler(ftp_server):
    p = Pair(ftp_server)
    p.recv()
    p.login()
    p.close()  # asserts the thread ended without an exception


def test_handler_socketless_protocol_error_closes(pair):
    pair.client.sendall(protocol.LENGTH.pack(5) + b"[1,2]")
    response, _ = pair.recv()
    assert code(response) == (400, "protocol_error")
    assert pair.ended()


# --- dispatch order -----------------------------------------------------------------


def test_handler_socketless_unknown_is_501_before_the_login_check(pair):
    assert code(pair.call("secret")) == (501, "unknown_command")
    # The name is checked before anything else about the request, even its args.
    pair.send({"cmd": "nope", "args": "not an object", "extra": 1})
    assert code(pair.recv()[0]) == (501, "unknown_command")


def test_handler_socketless_arguments_are_checked_before_login(pair):
    # What dispatch() does today: protocol.to_request validates the arguments while
    # decoding, so a malformed known command is 400 even before login; a well-formed
    # one is 401.
    pair.send({"cmd": "cd", "args": {"path": 5}})
    assert code(pair.recv()[0]) == (400, "bad_request")
    pair.send({"cmd": "cd", "args": {}})
    assert code(pair.recv()[0]) == (400, "bad_request")
    assert code(pair.call("cd", path="/")) == (401, "not_logged_in")
    pair.login()
    assert code(pair.call("cd", path="/")) == (200, "ok")


def test_handler_socketless_login_and_quit_need_no_login(pair):
    assert {n for n, c in protocol.COMMANDS.items() if not c.login_required} == {"login", "quit"}
    assert code(pair.call("login", user="alice", password="wrong")) == (430, "login_failed")
    pair.login()
    assert code(pair.call("login", user="alice", password=PASSWORDS["alice"])) == (409, "conflict")
    assert code(pair.call("pwd")) == (200, "ok")


def test_handler_socketless_table_and_methods_in_step():
    methods = {name[4:] for name in dir(FramedSession) if name.startswith("cmd_")}
    assert methods == set(protocol.COMMANDS)


def test_handler_socketless_name_outside_table_never_reflected(pair, monkeypatch):
    """A ``cmd_*`` method that COMMANDS does not list is unreachable; getattr never sees it."""
    called: list[str] = []
    looked_up: list[str] = []

    def cmd_secret(self: FramedSession, request: Request) -> Response:
        called.append("secret")
        return Response(True, 200, "leaked")

    real_getattribute = FramedSession.__getattribute__

    def spy(self: FramedSession, name: str) -> Any:
        if name.startswith("cmd_"):
            looked_up.append(name)
        return real_getattribute(self, name)

    monkeypatch.setattr(FramedSession, "cmd_secret", cmd_secret, raising=False)
    pair.login()
    monkeypatch.setattr(FramedSession, "__getattribute__", spy)
    for name in [
        "secret",
        "cmd_secret",
        "handle",
        "__init__",
        "setup",
        "finish",
        "dispatch",
        "respond",
        "cmd_ls",
        "_check_account",
        "__class__",
        "server",
    ]:
        assert code(pair.call(name)) == (501, "unknown_command"), name
    assert called == []
    assert looked_up == []
    assert code(pair.call("pwd")) == (200, "ok")
    assert looked_up == ["cmd_pwd"]  # the table's name, and only after it was found there


def test_handler_socketless_crash_is_500_and_closes(ftp_server, monkeypatch):
    def broken(self: FramedSession, request: Request) -> Response:
        raise ZeroDivisionError("hidden detail")

    monkeypatch.setattr(FramedSession, "cmd_quota", broken)
    healthy, crashing = Pair(ftp_server), Pair(ftp_server)
    for p in (healthy, crashing):
        p.recv()
        p.login()
    response = crashing.call("quota")
    assert code(response) == (500, "internal_error")
    assert "hidden detail" not in response.message and "ZeroDivision" not in response.message
    assert crashing.ended()
    assert crashing.error is None  # the handler itself did not raise
    assert code(healthy.call("pwd")) == (200, "ok")
    healthy.close()


def test_handler_socketless_removed_account_is_421_at_next_command(ftp_server, project):
    p = Pair(ftp_server)
    p.recv()
    p.login("alice")
    assert code(p.call("pwd")) == (200, "ok")
    users = {n: {"password": FAST.hash(pw)} for n, pw in PASSWORDS.items() if n != "alice"}
    project.write_users(users)
    ftp_server.services.accounts.set_users(UserStore.load(ftp_server.config.users_file))
    assert code(p.call("pwd")) == (421, "unavailable")
    assert p.ended()


# --- session state lives on the handler ---------------------------------------------


def test_handler_socketless_sessions_keep_their_own_cwd(ftp_server, project):
    (project.home("alice") / "a").mkdir(parents=True)
    (project.home("alice") / "b").mkdir()
    one, two = Pair(ftp_server), Pair(ftp_server)
    for p in (one, two):
        p.recv()
        p.login()
    assert one.call("cd", path="a").data["cwd"] == "/a"
    assert two.call("cd", path="b").data["cwd"] == "/b"
    assert one.call("pwd").data["cwd"] == "/a"
    assert two.call("pwd").data["cwd"] == "/b"
    one.close()
    two.close()


def test_handler_socketless_put_and_get_over_the_pair(pair, project):
    data = bytes(range(256)) * 40
    checksum = hashlib.md5(data).hexdigest()
    pair.login()
    stored = pair.call("put", body=data, path="blob", size=len(data), checksum=checksum)
    assert code(stored) == (200, "ok") and stored.data["checksum"] == checksum
    assert (project.home("alice") / "blob").read_bytes() == data
    pair.send(Request("get", {"path": "blob"}))
    response, body = pair.recv()
    assert code(response) == (200, "ok")
    assert (response.data["checksum"], body) == (checksum, data)


def test_handler_socketless_refused_body_is_drained(pair):
    trap = protocol.encode(Request("quit"))
    pair.login()
    pair.send({"cmd": "nope", "args": {}, "body": len(trap)}, trap)
    assert code(pair.recv()[0]) == (501, "unknown_command")
    assert code(pair.call("pwd")) == (200, "ok")  # the trap was skipped, not obeyed


def test_handler_socketless_client_address_is_the_throttle_key(ftp_server):
    limit = ftp_server.config.login_max_failures
    p = Pair(ftp_server, address=("192.0.2.7", 4242))
    p.recv()
    for _ in range(limit):  # the (name, address) pair is what gets locked
        assert code(p.call("login", user="alice", password="wrong")) == (430, "login_failed")
    right = p.call("login", user="alice", password=PASSWORDS["alice"])
    assert code(right) == (429, "too_many_attempts")
    p.close()
    q = Pair(ftp_server, address=("192.0.2.8", 4242))
    q.recv()
    q.login("alice")
    q.close()
