"""Listings on the hot path (issue 11) still see every unfinished upload at once.

``ls`` skips its lookup when the user has no unfinished upload, and the local tree keeps
each partial's target by name instead of reading it again: a partial made, grown, finished
or given up by another session, or by another process (a tree of its own), must still show
in the very next listing and ``stat``, with the bytes it holds now.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from ftpd.core.files import FileService
from ftpd.core.services import Services
from ftpd.errors import NotFoundError, PathEscapeError
from ftpd.storage.base import Entry
from ftpd.storage.local import PARTIAL_DIR
from tests.conftest import Project
from tests.services.conftest import Build, session, user_fields

DATA = bytes(range(256)) * 4  # 1024 bytes


@pytest.fixture
def services(build: Build) -> Services:
    return build(users=user_fields(alice={"quota": 100_000}))


@pytest.fixture
def home(project: Project) -> Path:
    return project.home("alice")


def listed(files: FileService, vpath: str = "/d") -> dict[str, Entry]:
    return {e.name: e for e in files.listing(vpath)[1]}


def marks(files: FileService, vpath: str = "/d") -> dict[str, tuple[int | None, int | None]]:
    return {name: (e.partial, e.expected) for name, e in listed(files, vpath).items()}


@pytest.mark.parametrize("other_process", [False, True], ids=["session", "process"])
def test_a_partial_of_another_session_shows_in_the_next_ls(
    build: Build, services: Services, home: Path, other_process: bool
) -> None:
    """Every step of another session's upload is seen by the next ``ls`` and ``stat``."""
    mine = session(services)
    # Another process has its own trees (and whatever they remember): a second Services.
    theirs = session(build() if other_process else services)
    mine.mkdir("/d")
    (home / "d" / "old").write_bytes(b"x")
    assert marks(mine) == {"old": (None, None)}  # no unfinished upload: the quick way

    up = theirs.upload("/d/new", len(DATA))
    up.write(memoryview(DATA[:100]))
    assert marks(mine) == {"new": (100, len(DATA)), "old": (None, None)}
    assert listed(mine)["new"].size == 100
    up.write(memoryview(DATA[100:300]))  # the same partial grows: its size is read again
    assert marks(mine)["new"] == (300, len(DATA))
    _, entry, checksum = mine.stat("/d/new")
    assert (entry.partial, entry.size, checksum) == (300, 300, None)

    replacing = theirs.upload("/d/old", 10)  # a finished file being replaced is marked
    replacing.write(memoryview(b"y" * 4))
    assert marks(mine) == {"new": (300, len(DATA)), "old": (4, 10)}
    replacing.abort()
    assert marks(mine)["old"] == (4, 10)  # kept for a resume

    up.write(memoryview(DATA[300:]))
    up.commit(hashlib.md5(DATA).hexdigest())
    assert marks(mine) == {"new": (None, None), "old": (4, 10)}
    assert listed(mine)["new"].size == len(DATA)

    theirs.rm("/d/old")  # gives the unfinished upload up with the file
    assert marks(mine) == {"new": (None, None)}
    assert marks(mine, "/") == {"d": (None, None)}


def test_a_name_only_a_partial_holds_is_listed_and_statted(services: Services) -> None:
    mine, theirs = session(services), session(services)
    mine.mkdir("/d")
    assert marks(mine) == {}
    up = theirs.upload("/d/only", 50)
    up.write(memoryview(b"z" * 20))
    up.abort()
    assert marks(mine) == {"only": (20, 50)}
    assert [e.name for e in mine.listing("/d/only")[1]] == ["only"]
    _, entry, _ = mine.stat("/d/only")
    assert (entry.kind, entry.size, entry.partial, entry.expected) == ("file", 20, 20, 50)
    theirs.rm("/d/only")
    assert marks(mine) == {}
    with pytest.raises(NotFoundError):
        mine.stat("/d/only")


def test_a_partial_removed_behind_the_trees_back_disappears(services: Services, home: Path) -> None:
    """An admin (or ``ftpd storage gc`` in another process) removes partial files."""
    files = session(services)
    files.mkdir("/d")
    up = files.upload("/d/f", 50)
    up.write(memoryview(b"z" * 20))
    up.abort()
    assert marks(files) == {"f": (20, 50)}
    for name in os.listdir(home / PARTIAL_DIR):
        os.unlink(home / PARTIAL_DIR / name)
    assert marks(files) == {}


def test_listing_makes_no_partial_folder(services: Services, home: Path) -> None:
    files = session(services, count_now=False)
    files.mkdir("/d")
    assert files.listing("/")[1] and files.listing("/d")[1] == []
    files.stat("/d")
    assert not (home / ".ftpd" / "partial").exists()


def test_listing_answers_and_errors_as_before(services: Services, home: Path) -> None:
    files = session(services)
    files.mkdir("/d/e", parents=True)
    (home / "d" / "f").write_bytes(b"abc")
    (home / "d" / ".hidden").write_bytes(b"")
    os.symlink("e", home / "d" / "link")  # a link inside: listed as what it leads to
    os.symlink("/etc", home / "d" / "out")  # a link out: listed, never followed
    shown, entries = files.listing("d/./e/../")
    assert shown == "/d"
    assert [(e.name, e.kind) for e in entries] == [
        ("e", "dir"),
        ("f", "file"),
        ("link", "dir"),
        ("out", "link"),
    ]
    assert [e.name for e in files.listing("/d", show_all=True)[1]][0] == ".hidden"
    shown, entries = files.listing("/d/f")  # a file: its one entry
    assert (shown, [(e.name, e.size) for e in entries]) == ("/d/f", [("f", 3)])
    assert files.listing("/d/link")[1] == []  # through the link: the empty folder
    with pytest.raises(NotFoundError, match="^/d/nope: no such file or directory$"):
        files.listing("/d/nope")
    with pytest.raises(NotFoundError, match="^/nope/x: "):
        files.listing("/nope/x")
    with pytest.raises(PathEscapeError, match="^/d/out: "):
        files.listing("/d/out")
    with pytest.raises(PathEscapeError):
        files.listing("/.ftpd")
