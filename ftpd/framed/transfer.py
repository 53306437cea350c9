"""The daemon's side of ``put`` and ``get``: verified, atomic, resumable, quota-safe.

Upload (docs/protocol.md §5): bytes go to a partial under ``.ftpd/partial`` while they
are hashed; only when the sender's digest matches is the partial renamed over the real
name.  A resumed upload first hashes the partial it continues, and tells the client that
prefix digest so a changed source is restarted, never spliced.  The remaining bytes are
reserved against the quota before the first one is written.

Download: the recorded digest goes in the response header, then ``socket.sendfile``
streams the file with no copy through Python and no second pass.

This module must never let a byte land under a real name before its digest matched.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import posixpath
import stat as stat_mod
import time
from pathlib import Path
from typing import TYPE_CHECKING

from ftpd import store

from ftpd.framed import protocol

from ftpd.framed import streams
from ftpd.errors import BadRequestError, ChecksumError, ConflictError, NotFoundError, ProtocolError
from ftpd.logs import clean
from ftpd.framed.protocol import OK, READY_FOR_DATA, Request, Response

if TYPE_CHECKING:
    from ftpd.framed.session import FramedSession

logger = logging.getLogger(__name__)
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
#: Receive buffer per upload: big enough for full speed, small enough for 100s of uploads.
RECV_CHUNK = 256 * 1024


class _Sink:
    """Writes to the partial; after a write error it keeps the error and discards the rest.

    Discarding lets the daemon read the body to its end and still answer with a framed
    error (disk full, quota of the file system) instead of cutting the connection.
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.written = 0
        self.error: OSError | None = None

    def __call__(self, view: memoryview) -> None:
        if self.error is not None:
            return
        try:
            while view:
                n = os.write(self.fd, view)
                self.written += n
                view = view[n:]
        except OSError as exc:
            self.error = exc
            if exc.errno in _DISK_FULL:  # give the space back now, not after the body
                with contextlib.suppress(OSError):
                    os.ftruncate(self.fd, 0)


def receive_upload(h: "FramedSession", request: Request) -> None:
    args = request.args
    jail = h._jail
    shown = str(jail.normalize(args["path"]))
    size, digest = args["size"], args.get("digest", protocol.DEFAULT_DIGEST)
    streams.new_hasher(digest)  # validates the name before anything is touched
    inline = request.body is not None
    if inline and (request.body != size or not protocol.is_hex_digest(args.get("checksum"))):
        raise BadRequestError("an inline put needs body == size and a hex 'checksum'")
    target = jail.resolve(args["path"])
    try:
        st = os.stat(target)
    except FileNotFoundError:
        st = None
    if st is not None and stat_mod.S_ISDIR(st.st_mode):
        raise ConflictError(f"{shown}: is a directory")
    if st is None:  # a new file: its folder must exist
        try:
            st = os.stat(target.parent)
        except FileNotFoundError:
            st = None
        if st is None or not stat_mod.S_ISDIR(st.st_mode):
            raise NotFoundError(f"{posixpath.dirname(shown)}: no such directory")
    with h.server.claim(target, h):  # one upload per target: partials are never shared
        return _receive(h, request, target, shown, st.st_dev)


def _receive(h: "FramedSession", request: Request, target: Path, shown: str, dev: int) -> None:
    args, inline = request.args, request.body is not None
    size, digest = args["size"], args.get("digest", protocol.DEFAULT_DIGEST)
    ledger = h.server.ledger(h.user or "")
    partial, offset, freed = store.partial_for(h._jail.root, target, size, dev)
    if offset and (inline or not args.get("resume", True) or offset > size):
        freed += store.discard(partial)
        offset = 0
    ledger.adjust(-freed)
    upload = _Upload(h, partial, size, offset, digest)
    upload.reservation = ledger.reserve(size - offset, h.account().quota_bytes)
    try:
        with h.server.transfer(), open(partial, "ab" if offset else "wb") as f:
            if inline:
                upload.receive(f, size)
                checksum = args["checksum"]
            else:
                checksum = upload.two_phase(f)
            actual = upload.verify(f, checksum, shown)
        old_size = store.regular_size(target)  # target is resolved: no link here
        store.install(partial, target)
        upload.delta -= old_size
    finally:
        upload.reservation.close(upload.delta)
    elapsed = max(time.monotonic() - upload.started, 1e-9)
    note = f"PUT size={size} from={upload.offset} {(size - upload.offset) / elapsed / 1e6:.1f} MB/s"
    data = {"path": shown, "size": size, "offset": upload.offset, "checksum": actual, "digest": digest}
    response = Response(True, OK, f"stored {shown}", data=data)
    h.send(response)  # answer first, then log: the client does not wait for the log line
    h.log_command(response, note)
    return None


class _Upload:
    """State of one upload in one session thread: hash, bytes added, the reservation."""

    def __init__(self, h: "FramedSession", partial: os.PathLike, size: int, offset: int, digest: str) -> None:
        self.h, self.partial, self.size, self.offset, self.digest = h, partial, size, offset, digest
        self.hasher = streams.new_hasher(digest)
        self.delta = 0  # net bytes this upload added on disk, for the ledger
        self.sink: _Sink | None = None
        self.reservation = None  # type: ignore[assignment]
        self.started = time.monotonic()

    def receive(self, f, nbytes: int) -> None:  # type: ignore[no-untyped-def]
        """Read ``nbytes`` of body into the partial, hashing them; count what was written."""
        self.h._pending_body = 0  # from here on the body is ours to read
        self.sink = _Sink(f.fileno())
        try:
            streams.copy_exact(self.h.reader, self.sink, nbytes, self.hasher, chunk=RECV_CHUNK)
        finally:
            self.delta += self.sink.written

    def two_phase(self, f) -> str:  # type: ignore[no-untyped-def]
        """150 with the resume offset -> data frame -> body -> end frame with the checksum."""
        if self.offset:
            with open(self.partial, "rb") as prefix:
                streams.copy_exact(prefix, None, self.offset, self.hasher)
        data = {"offset": self.offset, "size": self.size, "digest": self.digest}
        if self.offset:
            data["prefix_checksum"] = self.hasher.copy().hexdigest()
        self.h.send(Response(True, READY_FOR_DATA, f"send from byte {self.offset}", data=data))
        frame = protocol.to_data(_read_frame(self.h))
        self.h._pending_body = frame.body  # drained by the dispatcher if anything fails first
        start = self.offset if frame.offset is None else frame.offset
        if start not in (0, self.offset):
            raise ProtocolError(f"a data frame may start at 0 or {self.offset}, not {start}")
        if start != self.offset:  # the client's source changed: start afresh, never splice
            f.truncate(0)
            self.hasher = streams.new_hasher(self.digest)
            self.delta -= self.offset
            self.reservation.grow(self.offset)
            self.offset = 0
        if frame.body != self.size - start:
            raise ProtocolError(f"the data frame must carry exactly {self.size - start} bytes")
        self.receive(f, frame.body)
        return protocol.to_end(_read_frame(self.h)).checksum

    def verify(self, f, checksum: str, shown: str) -> str:  # type: ignore[no-untyped-def]
        """Raise on a write error or a digest mismatch (discarding the partial); else record."""
        if self.sink is not None and self.sink.error is not None:
            # Disk full: give the space back at once rather than hold a partial that
            # blocks every user of the disk; other write errors keep it resumable.
            if self.sink.error.errno in _DISK_FULL:  # already truncated by the sink
                store.discard(self.partial)
                self.delta -= self.offset + self.sink.written
            raise self.sink.error
        if self.h.server.config.fsync:
            os.fsync(f.fileno())
        actual = self.hasher.hexdigest()
        if actual != checksum:
            self.delta -= store.discard(self.partial)
            raise ChecksumError(
                f"{shown}: {self.digest} mismatch (sent {checksum}, received {actual}); "
                "nothing was installed",
                received=actual,
            )
        store.record_digest(f.fileno(), os.fstat(f.fileno()), self.digest, actual)
        return actual


def _read_frame(h: "FramedSession") -> dict:
    h.reader.deadline = time.monotonic() + h.server.config.idle_timeout
    try:
        return streams.read_header(h.reader)
    finally:
        h.reader.deadline = None
        h.sock.settimeout(h.server.config.idle_timeout)


def send_download(h: "FramedSession", request: Request) -> None:
    args = request.args
    jail = h._jail
    shown = str(jail.normalize(args["path"]))
    digest = args.get("digest", protocol.DEFAULT_DIGEST)
    streams.new_hasher(digest)  # validates the name
    real = jail.existing(args["path"])
    if real.is_dir():
        raise ConflictError(f"{shown}: is a directory (use get -r)")
    try:
        f = store.open_regular(real)
    except ConflictError:
        raise ConflictError(f"{shown}: not a regular file") from None
    with f:
        st = os.fstat(f.fileno())
        with h.server.transfer():
            checksum = store.digest_of(f, digest)
            size = st.st_size
            offset = args.get("offset", 0)
            if args.get("checksum") != checksum or offset > size:
                offset = 0  # not the same source: send it all, never splice
            count = size - offset
            data = {"size": size, "offset": offset, "checksum": checksum, "digest": digest}
            response = Response(True, OK, f"sending {shown}", data=data, body=count)
            h.respond(response, log=False)
            started = time.monotonic()
            sent = h.sock.sendfile(f, offset, count) if count else 0
    if sent != count:
        # The file shrank under us: the frame cannot be completed, so the stream is broken.
        h.closing = True
        logger.warning("GET user=%s path=%s short by %d bytes; closing", h.user, clean(shown), count - sent)
        return
    elapsed = max(time.monotonic() - started, 1e-9)
    h.log_command(response, f"GET size={size} from={offset} {count / elapsed / 1e6:.1f} MB/s")
