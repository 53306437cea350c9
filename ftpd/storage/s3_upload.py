"""One upload into an S3-compatible store: parts streamed into one multipart upload of the
target's own key, completed at commit.

The bytes arrive into a buffer of one part (8 MiB by default). A full buffer is handed
to the storage's pool, ``parts_in_flight`` at a time (8 by default), as the next part of
one multipart upload of the target key, created at the first full part. Nothing is under
the target's name until ``CompleteMultipartUpload`` at commit, which makes the object
appear whole: there is no copy at commit, every byte is written once.

A resume, on this node or any other, must answer the digest of the bytes held, but the
parts of a pending multipart upload cannot be read back. So each part task, on the pool
and in order, also feeds a running md5 (``ftpd.storage.s3_hashstate``: libcrypto's
``MD5_Update`` on a context we own, GIL released) and keeps its state at the part
boundary (the context's bytes). For md5 that running hash is the upload's only one:
``keeps_digest`` tells the core so, and it reads ``hasher()`` instead of hashing every
byte a second time in the session thread. The
upload's state (``.ftpd/partial/<hash>.<size>.json``, ``ftpd.storage.s3_partials``)
names the multipart upload, the parts stored (in order, never past a gap, with their
ETags) and the hash state at their end; the pool writes it as parts land (one write at a
time: parts landing meanwhile are named by the next), and close writes it last. A resume
checks that the state's parts are still in the upload (``ListParts``, sizes and ETags),
restores the saved state as the upload's hasher (``read_prefix`` returns it) and goes on.
A digest whose state was not saved (sha1, blake2b; or a node where the self-test fails)
cannot be checked: its prefix
digest comes out wrong, so the client starts again from byte 0, and a commit that was
never checked is refused.

A connection that drops stores the buffer as a small ``tail`` object beside the state
(only the last part of a multipart upload may be under 5 MiB), re-read into the buffer
when the resume goes on; a node that dies loses the buffer and the parts in flight (72
MiB at most by default). An upload of one part or less is one ``PutObject`` at commit,
with the digest and mtime in its metadata; a multipart one gets them as object tags
after completion (``ftpd.storage.s3_objects.digest_tags``), bound to the ETag the
completion returned.

This module must never write outside the reserved area and the target's pending
multipart upload before commit, and never install anything whose bytes were not all
hashed.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import deque
from concurrent.futures import Future, wait
from typing import TYPE_CHECKING, Any

from ftpd.errors import BadRequestError, ConflictError, FTPError
from ftpd.storage import s3_hashstate
from ftpd.storage.base import Parts
from ftpd.storage.s3_objects import (
    MAX_PARTS,
    META_MTIME,
    NOT_FOUND,
    READ_CHUNK,
    READ_WINDOW,
    digest_tags,
    error_code,
    meta_digest,
    translate,
    translated,
)
from ftpd.storage.s3_partials import Scan

if TYPE_CHECKING:
    from ftpd.storage.s3 import S3Tree

logger = logging.getLogger(__name__)
#: Parts of an upload of undeclared size grow by one part size every this many parts,
#: so that 10,000 parts hold 55,000 parts' worth (430 GiB with 8 MiB parts).
_GROW_EVERY = 1000
#: The digest whose running state every multipart upload keeps (the protocol's default,
#: and FTP's only one).
SAVED_DIGEST = "md5"


class S3Upload:
    """The bytes of one upload at rest in a bucket.  Owned by one session thread; its
    part uploads run on the storage's pool, ``parts_in_flight`` at a time."""

    def __init__(
        self,
        tree: S3Tree,
        parts: Parts,
        head: dict[str, Any] | None,
        size: int | None,
        resume: bool,
        probe: bool = False,
    ) -> None:
        self.tree = tree
        self.parts = parts
        self.size = size
        self.offset = 0
        self.freed = 0
        self.target_exists = head is not None
        self.target_size: int | None = int(head["ContentLength"]) if head else None
        self._head = head
        self._probe = probe
        self._key = tree.key(parts)
        self._stem = tree.states.stem(parts, size)
        self._base = tree.storage.part_size
        if size is not None:  # at most MAX_PARTS parts, with room to spare
            self._base = max(self._base, -(-size // (MAX_PARTS - 100)))
        self._closed = False
        self._done = False
        self._fresh()
        self._open(resume)

    def _fresh(self) -> None:
        """Hold nothing (a new upload, or after ``restart``)."""
        self._uid: str | None = None  # the multipart upload of the target key
        self._staged: list[int] = []  # sizes of the parts handed out, in order
        self._etags: list[str] = []  # ETags of the parts stored, in order (no gap)
        self._buf = bytearray()
        self._inflight: deque[tuple[int, Future[str]]] = deque()
        self._failed: FTPError | None = None
        self._saved = -1  # parts the state in the bucket names (-1: no state there)
        self._landed: dict[int, str] = {}  # part -> ETag, as the pool stores them
        self._save_lock = threading.Lock()  # one state write at a time
        self._dirty = False  # a part landed while a state write was running
        self._tail = 0  # bytes of the tail object the state names (after _tail_after parts)
        self._tail_after = 0
        self._reload = False  # the tail is not in the buffer yet
        self._unchecked = False  # a resume whose prefix digest could not be given
        # The running hash, fed in part order on the pool, and its state at boundaries.
        self._hasher: s3_hashstate.SavedHasher | None = s3_hashstate.new(SAVED_DIGEST)
        self._hashed = 0
        self._hash_turn = threading.Condition()
        self._bounds: dict[int, dict[str, Any]] = {}  # parts -> {digest: state}

    # --- finding what is held -----------------------------------------------------------

    def _open(self, resume: bool) -> None:
        """Find what an earlier upload of this size left; drop other sizes' uploads.

        Nothing is written here, so an upload refused before it starts (e.g. by the
        quota) leaves nothing behind."""
        states = self.tree.states
        found = states.scan(self._stem.rpartition(".")[0] + ".")
        if not self._probe:
            for stem, scan in found.items():
                if stem != self._stem:
                    self.freed += states.drop(stem, scan)
        mine = found.get(self._stem, Scan())
        held = self._validated(mine) if mine.has_state else False
        total = sum(self._staged) + self._tail
        if self._probe:
            self.offset = total if held else 0
            return
        if held and (not resume or (self.size is not None and total > self.size)):
            held = False
        if not held:
            if mine.has_state or mine.parts or mine.tail:  # another source's, or orphans
                self.freed += states.drop(self._stem, mine)
            self._fresh()
            return
        self.offset = total
        self._reload = self._tail > 0

    def _validated(self, scan: Scan) -> bool:
        """Load the state if its parts are all still in its multipart upload (ListParts:
        numbers, sizes and ETags) and its tail object is there; False otherwise."""
        states = self.tree.states
        state = states.load(self._stem)
        if state is None or state.get("v") != 2 or state.get("target") != "/".join(self.parts):
            return False
        try:
            sizes: list[int] = []
            for size, count in state.get("parts", []):
                sizes.extend([int(size)] * int(count))
            etags = [str(e) for e in state.get("etags", [])]
            upload = state.get("upload")
            tail = int(state.get("tail", 0))
        except (TypeError, ValueError):
            return False
        if len(etags) != len(sizes) or (sizes and not isinstance(upload, dict)):
            return False
        if tail and scan.tail != tail:
            return False
        if isinstance(upload, dict):
            if upload.get("key") != self._key or not isinstance(upload.get("id"), str):
                return False
            listed = states.list_parts(self._key, upload["id"])
            if listed is None:
                return False
            for number, (size, etag) in enumerate(zip(sizes, etags, strict=True), 1):
                if (size, etag) not in listed.get(number, ()):
                    return False
            self._uid = upload["id"]
        hashes = state.get("hashes")
        self._bounds = {len(sizes): dict(hashes)} if isinstance(hashes, dict) else {}
        self._staged, self._etags = sizes, etags
        self._landed = dict(enumerate(etags, 1))
        self._hashed = len(sizes)
        # The running hash goes on from the saved state; without one, the states of
        # later parts cannot be saved either (a resume of them starts from 0).
        if sizes and self._hasher is not None:
            saved = self._bounds.get(len(sizes), {}).get(SAVED_DIGEST)
            self._hasher = s3_hashstate.restore(saved, SAVED_DIGEST)
        self._tail, self._tail_after = tail, len(sizes)
        self._saved = len(sizes)
        return True

    def _part_bytes(self, number: int) -> int:
        """The size the part ``number`` (1-based) is cut at."""
        if self.size is None:
            return self._base * (1 + (number - 1) // _GROW_EVERY)
        return self._base

    # --- the state --------------------------------------------------------------------

    def _state(self, stored: int, etags: list[str], tail: int) -> dict[str, Any]:
        runs: list[list[int]] = []
        for size in self._staged[:stored]:
            if runs and runs[-1][0] == size:
                runs[-1][1] += 1
            else:
                runs.append([size, 1])
        state: dict[str, Any] = {
            "v": 2,
            "target": "/".join(self.parts),
            "expected": self.size,
            "parts": runs,
            "etags": etags,
            "tail": tail,
            "saved": time.time(),
        }
        if self._uid is not None:
            state["upload"] = {"key": self._key, "id": self._uid}
        if stored and stored in self._bounds:
            state["hashes"] = self._bounds[stored]
        return state

    def _save(self) -> None:
        """Write the state: the parts stored so far (in order, never past a gap), and
        the tail if it still follows them; a tail they now hold is deleted after.  The
        caller holds ``_save_lock``."""
        stored = max(self._saved, 0)
        while stored + 1 in self._landed:
            stored += 1
        etags = [self._landed[n] for n in range(1, stored + 1)]
        tail = self._tail if self._tail_after == stored else 0
        self.tree.states.save(self._stem, self._state(stored, etags, tail))
        self._saved = stored
        if self._tail and not tail:
            with contextlib.suppress(FTPError):
                self.tree.states.delete_tail(self._stem)
            self._tail = 0

    def _save_now(self) -> None:
        with self._save_lock:
            self._save()

    def _landed_part(self, number: int, etag: str) -> None:
        """A part is stored (on the pool): write the state if it now names more parts,
        one write at a time; a part landing meanwhile makes the writer go round again."""
        self._landed[number] = etag
        self._dirty = True
        while self._dirty:
            if not self._save_lock.acquire(blocking=False):
                return  # the writer sees _dirty after it lets go
            try:
                self._dirty = False
                if self._saved < 0 or (self._saved + 1) in self._landed:
                    self._save()
            except Exception as exc:  # noqa: BLE001 - the session's next write tells
                logger.warning("upload state not written: %s", exc)
                return
            finally:
                self._save_lock.release()

    # --- parts ------------------------------------------------------------------------

    def _create(self) -> None:
        """Begin the multipart upload of the target key (at the first full part)."""
        tree = self.tree
        with translated("create upload"):
            self._uid = tree.client.create_multipart_upload(Bucket=tree.bucket, Key=self._key)[
                "UploadId"
            ]

    def _hash_part(self, number: int, body: bytearray) -> None:
        """Feed part ``number`` to the running hash once the parts before it are in, and
        keep the state at its end.  Parts are submitted in order to a FIFO pool, so the
        one before is always running or done: this waits on nothing else."""
        with self._hash_turn:
            while self._hashed < number - 1:
                self._hash_turn.wait()
            try:
                if self._hasher is not None and self._hashed == number - 1:
                    self._hasher.update(body)
                    self._bounds[number] = {SAVED_DIGEST: self._hasher.state()}
            finally:
                self._hashed = max(self._hashed, number)
                self._hash_turn.notify_all()

    def _put_part(self, number: int, body: bytearray) -> str:
        """Hash and store one part (on the pool); returns its ETag."""
        self._hash_part(number, body)
        tree = self.tree
        assert self._uid is not None
        with translated("put part"):
            answer = tree.client.upload_part(
                Bucket=tree.bucket, Key=self._key, UploadId=self._uid, PartNumber=number, Body=body
            )
        etag = str(answer["ETag"])
        self._landed_part(number, etag)
        return etag

    def _flush(self) -> None:
        """Hand the full buffer to the pool, once fewer parts than the storage allows are
        in flight (each in flight holds its bytes)."""
        self._settle(self.tree.storage.parts_in_flight - 1)
        if self._uid is None:
            self._create()
        self._staged.append(len(self._buf))
        # The buffer itself is the body, not a copy: botocore sends a bytes-like body
        # in one piece, without the ``Expect: 100-continue`` round trip it adds for
        # file-like ones (bytes become a BytesIO), and signs it as it is.
        body, self._buf = self._buf, bytearray()
        number = len(self._staged)
        self._inflight.append((number, self.tree.storage.pool.submit(self._put_part, number, body)))

    def _settle(self, keep: int) -> None:
        """Wait for the oldest parts in flight until ``keep`` remain and note their ETags
        (the pool writes the state as they land; after a failed part it is written here,
        naming the parts before the gap).

        Raises:
            UnavailableError (and the like): a part could not be stored; the upload fails.
        """
        if self._failed is not None:
            raise self._failed
        failure: Exception | None = None
        while len(self._inflight) > keep:
            try:
                etag = self._inflight[0][1].result()
            except Exception as exc:
                failure = exc
                break
            self._inflight.popleft()
            self._etags.append(etag)
        if failure is not None:
            wait([f for _, f in self._inflight])  # the parts after a gap are wasted
            self._inflight.clear()
            del self._staged[len(self._etags) :]
        if failure is not None:  # record what was stored before the gap, for a resume
            for number in list(self._landed):
                if number > len(self._etags):
                    del self._landed[number]
            try:
                self._save_now()
            except Exception as exc:  # noqa: BLE001 - the part's failure is what counts
                logger.warning("upload state not written: %s", exc)
        if failure is not None:
            self._failed = translate(failure)
            raise self._failed from None

    def _held(self) -> int:
        return sum(self._staged) + len(self._buf) + (self._tail if self._reload else 0)

    def _take_back(self) -> None:
        """Read the tail object into the buffer: new bytes must extend it."""
        if not self._reload:
            return
        self._reload = False
        data = self.tree.states.read_tail(self._stem, self._tail)
        self._buf = bytearray(data) + self._buf

    # --- the StoredUpload interface -------------------------------------------------------

    def keeps_digest(self, name: str) -> bool:
        """md5 (when its state can be saved here): the running hash on the pool is the
        upload's, so the session does not hash the same bytes again.  It stays so:
        ``_fresh`` starts a new one whenever the first could (``s3_hashstate.new``)."""
        return name == SAVED_DIGEST and self._hasher is not None

    def hasher(self) -> Any:
        """The running hash once the parts in flight are in, fed the buffer (a copy)."""
        self._settle(0)
        self._take_back()
        assert self._hasher is not None, "keeps_digest said no"
        current = self._hasher.copy()
        current.update(self._buf)
        return current

    def read_prefix(self, hasher: Any) -> Any:
        """The hasher of the ``offset`` bytes held: the one restored from the state
        saved at the end of the parts (returned: the caller goes on with it), then fed
        the buffer; or ``hasher`` (fresh) fed the buffer when no part is stored.  A
        digest whose state was not saved leaves ``hasher`` fresh (its prefix digest will
        not match: the client starts again), and this upload refuses to commit until it
        is restarted."""
        self._settle(0)
        self._take_back()
        if self._staged:
            name = getattr(hasher, "name", "")
            restored = s3_hashstate.restore(self._bounds.get(len(self._staged), {}).get(name), name)
            if restored is None:
                self._unchecked = True
                return None
            restored.update(self._buf)
            return restored
        hasher.update(self._buf)
        return None

    def write(self, data: memoryview) -> int:
        self._take_back()
        view = memoryview(data).cast("B")
        while len(view):
            limit = self._part_bytes(len(self._staged) + 1)
            room = max(0, limit - len(self._buf))
            self._buf += view[:room]
            view = view[room:]
            if len(self._buf) >= limit:
                self._flush()
        return len(data)

    def restart(self) -> int:
        """Drop the bytes held; returns how many were dropped."""
        with contextlib.suppress(FTPError):
            self._settle(0)
        dropped = self._held()
        if self._uid is not None or self._saved >= 0 or self._tail:
            job = (self._key, self._uid) if self._uid is not None else None
            self.tree.states.drop(self._stem, upload=job)
        self._fresh()
        self.offset = 0
        return dropped

    def truncate(self, offset: int) -> int:
        """Keep only the first ``offset`` bytes held; returns how many were dropped.

        Raises:
            BadRequestError: ``offset`` is inside the stored parts (they cannot be read
                back or cut); only the bytes after them can be dropped.
        """
        self._settle(0)
        self._take_back()
        held = self._held()
        if offset >= held:
            return 0
        whole = sum(self._staged)
        if offset < whole:
            raise BadRequestError(
                f"cannot resume at {offset}: the first {whole} bytes are stored in whole "
                f"parts; resume at {whole} or later (up to {held})"
            )
        del self._buf[offset - whole :]
        self.offset = offset
        return held - offset

    def seed(self, nbytes: int) -> int:
        """Start from the finished target's first ``nbytes`` (APPE): read from it (one
        version: ``If-Match``) and stored like received bytes, so that they are hashed.
        Returns the bytes taken; fewer when the target shrank meanwhile."""
        tree = self.tree
        head = tree.store.head(self._key)
        if head is None:
            return 0
        total = min(nbytes, int(head["ContentLength"]))
        for start in range(0, total, READ_WINDOW):
            with translated("read"):
                body = tree.client.get_object(
                    Bucket=tree.bucket,
                    Key=self._key,
                    Range=f"bytes={start}-{min(total, start + READ_WINDOW) - 1}",
                    IfMatch=head["ETag"],
                )["Body"]
                with contextlib.closing(body):
                    while chunk := body.read(READ_CHUNK):
                        self.write(memoryview(chunk))
        self.offset = self._held()
        return self.offset

    def commit(
        self,
        digest: str,
        hexdigest: str,
        mtime: float | None,
        before_install: Any = None,
    ) -> int:
        """Install the bytes under the target's name, whole, with the digest and mtime
        (metadata of one PutObject, or tags of the completed multipart upload); then
        remove the state.  Returns the bytes replaced.

        ``before_install`` runs right before the install request; whatever it raises
        leaves the upload resumable (``close`` stores the buffer as the tail)."""
        self._settle(0)
        self._take_back()
        if self._unchecked:
            self.restart()
            raise ConflictError(
                "the bytes held could not be checked with this digest; send the file again"
            )
        if before_install is not None:
            before_install()
        tree = self.tree
        if self._uid is None:
            old = self._put_whole(digest, hexdigest, mtime)
        else:
            old = tree.store.head(self._key)
            self._complete(digest, hexdigest, mtime)
        self._done = True
        self._buf = bytearray()
        if self._saved >= 0 or self._tail:
            try:
                tree.states.drop(self._stem, abort=False)
            except FTPError as exc:  # installed all the same; the state is left to expire
                logger.warning("upload installed, its state not removed: %s", exc)
        self.target_exists = old is not None
        return int(old["ContentLength"]) if old is not None else 0

    def _put_whole(self, digest: str, hexdigest: str, mtime: float | None) -> Any:
        """One PutObject with the metadata; returns the HEAD of what it replaced.  The
        target seen at ``begin_upload`` is the condition (``If-None-Match`` / ``If-Match``),
        so the usual case costs no HEAD; a store without conditional PUTs, or a target
        changed meanwhile, costs one."""
        tree = self.tree
        metadata = {meta_digest(digest): hexdigest}
        if mtime is not None:
            metadata[META_MTIME] = repr(float(mtime))
        args: dict[str, Any] = {
            "Bucket": tree.bucket,
            "Key": self._key,
            "Body": self._buf,
            "Metadata": metadata,
        }
        if tree.store.if_none_match:
            condition = {"IfMatch": self._head["ETag"]} if self._head else {"IfNoneMatch": "*"}
            try:
                tree.client.put_object(**args, **condition)
                return self._head
            except Exception as exc:
                code = error_code(exc)
                if code in ("NotImplemented", "501"):
                    tree.store.if_none_match = False
                elif code not in ("PreconditionFailed", "412", *NOT_FOUND):
                    raise translate(exc) from None
        old = tree.store.head(self._key)
        with translated("put"):
            tree.client.put_object(**args)
        return old

    def _complete(self, digest: str, hexdigest: str, mtime: float | None) -> None:
        """Store the buffer as the last part and complete the multipart upload; then
        record the digest (and mtime) as the object's tags (best effort: without them
        a download computes the digest by reading)."""
        tree = self.tree
        client = tree.client
        assert self._uid is not None
        done = [{"PartNumber": n, "ETag": e} for n, e in enumerate(self._etags, 1)]
        with translated("complete upload"):
            if self._buf or not done:
                number = len(done) + 1
                answer = client.upload_part(
                    Bucket=tree.bucket,
                    Key=self._key,
                    UploadId=self._uid,
                    PartNumber=number,
                    Body=self._buf,
                )
                done.append({"PartNumber": number, "ETag": answer["ETag"]})
            answer = client.complete_multipart_upload(
                Bucket=tree.bucket,
                Key=self._key,
                UploadId=self._uid,
                MultipartUpload={"Parts": done},
            )
        try:
            tree.store.put_tags(self._key, digest_tags(digest, hexdigest, answer["ETag"], mtime))
        except FTPError as exc:
            logger.warning("upload installed, its digest not recorded: %s", exc)

    def discard(self) -> int:
        """Remove the parts and the state; returns the bytes freed."""
        return self.restart()

    def close(self) -> None:
        """Store what the buffer holds as the tail and write the state, for a resume
        (never raises: the caller releases its claim next)."""
        if self._closed:
            return
        self._closed = True
        if self._done or self._probe:
            return
        try:
            self._settle(0)
            if self._buf:
                self.tree.states.put_tail(self._stem, bytes(self._buf))
                self._tail, self._tail_after = len(self._buf), len(self._etags)
            changed = len(self._etags) != self._saved
            if self._buf or (changed and (self._uid is not None or self._saved >= 0)):
                self._save_now()
        except Exception as exc:  # noqa: BLE001 - the buffer is lost, nothing else
            logger.warning("unfinished upload: the last %d bytes not kept: %s", len(self._buf), exc)
        self._buf = bytearray()
