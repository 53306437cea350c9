"""The client's side of put and get: hash while sending, verify before naming, resume.

Upload: small files go inline in one round trip; larger ones ask the server for its
resume offset, check the server's prefix digest against the local file (a changed source
restarts from zero, never splices), then stream the rest while hashing it and send the
whole-file digest last.  Download: bytes land in a local partial named after the
remote digest (``.NAME.<digest>.ftpd-part``); only a whole-file match renames it.

Many files (``put -r``, ``get -r``, wildcards): ``put_many`` and ``get_many`` send the
requests for small files without waiting for each answer (up to 32 in flight; the
daemon answers in order, a ``get`` answer followed by its body) and take the answers in
the order asked; large files go one at a time.  Each file is verified and resumable as
a single transfer is.  The first failure stops the sending; the answers already in
flight are read before it is raised, so the connection stays in step.

Both directions can keep the modification time (``preserve``, the ``-p`` of put and get).
An upload refused with ``409 conflict`` because another session is still uploading to
the same name waits and retries for up to ``BUSY_WAIT_S`` (the daemon hands a silent
upload over after its ``takeover_after``, 15 s by default).  A Ctrl-C that arrives after
the whole file was sent does not throw the server's answer away: if the file was stored,
``Interrupted`` carries that result.

This module must never leave a file under its real name that failed verification.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import posixpath
import stat as stat_mod
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from ftp_client.connection import Connection
from ftpd import errors
from ftpd.framed import protocol, streams
from ftpd.framed.protocol import Data, End, Request

#: Files up to this size go in one frame with their digest (no resume needed).
INLINE_MAX = 1024 * 1024
SEND_CHUNK = 1024 * 1024
#: Files listed at up to this size are downloaded pipelined (``get_many``); larger ones
#: stream one at a time, each with its own bar.
PIPELINE_MAX = INLINE_MAX
#: After a local write error, up to this much of the rest of a download is read and
#: dropped so that the connection stays in step; past it the connection is closed.
DRAIN_MAX = 16 * 1024 * 1024
RECV_CHUNK = streams.CHUNK  # 1 MiB: smaller reads cost a 1 GiB get ~10 % here
PARTIAL_SUFFIX = ".ftpd-part"
#: How long an upload refused as "being uploaded by another session" keeps retrying.
BUSY_WAIT_S = 20.0
#: After a Ctrl-C with every byte sent, how long to wait for the server's verdict.
INTERRUPT_GRACE_S = 5.0
# The clock and the pause between retries (tests replace them: no real waiting there).
_clock = time.monotonic
_sleep = time.sleep


class Progress(Protocol):
    def update(self, n: int) -> Any: ...
    def close(self) -> Any: ...


#: Makes a progress bar: (label, total bytes, initial offset) -> Progress.
ProgressFactory = Callable[[str, int, int], Progress]


class _NoProgress:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def no_progress(label: str, total: int, initial: int) -> Progress:
    return _NoProgress()


@dataclass
class Result:
    """What one transfer did: where it started (resume offset) and the verified digest."""

    path: str
    size: int
    offset: int
    checksum: str
    restarted: bool = False
    #: The modification time given to the copy (``preserve``), else None.
    mtime: float | None = None


class Interrupted(KeyboardInterrupt):
    """Ctrl-C came after every byte was sent, and the server answered anyway.

    ``result`` is set when the server stored the file; ``error`` when it refused it.
    Being a KeyboardInterrupt, it still stops whatever loop it crosses.
    """

    def __init__(self, result: Result | None = None, error: errors.FTPError | None = None) -> None:
        super().__init__()
        self.result, self.error = result, error


def _discard(bar: Progress) -> None:
    """A failed transfer's bar is wiped (if the bar knows how), not left at its figure."""
    discard = getattr(bar, "discard", None)
    if discard is not None:
        discard()


def is_busy(exc: BaseException) -> bool:
    """A 409 meaning "another session is uploading this name right now" (worth a retry)."""
    if not isinstance(exc, errors.ConflictError):
        return False
    text = exc.message.lower()
    return "retry_after" in exc.data or any(
        hint in text
        for hint in ("another session", "being uploaded", "another upload", "in progress")
    )


def valid_time(value: object) -> float | None:
    """A modification time as the protocol allows it (0 .. MAX_TIME_S, finite), else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    if not math.isfinite(value) or not 0 <= value <= protocol.MAX_TIME_S:
        return None
    return value


def _await_answer(conn: Connection) -> tuple[Any, bool]:
    """The server's answer to a fully sent upload; (response, True) if Ctrl-C came first.

    The bytes are all with the server, so its verdict is what counts: wait a little for
    it.  With no verdict in time the interrupt goes on as a plain KeyboardInterrupt; a
    refusal comes back as ``Interrupted(error=...)``.
    """
    try:
        return conn.read_response(), False
    except KeyboardInterrupt:
        pass
    timeout = conn.sock.gettimeout()
    try:
        conn.sock.settimeout(INTERRUPT_GRACE_S)
        try:
            response = conn.read_response()
        finally:
            conn.sock.settimeout(timeout)
    except errors.FTPError as exc:
        if exc.fatal or isinstance(exc, streams.ConnectionClosed):
            conn.close()
            raise KeyboardInterrupt from None
        raise Interrupted(error=exc) from None
    except (OSError, KeyboardInterrupt):
        conn.close()
        raise KeyboardInterrupt from None
    return response, True


# --- upload -------------------------------------------------------------------------


def put_file(
    conn: Connection,
    local: Path,
    remote: str,
    progress: ProgressFactory = no_progress,
    notice: Callable[[str], None] = lambda _m: None,
    digest: str = protocol.DEFAULT_DIGEST,
    preserve: bool = False,
) -> Result:
    """Upload ``local`` to ``remote``, resuming a partial the server holds for it.

    ``digest`` is the protocol's per-transfer digest (md5 unless negotiated otherwise).
    ``preserve`` sends the local modification time (``mtime``) for the server to keep.
    While another session is uploading to the same name, waits up to ``BUSY_WAIT_S``.
    """
    deadline, pause = None, 0.5
    while True:
        try:
            return _put_once(conn, local, remote, progress, notice, digest, preserve)
        except errors.ConflictError as exc:
            if not is_busy(exc):
                raise
            now = _clock()
            if deadline is None:
                deadline = now + BUSY_WAIT_S
                notice(
                    f"{remote} is being uploaded by another session; "
                    f"waiting up to {BUSY_WAIT_S:.0f} s for it to finish"
                )
            if now >= deadline:
                raise errors.ConflictError(
                    f"{remote}: still being uploaded by another session after "
                    f"{BUSY_WAIT_S:.0f} s; try again later"
                ) from None
            _sleep(min(pause, deadline - now))
            pause = min(pause * 2, 2.0)


def _put_once(conn, local, remote, progress, notice, digest, preserve) -> Result:
    with open(local, "rb") as f:
        size = _regular_size(f, local)
        mtime = _local_time(f, local, notice) if preserve else None
        if size <= INLINE_MAX:
            bar = progress(remote, size, 0)
            try:
                _send_inline(conn, f, size, local, remote, digest, mtime)
                response, interrupted = _await_answer(conn)
                bar.update(size)
            except BaseException:
                _discard(bar)
                raise
            finally:
                bar.close()
            result = Result(remote, size, 0, response.data["checksum"], mtime=mtime)
            if interrupted:
                raise Interrupted(result)
            return result
        return _put_stream(conn, f, size, remote, progress, notice, digest, mtime)


def _local_time(f: Any, local: Path, notice: Callable[[str], None]) -> float | None:
    mtime = valid_time(os.fstat(f.fileno()).st_mtime)
    if mtime is None:
        notice(f"{local}: its modification time cannot be sent (before 1970?); not kept")
    return mtime


def put_many(
    conn: Connection,
    pairs: list[tuple[Path, str]],
    progress: ProgressFactory = no_progress,
    notice: Callable[[str], None] = lambda _m: None,
    window: int = 32,
    digest: str = protocol.DEFAULT_DIGEST,
    preserve: bool = False,
    done: Callable[[Result, int, int], None] | None = None,
) -> list[Result]:
    """Upload many files, keeping up to ``window`` small (inline) puts in flight.

    The daemon answers in order, so small files are sent without waiting for each
    answer (pipelining): client and daemon work at the same time instead of in turn.
    Large files go one at a time through ``put_file`` (resumable).  Stops at the first
    failure (the server's refusal, or a local file that cannot be read), after
    collecting the answers already in flight, so the connection stays usable, and
    raises it.  A small file refused because another session is uploading it is
    retried through ``put_file`` (which waits) once the pipeline is drained.

    ``done(result, index, count)`` is told of each stored file; without it each one is
    a notice ``[index/count] remote``.
    """
    results: list[Result] = []
    in_flight: deque[tuple[Path, str, int, float | None]] = deque()
    busy: list[tuple[Path, str]] = []
    failure: Exception | None = None

    def finished(result: Result) -> None:
        results.append(result)
        if done is not None:
            done(result, len(results), len(pairs))
        else:
            notice(f"[{len(results)}/{len(pairs)}] {result.path}")

    def failed(exc: Exception) -> None:
        nonlocal failure
        if conn.closed:
            raise exc
        failure = failure or exc

    def collect(keep: int) -> None:
        while len(in_flight) > keep:
            local, remote, size, mtime = in_flight.popleft()
            try:
                response = conn.read_response()
            except errors.FTPError as exc:
                if exc.fatal or isinstance(exc, streams.ConnectionClosed):
                    raise
                if is_busy(exc):
                    busy.append((local, remote))
                else:
                    failed(exc)
                continue
            finished(Result(remote, size, 0, response.data["checksum"], mtime=mtime))

    def put_one(local: Path, remote: str) -> None:
        try:
            result = put_file(conn, local, remote, progress, notice, digest, preserve)
        except (errors.FTPError, OSError) as exc:
            failed(exc)
            return
        finished(result)

    try:
        for local, remote in pairs:
            if failure is not None:
                break
            try:
                with open(local, "rb") as f:
                    size = _regular_size(f, local)
                    if size > INLINE_MAX:
                        request = None
                    else:
                        mtime = _local_time(f, local, notice) if preserve else None
                        request, data = _inline_request(f, size, local, remote, digest, mtime)
            except (errors.FTPError, OSError) as exc:  # local: nothing of it was sent
                failed(exc)
                break
            if request is None:
                collect(0)
                if failure is None:
                    put_one(local, remote)
                continue
            conn.send(request, data)
            in_flight.append((local, remote, size, mtime))
            collect(window - 1)
        collect(0)
        for local, remote in busy if failure is None else []:
            put_one(local, remote)
            if failure is not None:
                break
    except BaseException:
        if in_flight:  # answers still unread: this connection is out of step for good
            conn.close()
        raise
    if failure is not None:
        raise failure
    return results


def make_dirs(conn: Connection, paths: Sequence[str], window: int = 32) -> None:
    """``mkdir -p`` each of ``paths`` in order, pipelined (the answers are read in order).

    Stops asking at the first refusal, reads the answers in flight, then raises it.
    """
    in_flight = 0
    failure: errors.FTPError | None = None

    def collect(keep: int) -> None:
        nonlocal in_flight, failure
        while in_flight > keep:
            in_flight -= 1
            try:
                conn.read_response()
            except errors.FTPError as exc:
                if exc.fatal or isinstance(exc, streams.ConnectionClosed):
                    conn.close()
                    raise
                failure = failure or exc

    try:
        for path in paths:
            if failure is not None:
                break
            conn.send(Request("mkdir", {"path": path, "parents": True}))
            in_flight += 1
            collect(window - 1)
        collect(0)
    except BaseException:
        if in_flight:
            conn.close()
        raise
    if failure is not None:
        raise failure


def _regular_size(f: Any, local: Path) -> int:
    st = os.fstat(f.fileno())
    if not stat_mod.S_ISREG(st.st_mode):
        raise errors.BadRequestError(f"{local}: not a regular file")
    return st.st_size


def _send_inline(
    conn: Connection,
    f: Any,
    size: int,
    local: Path,
    remote: str,
    digest: str,
    mtime: float | None = None,
) -> None:
    """One frame holding the whole (small) file and its digest; the answer is read later."""
    conn.send(*_inline_request(f, size, local, remote, digest, mtime))


def _inline_request(
    f: Any, size: int, local: Path, remote: str, digest: str, mtime: float | None
) -> tuple[Request, bytes]:
    """The inline ``put`` of a small file and its body; raises before anything is sent."""
    data = f.read(size + 1)
    if len(data) != size:
        raise errors.ConflictError(f"{local}: changed while being read")
    hasher = streams.new_hasher(digest)
    hasher.update(data)
    args: dict[str, Any] = {"path": remote, "size": size, "checksum": hasher.hexdigest()}
    if digest != protocol.DEFAULT_DIGEST:
        args["digest"] = digest
    if mtime is not None:
        args["mtime"] = mtime
    return Request("put", args, size), data


def _arg(digest: str) -> str | None:
    """The ``digest`` request arg: left out for the default, as older callers sent it."""
    return None if digest == protocol.DEFAULT_DIGEST else digest


def _put_stream(conn, f, size, remote, progress, notice, digest, mtime=None) -> Result:
    # A resumed upload's 150 comes after the daemon re-hashed its partial (up to ``size``
    # bytes): allow for that at a conservative 50 MB/s on top of the usual timeout.
    timeout = conn.sock.gettimeout()
    conn.sock.settimeout(None if timeout is None else timeout + size / 50e6)
    try:
        ready = conn.call("put", path=remote, size=size, digest=_arg(digest), mtime=mtime)
    finally:
        conn.sock.settimeout(timeout)
    offset = int(ready.data.get("offset", 0))
    hasher = streams.new_hasher(digest)
    start, restarted = 0, False
    if offset:
        streams.copy_exact(f, None, offset, hasher)  # hash our own prefix to compare
        if hasher.hexdigest() == ready.data.get("prefix_checksum"):
            start = offset
            notice(f"resuming upload of {remote} at byte {offset} of {size}")
        else:
            notice(f"the server's partial {remote} came from another source; restarting")
            hasher, restarted = streams.new_hasher(digest), True
            f.seek(0)
    conn.send(Data(size - start, start))
    bar = progress(remote, size, start)
    try:
        _send_body(conn, f, size - start, hasher, bar)
        conn.send(End(hasher.hexdigest()))
        response, interrupted = _await_answer(conn)
    except BaseException:
        _discard(bar)
        raise
    finally:
        bar.close()
    result = Result(remote, size, start, response.data["checksum"], restarted, mtime)
    if interrupted:
        raise Interrupted(result)
    return result


def _send_body(conn: Connection, f: Any, count: int, hasher: Any, bar: Progress) -> None:
    buf = bytearray(SEND_CHUNK)
    view = memoryview(buf)
    left = count
    while left:
        n = f.readinto(view[: min(left, SEND_CHUNK)])
        if not n:
            conn.close()  # the frame cannot be completed; the server keeps the partial
            raise errors.ConflictError("the local file shrank while it was being sent")
        hasher.update(view[:n])
        conn.sock.sendall(view[:n])
        bar.update(n)
        left -= n


# --- download -----------------------------------------------------------------------


def _partial_name(name: str, checksum: str) -> str:
    candidate = f".{name}.{checksum}{PARTIAL_SUFFIX}"
    if len(os.fsencode(candidate)) <= 255:
        return candidate
    return f".{_short_name(name)}.{checksum}{PARTIAL_SUFFIX}"


def _short_name(name: str) -> str:
    """The stand-in for a name too long to carry a digest and the suffix."""
    return hashlib.sha256(os.fsencode(name)).hexdigest()[:16]


def _scan_partials(folder: Path) -> dict[str, list[Path]]:
    """The download partials in ``folder``, by the name (or short name) they are for.

    One listing of the folder, however many files are then looked up in it.
    """
    found: dict[str, list[Path]] = {}
    try:
        entries = os.listdir(folder)
    except OSError:  # no folder (yet), or not one: the download itself will say so
        return found
    for entry in entries:
        if not (entry.startswith(".") and entry.endswith(PARTIAL_SUFFIX)):
            continue
        name, _, checksum = entry[1 : -len(PARTIAL_SUFFIX)].rpartition(".")
        if name and protocol.is_hex_digest(checksum):
            found.setdefault(name, []).append(folder / entry)
    return found


def _newest_first(paths: list[Path]) -> list[Path]:
    if len(paths) < 2:
        return paths

    def mtime(path: Path) -> float:
        try:
            return path.stat().st_mtime
        except OSError:
            return 0.0

    return sorted(paths, key=mtime, reverse=True)


class _PartialIndex:
    """Partials left by earlier downloads, listed once per local folder."""

    def __init__(self) -> None:
        self._folders: dict[Path, dict[str, list[Path]]] = {}

    def of(self, local: Path) -> list[Path]:
        """The partials for ``local`` (any remote digest), the newest first."""
        folder = self._folders.get(local.parent)
        if folder is None:
            folder = self._folders[local.parent] = _scan_partials(local.parent)
        if not folder:
            return []
        return _newest_first(folder.get(local.name, []) + folder.get(_short_name(local.name), []))


class _KnownPartials:
    """The download partials of each local folder, kept between the ``get`` commands of
    this process (a batch file of 1,000 ``get`` lines would otherwise list a folder of
    1,000 files 1,000 times: half a millisecond each).

    A folder is listed again whenever its modification time is not the one recorded,
    and after a download's own rename the record is brought up to date here.  What
    another process changed between that download's start and its rename can be
    missed; it costs at most a resume not offered (the partials offered are checked
    again before they are used, and the server checks the digest of any resume).
    """

    def __init__(self) -> None:
        self._folders: dict[Path, tuple[int, dict[str, list[Path]]]] = {}

    def of(self, local: Path) -> list[Path]:
        """The partials for ``local`` (any remote digest), the newest first."""
        folder = local.parent
        try:
            stamp = os.stat(folder).st_mtime_ns
        except OSError:  # no folder (yet), or not one: the download itself will say so
            return []
        known = self._folders.get(folder)
        if known is None or known[0] != stamp:
            known = self._folders[folder] = (stamp, _scan_partials(folder))
        found = known[1]
        if not found:
            return []
        return _newest_first(found.get(local.name, []) + found.get(_short_name(local.name), []))

    def saved(self, local: Path) -> None:
        """A download to ``local`` took its name: none of its partials are left."""
        folder = local.parent
        known = self._folders.pop(folder, None)
        if known is None:
            return
        found = known[1]
        found.pop(local.name, None)
        found.pop(_short_name(local.name), None)
        with contextlib.suppress(OSError):
            self._folders[folder] = (os.stat(folder).st_mtime_ns, found)

    def forget(self, local: Path) -> None:
        """A download to ``local`` failed: list its folder again next time."""
        self._folders.pop(local.parent, None)


_KNOWN = _KnownPartials()


def _partials(local: Path) -> list[Path]:
    """Partials left by earlier downloads to ``local`` (any remote digest)."""
    return _KNOWN.of(local)


@dataclass
class _Wanted:
    """One download asked for: where it goes, the partials it may resume, what was asked."""

    remote: str
    local: Path
    olds: list[Path]
    known_mtime: float | None = None
    offset: int = 0

    def request(self, digest: str) -> Request:
        """The ``get``, offering the newest partial (its size and the digest in its name)."""
        args: dict[str, Any] = {"path": self.remote}
        while self.olds:
            try:
                self.offset = self.olds[0].stat().st_size
                break
            except OSError:  # gone since it was listed: not offered
                self.olds.pop(0)
        if self.olds and self.offset:
            args["offset"] = self.offset
            args["checksum"] = _digest_in(self.olds[0])
        if digest != protocol.DEFAULT_DIGEST:
            args["digest"] = digest
        return Request("get", args)


class _Body:
    """The body of one ``get`` answer, which must be read to its end whatever happens here.

    ``broken`` is set (and the connection closed) when the stream itself failed.
    """

    def __init__(self, conn: Connection, size: int, buf: bytearray) -> None:
        self.conn, self.left, self.view = conn, size, memoryview(buf)
        self.broken = False

    def _recv(self) -> memoryview:
        view = self.view[: min(self.left, len(self.view))]
        try:
            n = self.conn.reader.readinto(view)
        except TimeoutError:
            self._break()
            raise errors.TimeoutError_(
                "the server stopped sending in the middle of a file"
            ) from None
        except OSError:
            self._break()
            raise
        if not n:
            self._break()
            raise streams.ConnectionClosed(
                "the server closed the connection in the middle of a file"
            )
        self.left -= n
        return view[:n]

    def _break(self) -> None:
        self.broken = True
        self.conn.close()

    def read(
        self, write: Callable[[memoryview], object], hasher: Any, update: Callable[[int], object]
    ) -> None:
        while self.left:
            piece = self._recv()
            hasher.update(piece)
            write(piece)
            update(len(piece))

    def skip(self) -> None:
        """A local failure stopped the writing: drop the rest, so the next answer can be
        read; past ``DRAIN_MAX`` close the connection instead (the next command reconnects)."""
        if self.left > DRAIN_MAX:
            self._break()
            return
        while self.left:
            self._recv()


def _receive(
    conn: Connection,
    wanted: _Wanted,
    response: Any,
    progress: ProgressFactory,
    notice: Callable[[str], None],
    preserve: bool,
    buf: bytearray,
) -> tuple[Result, bool]:
    """Take one ``get`` answer and its body into the local partial; rename it on a match.

    Returns the result and whether the remote modification time is still to be asked
    (``preserve`` without a time from the answer or the listing).  A local failure
    (disk full, a folder that is a file) is raised after the body was read, so the
    connection stays in step; the partial is kept for a resume.
    """
    data, remote, local = response.data, wanted.remote, wanted.local
    try:
        size, start, remote_sum = int(data["size"]), int(data["offset"]), str(data["checksum"])
    except (KeyError, TypeError, ValueError):
        size, start, remote_sum = -1, 0, ""
    partial = local.parent / _partial_name(local.name, remote_sum)
    if (
        not protocol.is_hex_digest(remote_sum)
        or not 0 <= start <= size
        or response.body != size - start
        or (start and (start != wanted.offset or partial != wanted.olds[0]))
    ):
        conn.close()
        raise errors.ProtocolError("the server's download header does not add up")
    body = _Body(conn, size - start, buf)
    hasher = streams.new_hasher(data.get("digest", protocol.DEFAULT_DIGEST))
    bar: Progress | None = None
    try:
        for old in wanted.olds:
            if old != partial or not start:
                old.unlink(missing_ok=True)
        if start:
            notice(f"resuming download of {remote} at byte {start} of {size}")
        elif wanted.offset:
            notice(f"{remote} changed on the server since the partial download; restarting")
        with open(partial, "ab" if start else "wb") as f:
            if start:
                with open(partial, "rb") as prefix:
                    streams.copy_exact(prefix, None, start, hasher)
            bar = progress(remote, size, start)
            body.read(f.write, hasher, bar.update)
    except OSError:
        if bar is not None:
            _discard(bar)
        if not body.broken:
            body.skip()
        raise
    except BaseException:
        if bar is not None:
            _discard(bar)
        if body.left:
            conn.close()  # the rest of the body is still coming: out of step for good
        raise
    finally:
        if bar is not None:
            bar.close()
    actual = hasher.hexdigest()
    if actual != remote_sum:
        partial.unlink(missing_ok=True)
        raise errors.ChecksumError(
            f"{remote}: {hasher.name} mismatch (server {remote_sum}, received {actual}); "
            "nothing was saved"
        )
    os.replace(partial, local)
    mtime = None
    if preserve:
        mtime = valid_time(data.get("mtime"))
        if mtime is None:
            mtime = valid_time(wanted.known_mtime)
        if mtime is not None:
            _keep_time(local, mtime)
    return Result(remote, size, start, actual, mtime=mtime), preserve and mtime is None


def _keep_time(local: Path, mtime: float) -> None:
    os.utime(local, (os.stat(local).st_atime, mtime))


def _stat_time(
    conn: Connection, remote: str, local: Path, notice: Callable[[str], None]
) -> float | None:
    """``get -p`` when neither the answer nor the listing had a time: ask with ``stat``."""
    mtime = valid_time(conn.call("stat", path=remote).data.get("mtime"))
    if mtime is None:
        notice(f"{remote}: the server gave no usable modification time; not kept")
    else:
        _keep_time(local, mtime)
    return mtime


def get_file(
    conn: Connection,
    remote: str,
    local: Path,
    progress: ProgressFactory = no_progress,
    notice: Callable[[str], None] = lambda _m: None,
    digest: str = protocol.DEFAULT_DIGEST,
    preserve: bool = False,
    known_mtime: float | None = None,
) -> Result:
    """Download ``remote`` to ``local`` via a verified partial; resume a matching partial.

    ``preserve`` gives the copy the remote modification time: the ``get`` answer's
    ``mtime`` if the server sends one, else ``known_mtime`` (from a listing), else a
    ``stat`` after the download.
    """
    if local.is_dir():
        raise errors.ConflictError(f"{local}: is a directory")
    wanted = _Wanted(remote, local, _partials(local), known_mtime)
    conn.send(wanted.request(digest))
    response = conn.read_response()
    try:
        result, ask = _receive(
            conn, wanted, response, progress, notice, preserve, bytearray(RECV_CHUNK)
        )
    except BaseException:
        _KNOWN.forget(local)
        raise
    _KNOWN.saved(local)
    if ask:
        result.mtime = _stat_time(conn, remote, local, notice)
    return result


def _digest_in(partial: Path) -> str:
    return partial.name[: -len(PARTIAL_SUFFIX)].rsplit(".", 1)[-1]


#: One file to download: (remote path, local path, its listing entry or {}).  The
#: entry's ``size`` chooses pipelined or streamed, its ``mtime`` serves ``preserve``.
GetJob = tuple[str, Path, Mapping[str, Any]]


def get_many(
    conn: Connection,
    jobs: Sequence[GetJob],
    progress: ProgressFactory = no_progress,
    notice: Callable[[str], None] = lambda _m: None,
    window: int = 32,
    digest: str = protocol.DEFAULT_DIGEST,
    preserve: bool = False,
    done: Callable[[Result, int, int], None] | None = None,
) -> list[Result]:
    """Download many files, keeping up to ``window`` small ``get`` requests in flight.

    The daemon answers in order, each answer followed by its body, so requests for
    small files (listed at up to ``PIPELINE_MAX`` bytes) are sent without waiting and
    the answers taken in the order asked: the round trips overlap.  Every file goes
    through the same verified partial as ``get_file`` (a partial left by an earlier
    run is offered for resume); larger files stream one at a time through
    ``get_file``, with their own bar.

    Stops at the first failure (the server's refusal, a digest mismatch, a local write
    error): nothing more is asked, the answers already in flight are taken in (so the
    connection stays usable), then the failure is raised.  A broken stream or Ctrl-C
    closes the connection instead; the partials stay for the next run.

    ``done(result, index, count)`` is told of each file, in order; without it each one
    is a notice ``[index/count] remote``.
    """
    results: list[Result] = []
    in_flight: deque[_Wanted] = deque()
    ask_time: list[tuple[str, Path]] = []
    failure: Exception | None = None
    index, buf = _PartialIndex(), bytearray(RECV_CHUNK)

    def finished(result: Result) -> None:
        results.append(result)
        if done is not None:
            done(result, len(results), len(jobs))
        else:
            notice(f"[{len(results)}/{len(jobs)}] {result.path}")

    def failed(exc: Exception) -> None:
        nonlocal failure
        if conn.closed:
            raise exc
        failure = failure or exc

    def collect(keep: int) -> None:
        while len(in_flight) > keep:
            wanted = in_flight.popleft()
            try:
                response = conn.read_response()
                result, ask = _receive(conn, wanted, response, no_progress, notice, preserve, buf)
            except (errors.FTPError, OSError) as exc:
                if getattr(exc, "fatal", False) or isinstance(exc, streams.ConnectionClosed):
                    conn.close()
                failed(exc)
                continue
            if ask:
                ask_time.append((wanted.remote, wanted.local))
            finished(result)

    try:
        for remote, local, entry in jobs:
            if failure is not None:
                break
            size = _size_of(entry)
            if size is None or size > PIPELINE_MAX:
                collect(0)
                if failure is not None:
                    break
                try:
                    known = valid_time(entry.get("mtime"))
                    result = get_file(
                        conn, remote, local, progress, notice, digest, preserve, known
                    )
                except (errors.FTPError, OSError) as exc:
                    failed(exc)
                    break
                finished(result)
                continue
            try:
                if local.is_dir():
                    raise errors.ConflictError(f"{local}: is a directory")
                wanted = _Wanted(remote, local, index.of(local), valid_time(entry.get("mtime")))
                request = wanted.request(digest)
            except (errors.FTPError, OSError) as exc:
                failed(exc)
                break
            conn.send(request)
            in_flight.append(wanted)
            collect(window - 1)
        collect(0)
        for remote, local in ask_time:
            _stat_time(conn, remote, local, notice)
    except BaseException:
        if in_flight:  # answers (and bodies) still unread: out of step for good
            conn.close()
        raise
    if failure is not None:
        raise failure
    return results


# --- trees --------------------------------------------------------------------------


def walk_local(root: Path) -> tuple[list[Path], list[Path]]:
    """(directories, files) under ``root``, parents first; symlinks are not followed."""
    dirs: list[Path] = []
    files: list[Path] = []
    for folder, subdirs, names in os.walk(root):
        subdirs.sort()
        base = Path(folder)
        dirs.extend(base / d for d in subdirs if not (base / d).is_symlink())
        files.extend(
            base / n for n in sorted(names) if (base / n).is_file() and not (base / n).is_symlink()
        )
    return dirs, files


def _safe_name(name: object) -> bool:
    """One plain path component: not empty, not ``.``/``..``, no ``/``, NUL or backslash."""
    return (
        isinstance(name, str)
        and name not in ("", ".", "..")
        and not any(c in name for c in "/\\\x00")
    )


def walk_remote(conn: Connection, root: str) -> tuple[list[str], list[tuple[str, int]]]:
    """(directories, (file, size)) under remote ``root``, parents first."""
    dirs, files = walk_remote_entries(conn, root)
    return dirs, [(path, int(entry["size"])) for path, entry in files]


def walk_remote_entries(
    conn: Connection, root: str
) -> tuple[list[str], list[tuple[str, dict[str, Any]]]]:
    """(directories, (file, its listing entry)) under remote ``root``, parents first."""
    dirs: list[str] = []
    files: list[tuple[str, dict[str, Any]]] = []
    stack = [root]
    while stack:
        folder = stack.pop()
        for entry in conn.listdir(folder, show_all=True):
            name = entry.get("name")
            if entry.get("undecodable") or not isinstance(name, str) or not _safe_name(name):
                continue  # a hostile server must not steer writes outside the target
            path = posixpath.join(folder, name)
            if entry.get("type") == "dir":
                dirs.append(path)
                stack.append(path)
            elif entry.get("type") == "file" and _size_of(entry) is not None:
                files.append((path, entry))
    return dirs, files


def _size_of(entry: Mapping[str, Any]) -> int | None:
    size = entry.get("size")
    return size if type(size) is int and size >= 0 else None
