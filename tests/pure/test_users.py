"""Pure tests of accounts: size units, user names, the users file, password checks."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from passlib.hash import bcrypt, pbkdf2_sha256, sha512_crypt

from ftpd.accounts import users
from ftpd.accounts.users import User, UserStore, check_name
from ftpd.errors import ConfigError
from ftpd.units import format_size, parse_size

FAST = bcrypt.using(rounds=4)
ALICE_HASH = FAST.hash("alice-pw")

KiB, MiB, GiB, TiB = 1024, 1024**2, 1024**3, 1024**4


# --- sizes ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0, 0),
        (1234, 1234),
        ("0", 0),
        ("1234", 1234),
        ("10b", 10),
        ("10B", 10),
        ("1K", KiB),
        ("1k", KiB),
        ("1KiB", KiB),
        ("1KB", 1000),
        ("1kb", 1000),
        ("500MiB", 500 * MiB),
        ("500mib", 500 * MiB),
        ("500MIB", 500 * MiB),
        ("500M", 500 * MiB),
        ("2MB", 2 * 10**6),
        ("1GiB", GiB),
        ("1G", GiB),
        ("1GB", 10**9),
        ("1gb", 10**9),
        ("1.5GiB", 3 * GiB // 2),
        ("0.5K", 512),
        ("1T", TiB),
        ("1TiB", TiB),
        ("1TB", 10**12),
        ("1 MiB", MiB),
        ("  2 k ", 2 * KiB),
    ],
)
def test_users_parse_size(value: object, expected: int) -> None:
    assert parse_size(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        "1XB",
        "1PiB",
        "1 PB",
        "MiB",
        "",
        "   ",
        "-1",
        "-1MiB",
        "1.5.5M",
        "1e3",
        "1,5M",
        "1 M iB",
        "ten",
        -1,
        -(2**40),
        True,
        False,
        None,
        1.5,
        [1],
        {"MiB": 1},
    ],
)
def test_users_parse_size_refuses(value: object) -> None:
    with pytest.raises(ValueError):
        parse_size(value)


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (0, "0 B"),
        (1, "1 B"),
        (1023, "1023 B"),
        (1024, "1 KiB"),
        (1536, "1.5 KiB"),
        (500 * MiB, "500 MiB"),
        (GiB, "1 GiB"),
        (10**9, "953.7 MiB"),
        (TiB, "1 TiB"),
        (1024 * TiB, "1024 TiB"),
    ],
)
def test_users_format_size(n: int, text: str) -> None:
    assert format_size(n) == text


@pytest.mark.parametrize("n", [0, 1, 1023, KiB, 1536, 500 * MiB, GiB, 3 * GiB // 2, TiB])
def test_users_format_size_parses_back(n: int) -> None:
    assert parse_size(format_size(n).replace(" ", "")) == n


# --- names ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["alice", "alice2", "bob-smith", "a.b", "user_1", "用户", "x" * users.MAX_NAME]
)
def test_users_check_name_accepts(name: str) -> None:
    assert check_name(name) is None


@pytest.mark.parametrize(
    "name",
    [
        "",
        None,
        5,
        True,
        "x" * (users.MAX_NAME + 1),
        "a/b",
        "/",
        "a\\b",
        ".",
        "..",
        ".hidden",
        ".ftpd",
        "a b",
        " alice",
        "a\tb",
        "a\nb",
        "a\x00b",
        "a\x7fb",
        "a\u200bb",
        "a\u3000b",
        "a\u2028b",
    ],
)
def test_users_check_name_refuses(name: object) -> None:
    why = check_name(name)
    assert isinstance(why, str) and why


# --- the users file ------------------------------------------------------------------------


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "users.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def _problems(path: Path) -> list[tuple[str, int | None, str, str]]:
    with pytest.raises(ConfigError) as info:
        UserStore.load(path)
    assert all(p[0] == str(path) for p in info.value.problems)
    return info.value.problems


def test_users_load_valid(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        f"""# comment
users:
  alice:
    password: "{ALICE_HASH}"
    quota: 10MiB
  bob:
    password: '{FAST.hash("bob-pw")}'
  carol:
    password: "{FAST.hash("carol-pw")}"
    quota: 1GB
    disabled: true
  dave:
    password: "{FAST.hash("dave-pw")}"
    quota: 12345
    disabled: false
""",
    )
    store = UserStore.load(path)
    assert len(store) == 4 and store.path == path
    assert store.get("alice") == User("alice", ALICE_HASH, 10 * MiB, False)
    assert store.get("bob").quota_bytes is None  # type: ignore[union-attr]
    assert store.get("carol").quota_bytes == 10**9 and store.get("carol").disabled  # type: ignore[union-attr]
    assert store.get("dave").quota_bytes == 12345  # type: ignore[union-attr]
    assert store.get("nobody") is None


@pytest.mark.parametrize("text", ["", "# nothing\n", "users:\n", "users: {}\n"])
def test_users_load_empty(tmp_path: Path, text: str) -> None:
    assert len(UserStore.load(_write(tmp_path, text))) == 0


def test_users_load_shipped_file() -> None:
    store = UserStore.load(Path(__file__).resolve().parents[2] / "conf" / "users.yaml")
    assert store.get("demo") is not None


def test_users_load_plaintext_password_names_file_line_key(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        f"""users:
  alice:
    password: "{ALICE_HASH}"
    quota: 10MiB
  bob:
    password: hunter2
""",
    )
    [(_, line, key, message)] = _problems(path)
    assert (line, key) == (6, "users.bob.password")
    assert "plaintext" in message
    with pytest.raises(ConfigError) as info:
        UserStore.load(path)
    assert f"{path}:6: users.bob.password: " in str(info.value)
    assert "hunter2" not in str(info.value)


@pytest.mark.parametrize(
    ("body", "line", "key"),
    [
        pytest.param(
            f'  alice:\n    password: "{ALICE_HASH}"\n    colour: blue\n',
            4,
            "users.alice.colour",
            id="unknown-key",
        ),
        pytest.param(
            f'  alice:\n    password: "{ALICE_HASH}"\n    quota: 10XB\n',
            4,
            "users.alice.quota",
            id="bad-quota-unit",
        ),
        pytest.param(
            f'  alice:\n    password: "{ALICE_HASH}"\n    quota: -5\n',
            4,
            "users.alice.quota",
            id="negative-quota",
        ),
        pytest.param(
            f'  alice:\n    password: "{ALICE_HASH}"\n    disabled: maybe\n',
            4,
            "users.alice.disabled",
            id="disabled-string",
        ),
        pytest.param(
            f'  alice:\n    password: "{ALICE_HASH}"\n    disabled: 1\n',
            4,
            "users.alice.disabled",
            id="disabled-int",
        ),
        pytest.param(
            "  alice:\n    quota: 1GiB\n", 2, "users.alice.password", id="missing-password"
        ),
        pytest.param(
            "  alice:\n    password: 12345\n", 3, "users.alice.password", id="password-not-str"
        ),
        pytest.param("  alice: just-a-string\n", 2, "users.alice", id="user-not-mapping"),
        pytest.param(
            f'  .alice:\n    password: "{ALICE_HASH}"\n', 2, "users..alice", id="bad-name"
        ),
        pytest.param(
            f'  a b:\n    password: "{ALICE_HASH}"\n', 2, "users.a b", id="name-with-space"
        ),
    ],
)
def test_users_load_problem_located(tmp_path: Path, body: str, line: int, key: str) -> None:
    path = _write(tmp_path, "users:\n" + body)
    problems = _problems(path)
    assert [(p[1], p[2]) for p in problems] == [(line, key)]


@pytest.mark.parametrize(
    "text",
    [
        "- alice\n- bob\n",
        "just text\n",
        "users:\n  - alice\n",
        "users: 5\n",
        "people:\n  alice: {}\n",
        "users: {}\nextra: 1\n",
    ],
)
def test_users_load_not_a_users_mapping(tmp_path: Path, text: str) -> None:
    assert _problems(_write(tmp_path, text))


def test_users_load_reports_every_problem(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        f"""users:
  alice:
    password: plain
  bob:
    password: "{ALICE_HASH}"
    quota: lots
  carol:
    password: "{ALICE_HASH}"
    disabled: "no"
""",
    )
    located = [(p[1], p[2]) for p in _problems(path)]
    assert located == [
        (3, "users.alice.password"),
        (6, "users.bob.quota"),
        (9, "users.carol.disabled"),
    ]


def test_users_load_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    [(where, line, _, message)] = _problems(path)
    assert (where, line, message) == (str(path), None, "file not found")


def test_users_load_yaml_syntax_error_has_line(tmp_path: Path) -> None:
    path = _write(tmp_path, f'users:\n  alice:\n    password: "{ALICE_HASH}"\n    quota: [1, 2\n')
    [(_, line, _, message)] = _problems(path)
    assert line is not None and line >= 4
    assert "YAML syntax error" in message


def test_users_load_yaml_bad_indent_has_line(tmp_path: Path) -> None:
    path = _write(tmp_path, "users:\n  alice:\n    password: x\n   quota: 1\n")
    [(_, line, _, _)] = _problems(path)
    assert line == 4


def test_users_load_refuses_python_tags(tmp_path: Path) -> None:
    path = _write(tmp_path, "users: !!python/object/apply:os.system ['true']\n")
    [(_, _, _, message)] = _problems(path)
    assert "YAML" in message


# --- authentication ------------------------------------------------------------------------


@pytest.fixture
def store(monkeypatch: pytest.MonkeyPatch) -> UserStore:
    # dummy_verify costs the context's default (bcrypt 12): use cost 4 to stay fast.
    monkeypatch.setattr(users, "CONTEXT", users.CONTEXT.copy(bcrypt__rounds=4))
    return UserStore(
        {
            "alice": User("alice", ALICE_HASH, None),
            "carol": User("carol", FAST.hash("carol-pw"), None, disabled=True),
            "old": User("old", sha512_crypt.using(rounds=1000).hash("old-pw"), None),
            "pbk": User("pbk", pbkdf2_sha256.using(rounds=1000).hash("pbk-pw"), None),
            "broken": User("broken", "not-a-hash", None),
        }
    )


@pytest.mark.parametrize(
    ("name", "password", "ok"),
    [
        ("alice", "alice-pw", True),
        ("alice", "alice-PW", False),
        ("alice", "", False),
        ("alice", "alice-pw\x00", False),
        ("alice", "alice-pw ", False),
        ("alice", "x" * 10000, False),
        ("Alice", "alice-pw", False),
        ("nobody", "alice-pw", False),
        ("", "", False),
        ("carol", "carol-pw", False),  # disabled, even with the right password
        ("old", "old-pw", True),  # sha512_crypt still verifies
        ("old", "wrong", False),
        ("pbk", "pbk-pw", True),  # pbkdf2_sha256 still verifies
        ("pbk", "wrong", False),
        ("broken", "not-a-hash", False),
    ],
)
def test_users_authenticate(store: UserStore, name: str, password: str, ok: bool) -> None:
    user = store.authenticate(name, password)
    if ok:
        assert user is store.get(name)
    else:
        assert user is None


def test_users_hash_password_default_scheme() -> None:
    hashed = users.hash_password("s3cret")
    assert hashed.startswith("$2b$") and "s3cret" not in hashed
    assert users.is_known_hash(hashed)
    assert users.CONTEXT.verify("s3cret", hashed)
    assert not users.CONTEXT.needs_update(hashed)
    assert users.CONTEXT.needs_update(sha512_crypt.using(rounds=1000).hash("x"))


@pytest.mark.parametrize(
    "value",
    [
        "hunter2",
        "",
        "{SSHA}abc",
        "$2b$",
        "$6$rounds",
        "$6$rounds=1000$salt",
        "$1$abc",
        "$pbkdf2-sha256$1000$abc",
        ALICE_HASH[:-1],
        ALICE_HASH[:20],
    ],
)
def test_users_is_known_hash_refuses_plaintext_and_truncated(value: str) -> None:
    assert not users.is_known_hash(value)


@pytest.mark.parametrize(
    "value",
    [
        ALICE_HASH,
        sha512_crypt.using(rounds=1000).hash("x"),
        pbkdf2_sha256.using(rounds=1000).hash("x"),
    ],
)
def test_users_is_known_hash_accepts_whole_hashes(value: str) -> None:
    assert users.is_known_hash(value)


def test_users_load_truncated_hash_is_reported(tmp_path: Path) -> None:
    """Regression: a hash cut short used to load and then silently never verify."""
    path = _write(tmp_path, f'users:\n  alice:\n    password: "{ALICE_HASH[:-5]}"\n')
    assert [(p[1], p[2]) for p in _problems(path)] == [(3, "users.alice.password")]


def _median_s(call: Callable[[], object], tries: int) -> float:
    times = []
    for _ in range(tries):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def test_users_unknown_user_costs_like_wrong_password(monkeypatch: pytest.MonkeyPatch) -> None:
    """With hashes of the context's own cost, unknown or disabled users cost a wrong password.

    A cheap context (bcrypt cost 4) for both the dummy and the stored hashes keeps this fast.
    """
    context = users.CONTEXT.copy(bcrypt__rounds=4)
    monkeypatch.setattr(users, "CONTEXT", context)
    store = UserStore(
        {
            "alice": User("alice", context.hash("alice-pw"), None),
            "carol": User("carol", context.hash("carol-pw"), None, disabled=True),
        }
    )
    wrong = _median_s(lambda: store.authenticate("alice", "wrong"), 15)
    unknown = _median_s(lambda: store.authenticate("nobody", "wrong"), 15)
    disabled = _median_s(lambda: store.authenticate("carol", "carol-pw"), 15)
    assert 0.2 < unknown / wrong < 5, (unknown, wrong)
    assert 0.2 < disabled / wrong < 5, (disabled, wrong)


def test_users_unknown_user_costs_like_default_hash() -> None:
    """The real context: a hash made by ``hash_password`` costs what ``dummy_verify`` costs."""
    store = UserStore({"alice": User("alice", users.hash_password("alice-pw"), None)})
    wrong = _median_s(lambda: store.authenticate("alice", "wrong"), 2)
    unknown = _median_s(lambda: store.authenticate("nobody", "wrong"), 2)
    assert 0.2 < unknown / wrong < 5, (unknown, wrong)


def test_users_wrong_password_on_a_cheap_hash_is_padded_to_the_unknown_user_cost() -> None:
    """A legacy or low-cost hash must not reveal that the name exists by answering fast."""
    cheap = users.CONTEXT.copy(bcrypt__rounds=4).hash("alice-pw")
    assert cheap.startswith("$2b$04$")
    store = UserStore({"alice": User("alice", cheap, None)})
    wrong = _median_s(lambda: store.authenticate("alice", "wrong"), 3)
    unknown = _median_s(lambda: store.authenticate("nobody", "wrong"), 3)
    assert 0.5 < unknown / wrong < 2, (unknown, wrong)
    assert store.authenticate("alice", "alice-pw") is not None  # success is not padded


class _Clock:
    """A fake ``time`` for ``users``: nothing takes time but what the fake context spends."""

    def __init__(self) -> None:
        self.now = 0.0

    def perf_counter(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds >= 0
        self.now += seconds


class _Context:
    """A CryptContext stand-in whose hashes cost what they say ("fake$0.1": 0.1 s), times
    ``load`` (a busy machine), on the fake clock.  Its ``dummy_verify`` is passlib's: it
    makes its dummy hash on first use."""

    def __init__(self, clock: _Clock, cost: float) -> None:
        self.clock, self.cost, self.load, self.hashes = clock, cost, 1.0, 0
        self._dummy: str | None = None

    def hash(self, secret: str) -> str:
        self.hashes += 1
        self.clock.now += self.cost * self.load
        return f"fake${self.cost}${secret}"

    def verify(self, secret: str, hashed: str) -> bool:
        _, cost, right = hashed.split("$")
        self.clock.now += float(cost) * self.load
        return secret == right

    def dummy_verify(self) -> bool:
        if self._dummy is None:
            self._dummy = self.hash("too many secrets")
        self.verify("too many secrets", self._dummy)
        return False


@pytest.fixture
def fake_time(monkeypatch: pytest.MonkeyPatch) -> tuple[_Clock, _Context]:
    clock = _Clock()
    context = _Context(clock, cost=0.1)
    monkeypatch.setattr(users, "time", clock)
    monkeypatch.setattr(users, "CONTEXT", context)
    return clock, context


def _fake_store() -> UserStore:
    return UserStore(
        {
            "alice": User("alice", "fake$0.1$alice-pw", None),  # the default cost
            "old": User("old", "fake$0.001$old-pw", None),  # a cheap, old hash
            "carol": User("carol", "fake$0.1$carol-pw", None, disabled=True),
        }
    )


_FAILURES = [("nobody", "x"), ("carol", "carol-pw"), ("alice", "wrong"), ("old", "wrong")]


def _cost(clock: _Clock, store: UserStore, name: str, password: str) -> float:
    started = clock.now
    assert store.authenticate(name, password) is None
    return clock.now - started


@pytest.mark.parametrize(("name", "password"), _FAILURES)
def test_users_first_failure_costs_like_later_ones(
    fake_time: tuple[_Clock, _Context], name: str, password: str
) -> None:
    """No warm-up by the caller: the very first failure after the store is built costs what
    the later ones cost, whatever kind of failure it is.

    Regression: passlib's ``dummy_verify`` makes its dummy hash on first use, so the first
    failure cost a hash and a verification, and that was the padding target for a while.
    """
    clock, context = fake_time
    store = _fake_store()  # measures the context's dummy verification now
    hashes = context.hashes
    first = _cost(clock, store, name, password)
    later = [_cost(clock, store, n, p) for n, p in _FAILURES * 3]
    assert context.hashes == hashes  # no hash is made during a failure
    for cost in [first, *later]:
        assert cost == pytest.approx(0.1, rel=0.02), (first, later)


def test_users_failures_keep_costing_the_same_when_the_machine_gets_busy(
    fake_time: tuple[_Clock, _Context],
) -> None:
    """Padding only by sleeping to a past measurement would let a cheap hash answer fast
    while the machine is busy: its failure spends a dummy verification too."""
    clock, context = fake_time
    store = _fake_store()
    context.load = 3.0  # every verification now takes three times as long
    for name, password in reversed(_FAILURES):  # the cheap hash first, before any new sample
        assert _cost(clock, store, name, password) == pytest.approx(0.3, rel=0.02), name
    assert store.authenticate("old", "old-pw") is not None
    assert store.authenticate("alice", "alice-pw") is not None


def test_users_no_hash_is_made_during_a_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    """The real passlib context: everything a failure needs is made when the store is."""
    context = users.CONTEXT.copy(bcrypt__rounds=4)
    monkeypatch.setattr(users, "CONTEXT", context)
    store = UserStore({"alice": User("alice", FAST.hash("alice-pw"), None)})
    made: list[str] = []
    real_hash = context.hash
    monkeypatch.setattr(context, "hash", lambda *a, **k: made.append("hash") or real_hash(*a, **k))
    assert store.authenticate("nobody", "x") is None
    assert store.authenticate("alice", "wrong") is None
    assert store.authenticate("alice", "alice-pw") is not None
    assert made == []
