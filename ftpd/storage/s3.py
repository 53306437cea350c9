"""S3-compatible object storage: every root is a key prefix of one bucket.

A tree is ``{prefix}{root}/`` in the bucket.  A file is the object ``{home}a/b/name``; a
folder is the zero-byte marker ``{home}a/b/`` (so an empty folder exists, and ``mkdir``,
``rmdir`` and listings behave as on disk); a folder that only its contents imply (keys
written by another tool) counts as a folder too.  There are no links: a lookup never
follows anything, and the reserved names stay reserved (``.ftpd`` at the top, where
unfinished uploads keep their parts and state, and ``.ftpd-part.*`` anywhere).

Uploads are ``S3Upload`` (``ftpd.storage.s3_upload``): parts streamed into one
multipart upload of the target key, completed at commit, so an object is whole or
absent, every byte is written once, and any node can resume (from the saved hash
state).  Downloads stream with ranged GETs and never hold a whole file.  A file's
digest (md5 by default) and mtime live in its metadata (one PutObject) or, for a
multipart upload, in tags set after completion and bound to its ETag.

What each operation costs (requests; P = parts of an upload, 8 MiB each by default):

=====================  ==============================================================
lookup                 1 HEAD for a file; any other name +1 LIST of the keys below it
                       beside its folder's check (1 HEAD of that folder's marker, on
                       the pool side by side), +1 HEAD of its own marker when it has
                       one (the folder's mtime)
stat                   1 HEAD for a file; a folder 2 (HEAD file, HEAD marker), +1 LIST
                       when only its contents imply it
ls                     1 LIST per 1,000 names, then 1 HEAD per entry (the mtime lives
                       in metadata), 16 at a time; through the file service +1 LIST of
                       unfinished uploads and the folder's lookups: 7 for one file
mkdir                  1 conditional PUT per folder made, after the lookups
rmdir                  1 LIST (is it empty?) + 1 DELETE
rm file                1 HEAD + 1 DELETE
rm -r                  1 LIST per 1,000 keys + 1 DeleteObjects per 1,000 keys
mv file                1 CopyObject (multipart copy above 5 GiB: 1 UploadPartCopy per
                       512 MiB) + 1 DELETE: a server-side copy of every byte
mv folder              every key below it copied (16 at a time), then deleted: a
                       server-side copy of every byte of the folder
set mtime              a file: 1 CopyObject onto itself (metadata only, but the store
                       copies the bytes); a folder: 1 PUT of its marker (SeaweedFS keeps
                       no metadata on folders: there a folder's mtime is its marker's)
get                    1 HEAD, then 1 ranged GET per 16 MiB read
put <= one part        1 PutObject at commit, conditional on what the lookup saw
                       (If-None-Match / If-Match; a HEAD only when that fails), after
                       the lookups and 1 LIST of unfinished uploads: 5 requests for a
                       new name (3 when it replaces a file) through the file service
put of P parts         1 CreateMultipartUpload, P UploadPart (``parts_in_flight`` at a
                       time) and small state PUTs (one at a time) as they land; at commit
                       1 HEAD, 1 UploadPart of the last buffer, 1 Complete and 1
                       PutObjectTagging (the digest): no copy
resume                 1 GET of the state + 1 LIST + 1 ListParts (+1 GET of the tail);
                       nothing is re-read (the hash state is in the state)
quota / partials       1 LIST per 1,000 keys of ``.ftpd/partial`` + 1 GET per upload
usage (recount)        1 LIST per 1,000 keys of the home + 1 GET per unfinished upload
=====================  ==============================================================

``mv`` of a folder copies every key first and deletes the sources only once every copy
succeeded, so a node that dies half-way leaves the source whole and part of it copied
(run ``mv`` again into a fresh name, or ``rm -r`` the partial copy), never a lost file.

boto3 is imported when an ``S3Storage`` is made, so a daemon on the local disk never
loads it.  This module must never know about users, quotas or protocols, and never
hand a caller a key outside its tree's prefix.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from ftpd.errors import (
    ConflictError,
    FTPError,
    NotFoundError,
    PathEscapeError,
    PermissionDeniedError,
    UnavailableError,
)
from ftpd.storage.base import (
    PARTIAL_PREFIX,
    RESERVED,
    Entry,
    Found,
    PartialInfo,
    Parts,
    Removed,
    is_reserved,
)
from ftpd.storage.s3_objects import (
    DELETE_BATCH,
    META_MTIME,
    MIN_PART,
    NOT_FOUND,
    PART_SIZE,
    PARTS_IN_FLIGHT,
    Bucket,
    S3Reader,
    answer,
    error_code,
    fan_out,
    make_client,
    mtime_of,
    translate,
    translated,
)
from ftpd.storage.s3_partials import PARTIAL_FOLDER, PartialStates
from ftpd.storage.s3_upload import S3Upload

logger = logging.getLogger(__name__)

#: How long a lookup's answer stands in for ``begin_upload``'s own (same thread).
SEEN_S = 2.0
#: Listing entries' permission bits (an object store keeps none).
FILE_MODE, DIR_MODE = 0o644, 0o755


# --- the backend --------------------------------------------------------------------------


class S3Storage:
    """One bucket (and key prefix) of an S3-compatible store.  Built by the main thread,
    shared by every session: the boto3 client and the worker pool are thread-safe."""

    def __init__(
        self,
        endpoint_url: str | None,
        bucket: str,
        prefix: str = "",
        region: str | None = None,
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
        part_size: int = PART_SIZE,
        connect_timeout_s: float = 5.0,
        read_timeout_s: float = 60.0,
        max_attempts: int = 4,
        max_connections: int = 64,
        workers: int = 48,
        parts_in_flight: int = PARTS_IN_FLIGHT,
    ) -> None:
        if part_size < MIN_PART:
            raise ValueError(f"part_size must be at least {MIN_PART} bytes (S3's minimum)")
        self.bucket = bucket
        self.prefix = prefix
        self.part_size = part_size
        #: Parts one upload stores at once (each holds ``part_size`` bytes of memory).
        self.parts_in_flight = max(1, parts_in_flight)
        self.client: Any = make_client(
            endpoint_url,
            region,
            access_key_id,
            secret_access_key,
            connect_timeout_s,
            read_timeout_s,
            max_attempts,
            max_connections,
        )
        self.store = Bucket(self.client, bucket)
        #: Background part uploads, copies and HEADs; its tasks never submit tasks.
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="s3")

    def prepare(self) -> None:
        """Check at start that the bucket is there and the credentials are accepted.

        Raises:
            UnavailableError: with the reason (unreachable, refused, no such bucket).
        """
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except Exception as exc:
            if error_code(exc) in NOT_FOUND:
                raise UnavailableError(f"the object store has no bucket {self.bucket!r}") from None
            raise translate(exc) from None

    def tree(self, root: str) -> S3Tree:
        return S3Tree(self, root)

    def roots(self) -> Iterator[str]:
        """The names of the trees that exist (user names never start with '.')."""
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=self.prefix, Delimiter="/"
        )
        with translated("list roots"):
            names = [
                p["Prefix"][len(self.prefix) : -1]
                for page in pages
                for p in page.get("CommonPrefixes", [])
            ]
        yield from sorted(n for n in names if n and not n.startswith("."))

    def close(self) -> None:
        self.pool.shutdown(wait=True)


@dataclass
class _Listed:
    """One name of a folder listing, before its HEAD."""

    name: str
    kind: str
    size: int = 0
    key: str = ""


class S3Tree:
    """One root's keys.  Thread-safe: it holds the storage and its own prefix only."""

    def __init__(self, storage: S3Storage, root: str) -> None:
        self.storage = storage
        self.client = storage.client
        self.bucket = storage.bucket
        self.store = storage.store
        self.home = f"{storage.prefix}{root}/"
        self.states = PartialStates(self)
        #: This thread's last lookup of a file or a missing name: (key, HEAD, when).
        self._seen = threading.local()

    # --- keys -------------------------------------------------------------------------

    def key(self, parts: Parts) -> str:
        return self.home + "/".join(parts)

    def dir_key(self, parts: Parts) -> str:
        return self.home + "".join(p + "/" for p in parts)

    @staticmethod
    def _check(parts: Parts) -> None:
        if is_reserved(parts):
            raise PathEscapeError("that name is reserved for the server's own files")

    # --- lookups ------------------------------------------------------------------------

    def ensure(self) -> None:
        """Make the root's marker if it is missing."""
        if self.store.head(self.home) is None:
            self.store.put_marker(self.home)

    def _dir_entry(self, parts: Parts) -> Entry | None:
        """The folder at ``parts`` (its marker, or keys below it), or None."""
        name = parts[-1] if parts else "/"
        head = self.store.head(self.dir_key(parts))
        if head is not None:
            return Entry(name, "dir", 0, mtime_of(head), DIR_MODE)
        if not parts:
            return Entry(name, "dir", 0, 0.0, DIR_MODE)  # a root exists before its marker
        page = self.store.list_page(self.dir_key(parts), 1)
        if page.get("KeyCount", len(page.get("Contents", []))):
            return Entry(name, "dir", 0, 0.0, DIR_MODE)
        return None

    def _stat(self, parts: Parts) -> Entry | None:
        if parts:
            head = self.store.head(self.key(parts))
            if head is not None:
                mtime = self.store.mtime(self.key(parts), head)
                return Entry(parts[-1], "file", head["ContentLength"], mtime, FILE_MODE)
        return self._dir_entry(parts)

    def require_dir(self, parts: Parts) -> None:
        """Raises NotFoundError or ConflictError unless ``parts`` is a folder."""
        if not parts or self._dir_entry(parts) is not None:
            return
        if self.store.head(self.key(parts)) is not None:
            raise ConflictError("not a directory")
        raise NotFoundError("no such directory")

    def lookup(self, parts: Parts, follow: bool = True) -> Found:
        """What is at ``parts`` (None: missing, in an existing folder).  No links exist
        on an object store, so ``follow`` changes nothing.

        Raises:
            NotFoundError, ConflictError: the folder it would be in is missing, or a file.
            PathEscapeError: a reserved name.
        """
        self._check(parts)
        head = self.store.head(self.key(parts)) if parts else None
        if head is not None:
            mtime = self.store.mtime(self.key(parts), head)
            entry: Entry | None = Entry(parts[-1], "file", head["ContentLength"], mtime, FILE_MODE)
        elif not parts:
            entry = self._dir_entry(parts)
        else:
            entry = self._not_a_file(parts)
        if parts and (entry is None or entry.kind == "file"):
            self._seen.last = (self.key(parts), head, time.monotonic())
        return Found(parts, entry)

    def _not_a_file(self, parts: Parts) -> Entry | None:
        """What ``parts`` is when no file has its key: the folder there, or None when
        the name is free in an existing folder (a new upload's case).  One LIST of the
        keys below the name (a marker is one of them: its HEAD follows only when it is
        there, for the folder's mtime) runs on the pool while this thread checks the
        folder the name would be in: a new name costs two requests after the file's
        HEAD, side by side.

        Raises:
            NotFoundError, ConflictError: no folder there, and the one it would be in is
                missing or a file.
        """
        prefix = self.dir_key(parts)
        below = self.storage.pool.submit(self.store.list_page, prefix, 1)
        refused: FTPError | None = None
        try:
            self.require_dir(parts[:-1])
        except FTPError as exc:  # only if nothing is there either
            refused = exc
        page = answer(below, self.store.list_page, prefix, 1)
        listed = page.get("Contents", [])
        if listed and listed[0]["Key"] == prefix:  # the folder's marker
            head = self.store.head(prefix)
            return Entry(parts[-1], "dir", 0, mtime_of(head) if head else 0.0, DIR_MODE)
        if listed:  # keys below it, no marker
            return Entry(parts[-1], "dir", 0, 0.0, DIR_MODE)
        if refused is not None:
            raise refused
        return None

    def listdir(self, parts: Parts) -> Iterator[Entry]:
        """The entries of a folder, sorted by name; reserved names are never shown.

        The names are listed first (1,000 a request) and sorted; each entry is then
        described by a HEAD (its mtime is in its metadata), ``FAN_OUT`` at a time.

        Raises:
            NotFoundError, ConflictError: missing, or not a folder.
        """
        self._check(parts)
        entry = self._stat(parts)
        if entry is None:
            raise NotFoundError("no such file or directory")
        if entry.kind != "dir":
            raise ConflictError("not a directory")
        prefix = self.dir_key(parts)
        listed: list[_Listed] = []
        for page in self.store.walk(prefix, "/"):
            for obj in page.get("Contents", []):
                name = obj["Key"][len(prefix) :]
                listed.append(_Listed(name, "file", obj["Size"], obj["Key"]))
            for common in page.get("CommonPrefixes", []):
                listed.append(
                    _Listed(common["Prefix"][len(prefix) : -1], "dir", 0, common["Prefix"])
                )
        shown = [
            item
            for item in listed
            if item.name
            and "/" not in item.name
            and not item.name.startswith(PARTIAL_PREFIX)
            and not (not parts and item.name == RESERVED)
        ]
        shown.sort(key=lambda item: (item.name, item.kind))
        return self._described(shown)

    def _described(self, listed: list[_Listed]) -> Iterator[Entry]:
        for entry in fan_out(self.storage.pool, self._describe, listed):
            if entry is not None:
                yield entry

    def _describe(self, item: _Listed) -> Entry | None:
        head = self.store.head(item.key)
        if item.kind == "dir":
            return Entry(item.name, "dir", 0, mtime_of(head) if head else 0.0, DIR_MODE)
        if head is None:
            return None  # removed since the folder was listed
        mtime = self.store.mtime(item.key, head)
        return Entry(item.name, "file", head["ContentLength"], mtime, FILE_MODE)

    # --- changes ------------------------------------------------------------------------

    def mkdir(self, parts: Parts, parents: bool, before_create: Callable[[int], None]) -> int:
        """Make a folder marker (and with ``parents`` the missing ones above it).

        ``before_create(+1)`` before each marker is written, ``before_create(-1)`` when
        it was not made after all (failed, or made by someone else meanwhile).
        """
        self._check(parts)
        if not parts:
            if parents:
                return 0
            raise ConflictError("already exists")
        if not parents:
            if self._stat(parts) is not None:
                raise ConflictError("already exists")
            self.require_dir(parts[:-1])
            if not self._make(parts, before_create):
                raise ConflictError("already exists")
            return 1
        made = 0
        missing = False
        for depth in range(1, len(parts) + 1):
            sub = parts[:depth]
            if not missing:
                if self._dir_entry(sub) is not None:
                    continue
                if self.store.head(self.key(sub)) is not None:
                    raise ConflictError("not a directory")
                missing = True  # nothing can be below a missing folder
            made += self._make(sub, before_create)
        return made

    def _make(self, parts: Parts, before_create: Callable[[int], None]) -> int:
        before_create(1)
        try:
            made = self.store.put_marker(self.dir_key(parts))
        except BaseException:
            before_create(-1)
            raise
        if not made:
            before_create(-1)
        return int(made)

    def remove(
        self,
        parts: Parts,
        recursive: bool = False,
        on_removed: Callable[[Removed], None] = lambda r: None,
    ) -> Removed:
        """Remove a file, or with ``recursive`` a whole folder (by listing: files first,
        then the folder markers, deepest first).  ``on_removed`` hears of each batch."""
        self._check(parts)
        if not parts:
            raise PermissionDeniedError("that is your home")
        head = self.store.head(self.key(parts))
        if head is not None:
            with translated("delete"):
                self.client.delete_object(Bucket=self.bucket, Key=self.key(parts))
            gone = Removed(head["ContentLength"], 1)
            on_removed(gone)
            return gone
        if self._dir_entry(parts) is None:
            raise NotFoundError("no such file or directory")
        if not recursive:
            raise ConflictError("is a directory (use rmdir, or rm -r)")
        return self._remove_tree(parts, on_removed)

    def _remove_tree(self, parts: Parts, on_removed: Callable[[Removed], None]) -> Removed:
        top = self.dir_key(parts)
        folders: set[str] = {""}
        total = [0, 0]
        for page in self.store.walk(top):
            files, nbytes, entries = [], 0, 0
            for obj in page.get("Contents", []):
                rel = obj["Key"][len(top) :]
                folders.update(_folders_of(rel))
                if rel and not rel.endswith("/"):
                    files.append(obj["Key"])
                    nbytes += obj["Size"]
                    entries += 0 if rel.rsplit("/", 1)[-1].startswith(PARTIAL_PREFIX) else 1
            for start in range(0, len(files), DELETE_BATCH):
                self.store.delete(files[start : start + DELETE_BATCH])
            total[0] += nbytes
            total[1] += entries
            on_removed(Removed(nbytes, entries))
        self._delete_folders(top, folders)
        total[1] += len(folders)
        on_removed(Removed(0, len(folders)))
        return Removed(total[0], total[1])

    def _delete_folders(self, top: str, folders: set[str]) -> None:
        """Delete the markers of ``folders`` (relative to ``top``), deepest first; also
        those only implied by keys, which stores that keep real folders (SeaweedFS)
        would otherwise go on listing once empty."""
        doomed = sorted((top + f + "/" if f else top for f in folders), key=len, reverse=True)
        for start in range(0, len(doomed), DELETE_BATCH):
            self.store.delete(doomed[start : start + DELETE_BATCH])

    def rmdir(self, parts: Parts) -> None:
        self._check(parts)
        if not parts:
            raise PermissionDeniedError("that is your home")
        if self._dir_entry(parts) is None:
            if self.store.head(self.key(parts)) is not None:
                raise ConflictError("not a directory")
            raise NotFoundError("no such file or directory")
        top = self.dir_key(parts)
        page = self.store.list_page(top, 2)
        if any(obj["Key"] != top for obj in page.get("Contents", [])):
            raise ConflictError("directory not empty")
        with translated("delete"):
            self.client.delete_object(Bucket=self.bucket, Key=top)

    def rename(self, src: Parts, dst: Parts) -> Removed:
        """Move ``src`` to ``dst`` (replacing a file, or an empty folder, there) by
        server-side copies, then deletes; returns what was replaced.

        A folder is copied key by key, and its sources are deleted only once every copy
        succeeded: a node that dies half-way leaves the source whole (module docstring).
        """
        self._check(src)
        self._check(dst)
        if not src or not dst:
            raise PermissionDeniedError("that is your home")
        head = self.store.head(self.key(src))
        if head is None and self._dir_entry(src) is None:
            raise NotFoundError("no such file or directory")
        if src == dst:
            return Removed()
        if head is None and dst[: len(src)] == src:
            raise ConflictError("cannot move a directory into itself")
        self.require_dir(dst[:-1])
        there = self.store.head(self.key(dst))
        there_dir = None if there is not None else self._dir_entry(dst)
        if head is not None:
            if there_dir is not None:
                raise ConflictError("is a directory")
            self.store.copy(
                self.key(src), self.key(dst), head["ContentLength"], etag=head.get("ETag")
            )
            with translated("delete"):
                self.client.delete_object(Bucket=self.bucket, Key=self.key(src))
            return Removed(there["ContentLength"], 1) if there is not None else Removed()
        if there is not None:
            raise ConflictError("not a directory")
        replaced = Removed()
        if there_dir is not None:
            page = self.store.list_page(self.dir_key(dst), 2)
            if any(obj["Key"] != self.dir_key(dst) for obj in page.get("Contents", [])):
                raise ConflictError("directory not empty")
            replaced = Removed(0, 1)
        self._move_tree(self.dir_key(src), self.dir_key(dst))
        return replaced

    def _move_tree(self, src: str, dst: str) -> None:
        keys: list[tuple[str, int, str | None]] = []
        for page in self.store.walk(src):
            keys.extend(
                (obj["Key"], obj["Size"], obj.get("ETag")) for obj in page.get("Contents", [])
            )
        if not any(key == src for key, _, _ in keys):
            self.store.put_marker(dst)  # a folder implied by its contents: give the copy a marker

        def copy(item: tuple[str, int, str | None]) -> None:
            key, size, etag = item
            if not key.endswith("/"):
                self.store.copy(key, dst + key[len(src) :], size, etag=etag)
                return
            # A marker is written anew (some stores keep folders apart and refuse to
            # copy them), with the source's metadata (its mtime).
            head = self.store.head(key)
            self.store.put_marker(dst + key[len(src) :], dict(head["Metadata"]) if head else None)

        # Every copy first; the sources go only once all of them are there.
        for _ in fan_out(self.storage.pool, copy, keys):
            pass
        files = [k for k, _, _ in keys if not k.endswith("/")]
        for start in range(0, len(files), DELETE_BATCH):
            self.store.delete(files[start : start + DELETE_BATCH])
        folders = {""}
        for key, _, _ in keys:
            folders.update(_folders_of(key[len(src) :]))
        self._delete_folders(src, folders)

    def set_mtime(self, parts: Parts, mtime: float) -> None:
        """Record ``mtime``: a folder's marker is written again, a file is copied onto
        itself with the new metadata (the store copies its bytes)."""
        self._check(parts)
        stamp = {META_MTIME: repr(float(mtime))}
        head = self.store.head(self.key(parts)) if parts else None
        if head is None:
            if self._dir_entry(parts) is None:
                raise NotFoundError("no such file or directory")
            self.store.put_marker(self.dir_key(parts), stamp)
            return
        self.store.copy(
            self.key(parts),
            self.key(parts),
            head["ContentLength"],
            {**head["Metadata"], **stamp},
            etag=head.get("ETag"),
        )

    # --- reading --------------------------------------------------------------------------

    def open_read(self, parts: Parts) -> S3Reader:
        """A reader of the object at ``parts``.

        Raises:
            NotFoundError, ConflictError: missing, or a folder.
        """
        self._check(parts)
        head = self.store.head(self.key(parts)) if parts else None
        if head is None:
            if self._dir_entry(parts) is not None:
                raise ConflictError("is a directory")
            raise NotFoundError("no such file or directory")
        return S3Reader(self.client, self.bucket, self.key(parts), head, self.storage.pool)

    # --- uploads ------------------------------------------------------------------------

    def begin_upload(
        self, parts: Parts, size: int | None, resume: bool, probe: bool = False
    ) -> S3Upload:
        """Find (to resume) or begin the upload of ``size`` bytes to ``parts``.

        Raises:
            NotFoundError: the target's folder is missing.
            ConflictError: the target is a folder.
        """
        self._check(parts)
        if not parts:
            raise ConflictError("is a directory")
        seen = getattr(self._seen, "last", None)
        self._seen.last = None
        if seen is not None and seen[0] == self.key(parts) and time.monotonic() - seen[2] < SEEN_S:
            # What this thread's lookup just saw (the core looks up, then begins): the
            # commit's PUT is conditional on it, so a change meanwhile is still seen.
            return S3Upload(self, parts, seen[1], size, resume, probe)
        head = self.store.head(self.key(parts))
        if head is None:
            # Existence only (no mtime): one LIST answers for a marker and for keys below.
            page = self.store.list_page(self.dir_key(parts), 1)
            if page.get("KeyCount", len(page.get("Contents", []))):
                raise ConflictError("is a directory")
            self.require_dir(parts[:-1])
        return S3Upload(self, parts, head, size, resume, probe)

    def partials(self) -> Iterator[PartialInfo]:
        """Unfinished uploads: their targets, bytes held, declared sizes, ages."""
        return self.states.infos()

    def discard_partials(self, parts: Parts) -> Removed:
        """Remove every unfinished upload to ``parts``: how a user gives one up."""
        return self.states.discard(parts)

    def remove_partial(self, info: PartialInfo) -> int:
        """Remove one unfinished upload found by ``partials()``; returns bytes freed."""
        return self.states.remove(info)

    # --- usage ----------------------------------------------------------------------------

    def usage(self) -> tuple[int, int, bool]:
        """(bytes, entries, complete) under the root, by listing every key.

        Bytes include unfinished uploads (their states name the parts in multipart
        uploads: 1 GET per unfinished upload); entries count files and folders
        (markers, or implied by keys below them) but not the server's bookkeeping.
        """
        nbytes = 0
        files = 0
        folders: set[str] = set()
        reserved = RESERVED + "/"
        partials = PARTIAL_FOLDER
        try:
            for page in self.store.walk(self.home):
                for obj in page.get("Contents", []):
                    rel = obj["Key"][len(self.home) :]
                    if rel.startswith(reserved):
                        if not rel.endswith(".json"):
                            nbytes += obj["Size"]  # tails (and earlier-design parts)
                        elif rel.startswith(partials):  # parts live in multipart uploads
                            nbytes += self.states.held(self.states.load_key(obj["Key"]))[0]
                        continue
                    folders.update(_folders_of(rel))
                    if rel and not rel.endswith("/"):
                        nbytes += obj["Size"]
                        files += 0 if rel.rsplit("/", 1)[-1].startswith(PARTIAL_PREFIX) else 1
        except FTPError as exc:
            logger.warning("usage of %s incomplete: %s", self.home, exc)
            return nbytes, files + len(folders), False
        return nbytes, files + len(folders), True


def _folders_of(rel: str) -> list[str]:
    """The folders a key relative to a folder names or implies: ``a/b/c`` -> a, a/b."""
    names = rel.split("/")[:-1]
    return ["/".join(names[: i + 1]) for i in range(len(names)) if names[i]]


# --- downloads ------------------------------------------------------------------------
