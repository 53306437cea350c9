"""Session behaviour end to end: a real FramedServer on 127.0.0.1, driven through Connection.

Every browsing command, the jail seen from the wire (``..``, absolute paths, symlinks out,
``alice`` vs ``alice2``, control characters, the reserved ``.ftpd``), non-ASCII names, and
many concurrent sessions of several users.  Assertions are on codes and on the disk.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from ftp_client.connection import Connection
from ftp_client.transfer import get_file, put_file
from ftpd import errors
from tests.conftest import PASSWORDS

MiB = 1024 * 1024


def expect_error(code: int, name: str, call: Callable[[], Any]) -> errors.FTPError:
    """Run ``call``; it must fail with exactly this wire code and slug."""
    with pytest.raises(errors.FTPError) as info:
        call()
    assert (info.value.code, info.value.name) == (code, name), info.value.message
    return info.value


def names(entries: list[dict[str, Any]]) -> list[str]:
    return [e["name"] for e in entries]


def put_inline(conn: Connection, path: str, data: bytes) -> Any:
    checksum = hashlib.md5(data).hexdigest()
    return conn.call("put", body=data, path=path, size=len(data), checksum=checksum)


def get_bytes(conn: Connection, path: str) -> bytes:
    response = conn.call("get", path=path)
    return conn.read_body(response)


# --- pwd / cd -----------------------------------------------------------------------


def test_session_pwd_starts_at_root(client):
    response = client.call("pwd")
    assert response.data["cwd"] == "/"
    assert response.message == "/"


def test_session_cd_into_dirs_and_back(client, project):
    (project.home("alice") / "a" / "b").mkdir(parents=True)
    assert client.call("cd", path="a").data["cwd"] == "/a"
    assert client.call("cd", path="b").data["cwd"] == "/a/b"
    assert client.call("pwd").data["cwd"] == "/a/b"
    assert client.call("cd", path="..").data["cwd"] == "/a"
    assert client.call("cd", path="/a/b/../..").data["cwd"] == "/"


@pytest.mark.parametrize("path", ["..", "../..", "/..", "/../../..", ".", "/", "//"])
def test_session_cd_dotdot_at_root_stays_at_root(client, path):
    assert client.call("cd", path=path).data["cwd"] == "/"
    assert client.call("pwd").data["cwd"] == "/"


def test_session_cd_into_file_is_not_found(client, project):
    (project.home("alice") / "f.txt").write_bytes(b"x")
    expect_error(404, "not_found", lambda: client.call("cd", path="f.txt"))
    expect_error(404, "not_found", lambda: client.call("cd", path="missing"))
    assert client.call("pwd").data["cwd"] == "/"


def test_session_relative_paths_follow_cwd(client, project):
    home = project.home("alice")
    (home / "d").mkdir()
    client.call("cd", path="d")
    client.call("mkdir", path="inner")
    put_inline(client, "f.txt", b"abc")
    assert (home / "d" / "inner").is_dir()
    assert (home / "d" / "f.txt").read_bytes() == b"abc"
    assert client.call("stat", path="f.txt").data["path"] == "/d/f.txt"


# --- ls -----------------------------------------------------------------------------


def test_session_ls_describes_entries(client, project):
    home = project.home("alice")
    (home / "dir").mkdir()
    (home / "file.bin").write_bytes(b"\x00" * 1234)
    entries = {e["name"]: e for e in client.listdir()}
    assert sorted(entries) == ["dir", "file.bin"]
    f, d = entries["file.bin"], entries["dir"]
    assert (f["type"], f["size"]) == ("file", 1234)
    assert f["mtime"] == os.stat(home / "file.bin").st_mtime
    assert (d["type"], d["size"]) == ("dir", 0)
    assert d["mtime"] == os.stat(home / "dir").st_mtime


def test_session_ls_of_a_file_lists_that_file(client, project):
    (project.home("alice") / "one.txt").write_bytes(b"12345")
    (entry,) = client.listdir("one.txt")
    assert (entry["name"], entry["type"], entry["size"]) == ("one.txt", "file", 5)


def test_session_ls_missing_is_not_found(client):
    expect_error(404, "not_found", lambda: client.listdir("nope"))


def test_session_ls_five_thousand_entries(client, project):
    big = project.home("alice") / "big"
    big.mkdir()
    for i in range(5000):
        (big / f"f{i:05d}").touch()
    response = client.call("ls", path="big")
    assert response.data["count"] == 5000
    entries = [e for e in client.read_body(response).decode().splitlines() if e]
    assert len(entries) == 5000
    listed = names(client.listdir("big"))
    assert listed == [f"f{i:05d}" for i in range(5000)]


def test_session_ls_hides_dot_files_unless_all(client, project):
    home = project.home("alice")
    (home / ".hidden").write_bytes(b"h")
    (home / ".config").mkdir()
    (home / "shown").write_bytes(b"s")
    assert names(client.listdir()) == ["shown"]
    assert names(client.listdir(show_all=True)) == [".config", ".hidden", "shown"]


def test_session_ls_never_shows_reserved_dir(client, project):
    home = project.home("alice")
    put_inline(client, "up.txt", b"uploaded")  # creates .ftpd/partial on the way
    (home / ".ftpd" / "partial" / "stray").write_bytes(b"p")
    assert (home / ".ftpd").is_dir()
    assert ".ftpd" not in names(client.listdir(show_all=True))
    assert ".ftpd" not in names(client.listdir("/", show_all=True))
    client.call("mkdir", path="sub")
    assert ".ftpd" not in names(client.listdir("sub/..", show_all=True))
    expect_error(403, "path_escape", lambda: client.listdir(".ftpd", show_all=True))


def test_session_ls_undecodable_name_is_flagged(client, project):
    home = project.home("alice")
    raw = os.fsencode(str(home)) + b"/bad\xff\xfename.txt"
    with open(raw, "wb") as f:
        f.write(b"12")
    (home / "good.txt").write_bytes(b"ok")
    entries = {e["name"]: e for e in client.listdir()}
    assert set(entries) == {"bad\\xff\\xfename.txt", "good.txt"}
    bad = entries["bad\\xff\\xfename.txt"]
    assert bad["undecodable"] is True
    assert (bad["type"], bad["size"]) == ("file", 2)
    assert "undecodable" not in entries["good.txt"]
    # The session is still usable and the quota counts the file.
    assert client.call("quota").data["used"] == 4


def test_session_ls_shows_symlink_out_as_link(client, project, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(b"s" * 100)
    home = project.home("alice")
    (home / "out").symlink_to(outside)
    (home / "file-out").symlink_to(outside / "secret")
    (home / "real.txt").write_bytes(b"r" * 7)
    (home / "in").symlink_to(home / "real.txt")
    entries = {e["name"]: e for e in client.listdir()}
    assert (entries["out"]["type"], entries["out"]["size"]) == ("link", 0)
    assert (entries["file-out"]["type"], entries["file-out"]["size"]) == ("link", 0)
    assert (entries["in"]["type"], entries["in"]["size"]) == ("file", 7)


def test_session_ls_shows_a_link_into_the_reserved_area_as_a_bare_link(client, project):
    home = project.home("alice")
    (home / ".ftpd" / "partial").mkdir(parents=True, exist_ok=True)
    (home / "peek").symlink_to(home / ".ftpd" / "partial")
    entries = {e["name"]: e for e in client.listdir()}
    assert (entries["peek"]["type"], entries["peek"]["size"]) == ("link", 0)
    with pytest.raises(errors.PathEscapeError):
        client.listdir("peek")


# --- mkdir --------------------------------------------------------------------------


def test_session_mkdir_creates_directory(client, project):
    client.call("mkdir", path="new")
    assert (project.home("alice") / "new").is_dir()
    assert names(client.listdir()) == ["new"]


def test_session_mkdir_parents(client, project):
    client.call("mkdir", path="a/b/c", parents=True)
    assert (project.home("alice") / "a" / "b" / "c").is_dir()
    client.call("mkdir", path="a/b/c", parents=True)  # -p on an existing dir is fine


def test_session_mkdir_without_parents_needs_parent(client, project):
    expect_error(404, "not_found", lambda: client.call("mkdir", path="x/y"))
    assert not (project.home("alice") / "x").exists()


def test_session_mkdir_existing_is_conflict(client, project):
    home = project.home("alice")
    (home / "d").mkdir()
    (home / "f").write_bytes(b"x")
    expect_error(409, "conflict", lambda: client.call("mkdir", path="d"))
    expect_error(409, "conflict", lambda: client.call("mkdir", path="f"))
    expect_error(409, "conflict", lambda: client.call("mkdir", path="f", parents=True))
    assert (home / "f").read_bytes() == b"x"


# --- rm / rmdir ---------------------------------------------------------------------


def test_session_rm_file(client, project):
    home = project.home("alice")
    (home / "f").write_bytes(b"x" * 10)
    client.call("rm", path="f")
    assert not (home / "f").exists()


def test_session_rm_directory_is_conflict(client, project):
    home = project.home("alice")
    (home / "d").mkdir()
    expect_error(409, "conflict", lambda: client.call("rm", path="d"))
    assert (home / "d").is_dir()


def test_session_rm_missing_is_not_found(client):
    expect_error(404, "not_found", lambda: client.call("rm", path="ghost"))


@pytest.mark.parametrize("kind", ["outside-file", "outside-dir", "bob-home"])
def test_session_rm_symlink_out_removes_only_the_link(client, project, tmp_path, kind):
    outside = tmp_path / "outside"
    (outside / "dir").mkdir(parents=True)
    (outside / "file").write_bytes(b"precious")
    bob = project.home("bob")
    bob.mkdir(parents=True)
    (bob / "bob.txt").write_bytes(b"bob's")
    targets = {"outside-file": outside / "file", "outside-dir": outside / "dir", "bob-home": bob}
    target = targets[kind]
    link = project.home("alice") / "link"
    link.symlink_to(target)
    client.call("rm", path="link")
    assert not os.path.lexists(link)
    assert target.exists()
    assert (outside / "file").read_bytes() == b"precious"
    assert (bob / "bob.txt").read_bytes() == b"bob's"


def test_session_rmdir_empty(client, project):
    home = project.home("alice")
    (home / "d").mkdir()
    client.call("rmdir", path="d")
    assert not (home / "d").exists()


def test_session_rmdir_non_empty_is_conflict(client, project):
    home = project.home("alice")
    (home / "d").mkdir()
    (home / "d" / "f").write_bytes(b"x")
    expect_error(409, "conflict", lambda: client.call("rmdir", path="d"))
    assert (home / "d" / "f").exists()


def test_session_rmdir_file_is_conflict(client, project):
    (project.home("alice") / "f").write_bytes(b"x")
    expect_error(409, "conflict", lambda: client.call("rmdir", path="f"))


@pytest.mark.parametrize("path", ["/", ".", "..", "/../..", "//"])
def test_session_rmdir_root_refused(client, project, path):
    expect_error(403, "permission_denied", lambda: client.call("rmdir", path=path))
    expect_error(403, "permission_denied", lambda: client.call("rm", path=path))
    assert project.home("alice").is_dir()


def test_session_rmdir_of_cwd_moves_cwd_up(client, project):
    (project.home("alice") / "a" / "b").mkdir(parents=True)
    client.call("cd", path="/a/b")
    client.call("rmdir", path="/a/b")
    assert client.call("pwd").data["cwd"] == "/a"


# --- mv -----------------------------------------------------------------------------


def test_session_mv_renames(client, project):
    home = project.home("alice")
    (home / "old").write_bytes(b"content")
    client.call("mv", src="old", dst="new")
    assert not (home / "old").exists()
    assert (home / "new").read_bytes() == b"content"


def test_session_mv_into_directory(client, project):
    home = project.home("alice")
    (home / "f").write_bytes(b"content")
    (home / "d").mkdir()
    response = client.call("mv", src="f", dst="d")
    assert "/d/f" in response.message
    assert (home / "d" / "f").read_bytes() == b"content"
    assert not (home / "f").exists()


def test_session_mv_directory_renames(client, project):
    home = project.home("alice")
    (home / "d1" / "sub").mkdir(parents=True)
    client.call("mv", src="d1", dst="d2")
    assert (home / "d2" / "sub").is_dir()
    assert not (home / "d1").exists()


@pytest.mark.parametrize("dst", ["d", "d/inner", "d/x/y", "/d/../d/new"])
def test_session_mv_dir_into_itself_is_conflict(client, project, dst):
    home = project.home("alice")
    (home / "d" / "x").mkdir(parents=True)
    expect_error(409, "conflict", lambda: client.call("mv", src="d", dst=dst))
    assert (home / "d" / "x").is_dir()
    assert sorted(p.name for p in home.iterdir()) == ["d"]


def test_session_mv_overwrites_file(client, project):
    home = project.home("alice")
    (home / "a").write_bytes(b"A" * 10)
    (home / "b").write_bytes(b"B" * 1000)
    client.call("mv", src="a", dst="b")
    assert (home / "b").read_bytes() == b"A" * 10
    assert not (home / "a").exists()
    assert client.call("quota").data["used"] == 10


def test_session_mv_missing_source_is_not_found(client):
    expect_error(404, "not_found", lambda: client.call("mv", src="ghost", dst="x"))


@pytest.mark.parametrize("dst", ["../alice2/x", "/../alice2/x", "../../alice2/x"])
def test_session_mv_cannot_reach_sibling_home(client, project, dst):
    home, sibling = project.home("alice"), project.home("alice2")
    sibling.mkdir(parents=True)
    (home / "f").write_bytes(b"mine")
    expect_error(404, "not_found", lambda: client.call("mv", src="f", dst=dst))
    assert (home / "f").read_bytes() == b"mine"
    assert list(sibling.iterdir()) == []


@pytest.mark.parametrize("dst", ["/../../etc", "../../../etc", "/etc"])
def test_session_mv_to_absolute_stays_in_home(client, project, dst):
    home = project.home("alice")
    (home / "f").write_bytes(b"mine")
    client.call("mv", src="f", dst=dst)
    assert (home / "etc").read_bytes() == b"mine"  # a file named etc, inside the home


def test_session_mv_source_outside_home_not_found(client, project):
    sibling = project.home("alice2")
    sibling.mkdir(parents=True)
    (sibling / "secret").write_bytes(b"s")
    for src in ["../alice2/secret", "/../alice2/secret", "/alice2/secret"]:
        expect_error(404, "not_found", lambda src=src: client.call("mv", src=src, dst="stolen"))
    assert (sibling / "secret").read_bytes() == b"s"
    assert not (project.home("alice") / "stolen").exists()


# --- stat / quota -------------------------------------------------------------------


def test_session_stat_file_and_dir(client, project):
    home = project.home("alice")
    (home / "d").mkdir()
    (home / "d" / "f").write_bytes(b"x" * 42)
    data = client.call("stat", path="d/f").data
    assert (data["name"], data["type"], data["size"], data["path"]) == ("f", "file", 42, "/d/f")
    assert data["mtime"] == os.stat(home / "d" / "f").st_mtime
    data = client.call("stat", path="d").data
    assert (data["name"], data["type"], data["path"]) == ("d", "dir", "/d")
    expect_error(404, "not_found", lambda: client.call("stat", path="nope"))


def test_session_stat_root_is_named_slash(client):
    data = client.call("stat", path="/").data
    assert (data["name"], data["type"], data["path"]) == ("/", "dir", "/")


def test_session_stat_symlink_inside_names_the_link(client, project):
    home = project.home("alice")
    (home / "target.txt").write_bytes(b"t" * 3)
    (home / "alias").symlink_to(home / "target.txt")
    data = client.call("stat", path="alias").data
    shown = (data["name"], data["type"], data["size"], data["path"])
    assert shown == ("alias", "file", 3, "/alias")


def test_session_quota_counts_real_bytes(server, project):
    home = project.home("alice")
    home.mkdir(parents=True)
    (home / "a").write_bytes(b"a" * 1000)
    (home / "d").mkdir()
    (home / "d" / "b").write_bytes(b"b" * 2345)
    conn = server.login("alice")
    data = conn.call("quota").data
    assert data["used"] == 3345
    assert data["limit"] == 10 * MiB
    assert data["available"] == 10 * MiB - 3345
    (home / "d" / "c").write_bytes(b"c" * 5)  # placed by hand while logged in
    put_inline(conn, "e", b"e" * 100)
    assert conn.call("quota").data["used"] == 3445  # the ledger: no walk per `quota`
    server.server.services.ledgers.recount_all()  # what a reload does
    data = conn.call("quota").data
    assert data["used"] == 3450
    assert data["available"] == 10 * MiB - 3450
    conn.call("rm", path="a")
    assert conn.call("quota").data["used"] == 2450
    conn.close()


def test_session_quota_unlimited_user(server):
    conn = server.login("bob")
    data = conn.call("quota").data
    assert (data["used"], data["limit"], data["available"]) == (0, None, None)
    conn.close()


# --- the jail from the wire: a hostile path matrix ----------------------------------

OUT_FILE = "secret.txt"


@pytest.fixture
def jailed(server, project, tmp_path):
    """Alice logged in, with links out of her home planted by hand (as an admin might)."""
    outside = tmp_path / "outside"
    (outside / "sub").mkdir(parents=True)
    (outside / OUT_FILE).write_bytes(b"outside secret")
    homes = {u: project.home(u) for u in ("alice", "alice2", "bob")}
    for home in homes.values():
        home.mkdir(parents=True, mode=0o700)
    (homes["alice2"] / OUT_FILE).write_bytes(b"alice2 secret")
    (homes["alice2"] / "sub").mkdir()
    (homes["bob"] / OUT_FILE).write_bytes(b"bob secret")
    (homes["bob"] / "sub").mkdir()
    alice = homes["alice"]
    (alice / "own.txt").write_bytes(b"own")
    (alice / "sub").mkdir()
    (alice / "out").symlink_to(outside)
    (alice / "bobhome").symlink_to(homes["bob"])
    (alice / "a2home").symlink_to(homes["alice2"])  # same prefix: alice2 starts with alice
    (alice / "passwd").symlink_to(outside / OUT_FILE)
    (alice / "a2rel").symlink_to(Path("..") / "alice2")
    conn = server.login("alice")
    snapshot = {p: _tree(p) for p in [outside, homes["alice2"], homes["bob"]]}
    yield conn, alice
    conn.close()
    for path, before in snapshot.items():
        assert _tree(path) == before, f"{path} changed"


def _tree(root: Path) -> dict[str, bytes | None]:
    out: dict[str, bytes | None] = {}
    for folder, dirs, files in os.walk(root):
        for d in dirs:
            out[os.path.relpath(os.path.join(folder, d), root)] = None
        for f in files:
            out[os.path.relpath(os.path.join(folder, f), root)] = Path(folder, f).read_bytes()
    return out


def _put(conn: Connection, path: str) -> Any:
    return put_inline(conn, path, b"payload")


PATH_COMMANDS: dict[str, Callable[[Connection, str], Any]] = {
    "cd": lambda c, p: c.call("cd", path=p),
    "ls": lambda c, p: c.listdir(p, show_all=True),
    "stat": lambda c, p: c.call("stat", path=p),
    "mkdir": lambda c, p: c.call("mkdir", path=p),
    "mkdir-p": lambda c, p: c.call("mkdir", path=p, parents=True),
    "rm": lambda c, p: c.call("rm", path=p),
    "rmdir": lambda c, p: c.call("rmdir", path=p),
    "mv-src": lambda c, p: c.call("mv", src=p, dst="/landed"),
    "mv-dst": lambda c, p: c.call("mv", src="/own.txt", dst=p),
    "put": _put,
    "get": lambda c, p: get_bytes(c, p),
}

ESCAPE = (403, "path_escape")
INVALID = (400, "invalid_path")
MISSING = (404, "not_found")

# Paths that name something behind a symlink out of the home: every command is refused.
LINKED_OUT = [
    "out/secret.txt",
    "out/sub",
    "out/new",
    "out/../out/secret.txt",
    "/out/sub/../secret.txt",
    "bobhome/secret.txt",
    "bobhome/sub",
    "a2home/secret.txt",
    "a2home/sub",
    "a2rel/secret.txt",
    "sub/../a2home/sub",
]

# The reserved bookkeeping folder is out of reach by any spelling.
RESERVED = [".ftpd", "/.ftpd", ".ftpd/partial", "/sub/../.ftpd/partial/x", "./.ftpd/x", "..//.ftpd"]

# NUL, control characters and backslashes are refused before the disk is touched.
BAD_TEXT = ["a\x00b", "\x00", "a\nb", "x\r", "\x1b[31m", "tab\there", "del\x7f", "a\\b", "sub/\x85"]


def _check_all(conn: Connection, path: str, expected: dict[str, tuple[int, str] | None]) -> None:
    wrong = []
    for name, want in expected.items():
        try:
            PATH_COMMANDS[name](conn, path)
            got: tuple[int, str] | None = None
        except errors.FTPError as exc:
            got = (exc.code, exc.name)
        if got != want:
            wrong.append(f"{name} {path!r}: got {got}, want {want}")
    assert not wrong, "\n".join(wrong)
    assert conn.call("pwd").data["cwd"] == "/"  # the session survived every refusal


@pytest.mark.parametrize("path", LINKED_OUT)
def test_session_jail_symlink_out_is_path_escape(jailed, path):
    conn, home = jailed
    _check_all(conn, path, dict.fromkeys(PATH_COMMANDS, ESCAPE))
    assert (home / "own.txt").read_bytes() == b"own"


@pytest.mark.parametrize("path", ["out", "bobhome", "a2home", "a2rel", "passwd"])
def test_session_jail_following_a_link_out_is_path_escape(jailed, path):
    conn, home = jailed
    # rm, rmdir and mv-src act on the link itself (see the rm test); the rest follow it.
    expected = dict.fromkeys(PATH_COMMANDS, ESCAPE)
    del expected["rm"], expected["rmdir"], expected["mv-src"]
    wrong = []
    for name in expected:
        try:
            PATH_COMMANDS[name](conn, path)
            wrong.append(f"{name} {path!r} succeeded")
        except errors.FTPError as exc:
            if (exc.code, exc.name) != ESCAPE:
                wrong.append(f"{name} {path!r}: got {(exc.code, exc.name)}")
    assert not wrong, "\n".join(wrong)
    assert os.path.islink(home / path)


@pytest.mark.parametrize("path", RESERVED)
def test_session_jail_reserved_dir_is_path_escape(jailed, path):
    conn, home = jailed
    (home / ".ftpd" / "partial").mkdir(parents=True)
    (home / ".ftpd" / "partial" / "x").write_bytes(b"partial")
    _check_all(conn, path, dict.fromkeys(PATH_COMMANDS, ESCAPE))
    assert (home / ".ftpd" / "partial" / "x").read_bytes() == b"partial"


@pytest.mark.parametrize("path", BAD_TEXT)
def test_session_jail_control_characters_are_invalid(jailed, path):
    conn, home = jailed
    _check_all(conn, path, dict.fromkeys(PATH_COMMANDS, INVALID))
    assert sorted(p.name for p in home.iterdir()) == sorted(
        ["own.txt", "sub", "out", "bobhome", "a2home", "passwd", "a2rel"]
    )


# Paths that try to climb out lexically: they fold onto the home and name nothing there.
@pytest.mark.parametrize(
    ("path", "virtual"),
    [
        ("/etc/passwd", "/etc/passwd"),
        ("../../etc/passwd", "/etc/passwd"),
        ("/../../../etc/passwd", "/etc/passwd"),
        ("../alice2/secret.txt", "/alice2/secret.txt"),
        ("/../alice2/secret.txt", "/alice2/secret.txt"),
        ("/alice2/secret.txt", "/alice2/secret.txt"),
        ("../bob/secret.txt", "/bob/secret.txt"),
        ("sub/../../alice2/secret.txt", "/alice2/secret.txt"),
        ("..//..//bob//secret.txt", "/bob/secret.txt"),
    ],
)
def test_session_jail_dotdot_and_absolute_map_inside_home(jailed, path, virtual):
    conn, home = jailed
    expected: dict[str, tuple[int, str] | None] = dict.fromkeys(PATH_COMMANDS, MISSING)
    del expected["mkdir-p"]
    _check_all(conn, path, expected)
    conn.call("mkdir", path=path, parents=True)  # creates folders inside alice's home only
    assert conn.call("stat", path=path).data["path"] == virtual
    assert home.joinpath(virtual[1:]).is_dir()
    assert Path("/etc/passwd").is_file()  # untouched, never served


@pytest.mark.parametrize("path", ["..", "/..", "/../..", "../../..", ".", "/", "sub/../.."])
def test_session_jail_dotdot_alone_is_the_home(jailed, path):
    conn, home = jailed
    _check_all(
        conn,
        path,
        {
            "cd": None,
            "ls": None,
            "stat": None,
            "mkdir": (409, "conflict"),
            "mkdir-p": None,
            "rm": (403, "permission_denied"),
            "rmdir": (403, "permission_denied"),
            "mv-src": (403, "permission_denied"),
            "mv-dst": None,  # moves own.txt into / (where it already is)
            "put": (409, "conflict"),
            "get": (409, "conflict"),
        },
    )
    assert (home / "own.txt").read_bytes() == b"own"
    listed = set(names(conn.listdir(path)))
    assert listed == {"own.txt", "sub", "out", "bobhome", "a2home", "passwd", "a2rel"}


def test_session_absolute_path_never_serves_real_file(jailed):
    conn, home = jailed
    expect_error(404, "not_found", lambda: get_bytes(conn, "/etc/passwd"))
    (home / "etc").mkdir()
    (home / "etc" / "passwd").write_bytes(b"alice's own passwd file")
    assert get_bytes(conn, "/etc/passwd") == b"alice's own passwd file"
    assert get_bytes(conn, "../../etc/passwd") == b"alice's own passwd file"


def test_session_users_are_isolated(server, project):
    """alice and alice2 (same prefix) see only their own homes, by any path."""
    a2 = server.login("alice2")
    put_inline(a2, "mine.txt", b"alice2 data")
    a2.call("mkdir", path="private")
    a = server.login("alice")
    assert names(a.listdir()) == []
    for path in ["mine.txt", "/mine.txt", "../alice2/mine.txt", "/../alice2/mine.txt", "private"]:
        expect_error(404, "not_found", lambda path=path: a.call("stat", path=path))
        expect_error(404, "not_found", lambda path=path: get_bytes(a, path))
    put_inline(a, "mine.txt", b"alice data")
    assert get_bytes(a2, "mine.txt") == b"alice2 data"
    assert get_bytes(a, "mine.txt") == b"alice data"
    assert names(a2.listdir()) == ["mine.txt", "private"]
    assert (project.home("alice") / "mine.txt").read_bytes() == b"alice data"
    a.close()
    a2.close()


# --- non-ASCII names everywhere -----------------------------------------------------


@pytest.mark.parametrize("name", ["目录", "🎉📁", "文件 名🚀", "Ünïcödé", "é-nfd-e\u0301"])
def test_session_unicode_names_everywhere(client, project, tmp_path, name):
    home = project.home("alice")
    client.call("mkdir", path=name)
    assert (home / name).is_dir()
    assert client.call("cd", path=name).data["cwd"] == f"/{name}"
    local = tmp_path / "upload.bin"
    local.write_bytes(f"contents of {name}".encode())
    put_file(client, local, f"{name}.txt")
    assert (home / name / f"{name}.txt").read_bytes() == local.read_bytes()
    entries = client.listdir()
    assert [(e["name"], e["type"]) for e in entries] == [(f"{name}.txt", "file")]
    assert "undecodable" not in entries[0]
    client.call("cd", path="/")
    assert names(client.listdir()) == [name]
    client.call("mv", src=f"{name}/{name}.txt", dst=f"{name}/改名-{name}")
    data = client.call("stat", path=f"/{name}/改名-{name}").data
    shown = (data["name"], data["type"], data["path"])
    assert shown == (f"改名-{name}", "file", f"/{name}/改名-{name}")
    back = tmp_path / f"down-{name}"
    get_file(client, f"{name}/改名-{name}", back)
    assert back.read_bytes() == local.read_bytes()
    client.call("rm", path=f"{name}/改名-{name}")
    client.call("rmdir", path=name)
    assert [p.name for p in home.iterdir() if p.name != ".ftpd"] == []


# --- many sessions at once ----------------------------------------------------------


def test_session_concurrent_users_stay_isolated(server_factory, project, tmp_path):
    srv = server_factory(max_per_ip=64, max_connections=64)
    users = ["alice", "alice2", "bob", "carol"]
    threads_per_user = 10
    start = threading.Barrier(len(users) * threads_per_user, timeout=30)

    def work(user: str, i: int) -> None:
        conn = Connection(srv.host, srv.port, timeout=20)
        try:
            conn.login(user, PASSWORDS[user])
            start.wait()
            folder = f"t{i}"
            conn.call("mkdir", path=folder)
            local = tmp_path / f"{user}-{i}.bin"
            payload = f"{user}:{i}:".encode() * (100 + i)
            local.write_bytes(payload)
            put_file(conn, local, f"{folder}/data.bin")
            listing = conn.listdir(folder)
            assert [(e["name"], e["size"]) for e in listing] == [("data.bin", len(payload))]
            back = tmp_path / f"{user}-{i}.back"
            get_file(conn, f"{folder}/data.bin", back)
            assert back.read_bytes() == payload
            conn.quit()
        finally:
            conn.close()

    with ThreadPoolExecutor(max_workers=len(users) * threads_per_user) as pool:
        futures = [pool.submit(work, u, i) for u in users for i in range(threads_per_user)]
        for future in futures:
            future.result(timeout=60)
    for user in users:
        home = project.home(user)
        visible = sorted(p.name for p in home.iterdir() if p.name != ".ftpd")
        assert visible == sorted(f"t{i}" for i in range(threads_per_user))
        for i in range(threads_per_user):
            assert (home / f"t{i}" / "data.bin").read_bytes() == f"{user}:{i}:".encode() * (100 + i)
            assert [p.name for p in (home / f"t{i}").iterdir()] == ["data.bin"]
    conn = srv.login("bob")
    assert sorted(names(conn.listdir())) == sorted(f"t{i}" for i in range(threads_per_user))
    conn.close()
