"""The ``ls`` and ``stat`` answers and their log lines on the hot path (issue 11).

A small listing goes out with its header in one write (the client wakes once); one past
``LS_SPOOL_BYTES`` is spilled to a temporary file and sent after its header, the same
bytes either way.  The command's log line keeps its exact text: admins and fail2ban grep
it.  (A listing of 100,000 entries stays bounded: tests/framed/test_listing_memory.py.)
"""

from __future__ import annotations

import json
import re
import socket
import threading
from pathlib import Path
from typing import Any

import pytest

from ftpd.framed import protocol, session, streams
from ftpd.framed.protocol import Request, Response
from ftpd.framed.server import FramedServer
from ftpd.framed.session import FramedSession
from tests.conftest import PASSWORDS, RunningServer
from tests.support import LogRecords

TIMEOUT = 5.0
STAMP = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}"


class _Recorder:
    """The session's socket, with every ``sendall`` remembered."""

    def __init__(self, sock: socket.socket, writes: list[bytes]) -> None:
        self._sock, self._writes = sock, writes

    def sendall(self, data: bytes) -> None:
        self._writes.append(bytes(data))
        self._sock.sendall(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


class Pair:
    """A session on one end of a socketpair whose writes are recorded; the test holds the
    other end."""

    def __init__(self, server: FramedServer) -> None:
        self.writes: list[bytes] = []
        writes = self.writes

        class Recording(FramedSession):
            def setup(self) -> None:
                super().setup()
                self.sock = _Recorder(self.sock, writes)  # type: ignore[assignment]

        self.client, theirs = socket.socketpair()
        self.client.settimeout(TIMEOUT)
        self.reader = streams.SocketReader(self.client)
        self.thread = threading.Thread(
            target=Recording, args=(theirs, ("127.0.0.1", 0), server), daemon=True
        )
        self.thread.start()
        self.recv()  # the greeting

    def recv(self) -> tuple[Response, bytes]:
        response = protocol.to_response(streams.read_header(self.reader))
        return response, streams.read_exact(self.reader, response.body or 0)

    def call(self, cmd: str, **args: Any) -> tuple[Response, bytes]:
        self.writes.clear()
        self.client.sendall(protocol.encode(Request(cmd, args, None)))
        return self.recv()

    def close(self) -> None:
        self.client.close()
        self.thread.join(TIMEOUT)


@pytest.fixture
def pair(server: RunningServer) -> Any:
    p = Pair(server.server)
    response, _ = p.call("login", user="alice", password=PASSWORDS["alice"])
    assert response.ok
    yield p
    p.close()


def folder(server: RunningServer, count: int) -> Path:
    home = server.project.home("alice")
    (home / "d").mkdir(parents=True)
    for i in range(count):
        (home / "d" / f"file-{i:04d}-é").write_bytes(b"x" * i)
    return home / "d"


def test_small_listing_goes_out_in_one_write(server: RunningServer, pair: Pair) -> None:
    folder(server, 10)
    response, body = pair.call("ls", path="/d")
    assert response.ok and response.data == {"path": "/d", "count": 10}
    assert len(pair.writes) == 1 and pair.writes[0].endswith(body)
    lines = [json.loads(line) for line in body.decode("utf-8").splitlines()]
    assert [(e["name"], e["type"], e["size"]) for e in lines] == [
        (f"file-{i:04d}-é", "file", i) for i in range(10)
    ]
    response, body = pair.call("ls", path="/d/none")
    assert (response.code, response.error, body) == (404, "not_found", b"")
    response, body = pair.call("ls", path="/")
    assert response.data["count"] == 1 and len(pair.writes) == 1


def test_listing_past_the_spool_limit_is_the_same_bytes(
    server: RunningServer, pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder(server, 200)
    _, in_memory = pair.call("ls", path="/d")
    assert len(in_memory) > 4000
    monkeypatch.setattr(session, "LS_SPOOL_BYTES", 1000)
    monkeypatch.setattr(session, "LS_CHUNK", 700)
    response, spilled = pair.call("ls", path="/d")
    assert response.data["count"] == 200 and spilled == in_memory
    assert len(pair.writes) > 2  # the header, then the spilled body in chunks
    monkeypatch.setattr(session, "LS_SPOOL_BYTES", len(in_memory))  # exactly at the limit
    _, body = pair.call("ls", path="/d")
    assert body == in_memory and len(pair.writes) == 1


def test_command_lines_keep_their_text(
    server: RunningServer, pair: Pair, log_file: Path, log_records: LogRecords
) -> None:
    folder(server, 2)
    for cmd, args, result in (
        ("ls", {"path": "/d"}, "200 ok"),
        ("stat", {"path": "/d/file-0001-é"}, "200 ok"),
        ("ls", {"path": "/no where"}, "404 not_found"),
        ("stat", {"path": "it's"}, "404 not_found"),
    ):
        mark = log_records.mark()
        pair.call(cmd, **args)
        shown = " ".join(f"{k}={v}" for k, v in args.items())
        shown = shown.replace(" where", "\\x20where").replace("'", "\\'")
        line = (
            rf"CMD proto=framed ip=127\.0\.0\.1 user=alice {cmd} {re.escape(shown)} "
            rf"-> {result} \(\d+\.\d ms\)"
        )
        assert re.fullmatch(line, log_records.wait_for(f"CMD .* {cmd} ", start=mark))
        text = log_file.read_text("utf-8").splitlines()[-1]
        assert re.fullmatch(rf"{STAMP} INFO ftpd\.framed\.session {line}", text), text
    record = log_records.records[-1]
    assert (record.funcName, record.pathname) == ("log_command", session.__file__)
