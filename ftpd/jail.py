"""Virtual paths <-> real paths inside one home directory.

A client sees POSIX paths rooted at ``/``, which is its home.  ``resolve`` turns such a
``vpath`` into a resolved real ``Path`` and refuses anything that would end outside the
home once symlinks are followed (pyftpdlib's ``realpath`` lesson, its issue #55).

The jail knows nothing of users or sockets, and it must never call ``os.chdir``: the cwd
is process-wide and the daemon serves many sessions from threads.  It holds the session's
virtual cwd instead.
"""

from __future__ import annotations

import os
import posixpath
import re
import stat as stat_mod
from pathlib import Path, PurePosixPath

from ftpd.errors import InvalidPathError, NotFoundError, PathEscapeError, PermissionDeniedError

#: The daemon's own bookkeeping inside each home (partial uploads); unreachable by path.
RESERVED = ".ftpd"
#: Partials placed beside their target (on a mount inside a home); unreachable too.
PARTIAL_PREFIX = ".ftpd-part."
MAX_VPATH = 4096
MAX_NAME = 255


# Cc (C0, DEL, C1), Cs (lone surrogates) and the backslash, in one pass.
_BAD_TEXT = re.compile("[\x00-\x1f\x7f-\x9f\\\\\ud800-\udfff]")


def check_text(vpath: str) -> None:
    """Refuse NUL, control characters, lone surrogates, backslashes and over-long names."""
    if len(vpath) > MAX_VPATH:
        raise InvalidPathError("path too long")
    bad = _BAD_TEXT.search(vpath)
    if bad:
        if bad.group() == "\\":
            # Not a separator on POSIX, but a trap for Windows clients and for logs.
            raise InvalidPathError("path contains a backslash")
        raise InvalidPathError("path contains a control character or NUL")
    if len(vpath) > MAX_NAME // 4:  # shorter text cannot hold a name over 255 bytes
        for name in vpath.split("/"):
            if len(name.encode("utf-8")) > MAX_NAME:
                raise InvalidPathError("file name too long")


def _is_reserved(parts: list[str] | tuple[str, ...]) -> bool:
    """``/.ftpd`` at the top of a home, or a ``.ftpd-part.*`` name anywhere."""
    return bool(parts) and (
        parts[0] == RESERVED or any(p.startswith(PARTIAL_PREFIX) for p in parts)
    )


class Jail:
    """One session's view of one home.  Owned by the session's handler thread only."""

    def __init__(self, root: Path, cwd: str = "/") -> None:
        self.root = Path(os.path.realpath(root))
        self._root = str(self.root)
        self._root_slash = self._root.rstrip("/") + "/"
        self.cwd = PurePosixPath("/")
        self.cwd = self.normalize(cwd)

    def normalize(self, vpath: str) -> PurePosixPath:
        """Join with the cwd and fold ``.``, ``..`` and ``//`` lexically; ``..`` stops at ``/``."""
        check_text(vpath)
        joined = posixpath.join(str(self.cwd), vpath) if vpath else str(self.cwd)
        parts: list[str] = []
        for part in joined.split("/"):
            if part in ("", "."):
                continue
            if part == "..":
                if parts:
                    parts.pop()
                continue
            parts.append(part)
        if _is_reserved(parts):
            raise PathEscapeError("that name is reserved for the server's partial files")
        return PurePosixPath("/", *parts)

    def resolve(self, vpath: str) -> Path:
        """The real path of ``vpath``, symlinks followed, guaranteed inside the home.

        The target need not exist (for mkdir, put, mv's destination).

        Raises:
            InvalidPathError: NUL, control characters, too long.
            PathEscapeError: the resolved path leaves the home.
        """
        virtual = self.normalize(vpath)
        real = self._walk(virtual.parts[1:])
        if not self.contains(real):
            raise PathEscapeError(f"{virtual}: outside your home (or reserved)")
        return Path(real)

    def contains(self, real: str | Path) -> bool:
        """Whether a resolved real path is inside the home and not in its reserved area."""
        real = str(real)
        if real == self._root:
            return True
        if not real.startswith(self._root_slash):
            return False
        rel = real[len(self._root_slash) :]
        return not (".ftpd" in rel and _is_reserved(rel.split("/")))

    def _walk(self, parts: tuple[str, ...]) -> str:
        """``realpath`` below the (already real) root: one ``lstat`` per component.

        Same result as ``os.path.realpath(root/parts)`` without re-resolving the root's
        own ancestors on every call; a link is handed to ``realpath`` whole.
        """
        current = self._root
        for i, part in enumerate(parts):
            candidate = current + "/" + part
            try:
                mode = os.lstat(candidate).st_mode
            except OSError:  # missing (or unreadable): the rest is lexical, as realpath does
                return "/".join((candidate, *parts[i + 1 :]))
            current = os.path.realpath(candidate) if stat_mod.S_ISLNK(mode) else candidate
        return current

    def resolve_entry(self, vpath: str) -> Path:
        """The real path of the directory entry itself: a final symlink is not followed.

        For ``rm``, ``mv`` and ``rmdir``, which act on a link rather than on its target.
        The home itself has no entry and is refused.
        """
        virtual = self.normalize(vpath)
        if virtual == PurePosixPath("/"):
            raise PermissionDeniedError("/: that is your home")
        parent = self.resolve(str(virtual.parent))
        real = parent / virtual.name
        if parent == self.root and virtual.name == RESERVED:
            raise PathEscapeError(f"{virtual}: reserved")
        return real

    def existing(self, vpath: str) -> Path:
        """Like ``resolve``, but the path must exist."""
        real = self.resolve(vpath)
        if not os.path.lexists(real):
            raise NotFoundError(f"{self.normalize(vpath)}: no such file or directory")
        return real

    def to_virtual(self, real: Path) -> str:
        """The client's view of a real path inside the home."""
        rel = Path(os.path.realpath(real)).relative_to(self.root)
        return str(PurePosixPath("/", *rel.parts))

    def chdir(self, vpath: str) -> str:
        """Change the virtual cwd to an existing directory; returns the new cwd."""
        real = self.existing(vpath)
        if not real.is_dir():
            raise NotFoundError(f"{self.normalize(vpath)}: not a directory")
        cwd = self.to_virtual(real)
        check_text(cwd)  # e.g. a link to a directory whose name is not valid UTF-8
        self.cwd = PurePosixPath(cwd)
        return cwd
