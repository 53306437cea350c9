"""Wildcards in put, get and rm: ``*``, ``?`` and ``[...]`` as a POSIX shell reads them.

Local patterns (``put *.log``) go through ``glob``; remote ones (``get logs/*.gz``,
``rm old/*.tmp``) are matched with ``fnmatch`` against a listing of the pattern's
folder, so only the last component of a remote pattern may hold wildcards.  As in a
shell, ``*`` does not match a leading dot unless the pattern starts with one.  A name
that exists literally is taken as itself (a file really called ``[1].txt``), and a
pattern that matches nothing is an error that names it.  Names from the server are kept
only if they are one plain path component, so a hostile listing cannot steer a write.
"""

from __future__ import annotations

import fnmatch
import glob
import os
import posixpath
import re
from pathlib import Path
from typing import Any

from ftp_client.connection import Connection
from ftpd import errors

_MAGIC = re.compile(r"[*?[]")


class PatternError(ValueError):
    """A pattern this client cannot expand (wildcards outside the last component)."""


def has_magic(text: str) -> bool:
    return _MAGIC.search(text) is not None


def no_match(pattern: str) -> errors.NotFoundError:
    return errors.NotFoundError(f"no match for {pattern}")


def expand_local(pattern: str) -> list[Path]:
    """Local paths matching ``pattern``, sorted; the pattern itself if it exists as named."""
    expanded = os.path.expanduser(pattern)
    if os.path.lexists(expanded):
        return [Path(expanded)]
    found = sorted(glob.glob(expanded))
    if not found:
        raise no_match(pattern)
    return [Path(p) for p in found]


def safe_name(name: object) -> bool:
    """One plain path component: not empty, not ``.``/``..``, no ``/``, NUL or backslash."""
    return (
        isinstance(name, str)
        and name not in ("", ".", "..")
        and not any(c in name for c in "/\\\x00")
    )


def expand_remote(conn: Connection, pattern: str) -> list[tuple[str, dict[str, Any]]]:
    """(remote path, listing entry) for each name matching ``pattern``, sorted by name.

    Raises:
        PatternError: wildcards before the last ``/``.
        NotFoundError: nothing matches (or the folder does not exist).
    """
    folder, sep, last = pattern.rstrip("/").rpartition("/")
    if has_magic(folder):
        raise PatternError(f"{pattern}: wildcards are allowed only after the last '/'")
    listing = (folder or "/") if sep else None
    entries = [
        e
        for e in conn.listdir(listing, show_all=last.startswith("."))
        if not e.get("undecodable") and safe_name(e.get("name"))
    ]
    # ``ls`` of a file lists that file: when that may be so, make sure it is a folder.
    maybe_file = (
        listing is not None
        and len(entries) == 1
        and entries[0]["name"] == posixpath.basename(folder)
    )
    if maybe_file and conn.call("stat", path=listing).data.get("type") != "dir":
        raise errors.ConflictError(f"{folder}: not a directory")
    prefix = folder + sep
    literal = [e for e in entries if e["name"] == last]
    matches = literal or [
        e
        for e in entries
        if fnmatch.fnmatchcase(e["name"], last)
        and (last.startswith(".") or not e["name"].startswith("."))
    ]
    if not matches:
        raise no_match(pattern)
    return [(prefix + e["name"], e) for e in sorted(matches, key=lambda e: e["name"])]
