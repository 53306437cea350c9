"""The client's side of put and get: hash while sending, verify before naming, resume.

Upload: small files go inline in one round trip; larger ones ask the server for its
resume offset, check the server's prefix digest against the local file (a changed source
restarts from zero, never splices), then stream the rest while hashing it and send the
whole-file digest last.  Download: bytes land in a local partial named after the
remote digest (``.NAME.<digest>.ftpd-part``); only a whole-file match renames it.

This module must never leave a file under its real name that failed verification.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import stat as stat_mod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol

from ftpd import errors

from ftpd.framed import protocol

from ftpd.framed import streams
from ftpd.framed.protocol import Data, End, Request
from ftp_client.connection import Connection

#: Files up to this size go in one frame with their digest (no resume needed).
INLINE_MAX = 1024 * 1024
SEND_CHUNK = 1024 * 1024
PARTIAL_SUFFIX = ".ftpd-part"


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


# --- upload -------------------------------------------------------------------------


def put_file(
    conn: Connection,
    local: Path,
    remote: str,
    progress: ProgressFactory = no_progress,
    notice: Callable[[str], None] = lambda _m: None,
    digest: str = protocol.DEFAULT_DIGEST,
) -> Result:
    """Upload ``local`` to ``remote``, resuming a partial the server holds for it.

    ``digest`` is the protocol's per-transfer digest (md5 unless negotiated otherwise).
    """
    with open(local, "rb") as f:
        size = _regular_size(f, local)
        if size <= INLINE_MAX:
            bar = progress(remote, size, 0)
            try:
                _send_inline(conn, f, size, local, remote, digest)
                response = conn.read_response()
                bar.update(size)
            finally:
                bar.close()
            return Result(remote, size, 0, response.data["checksum"])
        return _put_stream(conn, f, size, remote, progress, notice, digest)


def put_many(
    conn: Connection,
    pairs: list[tuple[Path, str]],
    progress: ProgressFactory = no_progress,
    notice: Callable[[str], None] = lambda _m: None,
    window: int = 32,
    digest: str = protocol.DEFAULT_DIGEST,
) -> list[Result]:
    """Upload many files, keeping up to ``window`` small (inline) puts in flight.

    The daemon answers in order, so small files are sent without waiting for each
    answer (pipelining): client and daemon work at the same time instead of in turn.
    Large files go one at a time through ``put_file`` (resumable).  Stops at the first
    failure, after collecting the answers already in flight, and raises it.
    """
    results: list[Result] = []
    in_flight: list[tuple[str, int]] = []
    failure: errors.FTPError | None = None

    def collect(keep: int) -> None:
        nonlocal failure
        while len(in_flight) > keep:
            remote, size = in_flight.pop(0)
            try:
                response = conn.read_response()
            except errors.FTPError as exc:
                if exc.fatal or isinstance(exc, streams.ConnectionClosed):
                    raise
                failure = failure or exc
                continue
            results.append(Result(remote, size, 0, response.data["checksum"]))
            notice(f"[{len(results)}/{len(pairs)}] {remote}")

    try:
        for local, remote in pairs:
            if failure is not None:
                break
            with open(local, "rb") as f:
                size = _regular_size(f, local)
                if size > INLINE_MAX:
                    collect(0)
                    if failure is None:
                        results.append(put_file(conn, local, remote, progress, notice, digest))
                        notice(f"[{len(results)}/{len(pairs)}] {remote}")
                    continue
                _send_inline(conn, f, size, local, remote, digest)
            in_flight.append((remote, size))
            collect(window - 1)
        collect(0)
    except BaseException:
        if in_flight:  # answers still unread: this connection is out of step for good
            conn.close()
        raise
    if failure is not None:
        raise failure
    return results


def _regular_size(f: Any, local: Path) -> int:
    st = os.fstat(f.fileno())
    if not stat_mod.S_ISREG(st.st_mode):
        raise errors.BadRequestError(f"{local}: not a regular file")
    return st.st_size


def _send_inline(conn: Connection, f: Any, size: int, local: Path, remote: str, digest: str) -> None:
    """One frame holding the whole (small) file and its digest; the answer is read later."""
    data = f.read(size + 1)
    if len(data) != size:
        raise errors.ConflictError(f"{local}: changed while being read")
    hasher = streams.new_hasher(digest)
    hasher.update(data)
    args = {"path": remote, "size": size, "checksum": hasher.hexdigest()}
    if digest != protocol.DEFAULT_DIGEST:
        args["digest"] = digest
    conn.send(Request("put", args, size), data)


def _arg(digest: str) -> str | None:
    """The ``digest`` request arg: left out for the default, as older callers sent it."""
    return None if digest == protocol.DEFAULT_DIGEST else digest


def _put_stream(conn, f, size, remote, progress, notice, digest) -> Result:  # type: ignore[no-untyped-def]
    # A resumed upload's 150 comes after the daemon re-hashed its partial (up to ``size``
    # bytes): allow for that at a conservative 50 MB/s on top of the usual timeout.
    timeout = conn.sock.gettimeout()
    conn.sock.settimeout(None if timeout is None else timeout + size / 50e6)
    try:
        ready = conn.call("put", path=remote, size=size, digest=_arg(digest))
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
    finally:
        bar.close()
    conn.send(End(hasher.hexdigest()))
    response = conn.read_response()
    return Result(remote, size, start, response.data["checksum"], restarted)


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
    short = hashlib.sha256(os.fsencode(name)).hexdigest()[:16]
    return f".{short}.{checksum}{PARTIAL_SUFFIX}"


def _partials(local: Path) -> list[Path]:
    """Partials left by earlier downloads to ``local`` (any remote digest)."""
    folder, name = local.parent, local.name
    short = hashlib.sha256(os.fsencode(name)).hexdigest()[:16]
    found = []
    for prefix in (f".{name}.", f".{short}."):
        for path in folder.glob(glob_escape(prefix) + "*" + PARTIAL_SUFFIX):
            stem = path.name[len(prefix) : -len(PARTIAL_SUFFIX)]
            if protocol.is_hex_digest(stem):
                found.append(path)
    return found


def glob_escape(text: str) -> str:
    return "".join(f"[{c}]" if c in "*?[" else c for c in text)


def get_file(
    conn: Connection,
    remote: str,
    local: Path,
    progress: ProgressFactory = no_progress,
    notice: Callable[[str], None] = lambda _m: None,
    digest: str = protocol.DEFAULT_DIGEST,
) -> Result:
    """Download ``remote`` to ``local`` via a verified partial; resume a matching partial."""
    if local.is_dir():
        raise errors.ConflictError(f"{local}: is a directory")
    olds = sorted(_partials(local), key=lambda p: p.stat().st_mtime, reverse=True)
    offset, checksum = 0, None
    if olds:
        checksum = _digest_in(olds[0])
        offset = olds[0].stat().st_size
    response = conn.call("get", path=remote, offset=offset or None, checksum=checksum, digest=_arg(digest))
    data = response.data
    size, start, remote_sum = int(data["size"]), int(data["offset"]), str(data["checksum"])
    if not protocol.is_hex_digest(remote_sum) or start > size or response.body != size - start:
        conn.close()
        raise errors.ProtocolError("the server's download header does not add up")
    partial = local.parent / _partial_name(local.name, remote_sum)
    for old in olds:
        if old != partial or not start:
            old.unlink(missing_ok=True)
    if start:
        notice(f"resuming download of {remote} at byte {start} of {size}")
    elif offset:
        notice(f"{remote} changed on the server since the partial download; restarting")
    hasher = streams.new_hasher(data.get("digest", protocol.DEFAULT_DIGEST))
    with open(partial, "ab" if start else "wb") as f:
        if start:
            with open(partial, "rb") as prefix:
                streams.copy_exact(prefix, None, start, hasher)
        bar = progress(remote, size, start)
        try:
            streams.copy_exact(conn.reader, f.write, size - start, hasher, bar.update)
        finally:
            f.flush()
            bar.close()
    actual = hasher.hexdigest()
    if actual != remote_sum:
        partial.unlink(missing_ok=True)
        raise errors.ChecksumError(
            f"{remote}: {hasher.name} mismatch (server {remote_sum}, received {actual}); "
            "nothing was saved"
        )
    os.replace(partial, local)
    return Result(remote, size, start, actual)


def _digest_in(partial: Path) -> str:
    return partial.name[: -len(PARTIAL_SUFFIX)].rsplit(".", 1)[-1]


# --- trees --------------------------------------------------------------------------


def walk_local(root: Path) -> tuple[list[Path], list[Path]]:
    """(directories, files) under ``root``, parents first; symlinks are not followed."""
    dirs, files = [], []
    for folder, subdirs, names in os.walk(root):
        subdirs.sort()
        base = Path(folder)
        dirs.extend(base / d for d in subdirs if not (base / d).is_symlink())
        files.extend(base / n for n in sorted(names) if (base / n).is_file() and not (base / n).is_symlink())
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
    dirs: list[str] = []
    files: list[tuple[str, int]] = []
    stack = [root]
    while stack:
        folder = stack.pop()
        for entry in conn.listdir(folder, show_all=True):
            name = entry.get("name")
            if entry.get("undecodable") or not _safe_name(name):
                continue  # a hostile server must not steer writes outside the target
            path = posixpath.join(folder, name)
            if entry["type"] == "dir":
                dirs.append(path)
                stack.append(path)
            elif entry["type"] == "file":
                files.append((path, int(entry["size"])))
    return dirs, files
