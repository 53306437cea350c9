"""Pure tests of the jail: hostile virtual paths against a real home under tmp_path.

The tree: <tmp>/home/alice (the jail), <tmp>/home/alice2 (a neighbour whose name starts
the same), <tmp>/outside (a secret).  Whatever the path, a resolved path stays in alice.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

import pytest

from ftpd.errors import (
    FTPError,
    InvalidPathError,
    NotFoundError,
    PathEscapeError,
    PermissionDeniedError,
)
from ftpd.jail import MAX_NAME, MAX_VPATH, RESERVED, Jail


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    home = tmp_path / "home"
    alice, alice2, outside = home / "alice", home / "alice2", tmp_path / "outside"
    for d in (
        alice / "docs" / "sub",
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
    }
    for name, target in links.items():
        (alice / name).symlink_to(target)
    return alice


@pytest.fixture
def jail(tree: Path) -> Jail:
    return Jail(tree)


def _inside(real: Path, root: Path) -> bool:
    real = Path(os.path.normpath(real))
    return real.is_relative_to(root) and ".." not in real.parts


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
def test_jail_normalize(jail: Jail, vpath: str, expected: str) -> None:
    assert jail.normalize(vpath) == PurePosixPath(expected)


def test_jail_relative_paths_use_cwd_absolute_paths_use_home(jail: Jail, tree: Path) -> None:
    assert jail.chdir("/docs/sub") == "/docs/sub"
    assert jail.resolve("x") == tree / "docs" / "sub" / "x"
    assert jail.resolve("/x") == tree / "x"
    assert jail.resolve("../a.txt") == tree / "docs" / "a.txt"
    assert jail.resolve("../../../../../x") == tree / "x"
    assert jail.normalize("") == PurePosixPath("/docs/sub")


@pytest.mark.parametrize(
    ("vpath", "rel"),
    [
        ("/../../etc/passwd", "etc/passwd"),
        ("../../../../outside/secret.txt", "outside/secret.txt"),
        ("..", ""),
        ("../alice2/private/b.txt", "alice2/private/b.txt"),
        ("/docs/a.txt", "docs/a.txt"),
        ("chain1", "docs/sub"),
        ("chain1/new", "docs/sub/new"),
        ("to_docs/a.txt", "docs/a.txt"),
        ("to_file", "docs/a.txt"),
        ("self/docs", "docs"),
        ("docs/up/docs", "docs"),
        ("dangling", "nowhere/at/all"),
        ("a/" + RESERVED + "/x", "a/" + RESERVED + "/x"),
    ],
)
def test_jail_resolve_stays_home(jail: Jail, tree: Path, vpath: str, rel: str) -> None:
    real = jail.resolve(vpath)
    assert real == tree.joinpath(rel) if rel else real == tree
    assert _inside(real, tree)


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
def test_jail_symlink_out_is_refused(jail: Jail, tree: Path, vpath: str) -> None:
    for call in (jail.resolve, jail.existing, jail.chdir):
        with pytest.raises(PathEscapeError) as info:
            call(vpath)
        assert info.value.code == 403
        assert str(tree.parent.parent) not in info.value.message  # no real path on the wire
    assert jail.cwd == PurePosixPath("/")


def test_jail_neighbour_home_unreachable_by_dotdot(jail: Jail, tree: Path) -> None:
    """alice's ``../alice2`` is alice's own /alice2, never the neighbour's home."""
    with pytest.raises(NotFoundError):
        jail.existing("../alice2/private/b.txt")
    assert not jail.resolve("../alice2").is_relative_to(tree.parent / "alice2")


def test_jail_neighbour_with_prefix_name_is_not_inside(tmp_path: Path) -> None:
    """root/alice2 starts with the string root/alice; the check must compare parts."""
    (tmp_path / "alice").mkdir()
    (tmp_path / "alice2").mkdir()
    (tmp_path / "alice" / "x").symlink_to(tmp_path / "alice2")
    with pytest.raises(PathEscapeError):
        Jail(tmp_path / "alice").resolve("x")


def test_jail_symlink_loop_stays_inside(jail: Jail, tree: Path) -> None:
    for vpath in ("loop1", "loop1/x", "loop2/../docs"):
        try:
            real = jail.resolve(vpath)
        except FTPError:
            continue
        assert _inside(real, tree)


@pytest.mark.parametrize(
    "vpath",
    [
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
    ],
)
def test_jail_invalid_text_refused(jail: Jail, vpath: str) -> None:
    for call in (jail.normalize, jail.resolve, jail.resolve_entry, jail.existing, jail.chdir):
        with pytest.raises(InvalidPathError) as info:
            call(vpath)
        assert info.value.code == 400


@pytest.mark.parametrize("vpath", ["x" * MAX_NAME, "é" * (MAX_NAME // 2), "a/" * (MAX_VPATH // 2)])
def test_jail_longest_valid_text_accepted(jail: Jail, tree: Path, vpath: str) -> None:
    assert _inside(jail.resolve(vpath), tree)


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
    ],
)
def test_jail_reserved_refused(jail: Jail, tree: Path, vpath: str) -> None:
    for call in (jail.resolve, jail.existing, jail.chdir):
        with pytest.raises(PathEscapeError):
            call(vpath)
    if vpath in ("to_reserved", "to_partial"):
        # A final link is the entry itself (rm removes the link, not the partials).
        assert jail.resolve_entry(vpath) == tree / vpath
    else:
        with pytest.raises(PathEscapeError):
            jail.resolve_entry(vpath)


def test_jail_reserved_refused_from_subdir_cwd(jail: Jail) -> None:
    jail.chdir("docs")
    with pytest.raises(PathEscapeError):
        jail.resolve("../" + RESERVED + "/partial/p")
    with pytest.raises(PathEscapeError):
        jail.resolve("up/" + RESERVED)


@pytest.mark.parametrize(
    "vpath", ["a/" + RESERVED, "docs/" + RESERVED + "/x", RESERVED + "x", "x" + RESERVED]
)
def test_jail_reserved_name_deeper_is_fine(jail: Jail, tree: Path, vpath: str) -> None:
    assert jail.resolve(vpath) == tree / vpath
    assert jail.resolve_entry(vpath) == tree / vpath


def test_jail_reserved_name_is_fine_relative_to_subdir(jail: Jail, tree: Path) -> None:
    jail.chdir("docs")
    assert jail.resolve(RESERVED) == tree / "docs" / RESERVED


@pytest.mark.parametrize("vpath", ["/", "", ".", "..", "//", "../..", "docs/.."])
def test_jail_resolve_entry_refuses_home(jail: Jail, vpath: str) -> None:
    with pytest.raises(PermissionDeniedError):
        jail.resolve_entry(vpath)


@pytest.mark.parametrize(
    "name", ["out_file", "out_dir", "neighbour", "to_reserved", "loop1", "dangling"]
)
def test_jail_resolve_entry_does_not_follow_final_link(jail: Jail, tree: Path, name: str) -> None:
    assert jail.resolve_entry(name) == tree / name
    assert (tree / name).is_symlink()


def test_jail_resolve_entry_follows_parent_links(jail: Jail, tree: Path) -> None:
    assert jail.resolve_entry("chain1/new") == tree / "docs" / "sub" / "new"
    with pytest.raises(PathEscapeError):
        jail.resolve_entry("out_dir/secret.txt")


def test_jail_existing(jail: Jail, tree: Path) -> None:
    assert jail.existing("docs/a.txt") == tree / "docs" / "a.txt"
    with pytest.raises(NotFoundError) as info:
        jail.existing("docs/missing")
    assert info.value.message == "/docs/missing: no such file or directory"


def test_jail_chdir(jail: Jail) -> None:
    assert jail.chdir("docs") == "/docs"
    assert jail.chdir("sub") == "/docs/sub"
    assert jail.chdir("..") == "/docs"
    assert jail.chdir("/") == "/"
    assert jail.chdir("chain1") == "/docs/sub"  # a link inside shows as its target
    assert str(jail.cwd) == "/docs/sub"


@pytest.mark.parametrize(
    "vpath", ["docs/a.txt", "to_file", "missing", "docs/missing/deeper", "dangling"]
)
def test_jail_chdir_not_a_dir_is_not_found(jail: Jail, vpath: str) -> None:
    jail.chdir("docs")
    with pytest.raises(NotFoundError):
        jail.chdir("/" + vpath)
    assert jail.cwd == PurePosixPath("/docs")


def test_jail_unicode_names(jail: Jail, tree: Path) -> None:
    name = "文件夹 😀"
    real = jail.resolve(name)
    real.mkdir()
    (real / "数据.txt").write_bytes(b"x")
    assert jail.chdir(name) == "/" + name
    assert jail.existing("数据.txt") == tree / name / "数据.txt"
    assert jail.to_virtual(tree / name / "数据.txt") == f"/{name}/数据.txt"


def test_jail_initial_cwd(tree: Path) -> None:
    assert Jail(tree, "/docs/../docs/sub").cwd == PurePosixPath("/docs/sub")


def test_jail_root_is_resolved(tmp_path: Path, tree: Path) -> None:
    (tmp_path / "alias").symlink_to(tree)
    jail = Jail(tmp_path / "alias")
    assert jail.root == tree
    assert jail.resolve("docs") == tree / "docs"


def test_jail_never_calls_chdir(jail: Jail, monkeypatch: pytest.MonkeyPatch) -> None:
    before = os.getcwd()

    def forbidden(path: object) -> None:
        raise AssertionError("os.chdir called")

    monkeypatch.setattr(os, "chdir", forbidden)
    jail.chdir("docs")
    jail.chdir("sub")
    jail.resolve("../x")
    jail.resolve_entry("x")
    jail.existing("/docs")
    jail.chdir("/")
    assert os.getcwd() == before
