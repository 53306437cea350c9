"""Tests for ftpd.useredit: round-trip edits of the hand-written users file, in tmp_path."""

from __future__ import annotations

import os
import stat
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from ftpd.admin import useredit
from ftpd.admin.useredit import UsersFileEditError

SAMPLE = """\
# Users of the daemon. Passwords are passlib hashes; make one with `ftpd hash-password`.
users:
  # Alice from accounting
  alice:
    password: "$2b$12$abc"   # bcrypt
    quota: 500MiB            # bytes as an int, or with a unit

  # Bob, contractor
  bob:
    password: "$2b$12$def"
    quota: 1GiB
    disabled: true           # optional
  # Carol
  carol:
    password: '$2b$12$ghi'
# the end
"""
COMMENT_LINES = [line for line in SAMPLE.splitlines() if "#" in line]
# A bcrypt-shaped hash: 60 characters, `$` separators, `.` and `/` in the salt+digest.
LONG_HASH = "$2b$12$" + "./AbCdEfGhIjKlMnOpQrStUvWxYz0123456789abcdefghijklmnopq"[:53]


@pytest.fixture
def users_file(tmp_path: Path) -> Path:
    path = tmp_path / "users.yaml"
    path.write_text(SAMPLE)
    return path


def _load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())["users"]


def _in_order(needles: list[str], haystack: list[str]) -> bool:
    it = iter(haystack)
    return all(any(line == needle for line in it) for needle in needles)


def test_long_hash_is_bcrypt_shaped() -> None:
    assert len(LONG_HASH) == 60 and LONG_HASH.count("$") == 3


def test_add_user_keeps_every_line_and_key_order(users_file: Path) -> None:
    useredit.add_user(users_file, "dave", LONG_HASH, "2GiB")
    lines = users_file.read_text().splitlines()
    assert _in_order(SAMPLE.splitlines(), lines)  # comments and blank lines, byte for byte
    users = _load(users_file)
    assert list(users) == ["alice", "bob", "carol", "dave"]
    assert users["dave"] == {"password": LONG_HASH, "quota": "2GiB"}
    assert lines[-1] == "# the end"  # a trailing comment stays at the end
    assert "    quota: 2GiB" in lines  # plain scalar
    assert f'    password: "{LONG_HASH}"' in lines  # double-quoted, not folded


def test_add_user_creates_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "users.yaml"
    useredit.add_user(path, "alice", LONG_HASH, 1024)
    assert path.read_text().startswith("# Users of the daemon.")
    assert _load(path) == {"alice": {"password": LONG_HASH, "quota": 1024}}
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


@pytest.mark.parametrize(
    "text",
    ["", "users:\n", "users: {}\n", "users: ~   # nobody yet\n", "# just a comment\n"],
)
def test_add_user_fills_empty_file_or_users_key(tmp_path: Path, text: str) -> None:
    path = tmp_path / "users.yaml"
    path.write_text(text)
    useredit.add_user(path, "alice", LONG_HASH, None)
    useredit.add_user(path, "bob", LONG_HASH, "1GiB")
    result = path.read_text()
    assert _load(path) == {
        "alice": {"password": LONG_HASH},
        "bob": {"password": LONG_HASH, "quota": "1GiB"},
    }
    assert "{" not in result  # block style, as an admin would write it
    for line in text.splitlines():
        if "#" in line:
            assert line[line.index("#") :] in result


def test_add_user_refuses_existing_name(users_file: Path) -> None:
    with pytest.raises(UsersFileEditError, match=r"users\.yaml: line 9: user 'bob' already exists"):
        useredit.add_user(users_file, "bob", LONG_HASH, None)
    assert users_file.read_text() == SAMPLE


def test_set_password_replaces_hash_and_keeps_comment(users_file: Path) -> None:
    useredit.set_password(users_file, "alice", LONG_HASH)
    assert _load(users_file)["alice"]["password"] == LONG_HASH
    line = users_file.read_text().splitlines()[4]
    assert line.startswith(f'    password: "{LONG_HASH}" ') and line.endswith("# bcrypt")


@pytest.mark.parametrize(
    ("quota", "line"), [("2GiB", "    quota: 2GiB"), (1048576, "    quota: 1048576")]
)
def test_set_quota_writes_text_or_int(users_file: Path, quota: str | int, line: str) -> None:
    useredit.set_quota(users_file, "carol", quota)
    assert _load(users_file)["carol"]["quota"] == quota
    assert line in users_file.read_text().splitlines()


def test_set_quota_replaces_in_place(users_file: Path) -> None:
    useredit.set_quota(users_file, "bob", "3GiB")
    assert list(_load(users_file)["bob"]) == ["password", "quota", "disabled"]
    assert _load(users_file)["bob"]["quota"] == "3GiB"


def test_set_quota_none_removes_key_and_keeps_next_comments(users_file: Path) -> None:
    useredit.set_quota(users_file, "alice", None)
    assert _load(users_file)["alice"] == {"password": "$2b$12$abc"}
    text = users_file.read_text()
    assert "# bytes as an int" not in text  # the removed line's own comment goes with it
    assert _in_order([line for line in COMMENT_LINES if "bytes as" not in line], text.splitlines())


def test_set_disabled_adds_then_removes_key(users_file: Path) -> None:
    useredit.set_disabled(users_file, "alice", True)
    assert _load(users_file)["alice"]["disabled"] is True
    assert _in_order(SAMPLE.splitlines(), users_file.read_text().splitlines())
    useredit.set_disabled(users_file, "alice", False)
    useredit.set_disabled(users_file, "bob", False)
    assert "disabled" not in _load(users_file)["alice"]
    assert "disabled" not in _load(users_file)["bob"]
    assert "  # Carol" in users_file.read_text().splitlines()


def test_set_disabled_false_when_absent_is_noop(users_file: Path) -> None:
    useredit.set_disabled(users_file, "carol", False)
    assert _load(users_file) == yaml.safe_load(SAMPLE)["users"]


@pytest.mark.parametrize(
    ("name", "own_comments"),
    [("alice", ["# bcrypt", "# bytes as"]), ("bob", ["# optional"]), ("carol", [])],
)
def test_delete_user_keeps_other_comments(
    users_file: Path, name: str, own_comments: list[str]
) -> None:
    useredit.delete_user(users_file, name)
    users = _load(users_file)
    assert name not in users and len(users) == 2
    kept = [c for c in COMMENT_LINES if not any(own in c for own in own_comments)]
    assert _in_order(kept, users_file.read_text().splitlines())
    for own in own_comments:
        assert own not in users_file.read_text()


def test_delete_user_last_one_leaves_empty_mapping(users_file: Path) -> None:
    for name in ("alice", "bob", "carol"):
        useredit.delete_user(users_file, name)
    assert _load(users_file) == {}
    useredit.add_user(users_file, "dave", LONG_HASH, None)
    assert _load(users_file) == {"dave": {"password": LONG_HASH}}
    assert users_file.read_text().splitlines()[0] == COMMENT_LINES[0]


@pytest.mark.parametrize(
    ("edit", "args"),
    [
        (useredit.set_password, (LONG_HASH,)),
        (useredit.set_quota, ("1GiB",)),
        (useredit.set_disabled, (True,)),
        (useredit.delete_user, ()),
    ],
)
def test_edit_unknown_user_raises(users_file: Path, edit: Callable[..., None], args: tuple) -> None:
    with pytest.raises(UsersFileEditError, match=r"users\.yaml: no user 'mallory'"):
        edit(users_file, "mallory", *args)
    assert users_file.read_text() == SAMPLE


def test_edit_missing_file_raises_unless_adding(tmp_path: Path) -> None:
    with pytest.raises(UsersFileEditError, match="no such users file"):
        useredit.set_quota(tmp_path / "users.yaml", "alice", 1)
    assert not (tmp_path / "users.yaml").exists()


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("users:\n  alice:\n    password: x\n  bob: x: y\n", 4),
        ("users:\n  alice:\n\tpassword: x\n", 3),
        ("users:\n  alice:\n    password: x\n  alice:\n    password: y\n", 4),
    ],
)
def test_edit_broken_yaml_names_file_and_line(tmp_path: Path, text: str, line: int) -> None:
    path = tmp_path / "users.yaml"
    path.write_text(text)
    with pytest.raises(UsersFileEditError, match=rf"users\.yaml: line {line}: "):
        useredit.add_user(path, "carol", LONG_HASH, None)
    assert path.read_text() == text


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("- alice\n", "top level must be a mapping"),
        ("users:\n  - alice\n", "line 1: 'users' must be a mapping"),
        ("users:\n  alice: 5\n", "line 2: user 'alice' is not a mapping"),
    ],
)
def test_edit_wrong_shape_raises(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "users.yaml"
    path.write_text(text)
    with pytest.raises(UsersFileEditError, match=message):
        useredit.set_quota(path, "alice", 1)
    assert path.read_text() == text


def test_edit_leaves_no_temp_files(users_file: Path) -> None:
    expected = {"users.yaml", "users.yaml.lock"}
    useredit.add_user(users_file, "dave", LONG_HASH, None)
    assert {p.name for p in users_file.parent.iterdir()} == expected
    with pytest.raises(UsersFileEditError):
        useredit.add_user(users_file, "dave", LONG_HASH, None)
    with pytest.raises(UsersFileEditError):
        useredit.add_user(users_file, "yes", LONG_HASH, None)  # fails read-back, see below
    assert {p.name for p in users_file.parent.iterdir()} == expected


def test_edit_that_reads_back_wrong_keeps_old_file(users_file: Path) -> None:
    # ruamel writes YAML 1.2, where `yes` is a string; the daemon's safe_load (YAML 1.1)
    # would read it as True. The read-back check must catch that and change nothing.
    with pytest.raises(UsersFileEditError, match="did not read back as intended"):
        useredit.add_user(users_file, "yes", LONG_HASH, None)
    assert users_file.read_text() == SAMPLE


def test_edit_keeps_file_mode(users_file: Path) -> None:
    users_file.chmod(0o640)
    useredit.set_quota(users_file, "alice", "1GiB")
    assert stat.S_IMODE(users_file.stat().st_mode) == 0o640


def test_edit_keeps_symlink(users_file: Path, tmp_path: Path) -> None:
    link = tmp_path / "link.yaml"
    link.symlink_to(users_file)
    useredit.set_quota(link, "alice", 7)
    assert link.is_symlink() and _load(users_file)["alice"]["quota"] == 7


def test_edit_keeps_four_space_indent(tmp_path: Path) -> None:
    path = tmp_path / "users.yaml"
    text = 'users:\n    alice:\n        password: "x"   # keep\n'
    path.write_text(text)
    useredit.add_user(path, "bob", "y", 5)
    assert path.read_text() == text + '    bob:\n        password: "y"\n        quota: 5\n'


def test_add_user_long_hash_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "users.yaml"
    useredit.add_user(path, "alice", LONG_HASH, None)
    useredit.set_password(path, "alice", LONG_HASH[::-1])
    assert _load(path)["alice"]["password"] == LONG_HASH[::-1]
    assert len(path.read_text().splitlines()) == 4  # header, users:, alice:, password


def test_add_user_concurrent_threads_all_land(users_file: Path) -> None:
    names = [f"user{i}" for i in range(8)]
    barrier = threading.Barrier(len(names))
    errors: list[BaseException] = []

    def add(name: str) -> None:
        try:
            barrier.wait(timeout=10)
            useredit.add_user(users_file, name, LONG_HASH, None)
        except BaseException as exc:  # noqa: BLE001 - reported to the main thread below
            errors.append(exc)

    threads = [threading.Thread(target=add, args=(name,)) for name in names]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not errors
    assert set(_load(users_file)) == {"alice", "bob", "carol", *names}
    assert _in_order(COMMENT_LINES, users_file.read_text().splitlines())
    assert sorted(os.listdir(users_file.parent)) == ["users.yaml", "users.yaml.lock"]
