"""Listings and times in FTP's forms, sans-IO: ``ls -l`` lines, MLSx facts, MDTM stamps.

LIST answers in the ``ls -l`` form that FileZilla, WinSCP and lftp parse; MLSD and MLST
give RFC 3659 facts (type, size, modify, perm, unique).  A name is shown as text that
can never break a client or a listing: bytes that are not UTF-8 on disk and control
characters (a newline in a name would forge a listing line) become ``\\xNN`` escapes,
as the framed protocol shows them.

This module must never touch a socket, a file or the clock (callers pass ``now``).
"""

from __future__ import annotations

import calendar
import hashlib
import os
import re
import stat as stat_mod
import time

from ftpd.storage.base import Entry

#: The facts MLSx can give, in FEAT's order; all are on by default.
FACTS = ("type", "size", "modify", "perm", "unique")
_CONTROL = re.compile("[\x00-\x1f\x7f]")
_SIX_MONTHS_S = 182 * 24 * 3600
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_KIND_CHAR = {"dir": "d", "link": "l", "other": "p", "unknown": "?"}


def display_name(name: str) -> str:
    """A name safe inside a listing line: undecodable bytes and controls as ``\\xNN``."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        name = os.fsencode(name).decode("utf-8", "backslashreplace")
    if _CONTROL.search(name):
        name = _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", name)
    return name


def ls_line(entry: Entry, owner: str, now: float) -> str:
    """One ``ls -l`` line: ``-rw-r--r-- 1 owner owner 1234 Nov 22 10:00 name``."""
    mode = _KIND_CHAR.get(entry.kind, "-") + stat_mod.filemode(entry.mode)[1:]
    if entry.kind == "link":
        mode = "lrwxrwxrwx"
    stamp = time.gmtime(entry.mtime)
    month = _MONTHS[stamp.tm_mon - 1]
    if abs(now - entry.mtime) < _SIX_MONTHS_S:
        when = f"{month} {stamp.tm_mday:2d} {stamp.tm_hour:02d}:{stamp.tm_min:02d}"
    else:
        when = f"{month} {stamp.tm_mday:2d}  {stamp.tm_year}"
    links = 2 if entry.kind == "dir" else 1
    name = display_name(entry.name)
    return f"{mode} {links:>3} {owner:<8} {owner:<8} {entry.size:>12} {when} {name}"


def mdtm(mtime: float) -> str:
    """RFC 3659 time-val in UTC: ``YYYYMMDDHHMMSS``."""
    return time.strftime("%Y%m%d%H%M%S", time.gmtime(max(0.0, mtime)))


def parse_mdtm(text: str) -> float:
    """``YYYYMMDDHHMMSS[.sss]`` (UTC) -> seconds since the epoch.

    Raises:
        ValueError: not such a time.
    """
    main, _, frac = text.strip().partition(".")
    if len(main) != 14 or not main.isdigit() or (frac and not frac.isdigit()):
        raise ValueError("expected a time YYYYMMDDHHMMSS (UTC)")
    parsed = time.strptime(main, "%Y%m%d%H%M%S")
    return calendar.timegm(parsed) + (float("0." + frac) if frac else 0.0)


def facts(entry: Entry, unique: str, wanted: tuple[str, ...] = FACTS, kind: str = "") -> str:
    """MLSx facts then a space and the name: ``type=file;size=3;... name``.

    ``kind`` overrides the type fact (``cdir`` for MLST of the folder itself, RFC 3659).
    """
    out = []
    if "type" in wanted:
        out.append("type=" + (kind or _mlsx_type(entry.kind)))
    if "size" in wanted and entry.kind != "dir":
        out.append(f"size={entry.size}")
    if "modify" in wanted:
        out.append("modify=" + mdtm(entry.mtime))
    if "perm" in wanted:
        out.append("perm=" + ("flcdmpe" if entry.kind == "dir" else "adfrw"))
    if "unique" in wanted:
        out.append("unique=" + unique)
    return ";".join(out) + "; " + display_name(entry.name)


def _mlsx_type(kind: str) -> str:
    if kind == "dir":
        return "dir"
    if kind == "link":
        return "OS.unix=slink"
    return "file" if kind == "file" else "OS.unix=" + kind


def unique_id(user: str, vpath: str) -> str:
    """A stable id per user and path (the ``unique`` fact; the storage has no inodes)."""
    raw = f"{user}\0{vpath}".encode("utf-8", "surrogateescape")
    return hashlib.blake2b(raw, digest_size=8).hexdigest()


def parse_facts(text: str) -> tuple[str, ...]:
    """OPTS MLST's list -> the known facts asked for, in FACTS order."""
    asked = {f.strip().lower() for f in text.split(";") if f.strip()}
    return tuple(f for f in FACTS if f in asked)
