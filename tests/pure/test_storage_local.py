"""Pure tests of the local storage walk (``ftpd.storage.local``) on a real tree in tmp_path.

The tree: <tmp>/home/alice (the root), <tmp>/home/alice2 and <tmp>/home/bob (neighbours),
<tmp>/outside (a secret).  Links are followed by the walk itself: inside the root they
lead where they point, out of it (or into ``.ftpd``) they are refused.  Whole-tree walks
go by descriptor, however deep or long the tree is.
"""

from __future__ import annotations

import hashlib
import os
import resource
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from ftpd.errors import ConflictError, NotFoundError, PathEscapeError, PermissionDeniedError
from ftpd.storage.base import PARTIAL_PREFIX, RESERVED, Entry, Removed
from ftpd.storage.local import (
    _KEEP_ALL,
    MAX_LINKS,
    PARTIAL_DIR,
    LocalReader,
    LocalStorage,
    LocalTree,
)

_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC


@pytest.fixture
def base(tmp_path: Path) -> Path:
    home = tmp_path / "home"
    alice, outside = home / "alice", tmp_path / "outside"
    for d in (alice / "docs" / "sub", home / "alice2" / "private", home / "bob", outside / "dir"):
        d.mkdir(parents=True)
    (alice / "docs" / "a.txt").write_bytes(b"alice")
    (home / "bob" / "b.txt").write_bytes(b"bob")
    (outside / "secret").write_bytes(b"secret")
    return tmp_path


@pytest.fixture
def home(base: Path) -> Path:
    return base / "home" / "alice"


@pytest.fixture
def tree(home: Path) -> LocalTree:
    return LocalTree(home, fsync=False)


def _links(root: Path, links: dict[str, str | Path]) -> None:
    for name, target in links.items():
        os.symlink(str(target), root / name)


def _open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def _no_secret_path(exc: BaseException, base: Path) -> None:
    assert str(base) not in str(exc)


# --- lookups through links inside the root ----------------------------------------------


@pytest.fixture
def linked(home: Path, tree: LocalTree) -> LocalTree:
    _links(
        home,
        {
            "rel": "docs",
            "abs": home / "docs",
            "absroot": home,
            "docs/sub/up": "..",
            "docs/sub/top": "../..",
            "docs/sub/sib": "../a.txt",
            "c1": "c2",
            "c2": "docs/sub",
            "c3": home / "c1",
            "tofile": "docs/a.txt",
            "slash": "docs/",
            "dotted": "./docs/./sub",
            "viaup": "docs/sub/up/a.txt",
            "dangling": "docs/nothing",
            "dangling_deep": "nowhere/at/all",
        },
    )
    return tree


@pytest.mark.parametrize(
    ("parts", "real", "kind"),
    [
        (("rel",), ("docs",), "dir"),
        (("rel", "a.txt"), ("docs", "a.txt"), "file"),
        (("abs", "a.txt"), ("docs", "a.txt"), "file"),
        (("absroot", "docs"), ("docs",), "dir"),
        (("absroot",), (), "dir"),
        (("docs", "sub", "up", "a.txt"), ("docs", "a.txt"), "file"),
        (("docs", "sub", "up"), ("docs",), "dir"),
        (("docs", "sub", "top", "docs"), ("docs",), "dir"),
        (("docs", "sub", "top"), (), "dir"),
        (("docs", "sub", "sib"), ("docs", "a.txt"), "file"),
        (("c1",), ("docs", "sub"), "dir"),
        (("c1", "new"), ("docs", "sub", "new"), None),
        (("c3", "new"), ("docs", "sub", "new"), None),
        (("tofile",), ("docs", "a.txt"), "file"),
        (("slash",), ("docs",), "dir"),
        (("slash", "a.txt"), ("docs", "a.txt"), "file"),
        (("dotted",), ("docs", "sub"), "dir"),
        (("viaup",), ("docs", "a.txt"), "file"),
        (("dangling",), ("docs", "nothing"), None),
        (("rel", "sub", "up", "sub", "top", "rel", "a.txt"), ("docs", "a.txt"), "file"),
    ],
)
def test_lookup_follows_links_inside(
    linked: LocalTree, parts: tuple[str, ...], real: tuple[str, ...], kind: str | None
) -> None:
    found = linked.lookup(parts)
    assert found.parts == real
    assert (found.entry.kind if found.entry else None) == kind
    if kind == "file":
        assert found.entry is not None and found.entry.size == 5


def test_lookup_dangling_link_into_missing_folder_is_not_found(linked: LocalTree) -> None:
    with pytest.raises(NotFoundError):
        linked.lookup(("dangling_deep",))


@pytest.mark.parametrize(
    ("name", "kind"),
    [("rel", "dir"), ("tofile", "file"), ("c1", "dir"), ("dangling", "link"), ("absroot", "dir")],
)
def test_lookup_without_follow_is_the_link_itself(linked: LocalTree, name: str, kind: str) -> None:
    found = linked.lookup((name,), follow=False)
    assert found.parts == (name,)
    assert found.entry is not None and found.entry.name == name and found.entry.kind == kind


def test_lookup_root(tree: LocalTree) -> None:
    found = tree.lookup(())
    assert found.parts == () and found.entry is not None and found.entry.kind == "dir"


@pytest.mark.parametrize(
    "links",
    [
        {"loop1": "loop2", "loop2": "loop1"},
        {"loop1": "loop1"},
        {"loop1": "loop1/x"},
        {"loop1": "docs/../loop1"},
        {"loop1": "docs/sub/back", "docs/sub/back": "../../loop1"},
    ],
)
@pytest.mark.parametrize("tail", [(), ("x",), ("x", "y")])
def test_lookup_loops_are_refused(
    home: Path, tree: LocalTree, links: dict[str, str], tail: tuple[str, ...]
) -> None:
    _links(home, links)
    for follow in (True, False):
        if not follow and not tail:
            continue  # the final link itself is the answer
        with pytest.raises(PathEscapeError, match="too many levels"):
            tree.lookup(("loop1", *tail), follow)
    assert tree.lookup(("loop1",), follow=False).entry == Entry(
        "loop1", "link", 0, os.lstat(home / "loop1").st_mtime, 0o777
    )


def test_lookup_link_chain_limit(home: Path, tree: LocalTree) -> None:
    """MAX_LINKS hops are followed; one more is a loop."""
    _links(home, {f"l{i}": f"l{i + 1}" for i in range(MAX_LINKS - 1)})
    _links(home, {f"l{MAX_LINKS - 1}": "docs"})
    assert tree.lookup(("l0", "a.txt")).parts == ("docs", "a.txt")
    _links(home, {"m": "l0"})
    with pytest.raises(PathEscapeError, match="too many levels"):
        tree.lookup(("m", "a.txt"))


# --- links that lead out, or into the reserved area ----------------------------------------


@pytest.fixture
def escapes(base: Path, home: Path, tree: LocalTree) -> LocalTree:
    (home / RESERVED / "partial").mkdir(parents=True)
    (home / RESERVED / "partial" / "p").write_bytes(b"partial")
    _links(
        home,
        {
            "abs_out": base / "outside",
            "abs_out_file": base / "outside" / "secret",
            "abs_bob": base / "home" / "bob",
            "prefix": str(home) + "2",  # <tmp>/home/alice2: starts like the root
            "prefix_sub": str(home) + "2/private",
            "abs_dotdot": f"{home}/../bob",
            "abs_slash": "/",
            "bob": "../bob",
            "up2": "../../x",
            "docs/out": "../../bob",
            "docs/sub/out": "../../../alice2",
            "inner_out": "docs/out",
            "res": RESERVED,
            "res_abs": home / RESERVED / "partial",
            "docs/res": "../" + RESERVED,
            "docs/res_deep": "../" + RESERVED + "/partial/p",
            "self": ".",
            "partial_name": "docs/" + PARTIAL_PREFIX + "x",
        },
    )
    return tree


_OUT = [
    "abs_out",
    "abs_out_file",
    "abs_bob",
    "prefix",
    "prefix_sub",
    "abs_dotdot",
    "abs_slash",
    "bob",
    "up2",
    "docs/out",
    "docs/sub/out",
    "inner_out",
]
_RESERVED = ["res", "res_abs", "docs/res", "docs/res_deep", "partial_name"]


@pytest.mark.parametrize("link", _OUT + _RESERVED)
@pytest.mark.parametrize("tail", [(), ("x",), ("b.txt",), ("private",), ("partial", "p")])
def test_links_out_or_reserved_are_refused(
    base: Path, escapes: LocalTree, link: str, tail: tuple[str, ...]
) -> None:
    parts = (*link.split("/"), *tail)
    with pytest.raises(PathEscapeError) as info:
        escapes.lookup(parts)
    _no_secret_path(info.value, base)
    if tail:
        with pytest.raises(PathEscapeError):
            escapes.lookup(parts, follow=False)
    else:  # the link itself may be named (rm removes the link), never described
        found = escapes.lookup(parts, follow=False)
        assert found.parts == parts
        assert found.entry is not None and found.entry.kind == "link"


@pytest.mark.parametrize(
    "parts",
    [
        (RESERVED,),
        (RESERVED, "partial"),
        (RESERVED, "partial", "p"),
        ("self", RESERVED),
        ("docs", "..", RESERVED),  # ".." is not taken from the caller, but stays safe
        ("docs", PARTIAL_PREFIX + "abc"),
        (PARTIAL_PREFIX + "abc",),
    ],
)
def test_reserved_names_are_refused(escapes: LocalTree, parts: tuple[str, ...]) -> None:
    for follow in (True, False):
        with pytest.raises(PathEscapeError):
            escapes.lookup(parts, follow)


def test_reserved_name_below_the_top_is_an_ordinary_name(home: Path, tree: LocalTree) -> None:
    (home / "docs" / RESERVED).mkdir()
    assert tree.lookup(("docs", RESERVED)).entry.kind == "dir"  # type: ignore[union-attr]
    assert tree.lookup((RESERVED + "x",)).entry is None


def test_listdir_hides_reserved_and_describes_links(escapes: LocalTree, home: Path) -> None:
    (home / "docs" / (PARTIAL_PREFIX + "abc.5")).write_bytes(b"12345")
    top = {e.name: e.kind for e in escapes.listdir(())}
    assert RESERVED not in top and "partial_name" in top
    assert top["abs_out"] == top["res"] == top["bob"] == "link"  # never described
    assert top["self"] == "dir" and top["docs"] == "dir"
    docs = {e.name: e.kind for e in escapes.listdir(("docs",))}
    assert not any(n.startswith(PARTIAL_PREFIX) for n in docs)
    assert docs["a.txt"] == "file" and docs["res"] == docs["out"] == "link"
    with pytest.raises(ConflictError):
        list(escapes.listdir(("docs", "a.txt")))
    with pytest.raises(NotFoundError):
        list(escapes.listdir(("missing",)))


def test_root_given_through_a_link(base: Path, home: Path) -> None:
    """Absolute targets naming the root by its real path or by the configured one."""
    os.symlink(home, base / "alias")
    tree = LocalTree(base / "alias")
    _links(home, {"by_real": home / "docs", "by_alias": base / "alias" / "docs"})
    assert tree.lookup(("by_real", "a.txt")).parts == ("docs", "a.txt")
    assert tree.lookup(("by_alias", "a.txt")).parts == ("docs", "a.txt")
    _links(home, {"alias_out": base / "alias" / ".." / "bob"})
    with pytest.raises(PathEscapeError):
        tree.lookup(("alias_out",))


def test_storage_hands_out_trees_by_name(base: Path) -> None:
    storage = LocalStorage(base / "home", fsync=False)
    tree = storage.tree("carol")
    tree.ensure()
    tree.ensure()  # twice is fine
    assert stat.S_IMODE(os.stat(base / "home" / "carol").st_mode) == 0o700
    assert storage.tree("alice").lookup(("docs", "a.txt")).entry.size == 5  # type: ignore[union-attr]


# --- mkdir --------------------------------------------------------------------------------


class Calls:
    def __init__(self, hook: object = None) -> None:
        self.calls: list[int] = []
        self.hook = hook

    def __call__(self, n: int) -> None:
        self.calls.append(n)
        if callable(self.hook):
            self.hook(n)


@pytest.mark.parametrize("depth", [1, 2, 5, 30])
def test_mkdir_parents_counts_each_level(home: Path, tree: LocalTree, depth: int) -> None:
    parts = tuple(f"n{i}" for i in range(depth))
    calls = Calls()
    assert tree.mkdir(parts, True, calls) == depth
    assert calls.calls == [1] * depth
    assert home.joinpath(*parts).is_dir()
    again = Calls()
    assert tree.mkdir(parts, True, again) == 0 and again.calls == []


def test_mkdir_parents_partly_existing(home: Path, tree: LocalTree) -> None:
    calls = Calls()
    assert tree.mkdir(("docs", "sub", "x", "y"), True, calls) == 2
    assert calls.calls == [1, 1]


def test_mkdir_single(home: Path, tree: LocalTree) -> None:
    calls = Calls()
    assert tree.mkdir(("docs", "new"), False, calls) == 1 and calls.calls == [1]
    with pytest.raises(ConflictError):
        tree.mkdir(("docs", "new"), False, calls)
    with pytest.raises(ConflictError):
        tree.mkdir(("docs", "a.txt"), False, calls)
    with pytest.raises(NotFoundError):
        tree.mkdir(("missing", "new"), False, calls)
    with pytest.raises(ConflictError):
        tree.mkdir(("docs", "a.txt", "x"), True, calls)
    with pytest.raises(ConflictError):
        tree.mkdir(("docs", "a.txt"), True, calls)
    assert calls.calls == [1]


def test_mkdir_refused_by_before_create_makes_nothing(home: Path, tree: LocalTree) -> None:
    class Full(Exception):
        pass

    def refuse_third(n: int) -> None:
        if len(calls.calls) == 3:
            raise Full

    calls = Calls(refuse_third)
    with pytest.raises(Full):
        tree.mkdir(("p", "q", "r", "s"), True, calls)
    assert calls.calls == [1, 1, 1]
    assert (home / "p" / "q").is_dir() and not (home / "p" / "q" / "r").exists()


def test_mkdir_made_meanwhile_by_someone_else_gives_back(home: Path, tree: LocalTree) -> None:
    """``before_create(-1)`` when the folder was not made by us after all."""

    def race(n: int) -> None:
        if n == 1 and calls.calls.count(1) == 2:
            os.mkdir(home / "p" / "q")  # another session wins the race

    calls = Calls(race)
    assert tree.mkdir(("p", "q", "r"), True, calls) == 2
    assert calls.calls == [1, 1, -1, 1]
    assert (home / "p" / "q" / "r").is_dir()


def test_mkdir_failing_gives_back_and_raises(home: Path, tree: LocalTree) -> None:
    def file_in_the_way(n: int) -> None:
        if n == 1 and len(calls.calls) == 2:
            (home / "p" / "q").write_bytes(b"")

    calls = Calls(file_in_the_way)
    with pytest.raises(ConflictError):
        tree.mkdir(("p", "q", "r"), True, calls)
    assert calls.calls == [1, 1, -1]

    def parent_gone(n: int) -> None:
        if n == 1:
            os.rmdir(home / "gone")

    (home / "gone").mkdir()
    calls = Calls(parent_gone)
    with pytest.raises(FileNotFoundError):
        tree.mkdir(("gone", "x"), False, calls)
    assert calls.calls == [1, -1]


def test_mkdir_through_links(home: Path, base: Path, linked: LocalTree) -> None:
    assert linked.mkdir(("rel", "new"), False, Calls()) == 1
    assert (home / "docs" / "new").is_dir()
    assert linked.mkdir(("c1", "x", "y"), True, Calls()) == 2
    assert (home / "docs" / "sub" / "x" / "y").is_dir()
    assert linked.mkdir(("dangling",), False, Calls()) == 1  # made where the link points
    assert (home / "docs" / "nothing").is_dir()
    _links(home, {"out": base / "outside"})
    for parents in (True, False):
        with pytest.raises(PathEscapeError):
            linked.mkdir(("out", "x"), parents, Calls())
    with pytest.raises(PathEscapeError):
        linked.mkdir((RESERVED, "x"), True, Calls())
    assert sorted(os.listdir(base / "outside")) == ["dir", "secret"]
    assert not (home / RESERVED).exists()


# --- remove, rename -------------------------------------------------------------------------


def _build_by_fd(top: Path, names: list[str], payload: bytes) -> None:
    """Nested folders ``names`` under ``top``, each holding a file ``f`` of ``payload``,
    made by relative calls (the real path may be longer than PATH_MAX)."""
    fd = os.open(top, _DIR)
    try:
        for name in names:
            os.mkdir(name, dir_fd=fd)
            nxt = os.open(name, _DIR, dir_fd=fd)
            os.close(fd)
            fd = nxt
            f = os.open("f", os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644, dir_fd=fd)
            os.write(f, payload)
            os.close(f)
    finally:
        os.close(fd)


@pytest.fixture
def few_fds() -> Iterator[int]:
    """Lower the soft RLIMIT_NOFILE to 100 above the highest open descriptor."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    limit = max(int(fd) for fd in _open_fds()) + 100
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))
    try:
        yield limit
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_remove_recursive_deep_tree_with_bounded_descriptors(
    home: Path, tree: LocalTree, few_fds: int
) -> None:
    depth = 300
    assert depth > _KEEP_ALL + 100  # more folders than descriptors allowed
    _build_by_fd(home, ["d"] * depth, b"abc")
    assert tree.usage() == (5 + 3 * depth, 3 + 2 * depth, True)
    heard: list[Removed] = []
    removed = tree.remove(("d",), True, heard.append)
    assert removed == Removed(3 * depth, 2 * depth)
    assert sum(r.nbytes for r in heard) == 3 * depth
    assert sum(r.entries for r in heard) == 2 * depth
    assert sorted(os.listdir(home)) == ["docs"]


def test_remove_file_link_and_folder(base: Path, home: Path, linked: LocalTree) -> None:
    assert linked.remove(("docs", "a.txt")) == Removed(5, 1)
    assert linked.remove(("rel",)) == Removed(0, 1)  # the link, not its folder
    assert (home / "docs").is_dir()
    _links(home, {"out": base / "outside"})
    assert linked.remove(("out",), recursive=True) == Removed(0, 1)
    assert sorted(os.listdir(base / "outside")) == ["dir", "secret"]
    with pytest.raises(ConflictError):
        linked.remove(("docs",))
    with pytest.raises(NotFoundError):
        linked.remove(("docs", "missing"))
    with pytest.raises(PermissionDeniedError):
        linked.remove((), recursive=True)
    (home / "docs" / "sub" / "f").write_bytes(b"12345678")
    heard: list[Removed] = []
    # through a link on the way: removes docs/sub (and the links inside it, not followed)
    assert linked.remove(("c1",), recursive=True, on_removed=heard.append) == Removed(0, 1)
    assert linked.remove(("c2",), recursive=True) == Removed(0, 1)
    assert linked.remove(("docs", "sub"), recursive=True, on_removed=heard.append) == Removed(
        8,
        5,  # sub, f, up, top, sib
    )
    assert sorted(os.listdir(home / "docs")) == []


def test_rmdir(home: Path, tree: LocalTree) -> None:
    with pytest.raises(OSError):
        tree.rmdir(("docs",))  # not empty
    with pytest.raises(ConflictError):
        tree.rmdir(("docs", "a.txt"))
    tree.rmdir(("docs", "sub"))
    assert not (home / "docs" / "sub").exists()
    with pytest.raises(PermissionDeniedError):
        tree.rmdir(())


def test_rename(home: Path, linked: LocalTree) -> None:
    (home / "big").write_bytes(b"x" * 100)
    assert linked.rename(("big",), ("docs", "a.txt")) == Removed(5, 1)
    assert (home / "docs" / "a.txt").read_bytes() == b"x" * 100
    assert linked.rename(("docs", "a.txt"), ("fresh",)) == Removed()
    assert linked.rename(("fresh",), ("fresh",)) == Removed()
    assert linked.rename(("fresh",), ("rel", "moved")) == Removed()  # through a link
    assert (home / "docs" / "moved").read_bytes() == b"x" * 100
    assert linked.rename(("tofile",), ("docs", "sub", "l")) == Removed()  # the link moves
    assert os.readlink(home / "docs" / "sub" / "l") == "docs/a.txt"
    (home / "empty").mkdir()
    (home / "full").mkdir()
    assert linked.rename(("full",), ("empty",)) == Removed(0, 1)  # an empty folder replaced
    assert (home / "empty").is_dir() and not (home / "full").exists()
    with pytest.raises(NotFoundError):
        linked.rename(("missing",), ("x",))
    with pytest.raises(PermissionDeniedError):
        linked.rename(("docs",), ())
    with pytest.raises(PermissionDeniedError):
        linked.rename((), ("x",))


@pytest.mark.parametrize(
    "dst", [("docs", "sub", "x"), ("docs", "x"), ("rel", "x"), ("c1", "x"), ("abs", "sub", "x")]
)
def test_rename_dir_into_itself_is_conflict(
    home: Path, linked: LocalTree, dst: tuple[str, ...]
) -> None:
    with pytest.raises(ConflictError, match="into itself"):
        linked.rename(("docs",), dst)
    assert (home / "docs" / "a.txt").is_file()


# --- usage ----------------------------------------------------------------------------------


def test_usage_counts_bytes_and_entries(tmp_path: Path) -> None:
    home = tmp_path / "u"
    for p, size in {"a": 10, "d/b": 20, "d/e/f/c": 30, "d/empty": 0, "文件/😀": 5}.items():
        (home / p).parent.mkdir(parents=True, exist_ok=True)
        (home / p).write_bytes(b"x" * size)
    (home / "emptydir").mkdir()
    os.mkfifo(home / "pipe")
    # a, d, d/b, d/e, d/e/f, d/e/f/c, d/empty, 文件, 文件/😀, emptydir, pipe
    assert LocalTree(home).usage() == (65, 11, True)


def test_usage_missing_root(tmp_path: Path) -> None:
    assert LocalTree(tmp_path / "nope").usage() == (0, 0, True)


def test_usage_does_not_follow_links(base: Path, home: Path, tree: LocalTree) -> None:
    (base / "outside" / "big").write_bytes(b"x" * 10_000)
    _links(
        home,
        {
            "l_file": base / "outside" / "big",
            "l_dir": base / "outside",
            "l_self": home,
            "l_in": "docs/a.txt",
            "l_dangling": "nowhere",
        },
    )
    assert tree.usage() == (5, 3 + 5, True)  # docs, docs/sub, docs/a.txt and the links


def test_usage_beyond_path_max(home: Path, tree: LocalTree) -> None:
    """A tree whose real path is longer than PATH_MAX is counted all the same."""
    names = [f"{i:03d}" + "n" * 250 for i in range(20)]
    _build_by_fd(home, names, b"1234567")
    assert len(str(home)) + sum(len(n) + 1 for n in names) > os.pathconf("/", "PC_PATH_MAX")
    assert tree.usage() == (5 + 7 * 20, 3 + 2 * 20, True)
    assert tree.remove((names[0],), recursive=True) == Removed(7 * 20, 2 * 20)
    assert tree.usage() == (5, 3, True)


def test_usage_deep_tree_with_bounded_descriptors(
    home: Path, tree: LocalTree, few_fds: int
) -> None:
    _build_by_fd(home, ["d"] * 400, b"12")
    try:
        assert tree.usage() == (5 + 2 * 400, 3 + 2 * 400, True)
    finally:
        tree.remove(("d",), recursive=True)


def test_usage_counts_partials_as_bytes_not_entries(home: Path, tree: LocalTree) -> None:
    """Unfinished uploads hold bytes, but are not files of the user (nor is .ftpd)."""
    before = tree.usage()
    assert before == (5, 3, True)
    up = tree.begin_upload(("docs", "new"), 100, resume=True)
    up.write(memoryview(b"x" * 30))
    up.close()
    (home / "docs" / (PARTIAL_PREFIX + "abc.9")).write_bytes(b"y" * 9)  # a partial beside
    assert tree.usage() == (5 + 30 + 9, 3, True)


# --- uploads ------------------------------------------------------------------------------


def _partials_on_disk(home: Path) -> list[str]:
    folder = home / PARTIAL_DIR
    return sorted(os.listdir(folder)) if folder.is_dir() else []


def test_upload_installs_whole_with_mtime_and_digest(home: Path, tree: LocalTree) -> None:
    data = b"hello world" * 1000
    md5 = hashlib.md5(data).hexdigest()
    up = tree.begin_upload(("docs", "new.bin"), len(data), resume=True)
    try:
        assert (up.parts, up.offset, up.freed, up.target_exists) == (
            ("docs", "new.bin"),
            0,
            0,
            False,
        )
        up.write(memoryview(data[:5000]))
        assert not (home / "docs" / "new.bin").exists()  # nothing under the name yet
        up.write(memoryview(data[5000:]))
        assert up.commit("md5", md5, 1_600_000_000.25) == 0
    finally:
        up.close()
    target = home / "docs" / "new.bin"
    assert target.read_bytes() == data
    assert abs(target.stat().st_mtime_ns - 1_600_000_000_250_000_000) < 1000
    assert _partials_on_disk(home) == []
    assert list(tree.partials()) == []
    with tree.open_read(("docs", "new.bin")) as reader:
        assert isinstance(reader, LocalReader)
        assert reader.recorded_digest("md5") == md5
        assert reader.digest("md5") == md5
        assert reader.recorded_digest("sha1") is None
        assert reader.read() == data
    os.utime(target, ns=(1, 1))  # changed behind our back: the recorded digest is stale
    with tree.open_read(("docs", "new.bin")) as reader:
        assert reader.recorded_digest("md5") is None


def test_upload_replacing_returns_old_size(home: Path, linked: LocalTree) -> None:
    up = linked.begin_upload(("tofile",), 3, resume=False)  # through a link: its target
    try:
        assert up.parts == ("docs", "a.txt") and up.target_exists
        up.write(memoryview(b"new"))
        assert up.commit("md5", hashlib.md5(b"new").hexdigest(), None) == 5
    finally:
        up.close()
    assert (home / "docs" / "a.txt").read_bytes() == b"new"
    assert os.readlink(home / "tofile") == "docs/a.txt"


def test_upload_refused_before_writing_leaves_nothing(home: Path, tree: LocalTree) -> None:
    up = tree.begin_upload(("docs", "x"), 10, resume=True)
    up.close()
    assert _partials_on_disk(home) == []
    assert not (home / "docs" / "x").exists()
    up = tree.begin_upload(("docs", "x"), 10, resume=True)
    assert up.discard() == 0
    up.close()
    assert _partials_on_disk(home) == []


@pytest.mark.parametrize("parts", [("docs",), (), ("docs", "sub")])
def test_upload_onto_a_folder_is_conflict(tree: LocalTree, parts: tuple[str, ...]) -> None:
    with pytest.raises(ConflictError):
        tree.begin_upload(parts, 1, True)


def test_upload_into_missing_or_escaping_folder(base: Path, home: Path, escapes: LocalTree) -> None:
    with pytest.raises(NotFoundError):
        escapes.begin_upload(("missing", "x"), 1, True)
    for parts in (("abs_out", "x"), ("abs_out_file",), ("res", "x"), ("bob", "b.txt")):
        with pytest.raises(PathEscapeError):
            escapes.begin_upload(parts, 1, True)
    assert sorted(os.listdir(base / "outside")) == ["dir", "secret"]


def test_upload_resume_keeps_same_size_drops_others(home: Path, tree: LocalTree) -> None:
    up = tree.begin_upload(("docs", "f"), 10, resume=True)
    up.write(memoryview(b"0123"))
    up.close()
    [info] = tree.partials()
    assert (info.parts, info.held, info.expected) == (("docs", "f"), 4, 10)

    up = tree.begin_upload(("docs", "f"), 10, resume=True)
    try:
        assert (up.offset, up.freed) == (4, 0)
        hasher = hashlib.md5()
        up.read_prefix(hasher)
        assert hasher.hexdigest() == hashlib.md5(b"0123").hexdigest()
        up.write(memoryview(b"45"))
    finally:
        up.close()

    up = tree.begin_upload(("docs", "f"), 20, resume=True)  # another source: dropped
    try:
        assert (up.offset, up.freed) == (0, 6)
        up.write(memoryview(b"abc"))
    finally:
        up.close()
    assert [(p.held, p.expected) for p in tree.partials()] == [(3, 20)]

    up = tree.begin_upload(("docs", "f"), 20, resume=False)  # no resume: dropped too
    try:
        assert (up.offset, up.freed) == (0, 3)
        up.write(memoryview(b"xyz"))
        assert up.restart() == 3 and up.offset == 0
        up.write(memoryview(b"k" * 20))
        up.commit("md5", hashlib.md5(b"k" * 20).hexdigest(), None)
    finally:
        up.close()
    assert (home / "docs" / "f").read_bytes() == b"k" * 20
    assert _partials_on_disk(home) == []


def test_upload_partial_larger_than_declared_is_dropped(home: Path, tree: LocalTree) -> None:
    up = tree.begin_upload(("g",), 4, resume=True)
    up.write(memoryview(b"toolong"))
    up.close()
    up = tree.begin_upload(("g",), 4, resume=True)
    try:
        assert (up.offset, up.freed) == (0, 7)
    finally:
        up.close()


def test_discard_partials(home: Path, tree: LocalTree) -> None:
    for size in (10, 20):
        up = tree.begin_upload(("docs", "h"), size, resume=True)
        up.write(memoryview(b"abc"))
        up.close()
    assert len(list(tree.partials())) == 1  # the 20 replaced the 10
    assert tree.discard_partials(("docs", "h")) == Removed(3, 1)
    assert tree.discard_partials(("docs", "h")) == Removed()
    assert tree.discard_partials(("missing", "h")) == Removed()


def test_upload_installs_into_the_folder_it_held(base: Path, home: Path, tree: LocalTree) -> None:
    """The key race: the target's folder is renamed away and replaced by a link to
    somewhere else while the upload runs; the file lands in the folder it held."""
    (home / "inbox").mkdir()
    up = tree.begin_upload(("inbox", "report.txt"), 6, resume=True)
    try:
        up.write(memoryview(b"report"))
        os.rename(home / "inbox", home / "moved")
        os.symlink(base / "outside", home / "inbox")
        up.commit("md5", hashlib.md5(b"report").hexdigest(), None)
    finally:
        up.close()
    assert (home / "moved" / "report.txt").read_bytes() == b"report"
    assert sorted(os.listdir(base / "outside")) == ["dir", "secret"]
    assert _partials_on_disk(home) == []


def test_upload_held_folder_survives_swap_before_first_write(
    base: Path, home: Path, tree: LocalTree
) -> None:
    (home / "inbox").mkdir()
    up = tree.begin_upload(("inbox", "r"), 1, resume=True)
    try:
        os.rename(home / "inbox", home / "moved")
        os.symlink(base / "outside" / "dir", home / "inbox")
        up.write(memoryview(b"r"))
        up.commit("md5", hashlib.md5(b"r").hexdigest(), None)
    finally:
        up.close()
    assert (home / "moved" / "r").read_bytes() == b"r"
    assert os.listdir(base / "outside" / "dir") == []


# --- reading ----------------------------------------------------------------------------------


def test_open_read_refuses_dirs_and_fifos_without_blocking(home: Path, linked: LocalTree) -> None:
    os.mkfifo(home / "pipe")
    _links(home, {"to_pipe": "pipe"})
    outcomes: dict[tuple[str, ...], BaseException | None] = {}

    def attempt() -> None:
        for parts in [("pipe",), ("to_pipe",), ("docs",), ("rel",), (), ("missing",)]:
            try:
                linked.open_read(parts).close()
                outcomes[parts] = None
            except Exception as exc:  # noqa: BLE001 - inspected below
                outcomes[parts] = exc

    worker = threading.Thread(target=attempt, daemon=True)
    worker.start()
    worker.join(timeout=30)
    if worker.is_alive():  # blocked on the FIFO: unblock it and fail
        fd = os.open(home / "pipe", os.O_WRONLY | os.O_NONBLOCK)
        os.close(fd)
        pytest.fail("open_read blocked")
    for parts in [("pipe",), ("to_pipe",), ("docs",), ("rel",), ()]:
        assert isinstance(outcomes[parts], ConflictError), (parts, outcomes[parts])
    assert isinstance(outcomes[("missing",)], NotFoundError)
    with linked.open_read(("viaup",)) as reader:
        assert (reader.size, reader.read()) == (5, b"alice")


def test_set_mtime(home: Path, linked: LocalTree) -> None:
    linked.set_mtime(("tofile",), 1_000_000.0)  # the target, not the link
    assert (home / "docs" / "a.txt").stat().st_mtime == 1_000_000.0
    linked.set_mtime(("docs",), 2_000_000.0)
    assert (home / "docs").stat().st_mtime == 2_000_000.0
    with pytest.raises(NotFoundError):
        linked.set_mtime(("missing",), 1.0)


@pytest.mark.parametrize("parts", [(), ("absroot",), ("slash",), ("docs", "sub", "up")])
def test_set_mtime_of_a_folder_reached_without_a_final_name(
    home: Path, linked: LocalTree, parts: tuple[str, ...]
) -> None:
    """The root itself, or a folder a link leads to: it exists, so its mtime can be set."""
    target = home.joinpath(*linked.lookup(parts).parts)
    linked.set_mtime(parts, 3_000_000.0)
    assert target.stat().st_mtime == 3_000_000.0


# --- descriptors --------------------------------------------------------------------------


def test_no_descriptor_leaks(base: Path, home: Path, escapes: LocalTree) -> None:
    tree = escapes
    _links(home, {"loop1": "loop2", "loop2": "loop1", "rel": "docs"})
    os.mkfifo(home / "pipe")
    _build_by_fd(home, ["deep"] * 100, b"z")

    def failing(call: object, *args: object) -> None:
        try:
            call(*args)  # type: ignore[operator]
        except (OSError, PathEscapeError, NotFoundError, ConflictError, PermissionDeniedError):
            pass

    def batch() -> None:
        tree.lookup(("rel", "a.txt"))
        tree.lookup(("rel",), follow=False)
        list(tree.listdir(()))
        list(tree.listdir(("docs",)))
        tree.usage()
        tree.mkdir(("m", "n"), True, lambda n: None)
        tree.rename(("m",), ("m2",))
        tree.remove(("m2",), recursive=True)
        with tree.open_read(("docs", "a.txt")) as r:
            r.digest("sha1")
        up = tree.begin_upload(("docs", "u"), 2, resume=True)
        up.write(memoryview(b"u"))
        up.close()
        up = tree.begin_upload(("docs", "u"), 2, resume=True)
        up.write(memoryview(b"v"))
        up.commit("md5", "0" * 32, None)
        up.close()
        tree.remove(("docs", "u"))
        list(tree.partials())
        tree.discard_partials(("docs", "u"))
        for call, args in [
            (tree.lookup, (("loop1", "x"),)),
            (tree.lookup, (("abs_out", "x"),)),
            (tree.lookup, (("missing", "x"),)),
            (tree.lookup, (("docs", "a.txt", "x"),)),
            (tree.lookup, ((RESERVED,),)),
            (tree.lookup, (("x" * 300,),)),
            (lambda: list(tree.listdir(("docs", "a.txt"))), ()),
            (tree.mkdir, (("docs", "a.txt", "x"), True, lambda n: None)),
            (tree.mkdir, (("docs",), False, lambda n: None)),
            (tree.mkdir, (("q", "r"), True, lambda n: (_ for _ in ()).throw(OSError()))),
            (tree.remove, (("docs",),)),
            (tree.remove, (("nothing",),)),
            (tree.rmdir, (("docs",),)),
            (tree.rename, (("docs",), ("docs", "sub", "x"))),
            (tree.rename, (("nothing",), ("x",))),
            (tree.open_read, (("pipe",),)),
            (tree.open_read, (("docs",),)),
            (tree.open_read, (("loop1",),)),
            (tree.begin_upload, (("docs",), 1, True)),
            (tree.begin_upload, (("abs_out", "x"), 1, True)),
            (tree.begin_upload, (("missing", "x"), 1, True)),
            (tree.set_mtime, (("missing",), 1.0)),
        ]:
            failing(call, *args)
        tree.remove(("deep",), recursive=True)
        _build_by_fd(home, ["deep"] * 100, b"z")

    batch()  # warm up (caches, lazily opened things)
    before = _open_fds()
    for _ in range(3):
        batch()
    assert _open_fds() == before


def test_remove_and_usage_agree(home: Path, tree: LocalTree) -> None:
    """What ``remove`` reports taken away is what ``usage`` stops counting, so a ledger
    kept by both stays right (partials beside a target hold bytes, not entries)."""
    (home / "docs" / "sub" / (PARTIAL_PREFIX + "abc.9")).write_bytes(b"p" * 4)
    (home / "docs" / "sub" / "f").write_bytes(b"f" * 6)
    os.symlink("f", home / "docs" / "sub" / "l")
    before = tree.usage()
    removed = tree.remove(("docs",), recursive=True)
    after = tree.usage()
    assert (before[0] - after[0], before[1] - after[1]) == (removed.nbytes, removed.entries)


def test_reader_reads_and_seeks_like_a_file(home: Path, tree: LocalTree) -> None:
    with tree.open_read(("docs", "a.txt")) as reader:
        buf = bytearray(3)
        assert reader.readinto(buf) == 3 and bytes(buf) == b"ali"
        assert reader.read() == b"ce"
        assert reader.seek(1) == 1 and reader.read(2) == b"li"
        assert reader.seek(1, os.SEEK_CUR) == 4 and reader.read() == b"e"
        assert reader.seek(0) == 0
        assert reader.seek(-2, os.SEEK_END) == 3 and reader.read() == b"ce"
        assert reader.seek(0) == 0
        assert reader.seek(0, os.SEEK_END) == 5 and reader.read() == b""
