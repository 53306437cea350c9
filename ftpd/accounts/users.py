"""Accounts: the YAML users file, password verification, and size units.

All password handling lives here and nowhere else (STYLE: "confine passwords to
users.py").  This module must never log, return or store a plaintext password.
"""

from __future__ import annotations

import threading
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

_USER_FIELDS = {"password", "quota", "max_files", "disabled"}
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


_DUMMY_SECRET = "not a password; only its verification cost matters"
_WARM_UP_SAMPLES = 2  # timed verifications when a context is first used (after its hash)
_WINDOW = 9  # the most recent timings kept; their median is what a failure costs


class _DummyCost:
    """The cost of one password verification under a context, and a hash to spend it on.

    Measured up front (``_dummy_cost`` runs when a ``UserStore`` is built), so the first
    failed login already costs what later ones do: passlib's own ``dummy_verify`` makes
    its dummy hash lazily, which made the first failure cost a hash *and* a verify, and
    the first padding target was that inflated figure.  Every later dummy verification
    adds a sample, so the target follows the machine's load.
    """

    def __init__(self, context: CryptContext) -> None:
        self.context = context
        self.hash = context.hash(_DUMMY_SECRET)  # also loads the scheme's backend: untimed
        self._lock = threading.Lock()
        self._samples: list[float] = []
        for _ in range(_WARM_UP_SAMPLES):
            self.verify(_DUMMY_SECRET)

    def verify(self, password: str) -> None:
        """Verify ``password`` against the dummy hash (the outcome is irrelevant), timed."""
        started = time.perf_counter()
        try:
            self.context.verify(password, self.hash)
        except (ValueError, TypeError):
            pass  # refused before hashing, as it would be against a real hash
        else:
            elapsed = time.perf_counter() - started
            with self._lock:
                self._samples.append(elapsed)
                del self._samples[:-_WINDOW]

    def seconds(self) -> float:
        """The median of the recent timings: what every failure is padded to."""
        with self._lock:
            samples = sorted(self._samples)
        return samples[len(samples) // 2]


# Per context object (tests swap in cheaper ones); holding the context keeps its id unique.
_dummy_costs: dict[int, _DummyCost] = {}
_dummy_costs_lock = threading.Lock()


def _dummy_cost() -> _DummyCost:
    """The measured dummy verification of the current ``CONTEXT``, measuring it if new."""
    context = CONTEXT
    cost = _dummy_costs.get(id(context))
    if cost is None or cost.context is not context:
        with _dummy_costs_lock:  # one measurement even if sessions ask at once
            cost = _dummy_costs.get(id(context))
            if cost is None or cost.context is not context:
                cost = _dummy_costs[id(context)] = _DummyCost(context)
    return cost


@dataclass(frozen=True)
class User:
    name: str
    password_hash: str
    quota_bytes: int | None  # None: unlimited
    disabled: bool = False
    max_files: int | None = None  # files and folders; None: unlimited


class UserStore:
    """An immutable snapshot of the users file.  Reload builds a new one and swaps it in.

    Shared read-only by every session thread; nothing mutates it after construction.
    """

    def __init__(self, users: dict[str, User], path: Path | None = None) -> None:
        self.users = users
        self.path = path
        _dummy_cost()  # measured now (once per context), not during the first failed login

    def __len__(self) -> int:
        return len(self.users)

    def get(self, name: str) -> User | None:
        return self.users.get(name)

    def authenticate(self, name: str, password: str) -> User | None:
        """The user if the password matches and the account is enabled, else None.

        Every failure costs the same, the first one since start included: an unknown or
        disabled user spends a verification against a dummy hash of the default scheme and
        cost; a wrong password spends one against the user's hash, and when that was much
        cheaper (an old scheme, a low cost) a dummy verification as well, so that it slows
        down with a busy machine exactly as the others do; then every failure is padded to
        the measured cost of a dummy verification (``_DummyCost``).  Success is not padded.
        """
        started = time.perf_counter()
        dummy = _dummy_cost()
        user = self.users.get(name)
        if user is None or user.disabled:
            dummy.verify(password)
            ok = False
        else:
            try:
                ok = CONTEXT.verify(password, user.password_hash)
            except (ValueError, TypeError):
                ok = False
            if not ok and time.perf_counter() - started < dummy.seconds() / 2:
                dummy.verify(password)  # work, not just sleep: CPU contention slows it too
        if ok:
            return user
        time.sleep(max(0.0, dummy.seconds() - (time.perf_counter() - started)))
        return None

    @classmethod
    def load(cls, path: Path) -> UserStore:
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
    max_files = fields.get("max_files")
    if max_files is not None and (type(max_files) is not int or max_files < 0):
        problems.append(
            doc.problem("must be a whole number of files and folders", *key, "max_files")
        )
    disabled = fields.get("disabled", False)
    if not isinstance(disabled, bool):
        problems.append(doc.problem("must be true or false", *key, "disabled"))
    if len(problems) > before:
        return None
    return User(str(name), str(password), quota, bool(disabled), max_files)
