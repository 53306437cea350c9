"""Pure tests of path confinement: hostile virtual paths against a real home under tmp_path.

What was the jail is now two layers: ``FileService.normalize`` folds the client's text
(``..`` stops at ``/``, reserved names refused) and the storage walk
(``LocalTree.lookup``) resolves the parts beneath the home, following links inside and
refusing links that lead out.  ``FileService.resolve`` gives both: the client's path and
the real parts below the home.

The tree: <tmp>/home/alice (the home), <tmp>/home/alice2 (a neighbour whose name starts
the same), <tmp>/outside (a secret).  Whatever the path, a resolved path stays in alice.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

import pytest

from ftpd.accounts.throttle import LoginThrottle
from ftpd.accounts.users import User, UserStore
from ftpd.core.files import MAX_NAME, MAX_VPATH, FileService, virtual
from ftpd.core.login import Accounts
from ftpd.core.runtime import Runtime
from ftpd.errors import (
    InvalidPathError,
    NotFoundError,
    PathEscapeError,
    PermissionDeniedError,
)
from ftpd.state.local import LocalClaims, LocalLedgers
from ftpd.storage.base import RESERVED
from ftpd.storage.local import LocalStorage, LocalTree


def make_files(home: Path) -> FileService:
    """A FileService for the user whose home is ``home`` (its name), no sockets."""
    name = home.name
    storage = LocalStorage(home.parent, fsync=False)
    accounts = Accounts(
        UserStore({name: User(name, "!", None)}), LoginThrottle(5, 60, 0), storage, LocalLedgers()
    )
    return FileService(accounts.context(name), accounts, Runtime(8, 8, LocalClaims()))


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    home = tmp_path / "home"
    alice, alice2, outside = home / "alice", home / "alice2", tmp_path / "outside"
    for d in (
        alice / "docs" / "sub",
        alice / "etc",  # alice's own /etc: "/../../etc" must land here, not in the host's
        alice / "outside",
        alice / RESERVED / "partial",
        alice2 / "private",
        outside / "dir",
    ):
        d.mkdir(parents=True)
    (alice / "docs" / "a.txt").write_bytes(b"alice")
    (alice2 / "private" / "b.txt").write_bytes(b"alice2")
    (outside / "secret.txt").write_bytes(b"secret")
    (alice / RESERVED / "partial" / "p").write_bytes(b"partial")
    links = {
        "out_file": outside / "secret.txt",
        "out_dir": outside / "dir",
        "out_rel": Path("../../outside"),
        "neighbour": Path("../alice2"),
        "neighbour_abs": alice2 / "private",
        "chain1": Path("chain2"),
        "chain2": Path("docs/sub"),
        "to_docs": alice / "docs",
        "to_file": Path("docs/a.txt"),
        "self": Path("."),
        "to_reserved": Path(RESERVED),
        "to_partial": Path(RESERVED) / "partial",
        "docs/up": Path(".."),
        "docs/up2": Path("../.."),
        "loop1": Path("loop2"),
        "loop2": Path("loop1"),
        "dangling": Path("nowhere/at/all"),
        "dangling_here": Path("docs/nothing"),
    }
    for name, target in links.items():
        (alice / name).symlink_to(target)
    return alice


@pytest.fixture
def files(tree: Path) -> FileService:
    return make_files(tree)


def _inside(parts: tuple[str, ...], root: Path) -> bool:
    """Real parts below the home: no dot names, not reserved, and really inside on disk."""
    if any(p in ("", ".", "..") for p in parts) or (parts and parts[0] == RESERVED):
        return False
    real = root.joinpath(*parts)
    probe = real if os.path.lexists(real) else real.parent
    return Path(os.path.realpath(probe)).is_relative_to(root)


# --- lexical normalisation -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("vpath", "expected"),
    [
        ("", "/"),
        (".", "/"),
        ("/", "/"),
        ("//", "/"),
        ("///docs//sub///", "/docs/sub"),
        ("..", "/"),
        ("../../../..", "/"),
        ("/..", "/"),
        ("/../../etc/passwd", "/etc/passwd"),
        ("docs/../../../etc", "/etc"),
        ("./docs/./sub/.", "/docs/sub"),
        ("docs/sub/../../docs", "/docs"),
        ("../alice2", "/alice2"),
        ("a/" + RESERVED, "/a/" + RESERVED),
        ("...", "/..."),
        ("文件夹/😀.txt", "/文件夹/😀.txt"),
    ],
)
def test_jail_normalize(files: FileService, vpath: str, expected: str) -> None:
    assert files.normalize(vpath) == PurePosixPath(expected)
    assert files.parts(vpath) == PurePosixPath(expected).parts[1:]


def test_jail_relative_paths_use_cwd_absolute_paths_use_home(files: FileService) -> None:
    assert files.cd("/docs/sub") == "/docs/sub"
    assert files.resolve("x")[:2] == ("/docs/sub/x", ("docs", "sub", "x"))
    assert files.resolve("/x")[:2] == ("/x", ("x",))
    assert files.resolve("../a.txt")[:2] == ("/docs/a.txt", ("docs", "a.txt"))
    assert files.resolve("../../../../../x")[:2] == ("/x", ("x",))
    assert files.normalize("") == PurePosixPath("/docs/sub")


@pytest.mark.parametrize(
    ("vpath", "rel", "kind"),
    [
        ("/../../etc/passwd", "etc/passwd", None),  # alice's /etc has no passwd
        ("../../../../outside/secret.txt", "outside/secret.txt", None),
        ("..", "", "dir"),
        ("/docs/a.txt", "docs/a.txt", "file"),
        ("chain1", "docs/sub", "dir"),
        ("chain1/new", "docs/sub/new", None),
        ("to_docs/a.txt", "docs/a.txt", "file"),
        ("to_file", "docs/a.txt", "file"),
        ("self/docs", "docs", "dir"),
        ("self", "", "dir"),
        ("docs/up/docs", "docs", "dir"),
        ("docs/up", "", "dir"),
        ("dangling_here", "docs/nothing", None),
        ("docs/" + RESERVED, "docs/" + RESERVED, None),
    ],
)
def test_jail_resolve_stays_home(
    files: FileService, tree: Path, vpath: str, rel: str, kind: str | None
) -> None:
    _, parts, entry = files.resolve(vpath)
    assert parts == (tuple(rel.split("/")) if rel else ())
    assert (entry.kind if entry else None) == kind
    assert _inside(parts, tree)


@pytest.mark.parametrize(
    "vpath", ["../alice2/private/b.txt", "dangling", "nowhere/x", "../../outside/dir/x"]
)
def test_jail_resolve_through_missing_folder_is_not_found(files: FileService, vpath: str) -> None:
    """The old jail resolved a missing folder lexically; the walk stops there instead."""
    with pytest.raises(NotFoundError):
        files.resolve(vpath)


@pytest.mark.parametrize(
    "vpath",
    [
        "out_file",
        "out_dir",
        "out_dir/x",
        "/out_rel",
        "out_rel/secret.txt",
        "neighbour",
        "neighbour/private/b.txt",
        "neighbour_abs",
        "neighbour_abs/b.txt",
        "docs/up2",
        "docs/up2/alice2/private",
    ],
)
def test_jail_symlink_out_is_refused(files: FileService, tree: Path, vpath: str) -> None:
    for call in (files.resolve, files.stat, files.cd, files.listing, files.download):
        with pytest.raises(PathEscapeError) as info:
            call(vpath)
        assert info.value.code == 403
        assert str(tree.parent.parent) not in info.value.message  # no real path on the wire
    assert files.cwd == PurePosixPath("/")


def test_jail_neighbour_home_unreachable_by_dotdot(files: FileService, tree: Path) -> None:
    """alice's ``../alice2`` is alice's own /alice2, never the neighbour's home."""
    with pytest.raises(NotFoundError):
        files.stat("../alice2/private/b.txt")
    assert files.resolve("../alice2")[1:] == (("alice2",), None)


def test_jail_neighbour_with_prefix_name_is_not_inside(tmp_path: Path) -> None:
    """root/alice2 starts with the string root/alice; the check must compare parts."""
    (tmp_path / "alice").mkdir()
    (tmp_path / "alice2" / "sub").mkdir(parents=True)
    (tmp_path / "alice" / "x").symlink_to(tmp_path / "alice2")
    (tmp_path / "alice" / "y").symlink_to(tmp_path / "alice2" / "sub")
    tree = LocalTree(tmp_path / "alice")
    for parts in (("x",), ("x", "sub"), ("y",)):
        with pytest.raises(PathEscapeError):
            tree.lookup(parts)
    with pytest.raises(PathEscapeError):
        make_files(tmp_path / "alice").resolve("x/sub")


@pytest.mark.parametrize("vpath", ["loop1", "loop1/x", "loop2", "docs/../loop2/x"])
def test_jail_symlink_loop_is_refused(files: FileService, vpath: str) -> None:
    with pytest.raises(PathEscapeError, match="too many levels"):
        files.resolve(vpath)
    with pytest.raises(PathEscapeError):
        files.cd(vpath)


_INVALID = [
    "a\x00b",
    "\x00",
    "a\nb",
    "a\rb",
    "a\tb",
    "a\x7fb",
    "a\x1b[31mred",
    "a\x85b",  # C1 control (NEL)
    "a\ud800b",  # lone surrogate
    "a\\b",
    "..\\..\\etc",
    "x" * (MAX_NAME + 1),
    "é" * 128,  # 256 UTF-8 bytes in one name
    "docs/" + "x" * (MAX_NAME + 1) + "/y",
    "a/" * (MAX_VPATH // 2 + 1),
    "/" * (MAX_VPATH + 1),
]


@pytest.mark.parametrize("vpath", _INVALID)
def test_jail_invalid_text_refused(files: FileService, tree: Path, vpath: str) -> None:
    before = sorted(os.listdir(tree))
    calls = [
        files.normalize,
        files.resolve,
        lambda v: files.resolve(v, follow=False),
        files.stat,
        files.cd,
        files.listing,
        files.mkdir,
        lambda v: files.mkdir(v, parents=True),
        files.rm,
        files.rmdir,
        lambda v: files.mv(v, "x"),
        lambda v: files.mv("docs", v),
        lambda v: files.upload(v, 1),
        files.download,
    ]
    for call in calls:
        with pytest.raises(InvalidPathError) as info:
            call(vpath)
        assert info.value.code == 400
    assert sorted(os.listdir(tree)) == before
    assert files.cwd == PurePosixPath("/")


@pytest.mark.parametrize("vpath", ["x" * MAX_NAME, "é" * (MAX_NAME // 2)])
def test_jail_longest_valid_name_accepted(files: FileService, tree: Path, vpath: str) -> None:
    assert files.resolve(vpath)[1:] == ((vpath,), None)
    assert files.mkdir(vpath) == "/" + vpath
    assert (tree / vpath).is_dir()


def test_jail_longest_valid_path_accepted(files: FileService, tree: Path) -> None:
    """2048 levels of "a": the longest text accepted is also walked (no PATH_MAX)."""
    vpath = "a/" * (MAX_VPATH // 2)
    assert len(files.parts(vpath)) == MAX_VPATH // 2
    with pytest.raises(NotFoundError):
        files.resolve(vpath)
    try:
        files.mkdir(vpath, parents=True)
        _, parts, entry = files.resolve(vpath)
        assert parts == ("a",) * (MAX_VPATH // 2) and entry is not None and entry.kind == "dir"
        assert files.cd(vpath) == "/" + "/".join(parts)
    finally:
        files.cd("/")
        files.rm("a", recursive=True)  # shutil.rmtree would recurse 2048 deep
    assert not (tree / "a").exists()


@pytest.mark.parametrize(
    "vpath",
    [
        RESERVED,
        "/" + RESERVED,
        "//" + RESERVED + "//",
        "/./" + RESERVED,
        "../" + RESERVED,
        RESERVED + "/partial",
        RESERVED + "/partial/p",
        "a/../" + RESERVED + "/partial",
        "docs/../../" + RESERVED,
        "to_reserved",
        "to_reserved/partial/p",
        "to_partial",
        "self/" + RESERVED,
        "self/" + RESERVED + "/partial",
        "docs/up/" + RESERVED,
        "docs/.ftpd-part.abc",
        ".ftpd-part.x/y",
    ],
)
def test_jail_reserved_refused(files: FileService, tree: Path, vpath: str) -> None:
    for call in (files.resolve, files.stat, files.cd, files.listing, files.download):
        with pytest.raises(PathEscapeError):
            call(vpath)
    for call in (files.mkdir, lambda v: files.mkdir(v, parents=True), lambda v: files.upload(v, 1)):
        with pytest.raises(PathEscapeError):
            call(vpath)
    if vpath in ("to_reserved", "to_partial"):
        # A final link is the entry itself (rm removes the link, not the partials).
        _, parts, entry = files.resolve(vpath, follow=False)
        assert parts == (vpath,) and entry is not None and entry.kind == "link"
        files.rm(vpath)
        assert not os.path.lexists(tree / vpath)
    else:
        with pytest.raises(PathEscapeError):
            files.resolve(vpath, follow=False)
        for call in (
            lambda v: files.rm(v, recursive=True),
            files.rmdir,
            lambda v: files.mv(v, "x"),
        ):
            with pytest.raises(PathEscapeError):
                call(vpath)
    assert (tree / RESERVED / "partial" / "p").read_bytes() == b"partial"


def test_jail_reserved_refused_from_subdir_cwd(files: FileService) -> None:
    files.cd("docs")
    with pytest.raises(PathEscapeError):
        files.resolve("../" + RESERVED + "/partial/p")
    with pytest.raises(PathEscapeError):
        files.resolve("up/" + RESERVED)


@pytest.mark.parametrize(
    "vpath", ["a/" + RESERVED, "docs/" + RESERVED + "/x", RESERVED + "x", "x" + RESERVED]
)
def test_jail_reserved_name_deeper_is_fine(files: FileService, tree: Path, vpath: str) -> None:
    files.mkdir(vpath, parents=True)
    assert (tree / vpath).is_dir()
    for follow in (True, False):
        _, parts, entry = files.resolve(vpath, follow)
        assert parts == tuple(vpath.split("/")) and entry is not None and entry.kind == "dir"
    assert files.cd(vpath) == "/" + vpath


def test_jail_reserved_name_is_fine_relative_to_subdir(files: FileService) -> None:
    files.cd("docs")
    assert files.resolve(RESERVED)[:2] == ("/docs/" + RESERVED, ("docs", RESERVED))


@pytest.mark.parametrize("vpath", ["/", "", ".", "..", "//", "../..", "docs/.."])
def test_jail_entry_operations_refuse_home(files: FileService, tree: Path, vpath: str) -> None:
    before = sorted(os.listdir(tree))
    for call in (
        files.rm,
        lambda v: files.rm(v, recursive=True),
        files.rmdir,
        lambda v: files.mv(v, "docs"),
    ):
        with pytest.raises(PermissionDeniedError):
            call(vpath)
    assert sorted(os.listdir(tree)) == before


@pytest.mark.parametrize(
    "name", ["out_file", "out_dir", "neighbour", "to_reserved", "loop1", "dangling"]
)
def test_jail_entry_does_not_follow_final_link(files: FileService, tree: Path, name: str) -> None:
    _, parts, entry = files.resolve(name, follow=False)
    assert parts == (name,)
    assert entry is not None and entry.kind == "link"  # never described past the home
    assert (tree / name).is_symlink()
    files.rm(name, recursive=True)  # removes the link, never what it points to
    assert not os.path.lexists(tree / name)
    assert (tree.parent.parent / "outside" / "secret.txt").read_bytes() == b"secret"
    assert (tree.parent / "alice2" / "private" / "b.txt").is_file()


def test_jail_entry_follows_parent_links(files: FileService) -> None:
    assert files.resolve("chain1/new", follow=False)[1:] == (("docs", "sub", "new"), None)
    with pytest.raises(PathEscapeError):
        files.resolve("out_dir/secret.txt", follow=False)


def test_jail_existing(files: FileService) -> None:
    shown, entry, _ = files.stat("docs/a.txt")
    assert shown == "/docs/a.txt" and entry.kind == "file" and entry.size == 5
    with pytest.raises(NotFoundError) as info:
        files.stat("docs/missing")
    assert info.value.message == "/docs/missing: no such file or directory"


def test_jail_chdir(files: FileService) -> None:
    assert files.cd("docs") == "/docs"
    assert files.cd("sub") == "/docs/sub"
    assert files.cd("..") == "/docs"
    assert files.cd("/") == "/"
    assert files.cd("chain1") == "/docs/sub"  # a link inside shows as its target
    assert str(files.cwd) == "/docs/sub"
    assert files.pwd() == "/docs/sub"


@pytest.mark.parametrize(
    "vpath", ["docs/a.txt", "to_file", "missing", "docs/missing/deeper", "dangling"]
)
def test_jail_chdir_not_a_dir_is_not_found(files: FileService, vpath: str) -> None:
    files.cd("docs")
    with pytest.raises(NotFoundError):
        files.cd("/" + vpath)
    assert files.cwd == PurePosixPath("/docs")


def test_jail_unicode_names(files: FileService, tree: Path) -> None:
    name = "文件夹 😀"
    assert files.mkdir(name) == "/" + name
    (tree / name / "数据.txt").write_bytes(b"x")
    assert files.cd(name) == "/" + name
    shown, parts, entry = files.resolve("数据.txt")
    assert shown == f"/{name}/数据.txt" and entry is not None and entry.kind == "file"
    assert virtual(parts) == f"/{name}/数据.txt"


def test_jail_initial_cwd(files: FileService) -> None:
    assert files.cwd == PurePosixPath("/")
    assert files.cd("/docs/../docs/sub") == "/docs/sub"
    assert files.cwd == PurePosixPath("/docs/sub")


def test_jail_root_given_through_a_link(tmp_path: Path, tree: Path) -> None:
    """A home configured through a link: lookups start at its real folder, and absolute
    link targets naming the home either way are inside."""
    (tmp_path / "alias").symlink_to(tree)
    alias = LocalTree(tmp_path / "alias")
    assert alias.real == str(tree)
    assert alias.lookup(("docs",)).parts == ("docs",)
    assert alias.lookup(("to_docs", "a.txt")).parts == ("docs", "a.txt")
    (tree / "via_alias").symlink_to(tmp_path / "alias" / "docs")
    assert alias.lookup(("via_alias", "a.txt")).parts == ("docs", "a.txt")
    with pytest.raises(PathEscapeError):  # configured by its real path, the alias is elsewhere
        LocalTree(tree).lookup(("via_alias", "a.txt"))


def test_jail_never_calls_chdir(files: FileService, monkeypatch: pytest.MonkeyPatch) -> None:
    before = os.getcwd()

    def forbidden(path: object) -> None:
        raise AssertionError("os.chdir called")

    monkeypatch.setattr(os, "chdir", forbidden)
    files.cd("docs")
    files.cd("sub")
    files.resolve("../x")
    files.resolve("x", follow=False)
    files.stat("/docs")
    files.listing("/")
    files.mkdir("new")
    files.rmdir("new")
    files.cd("/")
    assert os.getcwd() == before
