"""Objects of one bucket through boto3: the client, its errors as ours, and a reader.

``make_client`` builds the one client a storage shares (thread-safe, with connect and
read timeouts and bounded retries); ``translate`` turns whatever boto3 raises into the
daemon's errors; ``S3Reader`` streams one object with ranged GETs.  boto3 is imported
only when a client is made, so a daemon on the local disk never loads it.

This module must never put a key, a credential or an endpoint's answer in an error that
reaches a client: only what happened (unreachable, refused, no such bucket).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import io
import logging
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future
from datetime import datetime
from typing import Any, TypeVar

from ftpd.errors import (
    ConflictError,
    FTPError,
    InvalidPathError,
    NotFoundError,
    UnavailableError,
)

logger = logging.getLogger(__name__)
T = TypeVar("T")
R = TypeVar("R")

MiB = 1 << 20
#: Bytes of an upload's part (S3's minimum is 5 MiB except for the last part).
PART_SIZE = 8 * MiB
MIN_PART = 5 * MiB
#: Parts one upload stores at once by default (boto3's transfers use 10).
PARTS_IN_FLIGHT = 8
MAX_PARTS = 10_000
#: CopyObject's limit; a bigger object is copied by a multipart copy of COPY_PART parts.
COPY_LIMIT = 5 * 1024 * MiB
COPY_PART = 512 * MiB
#: One ranged GET of a download.
READ_WINDOW = 16 * MiB
READ_CHUNK = MiB
#: A download opens its next window this many bytes before the end of the one it reads
#: (on the storage's pool), so the store's time to the first byte of the next is hidden.
READ_AHEAD_AT = 4 * MiB
#: Keys per DeleteObjects (S3's limit) and requests run at once by one operation.
DELETE_BATCH = 1000
FAN_OUT = 16
META_MTIME = "ftpd-mtime"
FILE_MODE, DIR_MODE = 0o644, 0o755
NOT_FOUND = {"404", "NoSuchKey", "NotFound"}
REFUSED = {
    "403",
    "AccessDenied",
    "Forbidden",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "InvalidToken",
    "InvalidClientTokenId",
}


def meta_digest(digest: str) -> str:
    """The metadata key that holds a file's ``digest`` (``ftpd-md5``); also its tag's."""
    return f"ftpd-{digest}"


#: The tag that binds a file's digest tag to the object it was computed for: the ETag
#: its completion returned (a tag is only trusted on the object with that ETag).
TAG_ETAG = "ftpd-etag"


def bare_etag(etag: str) -> str:
    return str(etag).strip('"')


def digest_tags(digest: str, hexdigest: str, etag: str, mtime: float | None) -> dict[str, str]:
    """The tags that record a multipart upload's digest (and mtime) after completion:
    metadata can only be set when the upload is created, before the digest is known.
    A tag is part of that object version: replacing the object drops it, and copies
    (``mv``) take it along."""
    tags = {meta_digest(digest): hexdigest, TAG_ETAG: bare_etag(etag)}
    if mtime is not None:
        tags[META_MTIME] = repr(float(mtime))
    return tags


def tagged_digest(tags: dict[str, str], head: dict[str, Any], digest: str) -> str | None:
    """The digest the tags record for the object ``head`` describes (None: none, or
    recorded for another version of it)."""
    if tags.get(TAG_ETAG) != bare_etag(head.get("ETag", "")):
        return None
    return tags.get(meta_digest(digest))


def may_tag_mtime(head: dict[str, Any]) -> bool:
    """Whether the tags may hold the mtime (a multipart upload's: three tags, and no
    mtime in the metadata), worth one GetObjectTagging."""
    return META_MTIME not in head.get("Metadata", {}) and int(head.get("TagCount") or 0) >= 3


def error_code(exc: BaseException) -> str | None:
    """The S3 error code of a botocore ``ClientError`` (None for anything else)."""
    response = getattr(exc, "response", None)
    if not isinstance(response, dict):
        return None
    return str(response.get("Error", {}).get("Code", "")) or str(
        response.get("ResponseMetadata", {}).get("HTTPStatusCode", "")
    )


def translate(exc: BaseException) -> FTPError:
    """The daemon's error for a failed S3 call: never a key, never a credential."""
    if isinstance(exc, FTPError):
        return exc
    code = error_code(exc)
    if code is None:
        kind = type(exc).__name__
        if kind == "NoCredentialsError":
            return UnavailableError("the object store: no credentials are configured")
        return UnavailableError(f"the object store is unreachable ({kind})")
    if code in NOT_FOUND:
        return NotFoundError("no such file or directory")
    if code in REFUSED:
        return UnavailableError(f"the object store refused the server's credentials ({code})")
    if code == "NoSuchBucket":
        return UnavailableError("the object store has no such bucket")
    if code in ("PreconditionFailed", "412"):
        return ConflictError("the file changed meanwhile; try again")
    if code == "KeyTooLongError":
        return InvalidPathError("path too long for the object store")
    return UnavailableError(f"the object store failed ({code})")


@contextlib.contextmanager
def translated(what: str) -> Iterator[None]:
    """Turn whatever boto3 raises inside into ``translate``'s error, logged once."""
    try:
        yield
    except FTPError:
        raise
    except Exception as exc:
        err = translate(exc)
        if not isinstance(err, (NotFoundError, ConflictError, InvalidPathError)):
            logger.warning("S3 %s failed: %s", what, exc)
        raise err from None


def mtime_of(head: dict[str, Any], tags: dict[str, str] | None = None) -> float:
    """A file's mtime: the one recorded in its metadata (or ``tags``), else when it was
    stored."""
    recorded = head.get("Metadata", {}).get(META_MTIME) or (tags or {}).get(META_MTIME)
    if recorded is not None:
        try:
            return float(recorded)
        except ValueError:
            pass
    stamp = head.get("LastModified")
    return stamp.timestamp() if isinstance(stamp, datetime) else 0.0


def fan_out(
    pool: Executor, call: Callable[[T], R], items: Iterable[T], limit: int = FAN_OUT
) -> Iterator[R]:
    """``call(item)`` for every item on ``pool``, at most ``limit`` at once; the results
    in the items' order.  (``Executor.map`` would submit every item at once.)"""
    pending: deque[Future[R]] = deque()
    for item in items:
        if len(pending) >= limit:
            yield pending.popleft().result()
        pending.append(pool.submit(call, item))
    while pending:
        yield pending.popleft().result()


def answer(future: Future[R], call: Callable[..., R], *args: Any) -> R:
    """The result of a request handed to the pool, or of the same request made here when
    the pool has not begun it (busy with uploads' parts: waiting would be slower)."""
    if future.cancel():
        return call(*args)
    return future.result()


def make_client(
    endpoint_url: str | None,
    region: str | None,
    access_key_id: str | None,
    secret_access_key: str | None,
    connect_timeout_s: float,
    read_timeout_s: float,
    max_attempts: int,
    max_connections: int,
) -> Any:
    """A boto3 S3 client (thread-safe) with timeouts and bounded retries.  ``None``
    credentials: the usual AWS_* variables or the service user's credentials file."""
    # Imported here: a daemon on the local disk never loads boto3.
    boto3 = importlib.import_module("boto3")
    botocore_config = importlib.import_module("botocore.config")
    config = botocore_config.Config(
        connect_timeout=connect_timeout_s,
        read_timeout=read_timeout_s,
        retries={"max_attempts": max_attempts, "mode": "standard"},
        max_pool_connections=max_connections,
        # Stores other than AWS differ in the newer default checksums; the whole-file
        # digest is checked by the daemon itself.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        s3={"addressing_style": "path"} if endpoint_url else {},
    )
    return boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint_url or None,
        region_name=region or None,
        aws_access_key_id=access_key_id or None,
        aws_secret_access_key=secret_access_key or None,
        config=config,
    )


# --- one bucket ---------------------------------------------------------------------------


class Bucket:
    """The requests of one bucket, with the daemon's errors.  Shared by every tree of
    a storage; thread-safe (the boto3 client is)."""

    def __init__(self, client: Any, name: str) -> None:
        self.client = client
        self.name = name
        #: CopyObject's limit; a bigger object is copied by a multipart copy.
        self.copy_limit = COPY_LIMIT
        self.copy_part = COPY_PART
        self.if_none_match = True  # conditional PUT; off once a store says it has none

    def head(self, key: str) -> dict[str, Any] | None:
        """The object's HEAD, or None when there is none."""
        try:
            return dict(self.client.head_object(Bucket=self.name, Key=key))
        except Exception as exc:
            if error_code(exc) in NOT_FOUND:
                return None
            raise translate(exc) from None

    def tags(self, key: str) -> dict[str, str]:
        """The object's tags ({} when it has none, or is gone)."""
        try:
            answer = self.client.get_object_tagging(Bucket=self.name, Key=key)
        except Exception as exc:
            if error_code(exc) in NOT_FOUND:
                return {}
            raise translate(exc) from None
        return {str(t["Key"]): str(t["Value"]) for t in answer.get("TagSet", [])}

    def put_tags(self, key: str, tags: dict[str, str]) -> None:
        with translated("tag"):
            self.client.put_object_tagging(
                Bucket=self.name,
                Key=key,
                Tagging={"TagSet": [{"Key": k, "Value": v} for k, v in tags.items()]},
            )

    def mtime(self, key: str, head: dict[str, Any]) -> float:
        """``mtime_of`` a file, its tags read when they may hold it."""
        return mtime_of(head, self.tags(key) if may_tag_mtime(head) else None)

    def list_page(self, prefix: str, max_keys: int, delimiter: str = "") -> dict[str, Any]:
        with translated("list"):
            args = {"Bucket": self.name, "Prefix": prefix, "MaxKeys": max_keys}
            if delimiter:
                args["Delimiter"] = delimiter
            return dict(self.client.list_objects_v2(**args))

    def walk(self, prefix: str, delimiter: str = "") -> Iterator[dict[str, Any]]:
        """Every page of a listing (1,000 keys each)."""
        args = {"Bucket": self.name, "Prefix": prefix}
        if delimiter:
            args["Delimiter"] = delimiter
        pages = self.client.get_paginator("list_objects_v2").paginate(**args)
        with translated("list"):
            yield from pages

    def delete(self, keys: list[str]) -> None:
        """Delete up to ``DELETE_BATCH`` keys in one request."""
        if not keys:
            return
        with translated("delete"):
            answer = self.client.delete_objects(
                Bucket=self.name,
                Delete={"Objects": [{"Key": k} for k in keys], "Quiet": True},
            )
        failed = answer.get("Errors", [])
        if failed:
            raise UnavailableError(f"the object store kept {len(failed)} of them")

    def put_marker(self, key: str, metadata: dict[str, str] | None = None) -> bool:
        """Write a folder marker; False if one was already there (a conditional PUT)."""
        args: dict[str, Any] = {"Bucket": self.name, "Key": key, "Body": b""}
        if metadata:
            args["Metadata"] = metadata
        elif self.if_none_match:
            args["IfNoneMatch"] = "*"
        try:
            self.client.put_object(**args)
            return True
        except Exception as exc:
            code = error_code(exc)
            if code in ("PreconditionFailed", "412"):
                return False
            if code in ("NotImplemented", "501") and "IfNoneMatch" in args:
                self.if_none_match = False
                return self.put_marker(key, metadata)
            raise translate(exc) from None

    def copy(
        self,
        src: str,
        dst: str,
        size: int,
        metadata: dict[str, str] | None = None,
        etag: str | None = None,
    ) -> None:
        """A server-side copy (``metadata`` None: the source's is kept; tags are copied),
        multipart above the store's CopyObject limit.  Never submits to the pool (it may
        run in it).  ``etag``: the source's; when the copy's differs (AWS gives a copy of
        a multipart object a new one; SeaweedFS keeps it) and a digest tag was bound to
        the source, the copy's tag is bound to the copy (2 requests more)."""
        source = {"Bucket": self.name, "Key": src}
        directive: dict[str, Any] = {"MetadataDirective": "COPY"}
        if metadata is not None:
            directive = {"MetadataDirective": "REPLACE", "Metadata": metadata}
        with translated("copy"):
            if size <= self.copy_limit:
                answer = self.client.copy_object(
                    Bucket=self.name, Key=dst, CopySource=source, **directive
                )
                new = answer.get("CopyObjectResult", {}).get("ETag")
                if etag is not None and new is not None and bare_etag(new) != bare_etag(etag):
                    tags = self.tags(dst)
                    if tags.get(TAG_ETAG) == bare_etag(etag):
                        self.put_tags(dst, {**tags, TAG_ETAG: bare_etag(new)})
                return
            head = self.client.head_object(Bucket=self.name, Key=src)
            if metadata is None:
                metadata = dict(head["Metadata"])
            tags = self.tags(src) if int(head.get("TagCount") or 0) else {}
            new = self._multipart_copy(source, dst, size, metadata)
            if tags:  # a multipart copy takes no tags along: set them, bound to the copy
                if tags.get(TAG_ETAG) == bare_etag(head["ETag"]):
                    tags[TAG_ETAG] = bare_etag(new)
                self.put_tags(dst, tags)

    def _multipart_copy(
        self, source: dict[str, str], dst: str, size: int, metadata: dict[str, str]
    ) -> str:
        """Copy by parts; returns the copy's ETag."""
        step = max(self.copy_part, -(-size // MAX_PARTS))
        upload = self.client.create_multipart_upload(Bucket=self.name, Key=dst, Metadata=metadata)
        uid = upload["UploadId"]
        try:
            done = []
            for number, start in enumerate(range(0, size, step), 1):
                end = min(size, start + step) - 1
                answer = self.client.upload_part_copy(
                    Bucket=self.name,
                    Key=dst,
                    UploadId=uid,
                    PartNumber=number,
                    CopySource=source,
                    CopySourceRange=f"bytes={start}-{end}",
                )
                done.append({"PartNumber": number, "ETag": answer["CopyPartResult"]["ETag"]})
            answer = self.client.complete_multipart_upload(
                Bucket=self.name, Key=dst, UploadId=uid, MultipartUpload={"Parts": done}
            )
        except BaseException:
            with contextlib.suppress(Exception):
                self.client.abort_multipart_upload(Bucket=self.name, Key=dst, UploadId=uid)
            raise
        return str(answer["ETag"])


# --- downloads ------------------------------------------------------------------------


class S3Reader:
    """An object open for a download: ranged GETs of ``READ_WINDOW`` bytes, read as they
    arrive, so memory stays flat whatever the size.  Every GET names the ETag seen at
    open (``If-Match``): an object replaced meanwhile fails the download, never mixes
    two versions.  Near the end of a window the next one is opened on ``pool`` (its
    body is not read until it is needed, so it holds a connection, not memory).  Owned
    by the caller, one thread at a time."""

    def __init__(
        self,
        client: Any,
        bucket: str,
        key: str,
        head: dict[str, Any],
        pool: Executor | None = None,
    ) -> None:
        self._client = client
        self._pool = pool
        #: The next window, opened ahead: (start, end, the GET's future).
        self._next: tuple[int, int, Future[Any]] | None = None
        self._bucket = bucket
        self._key = key
        self._etag = head["ETag"]
        self._meta = dict(head.get("Metadata", {}))
        self._head = head
        #: The object's tags, read once when they may hold its digest or mtime.
        self._tags: dict[str, str] | None = None
        self.size = int(head["ContentLength"])
        self.mtime = mtime_of(head, self._tagged() if may_tag_mtime(head) else None)
        self._pos = 0
        self._body: Any = None
        self._body_pos = 0
        self._body_end = 0
        #: Bytes read ahead (up to READ_CHUNK) and where they start: socket.sendfile's
        #: fallback reads 8 KiB at a time, too little for one call into the stream each.
        self._ahead = memoryview(b"")
        self._ahead_at = 0

    def fileno(self) -> int:
        # socket.sendfile falls back to read() on this
        raise io.UnsupportedOperation("an object in a bucket has no file descriptor")

    def _open(self, start: int, end: int) -> Any:
        with translated("get"):
            answer = self._client.get_object(
                Bucket=self._bucket,
                Key=self._key,
                Range=f"bytes={start}-{end - 1}",
                IfMatch=self._etag,
            )
        return answer["Body"]

    def _drop(self) -> None:
        self._ahead = memoryview(b"")
        if self._body is not None:
            with contextlib.suppress(Exception):
                self._body.close()
        self._body = None

    def _chunk(self, want: int) -> bytes:
        """Up to ``want`` bytes at the position, from what was read ahead if it is there."""
        offset = self._pos - self._ahead_at
        if not 0 <= offset < len(self._ahead):
            self._ahead, self._ahead_at, offset = memoryview(self._fetch()), self._pos, 0
        return bytes(self._ahead[offset : offset + want])

    def _fetch(self) -> bytes:
        """Up to ``READ_CHUNK`` bytes at the position, from the open window or a new one;
        a broken stream is opened again where it broke (three times at most)."""
        for attempt in range(3):
            if self._body is None or self._body_pos != self._pos or self._pos >= self._body_end:
                self._drop()
                if not self._take_next():
                    end = min(self.size, self._pos + READ_WINDOW)
                    self._body, self._body_pos, self._body_end = (
                        self._open(self._pos, end),
                        self._pos,
                        end,
                    )
            try:
                data = self._body.read(min(READ_CHUNK, self._body_end - self._pos))
            except FTPError:
                raise
            except Exception as exc:
                if attempt == 2:
                    raise translate(exc) from None
                data = b""
            if data:
                self._body_pos += len(data)
                self._read_ahead()
                return bytes(data)
            self._drop()  # ended early: open again from here
        raise UnavailableError("the object store ended a download early")

    def _read_ahead(self) -> None:
        """Open the window after this one on the pool once this one is nearly read."""
        end = self._body_end
        if self._pool is None or self._next is not None or end >= self.size:
            return
        if end - self._body_pos > READ_AHEAD_AT:
            return
        stop = min(self.size, end + READ_WINDOW)
        self._next = (end, stop, self._pool.submit(self._open, end, stop))

    def _take_next(self) -> bool:
        """Go on with the window opened ahead if it starts at the position (opened here
        if the pool, busy with other work, has not begun it); else drop it."""
        ahead, self._next = self._next, None
        if ahead is None:
            return False
        start, end, future = ahead
        if start != self._pos:
            _discard(future)
            return False
        self._body, self._body_pos, self._body_end = (
            answer(future, self._open, start, end),
            start,
            end,
        )
        return True

    def readinto(self, buf: memoryview | bytearray) -> int:
        view = memoryview(buf).cast("B")
        if not len(view) or self._pos >= self.size:
            return 0
        data = self._chunk(len(view))
        view[: len(data)] = data
        self._pos += len(data)
        return len(data)

    def read(self, size: int = -1) -> bytes:
        if size < 0:
            size = max(0, self.size - self._pos)
        out = bytearray()
        while len(out) < size and self._pos < self.size:
            data = self._chunk(size - len(out))
            out += data
            self._pos += len(data)
        return bytes(out)

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._pos, os.SEEK_END: self.size}[whence]
        self._pos = base + offset
        return self._pos

    def _tagged(self) -> dict[str, str]:
        if self._tags is None:
            self._tags = {}
            if int(self._head.get("TagCount") or 0):
                self._tags = Bucket(self._client, self._bucket).tags(self._key)
        return self._tags

    def recorded_digest(self, digest: str) -> str | None:
        """The digest in the metadata (one PutObject) or in the tags (a multipart upload,
        tagged for this very object after completion); None when neither holds it."""
        known = self._meta.get(meta_digest(digest))
        if known is None and int(self._head.get("TagCount") or 0):
            known = tagged_digest(self._tagged(), self._head, digest)
        return known

    def digest(self, digest: str) -> str:
        """The recorded digest, else one computed by streaming the object (not recorded:
        a metadata change is a copy of the object, and would fail readers in flight)."""
        known = self.recorded_digest(digest)
        if known is not None:
            return known
        hasher = hashlib.new(digest, usedforsecurity=False)
        for start in range(0, self.size, READ_WINDOW):
            body = self._open(start, min(self.size, start + READ_WINDOW))
            with contextlib.closing(body), translated("get"):
                while chunk := body.read(READ_CHUNK):
                    hasher.update(chunk)
        return str(hasher.hexdigest())

    def close(self) -> None:
        self._drop()
        if self._next is not None:
            _discard(self._next[2])
            self._next = None

    def __enter__(self) -> S3Reader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _discard(future: Future[Any]) -> None:
    """Close the body of a GET opened ahead and not needed, whenever it arrives."""

    def close(done: Future[Any]) -> None:
        if not done.cancelled() and done.exception() is None:
            with contextlib.suppress(Exception):
                done.result().close()

    if not future.cancel():
        future.add_done_callback(close)
