"""Regressions from a hostile review: each test failed on a real bug, now fixed.

Layers as elsewhere: pure calls on tmp_path, the services without sockets, and the
in-process FTP listener.  Interleavings of a race are simulated deterministically by
wrapping the storage call in which the other thread would run; no sleeps.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ftpd import control
from ftpd.accounts.throttle import LoginThrottle
from ftpd.core.files import FileService
from ftpd.errors import QuotaExceededError, StorageFullError
from ftpd.storage import local as local_mod
from ftpd.storage.base import Removed
from tests.conftest import Project
from tests.services.conftest import Build, session, user_fields

TIMEOUT_S = 10.0


def put(files: FileService, vpath: str, data: bytes) -> str:
    up = files.upload(vpath, len(data))
    up.write(memoryview(data))
    return up.commit(hashlib.md5(data).hexdigest())


def open_fds() -> set[int]:
    return {int(n) for n in os.listdir("/proc/self/fd")}


# --- storage/local.py: _walk_tree / _frame_fd ----------------------------------------------


def test_walk_tree_reopen_failure_leaks_no_descriptor(tmp_path: Path) -> None:
    """Below depth 64 the walk closes its folders' descriptors and re-opens them by name
    from the nearest kept ancestor (``_frame_fd``).  When a folder of that chain was
    renamed meanwhile (another session's ``mv`` during a reload's recount or an
    ``rm -r``), the re-open fails half-way, and the descriptor already opened for the
    chain's first folder is never closed: one leaked descriptor per failed re-open."""
    top = tmp_path / "t"
    path = top
    for i in range(1, 71):
        path = path / f"d{i}"
    path.mkdir(parents=True)
    (path / "f").write_bytes(b"x")
    chain = [top / "/".join(f"d{j}" for j in range(1, i + 1)) for i in range(1, 71)]
    moved = [False]

    def on_file(parent: int, item: os.DirEntry[str], depth: int) -> None:
        if not moved[0]:  # another session renames a folder of the closed chain
            moved[0] = True
            os.rename(chain[65], chain[65].with_name("elsewhere"))  # d66

    errors: list[OSError] = []
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    try:
        before = open_fds()
        local_mod._walk_tree(fd, on_file=on_file, on_error=errors.append)
        leaked = open_fds() - before
    finally:
        os.close(fd)
    assert moved[0] and errors  # the race happened and was reported
    assert leaked == set(), f"descriptors left open: {sorted(leaked)}"


# --- core/files.py + state/local.py: rm and the ledger's recount ------------------------------


class _RecountDuringRemove:
    """The user's tree, whose ``remove`` lets the reload's background recount run after
    the first entry is gone (what ``recount_all`` does while a big ``rm -r`` runs)."""

    def __init__(self, tree: Any, recount: Callable[[], bool]) -> None:
        self._tree = tree
        self._recount = recount
        self.took: list[bool] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._tree, name)

    def remove(self, parts: Any, recursive: bool = False, on_removed: Any = None) -> Removed:
        def heard(r: Removed) -> None:
            on_removed(r)
            if not self.took:
                self.took.append(self._recount())

        return self._tree.remove(parts, recursive, heard)


def test_ledger_rm_r_during_recount_is_not_subtracted_twice(build: Build, project: Project) -> None:
    """``FileService.rm`` removes on disk and tells the ledger only at the end; a recount
    (every reload starts one in the background) that runs meanwhile counts the disk
    without the removed entries and is kept (nothing reserved, version unchanged), then
    ``rm`` subtracts them again.  The ledger ends low and the user passes the quota."""
    services = build(users=user_fields(alice={"quota": 1000}))
    files = session(services)
    put(files, "keep", b"k" * 400)
    files.mkdir("d")
    put(files, "d/x", b"x" * 150)
    put(files, "d/y", b"y" * 150)
    wrapped = _RecountDuringRemove(files.tree, files.ledger.recount)
    files.tree = wrapped
    files.rm("d", recursive=True)
    files.tree = wrapped._tree
    assert wrapped.took == [False]  # the recount ran mid-rm and was not kept
    usage = files.ledger.usage()
    assert (usage.used, usage.entries) == (400, 1)  # what is on disk


def test_quota_rm_r_during_recount_lets_the_user_pass_the_limit(
    build: Build, project: Project
) -> None:
    """The consequence of the double subtraction: 400 bytes on disk, a 1000-byte quota,
    and a 700-byte upload is accepted."""
    services = build(users=user_fields(alice={"quota": 1000}))
    files = session(services)
    put(files, "keep", b"k" * 400)
    files.mkdir("d")
    put(files, "d/x", b"x" * 150)
    put(files, "d/y", b"y" * 150)
    wrapped = _RecountDuringRemove(files.tree, files.ledger.recount)
    files.tree = wrapped
    files.rm("d", recursive=True)
    files.tree = wrapped._tree
    with pytest.raises(QuotaExceededError):  # 400 on disk + 700 > 1000
        put(files, "big", b"b" * 700)


# --- control.py: the control socket's answer ---------------------------------------------------


def test_control_answer_deeply_nested_json_is_an_error_not_a_crash(tmp_path: Path) -> None:
    """``ControlServer.answer`` promises never to raise for what the peer sent, but a
    4 KiB line of ``[`` makes ``json.loads`` raise RecursionError (not ValueError): the
    handler dies with a logged BUG and the admin's ``ask`` gets no answer."""
    throttle = LoginThrottle(5, 60.0, 0.0)
    server = control.ControlServer(tmp_path / "c.sock", throttle)
    try:
        reply = server.answer(b"[" * 4000 + b"\n")
    finally:
        server.server_close()
    assert reply["ok"] is False


# --- ftp/session.py: REIN ------------------------------------------------------------------------


# --- core/files.py: Upload.write on a full disk ------------------------------------------------


def test_upload_disk_full_after_a_short_write_keeps_the_ledger_in_step(
    build: Build, project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full disk usually shows as a short ``write`` followed by ENOSPC.  The bytes of
    the short write never reach ``Upload._delta`` (``LocalUpload.write`` raises and its
    count is lost), but ``restart()`` then subtracts the partial's whole size: the
    ledger ends lower than the disk by those bytes, on every disk-full event."""
    services = build(users=user_fields(alice={"quota": 100_000}))
    files = session(services)
    put(files, "keep", b"k" * 1000)
    up = files.upload("big", 5000)
    up.write(memoryview(b"a" * 1000))
    target = up.stored._fd  # type: ignore[attr-defined]
    real_write = os.write
    calls = [0]

    def full_disk(fd: int, data: Any) -> int:
        if fd != target:
            return real_write(fd, data)
        calls[0] += 1
        if calls[0] == 1:
            return real_write(fd, bytes(data[:600]))  # the disk fills up half-way
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "write", full_disk)
    up.write(memoryview(b"b" * 1200))
    monkeypatch.setattr(os, "write", real_write)
    assert up.error is not None
    with pytest.raises(StorageFullError):
        up.commit()
    usage = files.ledger.usage()
    on_disk = sum(
        os.lstat(os.path.join(top, n)).st_size
        for top, _, names in os.walk(project.home("alice"))
        for n in names
    )
    assert on_disk == 1000
    assert usage.used == on_disk
