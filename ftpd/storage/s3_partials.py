"""Where an unfinished upload to S3 keeps its state: beside its parts, in the bucket.

An upload of ``size`` bytes to a target is the stem ``<hash>.<size>`` (``stream`` for an
undeclared size; the hash is of the target's path, as on disk): its state is the object
``.ftpd/partial/<stem>.json`` (the target, the declared size, the parts' sizes and,
while a commit runs, its multipart upload) and its parts are the objects
``.ftpd/partial/<stem>.parts/NNNNN``.  Any node finds them there.  Everything about the
state goes through ``PartialStates``, so that it may move to the shared database
without touching the upload itself.

This module must never touch a key outside its tree's ``.ftpd/partial/``.
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
    parts: dict[int, int] = field(default_factory=dict)  # number -> bytes
    nbytes: int = 0
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

    def load(self, stem: str) -> dict[str, Any] | None:
        """The state of ``stem`` (None: there is none, or it cannot be read)."""
        tree = self.tree
        try:
            body = tree.client.get_object(Bucket=tree.bucket, Key=self.state_key(stem))["Body"]
            with contextlib.closing(body):
                state = json.loads(body.read())
        except ValueError:
            return None  # unreadable: as if there were none
        except Exception as exc:
            if error_code(exc) in NOT_FOUND:
                return None
            raise translate(exc) from None
        return state if isinstance(state, dict) else None

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

    def drop(self, stem: str, scan: Scan | None = None) -> int:
        """Remove one unfinished upload (its parts, then its state, and a composition
        left by a commit that died); returns the bytes freed."""
        if scan is None:
            scan = self.scan(stem + ".").get(stem, Scan())
        state = self.load(stem) if scan.has_state else None
        composing = state.get("composing") if state else None
        if isinstance(composing, dict):
            self.abort_composition(composing)
        keys = [self.part_key(stem, n) for n in sorted(scan.parts)]
        for start in range(0, len(keys), DELETE_BATCH):
            self.tree.store.delete(keys[start : start + DELETE_BATCH])
        if scan.has_state:
            with translated("delete upload state"):
                self.tree.client.delete_object(Bucket=self.tree.bucket, Key=self.state_key(stem))
        return scan.nbytes

    def abort_composition(self, composing: dict[str, Any]) -> None:
        """Abort the multipart upload of a commit that died (best effort: ``storage gc``
        aborts whatever is left)."""
        with contextlib.suppress(Exception):
            self.tree.client.abort_multipart_upload(
                Bucket=self.tree.bucket, Key=composing["key"], UploadId=composing["id"]
            )

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
            yield PartialInfo(parts, scan.nbytes, expected, scan.mtime)

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
