"""Where an unfinished upload to S3 keeps its state: beside its tail, in the bucket.

An upload of ``size`` bytes to a target is the stem ``<hash>.<size>`` (``stream`` for an
undeclared size; the hash is of the target's path, as on disk).  Its parts are parts of
one pending multipart upload of the target's own key (invisible until completed); its
state is the object ``.ftpd/partial/<stem>.json`` (the target, the declared size, that
multipart upload, the parts' sizes and ETags, the hash state at their end, the tail's
size), and the bytes received after the last part, when a connection dropped, are the
object ``.ftpd/partial/<stem>.tail``.  Any node finds them there.  Everything about
the state goes through ``PartialStates``, so that it may move to the shared database
without touching the upload itself.  (``<stem>.parts/NNNNN`` objects are what uploads
of the earlier design left: they are removed like orphans.)

This module must never touch a key outside its tree's ``.ftpd/partial/``, nor a
multipart upload that no state of its tree names.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ftpd.storage.base import RESERVED, PartialInfo, Parts, Removed, is_reserved
from ftpd.storage.s3_objects import DELETE_BATCH, NOT_FOUND, error_code, translate, translated

if TYPE_CHECKING:
    from ftpd.storage.s3 import S3Tree

PARTIAL_FOLDER = f"{RESERVED}/partial/"


def part_hash(parts: Parts) -> str:
    return hashlib.sha256(os.fsencode("/".join(parts))).hexdigest()[:40]


@dataclass
class Scan:
    """What ``.ftpd/partial`` holds for one upload stem: its state and part objects."""

    has_state: bool = False
    parts: dict[int, int] = field(default_factory=dict)  # number -> bytes (earlier design)
    tail: int = 0  # bytes of the tail object
    nbytes: int = 0  # bytes of the objects (tail, earlier parts); the state names the rest
    mtime: float = 0.0


class PartialStates:
    """The unfinished uploads of one tree.  Thread-safe: holds nothing but the tree."""

    def __init__(self, tree: S3Tree) -> None:
        self.tree = tree

    def stem(self, parts: Parts, size: int | None) -> str:
        return f"{part_hash(parts)}.{'stream' if size is None else size}"

    def state_key(self, stem: str) -> str:
        return f"{self.tree.home}{PARTIAL_FOLDER}{stem}.json"

    def part_key(self, stem: str, number: int) -> str:
        return f"{self.tree.home}{PARTIAL_FOLDER}{stem}.parts/{number:05d}"

    def tail_key(self, stem: str) -> str:
        return f"{self.tree.home}{PARTIAL_FOLDER}{stem}.tail"

    def put_tail(self, stem: str, data: bytes) -> None:
        with translated("save upload tail"):
            self.tree.client.put_object(Bucket=self.tree.bucket, Key=self.tail_key(stem), Body=data)

    def read_tail(self, stem: str, nbytes: int) -> bytes:
        """The tail's bytes (it must hold ``nbytes``)."""
        with translated("read upload tail"):
            body = self.tree.client.get_object(Bucket=self.tree.bucket, Key=self.tail_key(stem))[
                "Body"
            ]
            with contextlib.closing(body):
                data = body.read()
        if len(data) != nbytes:
            raise translate(OSError("an upload's tail is not the size its state says"))
        return bytes(data)

    def delete_tail(self, stem: str) -> None:
        with translated("delete upload tail"):
            self.tree.client.delete_object(Bucket=self.tree.bucket, Key=self.tail_key(stem))

    def list_parts(self, key: str, upload_id: str) -> dict[int, set[tuple[int, str]]] | None:
        """The parts of a pending multipart upload: number -> {(size, ETag)} (a store may
        list a part sent twice twice); None when the upload is gone."""
        found: dict[int, set[tuple[int, str]]] = {}
        pages = self.tree.client.get_paginator("list_parts").paginate(
            Bucket=self.tree.bucket, Key=key, UploadId=upload_id
        )
        try:
            for page in pages:
                for part in page.get("Parts", []):
                    found.setdefault(int(part["PartNumber"]), set()).add(
                        (int(part["Size"]), str(part["ETag"]))
                    )
        except Exception as exc:
            if error_code(exc) in ("NoSuchUpload", *NOT_FOUND):
                return None
            raise translate(exc) from None
        return found

    @staticmethod
    def held(state: dict[str, Any] | None) -> tuple[int, int]:
        """(bytes in the multipart upload's parts, bytes of the tail) a state names."""
        if not isinstance(state, dict):
            return 0, 0
        try:
            parts = sum(int(size) * int(count) for size, count in state.get("parts", []))
            return parts, int(state.get("tail", 0))
        except (TypeError, ValueError):
            return 0, 0

    def load_key(self, key: str) -> dict[str, Any] | None:
        """The state stored at ``key`` (None: none, or unreadable)."""
        tree = self.tree
        try:
            body = tree.client.get_object(Bucket=tree.bucket, Key=key)["Body"]
            with contextlib.closing(body):
                state = json.loads(body.read())
        except ValueError:
            return None  # unreadable: as if there were none
        except Exception as exc:
            if error_code(exc) in NOT_FOUND:
                return None
            raise translate(exc) from None
        return state if isinstance(state, dict) else None

    def load(self, stem: str) -> dict[str, Any] | None:
        """The state of ``stem`` (None: there is none, or it cannot be read)."""
        return self.load_key(self.state_key(stem))

    def save(self, stem: str, state: dict[str, Any]) -> None:
        """Write the state of ``stem`` whole (one PUT replaces it atomically)."""
        body = json.dumps(state, separators=(",", ":")).encode()
        with translated("save upload state"):
            self.tree.client.put_object(
                Bucket=self.tree.bucket, Key=self.state_key(stem), Body=body
            )

    def scan(self, begins: str = "") -> dict[str, Scan]:
        """Unfinished uploads in ``.ftpd/partial`` whose stem begins with ``begins``."""
        folder = f"{self.tree.home}{PARTIAL_FOLDER}"
        found: dict[str, Scan] = {}
        for page in self.tree.store.walk(folder + begins):
            for obj in page.get("Contents", []):
                rel = obj["Key"][len(folder) :]
                stamp = obj["LastModified"].timestamp()
                if rel.endswith(".json") and "/" not in rel:
                    scan = found.setdefault(rel[: -len(".json")], Scan())
                    scan.has_state = True
                elif rel.endswith(".tail") and "/" not in rel:
                    scan = found.setdefault(rel[: -len(".tail")], Scan())
                    scan.tail = obj["Size"]
                    scan.nbytes += obj["Size"]
                elif ".parts/" in rel:
                    stem, _, number = rel.partition(".parts/")
                    if not number.isdigit():
                        continue
                    scan = found.setdefault(stem, Scan())
                    scan.parts[int(number)] = obj["Size"]
                    scan.nbytes += obj["Size"]
                else:
                    continue
                scan.mtime = max(scan.mtime, stamp)
        return found

    def drop(
        self,
        stem: str,
        scan: Scan | None = None,
        abort: bool = True,
        upload: tuple[str, str] | None = None,
    ) -> int:
        """Remove one unfinished upload: abort its multipart upload (with ``abort``: the
        one its state names, and ``upload``, a (key, id) the caller knows of), delete its
        tail, earlier-design parts and state; returns the bytes freed."""
        if scan is None:
            scan = self.scan(stem + ".").get(stem, Scan())
        state = self.load(stem) if scan.has_state and abort else None
        freed = scan.nbytes
        if abort:
            jobs = {upload} if upload else set()
            for job in (state or {}).get("upload"), (state or {}).get("composing"):
                if isinstance(job, dict) and isinstance(job.get("id"), str):
                    jobs.add((str(job.get("key")), job["id"]))
            for key, uid in jobs:
                self.abort_upload(key, uid)
            freed += self.held(state)[0]
        keys = [self.part_key(stem, n) for n in sorted(scan.parts)]
        if scan.tail:
            keys.append(self.tail_key(stem))
        for start in range(0, len(keys), DELETE_BATCH):
            self.tree.store.delete(keys[start : start + DELETE_BATCH])
        if scan.has_state:
            with translated("delete upload state"):
                self.tree.client.delete_object(Bucket=self.tree.bucket, Key=self.state_key(stem))
        return freed

    def abort_upload(self, key: str, upload_id: str) -> None:
        """Abort a multipart upload of this tree (best effort: ``storage gc`` aborts
        whatever is left)."""
        tree = self.tree
        if not key.startswith(tree.home):
            return
        with contextlib.suppress(Exception):
            tree.client.abort_multipart_upload(Bucket=tree.bucket, Key=key, UploadId=upload_id)

    def infos(self) -> Iterator[PartialInfo]:
        """Unfinished uploads: their targets, bytes held, declared sizes (None: an upload
        that declared none, FTP's STOR), ages."""
        for stem, scan in sorted(self.scan().items()):
            _, _, size = stem.rpartition(".")
            if not scan.has_state or not (size.isdigit() or size == "stream"):
                continue
            state = self.load(stem)
            if state is None or not isinstance(state.get("target"), str):
                continue
            parts = tuple(p for p in state["target"].split("/") if p)
            expected = int(size) if size.isdigit() else None
            in_parts, tail = self.held(state)
            yield PartialInfo(parts, in_parts + tail, expected, scan.mtime)

    def discard(self, parts: Parts) -> Removed:
        """Remove every unfinished upload to ``parts``: how a user gives one up."""
        if is_reserved(parts) or not parts:
            return Removed()
        freed = count = 0
        for stem, scan in self.scan(part_hash(parts) + ".").items():
            freed += self.drop(stem, scan)
            count += 1
        return Removed(freed, count)

    def remove(self, info: PartialInfo) -> int:
        """Remove one unfinished upload found by ``partials()``; returns bytes freed."""
        return self.drop(self.stem(info.parts, info.expected))
