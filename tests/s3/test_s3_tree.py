"""The Tree contract on a real SeaweedFS: ``S3Tree`` does what ``LocalTree`` does on disk.

These mirror tests/pure/test_storage_local.py where an object store can mean the same
thing (no links exist here), checking the bucket itself with a separate client.
"""

from __future__ import annotations

import hashlib
import io
import os
import threading
from concurrent.futures import Executor, Future
from typing import Any

import pytest

from ftpd.errors import (
    BadRequestError,
    ConflictError,
    NotFoundError,
    PathEscapeError,
    PermissionDeniedError,
    UnavailableError,
)
from ftpd.storage.base import PARTIAL_PREFIX, RESERVED, Removed
from ftpd.storage.s3 import S3Storage, S3Tree
from tests.s3.conftest import BUCKET, Weed, get, keys, put

MiB = 1 << 20


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


@pytest.fixture
def home(tree: S3Tree) -> str:
    """alice's prefix, holding docs/a.txt (5 bytes) and the folder docs/sub."""
    return tree.home


@pytest.fixture
def filled(weed: Weed, tree: S3Tree, home: str) -> S3Tree:
    put(weed, home + "docs/")
    put(weed, home + "docs/sub/")
    put(weed, home + "docs/a.txt", b"alice")
    return tree


def store(tree: S3Tree, parts: tuple[str, ...], data: bytes, mtime: float | None = None) -> None:
    up = tree.begin_upload(parts, len(data), resume=True)
    try:
        up.write(memoryview(data))
        up.commit("md5", md5(data), mtime)
    finally:
        up.close()


class Calls:
    def __init__(self, hook: object = None) -> None:
        self.calls: list[int] = []
        self.hook = hook

    def __call__(self, n: int) -> None:
        self.calls.append(n)
        if callable(self.hook):
            self.hook(n)


# --- lookups and listings ------------------------------------------------------------


def test_lookup_files_folders_and_missing(filled: S3Tree) -> None:
    found = filled.lookup(("docs", "a.txt"))
    assert found.parts == ("docs", "a.txt")
    assert found.entry is not None and (found.entry.kind, found.entry.size) == ("file", 5)
    assert filled.lookup(("docs",)).entry.kind == "dir"  # type: ignore[union-attr]
    assert filled.lookup(()).entry.kind == "dir"  # type: ignore[union-attr]
    assert filled.lookup(("docs", "new")).entry is None
    with pytest.raises(NotFoundError):
        filled.lookup(("missing", "x"))
    with pytest.raises(ConflictError):
        filled.lookup(("docs", "a.txt", "x"))


def test_lookup_of_a_name_no_file_has_asks_the_rest_at_once(
    storage: S3Storage, filled: S3Tree, home: str
) -> None:
    """A name with no file (a new upload's target): the keys below it (a folder's marker
    among them) are listed on the pool while the session checks the folder it would be
    in; the answers are those of one question after another."""
    pool = storage.pool
    storage.pool = InlinePool()  # type: ignore[assignment]
    try:
        assert filled.lookup(("docs", "new")).entry is None
        assert storage.pool.ran == [(home + "docs/new/", 1)]  # type: ignore[attr-defined]
        assert filled.lookup(("docs", "sub")).entry.kind == "dir"  # type: ignore[union-attr]
        with pytest.raises(NotFoundError):
            filled.lookup(("missing", "x"))
        with pytest.raises(ConflictError):
            filled.lookup(("docs", "a.txt", "x"))
    finally:
        storage.pool = pool


def test_lookup_folder_implied_by_keys_below_it(weed: Weed, tree: S3Tree, home: str) -> None:
    """Keys written by another tool, with no marker: the folder exists all the same."""
    put(weed, home + "x/y/z.bin", b"zz")
    assert tree.lookup(("x",)).entry.kind == "dir"  # type: ignore[union-attr]
    assert tree.lookup(("x", "y")).entry.kind == "dir"  # type: ignore[union-attr]
    assert [e.name for e in tree.listdir(("x",))] == ["y"]
    assert tree.usage() == (2, 3, True)
    assert tree.remove(("x",), recursive=True) == Removed(2, 3)
    assert [e.name for e in tree.listdir(())] == []  # no empty folder left behind


@pytest.mark.parametrize(
    "parts",
    [
        (RESERVED,),
        (RESERVED, "partial"),
        (RESERVED, "partial", "p"),
        ("docs", PARTIAL_PREFIX + "abc"),
        (PARTIAL_PREFIX + "abc",),
    ],
)
def test_reserved_names_are_refused(filled: S3Tree, parts: tuple[str, ...]) -> None:
    for call in (
        lambda: filled.lookup(parts),
        lambda: list(filled.listdir(parts)),
        lambda: filled.open_read(parts),
        lambda: filled.begin_upload(parts, 1, True),
        lambda: filled.mkdir(parts, True, Calls()),
        lambda: filled.remove(parts, True),
        lambda: filled.rename(("docs",), parts),
    ):
        with pytest.raises(PathEscapeError):
            call()


def test_reserved_name_below_the_top_is_an_ordinary_name(filled: S3Tree) -> None:
    filled.mkdir(("docs", RESERVED), False, Calls())
    assert filled.lookup(("docs", RESERVED)).entry.kind == "dir"  # type: ignore[union-attr]
    assert filled.lookup((RESERVED + "x",)).entry is None


def test_listdir_sorted_with_reserved_hidden(weed: Weed, filled: S3Tree, home: str) -> None:
    put(weed, home + "docs/" + PARTIAL_PREFIX + "abc.5", b"12345")
    put(weed, home + "docs/b.bin", b"b" * 7)
    put(weed, home + "docs/a.txt.old", b"o")
    store(filled, ("zeta",), b"z")
    up = filled.begin_upload(("docs", "half"), 100, True)  # an unfinished upload
    up.write(memoryview(b"h" * 10))
    up.close()
    top = [(e.name, e.kind) for e in filled.listdir(())]
    assert top == [("docs", "dir"), ("zeta", "file")]
    docs = [(e.name, e.kind, e.size) for e in filled.listdir(("docs",))]
    assert docs == [
        ("a.txt", "file", 5),
        ("a.txt.old", "file", 1),
        ("b.bin", "file", 7),
        ("sub", "dir", 0),
    ]
    with pytest.raises(ConflictError):
        list(filled.listdir(("docs", "a.txt")))
    with pytest.raises(NotFoundError):
        list(filled.listdir(("missing",)))


def test_listdir_of_more_than_one_page(weed: Weed, tree: S3Tree, home: str) -> None:
    names = [f"f{i:04d}" for i in range(1005)]  # a listing page holds 1,000
    for start in range(0, len(names), 100):
        batch = names[start : start + 100]
        threads = [threading.Thread(target=put, args=(weed, home + n, b"x")) for n in batch]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    assert [e.name for e in tree.listdir(())] == names


def test_storage_hands_out_trees_and_lists_roots(storage: S3Storage, weed: Weed) -> None:
    carol = storage.tree("carol")
    carol.ensure()
    carol.ensure()  # twice is fine
    storage.tree("alice").ensure()
    assert list(storage.roots()) == ["alice", "carol"]
    assert keys(weed, storage.prefix + "carol/") == [storage.prefix + "carol/"]


# --- mkdir ------------------------------------------------------------------------------


@pytest.mark.parametrize("depth", [1, 2, 5])
def test_mkdir_parents_counts_each_level(weed: Weed, tree: S3Tree, depth: int) -> None:
    parts = tuple(f"n{i}" for i in range(depth))
    calls = Calls()
    assert tree.mkdir(parts, True, calls) == depth
    assert calls.calls == [1] * depth
    assert tree.home + "/".join(parts) + "/" in keys(weed, tree.home)
    again = Calls()
    assert tree.mkdir(parts, True, again) == 0 and again.calls == []


def test_mkdir_single(filled: S3Tree) -> None:
    calls = Calls()
    assert filled.mkdir(("docs", "sub", "x", "y"), True, calls) == 2
    calls = Calls()
    assert filled.mkdir(("docs", "new"), False, calls) == 1 and calls.calls == [1]
    with pytest.raises(ConflictError):
        filled.mkdir(("docs", "new"), False, calls)
    with pytest.raises(ConflictError):
        filled.mkdir(("docs", "a.txt"), False, calls)
    with pytest.raises(NotFoundError):
        filled.mkdir(("missing", "new"), False, calls)
    with pytest.raises(ConflictError):
        filled.mkdir(("docs", "a.txt", "x"), True, calls)
    with pytest.raises(ConflictError):
        filled.mkdir(("docs", "a.txt"), True, calls)
    assert calls.calls == [1]


def test_mkdir_refused_by_before_create_makes_nothing(tree: S3Tree) -> None:
    class Full(Exception):
        pass

    def refuse_third(n: int) -> None:
        if len(calls.calls) == 3:
            raise Full

    calls = Calls(refuse_third)
    with pytest.raises(Full):
        tree.mkdir(("p", "q", "r", "s"), True, calls)
    assert calls.calls == [1, 1, 1]
    assert tree.lookup(("p", "q")).entry is not None
    assert tree.lookup(("p", "q", "r")).entry is None


def test_mkdir_made_meanwhile_by_someone_else_gives_back(weed: Weed, tree: S3Tree) -> None:
    """The marker is a conditional PUT: one made by another node is not counted twice."""

    def race(n: int) -> None:
        if n == 1 and calls.calls.count(1) == 2:
            put(weed, tree.home + "p/q/")  # another session wins the race

    calls = Calls(race)
    assert tree.mkdir(("p", "q", "r"), True, calls) == 2
    assert calls.calls == [1, 1, -1, 1]
    assert tree.lookup(("p", "q", "r")).entry is not None


# --- remove, rmdir, rename -------------------------------------------------------------


def test_remove_file_and_folder(weed: Weed, filled: S3Tree, home: str) -> None:
    assert filled.remove(("docs", "a.txt")) == Removed(5, 1)
    with pytest.raises(ConflictError):
        filled.remove(("docs",))
    with pytest.raises(NotFoundError):
        filled.remove(("docs", "missing"))
    with pytest.raises(PermissionDeniedError):
        filled.remove((), recursive=True)
    put(weed, home + "docs/sub/f", b"12345678")
    put(weed, home + "docs/sub/implied/g", b"123")  # a folder with no marker
    heard: list[Removed] = []
    removed = filled.remove(("docs", "sub"), recursive=True, on_removed=heard.append)
    assert removed == Removed(11, 4)  # sub, f, implied, g
    assert sum(r.nbytes for r in heard) == 11 and sum(r.entries for r in heard) == 4
    assert keys(weed, home + "docs/") == [home + "docs/"]


def test_rm_r_of_a_big_tree_by_listing(weed: Weed, tree: S3Tree, home: str) -> None:
    tree.mkdir(("big", "d1", "d2"), True, Calls())
    names = [f"big/d1/f{i:04d}" for i in range(600)] + [f"big/d1/d2/g{i:04d}" for i in range(600)]
    threads = [threading.Thread(target=put, args=(weed, home + n, b"ab")) for n in names]
    for start in range(0, len(threads), 100):
        for t in threads[start : start + 100]:
            t.start()
        for t in threads[start : start + 100]:
            t.join(30)
    before = tree.usage()
    assert before == (2 * 1200, 1200 + 3, True)
    heard: list[Removed] = []
    assert tree.remove(("big",), True, heard.append) == Removed(2400, 1203)
    assert len(heard) >= 2  # told as it went
    assert tree.usage() == (0, 0, True)
    assert keys(weed, home) == [home]


def test_rmdir(filled: S3Tree) -> None:
    with pytest.raises(ConflictError, match="not empty"):
        filled.rmdir(("docs",))
    with pytest.raises(ConflictError):
        filled.rmdir(("docs", "a.txt"))
    filled.rmdir(("docs", "sub"))
    assert filled.lookup(("docs", "sub")).entry is None
    with pytest.raises(NotFoundError):
        filled.rmdir(("docs", "sub"))
    with pytest.raises(PermissionDeniedError):
        filled.rmdir(())


def test_rename_file(weed: Weed, filled: S3Tree, home: str) -> None:
    store(filled, ("big",), b"x" * 100, mtime=1_000_000.5)
    assert filled.rename(("big",), ("docs", "a.txt")) == Removed(5, 1)
    assert get(weed, home + "docs/a.txt") == b"x" * 100
    assert filled.rename(("docs", "a.txt"), ("fresh",)) == Removed()
    assert filled.rename(("fresh",), ("fresh",)) == Removed()
    found = filled.lookup(("fresh",)).entry
    assert found is not None and found.mtime == 1_000_000.5  # the metadata moved along
    with filled.open_read(("fresh",)) as reader:
        assert reader.recorded_digest("md5") == md5(b"x" * 100)
    assert home + "big" not in keys(weed, home)
    with pytest.raises(NotFoundError):
        filled.rename(("missing",), ("x",))
    with pytest.raises(NotFoundError):
        filled.rename(("fresh",), ("missing", "x"))
    with pytest.raises(ConflictError):
        filled.rename(("fresh",), ("docs",))
    with pytest.raises(PermissionDeniedError):
        filled.rename(("docs",), ())
    with pytest.raises(PermissionDeniedError):
        filled.rename((), ("x",))


def test_rename_folder_with_several_files(weed: Weed, tree: S3Tree, home: str) -> None:
    tree.mkdir(("src", "inner", "empty"), True, Calls())
    files = {("src", f"f{i}"): bytes([i]) * (i + 1) for i in range(5)}
    files[("src", "inner", "deep")] = b"deep"
    for parts, data in files.items():
        store(tree, parts, data, mtime=1_234_567.0)
    before = tree.usage()
    assert tree.rename(("src",), ("dst",)) == Removed()
    assert tree.usage() == before
    assert not [k for k in keys(weed, home) if k.startswith(home + "src")]
    assert "src" not in [e.name for e in tree.listdir(())]
    for parts, data in files.items():
        key = home + "/".join(("dst", *parts[1:]))
        assert get(weed, key) == data
        assert tree.lookup(("dst", *parts[1:])).entry.mtime == 1_234_567.0  # type: ignore[union-attr]
    assert tree.lookup(("dst", "inner", "empty")).entry.kind == "dir"  # type: ignore[union-attr]
    tree.mkdir(("empty",), False, Calls())
    assert tree.rename(("dst",), ("empty",)) == Removed(0, 1)  # an empty folder replaced
    assert tree.lookup(("empty", "inner", "deep")).entry is not None
    tree.mkdir(("full", "x"), True, Calls())
    with pytest.raises(ConflictError, match="not empty"):
        tree.rename(("empty",), ("full",))


def test_rename_folder_copies_before_it_deletes(
    weed: Weed, tree: S3Tree, home: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A node dying half-way (here: a copy that fails) leaves every source in place."""
    tree.mkdir(("src",), False, Calls())
    for i in range(6):
        store(tree, ("src", f"f{i}"), b"%d" % i)
    real_copy = tree.store.copy

    def flaky(src: str, dst: str, size: int, metadata: object = None, etag: object = None) -> None:
        if src.endswith("f4"):
            raise UnavailableError("the object store is unreachable")
        real_copy(src, dst, size)

    monkeypatch.setattr(tree.store, "copy", flaky)
    with pytest.raises(UnavailableError):
        tree.rename(("src",), ("dst",))
    for i in range(6):
        assert get(weed, home + f"src/f{i}") == b"%d" % i


@pytest.mark.parametrize("dst", [("docs", "sub", "x"), ("docs", "x")])
def test_rename_dir_into_itself_is_conflict(filled: S3Tree, dst: tuple[str, ...]) -> None:
    with pytest.raises(ConflictError, match="into itself"):
        filled.rename(("docs",), dst)
    assert filled.lookup(("docs", "a.txt")).entry is not None


def test_set_mtime_of_files_and_folders(filled: S3Tree) -> None:
    filled.set_mtime(("docs", "a.txt"), 1_000_000.0)
    assert filled.lookup(("docs", "a.txt")).entry.mtime == 1_000_000.0  # type: ignore[union-attr]
    with filled.open_read(("docs", "a.txt")) as reader:
        assert reader.read() == b"alice"
    # A folder's marker is written again with the mtime in its metadata; SeaweedFS keeps
    # no metadata on folders, so there the folder's mtime is when that happened.
    filled.set_mtime(("docs",), 2_000_000.0)
    filled.set_mtime((), 3_000_000.0)
    assert filled.lookup(("docs", "a.txt")).entry is not None
    with pytest.raises(NotFoundError):
        filled.set_mtime(("missing",), 1.0)


# --- usage ------------------------------------------------------------------------------


def test_usage_counts_bytes_and_entries(weed: Weed, tree: S3Tree, home: str) -> None:
    for p, size in {"a": 10, "d/b": 20, "d/e/f/c": 30, "d/empty": 0, "文件/😀": 5}.items():
        put(weed, home + p, b"x" * size)
    put(weed, home + "emptydir/")
    # a, d, d/b, d/e, d/e/f, d/e/f/c, d/empty, 文件, 文件/😀, emptydir
    assert tree.usage() == (65, 10, True)
    assert S3Tree(tree.storage, "nobody").usage() == (0, 0, True)


def test_usage_counts_partials_as_bytes_not_entries(filled: S3Tree) -> None:
    assert filled.usage() == (5, 3, True)
    up = filled.begin_upload(("docs", "new"), 100, resume=True)
    up.write(memoryview(b"x" * 30))
    up.close()
    assert filled.usage() == (5 + 30, 3, True)


def test_remove_and_usage_agree(weed: Weed, filled: S3Tree, home: str) -> None:
    put(weed, home + "docs/sub/f", b"f" * 6)
    put(weed, home + "docs/sub/deeper/g", b"g" * 3)
    before = filled.usage()
    removed = filled.remove(("docs",), recursive=True)
    after = filled.usage()
    assert (before[0] - after[0], before[1] - after[1]) == (removed.nbytes, removed.entries)


# --- uploads ------------------------------------------------------------------------------


def partial_keys(weed: Weed, tree: S3Tree) -> list[str]:
    return keys(weed, tree.home + RESERVED + "/")


def test_upload_installs_whole_with_mtime_and_digest(weed: Weed, filled: S3Tree) -> None:
    data = b"hello world" * 1000
    up = filled.begin_upload(("docs", "new.bin"), len(data), resume=True)
    try:
        assert (up.parts, up.offset, up.freed, up.target_exists) == (
            ("docs", "new.bin"),
            0,
            0,
            False,
        )
        up.write(memoryview(data[:5000]))
        assert filled.lookup(("docs", "new.bin")).entry is None  # nothing under the name
        up.write(memoryview(data[5000:]))
        assert up.commit("md5", md5(data), 1_600_000_000.25) == 0
    finally:
        up.close()
    assert get(weed, filled.home + "docs/new.bin") == data
    entry = filled.lookup(("docs", "new.bin")).entry
    assert entry is not None and entry.mtime == 1_600_000_000.25
    assert partial_keys(weed, filled) == [] and list(filled.partials()) == []
    with filled.open_read(("docs", "new.bin")) as reader:
        assert reader.recorded_digest("md5") == md5(data)
        assert reader.digest("md5") == md5(data)
        assert reader.recorded_digest("sha1") is None
        assert reader.digest("sha1") == hashlib.sha1(data).hexdigest()  # computed
        assert reader.read() == data


def test_upload_replacing_returns_old_size(weed: Weed, filled: S3Tree) -> None:
    up = filled.begin_upload(("docs", "a.txt"), 3, resume=False)
    try:
        assert up.target_exists and up.target_size == 5
        up.write(memoryview(b"new"))
        assert up.commit("md5", md5(b"new"), None) == 5
    finally:
        up.close()
    assert get(weed, filled.home + "docs/a.txt") == b"new"


@pytest.mark.parametrize("parts", [("docs",), (), ("docs", "sub")])
def test_upload_onto_a_folder_is_conflict(filled: S3Tree, parts: tuple[str, ...]) -> None:
    with pytest.raises(ConflictError):
        filled.begin_upload(parts, 1, True)


def test_upload_into_a_missing_folder(filled: S3Tree) -> None:
    with pytest.raises(NotFoundError):
        filled.begin_upload(("missing", "x"), 1, True)
    with pytest.raises(ConflictError):
        filled.begin_upload(("docs", "a.txt", "x"), 1, True)


def test_upload_refused_before_writing_leaves_nothing(weed: Weed, filled: S3Tree) -> None:
    up = filled.begin_upload(("docs", "x"), 10, resume=True)
    up.close()
    assert partial_keys(weed, filled) == []
    up = filled.begin_upload(("docs", "x"), 10, resume=True)
    assert up.discard() == 0
    up.close()
    assert partial_keys(weed, filled) == [] and filled.lookup(("docs", "x")).entry is None


def test_upload_resume_keeps_same_size_drops_others(weed: Weed, filled: S3Tree) -> None:
    up = filled.begin_upload(("docs", "f"), 10, resume=True)
    up.write(memoryview(b"0123"))
    up.close()  # the buffer is kept as a (short) part
    [info] = filled.partials()
    assert (info.parts, info.held, info.expected) == (("docs", "f"), 4, 10)

    up = filled.begin_upload(("docs", "f"), 10, resume=True)
    try:
        assert (up.offset, up.freed) == (4, 0)
        hasher = hashlib.md5()
        hasher = up.read_prefix(hasher) or hasher
        assert hasher.hexdigest() == md5(b"0123")
        up.write(memoryview(b"45"))
    finally:
        up.close()

    up = filled.begin_upload(("docs", "f"), 20, resume=True)  # another source: dropped
    try:
        assert (up.offset, up.freed) == (0, 6)
        up.write(memoryview(b"abc"))
    finally:
        up.close()
    assert [(p.held, p.expected) for p in filled.partials()] == [(3, 20)]

    up = filled.begin_upload(("docs", "f"), 20, resume=False)  # no resume: dropped too
    try:
        assert (up.offset, up.freed) == (0, 3)
        up.write(memoryview(b"xyz"))
        assert up.restart() == 3 and up.offset == 0
        up.write(memoryview(b"k" * 20))
        up.commit("md5", md5(b"k" * 20), None)
    finally:
        up.close()
    assert get(weed, filled.home + "docs/f") == b"k" * 20
    assert partial_keys(weed, filled) == []


def test_upload_partial_larger_than_declared_is_dropped(filled: S3Tree) -> None:
    up = filled.begin_upload(("g",), 4, resume=True)
    up.write(memoryview(b"toolong"))
    up.close()
    up = filled.begin_upload(("g",), 4, resume=True)
    try:
        assert (up.offset, up.freed) == (0, 7)
    finally:
        up.close()


def test_discard_partials(filled: S3Tree) -> None:
    for size in (10, 20):
        up = filled.begin_upload(("docs", "h"), size, resume=True)
        up.write(memoryview(b"abc"))
        up.close()
    assert len(list(filled.partials())) == 1  # the 20 replaced the 10
    assert filled.discard_partials(("docs", "h")) == Removed(3, 1)
    assert filled.discard_partials(("docs", "h")) == Removed()
    assert filled.discard_partials(("missing", "h")) == Removed()


def test_remove_partial_and_stream_partials(filled: S3Tree) -> None:
    up = filled.begin_upload(("s",), None, resume=True)  # undeclared size (FTP's STOR)
    up.write(memoryview(b"stream"))
    up.close()
    assert [(p.parts, p.held, p.expected) for p in filled.partials()] == [(("s",), 6, None)]
    probe = filled.begin_upload(("s",), None, True, probe=True)
    assert probe.offset == 6
    probe.close()
    up = filled.begin_upload(("p",), 50, resume=True)
    up.write(memoryview(b"p" * 9))
    up.close()
    infos = {p.parts: p for p in filled.partials()}
    assert filled.remove_partial(infos[("p",)]) == 9
    assert filled.remove_partial(infos[("s",)]) == 6
    assert list(filled.partials()) == []
    up = filled.begin_upload(("s",), None, resume=True)
    up.write(memoryview(b"again"))
    up.close()
    assert filled.discard_partials(("s",)) == Removed(5, 1)


# --- multipart: whole or absent, resume from stored parts --------------------------------


def test_big_upload_is_whole_or_absent(weed: Weed, storage: S3Storage, tree: S3Tree) -> None:
    """While the parts are stored nothing exists under the name: no key in a listing,
    HEAD says 404; at commit the object appears whole, with its md5 in its metadata."""
    data = os.urandom(3 * 8 * MiB + 12345)
    up = tree.begin_upload(("big.bin",), len(data), resume=True)
    try:
        for start in range(0, len(data), 256 * 1024):
            up.write(memoryview(data[start : start + 256 * 1024]))
            assert keys(weed, tree.home + "big") == []
        assert tree.lookup(("big.bin",)).entry is None
        assert [e.name for e in tree.listdir(())] == []
        pending = weed.client.list_multipart_uploads(Bucket=BUCKET, Prefix=tree.home)
        assert [u["Key"] for u in pending["Uploads"]] == [tree.home + "big.bin"]
        up.commit("md5", md5(data), 1_600_000_000.5)
    finally:
        up.close()
    head = weed.client.head_object(Bucket=BUCKET, Key=tree.home + "big.bin")
    assert head["ContentLength"] == len(data)
    tags = weed.client.get_object_tagging(Bucket=BUCKET, Key=tree.home + "big.bin")["TagSet"]
    assert {t["Key"]: t["Value"] for t in tags}["ftpd-md5"] == md5(data)
    with tree.open_read(("big.bin",)) as reader:
        assert reader.recorded_digest("md5") == md5(data)  # no re-reading
        assert reader.mtime == 1_600_000_000.5
    assert tree.lookup(("big.bin",)).entry.mtime == 1_600_000_000.5  # type: ignore[union-attr]
    assert md5(get(weed, tree.home + "big.bin")) == md5(data)
    assert partial_keys(weed, tree) == []
    assert (
        weed.client.list_multipart_uploads(Bucket=BUCKET, Prefix=tree.home).get("Uploads", []) == []
    )


def test_resume_after_interruption_from_the_stored_parts(
    weed: Weed, storage: S3Storage, tree: S3Tree
) -> None:
    """Interrupted at 2.5 parts: 2 parts are stored by the time the node goes away
    (its buffer never makes it); another tree (another node) resumes from byte
    16 MiB with the prefix digest checked, and the whole-file md5 matches."""
    data = os.urandom(5 * 8 * MiB + 77)
    cut = 2 * 8 * MiB + 4 * MiB
    up = tree.begin_upload(("r.bin",), len(data), resume=True)
    up.write(memoryview(data[:cut]))
    up._settle(0)  # the parts in flight are stored; then the node dies (no close)
    up._buf = bytearray()

    other = S3Storage(
        weed.endpoint, BUCKET, storage.prefix, "us-east-1", *_keys(), read_timeout_s=30
    )
    try:
        again = other.tree("alice").begin_upload(("r.bin",), len(data), resume=True)
        try:
            assert again.offset == 2 * 8 * MiB
            hasher = hashlib.md5()
            hasher = again.read_prefix(hasher) or hasher
            assert hasher.hexdigest() == md5(data[: again.offset])
            again.write(memoryview(data[again.offset :]))
            hasher.update(data[again.offset :])
            assert hasher.hexdigest() == md5(data)
            again.commit("md5", hasher.hexdigest(), None)
        finally:
            again.close()
    finally:
        other.close()
    assert md5(get(weed, tree.home + "r.bin")) == md5(data)
    assert partial_keys(weed, tree) == []


def test_dropped_connection_keeps_its_buffer_as_a_tail(weed: Weed, tree: S3Tree) -> None:
    """A session that ends (abort) stores its buffer as a tail object: a resume loses
    nothing, and the tail is re-read and extended, so every part but the last stays
    >= 5 MiB."""
    data = os.urandom(8 * MiB + 3 * MiB + 5)
    up = tree.begin_upload(("s.bin",), len(data), resume=True)
    up.write(memoryview(data[: 8 * MiB + 2 * MiB]))
    up.close()
    up = tree.begin_upload(("s.bin",), len(data), resume=True)
    try:
        assert up.offset == 10 * MiB
        hasher = hashlib.md5()
        hasher = up.read_prefix(hasher) or hasher
        assert hasher.hexdigest() == md5(data[: 10 * MiB])
        up.write(memoryview(data[10 * MiB :]))
        up.commit("md5", md5(data), None)
    finally:
        up.close()
    assert get(weed, tree.home + "s.bin") == data


def test_changed_source_restarts(weed: Weed, tree: S3Tree) -> None:
    """The prefix digest differs from the client's: restart drops the parts held."""
    old, new = os.urandom(9 * MiB), os.urandom(9 * MiB)
    up = tree.begin_upload(("c.bin",), len(old), resume=True)
    up.write(memoryview(old[: 8 * MiB + 100]))
    up.close()
    up = tree.begin_upload(("c.bin",), len(new), resume=True)
    try:
        hasher = hashlib.md5()
        hasher = up.read_prefix(hasher) or hasher
        assert hasher.hexdigest() != md5(new[: up.offset])
        assert up.restart() == 8 * MiB + 100 and up.offset == 0
        assert partial_keys(weed, tree) == []
        up.write(memoryview(new))
        up.commit("md5", md5(new), None)
    finally:
        up.close()
    assert get(weed, tree.home + "c.bin") == new


def test_truncate_and_seed_place_a_resume(weed: Weed, tree: S3Tree) -> None:
    """FTP's REST at a shorter offset (truncate) and APPE onto a finished file (seed)."""
    data = os.urandom(20 * MiB)
    up = tree.begin_upload(("t.bin",), None, resume=True)
    up.write(memoryview(data[: 17 * MiB]))
    with pytest.raises(BadRequestError):  # inside a stored part: it cannot be cut
        up.truncate(9 * MiB + 5)
    assert up.truncate(16 * MiB + 5) == MiB - 5
    up.write(memoryview(data[16 * MiB + 5 :]))
    up.commit("md5", md5(data), None)
    up.close()
    assert get(weed, tree.home + "t.bin") == data

    up = tree.begin_upload(("t.bin",), None, resume=True)
    try:
        assert up.restart() == 0
        assert up.seed(len(data)) == len(data)  # copied inside the store
        up.write(memoryview(b"tail"))
        up.commit("md5", md5(data + b"tail"), None)
    finally:
        up.close()
    assert md5(get(weed, tree.home + "t.bin")) == md5(data + b"tail")
    up = tree.begin_upload(("t.bin",), None, resume=True)
    try:
        assert up.seed(3) == 3
        up.write(memoryview(b"!"))
        up.commit("md5", md5(data[:3] + b"!"), None)
    finally:
        up.close()
    assert get(weed, tree.home + "t.bin") == data[:3] + b"!"


def test_concurrent_uploads_share_one_client(weed: Weed, tree: S3Tree) -> None:
    blobs = {f"u{i}": os.urandom(9 * MiB + i) for i in range(6)}
    errors: list[BaseException] = []

    def run(name: str) -> None:
        try:
            store(tree, (name,), blobs[name])
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(n,)) for n in blobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == []
    for name, data in blobs.items():
        assert md5(get(weed, tree.home + name)) == md5(data)


def test_refused_install_keeps_the_upload_resumable(tree: S3Tree) -> None:
    """``before_install`` (FTP: is the client still there?) refusing: nothing is
    installed, and the bytes received stay held for a resume."""

    class Gone(Exception):
        pass

    def refuse() -> None:
        raise Gone

    up = tree.begin_upload(("k",), 10, resume=True)
    up.write(memoryview(b"0123456789"))
    with pytest.raises(Gone):
        up.commit("md5", md5(b"0123456789"), None, refuse)
    up.close()
    assert tree.lookup(("k",)).entry is None
    assert [(p.parts, p.held) for p in tree.partials()] == [(("k",), 10)]


def test_a_part_the_store_refuses_fails_the_upload_cleanly(
    tree: S3Tree, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ftpd.storage.s3_upload import S3Upload

    data = os.urandom(17 * MiB)
    up = tree.begin_upload(("x.bin",), len(data), resume=True)
    real = S3Upload._put_part

    def second_fails(self: S3Upload, number: int, body: bytes) -> str:
        if number == 2:
            raise UnavailableError("the object store is unreachable")
        return real(self, number, body)

    monkeypatch.setattr(S3Upload, "_put_part", second_fails)
    with pytest.raises(UnavailableError):
        for start in range(0, len(data), MiB):
            up.write(memoryview(data[start : start + MiB]))
        up.commit("md5", md5(data), None)
    up.close()  # never raises: the caller releases its claim next
    assert tree.lookup(("x.bin",)).entry is None
    monkeypatch.setattr(S3Upload, "_put_part", real)
    again = tree.begin_upload(("x.bin",), len(data), resume=True)
    try:
        assert again.offset == 8 * MiB  # what was stored before the gap
        again.write(memoryview(data[again.offset :]))
        again.commit("md5", md5(data), None)
    finally:
        again.close()
    with tree.open_read(("x.bin",)) as reader:
        assert reader.digest("md5") == md5(data)


# --- downloads ------------------------------------------------------------------------


def test_reader_reads_and_seeks_like_a_file(filled: S3Tree) -> None:
    with filled.open_read(("docs", "a.txt")) as reader:
        with pytest.raises(io.UnsupportedOperation):
            reader.fileno()
        buf = bytearray(3)
        assert reader.readinto(buf) == 3 and bytes(buf) == b"ali"
        assert reader.read() == b"ce"
        assert reader.seek(1) == 1 and reader.read(2) == b"li"
        assert reader.seek(1, os.SEEK_CUR) == 4 and reader.read() == b"e"
        assert reader.seek(-2, os.SEEK_END) == 3 and reader.read() == b"ce"
        assert reader.seek(0, os.SEEK_END) == 5 and reader.read() == b""
    for parts in [("docs",), ()]:
        with pytest.raises(ConflictError):
            filled.open_read(parts)
    with pytest.raises(NotFoundError):
        filled.open_read(("missing",))


def test_download_streams_with_ranged_gets_in_flat_memory(weed: Weed, tree: S3Tree) -> None:
    """64 MiB read through the reader the way socket.sendfile falls back (8 KiB reads
    after a seek): ranged GETs, and the peak of Python's allocations stays far under
    what the file is."""
    import tracemalloc

    block = os.urandom(MiB)
    up = tree.begin_upload(("huge.bin",), 64 * MiB, resume=True)
    try:
        for _ in range(64):
            up.write(memoryview(block))
        up.commit("md5", md5(block * 64), None)
    finally:
        up.close()
    ranges: list[str] = []
    reader = tree.open_read(("huge.bin",))
    real_open = reader._open

    def spy(start: int, end: int) -> object:
        ranges.append(f"{start}-{end - 1}")
        return real_open(start, end)

    reader._open = spy  # type: ignore[method-assign]
    hasher = hashlib.md5()
    tracemalloc.start()
    try:
        reader.seek(MiB)
        while chunk := reader.read(8192):
            hasher.update(chunk)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        reader.close()
    assert hasher.hexdigest() == md5((block * 64)[MiB:])
    assert peak < 4 * MiB, peak
    assert len(ranges) == 4 and ranges[0] == f"{MiB}-{MiB + 16 * MiB - 1}"


def test_a_broken_download_stream_is_opened_again_where_it_broke(tree: S3Tree) -> None:
    data = os.urandom(3 * MiB)
    store(tree, ("b.bin",), data)
    reader = tree.open_read(("b.bin",))
    real_open = reader._open
    broken = []

    class Breaking:
        def __init__(self, body: object) -> None:
            self.body, self.reads = body, 0

        def read(self, n: int) -> bytes:
            self.reads += 1
            if self.reads == 2 and not broken:
                broken.append(1)
                raise ConnectionResetError("reset by peer")
            return self.body.read(n)  # type: ignore[attr-defined]

        def close(self) -> None:
            self.body.close()  # type: ignore[attr-defined]

    reader._open = lambda start, end: Breaking(real_open(start, end))  # type: ignore[method-assign]
    try:
        assert reader.read() == data and broken
    finally:
        reader.close()


def test_object_replaced_during_a_download_fails_it(weed: Weed, tree: S3Tree) -> None:
    data = os.urandom(20 * MiB)
    store(tree, ("v.bin",), data)
    with tree.open_read(("v.bin",)) as reader:
        assert reader.read(17 * MiB) == data[: 17 * MiB]  # the second window is open
        store(tree, ("v.bin",), b"other")
        reader.seek(1)
        with pytest.raises(ConflictError):
            reader.read(10)


# --- credentials and the store's failures ---------------------------------------------


def _keys() -> tuple[str, str]:
    from tests.s3.conftest import ACCESS_KEY, SECRET_KEY

    return ACCESS_KEY, SECRET_KEY


def test_wrong_credentials_give_a_clear_error(weed: Weed, prefix: str) -> None:
    bad = S3Storage(weed.endpoint, BUCKET, prefix, "us-east-1", _keys()[0], "wrong", max_attempts=1)
    try:
        with pytest.raises(UnavailableError, match="refused the server's credentials"):
            bad.prepare()
        with pytest.raises(UnavailableError, match="credentials"):
            bad.tree("alice").ensure()
        with pytest.raises(UnavailableError, match="credentials"):
            bad.tree("alice").lookup(("x",))
        assert bad.tree("alice").usage()[2] is False  # a count that could not read
    finally:
        bad.close()


def test_missing_bucket_and_unreachable_store(weed: Weed, prefix: str) -> None:
    nobucket = S3Storage(weed.endpoint, "no-such-bucket", prefix, "us-east-1", *_keys())
    try:
        with pytest.raises(UnavailableError, match="no bucket"):
            nobucket.prepare()
    finally:
        nobucket.close()
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens there
    down = S3Storage(
        f"http://127.0.0.1:{port}", BUCKET, prefix, "us-east-1", *_keys(), max_attempts=1
    )
    try:
        with pytest.raises(UnavailableError, match="unreachable"):
            down.prepare()
    finally:
        down.close()


# --- downloads: windows opened ahead --------------------------------------------------


@pytest.fixture
def small_windows(monkeypatch: pytest.MonkeyPatch) -> None:
    """Windows of 1 MiB read in 256 KiB chunks, the next opened 512 KiB before the end:
    a few MiB cross several windows."""
    from ftpd.storage import s3_objects

    monkeypatch.setattr(s3_objects, "READ_WINDOW", MiB)
    monkeypatch.setattr(s3_objects, "READ_CHUNK", 256 * 1024)
    monkeypatch.setattr(s3_objects, "READ_AHEAD_AT", 512 * 1024)


class InlinePool(Executor):
    """Runs each task as it is submitted, and keeps the ranges of the GETs it ran: which
    windows were opened ahead, without depending on when a pool thread gets to them."""

    def __init__(self) -> None:
        self.ran: list[tuple[int, int]] = []

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Future[Any]:
        self.ran.append(args[:2])
        future: Future[Any] = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as exc:  # noqa: BLE001 - handed to the reader, as a pool does
            future.set_exception(exc)
        return future


def test_download_opens_the_next_window_ahead_on_the_pool(
    weed: Weed, storage: S3Storage, tree: S3Tree, small_windows: None
) -> None:
    data = os.urandom(3 * MiB + 5)
    store(tree, ("w.bin",), data)
    sent: list[str] = []
    storage.client.meta.events.register(
        "before-parameter-build.s3.GetObject",
        lambda params, **_: sent.append(str(params.get("Range"))),
    )
    pool = storage.pool
    storage.pool = InlinePool()  # type: ignore[assignment]
    out = bytearray()
    try:
        with tree.open_read(("w.bin",)) as reader:
            buf = bytearray(100_000)  # not a divisor of any window: reads straddle them
            while n := reader.readinto(buf):
                out += buf[:n]
        ahead = storage.pool.ran  # type: ignore[attr-defined]
    finally:
        storage.pool = pool
    assert md5(bytes(out)) == md5(data)
    windows = [(s, min(s + MiB, len(data))) for s in range(0, len(data), MiB)]
    assert sent == [f"bytes={s}-{e - 1}" for s, e in windows]  # each window once, in order
    assert ahead == windows[1:]  # every window after the first was opened ahead


def test_download_seeking_away_drops_the_window_opened_ahead(
    weed: Weed, storage: S3Storage, tree: S3Tree, small_windows: None
) -> None:
    data = os.urandom(3 * MiB)
    store(tree, ("s.bin",), data)
    with tree.open_read(("s.bin",)) as reader:
        assert reader.read(MiB - 100_000) == data[: MiB - 100_000]  # the next is opened
        reader.seek(100)  # back into the first window
        assert reader.read(200) == data[100:300]
        reader.seek(2 * MiB + 7)  # past the window opened ahead
        assert reader.read() == data[2 * MiB + 7 :]
        reader.seek(MiB - 10)
        assert reader.read(20) == data[MiB - 10 : MiB + 10]


def test_download_of_an_object_replaced_meanwhile_fails_not_mixes(
    weed: Weed, tree: S3Tree, small_windows: None
) -> None:
    data = os.urandom(3 * MiB)
    store(tree, ("r.bin",), data)
    with tree.open_read(("r.bin",)) as reader:
        first = reader.read(MiB - 200_000)  # the second window is opened ahead
        store(tree, ("r.bin",), os.urandom(3 * MiB))  # replaced: another ETag
        with pytest.raises((ConflictError, UnavailableError, NotFoundError)):
            reader.read()
    assert first == data[: MiB - 200_000]


def test_download_closed_with_a_window_opened_ahead(
    weed: Weed, storage: S3Storage, tree: S3Tree, small_windows: None
) -> None:
    data = os.urandom(2 * MiB)
    store(tree, ("c.bin",), data)
    for _ in range(5):  # each close lets go of the GET opened ahead
        with tree.open_read(("c.bin",)) as reader:
            assert reader.read(MiB - 1) == data[: MiB - 1]
    with tree.open_read(("c.bin",)) as reader:
        assert reader.read() == data
