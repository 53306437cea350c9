"""FTP's STOR keeps the durability promise with shared flushes: its 226 follows a flush
of the file's bytes before the rename and a flush of the name after it (the journal of
tests/durability.py), for concurrent STORs sharing flushes."""

from __future__ import annotations

import io
import threading
from collections.abc import Callable
from typing import Any

import pytest

from ftpd.ftp.session import FTPSession
from tests.durability import Journal
from tests.support import TIMEOUT

FTPRunning = Any


@pytest.fixture
def ftp_journal(journal: Journal, monkeypatch: pytest.MonkeyPatch) -> Journal:  # noqa: F811
    real_send = FTPSession.send

    def send(self: FTPSession, reply: Any) -> None:
        # Recorded before sending, for the reason given in tests/durability.py.
        if reply.code == 226 and reply.text.startswith("stored "):
            journal.add("answer", reply.text.split(":")[0].rsplit("/", 1)[-1])
        real_send(self, reply)

    monkeypatch.setattr(FTPSession, "send", send)
    return journal


def test_stor_is_answered_226_only_after_its_flushes(
    ftp_factory: Callable[..., FTPRunning], ftp_journal: Journal
) -> None:
    srv = ftp_factory(fsync=True)
    errors: list[BaseException] = []

    def upload(i: int) -> None:
        try:
            client = srv.connect()
            for k in range(3):
                client.storbinary(f"STOR c{i}-{k}", io.BytesIO(b"%d" % k * (1000 + i)))
            client.quit()
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=upload, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT * 4)
    assert not errors, errors
    for i in range(4):
        for k in range(3):
            name = f"c{i}-{k}"
            assert (srv.home() / name).read_bytes() == b"%d" % k * (1000 + i)
            ftp_journal.check_durable_before_answer(name)
