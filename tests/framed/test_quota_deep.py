"""The deep-path quota hole: bytes whose real path is longer than PATH_MAX must count.

A virtual path may be 4096 characters and a name 255 bytes, but the home's own real path
comes on top, and ``mv`` can hang a whole tree under another deep chain: the files then
sit at a real path far over PATH_MAX (4096 bytes), where no name-based syscall reaches
them (``ENAMETOOLONG``).  A quota that is counted by name skips them silently, so carol
(1 MiB) could hold any amount.  Here carol builds such a tree over the wire only, and
the tests check, against the disk read by descriptor (``os.fwalk``):

* ``quota`` reports every byte (its ``used`` is re-counted from the disk);
* an upload that would pass 1 MiB in total is ``413``, one that fits exactly is not;
* a second server started on the same project counts the same bytes;
* an upload at a legal virtual path (under 4096 characters) whose real path is over
  PATH_MAX works;
* ``mkdir -p`` at and around the length limits either works or is a clean ``400``,
  never a ``500``.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from ftp_client.connection import Connection
from ftpd import errors
from tests.conftest import RunningServer

KiB = 1024
LIMIT = 1024 * KiB  # carol's quota in the fixture's users.yaml
PATH_MAX = 4096
MAX_VPATH = 4096  # the daemon's limit on a virtual path, in characters
NAME = 250  # the length of each long component (names may be up to 255 bytes)

#: The chain ``/a/...`` is built (and filled) while shallow, then moved under ``/b/...``.
A_DEPTH = 8
B_DEPTH = 9
#: An upload after the move goes to ``/b/.../a/<first AFTER_K of A>/g``, 4082 characters.
AFTER_K = 7
AFTER_DIR_LEN = 4080


def md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def long_name(tag: str, length: int = NAME) -> str:
    return (tag + "-" + "x" * length)[:length]


def join(*parts: str) -> str:
    return "/" + "/".join(p.strip("/") for p in parts if p.strip("/"))


def disk_usage(root: Path) -> tuple[int, int]:
    """(bytes of regular files, longest real path in bytes) under ``root``, by descriptor.

    ``os.fwalk`` opens every folder relative to its parent's descriptor, so it reaches
    files whose real path is over PATH_MAX.
    """
    total, longest = 0, 0
    for folder, _dirs, files, dir_fd in os.fwalk(root):
        for name in files:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            if (st.st_mode & 0o170000) == 0o100000:
                total += st.st_size
            longest = max(longest, len(os.fsencode(os.path.join(folder, name))))
    return total, longest


def fatal(exc: errors.FTPError) -> bool:
    return exc.fatal or exc.code >= 500


def put(conn: Connection, vpath: str, data: bytes) -> Any:
    return conn.call("put", body=data, path=vpath, size=len(data), checksum=md5(data))


@dataclass
class Deep:
    """carol's deep tree, as built over the wire."""

    home: Path
    a_dir: str  # where /a's deepest folder is now (virtual, over 4096 characters)
    after_dir: str  # a folder inside the moved tree at a legal virtual path
    stored: int = 0  # bytes carol's uploads put on disk (acknowledged with 200)
    moved: bool = False
    after_upload: errors.FTPError | None = None
    notes: list[str] = field(default_factory=list)


def build_deep_tree(conn: Connection, home: Path) -> Deep:
    """mkdir -p two deep chains, fill the first, hang it under the second, upload more."""
    a_chain = [long_name(f"a{i}") for i in range(A_DEPTH)]
    # The first component of /b pads the moved tree so that AFTER_DIR_LEN is hit exactly.
    b_rest = [long_name(f"b{i}") for i in range(1, B_DEPTH + 1)]
    fixed = len(join("b", *b_rest, "a", *a_chain[:AFTER_K])) + 1
    b_chain = [long_name("b0", AFTER_DIR_LEN - fixed), *b_rest]
    assert 1 <= len(b_chain[0]) <= 255

    a_deep = join("a", *a_chain)
    b_deep = join("b", *b_chain)
    assert len(a_deep) < MAX_VPATH and len(b_deep) < MAX_VPATH
    conn.call("mkdir", path=a_deep, parents=True)
    conn.call("mkdir", path=b_deep, parents=True)

    deep = Deep(home, join(b_deep, "a", *a_chain), join(b_deep, "a", *a_chain[:AFTER_K]))
    assert len(deep.after_dir) == AFTER_DIR_LEN
    real_home = len(os.fsencode(os.path.realpath(home)))
    assert real_home + 1 + len(deep.after_dir) > PATH_MAX, (
        "the after-move folder must be past PATH_MAX"
    )
    assert len(deep.a_dir) > MAX_VPATH, "the moved files must be deeper than any virtual path"

    # Shallow while filled: every daemon can store these.
    for i in range(3):
        data = os.urandom(200 * KiB)
        put(conn, join(a_deep, f"f{i}"), data)
        deep.stored += len(data)
    # The tree goes under the other chain: its files are now past PATH_MAX.  (A daemon
    # may refuse such a move cleanly; then nothing is past PATH_MAX and it is counted.)
    try:
        conn.call("mv", src="/a", dst=b_deep)
        deep.moved = True
    except errors.FTPError as exc:
        assert not fatal(exc), f"server fault on the mv: {exc.code} {exc.name} {exc.message}"
        assert exc.code in (400, 403, 409), f"mv refused with {exc.code} {exc.name}"
        deep.notes.append(f"mv refused: {exc.code} {exc.name}")
    # An upload inside the moved tree, at a legal virtual path (4082 characters).
    data = os.urandom(100 * KiB)
    try:
        put(conn, join(deep.after_dir, "g"), data)
        deep.stored += len(data)
    except errors.FTPError as exc:
        assert not fatal(exc), f"server fault on a deep upload: {exc.code} {exc.name} {exc.message}"
        deep.after_upload = exc
    on_disk, longest = disk_usage(home)
    if deep.moved:
        assert longest > PATH_MAX, f"files must now be past PATH_MAX (longest real path {longest})"
    assert on_disk == deep.stored, f"disk holds {on_disk} bytes, carol stored {deep.stored}"
    return deep


@pytest.fixture
def carol(server: RunningServer) -> Iterator[Connection]:
    conn = server.login("carol")
    yield conn
    conn.close()


@pytest.fixture
def deep(server: RunningServer, carol: Connection) -> Deep:
    return build_deep_tree(carol, server.project.home("carol"))


def quota(conn: Connection) -> dict[str, Any]:
    return conn.call("quota").data


# --- counting ----------------------------------------------------------------------------


def test_quota_deep_counts_bytes_past_path_max(carol: Connection, deep: Deep) -> None:
    q = quota(carol)
    assert q["used"] == deep.stored, (
        f"quota used={q['used']} but carol holds {deep.stored} bytes on disk "
        f"(files whose real path is over PATH_MAX are not counted)"
    )
    assert q["available"] == LIMIT - deep.stored


def test_quota_deep_upload_past_the_limit_is_413(carol: Connection, deep: Deep) -> None:
    quota(carol)  # the documented re-count from the disk must not forget the deep bytes
    room = LIMIT - deep.stored
    too_much = os.urandom(room + 1)
    with pytest.raises(errors.QuotaExceededError) as info:
        put(carol, "/over.bin", too_much)
    assert info.value.code == 413 and info.value.data["used"] == deep.stored
    assert not (deep.home / "over.bin").exists()
    fits = os.urandom(room)
    put(carol, "/fits.bin", fits)  # exactly the room left: not refused
    assert quota(carol)["used"] == LIMIT
    assert disk_usage(deep.home)[0] == LIMIT


def test_quota_deep_fresh_server_counts_the_same_bytes(
    server_factory: Callable[..., RunningServer], carol: Connection, deep: Deep
) -> None:
    second = server_factory()  # another server on the same project: its ledger starts from disk
    with second.login("carol") as fresh:
        assert quota(fresh)["used"] == deep.stored, "a fresh count from disk misses the deep bytes"
        with pytest.raises(errors.QuotaExceededError):
            put(fresh, "/over.bin", os.urandom(LIMIT - deep.stored + 1))
    assert disk_usage(deep.home)[0] == deep.stored


def test_quota_deep_upload_at_legal_virtual_path_past_path_max_works(
    carol: Connection, deep: Deep
) -> None:
    """4082 characters is a legal virtual path; the real path's length is the daemon's business."""
    if not deep.moved:
        pytest.skip(f"the daemon refused to move the tree there ({deep.notes})")
    assert deep.after_upload is None, (
        f"put {len(deep.after_dir) + 2}-character path refused: "
        f"{deep.after_upload.code} {deep.after_upload.name} {deep.after_upload.message}"
    )
    got = carol.call("stat", path=join(deep.after_dir, "g")).data
    assert (got["type"], got["size"]) == ("file", 100 * KiB)
    names = [e["name"] for e in carol.listdir(deep.after_dir)]
    assert "g" in names


# --- mkdir -p at the limits ---------------------------------------------------------------


def _chain(total: int, name_len: int, char: str = "d") -> str:
    """An absolute path of exactly ``total`` characters, names of ``name_len`` characters."""
    parts, length = [], 0
    while length < total:
        n = min(name_len, total - length - 1)
        if total - (length + 1 + n) == 1:  # never leave room for a bare "/"
            n -= 1
        name = (f"{len(parts)}" + char * name_len)[:n]
        parts.append(name)
        length += 1 + len(name)
    path = "/" + "/".join(parts)
    assert len(path) == total, (len(path), total)
    return path


CASES = {
    # id: (path, must_be_400)
    "ascii-4096": (_chain(4096, 255), False),
    "ascii-4095": (_chain(4095, 200), False),
    "ascii-4097": (_chain(4097, 255), True),
    "name-256": ("/" + "n" * 256, True),
    # 4096 characters, but two bytes each: a real path of ~8 KiB.
    "utf8-2byte-4096": (_chain(4096, 127, "é"), False),
    # Four bytes each (63 per 252-byte name): ~16 KiB.
    "utf8-4byte-4096": (_chain(4096, 63, "\U0001f600"), False),
    "utf8-name-256-bytes": ("/" + "é" * 128, True),
}


@pytest.mark.parametrize("case", list(CASES))
def test_quota_deep_mkdir_p_at_the_limit_works_or_is_400(
    carol: Connection, server: RunningServer, case: str
) -> None:
    path, must_be_400 = CASES[case]
    home = server.project.home("carol")
    try:
        carol.call("mkdir", path=path, parents=True)
        made = True
    except errors.FTPError as exc:
        assert not fatal(exc), (
            f"mkdir -p ({case}) is a server fault: {exc.code} {exc.name} {exc.message}"
        )
        assert exc.code == 400, f"mkdir -p ({case}) must work or be 400, got {exc.code} {exc.name}"
        made = False
    if must_be_400:
        assert not made, f"mkdir -p ({case}) is over the documented limits and must be 400"
    if made:
        assert carol.call("stat", path=path).data["type"] == "dir"
        carol.call("cd", path=path)
        assert carol.call("pwd").data["cwd"] == path
    # Whatever happened, the session and the quota still work.
    assert quota(carol)["used"] == 0
    assert disk_usage(home)[0] == 0


def test_quota_deep_relative_mkdir_from_a_deep_cwd_works_or_is_400(carol: Connection) -> None:
    """The relative path is short enough, but joined with the cwd it is over 4096."""
    deep_cwd = _chain(3000, 250)
    carol.call("mkdir", path=deep_cwd, parents=True)
    carol.call("cd", path=deep_cwd)
    relative = _chain(2000, 250)[1:]
    try:
        carol.call("mkdir", path=relative, parents=True)
    except errors.FTPError as exc:
        assert not fatal(exc), f"server fault: {exc.code} {exc.name} {exc.message}"
        assert exc.code == 400, f"got {exc.code} {exc.name}"
    assert carol.call("pwd").data["cwd"] == deep_cwd
    data = b"z" * 1000
    put(carol, "leaf", data)  # the cwd (3000 characters) is fine for an upload
    assert quota(carol)["used"] == 1000
