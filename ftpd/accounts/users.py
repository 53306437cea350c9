"""Accounts: the YAML users file, password verification, and size units.

All password handling lives here and nowhere else (STYLE: "confine passwords to
users.py").  This module must never log, return or store a plaintext password.
"""

from __future__ import annotations

import time
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from passlib.context import CryptContext

from ftpd import yamldoc
from ftpd.errors import ConfigError
from ftpd.units import parse_size

#: bcrypt for new hashes; the others still verify and are flagged for re-hashing.
CONTEXT = CryptContext(
    schemes=["bcrypt", "pbkdf2_sha256", "sha512_crypt", "sha256_crypt", "md5_crypt"],
    default="bcrypt",
    deprecated="auto",
)

_USER_FIELDS = {"password", "quota", "disabled"}
MAX_NAME = 64


def check_name(name: object) -> str | None:
    """Why ``name`` is not a valid user name, or None when it is."""
    if not isinstance(name, str) or not name:
        return "a user name must be a non-empty string"
    if len(name) > MAX_NAME:
        return f"a user name has at most {MAX_NAME} characters"
    if "/" in name or "\\" in name or name in (".", "..") or name.startswith("."):
        return "a user name cannot contain '/' or '\\' or start with '.'"
    if any(unicodedata.category(c)[0] in "CZ" for c in name):
        return "a user name cannot contain spaces or control characters"
    return None


def hash_password(password: str) -> str:
    """A new hash with the default scheme (bcrypt)."""
    return CONTEXT.hash(password)


def is_known_hash(value: str) -> bool:
    """Whether ``value`` is a whole hash of a scheme we verify (not merely its prefix).

    ``identify`` only looks at the prefix, so a truncated paste such as ``$2b$12$abc``
    would load fine and then never verify: parse it and require a checksum as well.
    """
    scheme = CONTEXT.identify(value)
    if scheme is None:
        return False
    try:
        parsed = CONTEXT.handler(scheme).from_string(value)
    except ValueError:
        return False
    return getattr(parsed, "checksum", None) is not None


_dummy_costs: dict[int, list[float]] = {}  # per context (tests swap in cheap ones)


def _dummy_verify() -> None:
    """``CONTEXT.dummy_verify()``, timed: the cost every failure is padded to."""
    started = time.perf_counter()
    CONTEXT.dummy_verify()
    costs = _dummy_costs.setdefault(id(CONTEXT), [])
    costs.append(time.perf_counter() - started)
    del costs[:-9]  # the last few are enough for a median


def _dummy_verify_s() -> float:
    if not _dummy_costs.get(id(CONTEXT)):
        _dummy_verify()
    costs = sorted(_dummy_costs[id(CONTEXT)])
    return costs[len(costs) // 2]


@dataclass(frozen=True)
class User:
    name: str
    password_hash: str
    quota_bytes: int | None  # None: unlimited
    disabled: bool = False


class UserStore:
    """An immutable snapshot of the users file.  Reload builds a new one and swaps it in.

    Shared read-only by every session thread; nothing mutates it after construction.
    """

    def __init__(self, users: dict[str, User], path: Path | None = None) -> None:
        self.users = users
        self.path = path

    def __len__(self) -> int:
        return len(self.users)

    def get(self, name: str) -> User | None:
        return self.users.get(name)

    def authenticate(self, name: str, password: str) -> User | None:
        """The user if the password matches and the account is enabled, else None.

        An unknown or disabled user costs a ``dummy_verify`` (the default scheme and
        cost).  A wrong password against a cheaper hash (an old scheme, a low cost) is
        padded to that same cost, so no failure answers faster than a name that does
        not exist.
        """
        started = time.perf_counter()
        user = self.users.get(name)
        if user is None or user.disabled:
            _dummy_verify()
            return None
        try:
            ok = CONTEXT.verify(password, user.password_hash)
        except (ValueError, TypeError):
            ok = False
        if not ok:
            time.sleep(max(0.0, _dummy_verify_s() - (time.perf_counter() - started)))
        return user if ok else None

    @classmethod
    def load(cls, path: Path) -> "UserStore":
        """Load and validate the whole file; any problem rejects it whole.

        Raises:
            ConfigError: listing every problem with file, line and key.
        """
        doc = yamldoc.load(path)
        problems: list[tuple[str, int | None, str, str]] = []
        data = doc.data if doc.data is not None else {}
        if not isinstance(data, dict) or set(data) - {"users"}:
            extra = sorted(set(data) - {"users"}) if isinstance(data, dict) else []
            key = str(extra[0]) if extra else ""
            problems.append(doc.problem("the file must hold one 'users:' mapping", key))
            raise ConfigError(problems)
        table = data.get("users") or {}
        if not isinstance(table, dict):
            raise ConfigError([doc.problem("'users' must be a mapping of name: fields", "users")])
        users: dict[str, User] = {}
        for name, fields in table.items():
            user = _parse_user(doc, name, fields, problems)
            if user is not None:
                users[user.name] = user
        if problems:
            raise ConfigError(problems)
        return cls(users, path)


def _parse_user(doc: yamldoc.Doc, name: object, fields: object, problems: list) -> User | None:
    key = ("users", str(name))
    why = check_name(name)
    if why:
        problems.append(doc.problem(why, *key))
        return None
    if not isinstance(fields, dict):
        problems.append(doc.problem("must be a mapping with 'password' and 'quota'", *key))
        return None
    before = len(problems)
    for extra in sorted(set(map(str, fields)) - _USER_FIELDS):
        problems.append(doc.problem(f"unknown key (expected {sorted(_USER_FIELDS)})", *key, extra))
    password = fields.get("password")
    if not isinstance(password, str) or not password:
        problems.append(doc.problem("missing password hash", *key, "password"))
    elif not is_known_hash(password):
        problems.append(
            doc.problem(
                "not a recognised password hash (plaintext?); make one with 'ftpd hash-password'",
                *key,
                "password",
            )
        )
    quota: int | None = None
    if fields.get("quota") is not None:
        try:
            quota = parse_size(fields["quota"])
        except ValueError as exc:
            problems.append(doc.problem(str(exc), *key, "quota"))
    disabled = fields.get("disabled", False)
    if not isinstance(disabled, bool):
        problems.append(doc.problem("must be true or false", *key, "disabled"))
    if len(problems) > before:
        return None
    return User(str(name), str(password), quota, bool(disabled))
