"""Uploads through the file service, without sockets: verify, abort, resume, restart,
disk full, and the claim on a target (refusal or takeover)."""

from __future__ import annotations

import errno
import hashlib
import os
import threading
from pathlib import Path

import pytest

from ftpd.core.files import FileService
from ftpd.core.services import Services
from ftpd.errors import (
    BadRequestError,
    ChecksumError,
    ConflictError,
    QuotaExceededError,
    StorageFullError,
)
from ftpd.state.base import Usage
from ftpd.storage.local import PARTIAL_DIR
from tests.conftest import Project
from tests.services.conftest import Build, session, user_fields

DATA = bytes(range(256)) * 4  # 1024 bytes


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def partial_files(home: Path) -> list[str]:
    folder = home / PARTIAL_DIR
    return sorted(os.listdir(folder)) if folder.is_dir() else []


@pytest.fixture
def services(build: Build) -> Services:
    return build(users=user_fields(alice={"quota": 10_000, "max_files": 10}))


@pytest.fixture
def files(services: Services) -> FileService:
    return session(services)


@pytest.fixture
def home(project: Project) -> Path:
    return project.home("alice")


def test_upload_commit_installs_and_counts(
    files: FileService, services: Services, home: Path
) -> None:
    up = files.upload("f.bin", len(DATA))
    assert services.runtime.transfers == 1
    up.write(memoryview(DATA[:100]))
    up.write(memoryview(DATA[100:]))
    assert up.commit(md5(DATA), mtime=1_500_000_000.0) == md5(DATA)
    assert services.runtime.transfers == 0
    assert (home / "f.bin").read_bytes() == DATA
    assert (home / "f.bin").stat().st_mtime == 1_500_000_000.0
    assert files.ledger.usage() == Usage(len(DATA), 0, 1, 0)
    shown, entry, checksum = files.stat("f.bin")
    assert (shown, entry.size, checksum) == ("/f.bin", len(DATA), md5(DATA))
    with files.download("f.bin") as down:
        assert (down.size, down.checksum) == (len(DATA), md5(DATA))
        assert down.read() == DATA
    with files.download("f.bin", "sha1") as down:
        assert down.checksum == hashlib.sha1(DATA).hexdigest()
    assert partial_files(home) == []


def test_unknown_digest_is_refused(files: FileService) -> None:
    with pytest.raises(BadRequestError):
        files.upload("f", 1, digest="crc32")
    with pytest.raises(BadRequestError):
        files.download("f", digest="sha256")


def test_wrong_checksum_leaves_no_partial_and_ledger_unchanged(
    files: FileService, services: Services, home: Path
) -> None:
    before = files.ledger.usage()
    up = files.upload("f", len(DATA))
    up.write(memoryview(DATA))
    with pytest.raises(ChecksumError) as info:
        up.commit("0" * 32)
    assert info.value.code == 422 and info.value.data["received"] == md5(DATA)
    assert files.ledger.usage() == before
    assert partial_files(home) == [] and not (home / "f").exists()
    assert services.runtime.transfers == 0
    up.abort()  # after the commit: nothing more happens
    assert files.ledger.usage() == before
    files.upload("f", 1).abort()  # the claim was released


def test_wrong_checksum_on_a_resume_drops_the_prefix_too(files: FileService, home: Path) -> None:
    up = files.upload("f", len(DATA))
    up.write(memoryview(DATA[:400]))
    up.abort()
    assert files.ledger.usage() == Usage(400, 0, 0, 0)
    up = files.upload("f", len(DATA))
    assert up.offset == 400
    up.write(memoryview(b"\0" * (len(DATA) - 400)))
    with pytest.raises(ChecksumError):
        up.commit(md5(DATA))
    assert files.ledger.usage() == Usage(0, 0, 0, 0)
    assert partial_files(home) == []


def test_abort_keeps_the_partial_and_counts_its_bytes(files: FileService, home: Path) -> None:
    up = files.upload("dir-less.bin", len(DATA))
    up.write(memoryview(DATA[:300]))
    up.abort()
    up.abort()  # twice is harmless
    assert files.ledger.usage() == Usage(300, 0, 0, 0)
    info = files.quota()
    assert info.partials == [
        {
            "path": "/dir-less.bin",
            "size": 300,
            "expected": len(DATA),
            "mtime": info.partials[0]["mtime"],
        }
    ]
    assert not (home / "dir-less.bin").exists()

    up = files.upload("dir-less.bin", len(DATA))  # resume: the prefix is checked, not resent
    assert up.offset == 300
    assert up.prefix_checksum() == md5(DATA[:300])
    assert files.ledger.usage() == Usage(300, len(DATA) - 300, 0, 1)
    up.write(memoryview(DATA[300:]))
    up.commit(md5(DATA))
    assert files.ledger.usage() == Usage(len(DATA), 0, 1, 0)
    assert (home / "dir-less.bin").read_bytes() == DATA
    assert partial_files(home) == []


def test_restart_when_the_source_changed(files: FileService, home: Path) -> None:
    up = files.upload("f", len(DATA))
    up.write(memoryview(DATA[:500]))
    up.abort()
    new = DATA[::-1]
    up = files.upload("f", len(new))
    assert up.offset == 500
    assert up.prefix_checksum() != md5(new[:500])  # the client sees the source changed
    up.restart()
    assert up.offset == 0 and up.prefix_checksum() is None
    assert files.ledger.usage().reserved == len(new)
    up.write(memoryview(new))
    assert up.commit(md5(new)) == md5(new)
    assert (home / "f").read_bytes() == new
    assert files.ledger.usage() == Usage(len(new), 0, 1, 0)


def test_another_size_starts_afresh(files: FileService, home: Path) -> None:
    up = files.upload("f", 100)
    up.write(memoryview(b"a" * 60))
    up.abort()
    up = files.upload("f", 50)
    assert up.offset == 0
    up.write(memoryview(b"b" * 50))
    up.commit()
    assert files.ledger.usage() == Usage(50, 0, 1, 0)
    assert len(partial_files(home)) == 0


def test_no_resume_drops_what_was_held(files: FileService) -> None:
    up = files.upload("f", 100)
    up.write(memoryview(b"a" * 60))
    up.abort()
    up = files.upload("f", 100, resume=False)
    assert up.offset == 0
    up.abort()
    assert files.ledger.usage() == Usage(0, 0, 0, 0)


def test_disk_full_gives_the_space_back(files: FileService, home: Path) -> None:
    up = files.upload("f", len(DATA))
    up.write(memoryview(DATA[:200]))
    real_write = up.stored.write

    def full(data: memoryview) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    up.stored.write = full  # type: ignore[method-assign]
    up.write(memoryview(DATA[200:400]))  # kept as the upload's error; the body goes on
    up.write(memoryview(DATA[400:]))
    up.stored.write = real_write  # type: ignore[method-assign]
    with pytest.raises(StorageFullError):
        up.commit(md5(DATA))
    assert files.ledger.usage() == Usage(0, 0, 0, 0)
    assert partial_files(home) == [] and not (home / "f").exists()


def test_upload_onto_a_folder_or_through_a_missing_one(files: FileService) -> None:
    files.mkdir("d")
    with pytest.raises(ConflictError):
        files.upload("d", 1)
    with pytest.raises(ConflictError):
        files.upload("/", 1)
    with pytest.raises(Exception) as info:
        files.upload("missing/f", 1)
    assert info.value.code == 404  # type: ignore[attr-defined]
    assert files.ledger.usage() == Usage(0, 0, 1, 0)


# --- one upload per target ------------------------------------------------------------------


def test_second_upload_refused_while_the_first_receives(build: Build, home: Path) -> None:
    services = build(users=user_fields(alice={"quota": 10_000}), takeover_after=60)
    first, second = session(services), session(services)
    interrupted = threading.Event()
    first.interrupt = interrupted.set
    up = first.upload("f", len(DATA))
    up.write(memoryview(DATA[:10]))
    with pytest.raises(ConflictError):
        second.upload("f", len(DATA))
    os.symlink("f", home / "alias")  # the same target by another path (a link)
    with pytest.raises(ConflictError):
        second.upload("alias", len(DATA))
    assert not interrupted.is_set()
    second.upload("g", 1).abort()  # other targets are free
    up.write(memoryview(DATA[10:]))
    up.commit(md5(DATA))
    assert (home / "f").read_bytes() == DATA
    second.upload("f", 1).abort()  # released at commit


def test_second_upload_takes_over_a_stalled_one(build: Build, home: Path) -> None:
    services = build(users=user_fields(alice={"quota": 10_000}), takeover_after=0)
    first, second = session(services), session(services)
    interrupted = threading.Event()
    first.interrupt = interrupted.set  # a front end cuts its connection here
    up = first.upload("f", len(DATA))
    up.write(memoryview(DATA[:700]))

    def first_session_thread() -> None:  # notices its connection was cut, and stops
        if interrupted.wait(10):
            up.abort()

    thread = threading.Thread(target=first_session_thread)
    thread.start()
    taken = second.upload("f", len(DATA))  # waits for the first to let go
    thread.join(10)
    assert interrupted.is_set() and not thread.is_alive()
    assert taken.offset == 700  # the partial is handed over
    assert taken.prefix_checksum() == md5(DATA[:700])
    taken.write(memoryview(DATA[700:]))
    taken.commit(md5(DATA))
    assert (home / "f").read_bytes() == DATA
    assert second.ledger.usage() == Usage(len(DATA), 0, 1, 0)
    assert partial_files(home) == []


def test_claims_are_per_user(build: Build, project: Project) -> None:
    services = build(takeover_after=60)
    alice, bob = session(services, "alice"), session(services, "bob")
    a = alice.upload("f", 1)
    b = bob.upload("f", 1)  # same name, another home
    a.write(memoryview(b"a"))
    b.write(memoryview(b"b"))
    a.commit()
    b.commit()
    assert project.home("alice").joinpath("f").read_bytes() == b"a"
    assert project.home("bob").joinpath("f").read_bytes() == b"b"


# --- room freed by the upload itself ----------------------------------------------------------


@pytest.fixture
def tight(build: Build) -> FileService:
    return session(build(users=user_fields(alice={"quota": 100})))


def test_partial_dropped_for_another_size_frees_room_at_once(
    tight: FileService, home: Path
) -> None:
    """An upload of another size removes the old partial before it reserves: the bytes
    that partial held must not count against the new upload."""
    up = tight.upload("f", 100)
    up.write(memoryview(b"a" * 60))
    up.abort()
    assert tight.ledger.usage() == Usage(60, 0, 0, 0)
    up = tight.upload("f", 50)  # 60 dropped, 50 needed: fits in 100
    up.write(memoryview(b"b" * 50))
    up.commit()
    assert tight.ledger.usage() == Usage(50, 0, 1, 0)


def test_partial_dropped_without_resume_frees_room_at_once(tight: FileService) -> None:
    up = tight.upload("f", 100)
    up.write(memoryview(b"a" * 60))
    up.abort()
    up = tight.upload("f", 100, resume=False)  # 60 dropped, 100 needed: fits in 100
    up.write(memoryview(b"b" * 100))
    up.commit()
    assert tight.ledger.usage() == Usage(100, 0, 1, 0)


def test_refused_upload_still_accounts_for_the_partial_it_dropped(tight: FileService) -> None:
    up = tight.upload("f", 100)
    up.write(memoryview(b"a" * 60))
    up.abort()
    with pytest.raises(QuotaExceededError):
        tight.upload("f", 101)
    assert tight.ledger.usage() == Usage(0, 0, 0, 0)  # the old partial is gone all the same
    assert list(tight.tree.partials()) == []


def test_rm_while_the_target_is_being_uploaded_keeps_the_ledger_right(
    services: Services, home: Path
) -> None:
    """``rm NAME`` in one session while another session is still receiving NAME: whatever
    happens to that upload, the ledger must end up agreeing with the disk."""
    uploader, remover = session(services), session(services)
    up = uploader.upload("f", 100)
    up.write(memoryview(b"a" * 30))
    try:
        remover.rm("f")
    except ConflictError:
        pass  # refusing is fine: the upload is running, not interrupted
    up.write(memoryview(b"b" * 70))
    try:
        up.commit()
    except Exception:  # noqa: BLE001 - failing cleanly is fine too
        pass
    on_disk = sum(
        os.lstat(os.path.join(top, n)).st_size for top, _, names in os.walk(home) for n in names
    )
    assert uploader.ledger.usage().used == on_disk
