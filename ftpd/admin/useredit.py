"""Edit the users file for the admin CLI, keeping the admin's comments and layout.

One job: apply one change (add a user, set a password, quota or the disabled flag, delete
a user) to the hand-edited users YAML in ruamel.yaml round-trip mode, so that comments,
blank lines, key order and quoting survive, and swap the result in atomically while
holding an ``flock`` on ``<file>.lock``, so two admin commands at once lose no update.

Never leave a half-written or unverified users file in place: every edit goes to a temp
file beside the original, is read back with ``yaml.safe_load`` (as the daemon reads it)
and compared with the intended result, and only then replaces the original. On any error
the old file stays and the temp file is removed. Quota syntax and hashes are the caller's
to validate.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import stat
import tempfile
from collections.abc import Iterator
from io import StringIO
from pathlib import Path
from typing import Any

import yaml
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import CommentMark
from ruamel.yaml.error import YAMLError as RoundTripYAMLError
from ruamel.yaml.scalarstring import DoubleQuotedScalarString
from ruamel.yaml.tokens import CommentToken
from ruamel.yaml.util import load_yaml_guess_indent

logger = logging.getLogger(__name__)

_HEADER = (
    "# Users of the daemon. Passwords are passlib hashes; make one with `ftpd hash-password`.\n"
)
_NEW_FILE_MODE = 0o600  # the file holds password hashes
#: (comment list of one key, index of its "after this line" token): 2 in maps, 0 in sequences.
_Slot = tuple[list[Any], int]
#: The fields to set on one user (a ``None`` value unsets it), or ``None`` to delete the user.
_Change = dict[str, Any] | None


class UsersFileEditError(Exception):
    """The users file cannot be edited as asked; the message names the file (and line)."""


def add_user(path: Path, name: str, password_hash: str, quota: str | int | None) -> None:
    """Add ``name``; create the file (mode 0o600, with a header comment) if it is missing.

    Raises:
        UsersFileEditError: the user exists, or the file is unreadable or malformed.
    """
    fields = {"password": DoubleQuotedScalarString(password_hash), "quota": quota}
    _edit(Path(path), name, fields, add=True)


def set_password(path: Path, name: str, password_hash: str) -> None:
    """Replace the password hash of an existing user (written double-quoted)."""
    _edit(Path(path), name, {"password": DoubleQuotedScalarString(password_hash)})


def set_quota(
    path: Path, name: str, quota: str | int | None, max_files: int | None | bool = False
) -> None:
    """Set the quota as given (``"1GiB"`` or an int); ``None`` removes it (= unlimited).

    ``max_files``: an int sets the file quota, ``None`` removes it, ``False`` (the
    default) leaves it as it is.
    """
    change: dict[str, Any] = {"quota": quota}
    if max_files is not False:
        change["max_files"] = max_files
    _edit(Path(path), name, change)


def set_disabled(path: Path, name: str, disabled: bool) -> None:
    """Write ``disabled: true``, or remove the key when ``disabled`` is false."""
    _edit(Path(path), name, {"disabled": True if disabled else None})


def delete_user(path: Path, name: str) -> None:
    """Remove a user and its own lines; comments above other users are kept."""
    _edit(Path(path), name, None)


def _edit(path: Path, name: str, change: _Change, *, add: bool = False) -> None:
    """Apply one change under the lock: ``None`` deletes the user, a ``None`` value unsets."""
    path = Path(os.path.realpath(path))  # edit the target, so a symlinked file stays a link
    try:
        with _locked(path):
            text, st = _read(path, create=add)
            rt, doc, plain = _parse(path, text, create=add)
            _check(path, doc, name, change, add)
            _apply_rt(doc, name, change, add)
            _apply_plain(plain["users"], name, change, add)
            out = StringIO()
            rt.dump(doc, out)
            _replace(path, out.getvalue(), st, plain)
    except OSError as exc:
        raise UsersFileEditError(f"{path}: {exc.strerror or exc}") from exc
    logger.info("%s: %s user %r", path, "added" if add else "edited", name)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    # A lock file, not the users file itself: os.replace swaps the inode, so a second
    # writer waiting on the old inode would then edit a stale copy. Never deleted, as
    # removing it would race with a writer that has just opened it.
    fd = os.open(f"{path}.lock", os.O_RDWR | os.O_CREAT, _NEW_FILE_MODE)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _read(path: Path, *, create: bool) -> tuple[str, os.stat_result | None]:
    try:
        return path.read_text(encoding="utf-8"), path.stat()
    except FileNotFoundError:
        if not create:
            raise UsersFileEditError(f"{path}: no such users file") from None
        return "", None
    except UnicodeDecodeError as exc:
        raise UsersFileEditError(f"{path}: not UTF-8 text ({exc.reason})") from exc


def _parse(path: Path, text: str, *, create: bool) -> tuple[YAML, Any, dict[str, Any]]:
    """Load ``text`` twice: round-trip for editing, and plain as the daemon will see it."""
    rt = YAML()
    rt.preserve_quotes = True
    rt.width = 4096  # never fold a long hash onto a second line
    try:
        doc, indent, seq_indent = load_yaml_guess_indent(text, yaml=rt)
        plain = yaml.safe_load(text)
    except (RoundTripYAMLError, yaml.YAMLError) as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        where = f" line {mark.line + 1}:" if mark is not None else ""
        raise UsersFileEditError(f"{path}:{where} {getattr(exc, 'problem', None) or exc}") from exc
    if doc is None and create:  # empty or comments only: keep those, add a `users:` key
        base = text if text.strip() else _HEADER
        return _parse(path, base + ("" if base.endswith("\n") else "\n") + "users:\n", create=True)
    rt.indent(mapping=indent if indent and seq_indent is None else 2, sequence=4, offset=2)
    if not isinstance(doc, CommentedMap) or not isinstance(plain, dict):
        raise UsersFileEditError(f"{path}: the top level must be a mapping with a 'users' key")
    if plain.get("users") is None:
        plain["users"] = {}
    return rt, doc, plain


def _check(path: Path, doc: CommentedMap, name: str, change: _Change, add: bool) -> None:
    """Refuse a change that cannot apply; give an adding edit its ``users`` mapping."""
    if doc.get("users") is None and add:
        doc["users"] = CommentedMap()
    users = doc.get("users", CommentedMap())
    if not isinstance(users, CommentedMap | None):
        line = doc.lc.key("users")[0] + 1
        raise UsersFileEditError(f"{path}: line {line}: 'users' must be a mapping of names")
    if not users or name not in users:
        if not add:
            raise UsersFileEditError(f"{path}: no user {name!r}")
        return
    line = users.lc.key(name)[0] + 1
    if add:
        raise UsersFileEditError(f"{path}: line {line}: user {name!r} already exists")
    if change is not None and not isinstance(users[name], CommentedMap):
        raise UsersFileEditError(f"{path}: line {line}: user {name!r} is not a mapping")


def _apply_rt(doc: CommentedMap, name: str, change: _Change, add: bool) -> None:
    users = doc["users"]
    if change is None:
        _remove(doc, "users", name)
        return
    if add:
        users.fa.set_block_style()  # a hand-written `users: {}` would otherwise stay flow
        _append(doc, "users", name, CommentedMap())
    entry = users[name]
    for key, value in change.items():
        if value is None:
            if key in entry:
                _remove(users, name, key)
        elif key in entry:
            entry[key] = value  # in place: keeps its position and end-of-line comment
        else:
            _append(users, name, key, value)


def _apply_plain(users: dict[str, Any], name: str, change: _Change, add: bool) -> None:
    """Apply the change to the plain ``safe_load`` view: what the file must read back as."""
    if change is None:
        del users[name]
        return
    entry = users.setdefault(name, {}) if add else users[name]
    for key, value in change.items():
        if value is None:
            entry.pop(key, None)
        else:
            entry[key] = value


# ruamel stores the full-line comments that sit *between* two entries on the last line of
# the entry above, after that line's own end-of-line comment. Removing or appending after
# that entry must move them, or the comments of the next user would vanish or be split.


def _tail(parent: Any, key: Any) -> _Slot:
    """Where the comment after the last line of ``parent[key]`` is stored."""
    value = parent[key]
    if isinstance(value, CommentedMap) and value:
        return _tail(value, list(value)[-1])
    if isinstance(value, CommentedSeq) and value:
        return _tail(value, len(value) - 1)
    slots = parent.ca.items.setdefault(key, [None] * 4)
    return slots, 0 if isinstance(parent, CommentedSeq) else 2


def _take_rest(slot: _Slot) -> str:
    """Detach and return the full-line comments after a line's end-of-line comment."""
    items, i = slot
    if items[i] is None:
        return ""
    eol, _, rest = items[i].value.partition("\n")
    if rest:
        if eol:
            items[i].value = eol + "\n"
        else:
            items[i] = None
    return rest


def _put_rest(slot: _Slot, rest: str) -> None:
    items, i = slot
    if not rest:
        return
    if items[i] is None:
        items[i] = CommentToken("\n" + rest, CommentMark(0))  # leading "\n": no end-of-line part
    else:
        items[i].value = items[i].value.rstrip("\n") + "\n" + rest


def _append(owner: CommentedMap, owner_key: Any, key: Any, value: Any) -> None:
    """Append ``key`` to ``owner[owner_key]``, below the comments that followed its block."""
    rest = _take_rest(_tail(owner, owner_key))
    owner[owner_key][key] = value
    _put_rest(_tail(owner, owner_key), rest)


def _remove(owner: CommentedMap, owner_key: Any, key: Any) -> None:
    """Remove ``key`` from ``owner[owner_key]``, keeping the comments that followed it."""
    mapping = owner[owner_key]
    keys = list(mapping)
    rest = _take_rest(_tail(mapping, key))
    del mapping[key]
    mapping.ca.items.pop(key, None)
    pos = keys.index(key)
    if pos > 0:
        _put_rest(_tail(mapping, keys[pos - 1]), rest)
    elif mapping:  # it was first: its followers' comments now go before the new first key
        slots = owner.ca.items.setdefault(owner_key, [None] * 4)
        if rest:
            slots[3] = [*(slots[3] or []), CommentToken(rest, CommentMark(0))]
    else:  # now empty: block style cannot say "empty", and comments must follow the `{}`
        mapping.fa.set_flow_style()
        _put_rest(_tail(owner, owner_key), rest)


def _replace(path: Path, text: str, st: os.stat_result | None, expected: dict[str, Any]) -> None:
    """Write ``text`` beside ``path``, check it reads back as ``expected``, swap it in."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fchmod(f.fileno(), stat.S_IMODE(st.st_mode) if st else _NEW_FILE_MODE)
            if st is not None:  # best effort: root editing the daemon's file keeps its owner
                with contextlib.suppress(PermissionError):
                    os.fchown(f.fileno(), st.st_uid, st.st_gid)
            os.fsync(f.fileno())
        with open(tmp, encoding="utf-8") as f:
            try:
                ok = yaml.safe_load(f) == expected
            except yaml.YAMLError:
                ok = False
        if not ok:
            raise UsersFileEditError(f"{path}: the edit did not read back as intended; unchanged")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)
