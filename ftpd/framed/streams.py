"""Blocking reads and copies on file objects: exact reads, frame reads, hashed copies.

Shared by the daemon's handler and the client.  Everything here works on file-like
objects (a socket's ``makefile('rb')``, ``BytesIO``, a disk file) and never opens a socket
or a path itself, and never holds a whole body in memory: copies go through one reused
buffer, so memory stays flat whatever the file size.
"""

from __future__ import annotations

import hashlib
import math
import select
import time
from collections.abc import Callable
from typing import Any, Protocol

from ftpd.errors import BadRequestError, ProtocolError
from ftpd.framed import protocol


class Readable(Protocol):
    """What the copies read from: a socket reader, a file opened "rb", a BytesIO."""

    def read(self, size: int, /) -> bytes | None: ...
    def readinto(self, buffer: Any, /) -> int | None: ...


#: Copy buffer: large enough that per-call overhead vanishes next to md5 and the kernel.
CHUNK = 1 << 20


class ConnectionClosed(ProtocolError):
    """The peer closed the stream; ``clean`` when it did so between frames."""

    def __init__(self, message: str = "connection closed", clean: bool = False) -> None:
        super().__init__(message)
        self.clean = clean


def new_hasher(digest: str = protocol.DEFAULT_DIGEST) -> Any:
    """A fresh hash object for a protocol digest name (md5 unless negotiated)."""
    if digest not in protocol.DIGESTS:
        raise BadRequestError(f"unsupported digest {digest!r}; use one of {protocol.DIGESTS}")
    return hashlib.new(digest, usedforsecurity=False)


def read_exact(rfile: Readable, size: int) -> bytes:
    """Read exactly ``size`` bytes or raise ConnectionClosed."""
    data = rfile.read(size)
    if data is None or len(data) != size:
        raise ConnectionClosed(f"stream ended after {len(data or b'')} of {size} bytes")
    return data


def read_header(rfile: Readable) -> dict[str, Any]:
    """Read one frame's header.  An oversize length is refused before reading further.

    Raises:
        ConnectionClosed: end of stream (``clean`` if nothing of a frame had arrived).
        ProtocolError: an oversize, empty or non-JSON-object header.
    """
    prefix = rfile.read(protocol.LENGTH_SIZE)
    if not prefix:
        raise ConnectionClosed(clean=True)
    if len(prefix) < protocol.LENGTH_SIZE:
        raise ConnectionClosed("stream ended inside a length prefix")
    length = protocol.parse_length(prefix)
    return protocol.parse_header(read_exact(rfile, length))


def copy_exact(
    rfile: Readable,
    sink: Callable[[memoryview], object] | None,
    size: int,
    hasher: Any = None,
    progress: Callable[[int], object] | None = None,
    chunk: int = CHUNK,
) -> None:
    """Move exactly ``size`` bytes from ``rfile`` to ``sink`` (e.g. ``file.write``).

    ``hasher.update`` sees every byte; ``progress(n)`` is told each chunk's length.
    A ``sink`` of None discards (to drain a body that cannot be used).

    Raises:
        ConnectionClosed: the stream ended early; what arrived was already sunk.
    """
    buf = bytearray(min(chunk, size) or 1)
    view = memoryview(buf)
    left = size
    while left:
        n = rfile.readinto(view[: min(left, len(buf))])
        if not n:
            raise ConnectionClosed(f"stream ended with {left} of {size} body bytes missing")
        piece = view[:n]
        if hasher is not None:
            hasher.update(piece)
        if sink is not None:
            sink(piece)
        if progress is not None:
            progress(n)
        left -= n


def hash_file(
    fobj: Readable, size: int | None = None, digest: str = "md5", chunk: int = CHUNK
) -> Any:
    """Hash ``size`` bytes (default: all) from the current position; returns the hasher."""
    hasher = new_hasher(digest)
    buf = bytearray(chunk)
    view = memoryview(buf)
    left = size
    while left is None or left > 0:
        want = len(buf) if left is None else min(left, len(buf))
        n = fobj.readinto(view[:want])
        if not n:
            if left:
                raise ConnectionClosed(f"file ended with {left} bytes missing")
            break
        hasher.update(view[:n])
        if left is not None:
            left -= n
    return hasher


class SocketReader:
    """A buffered reader over a socket (anything with ``recv``, ``recv_into`` and
    ``fileno``), with deadlines, that holds no buffer while it waits.

    Small reads (frame headers) are served from what one ``recv(bufsize)`` returned;
    large ``readinto`` calls go straight to ``recv_into`` on the caller's buffer, so a
    body is copied once.  An idle session is a thread blocked here, so waiting costs
    nothing: with nothing buffered the reader first waits for readability with ``poll``
    (``SSLSocket.pending()`` bytes are already inside the SSL object: no wait), and
    only then receives, into a buffer that ``recv`` sizes to what arrived; once every
    byte of it is consumed it is dropped (a blocked ``recv(n)`` would hold ``n`` bytes
    for as long as it waits).  Many frames in one segment are all served from it.

    While ``deadline`` (a ``time.monotonic`` value) is set, every wait is cut to the
    time left, so a client that drips a header one byte at a time still times out
    (slowloris); otherwise a wait lasts the socket's timeout (``TimeoutError``).
    """

    def __init__(self, sock: Any, bufsize: int = 16 * 1024) -> None:
        self.sock = sock
        self.bufsize = bufsize
        self._data = b""  # received, not yet consumed from ``_start``; b"" when drained
        self._start = 0
        self.deadline: float | None = None
        self.timeout: float | None = sock.gettimeout()

    def _wait_time(self) -> float | None:
        """Seconds the next wait may last (None: forever); applied to the socket too."""
        if self.deadline is None:
            return self.sock.gettimeout()
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("deadline passed")
        wait = left if self.timeout is None else min(left, self.timeout)
        self.sock.settimeout(wait)
        return wait

    def _recv_into(self, view: memoryview) -> int:
        self._wait_time()
        return self.sock.recv_into(view)

    def _fill(self) -> bool:
        """Wait for bytes, then take what arrived (up to ``bufsize``); False at end."""
        wait = self._wait_time()
        pending = getattr(self.sock, "pending", None)
        if wait != 0 and not (pending is not None and pending()):
            poller = select.poll()
            poller.register(self.sock, select.POLLIN)
            ms = -1 if wait is None else max(1, math.ceil(wait * 1000))
            if not poller.poll(ms):
                raise TimeoutError("timed out")
            if pending is not None and self.deadline is not None:
                self._wait_time()  # TLS may wait again for the rest of a record: what is left
        self._data = self.sock.recv(self.bufsize)
        self._start = 0
        return bool(self._data)

    def _take(self, size: int) -> bytes:
        """Up to ``size`` buffered bytes (no copy when they are the whole buffer)."""
        data, start = self._data, self._start
        piece = data if start == 0 and size >= len(data) else data[start : start + size]
        self._skip(len(piece))
        return piece

    def _skip(self, size: int) -> None:
        """Consume ``size`` buffered bytes; the buffer is dropped once drained."""
        self._start += size
        if self._start >= len(self._data):
            self._data, self._start = b"", 0

    def readinto(self, target: memoryview | bytearray) -> int:
        """Up to ``len(target)`` bytes; 0 only at end of stream."""
        view = memoryview(target).cast("B")
        if not self.buffered:
            if len(view) >= self.bufsize:
                return self._recv_into(view)
            if not self._fill():
                return 0
        start = self._start
        n = min(len(self._data) - start, len(view))
        view[:n] = memoryview(self._data)[start : start + n]
        self._skip(n)
        return n

    def read(self, size: int) -> bytes:
        """Exactly ``size`` bytes, or fewer only at end of stream."""
        data, start = self._data, self._start
        end = start + size
        if end < len(data):  # the common case: a header inside what one recv returned
            self._start = end
            return data[start:end]
        if end == len(data):
            self._data, self._start = b"", 0
            return data[start:] if start else data
        out = bytearray()
        while len(out) < size:
            if not self.buffered and not self._fill():
                break
            out += self._take(size - len(out))
        return bytes(out)

    @property
    def buffered(self) -> int:
        """Bytes received but not yet consumed."""
        return len(self._data) - self._start

    def peek(self, size: int) -> bytes:
        """Up to ``size`` buffered bytes, not consumed."""
        return self._data[self._start : self._start + size]

    def ready(self, size: int) -> bool:
        """Whether ``size`` bytes can be read now without waiting: buffered, or already
        in the kernel (taken into the buffer without waiting).  Over TLS only what is
        buffered counts.  The caller bounds ``size``: it is all held in memory."""
        have = self.buffered
        if have >= size:
            return True
        if getattr(self.sock, "pending", None) is not None:
            return False
        poller = select.poll()
        poller.register(self.sock, select.POLLIN)
        while have < size and poller.poll(0):
            more = self.sock.recv(max(size - have, self.bufsize))
            if not more:  # end of stream: the reads that follow will say so
                return False
            self._data, self._start = self._data[self._start :] + more, 0
            have = self.buffered
        return have >= size
