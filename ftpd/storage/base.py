"""The storage interface: trees of named entries, and uploads that appear whole or not at all.

A ``Storage`` hands out one ``Tree`` per root (a user's home; storage does not know it is
one).  Every path given to a tree is a tuple of names below its root, already folded by
the caller: no ``""``, ``"."`` or ``".."`` from the client survives to here.  A tree
resolves such a path once per operation and acts on what it resolved, so that nothing a
concurrent operation does can redirect it outside the root (docs/architecture.md).

This module must never know about users, sessions, quotas or any wire protocol; it only
defines the shapes that ``ftpd.core`` uses and that each backend implements.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from ftpd.errors import FTPError

#: The daemon's bookkeeping folder at the top of every root; never reachable by a path.
RESERVED = ".ftpd"
#: Prefix of partials kept beside their target (a mount inside a home); never reachable.
PARTIAL_PREFIX = ".ftpd-part."

Parts = tuple[str, ...]


def is_reserved(parts: Parts) -> bool:
    """``.ftpd`` at the top of a root, or a ``.ftpd-part.*`` name anywhere."""
    return bool(parts) and (
        parts[0] == RESERVED or any(p.startswith(PARTIAL_PREFIX) for p in parts)
    )


@dataclass(frozen=True)
class Entry:
    """What a tree says about one name.  ``kind``: file, dir, link, other or unknown.

    A ``link`` entry is a symbolic link whose target is not inside the root (or missing):
    its target is never described.  ``mode`` holds the permission bits only.
    ``partial``/``expected``: bytes an unfinished upload to this name holds, and the size
    it declared (set by the core, None when there is none).
    """

    name: str
    kind: str
    size: int
    mtime: float
    mode: int = 0
    partial: int | None = None
    expected: int | None = None


@dataclass(frozen=True)
class Found:
    """The outcome of a lookup: where the path really is, and what is there (or None)."""

    parts: Parts
    entry: Entry | None


@dataclass(frozen=True)
class Removed:
    """What an operation took away: bytes of regular files, and entries (files + dirs)."""

    nbytes: int = 0
    entries: int = 0


@dataclass(frozen=True)
class PartialInfo:
    """An unfinished upload: its target, bytes held, declared size (None: an upload that
    declared none, such as FTP's STOR), last write time."""

    parts: Parts
    held: int
    expected: int | None
    mtime: float


class Reader(Protocol):
    """An open file for a download.  Owned by the caller, closed with ``close()``."""

    size: int
    mtime: float

    def fileno(self) -> int: ...
    def readinto(self, buf: memoryview | bytearray) -> int: ...
    def read(self, size: int = -1) -> bytes: ...
    def seek(self, offset: int, whence: int = 0) -> int: ...
    def recorded_digest(self, digest: str) -> str | None: ...
    def digest(self, digest: str) -> str: ...
    def close(self) -> None: ...


class StoredUpload(Protocol):
    """The bytes of one upload at rest: a partial that takes the target's name on commit.

    It holds on to the target's folder from the start (``begin_upload``) and installs
    into that folder, whatever happens to the path meanwhile.
    """

    parts: Parts
    offset: int  # bytes already held from an earlier, interrupted upload of this size
    freed: int  # bytes of stale partials (other sizes) removed when it began
    target_exists: bool
    target_size: int | None  # the finished file's size, None when there is none

    def read_prefix(self, hasher: Any) -> Any:
        """Bring ``hasher`` (fresh) to the digest of the ``offset`` bytes held, or
        return another hasher already there (a store that saved the hash state instead
        of keeping bytes it can read back); None: ``hasher`` is the one."""

    def keeps_digest(self, name: str) -> bool:
        """Whether the store itself hashes every byte it holds with the digest ``name``
        (an object store that saves the hash state at part boundaries): the caller then
        asks ``hasher`` rather than hashing the bytes a second time.  An answer of True
        holds for the upload's whole life (restarts and truncations included)."""

    def hasher(self) -> Any:
        """With ``keeps_digest``: a hasher fed exactly the bytes held now (``offset``
        and every byte written since), for the caller to read, not to feed."""

    def restart(self) -> int: ...
    def truncate(self, offset: int) -> int: ...
    def seed(self, nbytes: int) -> int: ...
    def write(self, data: memoryview) -> int: ...
    def commit(
        self,
        digest: str,
        hexdigest: str,
        mtime: float | None,
        before_install: Callable[[], None] | None = None,
    ) -> int: ...
    def discard(self) -> int: ...
    def close(self) -> None: ...


class Tree(Protocol):
    """One root's entries.  Safe to use from several threads at once."""

    def ensure(self) -> None: ...
    def lookup(self, parts: Parts, follow: bool = True) -> Found: ...
    def listdir(self, parts: Parts) -> Iterator[Entry]: ...
    def mkdir(self, parts: Parts, parents: bool, before_create: Callable[[int], None]) -> int: ...
    def remove(
        self, parts: Parts, recursive: bool = False, on_removed: Callable[[Removed], None] = ...
    ) -> Removed: ...
    def rmdir(self, parts: Parts) -> None: ...
    def rename(self, src: Parts, dst: Parts) -> Removed: ...
    def set_mtime(self, parts: Parts, mtime: float) -> None: ...
    def open_read(self, parts: Parts) -> Reader: ...
    def begin_upload(
        self, parts: Parts, size: int | None, resume: bool, probe: bool = False
    ) -> StoredUpload: ...
    def partials(self) -> Iterator[PartialInfo]: ...
    def discard_partials(self, parts: Parts) -> Removed: ...
    def remove_partial(self, info: PartialInfo) -> int: ...
    def usage(self) -> tuple[int, int, bool]: ...


class Storage(Protocol):
    """A backend: hands out trees by root name (``home_root/NAME`` on a local disk)."""

    def tree(self, root: str) -> Tree: ...
    def roots(self) -> Iterator[str]: ...


#: One upload of a group commit: the stored upload, the digest's name and its value, and
#: the mtime to set (None: now).
Commit = tuple[StoredUpload, str, str, float | None]


def commit_group(items: Sequence[Commit]) -> list[int | BaseException]:
    """Commit several uploads; each result is the bytes replaced or that upload's error.

    A backend whose uploads can share their flushes gives their class a static
    ``commit_group`` taking the same items (the local disk: ``ftpd.storage.flush``);
    the others are committed one by one, an error stopping only its own upload.
    """
    kinds = {type(stored) for stored, *_ in items}
    group = getattr(kinds.pop(), "commit_group", None) if len(kinds) == 1 else None
    if group is not None:
        return list(group(items))
    results: list[int | BaseException] = []
    for stored, digest, hexdigest, mtime in items:
        try:
            results.append(stored.commit(digest, hexdigest, mtime))
        except (OSError, FTPError) as exc:  # that upload's own error, reported to it
            results.append(exc)
    return results
