"""``streams.SocketReader``: no buffer while idle, frames still served whole and in order.

An idle session is a thread blocked in its reader, so whatever the reader holds while it
waits is paid by every idle session (issue 11: at most 32 KiB each).  These tests
inspect the object and the calls it makes, never timing or memory: the reader holds no
bytes between frames, never waits inside ``recv`` (it polls first, then receives what
arrived), and still serves pipelined frames, TLS records and deadlines as before.
"""

from __future__ import annotations

import socket
import ssl
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import trustme

from ftpd.framed import streams
from tests.idle import Watched
from tests.support import frame

TIMEOUT = 5.0


def held(reader: streams.SocketReader) -> int:
    """Bytes the reader keeps in its attributes (buffers, views of them)."""
    total = 0
    for value in vars(reader).values():
        if isinstance(value, bytes | bytearray):
            total += len(value)
        elif isinstance(value, memoryview):
            total += value.nbytes
    return total


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    ours, theirs = socket.socketpair()
    for sock in (ours, theirs):
        sock.settimeout(TIMEOUT)
    yield ours, theirs
    ours.close()
    theirs.close()


def test_reader_holds_no_buffer_before_after_and_between_frames(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    ours, theirs = pair
    reader = streams.SocketReader(ours)
    assert held(reader) == 0 and reader.buffered == 0
    theirs.sendall(frame({"cmd": "pwd"}) + frame({"cmd": "ls"}))
    assert streams.read_header(reader) == {"cmd": "pwd"}
    assert reader.buffered > 0  # the second frame, already received: kept
    assert streams.read_header(reader) == {"cmd": "ls"}
    assert held(reader) == 0 and reader.buffered == 0


def test_reader_waits_for_bytes_outside_recv(pair: tuple[socket.socket, socket.socket]) -> None:
    """The reader is made to wait (nothing sent yet): it polls, and only receives once
    the frame is there; a ``recv`` entered with nothing to read would hold its buffer
    for the whole wait."""
    ours, theirs = pair
    watched = Watched(ours)
    reader = streams.SocketReader(watched)
    got: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: got.update(header=streams.read_header(reader)))
    thread.start()
    watched.wait_for_idle(TIMEOUT)  # it is waiting, and nothing has been sent
    theirs.sendall(frame({"cmd": "pwd"}))
    thread.join(TIMEOUT)
    assert got == {"header": {"cmd": "pwd"}}
    assert "blind" not in watched.events, watched.events
    assert held(reader) == 0


def test_pipelined_frames_and_bodies_in_one_segment_are_all_served(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    ours, theirs = pair
    watched = Watched(ours)
    reader = streams.SocketReader(watched)
    frames = [frame({"cmd": "put", "n": i, "body": 3}, b"%03d" % i) for i in range(50)]
    theirs.sendall(b"".join(frames) + frame({"cmd": "quit"}))
    for i in range(50):
        assert streams.read_header(reader) == {"cmd": "put", "n": i, "body": 3}
        assert streams.read_exact(reader, 3) == b"%03d" % i
    assert streams.read_header(reader) == {"cmd": "quit"}
    assert watched.events.count("recv") == 1  # one segment, one receive, 51 frames
    assert held(reader) == 0


def test_header_split_across_segments_is_joined(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    ours, theirs = pair
    reader = streams.SocketReader(ours)
    data = frame({"cmd": "stat", "args": {"path": "/x"}})
    got: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: got.update(header=streams.read_header(reader)))
    thread.start()
    for i in range(len(data)):  # one byte at a time: every piece its own receive
        theirs.sendall(data[i : i + 1])
    thread.join(TIMEOUT)
    assert got == {"header": {"cmd": "stat", "args": {"path": "/x"}}}
    assert held(reader) == 0


def test_large_readinto_goes_to_the_callers_buffer_after_what_is_buffered(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    ours, theirs = pair
    reader = streams.SocketReader(ours, bufsize=1024)
    body = bytes(range(256)) * 64  # 16 KiB
    theirs.sendall(frame({"cmd": "put", "body": len(body)}) + body[:100])
    assert streams.read_header(reader) == {"cmd": "put", "body": len(body)}
    sender = threading.Thread(target=theirs.sendall, args=(body[100:],))
    sender.start()
    out = bytearray()
    streams.copy_exact(reader, out.extend, len(body), chunk=8192)
    sender.join(TIMEOUT)
    assert bytes(out) == body
    assert held(reader) == 0


def test_end_of_stream_between_frames_is_clean(pair: tuple[socket.socket, socket.socket]) -> None:
    ours, theirs = pair
    reader = streams.SocketReader(ours)
    theirs.sendall(frame({"cmd": "pwd"}))
    theirs.shutdown(socket.SHUT_WR)
    assert streams.read_header(reader) == {"cmd": "pwd"}
    with pytest.raises(streams.ConnectionClosed) as info:
        streams.read_header(reader)
    assert info.value.clean


def test_end_of_stream_inside_a_frame_is_not_clean(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    ours, theirs = pair
    reader = streams.SocketReader(ours)
    theirs.sendall(frame({"cmd": "pwd"})[:7])
    theirs.shutdown(socket.SHUT_WR)
    with pytest.raises(streams.ConnectionClosed) as info:
        streams.read_header(reader)
    assert not info.value.clean


def test_idle_wait_ends_at_the_deadline(pair: tuple[socket.socket, socket.socket]) -> None:
    ours, _theirs = pair
    reader = streams.SocketReader(ours)
    reader.deadline = time.monotonic() + 0.2
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        streams.read_header(reader)
    assert time.monotonic() - started < TIMEOUT - 1  # the deadline, not the socket's timeout


def test_idle_wait_ends_at_the_socket_timeout(pair: tuple[socket.socket, socket.socket]) -> None:
    ours, _theirs = pair
    ours.settimeout(0.2)
    reader = streams.SocketReader(ours)
    with pytest.raises(TimeoutError):
        streams.read_header(reader)


def test_a_dripped_header_still_ends_at_the_deadline(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    """Bytes that keep coming do not extend the deadline (slowloris)."""
    ours, theirs = pair
    reader = streams.SocketReader(ours)
    theirs.sendall(frame({"cmd": "pwd"})[:5])
    reader.deadline = time.monotonic() + 0.2
    with pytest.raises(TimeoutError):
        streams.read_header(reader)


# --- TLS ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def contexts() -> tuple[ssl.SSLContext, ssl.SSLContext]:
    ca = trustme.CA()
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(server)
    client = ssl.create_default_context()
    ca.configure_trust(client)
    return server, client


@pytest.fixture
def tls_pair(
    contexts: tuple[ssl.SSLContext, ssl.SSLContext],
    pair: tuple[socket.socket, socket.socket],
) -> Iterator[tuple[ssl.SSLSocket, ssl.SSLSocket]]:
    server_context, client_context = contexts
    ours, theirs = pair
    wrapped: dict[str, ssl.SSLSocket] = {}

    def handshake() -> None:
        wrapped["client"] = client_context.wrap_socket(theirs, server_hostname="localhost")

    thread = threading.Thread(target=handshake)
    thread.start()
    server = server_context.wrap_socket(ours, server_side=True)
    thread.join(TIMEOUT)
    yield server, wrapped["client"]
    server.close()
    wrapped["client"].close()


def test_tls_bytes_already_decrypted_are_served_without_waiting(
    tls_pair: tuple[ssl.SSLSocket, ssl.SSLSocket],
) -> None:
    """Three frames in one TLS record, read 8 bytes at a time: after the first receive
    the rest sits decrypted inside the SSL object, where ``poll`` cannot see it; the
    reader must take it without waiting (here: it would wait until the timeout)."""
    server, client = tls_pair
    server.settimeout(2.0)
    reader = streams.SocketReader(server, bufsize=8)
    client.sendall(frame({"cmd": "pwd"}) + frame({"cmd": "ls"}) + frame({"cmd": "quit"}))
    started = time.monotonic()
    assert streams.read_header(reader) == {"cmd": "pwd"}
    assert streams.read_header(reader) == {"cmd": "ls"}
    assert streams.read_header(reader) == {"cmd": "quit"}
    assert time.monotonic() - started < 1.5
    assert held(reader) == 0


def test_tls_idle_reader_holds_nothing_and_still_times_out(
    tls_pair: tuple[ssl.SSLSocket, ssl.SSLSocket],
) -> None:
    server, client = tls_pair
    reader = streams.SocketReader(server)
    client.sendall(frame({"cmd": "pwd"}))
    assert streams.read_header(reader) == {"cmd": "pwd"}
    assert held(reader) == 0
    reader.deadline = time.monotonic() + 0.2
    with pytest.raises(TimeoutError):
        streams.read_header(reader)
