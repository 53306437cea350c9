"""Sizes for people: parse ``500MiB`` / ``1GB`` and format bytes as ``1.5 KiB``.

The ground floor: the daemon's config, the users file, the admin CLI and the client all
use these.  This module must never import anything beyond the standard library, so that
importing the client pulls in neither passlib nor yaml.
"""

from __future__ import annotations

import re

_UNITS = {
    "": 1,
    "b": 1,
    "k": 1024,
    "kib": 1024,
    "m": 1024**2,
    "mib": 1024**2,
    "g": 1024**3,
    "gib": 1024**3,
    "t": 1024**4,
    "tib": 1024**4,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


def parse_size(value: object) -> int:
    """Bytes from an int or a string with a unit.

    ``K``/``KiB``, ``M``/``MiB``, ``G``/``GiB``, ``T``/``TiB`` are binary (1024-based);
    ``KB``, ``MB``, ``GB``, ``TB`` are decimal (1000-based), as in ``ls --si``.  Case is
    ignored.  Raises ValueError with a readable message.
    """
    if isinstance(value, bool):
        raise ValueError("a size must be a number of bytes, or a number with a unit")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("a size cannot be negative")
        return value
    match = _SIZE_RE.match(str(value)) if isinstance(value, str) else None
    if not match or match.group(2).lower() not in _UNITS:
        raise ValueError(
            f"bad size {value!r}: use bytes, or a unit such as 500MiB, 2GiB, 1GB (decimal)"
        )
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


def format_size(n: int) -> str:
    """Human-readable binary size: 0 B, 1.5 KiB, 500 MiB."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{int(size)} B" if unit == "B" else f"{size:.1f} {unit}".replace(".0 ", " ")
        size /= 1024
    raise AssertionError("unreachable")
