"""Hostile clients bounded (issue 9): before login, and while a client does not read.

Before login the daemon reads frame headers and nothing else: a request that announces a
body is answered and the connection closed, and ``login_timeout`` bounds every byte
either way (headers in, answers out).  After login, a client that sends and never reads
stalls its own session in a bounded send, and the daemon holds no answers for it.

Every socket has a timeout; waits are deadlines (``select``, ``wait_until``), never sleeps.
"""

from __future__ import annotations

import fcntl
import select
import socket
import struct
import termios
import time
import tracemalloc
from typing import Any

import pytest

from tests.conftest import PASSWORDS, RunningServer
from tests.support import call, frame, read_frame, wait_until

TIMEOUT = 5.0
LOGIN_TIMEOUT = 1

BODY = b"q" * 4096
#: Requests that announce a body before login, and the answer each gets before the close.
ANNOUNCING = {
    "put": ({"cmd": "put", "args": {"path": "f", "size": len(BODY)}}, 401, "not_logged_in"),
    "unknown": ({"cmd": "nope", "args": {}}, 501, "unknown_command"),
    "bad-args": ({"cmd": "put", "args": {"path": 5, "size": 1}}, 400, "bad_request"),
}


def greeted(srv: RunningServer, rcvbuf: int | None = None) -> socket.socket:
    """A raw socket whose greeting was read; ``rcvbuf`` shrinks its window (set first)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(TIMEOUT)
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.connect((srv.host, srv.port))
    assert read_frame(sock)["code"] == 220
    return sock


def assert_closed(sock: socket.socket, within: float = TIMEOUT) -> None:
    sock.settimeout(within)
    try:
        rest = sock.recv(65536)
    except ConnectionResetError:
        return
    assert rest == b"", f"expected EOF, got {rest[:200]!r}"


def assert_refused_body(header: dict[str, Any], code: int, name: str) -> None:
    assert (header["ok"], header["code"], header["error"]) == (False, code, name), header
    assert "before login" in header["message"] and "closed" in header["message"], header


def repeated(request: bytes, total: int = 16 * 1024 * 1024) -> memoryview:
    """``request`` over and over, about ``total`` bytes (built before any measuring)."""
    return memoryview(request * (total // len(request)))


def the_session(srv: RunningServer) -> Any:
    """The daemon's one session object (test access to the runtime's registry)."""
    sessions = list(srv.server.runtime._sessions)
    assert len(sessions) == 1, sessions
    return sessions[0]


def full(sock: socket.socket) -> bool:
    """Whether the kernel has no room to send on ``sock`` (the daemon's side)."""
    room = select.poll()
    room.register(sock, select.POLLOUT)
    return not room.poll(0)


def unsent(sock: socket.socket) -> int:
    """Bytes in ``sock``'s send queue (Linux SIOCOUTQ)."""
    raw = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, struct.pack("i", 0))
    return int(struct.unpack("i", raw)[0])


def wait_until_stuck(sock: socket.socket, quiet_s: float = 1.0) -> None:
    """Until the daemon's side is full and its send queue has not moved for ``quiet_s``.

    A receiver that reads nothing still takes a little now and then (the kernel packs
    its queue of small segments), so "full" alone may not last.
    """
    last = {"unsent": -1, "since": time.monotonic()}

    def stuck() -> bool:
        now, queued = time.monotonic(), unsent(sock)
        if queued != last["unsent"] or not full(sock):
            last.update(unsent=queued, since=now)
            return False
        return now - last["since"] >= quiet_s

    wait_until(stuck, timeout=30)


def flood_until_full(srv: RunningServer, sock: socket.socket, data: memoryview) -> int:
    """Send ``data``, reading nothing, until the daemon's side has no room for answers.

    Returns the bytes sent.  From then on the daemon's thread waits in a send and reads
    no more requests.
    """
    daemon_side = the_session(srv).sock
    sock.settimeout(0.1)  # a short wait per send: the daemon may be working through them
    sent = 0
    deadline = time.monotonic() + 30
    while not full(daemon_side):
        assert sent < len(data), f"the daemon took {sent} bytes with its answers unread"
        assert time.monotonic() < deadline, "the daemon's side never filled"
        try:
            sent += sock.send(data[sent : sent + 65536])
        except TimeoutError:
            pass
        except (BrokenPipeError, ConnectionResetError):
            pytest.fail(f"the daemon closed the connection before its side filled ({sent} B)")
    return sent


# --- no body before login --------------------------------------------------------------


@pytest.mark.parametrize(("header", "code", "name"), ANNOUNCING.values(), ids=ANNOUNCING.keys())
def test_bounded_prelogin_body_is_refused_and_connection_closed(
    server, project, header, code, name
):
    sock = greeted(server)
    # The body is a quit frame: a daemon that skipped it would stay open for the next one.
    trap = frame({"cmd": "quit", "args": {}})
    sock.sendall(frame({**header, "body": len(trap)}, trap))
    assert_refused_body(read_frame(sock), code, name)
    assert_closed(sock)
    assert (
        not project.home("alice").exists()
        or [p.name for p in project.home("alice").iterdir() if p.name != ".ftpd"] == []
    )
    wait_until(lambda: server.server.session_count == 0)


def test_bounded_prelogin_body_refused_without_waiting_for_it(server):
    """The answer comes before a byte of the announced body was sent."""
    sock = greeted(server)
    header, code, name = ANNOUNCING["put"]
    sock.sendall(frame({**header, "body": len(BODY)}))
    readable, _, _ = select.select([sock], [], [], TIMEOUT)
    assert readable, "the daemon waited for the body"
    assert_refused_body(read_frame(sock), code, name)
    assert_closed(sock)


def test_bounded_prelogin_empty_body_announces_nothing_and_session_goes_on(server):
    sock = greeted(server)
    header, _, _ = ANNOUNCING["put"]
    sock.sendall(frame({**header, "args": {"path": "f", "size": 0}, "body": 0}))
    reply = read_frame(sock)
    assert (reply["code"], reply["error"]) == (401, "not_logged_in")
    assert call(sock, "login", user="alice", password=PASSWORDS["alice"])["code"] == 200
    assert call(sock, "pwd")["data"]["cwd"] == "/"
    sock.close()


@pytest.mark.parametrize("kind", ["put", "unknown"])
def test_bounded_prelogin_four_drip_clients_cannot_hold_the_slots(server_factory, kind):
    """Issue 9: four clients dripping a refused request's body held every slot."""
    srv = server_factory(
        max_connections=4, max_per_ip=4, login_timeout=LOGIN_TIMEOUT, idle_timeout=30
    )
    header, code, name = ANNOUNCING[kind]
    drippers = [greeted(srv) for _ in range(4)]
    started = time.monotonic()
    for sock in drippers:
        sock.sendall(frame({**header, "body": len(BODY)}))
    waiting = list(drippers)
    while waiting:
        # Pace one byte per client per 0.1 s; an answer (or the close) ends that client.
        readable, _, _ = select.select(waiting, [], [], 0.1)
        for sock in readable:
            assert_refused_body(read_frame(sock), code, name)
            assert_closed(sock)
            waiting.remove(sock)
        assert time.monotonic() - started < LOGIN_TIMEOUT + 1.5, "slots held past login_timeout"
        for sock in waiting:
            try:
                sock.send(BODY[:1])
            except (BrokenPipeError, ConnectionResetError):
                pass  # closed: the next select sees it
    wait_until(lambda: srv.server.session_count == 0, timeout=LOGIN_TIMEOUT + 1.5)
    conn = srv.login("alice")  # a slot is free for a real user
    assert conn.call("pwd").data["cwd"] == "/"
    conn.close()
    for sock in drippers:
        sock.close()


# --- a client that does not read -----------------------------------------------------------


def test_bounded_prelogin_client_that_does_not_read_is_closed_at_login_timeout(server_factory):
    """Before login, answers that pile up unread do not hold the slot past login_timeout."""
    srv = server_factory(login_timeout=2, idle_timeout=30)
    # Each unknown name is echoed (cut to 200 characters) in a 501 answer nobody reads.
    requests = repeated(frame({"cmd": "x" * 300, "args": {}}))
    sock = greeted(srv, rcvbuf=4096)
    started = time.monotonic()
    # A small send buffer on the daemon's side: a few dozen unread answers fill it, so
    # the test is about the deadline and not about how fast megabytes can be answered.
    the_session(srv).sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    flood_until_full(srv, sock, requests)
    assert time.monotonic() - started < 1.5, "the daemon's side did not fill in time"
    # Was: the daemon's send waited for idle_timeout (30 s here) with the slot taken.
    wait_until(lambda: srv.server.session_count == 0, timeout=4)
    assert time.monotonic() - started < 2 + 1.5
    sock.close()


def test_bounded_unread_error_answers_use_no_daemon_memory(server):
    """The error path sends each answer (blocking, with a timeout) and keeps none."""
    sock = greeted(server, rcvbuf=4096)
    assert call(sock, "login", user="alice", password=PASSWORDS["alice"])["code"] == 200
    requests = repeated(frame({"cmd": "stat", "args": {"path": "/missing/" + "m" * 150}}))
    daemon_side = the_session(server).sock
    daemon_side.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 256 * 1024)  # a fixed size
    tracemalloc.start()
    try:
        flood_until_full(server, sock, requests)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    unread = unsent(daemon_side)
    assert unread > 128 * 1024  # that much of 404 answers waits in the kernel, unread...
    assert peak < unread // 4, (peak, unread)  # ...and none of it in the daemon as well
    sock.close()


def test_bounded_farewell_to_a_client_that_does_not_read_returns_at_once(server):
    """The farewell (a stop, a reload) never waits on a client whose socket is full."""
    sock = greeted(server, rcvbuf=4096)
    assert call(sock, "login", user="alice", password=PASSWORDS["alice"])["code"] == 200
    session = the_session(server)
    session.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)  # fills sooner
    flood_until_full(server, sock, repeated(frame({"cmd": "nope", "args": {}})))
    wait_until_stuck(session.sock)
    started = time.monotonic()
    session.farewell("the server is shutting down")
    assert time.monotonic() - started < 0.5  # was: up to idle_timeout (30 s here)
    session.interrupt()
    wait_until(lambda: server.server.session_count == 0)
    sock.close()
