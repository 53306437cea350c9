"""A journal of what matters to durability, for tests of group commit (framed and FTP).

The ``journal`` fixture records, in one list and in the order they happen, every flush
(its start and end: ``ftpd.storage.flush.syncfs``), every partial sealed and every
rename (``LocalUpload.seal``/``install``) and every framed answer of "stored"; an FTP
test adds its 226.  ``check_durable_before_answer`` then proves, for one file, that a
whole flush lies between its last write and its rename, and another between its rename
and its answer.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest

from ftpd.framed.session import FramedSession
from ftpd.storage import flush
from ftpd.storage.local import LocalUpload


class Journal:
    """Everything that matters to durability, in the order it happened."""

    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []
        self._lock = threading.Lock()
        self._flushes = 0

    def add(self, kind: str, what: Any) -> None:
        with self._lock:
            self.events.append((kind, what))

    def next_flush(self) -> int:
        with self._lock:
            self._flushes += 1
            return self._flushes

    def index(self, kind: str, what: Any) -> int:
        found = [i for i, event in enumerate(self.events) if event == (kind, what)]
        assert len(found) == 1, (kind, what, found)
        return found[0]

    def flushes(self) -> list[tuple[int, int]]:
        """(start index, end index) of every flush."""
        starts = {n: i for i, (k, n) in enumerate(self.events) if k == "flush-start"}
        ends = {n: i for i, (k, n) in enumerate(self.events) if k == "flush-end"}
        return [(starts[n], ends[n]) for n in sorted(starts)]

    def covered(self, after: int, before: int) -> bool:
        """Whether a whole flush started after event ``after`` and ended before ``before``."""
        return any(after < start and end < before for start, end in self.flushes())

    def check_durable_before_answer(self, name: str) -> None:
        sealed = self.index("sealed", name)
        renamed = self.index("renamed", name)
        answered = self.index("answer", name)
        assert self.covered(sealed, self.index("rename", name)), f"{name}: renamed unflushed"
        assert self.covered(renamed, answered), f"{name}: answered before its name was durable"


@pytest.fixture
def journal(monkeypatch: pytest.MonkeyPatch) -> Iterator[Journal]:
    j = Journal()
    real_syncfs, real_seal, real_install = flush.syncfs, LocalUpload.seal, LocalUpload.install
    real_send = FramedSession.send

    def syncfs(fd: int) -> None:
        n = j.next_flush()
        j.add("flush-start", n)
        real_syncfs(fd)
        j.add("flush-end", n)

    def seal(self: LocalUpload, *args: Any) -> int:
        fd = real_seal(self, *args)
        j.add("sealed", self.parts[-1])
        return fd

    def install(self: LocalUpload) -> int:
        j.add("rename", self.parts[-1])
        replaced = real_install(self)
        j.add("renamed", self.parts[-1])
        return replaced

    def send(self: FramedSession, response: Any, body: bytes = b"") -> None:
        # Recorded just before the bytes leave: the client may read the answer (and the
        # test inspect the journal) before a record made after sending would exist.
        if response.ok and response.message.startswith("stored "):
            j.add("answer", response.data["path"].rsplit("/", 1)[-1])
        real_send(self, response, body)

    monkeypatch.setattr(flush, "syncfs", syncfs)
    monkeypatch.setattr(LocalUpload, "seal", seal)
    monkeypatch.setattr(LocalUpload, "install", install)
    monkeypatch.setattr(FramedSession, "send", send)
    yield j
