"""Idle framed sessions cost little (issue 11): no receive buffer held while waiting.

A session between commands is a thread waiting on its connection.  It must wait outside
``recv`` (a blocked ``recv`` holds its buffer for the whole wait) and hold no buffer of
its own; measured against a real daemon, 200 idle logged-in sessions must stay well
under the 16 KiB buffer each they used to cost.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from ftp_client.connection import Connection
from ftpd.framed import streams
from ftpd.framed.session import FramedSession
from tests.conftest import PASSWORDS, DaemonProcess, Project, RunningServer
from tests.idle import Watched, per_session_kib
from tests.support import frame

TIMEOUT = 10.0
SESSIONS = 200
#: Measured here on the 2-core dev machine: 32.6 KiB each (47.0 before the reader dropped
#: its buffer while idle; the issue's goal, 32, is for the benchmark's 1,000 sessions).
#: Generous on purpose: a fresh daemon, 200 sessions, whatever the load.
BOUND_KIB = 38.0


class WatchedSession(FramedSession):
    """A framed session whose connection records how it is waited on."""

    watched: list[Watched] = []

    def setup(self) -> None:
        super().setup()
        watched = Watched(self.sock)
        self.sock = watched  # type: ignore[assignment]
        self.reader = streams.SocketReader(watched)
        WatchedSession.watched.append(watched)


@pytest.fixture
def watched_server(server: RunningServer) -> RunningServer:
    WatchedSession.watched = []
    server.server.RequestHandlerClass = WatchedSession
    return server


def test_idle_session_waits_outside_recv(watched_server: RunningServer) -> None:
    with watched_server.login() as conn:
        for _ in range(3):
            conn.call("pwd")
        (watched,) = WatchedSession.watched
        events = watched.wait_for_idle(TIMEOUT)
        # events[0]: the 12-byte peek for a PROXY header before the first command.
        assert events[-1] == "wait", events
        assert "blind" not in events[1:], events
        conn.call("pwd")  # and it still answers


def test_pipelined_requests_in_one_segment_are_all_answered(
    watched_server: RunningServer,
) -> None:
    with watched_server.login() as conn:
        (watched,) = WatchedSession.watched
        watched.wait_for_idle(TIMEOUT)
        requests = b"".join(frame({"cmd": "mkdir", "args": {"path": f"/d{i}"}}) for i in range(20))
        conn.sock.sendall(requests + frame({"cmd": "pwd", "args": {}}))
        for _ in range(20):
            assert conn.read_response().ok
        assert conn.read_response().data["cwd"] == "/"
        assert sorted(entry["name"] for entry in conn.listdir("/")) == sorted(
            f"d{i}" for i in range(20)
        )


def test_idle_sessions_memory_per_session(project: Project) -> None:
    project.write_config(max_connections=SESSIONS + 50, max_per_ip=SESSIONS + 50)
    daemon = DaemonProcess(project).start()
    assert daemon.proc is not None

    def open_one() -> Connection:
        conn = Connection("127.0.0.1", daemon.port, timeout=TIMEOUT)
        conn.login("alice", PASSWORDS["alice"])
        return conn

    sessions: list[Connection] = []
    try:
        kib, sessions = per_session_kib(daemon.proc.pid, open_one, SESSIONS)
        assert sessions[-1].call("pwd").ok  # idle, not gone
        assert kib <= BOUND_KIB, f"{kib:.1f} KiB per idle framed session"
    finally:
        for conn in sessions:
            conn.close()
        daemon.stop()


def test_logged_in_session_that_stays_idle_still_times_out(
    server_factory: Callable[..., RunningServer],
) -> None:
    srv = server_factory(idle_timeout=0.5)
    with srv.login() as conn:
        # Nothing sent: the idle timeout ends the session with a 408 frame, then closes.
        assert streams.read_header(conn.reader)["code"] == 408
        with pytest.raises(streams.ConnectionClosed):
            streams.read_header(conn.reader)
