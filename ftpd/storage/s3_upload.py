"""One upload into an S3-compatible store: parts any node can read back, one object at the end.

The bytes arrive into a buffer of one part (8 MiB by default).  A full buffer is stored,
in the background while the next one fills (two parts in flight by default), as an
object of the reserved area (``.ftpd/partial/<hash>.<size>.parts/NNNNN``), and the
upload's state (``.ftpd/partial/<hash>.<size>.json``: the target and the parts' sizes;
``ftpd.storage.s3_partials``) names the parts stored so far, in order, never past one
that failed.  Parts are whole objects rather than parts of a pending multipart upload
because S3 cannot read a pending upload's parts back: a resume, on this node or any
other, must hash the bytes held to check the client's prefix digest (a changed source
is never spliced), and the running hash state cannot be saved.

At commit the parts become the target by one multipart upload of server-side copies
(``UploadPartCopy``) and the last buffer (``UploadPart``), completed in one request:
the object appears whole or not at all.  An upload of one part or less is one
``PutObject``, with no part stored at all.  The digest and mtime go in the metadata.

A connection that drops stores the buffer as a last, short part (re-read into the
buffer when the resume goes on), so it costs nothing; a node that dies loses the part
it was filling and those in flight: 24 MiB at most by default.

This module must never write outside the reserved area before commit, and never
install anything whose bytes were not all hashed.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import deque
from concurrent.futures import Future, wait
from typing import TYPE_CHECKING, Any

from ftpd.errors import FTPError
from ftpd.storage.base import Parts
from ftpd.storage.s3_objects import (
    DELETE_BATCH,
    MAX_PARTS,
    META_MTIME,
    MIN_PART,
    READ_CHUNK,
    fan_out,
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
        self._probe = probe
        self._stem = tree.states.stem(parts, size)
        self._staged: list[int] = []  # sizes of the parts held in the bucket, in order
        self._buf = bytearray()
        self._reload = False  # the last part is short: re-read into the buffer first
        self._inflight: deque[tuple[int, Future[None]]] = deque()
        self._saved = 0  # parts the state in the bucket names
        self._failed: FTPError | None = None
        self._done = False
        self._closed = False
        self._kept = False  # parts or a state of this stem may be in the bucket
        self._base = tree.storage.part_size
        if size is not None:  # at most MAX_PARTS parts, with room to spare
            self._base = max(self._base, -(-size // (MAX_PARTS - 100)))
        self._open(resume)

    # --- finding what is held -----------------------------------------------------------

    def _open(self, resume: bool) -> None:
        """Find what an earlier upload of this size left; drop other sizes' uploads.

        Nothing is written here, so an upload refused before it starts (e.g. by the
        quota) leaves nothing behind."""
        tree = self.tree
        found = tree.states.scan(self._stem.rpartition(".")[0] + ".")
        if not self._probe:
            for stem, scan in found.items():
                if stem != self._stem:
                    self.freed += tree.states.drop(stem, scan)
        mine = found.get(self._stem, Scan())
        staged = self._validated(mine) if mine.has_state else []
        held = sum(staged)
        if self._probe:
            self.offset = held
            return
        if staged and (not resume or (self.size is not None and held > self.size)):
            staged, held = [], 0
        if not staged and (mine.parts or mine.has_state):
            self.freed += tree.states.drop(self._stem, mine)  # another source's, or orphans
        self._staged = staged
        self._saved = len(staged)
        self._kept = bool(staged)
        self.offset = held
        self._reload = bool(staged) and staged[-1] < MIN_PART

    def _validated(self, scan: Scan) -> list[int]:
        """The state's parts, as far as their objects are there and big enough (and the
        composition of a commit that died is aborted)."""
        state = self.tree.states.load(self._stem)
        if state is None or state.get("target") != "/".join(self.parts):
            return []
        composing = state.get("composing")
        if isinstance(composing, dict) and not self._probe:
            self.tree.states.abort_composition(composing)
        sizes: list[int] = []
        for size, count in state.get("parts", []):
            sizes.extend([int(size)] * int(count))
        kept: list[int] = []
        for number, size in enumerate(sizes, 1):
            if scan.parts.get(number, -1) < size:
                break
            kept.append(size)
        return kept

    def _part_bytes(self, number: int) -> int:
        """The size the part ``number`` (1-based) is cut at."""
        if self.size is None:
            return self._base * (1 + (number - 1) // _GROW_EVERY)
        return self._base

    # --- the state --------------------------------------------------------------------

    def _state(self, staged: list[int], **extra: Any) -> dict[str, Any]:
        runs: list[list[int]] = []
        for size in staged:
            if runs and runs[-1][0] == size:
                runs[-1][1] += 1
            else:
                runs.append([size, 1])
        return {
            "target": "/".join(self.parts),
            "expected": self.size,
            "parts": runs,
            "saved": time.time(),
            **extra,
        }

    def _put_part(self, number: int, body: bytes) -> None:
        """Store one part (on the pool)."""
        tree = self.tree
        with translated("put part"):
            tree.client.put_object(
                Bucket=tree.bucket, Key=tree.states.part_key(self._stem, number), Body=body
            )

    def _flush(self) -> None:
        """Hand the full buffer to the pool, once fewer parts than the storage allows are
        in flight (each in flight holds its bytes)."""
        self._settle(self.tree.storage.parts_in_flight - 1)
        self._staged.append(len(self._buf))
        self._kept = True
        body, self._buf = bytes(self._buf), bytearray()  # bytes: what every client takes
        number = len(self._staged)
        self._inflight.append((number, self.tree.storage.pool.submit(self._put_part, number, body)))

    def _settle(self, keep: int) -> None:
        """Wait for the oldest parts in flight until ``keep`` remain, then record every
        part stored so far in the state (parts are recorded in order, never past a gap).

        Raises:
            UnavailableError (and the like): a part could not be stored; the upload fails.
        """
        if self._failed is not None:
            raise self._failed
        failure: Exception | None = None
        while len(self._inflight) > keep:
            try:
                self._inflight[0][1].result()
            except Exception as exc:
                failure = exc
                break
            self._inflight.popleft()
        done = len(self._staged) - len(self._inflight)
        if failure is not None:
            wait([f for _, f in self._inflight])  # the parts after a gap are wasted
            self._inflight.clear()
            del self._staged[done:]
        if done > self._saved:
            try:
                self.tree.states.save(self._stem, self._state(self._staged[:done]))
                self._saved = done
            except Exception as exc:
                failure = failure or exc
        if failure is not None:
            self._failed = translate(failure)
            raise self._failed from None

    def _wait(self) -> None:
        """Wait for every part in flight (see ``_settle``)."""
        self._settle(0)

    def _held(self) -> int:
        return sum(self._staged) + len(self._buf)

    def _read_part(self, number: int, nbytes: int, sink: Any) -> None:
        """Feed the first ``nbytes`` of a stored part to ``sink(chunk)``."""
        if not nbytes:
            return
        tree = self.tree
        with translated("read part"):
            body = tree.client.get_object(
                Bucket=tree.bucket,
                Key=tree.states.part_key(self._stem, number),
                Range=f"bytes=0-{nbytes - 1}",
            )["Body"]
            with contextlib.closing(body):
                got = 0
                while chunk := body.read(READ_CHUNK):
                    sink(chunk)
                    got += len(chunk)
        if got != nbytes:
            raise translate(OSError("a stored part is shorter than its state says"))

    def _take_back_last(self) -> None:
        """Re-read a short last part into the buffer: new bytes must extend it, since
        only the last part of a multipart upload may be under 5 MiB."""
        self._reload = False
        number, nbytes = len(self._staged), self._staged[-1]
        data = bytearray()
        self._read_part(number, nbytes, data.extend)
        self._staged.pop()
        self._buf = data + self._buf

    # --- the StoredUpload interface -------------------------------------------------------

    def read_prefix(self, hasher: Any) -> None:
        """Feed the ``offset`` bytes held to ``hasher``, reading the parts back."""
        self._wait()
        for number, nbytes in enumerate(self._staged, 1):
            self._read_part(number, nbytes, hasher.update)
        hasher.update(self._buf)

    def write(self, data: memoryview) -> int:
        if self._reload:
            self._take_back_last()
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
            self._wait()
        dropped = self._held()
        if self._kept:
            self.tree.states.drop(self._stem)
        self._staged, self._buf, self._reload, self._failed = [], bytearray(), False, None
        self._kept, self._saved = False, 0
        self.offset = 0
        return dropped

    def truncate(self, offset: int) -> int:
        """Keep only the first ``offset`` bytes held; returns how many were dropped."""
        self._wait()
        held = self._held()
        if offset >= held:
            return 0
        kept = index = 0
        while index < len(self._staged) and kept + self._staged[index] <= offset:
            kept += self._staged[index]
            index += 1
        if index == len(self._staged):  # inside the buffer
            del self._buf[offset - kept :]
            self.offset = offset
            return held - offset
        tree, number, cut = self.tree, index + 1, offset - kept
        dropped = list(range(number + 1, len(self._staged) + 1))
        self._staged, self._buf, self._reload = self._staged[:index], bytearray(), False
        if cut > self._base:  # a big (copied) part: cut it inside the store
            self._copy_part(
                {"Bucket": tree.bucket, "Key": tree.states.part_key(self._stem, number)}, 0, cut
            )
        else:
            self._read_part(number, cut, self._buf.extend)
            dropped.insert(0, number)
        tree.states.save(self._stem, self._state(self._staged))
        self._saved = len(self._staged)
        for start in range(0, len(dropped), DELETE_BATCH):
            batch = dropped[start : start + DELETE_BATCH]
            tree.store.delete([tree.states.part_key(self._stem, n) for n in batch])
        self.offset = offset
        return held - offset

    def seed(self, nbytes: int) -> int:
        """Start from the finished target's first ``nbytes`` (APPE): copied inside the
        store in parts, the last few MiB read into the buffer.  Returns the bytes
        copied; fewer when the target shrank meanwhile."""
        tree = self.tree
        head = tree.store.head(tree.key(self.parts))
        if head is None:
            return 0
        total = min(nbytes, int(head["ContentLength"]))
        source = {"Bucket": tree.bucket, "Key": tree.key(self.parts)}
        step = max(tree.store.copy_part, self._base)
        start = 0
        while total - start >= MIN_PART:
            end = total if total - start < step + MIN_PART else start + step
            self._copy_part(source, start, end, head["ETag"])
            start = end
        if start < total:
            with translated("read"):
                body = tree.client.get_object(
                    Bucket=tree.bucket,
                    Key=tree.key(self.parts),
                    Range=f"bytes={start}-{total - 1}",
                    IfMatch=head["ETag"],
                )["Body"]
                with contextlib.closing(body):
                    self._buf += body.read()
        if self._staged:
            tree.states.save(self._stem, self._state(self._staged))
            self._saved = len(self._staged)
        self.offset = self._held()
        return self.offset

    def _copy_part(
        self, source: dict[str, str], start: int, end: int, etag: str | None = None
    ) -> None:
        """Store ``source[start:end]`` as the next part, by a one-part multipart copy
        (``etag``: only from that version of the source)."""
        condition = {"CopySourceIfMatch": etag} if etag else {}
        tree = self.tree
        key = tree.states.part_key(self._stem, len(self._staged) + 1)
        self._kept = True
        with translated("copy part"):
            uid = tree.client.create_multipart_upload(Bucket=tree.bucket, Key=key)["UploadId"]
            try:
                answer = tree.client.upload_part_copy(
                    Bucket=tree.bucket,
                    Key=key,
                    UploadId=uid,
                    PartNumber=1,
                    CopySource=source,
                    CopySourceRange=f"bytes={start}-{end - 1}",
                    **condition,
                )
                tree.client.complete_multipart_upload(
                    Bucket=tree.bucket,
                    Key=key,
                    UploadId=uid,
                    MultipartUpload={
                        "Parts": [{"PartNumber": 1, "ETag": answer["CopyPartResult"]["ETag"]}]
                    },
                )
            except BaseException:
                with contextlib.suppress(Exception):
                    tree.client.abort_multipart_upload(Bucket=tree.bucket, Key=key, UploadId=uid)
                raise
        self._staged.append(end - start)

    def commit(
        self,
        digest: str,
        hexdigest: str,
        mtime: float | None,
        before_install: Any = None,
    ) -> int:
        """Install the bytes under the target's name, whole, with the digest and mtime in
        the metadata; then remove the parts.  Returns the bytes replaced.

        ``before_install`` runs right before the install request; whatever it raises
        leaves the upload resumable (``close`` stores the buffer as a part)."""
        self._wait()
        if before_install is not None:
            before_install()
        tree = self.tree
        key = tree.key(self.parts)
        metadata = {meta_digest(digest): hexdigest}
        if mtime is not None:
            metadata[META_MTIME] = repr(float(mtime))
        old = tree.store.head(key)
        if not self._staged:
            with translated("put"):
                tree.client.put_object(
                    Bucket=tree.bucket, Key=key, Body=bytes(self._buf), Metadata=metadata
                )
        elif not self._buf and len(self._staged) == 1:
            tree.store.copy(tree.states.part_key(self._stem, 1), key, self._staged[0], metadata)
        else:
            self._compose(key, metadata)
        self._done = True
        self._buf = bytearray()
        try:
            if self._kept:  # else nothing of it was ever stored (one PutObject)
                tree.states.drop(self._stem)
        except FTPError as exc:  # installed all the same; the parts are left to expire
            logger.warning("upload installed, its parts not removed: %s", exc)
        self.target_exists = old is not None
        return int(old["ContentLength"]) if old is not None else 0

    def _compose(self, key: str, metadata: dict[str, str]) -> None:
        """One multipart upload of the parts (server-side copies) and the buffer."""
        tree = self.tree
        client = tree.client
        with translated("create upload"):
            uid = client.create_multipart_upload(Bucket=tree.bucket, Key=key, Metadata=metadata)[
                "UploadId"
            ]
        # Recorded first, so that a node dying here leaves nothing it cannot abort later.
        tree.states.save(self._stem, self._state(self._staged, composing={"key": key, "id": uid}))

        def copy(number: int) -> dict[str, Any]:
            answer = client.upload_part_copy(
                Bucket=tree.bucket,
                Key=key,
                UploadId=uid,
                PartNumber=number,
                CopySource={"Bucket": tree.bucket, "Key": tree.states.part_key(self._stem, number)},
                CopySourceRange=f"bytes=0-{self._staged[number - 1] - 1}",
            )
            return {"PartNumber": number, "ETag": answer["CopyPartResult"]["ETag"]}

        try:
            with translated("compose"):
                done = list(fan_out(tree.storage.pool, copy, range(1, len(self._staged) + 1)))
                if self._buf:
                    number = len(self._staged) + 1
                    answer = client.upload_part(
                        Bucket=tree.bucket,
                        Key=key,
                        UploadId=uid,
                        PartNumber=number,
                        Body=bytes(self._buf),
                    )
                    done.append({"PartNumber": number, "ETag": answer["ETag"]})
                client.complete_multipart_upload(
                    Bucket=tree.bucket, Key=key, UploadId=uid, MultipartUpload={"Parts": done}
                )
        except BaseException:
            with contextlib.suppress(Exception):
                client.abort_multipart_upload(Bucket=tree.bucket, Key=key, UploadId=uid)
            with contextlib.suppress(Exception):
                tree.states.save(self._stem, self._state(self._staged))
            raise

    def discard(self) -> int:
        """Remove the parts and the state; returns the bytes freed."""
        return self.restart()

    def close(self) -> None:
        """Store what the buffer holds as a last part, for a resume (never raises: the
        caller releases its claim next)."""
        if self._closed:
            return
        self._closed = True
        try:
            self._wait()
            if self._buf and not self._done and not self._probe:
                self._flush()
                self._wait()
        except Exception as exc:  # noqa: BLE001 - the buffer is lost, nothing else
            logger.warning("unfinished upload: the last %d bytes not kept: %s", len(self._buf), exc)
        self._buf = bytearray()
