"""The file service and the quota ledger together, without sockets.

Every change goes through ``FileService``; the ledger must follow it exactly (bytes and
entries), limits must hold across sessions of one user, and what is on disk must agree
with what the ledger says.
"""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

import pytest

from ftpd.core.files import FileService, Upload
from ftpd.core.services import Services
from ftpd.errors import ConflictError, NotFoundError, PermissionDeniedError, QuotaExceededError
from ftpd.state.base import Usage
from ftpd.storage.base import PARTIAL_PREFIX, RESERVED
from tests.conftest import Project
from tests.services.conftest import Build, session, user_fields


def put(files: FileService, vpath: str, data: bytes, mtime: float | None = None) -> str:
    up = files.upload(vpath, len(data))
    up.write(memoryview(data))
    return up.commit(hashlib.md5(data).hexdigest(), mtime)


def on_disk(home: Path) -> tuple[int, int]:
    """Bytes of regular files (partials too) and the user's entries (not .ftpd's, not
    partials beside their targets), counted by the test itself."""
    nbytes = entries = 0
    for top, dirs, files in os.walk(home):
        rel = Path(top).relative_to(home).parts
        mine = not (rel and rel[0] == RESERVED)
        for name in dirs:
            if mine and not (not rel and name == RESERVED):
                entries += 1
        for name in files:
            path = os.path.join(top, name)
            if os.path.isfile(path) and not os.path.islink(path):
                nbytes += os.lstat(path).st_size
            if mine and not name.startswith(PARTIAL_PREFIX):
                entries += 1
    return nbytes, entries


def assert_in_step(files: FileService, home: Path) -> None:
    usage = files.ledger.usage()
    assert (usage.reserved, usage.reserved_entries) == (0, 0)
    assert (usage.used, usage.entries) == on_disk(home)


@pytest.fixture
def limited(build: Build) -> Services:
    return build(users=user_fields(alice={"quota": 1000, "max_files": 5}))


@pytest.fixture
def home(project: Project) -> Path:
    return project.home("alice")


# --- bytes ----------------------------------------------------------------------------------


def test_quota_is_held_during_an_upload(limited: Services, home: Path) -> None:
    one, two = session(limited), session(limited)
    up = one.upload("a", 600)
    assert one.ledger is two.ledger
    assert two.ledger.usage() == Usage(0, 600, 0, 1)
    with pytest.raises(QuotaExceededError) as info:
        two.upload("b", 401)
    assert info.value.data["available"] == 400
    up.write(memoryview(b"x" * 600))
    up.commit()
    put(two, "b", b"y" * 400)
    with pytest.raises(QuotaExceededError):
        two.upload("c", 1)
    assert_in_step(one, home)
    assert one.quota().available == 0


@pytest.mark.parametrize(("threads_n", "size", "fit"), [(2, 600, 1), (8, 300, 3), (8, 0, 5)])
def test_concurrent_uploads_cannot_jointly_pass_the_limits(
    limited: Services, home: Path, threads_n: int, size: int, fit: int
) -> None:
    """Each session reserves at once (bytes, and one entry for a new name)."""
    sessions = [session(limited) for _ in range(threads_n)]
    started = threading.Barrier(threads_n)
    decided = threading.Barrier(threads_n)
    granted: list[Upload] = []
    refused: list[QuotaExceededError] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def worker(n: int) -> None:
        try:
            started.wait(10)
            try:
                up = sessions[n].upload(f"f{n}", size)
            except QuotaExceededError as exc:
                with lock:
                    refused.append(exc)
                decided.wait(10)
                return
            with lock:
                granted.append(up)
            decided.wait(10)  # everyone has tried while the winners still hold their room
            up.write(memoryview(b"z" * size))
            up.commit()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(threads_n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
        assert not t.is_alive()
    assert errors == []
    assert (len(granted), len(refused)) == (fit, threads_n - fit)
    assert sessions[0].ledger.usage() == Usage(fit * size, 0, fit, 0)
    assert_in_step(sessions[0], home)


def test_upload_refused_by_quota_leaves_nothing(limited: Services, home: Path) -> None:
    files = session(limited)
    before = files.ledger.usage()
    with pytest.raises(QuotaExceededError):
        files.upload("big", 1001)
    assert files.ledger.usage() == before
    assert not (home / "big").exists()
    assert list(files.tree.partials()) == []
    assert limited.runtime.transfers == 0
    put(files, "big", b"b" * 1000)  # the claim was released
    assert_in_step(files, home)


def test_replacing_a_file_frees_its_bytes(limited: Services, home: Path) -> None:
    files = session(limited)
    put(files, "a", b"1" * 700)
    with pytest.raises(QuotaExceededError):
        files.upload("a", 400)  # the new bytes must fit before the old ones go
    put(files, "a", b"2" * 300)
    assert files.ledger.usage() == Usage(300, 0, 1, 0)
    assert (home / "a").read_bytes() == b"2" * 300
    assert_in_step(files, home)


# --- entries --------------------------------------------------------------------------------


@pytest.fixture
def three_files(build: Build) -> Services:
    return build(users=user_fields(alice={"max_files": 3}))


def test_max_files_enforced_by_upload_mkdir_and_mkdir_p(three_files: Services, home: Path) -> None:
    files = session(three_files)
    put(files, "a", b"a")
    put(files, "b", b"b")
    files.mkdir("d")
    for call in (
        lambda: files.upload("c", 1),
        lambda: files.upload("d/c", 0),
        lambda: files.mkdir("e"),
        lambda: files.mkdir("x/y", parents=True),
    ):
        with pytest.raises(QuotaExceededError) as info:
            call()
        assert info.value.code == 413
        assert info.value.data["max_files"] == 3
    assert sorted(os.listdir(home)) == sorted([RESERVED, "a", "b", "d"])
    assert files.ledger.usage() == Usage(2, 0, 3, 0)

    put(files, "a", b"replaced")  # replacing needs no new entry
    assert files.ledger.usage() == Usage(9, 0, 3, 0)

    files.rm("a")
    with pytest.raises(QuotaExceededError):
        files.mkdir("x/y/z", parents=True)
    assert (home / "x").is_dir() and not (home / "x" / "y").exists()  # nothing past the limit
    assert files.ledger.usage() == Usage(1, 0, 3, 0)
    assert files.mkdir("x", parents=True) == "/x"  # existing: no new entry needed
    assert_in_step(files, home)


def test_concurrent_mkdirs_cannot_pass_max_files(three_files: Services, home: Path) -> None:
    sessions = [session(three_files) for _ in range(8)]
    barrier = threading.Barrier(8)
    outcomes: list[str] = []
    lock = threading.Lock()

    def worker(n: int) -> None:
        barrier.wait(10)
        try:
            sessions[n].mkdir(f"p{n}/q", parents=True)
            outcome = "made"
        except QuotaExceededError:
            outcome = "refused"
        with lock:
            outcomes.append(outcome)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
        assert not t.is_alive()
    assert len(outcomes) == 8 and outcomes.count("made") <= 1
    assert sessions[0].ledger.usage().entries <= 3
    assert_in_step(sessions[0], home)


def test_mkdir_p_through_existing_folders_counts_only_new_ones(three_files: Services) -> None:
    files = session(three_files)
    files.mkdir("a/b", parents=True)
    assert files.mkdir("a/b/c", parents=True) == "/a/b/c"
    assert files.ledger.usage().entries == 3
    assert files.mkdir("/", parents=True) == "/"
    with pytest.raises(ConflictError):
        files.mkdir("/")
    with pytest.raises(ConflictError):
        files.mkdir("a")


# --- removals give back ---------------------------------------------------------------------


def test_rm_rmdir_and_rm_r_give_back_bytes_and_entries(build: Build, home: Path) -> None:
    files = session(build(users=user_fields(alice={"quota": 1000, "max_files": 6})))
    files.mkdir("d/e", parents=True)
    put(files, "d/one", b"1" * 100)
    put(files, "d/e/two", b"2" * 200)
    put(files, "top", b"3" * 50)
    files.mkdir("empty")
    assert files.ledger.usage() == Usage(350, 0, 6, 0)

    assert files.rm("top") == "removed /top"
    assert files.ledger.usage() == Usage(300, 0, 5, 0)
    assert files.rmdir("empty") == "/empty"
    assert files.ledger.usage() == Usage(300, 0, 4, 0)
    with pytest.raises(ConflictError):
        files.rm("d")
    with pytest.raises(ConflictError):
        files.rmdir("d/e/two")
    assert files.rm("d", recursive=True) == "removed /d (4 entries)"
    assert files.ledger.usage() == Usage(0, 0, 0, 0)
    with pytest.raises(NotFoundError):
        files.rm("d")
    assert_in_step(files, home)


def test_rmdir_of_the_cwd_moves_up(limited: Services) -> None:
    files = session(limited)
    files.mkdir("a/b", parents=True)
    files.cd("a/b")
    files.rmdir("/a/b")
    assert files.pwd() == "/a"


def test_rm_of_an_interrupted_upload_gives_its_bytes_back(limited: Services, home: Path) -> None:
    files = session(limited)
    up = files.upload("half", 100)
    up.write(memoryview(b"h" * 40))
    up.abort()
    assert files.ledger.usage() == Usage(40, 0, 0, 0)
    assert files.rm("half") == "removed the interrupted upload of /half"
    assert files.ledger.usage() == Usage(0, 0, 0, 0)
    assert list(files.tree.partials()) == []
    with pytest.raises(NotFoundError):
        files.rm("half")


# --- mv ---------------------------------------------------------------------------------------


def test_mv_top_level_name_to_root_is_a_noop(limited: Services, home: Path) -> None:
    files = session(limited)
    files.mkdir("up")
    put(files, "up/f", b"f")
    put(files, "file", b"x")
    assert files.mv("up", "/") == "/up"
    assert files.mv("file", "/") == "/file"
    assert files.mv("/up/f", "/up") == "/up/f"
    assert (home / "up" / "f").read_bytes() == b"f" and (home / "file").is_file()
    assert files.ledger.usage() == Usage(2, 0, 3, 0)


def test_mv_into_a_folder(limited: Services, home: Path) -> None:
    files = session(limited)
    files.mkdir("dir")
    files.mkdir("sub")
    put(files, "a.txt", b"a")
    assert files.mv("a.txt", "dir") == "/dir/a.txt"
    assert files.mv("sub", "/dir/") == "/dir/sub"
    files.cd("dir")
    assert files.mv("a.txt", "..") == "/a.txt"
    assert sorted(os.listdir(home / "dir")) == ["sub"]
    assert (home / "a.txt").read_bytes() == b"a"
    assert_in_step(files, home)


def test_mv_replacing_a_file_gives_back(limited: Services, home: Path) -> None:
    files = session(limited)
    put(files, "old", b"o" * 300)
    put(files, "new", b"n" * 100)
    assert files.mv("new", "old") == "/old"
    assert files.ledger.usage() == Usage(100, 0, 1, 0)
    assert (home / "old").read_bytes() == b"n" * 100
    assert_in_step(files, home)


def test_mv_refusals(limited: Services, home: Path) -> None:
    files = session(limited)
    files.mkdir("a/b", parents=True)
    for src, dst in [("a", "a/b"), ("a", "a"), ("a", "a/b/c")]:
        with pytest.raises(ConflictError, match="into itself"):
            files.mv(src, dst)
    with pytest.raises(PermissionDeniedError):
        files.mv("/", "a")
    with pytest.raises(NotFoundError):
        files.mv("missing", "a")
    with pytest.raises(NotFoundError):
        files.mv("a", "missing/x")
    assert (home / "a" / "b").is_dir()
    assert files.ledger.usage().entries == 2


# --- the ledger and the disk agree ------------------------------------------------------------


def test_recount_after_uploads_agrees_with_the_ledger(limited: Services, home: Path) -> None:
    """A recount must not see the server's own bookkeeping (``.ftpd/partial`` and the
    partials in it) as the user's files: else max_files shrinks after every upload."""
    files = session(limited)
    put(files, "a", b"a" * 10)
    up = files.upload("b", 100)
    up.write(memoryview(b"b" * 30))
    up.abort()
    before = files.ledger.usage()
    assert before == Usage(40, 0, 1, 0)
    assert files.ledger.recount() is True
    assert files.ledger.usage() == before


@pytest.mark.parametrize("first", ["put", "mkdir"])
def test_first_upload_of_a_fresh_user_fits_max_files(build: Build, home: Path, first: str) -> None:
    """A new user with max_files=2 holds two files, whatever the first command was: the
    ledger's first count must not include the server's own ``.ftpd/partial`` folder."""
    services = build(users=user_fields(alice={"max_files": 2}))
    files = session(services, count_now=False)
    if first == "mkdir":
        files.mkdir("d")
    else:
        put(files, "a", b"a")
    put(files, "b", b"b")
    assert files.ledger.usage().entries == 2
    assert_in_step(files, home)
