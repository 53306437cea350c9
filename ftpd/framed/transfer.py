"""The framed protocol's side of ``put`` and ``get``: frames around the core's transfers.

Upload (docs/protocol.md §5.1): the core's ``Upload`` owns the partial, the hasher, the
quota reservation and the claim; this module only moves the frames and the body into it
and answers.  A resumed upload tells the client the prefix digest of what is held, so a
changed source is restarted, never spliced.

Download: the digest goes in the response header, then ``socket.sendfile`` streams the
file with no copy through Python and no second pass.

This module must never touch the disk or the quota itself: it calls ``write``,
``commit`` and ``abort`` on the core's objects.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ftpd.core.files import Upload
from ftpd.errors import BadRequestError, ConflictError, ProtocolError, QuotaExceededError
from ftpd.framed import protocol, streams
from ftpd.framed.protocol import OK, READY_FOR_DATA, Request, Response
from ftpd.logs import clean

if TYPE_CHECKING:
    from ftpd.framed.session import FramedSession

logger = logging.getLogger(__name__)
#: Receive buffer per upload: big enough for full speed, small enough for 100s of uploads.
RECV_CHUNK = 256 * 1024


@dataclass
class PendingPut:
    """A small put received whole and verified by size, waiting for its group commit.

    The session answers it when the batch is committed (``FramedSession.settle``), in
    the order of the requests, so an answer of "stored" always follows the flushes that
    made the file and its name durable (docs/protocol.md §5.1)."""

    upload: Upload
    checksum: str
    mtime: float | None
    request: Request
    header: dict[str, Any]
    started: float  # time.perf_counter() at dispatch: the log line's time


def receive_upload(h: FramedSession, request: Request) -> None:
    args = request.args
    files = h._files
    size, digest = args["size"], args.get("digest", protocol.DEFAULT_DIGEST)
    inline = request.body is not None
    if inline and (request.body != size or not protocol.is_hex_digest(args.get("checksum"))):
        raise BadRequestError("an inline put needs body == size and a hex 'checksum'")
    resume = not inline and args.get("resume", True)
    if h.commits and str(files.normalize(args["path"])) in {p.upload.shown for p in h.commits}:
        h.settle()  # the same path again: the first must be installed before this begins
    try:
        upload = files.upload(args["path"], size, digest, resume=resume)
    except (ConflictError, QuotaExceededError):
        if not h.commits:
            raise
        # The target may be one of our puts waiting (by another path: a link), or the
        # room may be held by them (a replaced file frees its bytes only once installed).
        h.settle()
        upload = files.upload(args["path"], size, digest, resume=resume)
    deferred = False
    try:
        if inline:
            if h.commits and not h.body_ready(size):
                h.settle()  # never wait on the client with puts unanswered
            _receive(h, upload, size)
            put = PendingPut(
                upload, args["checksum"], args.get("mtime"), request, h._header, h._started
            )
            deferred = True
            h.defer(put)  # committed with the puts that follow it, if they are here already
            return
        else:
            checksum = _two_phase(h, upload)
        actual = upload.commit(checksum, args.get("mtime"))
    finally:
        if not deferred:
            upload.abort()  # a no-op after a commit
    answer_upload(h, upload, request, actual)


def answer_upload(h: FramedSession, upload: Upload, request: Request, actual: str) -> None:
    """Answer a stored put, then log it: the client does not wait for the log line."""
    size = upload.size
    elapsed = max(time.monotonic() - upload.started, 1e-9)
    rate = (size - upload.offset) / elapsed / 1e6
    note = f"PUT size={size} from={upload.offset} {rate:.1f} MB/s"
    data = {
        "path": upload.shown,
        "size": size,
        "offset": upload.offset,
        "checksum": actual,
        "digest": request.args.get("digest", protocol.DEFAULT_DIGEST),
    }
    response = Response(True, OK, f"stored {upload.shown}", data=data)
    h.send(response)
    h.log_command(response, note)


def _receive(h: FramedSession, upload: Upload, nbytes: int) -> None:
    """Read ``nbytes`` of body into the upload."""
    h._pending_body = 0  # from here on the body is ours to read
    streams.copy_exact(h.reader, upload.write, nbytes, chunk=RECV_CHUNK)


def _two_phase(h: FramedSession, upload: Upload) -> str:
    """150 with the resume offset -> data frame -> body -> end frame with the checksum."""
    data: dict[str, Any] = {"offset": upload.offset, "size": upload.size, "digest": upload.digest}
    prefix = upload.prefix_checksum()
    if prefix is not None:
        data["prefix_checksum"] = prefix
    h.send(Response(True, READY_FOR_DATA, f"send from byte {upload.offset}", data=data))
    frame = protocol.to_data(_read_frame(h))
    h._pending_body = frame.body  # drained by the dispatcher if anything fails first
    start = upload.offset if frame.offset is None else frame.offset
    if start not in (0, upload.offset):
        raise ProtocolError(f"a data frame may start at 0 or {upload.offset}, not {start}")
    if start != upload.offset:  # the client's source changed: start afresh, never splice
        upload.restart()
    if frame.body != upload.size - start:
        raise ProtocolError(f"the data frame must carry exactly {upload.size - start} bytes")
    _receive(h, upload, frame.body)
    return protocol.to_end(_read_frame(h)).checksum


def _read_frame(h: FramedSession) -> dict[str, Any]:
    h.reader.deadline = time.monotonic() + h.server.config.idle_timeout
    try:
        return streams.read_header(h.reader)
    finally:
        h.reader.deadline = None
        h.sock.settimeout(h.server.config.idle_timeout)


def send_download(h: FramedSession, request: Request) -> None:
    args = request.args
    digest = args.get("digest", protocol.DEFAULT_DIGEST)
    with h._files.download(args["path"], digest) as download:
        size, checksum = download.size, download.checksum
        offset = args.get("offset", 0)
        if args.get("checksum") != checksum or offset > size:
            offset = 0  # not the same source: send it all, never splice
        count = size - offset
        data = {
            "size": size,
            "offset": offset,
            "checksum": checksum,
            "digest": digest,
            "mtime": download.mtime,
        }
        response = Response(True, OK, f"sending {download.shown}", data=data, body=count)
        h.respond(response, log=False)
        started = time.monotonic()
        sent = h.sock.sendfile(download, offset, count) if count else 0
    if sent != count:
        # The file shrank under us: the frame cannot be completed, so the stream is broken.
        h.closing = True
        logger.warning(
            "GET user=%s path=%s short by %d bytes; closing",
            h.user,
            clean(download.shown),
            count - sent,
        )
        return
    elapsed = max(time.monotonic() - started, 1e-9)
    h.log_command(response, f"GET size={size} from={offset} {count / elapsed / 1e6:.1f} MB/s")
