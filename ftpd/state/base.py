"""What sessions share, as interfaces: the quota ledger and upload claims.

Today one process holds this state (``state.local``); a ledger and a claim table shared
by several daemons (a database) implement the same shapes.  Every limit check and every
change of a count happens inside one call, so no two callers can jointly pass a limit.

This module must never know about sessions, sockets or files: it counts and it locks.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Protocol

from ftpd.errors import QuotaExceededError
from ftpd.units import format_size


@dataclass(frozen=True)
class Limits:
    """A user's limits: bytes and entries (files + folders); None means unlimited."""

    nbytes: int | None = None
    entries: int | None = None


@dataclass(frozen=True)
class Usage:
    """What a user holds: ``used`` is at rest, ``reserved`` is held by running uploads."""

    used: int = 0
    reserved: int = 0
    entries: int = 0
    reserved_entries: int = 0


class Reservation(Protocol):
    """Room held by one operation; ``close`` turns it into what was really added, once."""

    def grow(self, nbytes: int) -> None: ...
    def take_entries(self, n: int) -> None: ...
    def close(self, nbytes: int, entries: int) -> None: ...


class Ledger(Protocol):
    """One user's counts, shared by all that user's sessions (and, later, nodes)."""

    def usage(self) -> Usage: ...
    def reserve(self, nbytes: int, entries: int, limits: Limits) -> Reservation: ...
    def adjust(self, nbytes: int, entries: int) -> None: ...
    def recount(self) -> bool: ...
    def changing(self) -> AbstractContextManager[None]: ...


class Ledgers(Protocol):
    """The ledgers of every user; ``recount`` is given to each ledger for its user."""

    def ledger(self, user: str, recount: Callable[[], tuple[int, int, bool]]) -> Ledger: ...
    def existing(self, user: str) -> Ledger | None: ...
    def recount_all(self) -> None: ...


class Claim(Protocol):
    """One holder's right to upload one target; ``touch`` says it is still receiving."""

    def touch(self) -> None: ...
    def release(self) -> None: ...


class Claims(Protocol):
    """One upload per target.  ``interrupt`` stops the holder a takeover replaces."""

    def claim(self, key: str, interrupt: Callable[[], None]) -> Claim: ...
    def held(self, key: str) -> bool: ...


def check_room(usage: Usage, nbytes: int, entries: int, limits: Limits) -> None:
    """Refuse what would pass ``limits``: one message and one set of data for every backend.

    Raises:
        QuotaExceededError: ``nbytes`` or ``entries`` more would pass ``limits``.
    """
    held = usage.used + usage.reserved
    if nbytes and limits.nbytes is not None and held + nbytes > limits.nbytes:
        room = max(0, limits.nbytes - held)
        raise QuotaExceededError(
            f"quota exceeded: {format_size(nbytes)} needed, {format_size(room)} free "
            f"of {format_size(limits.nbytes)}",
            available=room,
            limit=limits.nbytes,
            used=usage.used,
        )
    count = usage.entries + usage.reserved_entries
    if entries and limits.entries is not None and count + entries > limits.entries:
        raise QuotaExceededError(
            f"quota exceeded: at most {limits.entries} files and folders ({count} already)",
            available_files=max(0, limits.entries - count),
            max_files=limits.entries,
            files=usage.entries,
        )
