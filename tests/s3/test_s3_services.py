"""The file service over S3, without sockets: the core's uploads, quota and changes work
unchanged on the bucket, and the ledger agrees with what the bucket holds."""

from __future__ import annotations

import hashlib
import os
from typing import Any

import pytest

from ftpd.accounts.users import UserStore
from ftpd.core.files import FileService
from ftpd.core.services import Services
from ftpd.errors import ChecksumError, ConflictError, NotFoundError, QuotaExceededError
from ftpd.state.base import Usage
from ftpd.storage.s3 import S3Storage
from tests.conftest import FAST, PASSWORDS, Project
from tests.s3.conftest import Weed, get, keys

MiB = 1 << 20


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


@pytest.fixture
def services(project: Project, storage: S3Storage) -> Services:
    users: dict[str, dict[str, Any]] = {
        name: {"password": FAST.hash(pw), "quota": None} for name, pw in PASSWORDS.items()
    }
    users["alice"].update({"quota": 40 * MiB, "max_files": 8})
    project.write_users(users)
    config = project.load()
    return Services.build(config, UserStore.load(config.users_file), storage)


def session(services: Services, name: str = "alice") -> FileService:
    files = FileService(services.accounts.context(name), services.accounts, services.runtime)
    files.ledger.usage()
    return files


def put(files: FileService, vpath: str, data: bytes, mtime: float | None = None) -> str:
    up = files.upload(vpath, len(data))
    up.write(memoryview(data))
    return up.commit(md5(data), mtime)


def assert_in_step(files: FileService) -> None:
    usage = files.ledger.usage()
    nbytes, entries, complete = files.tree.usage()
    assert complete and (usage.reserved, usage.reserved_entries) == (0, 0)
    assert (usage.used, usage.entries) == (nbytes, entries)


def test_put_stat_get_and_the_ledger(services: Services, weed: Weed) -> None:
    files = session(services)
    assert files.tree.home in keys(weed, files.tree.home)  # the home's marker, at login
    data = os.urandom(MiB + 7)
    files.mkdir("d")
    assert put(files, "d/f.bin", data, mtime=1_500_000_000.0) == md5(data)
    shown, entry, checksum = files.stat("d/f.bin")
    assert (shown, entry.size, entry.mtime, checksum) == ("/d/f.bin", len(data), 1.5e9, md5(data))
    with files.download("d/f.bin") as down:
        assert (down.size, down.checksum) == (len(data), md5(data))
        assert down.read() == data
    with files.download("d/f.bin", "sha1") as down:
        assert down.checksum == hashlib.sha1(data).hexdigest()
    assert files.ledger.usage() == Usage(len(data), 0, 2, 0)
    assert_in_step(files)


def test_resume_through_the_core_checks_the_prefix(services: Services, weed: Weed) -> None:
    files = session(services)
    data = os.urandom(18 * MiB)
    up = files.upload("r.bin", len(data))
    up.write(memoryview(data[: 11 * MiB]))
    up.abort()  # a dropped connection: the buffer is kept as a part
    assert files.ledger.usage() == Usage(11 * MiB, 0, 0, 0)
    [partial] = files.quota().partials
    assert (partial["path"], partial["size"]) == ("/r.bin", 11 * MiB)
    listed = files.listing("/")[1]
    assert [(e.name, e.partial, e.expected) for e in listed] == [("r.bin", 11 * MiB, len(data))]

    other = session(services)  # another session (on another node: same bucket)
    up = other.upload("r.bin", len(data))
    assert up.offset == 11 * MiB
    assert up.prefix_checksum() == md5(data[: 11 * MiB])
    up.write(memoryview(data[11 * MiB :]))
    up.commit(md5(data))
    assert md5(get(weed, files.tree.home + "r.bin")) == md5(data)
    assert files.ledger.usage() == Usage(len(data), 0, 1, 0)
    assert_in_step(files)


def test_changed_source_and_wrong_checksum(services: Services) -> None:
    files = session(services)
    old, new = os.urandom(9 * MiB), os.urandom(9 * MiB)
    up = files.upload("c", len(old))
    up.write(memoryview(old[: 8 * MiB + 1]))
    up.abort()
    up = files.upload("c", len(new))
    assert up.prefix_checksum() != md5(new[: up.offset])  # the client sees it changed
    up.restart()
    up.write(memoryview(new))
    with pytest.raises(ChecksumError):
        up.commit(md5(old))
    assert files.ledger.usage() == Usage(0, 0, 0, 0)
    assert list(files.tree.partials()) == []
    with pytest.raises(NotFoundError):
        files.stat("c")
    assert_in_step(files)


def test_quota_holds_on_the_bucket(services: Services) -> None:
    files = session(services)
    put(files, "a", b"a" * 30 * MiB)
    with pytest.raises(QuotaExceededError):
        files.upload("b", 11 * MiB)
    put(files, "a", b"b" * 5)  # replacing frees the old bytes
    assert files.ledger.usage() == Usage(5, 0, 1, 0)
    assert_in_step(files)


def test_mv_rm_r_and_rmdir_keep_the_ledger(services: Services, weed: Weed) -> None:
    files = session(services)
    files.mkdir("src/inner", parents=True)
    for i in range(3):
        put(files, f"src/f{i}", bytes([65 + i]) * (100 + i))
    put(files, "src/inner/deep", b"deep")
    files.mkdir("dst")
    assert files.mv("src", "dst") == "/dst/src"  # into the folder, like mv(1)
    assert files.listing("/dst/src")[1][0].name == "f0"
    assert get(weed, files.tree.home + "dst/src/inner/deep") == b"deep"
    assert files.mv("/dst/src/f0", "/top") == "/top"
    assert_in_step(files)
    assert files.rm("dst", recursive=True) == "removed /dst (6 entries)"
    with pytest.raises(ConflictError):
        files.rmdir("top")
    assert files.ledger.usage() == Usage(100, 0, 1, 0)
    assert [e.name for e in files.listing("/")[1]] == ["top"]
    assert_in_step(files)


def test_max_files_counts_folders_and_files(services: Services) -> None:
    files = session(services)
    files.mkdir("a/b/c/d", parents=True)
    for i in range(4):
        put(files, f"f{i}", b"x")
    with pytest.raises(QuotaExceededError):
        files.mkdir("e")
    with pytest.raises(QuotaExceededError):
        files.upload("g", 1)
    assert files.ledger.usage().entries == 8
    assert files.ledger.recount() is True
    assert files.ledger.usage().entries == 8
    assert_in_step(files)


def test_rm_of_an_interrupted_upload_gives_its_bytes_back(services: Services) -> None:
    files = session(services)
    up = files.upload("half", 100)
    up.write(memoryview(b"h" * 40))
    up.abort()
    assert files.ledger.usage() == Usage(40, 0, 0, 0)
    assert files.rm("half") == "removed the interrupted upload of /half"
    assert files.ledger.usage() == Usage(0, 0, 0, 0)
    assert list(files.tree.partials()) == []
    assert_in_step(files)


def count_requests(storage: S3Storage) -> list[str]:
    """Every request the storage's client sends from now on, by operation name."""
    sent: list[str] = []

    def note(model: Any, **_: Any) -> None:
        sent.append(model.name)

    storage.client.meta.events.register("before-call.s3", note)
    return sent


def test_requests_of_a_small_put_and_a_big_one(services: Services, storage: S3Storage) -> None:
    """A new small file is one PutObject after the lookups (no HEAD before it: the put
    is conditional on what the lookup saw); a big one streams its parts into one
    multipart upload and completes it, with no copy."""
    files = session(services)
    files.mkdir("d")
    sent = count_requests(storage)
    put(files, "d/small.bin", b"s" * 4096)
    print(f"\nrequests for a new 4 KiB file: {len(sent)} {sent}")
    assert sent.count("PutObject") == 1 and "UploadPartCopy" not in sent
    assert len(sent) <= 5  # 11 before the redesign, 6 before one LIST replaced HEAD + LIST
    sent.clear()
    put(files, "d/small.bin", b"t" * 4096)  # replacing it
    print(f"requests for a 4 KiB file replacing one: {len(sent)} {sent}")
    assert sent.count("PutObject") == 1 and len(sent) <= 3  # 5 before
    sent.clear()
    data = os.urandom(3 * 8 * MiB + 5)
    put(files, "d/big.bin", data)
    print(f"requests for a 24 MiB file: {len(sent)} {sent}")
    assert sent.count("UploadPart") == 4 and "UploadPartCopy" not in sent
    assert sent.count("CreateMultipartUpload") == sent.count("CompleteMultipartUpload") == 1
    with files.download("d/big.bin") as down:
        assert down.checksum == md5(data)
    assert_in_step(files)


class CountingHasher:
    """A hasher that counts the bytes it is fed (the session's own, when it hashes)."""

    fed = 0

    def __init__(self, name: str) -> None:
        self.inner = hashlib.new(name)
        self.name = name

    def update(self, data: Any) -> None:
        CountingHasher.fed += len(data)
        self.inner.update(data)

    def copy(self) -> Any:
        return self.inner.copy()

    def hexdigest(self) -> str:
        return self.inner.hexdigest()


def test_each_byte_is_hashed_once_and_the_digest_survives_resume_and_rest(
    services: Services, weed: Weed, monkeypatch: pytest.MonkeyPatch
) -> None:
    """md5 is the store's running hash (saved per part): the session feeds its own
    hasher nothing, and the digest stays right across an interrupted upload, a resume
    on another session, a REST into the bytes after the stored parts and a restart.
    Another digest (sha1) is hashed by the session as before."""
    monkeypatch.setattr("ftpd.core.files.new_hasher", CountingHasher)
    files = session(services)
    data = os.urandom(9 * MiB + 11)
    up = files.upload("h.bin", len(data))
    up.write(memoryview(data[: 8 * MiB + MiB // 2]))  # one part stored, half a MiB held
    up.abort()
    up = session(services).upload("h.bin", len(data))
    assert up.offset == 8 * MiB + MiB // 2
    assert up.prefix_checksum() == md5(data[: up.offset])
    up.seek(8 * MiB + 100)  # REST inside the bytes held after the part
    assert up.prefix_checksum() == md5(data[: 8 * MiB + 100])
    up.write(memoryview(data[8 * MiB + 100 :]))
    assert up.commit(md5(data)) == md5(data)
    assert md5(get(weed, files.tree.home + "h.bin")) == md5(data)
    assert CountingHasher.fed == 0

    up = files.upload("h.bin", len(data), resume=False)
    up.write(memoryview(os.urandom(8 * MiB + 5)))
    up.restart()  # the client's source changed
    up.write(memoryview(data))
    assert up.commit(md5(data)) == md5(data)
    assert CountingHasher.fed == 0

    up = files.upload("s.bin", len(data), digest="sha1")
    up.write(memoryview(data))
    assert up.commit(hashlib.sha1(data).hexdigest())
    assert CountingHasher.fed == len(data)
    assert_in_step(files)
