"""Files at rest inside a home: partial uploads, recorded digests, atomic install.

Partials live in ``<home>/.ftpd/partial/`` (or, for a target on another file system
mounted inside the home, beside it as ``.ftpd-part.*``), which the jail makes
unreachable and ``ls`` never shows; a partial's name is a key of its target plus the declared size, so a
partial of another size is another source and is discarded, never spliced.  A file's
digest is recorded (as an extended attribute, with size and mtime) when it is uploaded,
so a download can stream at once; it is recomputed only when the file changed by other
means.  This module works on real paths handed to it by the handler and must never
accept a client's path.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat as stat_mod
import threading
from collections import OrderedDict
from pathlib import Path
from typing import BinaryIO

from ftpd.errors import ConflictError
from ftpd.jail import PARTIAL_PREFIX, RESERVED
from ftpd.framed.streams import hash_file

PARTIAL_DIR = Path(RESERVED) / "partial"
_XATTR = "user.ftpd.{}"
_CACHE_MAX = 65536
_cache: OrderedDict[tuple[int, int, str], tuple[int, int, str]] = OrderedDict()
_cache_lock = threading.Lock()


_partial_dirs: dict[Path, int] = {}  # home root -> st_dev of its partial folder
_partial_dirs_lock = threading.Lock()


def partial_dir(root: Path) -> tuple[Path, int]:
    """The home's partial folder (made once) and the device it lives on."""
    path = root / PARTIAL_DIR
    dev = _partial_dirs.get(root)
    if dev is None:  # made once per home (partial_for re-makes it if it was removed)
        path.mkdir(parents=True, exist_ok=True)
        dev = os.stat(path).st_dev
        with _partial_dirs_lock:
            _partial_dirs[root] = dev
    return path, dev


def partial_for(root: Path, target: Path, size: int, target_dev: int) -> tuple[Path, int, int]:
    """The partial for ``size`` bytes to ``target``: (path, its current size, bytes freed).

    ``target_dev`` is the device of the target's folder.  Partials of the same target
    with another declared size belong to another source and are removed here.  A target
    on another file system than the home (a mount inside it) gets its partial beside it,
    named ``.ftpd-part.*``, so the final rename stays atomic.
    """
    (home_folder, home_prefix), beside = _partial_places(root, target)
    folder, prefix = (home_folder, home_prefix) if target_dev == partial_dir(root)[1] else beside
    mine = folder / f"{prefix}{size}"
    freed = have = 0
    try:
        entries = os.scandir(folder)
    except FileNotFoundError:  # the partial folder was removed behind our back
        folder.mkdir(parents=True, exist_ok=True)
        entries = os.scandir(folder)
    with entries:
        for entry in entries:
            if entry.name == mine.name:
                have = entry.stat(follow_symlinks=False).st_size
            elif entry.name.startswith(prefix):
                freed += discard(Path(entry.path))
    return mine, have, freed


def _partial_places(root: Path, target: Path) -> list[tuple[Path, str]]:
    """Where ``target``'s partials live: (folder, name prefix) in the home's partial
    folder, and beside the target (for a target on another file system)."""
    key = hashlib.sha256(os.fsencode(target.relative_to(root))).hexdigest()[:40]
    beside = PARTIAL_PREFIX + hashlib.sha256(os.fsencode(target.name)).hexdigest()[:40]
    return [(partial_dir(root)[0], key + "."), (target.parent, beside + ".")]


def discard_partials(root: Path, target: Path) -> tuple[int, int]:
    """Remove every partial upload to ``target``: (how many, bytes freed).

    This is how a user gives up an interrupted upload (``rm`` of its name): partials are
    invisible, but they count against the quota.
    """
    count = freed = 0
    for folder, prefix in _partial_places(root, target):
        try:
            with os.scandir(folder) as entries:
                doomed = [Path(e.path) for e in entries if e.name.startswith(prefix)]
        except OSError:
            continue
        for path in doomed:
            freed += discard(path)
            count += 1
    return count, freed


def discard(path: Path) -> int:
    """Remove a partial; returns the bytes freed."""
    try:
        size = path.lstat().st_size
        path.unlink()
        return size
    except FileNotFoundError:
        return 0


def regular_size(path: Path) -> int:
    """Bytes of the regular file at ``path`` (0 if missing or not a regular file)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return 0
    return st.st_size if stat_mod.S_ISREG(st.st_mode) else 0


def _stamp(st: os.stat_result) -> tuple[int, int]:
    return st.st_size, st.st_mtime_ns


def recorded_digest(fd: int, st: os.stat_result, digest: str) -> str | None:
    """The digest recorded for this file, if it still matches the file's size and mtime."""
    try:
        raw = os.getxattr(fd, _XATTR.format(digest)).decode("ascii")
        hexdigest, size, mtime = raw.split(":")
        if (int(size), int(mtime)) == _stamp(st):
            return hexdigest
        return None
    except OSError as exc:
        if exc.errno not in (errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM):
            return None
    except ValueError:
        return None
    # No xattrs on this file system: fall back to a bounded in-memory cache.
    with _cache_lock:
        hit = _cache.get((st.st_dev, st.st_ino, digest))
    if hit and hit[:2] == _stamp(st):
        return hit[2]
    return None


def record_digest(fd: int, st: os.stat_result, digest: str, hexdigest: str) -> None:
    """Remember ``hexdigest`` for the file open as ``fd`` in the state ``st``."""
    size, mtime = _stamp(st)
    try:
        os.setxattr(fd, _XATTR.format(digest), f"{hexdigest}:{size}:{mtime}".encode("ascii"))
        return
    except OSError:
        pass
    with _cache_lock:
        _cache[(st.st_dev, st.st_ino, digest)] = (size, mtime, hexdigest)
        while len(_cache) > _CACHE_MAX:
            _cache.popitem(last=False)


def digest_of(fobj: BinaryIO, digest: str) -> str:
    """The file's digest: recorded if still valid, else computed once and recorded."""
    fd = fobj.fileno()
    st = os.fstat(fd)
    known = recorded_digest(fd, st, digest)
    if known is not None:
        return known
    fobj.seek(0)
    hexdigest = hash_file(fobj, st.st_size, digest).hexdigest()
    after = os.fstat(fd)
    if _stamp(after) == _stamp(st):
        record_digest(fd, after, digest, hexdigest)
    return hexdigest


def open_regular(real: Path) -> BinaryIO:
    """Open a regular file for reading; never blocks on a FIFO or follows a final link.

    Raises:
        ConflictError: not a regular file.
    """
    fd = os.open(real, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    if not stat_mod.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise ConflictError("not a regular file")
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


def install(partial: Path, target: Path) -> None:
    """Move a verified partial under its real name, atomically (``rename(2)``)."""
    os.replace(partial, target)
