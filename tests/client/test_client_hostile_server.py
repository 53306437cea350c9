"""The client against a hostile server: listings that try to steer writes out of the target.

A fake server on 127.0.0.1 port 0 speaks the real framing (``ftpd.protocol``) and answers
``ls`` with names such as ``../escape``; ``get -r`` must never write outside its folder
(the class of scp's CVE-2019-6111).  Also: a local failure in the middle of a pipelined
upload must not leave the connection out of step (the answers in flight are read first).
"""

from __future__ import annotations

import hashlib
import json
import socket
import threading
from pathlib import Path

import pytest

from ftp_client import transfer
from ftp_client.connection import Connection
from ftp_client.shell import Session, Shell
from ftpd.framed import protocol, streams

EVIL = ["../escape.txt", "/abs.txt", "..", ".", "", "a\\b", "ok.txt"]


def _fake_server(listener: socket.socket) -> None:
    sock, _ = listener.accept()
    sock.settimeout(10)
    reader = streams.SocketReader(sock)
    send = lambda r, body=b"": sock.sendall(protocol.encode(r) + body)  # noqa: E731
    send(protocol.Response(True, protocol.GREETING, "fake"))
    content = b"hello"
    try:
        while True:
            request = protocol.to_request(streams.read_header(reader))
            if request.cmd == "ls":
                lines = "".join(
                    json.dumps({"name": n, "type": "file", "size": 5, "mtime": 0}) + "\n"
                    for n in EVIL
                ).encode()
                send(
                    protocol.Response(True, 200, "", data={"count": len(EVIL)}, body=len(lines)),
                    lines,
                )
            elif request.cmd == "get":
                data = {
                    "size": 5,
                    "offset": 0,
                    "checksum": hashlib.md5(content).hexdigest(),
                    "digest": "md5",
                }
                send(protocol.Response(True, 200, "", data=data, body=5), content)
            elif request.cmd == "quit":
                send(protocol.Response(True, 221, "bye"))
                return
            else:
                send(protocol.Response(True, 200, "ok", data={"cwd": "/"}))
    except (streams.ConnectionClosed, OSError):
        pass
    finally:
        sock.close()


def test_client_get_r_never_writes_outside_its_folder(tmp_path: Path) -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(10)
    thread = threading.Thread(target=_fake_server, args=(listener,), daemon=True)
    thread.start()
    port = listener.getsockname()[1]
    session = Session(lambda: Connection("127.0.0.1", port, timeout=10), "u", "p")
    shell = Shell(session, quiet=True, interactive=False)
    target = tmp_path / "inside" / "dl"
    target.parent.mkdir()
    shell.onecmd(f"get -r / {target}")
    assert not shell.last_failed
    assert sorted(p.name for p in target.iterdir()) == ["ok.txt"]  # only the plain name
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["dl", "inside", "ok.txt"]
    session.close()
    thread.join(timeout=10)
    listener.close()


def test_client_pipeline_local_failure_leaves_no_out_of_step_connection(server, tmp_path):
    conn = server.login("bob")
    good = tmp_path / "good.bin"
    good.write_bytes(b"x" * 100)
    pairs = [
        (good, "a.bin"),
        (good, "b.bin"),
        (tmp_path / "vanished.bin", "c.bin"),
        (good, "d.bin"),
    ]
    stored = []
    with pytest.raises(FileNotFoundError):
        transfer.put_many(conn, pairs, window=32, done=lambda r, i, n: stored.append(r.path))
    # The answers to a.bin and b.bin were in flight: they were read before the failure
    # was raised, so the connection is in step and nothing after the failure was sent.
    assert stored == ["a.bin", "b.bin"]
    assert conn.call("pwd").data["cwd"] == "/"
    assert sorted(p.name for p in server.project.home("bob").iterdir() if p.name != ".ftpd") == [
        "a.bin",
        "b.bin",
    ]
    conn.close()
