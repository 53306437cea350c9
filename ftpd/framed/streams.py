"""Blocking reads and copies on file objects: exact reads, frame reads, hashed copies.

Shared by the daemon's handler and the client.  Everything here works on file-like
objects (a socket's ``makefile('rb')``, ``BytesIO``, a disk file) and never opens a socket
or a path itself, and never holds a whole body in memory: copies go through one reused
buffer, so memory stays flat whatever the file size.
"""

from __future__ import annotations

import hashlib
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
    """A buffered reader over anything with ``recv_into`` (a socket), with deadlines.

    Small reads (frame headers) come from one small buffer (16 KiB: most of an idle
    session's memory, and headers are usually far smaller); large ``readinto`` calls go straight
    to ``recv_into`` on the caller's buffer, so a body is copied once.  While ``deadline``
    (a ``time.monotonic`` value) is set, every wait is cut to the time left, so a client
    that drips a header one byte at a time still times out (slowloris).
    """

    def __init__(self, sock: Any, bufsize: int = 16 * 1024) -> None:
        self.sock = sock
        self._buf = bytearray(bufsize)
        self._view = memoryview(self._buf)
        self._start = self._end = 0
        self.deadline: float | None = None
        self.timeout: float | None = sock.gettimeout()

    def _recv_into(self, view: memoryview) -> int:
        if self.deadline is not None:
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("deadline passed")
            self.sock.settimeout(left if self.timeout is None else min(left, self.timeout))
        return self.sock.recv_into(view)

    def readinto(self, target: memoryview | bytearray) -> int:
        """Up to ``len(target)`` bytes; 0 only at end of stream."""
        view = memoryview(target).cast("B")
        have = self._end - self._start
        if have:
            n = min(have, len(view))
            view[:n] = self._view[self._start : self._start + n]
            self._start += n
            return n
        if len(view) >= len(self._buf):
            return self._recv_into(view)
        self._start = 0
        self._end = self._recv_into(self._view)
        return self.readinto(view) if self._end else 0

    def read(self, size: int) -> bytes:
        """Exactly ``size`` bytes, or fewer only at end of stream."""
        out = bytearray()
        while len(out) < size:
            have = self._end - self._start
            if have:
                n = min(have, size - len(out))
                out += self._view[self._start : self._start + n]
                self._start += n
                continue
            self._start = 0
            self._end = self._recv_into(self._view)
            if not self._end:
                break
        return bytes(out)

    @property
    def buffered(self) -> int:
        """Bytes received but not yet consumed."""
        return self._end - self._start
