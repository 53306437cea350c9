"""Local-disk storage: every operation resolves beneath its root by directory descriptors.

A path is walked one component at a time from a descriptor of the root, each component
opened relative to the previous one with ``O_NOFOLLOW``, so no name is ever looked up
twice and no symbolic link is followed by the kernel.  Links are followed here, by the
walk itself: a link's target is read (``readlinkat``) and walked in turn from the link's
own folder, or from the root for an absolute target that names a place inside the root;
a target that leads out (``..`` above the root, an absolute path elsewhere) is refused.
Then the operation acts relative to the descriptors it holds (``dir_fd=``,
``src_dir_fd``/``dst_dir_fd``, ``os.scandir(fd)``).  A concurrent session that swaps a
folder for a link after the walk can only make the operation fail; it can never
redirect it (the attack and the design: docs/security.md, docs/architecture.md).

Whole-tree walks (usage, ``rm -r``) go by descriptor too, and keep at most a bounded
number of them open however deep the tree is, so no path length can hide anything.

This module must never call a path-based ``os`` function on anything below a root.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import posixpath
import stat as stat_mod
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ftpd.errors import (
    ConflictError,
    InternalError,
    NotFoundError,
    PathEscapeError,
    PermissionDeniedError,
)
from ftpd.storage import flush
from ftpd.storage.base import (
    PARTIAL_PREFIX,
    RESERVED,
    Entry,
    Found,
    PartialInfo,
    Parts,
    Removed,
)

_CLOEXEC = os.O_CLOEXEC
#: Folders on the way: a real descriptor (fsync, scandir), never a link, never blocking.
_O_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_NONBLOCK | _CLOEXEC
#: The final object of a lookup: opened without any access, only to fstat and anchor it.
_O_OBJ = os.O_PATH | os.O_NOFOLLOW | _CLOEXEC
_O_READ = os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | _CLOEXEC
#: Links followed in one lookup before giving up (Linux's own limit is 40).
MAX_LINKS = 40
#: Whole-tree walks keep every folder's descriptor down to this depth, then one in
#: ``_KEEP_EVERY``: a deeper folder is re-opened from the nearest kept one when needed.
_KEEP_ALL = 64
_KEEP_EVERY = 16
_PARTIAL_DIR = "partial"
#: Where a root keeps its unfinished uploads (relative to the root).
PARTIAL_DIR = Path(RESERVED) / _PARTIAL_DIR
_XATTR_DIGEST = "user.ftpd.{}"
_XATTR_TARGET = "user.ftpd.target"
_CHUNK = 1 << 20
#: An upload starts the writeback of what it received every this many bytes, so the
#: flush at its end (and any flush shared with it meanwhile) has little left to wait on.
WRITEBACK_STEP = 8 << 20


# --- recorded digests ----------------------------------------------------------------

_CACHE_MAX = 65536
_cache: OrderedDict[tuple[int, int, str], tuple[int, int, str]] = OrderedDict()
_cache_lock = threading.Lock()


def _stamp(st: os.stat_result) -> tuple[int, int]:
    return st.st_size, st.st_mtime_ns


def recorded_digest(fd: int, st: os.stat_result, digest: str) -> str | None:
    """The digest recorded with this file, if it still matches its size and mtime."""
    try:
        raw = os.getxattr(fd, _XATTR_DIGEST.format(digest)).decode("ascii")
        hexdigest, size, mtime = raw.split(":")
        return hexdigest if (int(size), int(mtime)) == _stamp(st) else None
    except OSError as exc:
        if exc.errno not in (errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM):
            return None
    except ValueError:
        return None
    # No xattrs on this file system: a bounded in-memory cache stands in.
    with _cache_lock:
        hit = _cache.get((st.st_dev, st.st_ino, digest))
    return hit[2] if hit and hit[:2] == _stamp(st) else None


def record_digest(fd: int, st: os.stat_result, digest: str, hexdigest: str) -> None:
    """Remember ``hexdigest`` for the file open as ``fd``, valid while ``st`` holds."""
    size, mtime = _stamp(st)
    try:
        os.setxattr(fd, _XATTR_DIGEST.format(digest), f"{hexdigest}:{size}:{mtime}".encode())
        return
    except OSError:
        pass
    with _cache_lock:
        _cache[(st.st_dev, st.st_ino, digest)] = (size, mtime, hexdigest)
        while len(_cache) > _CACHE_MAX:
            _cache.popitem(last=False)


def _entry(name: str, st: os.stat_result) -> Entry:
    mode = st.st_mode
    kind = stat_mod.S_IFMT(mode)
    if kind == stat_mod.S_IFREG:
        return Entry(name, "file", st.st_size, st.st_mtime, mode & 0o7777)
    kind_name = "dir" if kind == stat_mod.S_IFDIR else "other"
    return Entry(name, kind_name, 0, st.st_mtime, mode & 0o7777)


def _close(fd: int | None) -> None:
    if fd is not None:
        try:  # not contextlib.suppress: this runs several times per command
            os.close(fd)
        except OSError:
            pass


# --- the walk --------------------------------------------------------------------------


@dataclass
class _Hit:
    """A resolved path: ``dir_fd`` holds the final name (or *is* the final, ``name`` None).

    ``obj_fd`` anchors the final object of a followed lookup (``O_PATH``); ``st`` is its
    stat (or the entry's own lstat when the final link was not followed); None: missing.
    """

    dir_fd: int
    name: str | None
    parts: Parts
    st: os.stat_result | None
    obj_fd: int | None = None

    def close(self) -> None:
        _close(self.obj_fd)
        _close(self.dir_fd)

    def __enter__(self) -> _Hit:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def open_dir(self) -> int:
        """A readable descriptor of the final folder itself (the caller closes it)."""
        if self.name is None:
            return os.dup(self.dir_fd)
        assert self.obj_fd is not None
        return os.open(".", os.O_RDONLY | os.O_DIRECTORY | _CLOEXEC, dir_fd=self.obj_fd)


class _Walk:
    """The state of one resolution: the folder reached, its real names, what is left."""

    def __init__(self, root: int, todo: list[str]) -> None:
        self.root = self.cur = root
        self.names: list[str] = []
        self.todo = todo
        self.hops = 0

    def enter(self, name: str, fd: int) -> None:
        if self.cur != self.root:
            _close(self.cur)
        self.cur = fd
        self.names.append(name)

    def restart(self) -> None:
        """Back to the root (for an absolute link target, or ``..`` re-walked by name)."""
        if self.cur != self.root:
            _close(self.cur)
        self.cur, self.names = self.root, []

    def hit(self, name: str | None, st: os.stat_result | None, obj_fd: int | None = None) -> _Hit:
        parts = (*self.names, name) if name is not None else tuple(self.names)
        return _Hit(self.cur, name, parts, st, obj_fd)

    def close(self) -> None:
        if self.cur != self.root:
            _close(self.cur)
        _close(self.root)


class LocalTree:
    """One root folder on the local disk (a user's home).  Thread-safe: holds no state
    between operations but the root's path and what no operation can make wrong (the
    target each partial's name stands for); every operation opens and closes its own
    descriptors."""

    def __init__(self, root: Path, fsync: bool = True) -> None:
        self.root = Path(root)
        self.fsync = fsync
        self._real: str | None = None
        #: Partial file name -> its target's parts, as last read from its xattr.  A name
        #: is a hash of its target (``_places``), so what it stands for never changes.
        self._targets: dict[str, Parts] = {}

    @property
    def real(self) -> str:
        """The root's real path: absolute link targets are compared with it."""
        if self._real is None:
            self._real = os.path.realpath(self.root)
        return self._real

    def ensure(self) -> None:
        """Make the root (0700) if it is missing; the folder above it is the admin's."""
        with contextlib.suppress(FileExistsError):
            os.mkdir(self.root, 0o700)
        self._real = None

    def _open_root(self) -> int:
        # The path down to the root is the admin's (home_root may itself be a link).
        return os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | _CLOEXEC)

    def _inside(self, target: str) -> list[str] | None:
        """The parts of an absolute link target below the root, or None if outside."""
        norm = posixpath.normpath(target)
        for prefix in (self.real, str(self.root)):
            if norm == prefix:
                return []
            if norm.startswith(prefix.rstrip("/") + "/"):
                return norm[len(prefix.rstrip("/")) + 1 :].split("/")
        return None

    def _walk(
        self,
        parts: Parts,
        follow: bool = True,
        create: Callable[[int], None] | None = None,
    ) -> _Hit:
        """Resolve ``parts`` beneath the root; the result holds the final's folder open.

        ``follow``: a final link is followed (else the entry itself is the result).
        ``create``: make missing folders on the way, and the final one (``mkdir -p``),
        calling ``create(+1)`` before each ``mkdir`` and ``create(-1)`` if it failed.

        Raises:
            NotFoundError: a folder on the way is missing.
            ConflictError: something on the way is not a folder.
            PathEscapeError: a link leads out of the root, or into the reserved area.
        """
        root = self._open_root()
        walk = _Walk(root, list(reversed(parts)))
        try:
            hit = self._resolve(walk, follow, create)
        except BaseException:
            walk.close()
            raise
        if hit.dir_fd != root:
            _close(root)
        return hit

    def _resolve(self, walk: _Walk, follow: bool, create: Callable[[int], None] | None) -> _Hit:
        todo = walk.todo
        while todo:
            name = todo.pop()
            if name in ("", "."):
                continue
            if name == "..":  # only from a link's target: back to the real parent
                if not walk.names:
                    raise PathEscapeError("a link leads outside your home")
                todo.extend(reversed(walk.names[:-1]))
                walk.restart()
                continue
            if (not walk.names and name == RESERVED) or name.startswith(PARTIAL_PREFIX):
                raise PathEscapeError("that name is reserved for the server's own files")
            last = not todo
            if last and create is None:
                if not follow:
                    return walk.hit(name, _lstat(name, walk.cur))
                try:
                    fd = os.open(name, _O_OBJ, dir_fd=walk.cur)
                except FileNotFoundError:
                    return walk.hit(name, None)
                except OSError as exc:
                    raise _walk_error(exc) from None
                st = os.fstat(fd)
                if not stat_mod.S_ISLNK(st.st_mode):
                    return walk.hit(name, st, fd)
                _close(fd)
                self._follow_link(walk, name)
                continue
            try:
                fd = os.open(name, _O_DIR, dir_fd=walk.cur)
            except OSError as exc:
                if exc.errno == errno.ENOENT and create is not None:
                    self._mkdir(name, walk.cur, create)
                    todo.append(name)
                elif exc.errno in (errno.ELOOP, errno.ENOTDIR) and _is_link(name, walk.cur):
                    # O_NOFOLLOW met a link (with O_DIRECTORY, Linux says ENOTDIR)
                    self._follow_link(walk, name)
                else:
                    raise _walk_error(exc) from None
                continue
            walk.enter(name, fd)
        # The path ended on a folder reached through ".", ".." or a link's target.
        return walk.hit(None, os.fstat(walk.cur))

    def _follow_link(self, walk: _Walk, name: str) -> None:
        """Queue a link's target: from the link's folder, or from the root if absolute."""
        walk.hops += 1
        if walk.hops > MAX_LINKS:
            raise PathEscapeError("too many levels of symbolic links")
        target = os.readlink(name, dir_fd=walk.cur)
        if target.startswith("/"):
            inside = self._inside(target)
            if inside is None:
                raise PathEscapeError("a link leads outside your home")
            walk.restart()
            walk.todo.extend(reversed(inside))
        else:
            walk.todo.extend(reversed(target.split("/")))

    @staticmethod
    def _mkdir(name: str, parent: int, create: Callable[[int], None]) -> None:
        create(1)
        try:
            os.mkdir(name, 0o777, dir_fd=parent)
        except FileExistsError:
            create(-1)  # made by someone else meanwhile: use theirs
        except BaseException:
            create(-1)
            raise

    # --- lookups and listings -------------------------------------------------------

    def lookup(self, parts: Parts, follow: bool = True) -> Found:
        """Where ``parts`` really is (links resolved) and what is there (None: missing)."""
        with self._walk(parts, follow) as hit:
            if hit.st is None:
                return Found(hit.parts, None)
            name = hit.parts[-1] if hit.parts else "/"
            if stat_mod.S_ISLNK(hit.st.st_mode):
                return Found(hit.parts, self._describe_link(hit.parts, name, hit.st))
            return Found(hit.parts, _entry(name, hit.st))

    def _describe_link(self, parts: Parts, name: str, st: os.stat_result) -> Entry:
        """A link's target if it stays inside and exists, else a bare ``link``."""
        try:
            with self._walk(parts, follow=True) as hit:
                if hit.st is not None:
                    return _entry(name, hit.st)
        except (OSError, PathEscapeError, NotFoundError, ConflictError):
            pass
        return Entry(name, "link", 0, st.st_mtime, 0o777)

    def listdir(self, parts: Parts) -> Iterator[Entry]:
        """The entries of a folder, sorted by name; reserved names are never shown.

        Only the names are held in memory (sorted); each entry is described as it is
        yielded, so a folder of 100,000 entries costs its names, not its descriptions.

        Raises:
            NotFoundError, ConflictError: missing, or not a folder.
        """
        with self._walk(parts) as hit:
            if hit.st is None:
                raise NotFoundError("no such file or directory")
            if not stat_mod.S_ISDIR(hit.st.st_mode):
                raise ConflictError("not a directory")
            fd = hit.open_dir()
            base = hit.parts
        try:
            with os.scandir(fd) as entries:
                names = [e.name for e in entries if not e.name.startswith(PARTIAL_PREFIX)]
            if not base and RESERVED in names:
                names.remove(RESERVED)
            names.sort()
            for name in names:
                try:
                    st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                except FileNotFoundError:
                    continue  # removed since the folder was read
                except OSError:
                    yield Entry(name, "unknown", 0, 0.0)
                    continue
                if stat_mod.S_ISLNK(st.st_mode):
                    yield self._describe_link((*base, name), name, st)
                else:
                    yield _entry(name, st)
        finally:
            _close(fd)

    # --- changes --------------------------------------------------------------------

    def mkdir(self, parts: Parts, parents: bool, before_create: Callable[[int], None]) -> int:
        """Make a folder (and with ``parents`` the missing ones above it).

        ``before_create(+1)`` is called before each folder is made (it may refuse, e.g.
        with a quota error) and ``before_create(-1)`` when that folder was not made after
        all.  Returns how many folders were made.
        """
        made = [0]

        def count(n: int) -> None:
            before_create(n)
            made[0] += n

        if parents:
            with self._walk(parts, create=count):
                return made[0]
        with self._walk(parts) as hit:  # a link is followed, as mkdir(2) would
            if hit.name is None or hit.st is not None:
                raise ConflictError("already exists")
            self._mkdir(hit.name, hit.dir_fd, count)
            if not made[0]:
                raise ConflictError("already exists")
            return made[0]

    def _entry_hit(self, parts: Parts) -> _Hit:
        hit = self._walk(parts, follow=False)
        if hit.name is None:
            hit.close()
            raise PermissionDeniedError("that is your home")
        if hit.st is None:
            hit.close()
            raise NotFoundError("no such file or directory")
        return hit

    def remove(
        self,
        parts: Parts,
        recursive: bool = False,
        on_removed: Callable[[Removed], None] = lambda r: None,
    ) -> Removed:
        """Remove a file or link (the link itself), or with ``recursive`` a whole folder.

        ``on_removed`` hears of every entry as it goes, so a failure half-way still
        accounts for what was removed.
        """
        with self._entry_hit(parts) as hit:
            assert hit.name is not None and hit.st is not None
            if not stat_mod.S_ISDIR(hit.st.st_mode):
                os.unlink(hit.name, dir_fd=hit.dir_fd)
                gone = Removed(hit.st.st_size if stat_mod.S_ISREG(hit.st.st_mode) else 0, 1)
                on_removed(gone)
                return gone
            if not recursive:
                raise ConflictError("is a directory (use rmdir, or rm -r)")
            total = [0, 0]

            def tally(r: Removed) -> None:
                total[0] += r.nbytes
                total[1] += r.entries
                on_removed(r)

            top = os.open(hit.name, _O_DIR, dir_fd=hit.dir_fd)
            try:
                _walk_tree(top, on_file=_unlinker(tally), after_dir=_rmdirer(tally))
            finally:
                _close(top)
            os.rmdir(hit.name, dir_fd=hit.dir_fd)
            tally(Removed(0, 1))
            return Removed(total[0], total[1])

    def rmdir(self, parts: Parts) -> None:
        with self._entry_hit(parts) as hit:
            assert hit.name is not None and hit.st is not None
            if not stat_mod.S_ISDIR(hit.st.st_mode):
                raise ConflictError("not a directory")
            os.rmdir(hit.name, dir_fd=hit.dir_fd)

    def rename(self, src: Parts, dst: Parts) -> Removed:
        """Move the entry ``src`` (a link is moved, not followed) to ``dst``, replacing a
        file there; returns what was replaced."""
        with self._entry_hit(src) as s, self._walk(dst, follow=False) as d:
            assert s.name is not None and s.st is not None
            if d.name is None:
                raise PermissionDeniedError("that is your home")
            if s.parts == d.parts:
                return Removed()
            if stat_mod.S_ISDIR(s.st.st_mode) and d.parts[: len(s.parts)] == s.parts:
                raise ConflictError("cannot move a directory into itself")
            replaced = Removed()
            if d.st is not None:
                size = d.st.st_size if stat_mod.S_ISREG(d.st.st_mode) else 0
                replaced = Removed(size, 1)
            os.rename(s.name, d.name, src_dir_fd=s.dir_fd, dst_dir_fd=d.dir_fd)
            return replaced

    def set_mtime(self, parts: Parts, mtime: float) -> None:
        with self._walk(parts) as hit:
            ns = int(mtime * 1e9)
            if hit.name is None:  # the walk ended on the folder it holds
                os.utime(hit.dir_fd, ns=(ns, ns))
                return
            if hit.st is None:
                raise NotFoundError("no such file or directory")
            os.utime(hit.name, ns=(ns, ns), dir_fd=hit.dir_fd, follow_symlinks=False)

    # --- reading ----------------------------------------------------------------------

    def open_read(self, parts: Parts) -> LocalReader:
        """Open a regular file for a download; never blocks on a FIFO.

        Raises:
            NotFoundError, ConflictError: missing, a folder, or not a regular file.
        """
        for _ in range(3):
            with self._walk(parts) as hit:
                if hit.st is None:
                    raise NotFoundError("no such file or directory")
                if stat_mod.S_ISDIR(hit.st.st_mode):
                    raise ConflictError("is a directory")
                if not stat_mod.S_ISREG(hit.st.st_mode) or hit.name is None:
                    raise ConflictError("not a regular file")
                fd = os.open(hit.name, _O_READ, dir_fd=hit.dir_fd)
                st = os.fstat(fd)
                if (st.st_dev, st.st_ino) == (hit.st.st_dev, hit.st.st_ino):
                    os.set_blocking(fd, True)
                    return LocalReader(fd, st)
                _close(fd)  # replaced between the walk and the open: walk again
        raise ConflictError("the file keeps changing; try again")

    # --- uploads ------------------------------------------------------------------------

    def _partial_folder(self, create: bool = True) -> int:
        """A descriptor of ``.ftpd/partial`` in the root, made (0700) if missing
        (``create`` False: FileNotFoundError instead)."""
        fd = root = self._open_root()
        try:
            for name in (RESERVED, _PARTIAL_DIR):
                try:
                    nxt = os.open(name, _O_DIR, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        raise
                    with contextlib.suppress(FileExistsError):
                        os.mkdir(name, 0o700, dir_fd=fd)
                    nxt = os.open(name, _O_DIR, dir_fd=fd)
                if fd != root:
                    _close(fd)
                fd = nxt
        except BaseException:
            if fd != root:
                _close(fd)
            raise
        finally:
            _close(root)
        return fd

    def begin_upload(
        self, parts: Parts, size: int | None, resume: bool, probe: bool = False
    ) -> LocalUpload:
        """Open (or find, to resume) the partial for ``size`` bytes to ``parts``.

        Partials of the same target with another declared size belong to another source
        and are removed here.  A target on another file system than the partial folder (a
        mount inside the home) gets its partial beside it, so the final rename is atomic.
        ``size`` None: an upload of undeclared size, whose partial is ``<key>.stream``.
        ``probe``: only find what is held (``offset``); nothing is made or removed.

        Raises:
            NotFoundError: the target's folder is missing.
            ConflictError: the target is a folder.
        """
        hit = self._walk(parts)
        try:
            if hit.name is None or (hit.st is not None and stat_mod.S_ISDIR(hit.st.st_mode)):
                raise ConflictError("is a directory")
            _close(hit.obj_fd)
            hit.obj_fd = None
            return LocalUpload(self, hit, size, resume, probe)
        except BaseException:
            hit.close()
            raise

    def _places(self, parts: Parts, name_dir: int | None) -> list[tuple[int, str, bool]]:
        """Where partials of ``parts`` may be: (folder fd, name prefix, owned)."""
        key = hashlib.sha256(os.fsencode("/".join(parts))).hexdigest()[:40] + "."
        out: list[tuple[int, str, bool]] = []
        with contextlib.suppress(OSError):
            out.append((self._partial_folder(), key, True))
        if name_dir is not None:
            beside = PARTIAL_PREFIX + hashlib.sha256(os.fsencode(parts[-1])).hexdigest()[:40] + "."
            out.append((name_dir, beside, False))
        return out

    def partials(self) -> Iterator[PartialInfo]:
        """Unfinished uploads in the root's partial folder (their targets, sizes, ages).

        The folder is read every time (another session, or another process, may have
        just made or removed a partial); only each name's target is remembered.  Nothing
        is made: a root without the folder has no unfinished upload.
        """
        try:
            folder = self._partial_folder(create=False)
        except OSError:
            return
        try:
            with os.scandir(folder) as entries:
                found = list(entries)
            known, seen = self._targets, {}
            for item in found:
                info = _partial_info(folder, item, known.get(item.name))
                if info is not None:
                    seen[item.name] = info.parts
                    yield info
            self._targets = seen  # forget the names gone
        finally:
            _close(folder)

    def discard_partials(self, parts: Parts) -> Removed:
        """Remove every unfinished upload to ``parts``: how a user gives one up."""
        try:
            hit = self._walk(parts, follow=False)
        except (NotFoundError, ConflictError, PathEscapeError):
            return Removed()
        freed = count = 0
        with hit:
            for folder, prefix, owned in self._places(hit.parts, hit.dir_fd):
                try:
                    with os.scandir(folder) as entries:
                        doomed = [e.name for e in entries if e.name.startswith(prefix)]
                    for name in doomed:
                        freed += _unlink_counted(name, folder)
                        count += 1
                finally:
                    if owned:
                        _close(folder)
        return Removed(freed, count)

    def remove_partial(self, info: PartialInfo) -> int:
        """Remove one unfinished upload found by ``partials()``; returns bytes freed."""
        key = hashlib.sha256(os.fsencode("/".join(info.parts))).hexdigest()[:40]
        folder = self._partial_folder()
        try:
            size = "stream" if info.expected is None else info.expected
            return _unlink_counted(f"{key}.{size}", folder)
        finally:
            _close(folder)

    # --- usage ----------------------------------------------------------------------------

    def usage(self) -> tuple[int, int, bool]:
        """(bytes of regular files, entries, complete) under the root, by descriptor.

        Bytes include unfinished uploads; entries count files, folders, links and the
        rest, but not the server's own bookkeeping.  ``complete`` is False when some part
        could not be read: the caller must not lower what it knew on such a count.
        """
        nbytes = entries = 0
        ok = True

        def on_file(parent: int, item: os.DirEntry[str], depth: int) -> None:
            nonlocal nbytes, entries
            st = item.stat(follow_symlinks=False)
            if stat_mod.S_ISREG(st.st_mode):
                nbytes += st.st_size
            if not item.name.startswith(PARTIAL_PREFIX):
                entries += 1

        def on_dir(item: os.DirEntry[str], depth: int) -> bool:
            nonlocal entries
            if depth == 0 and item.name == RESERVED:
                return False  # the bookkeeping: bytes only, walked on its own below
            entries += 1
            return True

        def reserved_bytes(parent: int, item: os.DirEntry[str], depth: int) -> None:
            nonlocal nbytes
            st = item.stat(follow_symlinks=False)
            if stat_mod.S_ISREG(st.st_mode):
                nbytes += st.st_size

        def on_error(exc: OSError) -> None:
            nonlocal ok
            ok = False

        try:
            root = self._open_root()
        except FileNotFoundError:
            return 0, 0, True
        try:
            _walk_tree(root, on_file=on_file, on_dir=on_dir, on_error=on_error)
            try:
                reserved = os.open(RESERVED, _O_DIR, dir_fd=root)
            except FileNotFoundError:
                reserved = None
            except OSError as exc:
                on_error(exc)
                reserved = None
            if reserved is not None:
                try:
                    _walk_tree(reserved, on_file=reserved_bytes, on_error=on_error)
                finally:
                    _close(reserved)
        finally:
            _close(root)
        return nbytes, entries, ok


def _lstat(name: str, dir_fd: int) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def _is_link(name: str, dir_fd: int) -> bool:
    st = _lstat(name, dir_fd)
    return st is not None and stat_mod.S_ISLNK(st.st_mode)


def _walk_error(exc: OSError) -> Exception:
    if exc.errno == errno.ENOENT:
        return NotFoundError("no such directory")
    if exc.errno == errno.ENOTDIR:
        return ConflictError("not a directory")
    return exc


def _unlink_counted(name: str, folder: int) -> int:
    try:
        size = os.stat(name, dir_fd=folder, follow_symlinks=False).st_size
        os.unlink(name, dir_fd=folder)
        return size
    except FileNotFoundError:
        return 0


def _partial_info(
    folder: int, item: os.DirEntry[str], parts: Parts | None = None
) -> PartialInfo | None:
    """What a partial holds now; ``parts``: its target, when already known by its name."""
    key, _, size = item.name.rpartition(".")
    if not key or not (size.isdigit() or size == "stream"):
        return None
    try:
        st = item.stat(follow_symlinks=False)
        if parts is None:
            fd = os.open(item.name, _O_READ, dir_fd=folder)
            try:
                target = os.getxattr(fd, _XATTR_TARGET).decode("utf-8", "surrogateescape")
            finally:
                _close(fd)
            parts = tuple(p for p in target.split("/") if p)
    except OSError:
        return None
    expected = int(size) if size.isdigit() else None
    return PartialInfo(parts, st.st_size, expected, st.st_mtime)


def _unlinker(tally: Callable[[Removed], None]) -> Callable[[int, os.DirEntry[str], int], None]:
    def unlink(parent: int, item: os.DirEntry[str], depth: int) -> None:
        st = item.stat(follow_symlinks=False)
        os.unlink(item.name, dir_fd=parent)
        entries = 0 if item.name.startswith(PARTIAL_PREFIX) else 1  # as usage() counts
        tally(Removed(st.st_size if stat_mod.S_ISREG(st.st_mode) else 0, entries))

    return unlink


def _rmdirer(tally: Callable[[Removed], None]) -> Callable[[int, str], None]:
    def rmdir(parent: int, name: str) -> None:
        os.rmdir(name, dir_fd=parent)
        tally(Removed(0, 1))

    return rmdir


@dataclass
class _Frame:
    fd: int | None
    name: str
    subdirs: list[str] | None = None
    depth: int = 0


def _walk_tree(
    top: int,
    on_file: Callable[[int, os.DirEntry[str], int], None],
    on_dir: Callable[[os.DirEntry[str], int], bool] | None = None,
    after_dir: Callable[[int, str], None] | None = None,
    on_error: Callable[[OSError], None] | None = None,
) -> None:
    """Visit every entry below the folder ``top`` by descriptor, depth first.

    ``on_file(parent_fd, entry, depth)`` for every non-folder, ``on_dir(entry, depth)``
    when a folder is found (it returns whether to walk into it), ``after_dir(parent_fd,
    name)`` once it has been walked.
    Errors go to ``on_error`` (the walk goes on with the rest) or are raised.  At most
    ``_KEEP_ALL + depth / _KEEP_EVERY`` descriptors are open at once.
    """
    frames = [_Frame(os.dup(top), "")]

    def fail(exc: OSError) -> None:
        if on_error is None:
            raise exc
        on_error(exc)

    try:
        while frames:
            frame = frames[-1]
            try:
                fd = _frame_fd(frames)
            except OSError as exc:
                fail(exc)
                _close(frames.pop().fd)
                continue
            if frame.subdirs is None:
                frame.subdirs = []
                try:
                    with os.scandir(fd) as entries:
                        items = list(entries)
                except OSError as exc:
                    fail(exc)
                    items = []
                for item in items:
                    try:
                        if item.is_dir(follow_symlinks=False):
                            if on_dir is None or on_dir(item, frame.depth):
                                frame.subdirs.append(item.name)
                        else:
                            on_file(fd, item, frame.depth)
                    except FileNotFoundError:
                        continue  # vanished while we walked
                    except OSError as exc:
                        fail(exc)
                frame.subdirs.reverse()
            if frame.subdirs:
                name = frame.subdirs.pop()
                try:
                    child = os.open(name, _O_DIR, dir_fd=fd)
                except FileNotFoundError:
                    continue
                except OSError as exc:
                    fail(exc)
                    continue
                depth = frame.depth + 1
                if depth > _KEEP_ALL and frame.depth % _KEEP_EVERY:
                    _close(frame.fd)  # re-opened from a kept ancestor when we come back
                    frame.fd = None
                frames.append(_Frame(child, name, depth=depth))
                continue
            done = frames.pop()
            _close(done.fd)
            if frames and after_dir is not None:
                try:
                    after_dir(_frame_fd(frames), done.name)
                except OSError as exc:
                    fail(exc)
    finally:
        for frame in frames:
            _close(frame.fd)


def _frame_fd(frames: list[_Frame]) -> int:
    """The descriptor of the last frame, re-opened by name from the nearest kept one."""
    if frames[-1].fd is not None:
        return frames[-1].fd
    i = len(frames) - 1
    while frames[i].fd is None:
        i -= 1
    fd = frames[i].fd
    assert fd is not None
    for frame in frames[i + 1 :]:
        try:
            nxt = os.open(frame.name, _O_DIR, dir_fd=fd)
        finally:  # renamed meanwhile, say: never leave the chain's descriptor open
            if fd != frames[i].fd:
                _close(fd)
        if frame is not frames[-1]:
            frame.fd = None
        fd = nxt
    frames[-1].fd = fd
    return fd


# --- readers and uploads --------------------------------------------------------------------


class LocalReader:
    """A regular file open for a download; owned by the caller, one thread at a time."""

    def __init__(self, fd: int, st: os.stat_result) -> None:
        self._fd = fd
        self._st = st
        self.size = st.st_size
        self.mtime = st.st_mtime
        self._pos = 0

    def fileno(self) -> int:
        return self._fd

    def readinto(self, buf: memoryview | bytearray) -> int:
        n = os.preadv(self._fd, [buf], self._pos)
        self._pos += n
        return n

    def read(self, size: int = -1) -> bytes:
        if size < 0:
            size = max(0, self.size - self._pos)
        data = os.pread(self._fd, size, self._pos)
        self._pos += len(data)
        return data

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._pos, os.SEEK_END: self.size}[whence]
        self._pos = base + offset
        return self._pos

    def recorded_digest(self, digest: str) -> str | None:
        return recorded_digest(self._fd, os.fstat(self._fd), digest)

    def digest(self, digest: str) -> str:
        """The recorded digest if still valid, else computed in one pass and recorded."""
        st = os.fstat(self._fd)
        known = recorded_digest(self._fd, st, digest)
        if known is not None:
            return known
        hasher = hashlib.new(digest, usedforsecurity=False)
        buf = bytearray(_CHUNK)
        view = memoryview(buf)
        pos = 0
        while True:
            n = os.preadv(self._fd, [view], pos)
            if not n:
                break
            hasher.update(view[:n])
            pos += n
        hexdigest = hasher.hexdigest()
        after = os.fstat(self._fd)
        if _stamp(after) == _stamp(st) and pos == st.st_size:
            record_digest(self._fd, after, digest, hexdigest)
        return hexdigest

    def close(self) -> None:
        _close(self._fd)
        self._fd = -1

    def __enter__(self) -> LocalReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class LocalUpload:
    """One upload's partial on disk.  Holds the target's folder open from the start and
    installs into that folder; owned by one session thread."""

    tree: LocalTree
    hit: _Hit
    size: int | None  # None: undeclared (FTP's STOR); the partial is <key>.stream
    resume: bool
    probe: bool = False  # only look: find what is held, make and remove nothing
    parts: Parts = field(init=False)
    offset: int = field(init=False, default=0)
    freed: int = field(init=False, default=0)
    target_exists: bool = field(init=False, default=False)
    target_size: int | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self.parts = self.hit.parts
        self.target_exists = self.hit.st is not None
        if self.hit.st is not None and stat_mod.S_ISREG(self.hit.st.st_mode):
            self.target_size = self.hit.st.st_size
        self._fd = -1
        self._folder = -1
        self._owned_folder = False
        self._unflushed_from = 0  # writeback not started from here on (``write``)
        self._unflushed = 0
        parent_dev = os.fstat(self.hit.dir_fd).st_dev
        places = self.tree._places(self.parts, self.hit.dir_fd)
        try:
            for folder, prefix, owned in places:
                if owned and os.fstat(folder).st_dev == parent_dev:
                    self._folder, self._prefix, self._owned_folder = folder, prefix, True
                    break
            else:
                _, prefix, _ = places[-1]
                self._folder, self._prefix = self.hit.dir_fd, prefix
        finally:
            for folder, _, owned in places:
                if owned and folder != self._folder:
                    _close(folder)
        self._name = f"{self._prefix}{'stream' if self.size is None else self.size}"
        self._open()

    def _open(self) -> None:
        """Find what an earlier upload of this size left; drop other sizes' partials.

        The partial itself is made only at the first write (or the commit), so an upload
        refused before it starts (e.g. by the quota) leaves nothing behind.
        """
        if not self.probe:
            with os.scandir(self._folder) as entries:
                stale = [e.name for e in entries if e.name.startswith(self._prefix)]
            for name in stale:
                if name != self._name:
                    self.freed += _unlink_counted(name, self._folder)
        st = _lstat(self._name, self._folder)
        held = st.st_size if st is not None and stat_mod.S_ISREG(st.st_mode) else 0
        if self.probe:
            self.offset = held
            return
        too_big = self.size is not None and held > self.size
        if held and (not self.resume or too_big):
            self.freed += _unlink_counted(self._name, self._folder)
            held = 0
        self.offset = held

    def _file(self) -> int:
        if self._fd < 0:
            flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | _CLOEXEC
            self._fd = os.open(self._name, flags, 0o666, dir_fd=self._folder)  # umask applies
            self._unflushed_from = os.lseek(self._fd, 0, os.SEEK_END)
            with contextlib.suppress(OSError):  # what `partials()` reports; optional
                target = "/".join(self.parts).encode("utf-8", "surrogateescape")
                os.setxattr(self._fd, _XATTR_TARGET, target)
        return self._fd

    def keeps_digest(self, name: str) -> bool:
        """Never: the caller hashes, and a resume reads the partial back (``read_prefix``)."""
        return False

    def hasher(self) -> Any:
        raise NotImplementedError("a local partial keeps no digest; see read_prefix")

    def read_prefix(self, hasher: Any) -> None:
        """Feed the ``offset`` bytes already held to ``hasher`` (a resume's check)."""
        buf = bytearray(min(_CHUNK, self.offset) or 1)
        view = memoryview(buf)
        pos = 0
        fd = self._file()
        while pos < self.offset:
            n = os.preadv(fd, [view[: min(len(buf), self.offset - pos)]], pos)
            if not n:
                raise InternalError("the partial upload shrank while it was being read")
            hasher.update(view[:n])
            pos += n

    def restart(self) -> int:
        """Drop the bytes held; returns how many were dropped."""
        fd = self._file()
        dropped = os.fstat(fd).st_size
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        self.offset = self._unflushed_from = self._unflushed = 0
        return dropped

    def truncate(self, offset: int) -> int:
        """Keep only the first ``offset`` bytes held (a resume at a shorter REST);
        returns how many were dropped."""
        fd = self._file()
        dropped = max(0, os.fstat(fd).st_size - offset)
        os.ftruncate(fd, offset)
        os.lseek(fd, offset, os.SEEK_SET)
        self.offset = self._unflushed_from = offset
        self._unflushed = 0
        return dropped

    def seed(self, nbytes: int) -> int:
        """Fill the (empty) partial with the finished target's first ``nbytes``, copied
        inside the file system (APPE onto a finished file).  Returns the bytes copied;
        fewer when the target shrank meanwhile."""
        assert self.hit.name is not None
        src = os.open(self.hit.name, _O_READ, dir_fd=self.hit.dir_fd)
        try:
            if not stat_mod.S_ISREG(os.fstat(src).st_mode):
                raise ConflictError("not a regular file")
            fd = self._file()
            copied = 0
            while copied < nbytes:
                n = self._copy_range(src, fd, copied, nbytes - copied)
                if not n:
                    break
                copied += n
        finally:
            _close(src)
        os.lseek(fd, copied, os.SEEK_SET)
        self.offset = self._unflushed_from = copied
        self._unflushed = 0
        return copied

    @staticmethod
    def _copy_range(src: int, dst: int, offset: int, count: int) -> int:
        """Copy up to ``count`` bytes at ``offset`` from ``src`` to ``dst`` (same offset)."""
        count = min(count, _CHUNK * 64)
        try:
            return os.copy_file_range(src, dst, count, offset, offset)
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
                raise
        data = os.pread(src, min(count, _CHUNK), offset)
        written = 0
        while written < len(data):
            written += os.pwrite(dst, data[written:], offset + written)
        return written

    def write(self, data: memoryview) -> int:
        fd = self._file()
        written = 0
        try:
            while written < len(data):
                written += os.write(fd, data[written:])
        except OSError as exc:
            exc.written = written  # type: ignore[attr-defined]  # a short write, then ENOSPC
            raise
        if self.tree.fsync:
            self._unflushed += written
            if self._unflushed >= WRITEBACK_STEP:  # let the disk work while we receive
                flush.start_writeback(fd, self._unflushed_from, self._unflushed)
                self._unflushed_from += self._unflushed
                self._unflushed = 0
        return written

    def commit(
        self,
        digest: str,
        hexdigest: str,
        mtime: float | None,
        before_install: Callable[[], None] | None = None,
    ) -> int:
        """Record the digest, flush, and rename the partial over the target in the folder
        held since the start; then flush that folder.  Returns the bytes replaced.

        ``before_install`` runs once the partial is durable, right before the rename;
        whatever it raises leaves the partial as it is (resumable).  The flushes are
        shared with whoever else commits on this file system now (``flush``)."""
        fd = self.seal(digest, hexdigest, mtime)
        if self.tree.fsync:
            flush.flush([fd])
        if before_install is not None:
            before_install()
        replaced = self.install()
        if self.tree.fsync:
            flush.flush([self.hit.dir_fd])  # the new name is durable too before "stored"
        return replaced

    def seal(self, digest: str, hexdigest: str, mtime: float | None) -> int:
        """Stamp the partial (mtime, recorded digest): the first half of a commit.
        Returns its descriptor, for the flush that must come before ``install``."""
        fd = self._file()
        if mtime is not None:
            ns = int(mtime * 1e9)
            os.utime(fd, ns=(ns, ns))
        record_digest(fd, os.fstat(fd), digest, hexdigest)
        return fd

    def install(self) -> int:
        """Rename the (sealed, flushed) partial over the target; returns the bytes
        replaced.  The name is durable only after a flush of ``hit.dir_fd``."""
        assert self.hit.name is not None
        old = _lstat(self.hit.name, self.hit.dir_fd)
        replaced = old.st_size if old is not None and stat_mod.S_ISREG(old.st_mode) else 0
        os.rename(self._name, self.hit.name, src_dir_fd=self._folder, dst_dir_fd=self.hit.dir_fd)
        self.target_exists = old is not None
        return replaced

    @staticmethod
    def commit_group(
        items: Sequence[tuple[LocalUpload, str, str, float | None]],
    ) -> list[int | BaseException]:
        """Commit several uploads with two shared flushes in all (group commit): seal
        each, flush, rename each, flush.  Each result is the bytes replaced or that
        upload's error; one failing leaves the others going.  Nothing is renamed before
        the flush of its bytes, nothing reported before the flush of its name."""
        results: list[int | BaseException] = [0] * len(items)
        sealed: list[tuple[int, int, bool]] = []  # (index, descriptor, flush wanted)
        for i, (upload, digest, hexdigest, mtime) in enumerate(items):
            try:
                sealed.append((i, upload.seal(digest, hexdigest, mtime), upload.tree.fsync))
            except OSError as exc:
                results[i] = exc
        named: list[tuple[int, int, bool]] = []
        for i in _flushed(sealed, results):
            upload = items[i][0]
            try:
                results[i] = upload.install()
            except OSError as exc:
                results[i] = exc
                continue
            named.append((i, upload.hit.dir_fd, upload.tree.fsync))
        _flushed(named, results)
        return results

    def discard(self) -> int:
        """Remove the partial; returns the bytes freed."""
        return _unlink_counted(self._name, self._folder)

    def close(self) -> None:
        _close(self._fd if self._fd >= 0 else None)
        self._fd = -1
        if self._owned_folder:
            _close(self._folder)
        self._owned_folder = False
        self.hit.close()


def _flushed(pending: list[tuple[int, int, bool]], results: list[int | BaseException]) -> list[int]:
    """One shared flush of the descriptors of ``pending`` (index, descriptor, wanted)
    that want one; if it fails, each of those gets the error in ``results``.  Returns
    the indices still good, in order."""
    try:
        flush.flush(fd for _, fd, wanted in pending if wanted)
    except OSError as exc:
        for i, _, wanted in pending:
            if wanted:
                results[i] = exc
        return [i for i, _, wanted in pending if not wanted]
    return [i for i, _, _ in pending]


class LocalStorage:
    """Trees under one folder on the local disk: ``home_root/NAME``."""

    def __init__(self, home_root: Path, fsync: bool = True) -> None:
        self.home_root = Path(home_root)
        self.fsync = fsync

    def prepare(self) -> None:
        """Make the folder of the homes if it is missing (at the daemon's start)."""
        self.home_root.mkdir(parents=True, exist_ok=True)

    def tree(self, root: str) -> LocalTree:
        return LocalTree(self.home_root / root, self.fsync)

    def roots(self) -> Iterator[str]:
        """The names of the trees that exist (user names never start with '.')."""
        try:
            with os.scandir(self.home_root) as entries:
                names = [e.name for e in entries if not e.name.startswith(".") and e.is_dir()]
        except FileNotFoundError:
            return
        yield from sorted(names)
