"""A user's view of their files, for every front end: paths, listings, changes, transfers.

One ``FileService`` per session.  It keeps the session's virtual working directory,
turns a client's path into the parts below the home (``..`` stops at ``/``, the reserved
names are refused), asks the storage tree to act, and keeps the quota ledger in step
inside each operation: an ``Upload`` owns its partial, its hasher, its reservation and
its claim on the target and settles them in ``commit`` or ``abort``; front ends never
add or subtract quota themselves.

This module must never see a frame, a reply code or a socket, and never touch the disk
except through the storage tree.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import itertools
import logging
import re
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import PurePosixPath
from typing import Any

from ftpd.core.login import Accounts, UserContext
from ftpd.core.runtime import Runtime
from ftpd.errors import (
    BadRequestError,
    ChecksumError,
    ConflictError,
    FTPError,
    InvalidPathError,
    NotFoundError,
    PathEscapeError,
    PermissionDeniedError,
    QuotaExceededError,
    from_oserror,
)
from ftpd.logs import clean
from ftpd.state.base import Claim, Claims, Ledgers, Reservation, Usage
from ftpd.storage.base import (
    Entry,
    PartialInfo,
    Parts,
    Reader,
    Removed,
    Storage,
    StoredUpload,
    commit_group,
    is_reserved,
)

logger = logging.getLogger(__name__)

#: Digests a transfer may use; md5 is the default and the one every upload records.
DIGESTS = ("md5", "sha1", "blake2b")
DEFAULT_DIGEST = "md5"
MAX_VPATH = 4096
MAX_NAME = 255
# Cc (C0, DEL, C1), Cs (lone surrogates) and the backslash, in one pass.
_BAD_TEXT = re.compile("[\x00-\x1f\x7f-\x9f\\\\\ud800-\udfff]")


def check_text(vpath: str) -> None:
    """Refuse NUL, control characters, lone surrogates, backslashes and over-long names.

    Raises:
        InvalidPathError: with the reason.
    """
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


def new_hasher(digest: str = DEFAULT_DIGEST) -> Any:
    """A fresh hash object for a transfer digest name.

    Raises:
        BadRequestError: not one of ``DIGESTS``.
    """
    if digest not in DIGESTS:
        raise BadRequestError(f"unsupported digest {digest!r}; use one of {DIGESTS}")
    return hashlib.new(digest, usedforsecurity=False)


def _shown_entries(shown: str, entries: Iterator[Entry], show_all: bool) -> Iterator[Entry]:
    """A listing's entries (dot files only with ``show_all``), errors named by ``shown``."""
    with about(shown):
        for entry in entries:
            if show_all or not entry.name.startswith("."):
                yield entry


def _last(shown: str) -> str:
    """The last name of a folded client path ("/" for the top)."""
    return shown.rpartition("/")[2] or "/"


def virtual(parts: Parts) -> str:
    return "/" + "/".join(parts)


def claim_key(user: str, parts: Parts) -> str:
    """The key of one target in the claims table: one upload per key at a time."""
    return f"{user}/{'/'.join(parts)}"


def expired(info: PartialInfo, ttl: float | None, now: float | None = None) -> bool:
    """Whether an unfinished upload has received nothing for ``ttl`` seconds."""
    return ttl is not None and (now or time.time()) - info.mtime > ttl


def _unfinished(info: PartialInfo) -> Entry:
    """The entry of a name that only an unfinished upload holds."""
    return Entry(info.parts[-1], "file", info.held, info.mtime, 0o644, info.held, info.expected)


def _log_expired(user: str, info: PartialInfo, freed: int) -> None:
    logger.info(
        "PARTIAL EXPIRED user=%s path=%s held=%d of %s freed=%d",
        user,
        clean(virtual(info.parts), 200),
        info.held,
        info.expected,
        freed,
    )


def sweep_partials(
    storage: Storage,
    ledgers: Ledgers,
    claims: Claims,
    ttl: float,
    on_removed: Callable[[str, PartialInfo, int], None] | None = None,
) -> int:
    """Remove every unfinished upload idle past ``ttl`` in every home (the daemon's
    periodic sweep, ``ftpd storage gc``); uploads still receiving bytes hold a claim and
    are kept.  ``on_removed(user, info, freed)`` hears of each.  Returns the bytes freed."""
    total = 0
    now = time.time()
    for user in storage.roots():
        tree = storage.tree(user)
        for info in tree.partials():
            if not expired(info, ttl, now) or claims.held(claim_key(user, info.parts)):
                continue
            freed = tree.remove_partial(info)
            ledger = ledgers.existing(user)
            if ledger is not None:
                ledger.adjust(-freed, 0)
            _log_expired(user, info, freed)
            if on_removed is not None:
                on_removed(user, info, freed)
            total += freed
    return total


@contextlib.contextmanager
def about(shown: str) -> Iterator[None]:
    """Name the client's own path in errors from below (never a real path)."""
    try:
        yield
    except FTPError as exc:
        _named(exc, shown)
        raise
    except OSError as exc:
        raise from_oserror(exc, shown) from None


@dataclass(frozen=True)
class QuotaInfo:
    """What ``quota`` reports: the ledger's counts, the limits, the unfinished uploads."""

    usage: Usage
    limit: int | None
    max_files: int | None
    partials: list[dict[str, Any]] = field(default_factory=list)

    @property
    def available(self) -> int | None:
        if self.limit is None:
            return None
        return max(0, self.limit - self.usage.used - self.usage.reserved)


class FileService:
    """One session's files.  Owned by that session's thread; shares the ledger, the
    claims and the storage with every other session of the user."""

    def __init__(
        self,
        user: UserContext,
        accounts: Accounts,
        runtime: Runtime,
        partial_ttl: float | None = None,
    ) -> None:
        self.user = user
        self.accounts = accounts
        self.runtime = runtime
        self.tree = user.tree
        self.ledger = user.ledger
        self.cwd = PurePosixPath("/")
        #: Unfinished uploads idle this long (seconds) are removed when next seen.
        self.partial_ttl = partial_ttl
        #: Claim keys of this session's uploads not yet settled (a session that pipelines
        #: holds several): never taken over by the session itself.
        self.claimed: set[str] = set()

    # --- paths ------------------------------------------------------------------------

    def normalize(self, vpath: str) -> PurePosixPath:
        """Join with the cwd and fold ``.``, ``..`` and ``//``; ``..`` stops at ``/``.

        Raises:
            InvalidPathError: NUL, control characters, too long.
            PathEscapeError: the reserved names.
        """
        return PurePosixPath("/", *self.fold(vpath)[1])

    def fold(self, vpath: str) -> tuple[str, Parts]:
        """``normalize`` as text and parts: ``("/a/b", ("a", "b"))`` (no ``pathlib`` on
        the hot path of every command).  Raises as ``normalize``."""
        check_text(vpath)
        joined = vpath if vpath.startswith("/") else f"{self.cwd}/{vpath}"
        parts: list[str] = []
        for part in joined.split("/"):
            if part in ("", "."):
                continue
            if part == "..":
                if parts:
                    parts.pop()
                continue
            parts.append(part)
        folded = tuple(parts)
        if is_reserved(folded):
            raise PathEscapeError("that name is reserved for the server's partial files")
        return "/" + "/".join(folded), folded

    def parts(self, vpath: str) -> Parts:
        return self.fold(vpath)[1]

    def resolve(self, vpath: str, follow: bool = True) -> tuple[str, Parts, Entry | None]:
        """Both locations of ``vpath``: the client's (folded) and the real one below the
        home (links resolved), and what is there (None: nothing yet)."""
        shown, folded = self.fold(vpath)
        try:
            found = self.tree.lookup(folded, follow)
        except FTPError as exc:  # what ``about(shown)`` does, without a generator
            _named(exc, shown)
            raise
        except OSError as exc:
            raise from_oserror(exc, shown) from None
        return shown, found.parts, found.entry

    def _existing(
        self,
        vpath: str,
        with_partial: bool = False,
        partials: list[PartialInfo] | None = None,
    ) -> tuple[str, Parts, Entry]:
        """What is at ``vpath``; ``with_partial``: an unfinished upload counts as there
        (and marks a finished file it would replace), among ``partials`` if given."""
        shown, parts, entry = self.resolve(vpath)
        if with_partial and parts and (entry is None or entry.kind == "file"):
            known = self._partials() if partials is None else partials
            info = next((p for p in known if p.parts == parts), None)
            if info is not None:
                marked = _unfinished(info) if entry is None else entry
                entry = replace(marked, partial=info.held, expected=info.expected)
        if entry is None:
            raise NotFoundError(f"{shown}: no such file or directory")
        return shown, parts, entry

    # --- browsing ---------------------------------------------------------------------

    def pwd(self) -> str:
        return str(self.cwd)

    def cd(self, vpath: str) -> str:
        """Change the working directory to an existing folder; returns the new one."""
        shown, parts, entry = self._existing(vpath)
        if entry.kind != "dir":
            raise NotFoundError(f"{shown}: not a directory")
        cwd = virtual(parts)
        check_text(cwd)  # e.g. a folder whose name is not valid UTF-8
        self.cwd = PurePosixPath(cwd)
        return cwd

    def listing(
        self, vpath: str, show_all: bool = False, unfinished: bool = True
    ) -> tuple[str, list[Entry]]:
        """``iter_listing`` as a list (for small folders and tests)."""
        shown, entries = self.iter_listing(vpath, show_all, unfinished)
        return shown, list(entries)

    def iter_listing(
        self, vpath: str, show_all: bool = False, unfinished: bool = True
    ) -> tuple[str, Iterator[Entry]]:
        """A folder's entries sorted by name (dot files only with ``show_all``), or the
        one entry of a file, named as the client named it.  Names that an unfinished
        upload is filling are marked (``partial``, ``expected``); a name that only such
        an upload holds is listed as a file of the bytes received so far.  The entries
        are produced as they are read, so memory stays bounded whatever the size.
        ``unfinished=False`` leaves unfinished uploads out (FTP's LIST/NLST/MLSD: a
        client would take such a name for a file it can RETR; SIZE and MLST show them)."""
        shown, folded = self.fold(vpath)
        partials = self._partials() if unfinished else []
        # No unfinished upload anywhere (the usual case): the folder is listed straight
        # away, with no lookup before it; anything else takes the way that names it.
        listed = None if partials else self._listed(shown, folded, show_all)
        if listed is not None:
            return shown, listed
        shown, parts, entry = self._existing(vpath, unfinished, partials)
        if entry.kind != "dir":
            return shown, iter([replace(entry, name=_last(shown))])
        pending = {p.parts[-1]: p for p in partials if p.parts[:-1] == parts}
        entries = self._merged(shown, self.tree.listdir(parts), pending)
        if show_all:
            return shown, entries
        return shown, (e for e in entries if not e.name.startswith("."))

    def _listed(self, shown: str, folded: Parts, show_all: bool) -> Iterator[Entry] | None:
        """The entries of the folder at ``folded``, its lookup done (errors named as
        ``resolve`` names them); None when it is missing or not a folder."""
        try:
            entries = self.tree.listdir(folded)
            first = next(entries)  # a generator: the lookup happens here
        except StopIteration:
            return iter(())
        except (NotFoundError, ConflictError):
            return None
        except FTPError as exc:
            _named(exc, shown)
            raise
        except OSError as exc:
            raise from_oserror(exc, shown) from None
        return _shown_entries(shown, itertools.chain((first,), entries), show_all)

    def _merged(
        self, shown: str, entries: Iterator[Entry], pending: dict[str, PartialInfo]
    ) -> Iterator[Entry]:
        extra = sorted(pending)
        with about(shown):
            for entry in entries:
                while extra and extra[0] < entry.name:
                    yield _unfinished(pending[extra.pop(0)])
                if extra and extra[0] == entry.name:
                    info = pending[extra.pop(0)]
                    entry = replace(entry, partial=info.held, expected=info.expected)
                yield entry
        for name in extra:
            yield _unfinished(pending[name])

    def stat(self, vpath: str) -> tuple[str, Entry, str | None]:
        """One entry, named as the client named it, and its recorded md5 (never computed).

        A name that only an unfinished upload holds answers with the bytes received so
        far, marked ``partial``."""
        shown, parts, entry = self._existing(vpath, with_partial=True)
        entry = replace(entry, name=_last(shown))
        checksum = None
        if entry.kind == "file" and entry.partial is None:
            with about(shown), contextlib.suppress(FTPError):
                reader = self.tree.open_read(parts)
                try:
                    checksum = reader.recorded_digest(DEFAULT_DIGEST)
                finally:
                    reader.close()
        return shown, entry, checksum

    def _partials(self) -> list[PartialInfo]:
        """This user's unfinished uploads; those idle past ``partial_ttl`` are removed."""
        kept = []
        for info in self.tree.partials():
            if expired(info, self.partial_ttl) and not self.runtime.claims.held(
                claim_key(self.user.name, info.parts)
            ):
                freed = self.tree.remove_partial(info)
                self.ledger.adjust(-freed, 0)
                _log_expired(self.user.name, info, freed)
                continue
            kept.append(info)
        return kept

    # --- changes ----------------------------------------------------------------------

    def mkdir(self, vpath: str, parents: bool = False) -> str:
        """Make a folder (``parents``: and the missing ones above; an existing folder is
        fine).  Each new folder counts against ``max_files``."""
        shown = str(self.normalize(vpath))
        parts = self.parts(vpath)
        if not parts:
            if parents:
                return shown
            raise ConflictError("/: already exists")
        held = self.ledger.reserve(0, 0, self.accounts.limits(self.user.name))
        made = 0

        def before_create(n: int) -> None:
            nonlocal made
            held.take_entries(n)
            made += n

        try:
            with about(shown):
                self.tree.mkdir(parts, parents, before_create)
        except ConflictError as exc:
            if parents:
                raise ConflictError(f"{shown}: exists and is not a directory") from None
            raise exc
        finally:
            held.close(0, made)
        return shown

    def rm(self, vpath: str, recursive: bool = False) -> str:
        """Remove a file or link (or a whole folder with ``recursive``); on a name that
        only an interrupted upload holds, give that upload up.  Returns a message."""
        shown = str(self.normalize(vpath))
        parts = self.parts(vpath)
        if not parts:
            raise PermissionDeniedError("/: that is your home")
        removed = [0, 0]

        def tally(r: Removed) -> None:
            removed[0] += r.nbytes
            removed[1] += r.entries

        with self.ledger.changing():  # no recount is kept while this runs
            try:
                with about(shown):
                    self.tree.remove(parts, recursive, tally)
            except NotFoundError:
                if self._uploading(parts):
                    raise ConflictError(f"{shown}: being uploaded by another session") from None
                dropped = self.tree.discard_partials(parts)
                if not dropped.entries:
                    raise
                self.ledger.adjust(-dropped.nbytes, 0)
                return f"removed the interrupted upload of {shown}"
            finally:
                self.ledger.adjust(-removed[0], -removed[1])
        if not self._uploading(parts):  # a running upload keeps its partial
            dropped = self.tree.discard_partials(parts)
            self.ledger.adjust(-dropped.nbytes, 0)
        if recursive and removed[1] > 1:
            return f"removed {shown} ({removed[1]} entries)"
        return f"removed {shown}"

    def _uploading(self, parts: Parts) -> bool:
        """Whether a session is uploading to ``parts`` right now (lexical or real)."""
        claims = self.runtime.claims
        if claims.held(claim_key(self.user.name, parts)):
            return True
        try:
            real = self.tree.lookup(parts, follow=False).parts
        except FTPError:
            return False
        return claims.held(claim_key(self.user.name, real))

    def rmdir(self, vpath: str) -> str:
        shown = self.normalize(vpath)
        parts = shown.parts[1:]
        if not parts:
            raise PermissionDeniedError("/: that is your home")
        with about(str(shown)), self.ledger.changing():
            self.tree.rmdir(parts)
            self.ledger.adjust(0, -1)
        if self.cwd.is_relative_to(shown):
            self.cwd = shown.parent
        return str(shown)

    def mv(self, src: str, dst: str) -> str:
        """Rename or move; into ``dst`` if it is a folder (like mv(1)).  Returns the new
        virtual path."""
        src_v = self.normalize(src)
        if not src_v.parts[1:]:
            raise PermissionDeniedError("/: that is your home")
        dst_shown, dst_parts, dst_entry = self.resolve(dst)
        if dst_entry is not None and dst_entry.kind == "dir":
            dst_parts = (*dst_parts, src_v.name)
            dst_shown = str(PurePosixPath(dst_shown) / src_v.name)
        else:
            dst_parts = self.parts(dst)
        with about(str(src_v)), self.ledger.changing():
            replaced = self.tree.rename(src_v.parts[1:], dst_parts)
            self.ledger.adjust(-replaced.nbytes, -replaced.entries)
        return dst_shown

    def set_mtime(self, vpath: str, mtime: float) -> None:
        shown, parts, _ = self._existing(vpath)
        with about(shown):
            self.tree.set_mtime(parts, mtime)

    def quota(self) -> QuotaInfo:
        """The ledger's counts (no walk of the home) and the unfinished uploads."""
        account = self.accounts.check(self.user.name)
        partials = [
            {"path": virtual(p.parts), "size": p.held, "expected": p.expected, "mtime": p.mtime}
            for p in sorted(self._partials(), key=lambda p: p.parts)
        ]
        return QuotaInfo(self.ledger.usage(), account.quota_bytes, account.max_files, partials)

    # --- transfers ------------------------------------------------------------------

    def upload(
        self, vpath: str, size: int | None, digest: str = DEFAULT_DIGEST, resume: bool = True
    ) -> Upload:
        """Begin an upload of ``size`` bytes: claim the target, find or make its partial,
        reserve the room it still needs.  The caller writes, then commits or aborts.

        ``size`` None: a size the client does not declare (FTP's STOR).  Its partial is
        the target's one ``stream`` partial, and the quota is reserved as bytes arrive:
        the write that would pass the limit raises ``QuotaExceededError``.

        Raises:
            NotFoundError: the folder does not exist.
            ConflictError: the target is a folder, or another session is uploading it.
            QuotaExceededError: the rest does not fit.
        """
        hasher = new_hasher(digest)
        shown = str(self.normalize(vpath))
        for _ in range(3):
            with about(shown):
                found = self.tree.lookup(self.parts(vpath))
            if found.entry is not None and found.entry.kind == "dir":
                raise ConflictError(f"{shown}: is a directory")
            key = claim_key(self.user.name, found.parts)
            if key in self.claimed:
                raise ConflictError(f"{shown}: being uploaded by this session")
            claim = self.runtime.claim(key, self._interrupt)
            self.claimed.add(key)
            try:
                with about(shown):
                    stored = self.tree.begin_upload(found.parts, size, resume)
            except BaseException:
                claim.release()
                self.claimed.discard(key)
                raise
            if stored.parts == found.parts:
                return Upload(self, stored, claim, shown, size, digest, hasher)
            stored.close()  # the path moved between the lookup and the claim: again
            claim.release()
            self.claimed.discard(key)
        raise ConflictError(f"{shown}: the path keeps changing; try again")

    #: Set by the front end: how a takeover stops this session's stalled upload.
    interrupt: Callable[[], None] | None = None

    def _interrupt(self) -> None:
        if self.interrupt is not None:
            self.interrupt()

    def download(self, vpath: str, digest: str | None = DEFAULT_DIGEST) -> Download:
        """Open a file for download with its digest (recorded, or computed once).

        ``digest`` None: no digest (``checksum`` is None; FTP's RETR sends none, so a
        big file starts streaming at once even when nothing is recorded).

        Raises:
            NotFoundError, ConflictError: missing, a folder, not a regular file.
        """
        if digest is not None:
            new_hasher(digest)
        shown = str(self.normalize(vpath))
        with about(shown):
            reader = self.tree.open_read(self.parts(vpath))
        return Download(self, reader, shown, digest)


class Upload:
    """One upload in one session thread: partial, hasher, reservation and claim.

    ``write`` hashes and stores; after a write error it keeps the error and discards
    the rest, so a front end can read the body to its end and still answer (a full disk
    gives its space back at once).  ``commit`` verifies and installs; ``abort`` keeps
    the partial for a resume; ``drop`` deletes it.  Each settles the quota and releases
    the claim.

    Without a declared size (``size`` None) the room is reserved as bytes arrive, in
    steps checked against the limit like any reservation, so two sessions cannot
    jointly pass it; the write that would pass it raises ``QuotaExceededError``.
    ``seek`` and ``seed`` place a resume (REST, APPE): at a shorter offset of the
    partial, or on a copy of the finished target's first bytes.
    """

    def __init__(
        self,
        files: FileService,
        stored: StoredUpload,
        claim: Claim,
        shown: str,
        size: int | None,
        digest: str,
        hasher: Any,
    ) -> None:
        self.files, self.stored, self.claim = files, stored, claim
        self.shown, self.digest, self.hasher = shown, digest, hasher
        #: Undeclared size: room is reserved as bytes arrive (``size`` is then 0).
        self.streaming = size is None
        self.size: int = size or 0
        self.offset = stored.offset
        self.started = time.monotonic()
        self.error: OSError | None = None
        if stored.freed:  # stale partials just removed: their room is free before we reserve
            files.ledger.adjust(-stored.freed, 0)
        self._delta = 0  # net bytes this upload added on disk
        self._done = False
        self._prefix_hashed = False
        self._extra: list[Reservation] = []  # steps reserved as bytes arrive (size None)
        self._room = 0  # bytes reserved in those steps and not written yet
        self._transfer = files.runtime.transfer()
        #: The store hashes what it holds itself (S3's md5, saved per part): this
        #: upload reads its hasher instead of hashing every byte a second time.
        self._kept = stored.keeps_digest(digest)
        new_entry = 0 if stored.target_exists else 1
        need = 0 if self.streaming else self.size - self.offset
        try:
            limits = files.accounts.limits(files.user.name)
            self.reservation: Reservation = files.ledger.reserve(need, new_entry, limits)
        except BaseException:
            self._release(settle=False)
            raise
        self._transfer.__enter__()

    def prefix_checksum(self) -> str | None:
        """The digest of the bytes already held (a resume), or None when there are none."""
        if not self.offset:
            return None
        if self._kept:
            return str(self._kept_hasher().hexdigest())
        if not self._prefix_hashed:
            with about(self.shown):
                restored = self.stored.read_prefix(self.hasher)
            if restored is not None:  # a store that saved the hash state gives it back
                self.hasher = restored
            self._prefix_hashed = True
        return str(self.hasher.copy().hexdigest())

    def _kept_hasher(self) -> Any:
        """The store's hasher of every byte held (``keeps_digest``), a copy to read."""
        with about(self.shown):
            return self.stored.hasher()

    def restart(self) -> None:
        """The client's source changed: drop what is held and start from byte 0."""
        with about(self.shown):
            dropped = self.stored.restart()
        self._delta -= dropped
        self.reservation.grow(self.offset)
        self.offset = 0
        self.hasher = new_hasher(self.digest)
        self._prefix_hashed = False

    @property
    def target_size(self) -> int | None:
        """The size of the finished file this upload replaces (None: there is none)."""
        return getattr(self.stored, "target_size", None)

    def _hold(self, nbytes: int) -> None:
        """Reserve ``nbytes`` more for an upload of undeclared size (see the class).

        Raises:
            QuotaExceededError: they do not fit.
        """
        if nbytes <= self._room:
            self._room -= nbytes
            return
        need = nbytes - self._room
        limits = self.files.accounts.limits(self.files.user.name)
        amount = max(need, STREAM_STEP)
        try:
            step = self.files.ledger.reserve(amount, 0, limits)
        except QuotaExceededError:
            amount = need  # near the limit: exactly what this write needs, or refuse
            step = self.files.ledger.reserve(amount, 0, limits)
        self._extra.append(step)
        self._room = amount - need

    def seek(self, offset: int) -> None:
        """Resume at ``offset`` (REST): the partial must hold at least that much; bytes
        past it are dropped.

        Raises:
            BadRequestError: the partial holds less than ``offset``.
        """
        if offset == self.offset:
            return
        if offset > self.offset:
            raise BadRequestError(
                f"{self.shown}: cannot resume at {offset}; {self.offset} bytes are held"
            )
        with about(self.shown):
            self._delta -= self.stored.truncate(offset)
        self.offset = offset
        self.hasher = new_hasher(self.digest)
        self._prefix_hashed = False

    def seed(self, nbytes: int) -> None:
        """Start from a copy of the finished target's first ``nbytes`` (APPE, or REST on
        a finished file); what the partial held is dropped.  Undeclared size only.

        Raises:
            BadRequestError: the target is missing or shorter than ``nbytes``.
            QuotaExceededError: the copy does not fit.
        """
        target = self.target_size
        if not self.streaming or target is None or nbytes > target:
            raise BadRequestError(f"{self.shown}: cannot resume at {nbytes}")
        with about(self.shown):
            self._delta -= self.stored.restart()
            self.offset = 0
            self._hold(nbytes)
            copied = self.stored.seed(nbytes)
        self._delta += copied
        self.offset = copied
        self.hasher = new_hasher(self.digest)
        self._prefix_hashed = False
        if copied != nbytes:
            raise ConflictError(f"{self.shown}: the file changed while it was copied")

    def write(self, data: memoryview) -> None:
        """Hash and store the next bytes (see the class docstring for errors)."""
        if self.offset and not self._prefix_hashed and not self._kept:
            self.prefix_checksum()
        if self.streaming:
            self._hold(len(data))
        if not self._kept:
            self.hasher.update(data)
        self.claim.touch()
        if self.error is not None:
            return
        try:
            self._delta += self.stored.write(data)
        except OSError as exc:
            self._delta += getattr(exc, "written", 0)  # what landed before the error
            self.error = exc
            if exc.errno in _DISK_FULL:  # give the space back now, not after the body
                with contextlib.suppress(OSError):
                    self._delta -= self.stored.restart()

    def commit(
        self,
        checksum: str | None = None,
        mtime: float | None = None,
        before_install: Callable[[], None] | None = None,
    ) -> str:
        """Verify the whole-file digest (if the client sent one) and install the file.

        Returns the digest; the file is durable under its name when this returns.
        ``before_install`` is called once the partial is durable, right before it takes
        its name: whatever it raises stops the install and keeps the partial for a
        resume (FTP: the client must still be there to hear the answer).

        Raises:
            ChecksumError: the digests differ; the partial is deleted.
            OSError: a write failed earlier (a full disk deletes the partial).
        """
        try:
            actual = self._verify(checksum)
            with about(self.shown):
                if before_install is None:
                    replaced = self.stored.commit(self.digest, actual, mtime)
                else:
                    replaced = self.stored.commit(self.digest, actual, mtime, before_install)
            self._installed(replaced)
            return actual
        finally:
            self._release(settle=True)

    def _verify(self, checksum: str | None) -> str:
        """The whole-file digest, checked against the client's (the first half of a
        commit).  Raises as ``commit`` does; a mismatch deletes the partial."""
        if self.offset and not self._prefix_hashed and not self._kept:
            self.prefix_checksum()
        if self.error is not None:
            if self.error.errno in _DISK_FULL:
                self._delta -= self.stored.discard()
            raise from_oserror(self.error, self.shown)
        actual = str((self._kept_hasher() if self._kept else self.hasher).hexdigest())
        if checksum is not None and actual != checksum:
            self._delta -= self.stored.discard()
            raise ChecksumError(
                f"{self.shown}: {self.digest} mismatch (sent {checksum}, received "
                f"{actual}); nothing was installed",
                received=actual,
            )
        return actual

    def _installed(self, replaced: int) -> None:
        self._delta -= replaced
        self._done = True

    def abort(self) -> None:
        """Stop here; what was written stays as a partial for a resume."""
        self._release(settle=True)

    def drop(self) -> None:
        """Stop here and delete the partial (e.g. the quota was reached mid-upload)."""
        try:
            with contextlib.suppress(OSError):
                self._delta -= self.stored.discard()
        finally:
            self._release(settle=True)

    @staticmethod
    def held(files: FileService, vpath: str) -> int | None:
        """Bytes an interrupted upload of undeclared size holds for ``vpath`` (None: no
        such partial), without claiming, creating or removing anything."""
        shown = str(files.normalize(vpath))
        with about(shown):
            found = files.tree.lookup(files.parts(vpath))
            if found.entry is not None and found.entry.kind == "dir":
                return None
            stored = files.tree.begin_upload(found.parts, None, True, probe=True)
        try:
            return stored.offset or None
        finally:
            stored.close()

    def _release(self, settle: bool) -> None:
        if getattr(self, "_released", False):
            return
        self._released = True
        try:
            if settle:
                self._transfer.__exit__(None, None, None)
                added = 1 if self._done and not self.stored.target_exists else 0
                for step in self._extra:
                    step.close(0, 0)
                self.reservation.close(self._delta, added)
            elif self._delta:
                self.files.ledger.adjust(self._delta, 0)
        finally:
            # Closing may still store bytes (on S3, the buffer as the tail object): the
            # claim's lease counts from here, so that a slow close does not look like a
            # stalled upload that another node may take over.
            self.claim.touch()
            self.stored.close()
            self.claim.release()
            self.files.claimed.discard(claim_key(self.files.user.name, self.stored.parts))

    def __enter__(self) -> Upload:
        return self

    def __exit__(self, *exc: object) -> None:
        self.abort()


def commit_many(batch: Sequence[tuple[Upload, str | None, float | None]]) -> list[str | FTPError]:
    """Commit uploads that arrived together (``Upload.commit`` for each: ``checksum``,
    ``mtime``) so that they share their flushes: all are verified, then made durable,
    installed and their names made durable with two flushes in all on the local disk
    (group commit, ``ftpd.storage.flush``).  Each result is that upload's digest (it is
    durable under its name) or its error; one failing leaves the others going.
    """
    results: list[str | FTPError] = []
    ready: list[tuple[int, Upload, str]] = []
    try:
        for upload, checksum, _ in batch:
            try:
                actual = upload._verify(checksum)
            except (FTPError, OSError) as exc:
                upload._release(settle=True)
                results.append(
                    exc if isinstance(exc, FTPError) else from_oserror(exc, upload.shown)
                )
                continue
            ready.append((len(results), upload, actual))
            results.append(actual)
        mtimes = [mtime for _, _, mtime in batch]
        outcomes = commit_group([(u.stored, u.digest, actual, mtimes[i]) for i, u, actual in ready])
        for (i, upload, _), outcome in zip(ready, outcomes, strict=True):
            if isinstance(outcome, FTPError):
                results[i] = _named(outcome, upload.shown)
            elif isinstance(outcome, OSError):
                results[i] = from_oserror(outcome, upload.shown)
            elif isinstance(outcome, BaseException):
                raise outcome
            else:
                upload._installed(outcome)
    finally:  # whatever happened, every claim, reservation and descriptor goes back
        for upload, _, _ in batch:
            upload._release(settle=True)
    return results


def _named(exc: FTPError, shown: str) -> FTPError:
    """``exc`` with the client's own path in front of its message (once)."""
    if not exc.message.startswith(shown + ":"):
        exc.message = f"{shown}: {exc.message}"
        exc.args = (exc.message,)
    return exc


_DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
#: Room an upload of undeclared size reserves at a time (one check per step).
STREAM_STEP = 1024 * 1024


class Download:
    """One download in one session thread: the open file and its whole-file digest."""

    def __init__(self, files: FileService, reader: Reader, shown: str, digest: str | None) -> None:
        self.reader = reader
        self.shown = shown
        self.digest = digest
        self.size = reader.size
        self.mtime = reader.mtime
        self._transfer = files.runtime.transfer()
        self._transfer.__enter__()
        try:
            with about(shown):
                self.checksum = reader.digest(digest) if digest is not None else None
        except BaseException:
            self.close()
            raise

    def fileno(self) -> int:
        return self.reader.fileno()

    # read and seek: what socket.sendfile falls back to on a TLS socket
    def read(self, size: int = -1) -> bytes:
        return self.reader.read(size)

    def seek(self, offset: int, whence: int = 0) -> int:
        return self.reader.seek(offset, whence)

    def close(self) -> None:
        if self.reader is not None:
            self.reader.close()
            self._transfer.__exit__(None, None, None)
            self.reader = None  # type: ignore[assignment]

    def __enter__(self) -> Download:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
