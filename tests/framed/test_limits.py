"""Limits of a real FramedServer: login braking and locks, connection caps, timeouts, slots.

The daemon listens on 127.0.0.1.  To tell the per-user lock from the per-address lock,
some clients connect from another loopback source address (127.0.0.2: the same machine,
a different peer address for the server).
"""

from __future__ import annotations

import re
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from ftpd import errors, logs
from ftpd.accounts import throttle, users
from tests.conftest import PASSWORDS, ROOT, RunningServer
from tests.support import call, read_frame_with_body, wait_until

TIMEOUT = 5.0
OTHER_IP = "127.0.0.2"
LOCKING = {"login_max_failures": 3, "login_lockout": 30, "login_delay": 0.01}


# --- raw helpers ----------------------------------------------------------------------


def read_frame(sock: socket.socket) -> dict[str, Any]:
    header, _ = read_frame_with_body(sock)
    return header


def connect(srv: RunningServer, source: str = "127.0.0.1") -> tuple[socket.socket, dict[str, Any]]:
    """A raw socket from ``source`` and the first frame the server sent on it."""
    address = (srv.host, srv.port)
    sock = socket.create_connection(address, timeout=TIMEOUT, source_address=(source, 0))
    return sock, read_frame(sock)


def greeted(srv: RunningServer, source: str = "127.0.0.1") -> socket.socket:
    sock, first = connect(srv, source)
    assert first["code"] == 220, first
    return sock


def login(
    srv: RunningServer, user: str, password: str, source: str = "127.0.0.1"
) -> dict[str, Any]:
    """One login attempt on a fresh connection; returns the reply."""
    sock = greeted(srv, source)
    try:
        return call(sock, "login", user=user, password=password)
    finally:
        sock.close()


def assert_closed(sock: socket.socket) -> None:
    sock.settimeout(TIMEOUT)
    try:
        assert sock.recv(1) == b""
    except ConnectionResetError:
        pass


@pytest.fixture
def other_ip() -> str:
    probe = socket.socket()
    try:
        probe.bind((OTHER_IP, 0))
    except OSError:
        pytest.skip(f"cannot bind {OTHER_IP} on this machine")
    finally:
        probe.close()
    return OTHER_IP


def code(reply: dict[str, Any]) -> tuple[int, str]:
    return reply["code"], reply.get("error", "ok")


# --- login braking --------------------------------------------------------------------


def test_limits_unknown_user_and_wrong_password_look_the_same(server_factory):
    srv = server_factory(**LOCKING)
    wrong = login(srv, "alice", "not-the-password")
    unknown = login(srv, "nobody-by-this-name", "whatever")
    assert code(wrong) == code(unknown) == (430, "login_failed")
    assert {k: v for k, v in wrong.items()} == {k: v for k, v in unknown.items()}


def test_limits_right_password_after_failures_below_limit_works(server_factory):
    srv = server_factory(**LOCKING)
    assert code(login(srv, "alice", "bad")) == (430, "login_failed")
    assert code(login(srv, "alice", "bad")) == (430, "login_failed")
    assert code(login(srv, "alice", PASSWORDS["alice"])) == (200, "ok")


def test_limits_lock_after_failures_across_connections(server_factory, other_ip):
    srv = server_factory(**LOCKING)
    for _ in range(3):
        assert code(login(srv, "alice", "bad")) == (430, "login_failed")
    locked = login(srv, "alice", PASSWORDS["alice"])
    assert code(locked) == (429, "too_many_attempts")
    assert 0 < locked["data"]["retry_after"] <= 31
    assert code(login(srv, "alice", "bad")) == (429, "too_many_attempts")
    # Only the pair (alice, 127.0.0.1) is locked: a colleague at that address logs in,
    # and so does alice from another address (issue 9: the brake stops attackers only).
    assert code(login(srv, "bob", PASSWORDS["bob"])) == (200, "ok")
    assert code(login(srv, "alice", PASSWORDS["alice"], other_ip)) == (200, "ok")
    assert code(login(srv, "alice", PASSWORDS["alice"])) == (429, "too_many_attempts")


def test_limits_typos_across_names_do_not_lock_the_office(server_factory):
    """Five typos across three names locked every user behind the address (issue 9)."""
    srv = server_factory(login_max_failures=5, login_lockout=300, login_delay=0.01)
    for name in ("alice", "bob", "carol", "alice", "bob"):
        assert code(login(srv, name, "typo")) == (430, "login_failed")
    for name in ("alice", "bob", "carol", "alice2"):
        assert code(login(srv, name, PASSWORDS[name])) == (200, "ok"), name


def test_limits_nobody_locks_a_named_account_from_afar(server_factory, other_ip):
    srv = server_factory(login_max_failures=5, login_lockout=300, login_delay=0.01)
    for _ in range(5):
        assert code(login(srv, "alice", "guess", other_ip)) == (430, "login_failed")
    assert code(login(srv, "alice", PASSWORDS["alice"], other_ip)) == (429, "too_many_attempts")
    assert code(login(srv, "alice", PASSWORDS["alice"])) == (200, "ok")


def test_limits_parallel_burst_gets_no_more_guesses(server_factory, monkeypatch, other_ip):
    """31 parallel guesses, limit 5: 5 are checked, 26 refused unchecked (issue 9).

    The 5 checks are held inside the password check; the other 26, and a right password
    sent meanwhile, wait behind them (they might be colleagues: a success would let them
    in) and are refused, unchecked, once the 5 are known to have failed.
    """
    srv = server_factory(login_max_failures=5, login_lockout=300, login_delay=0.01, max_per_ip=64)
    store = srv.server.services.accounts.users
    real_authenticate = store.authenticate
    entered, gate, checked = threading.Semaphore(0), threading.Event(), []

    def held(name: str, password: str) -> Any:
        checked.append(password)  # list.append is atomic
        entered.release()
        gate.wait(TIMEOUT)
        return real_authenticate(name, password)

    monkeypatch.setattr(store, "authenticate", held)
    socks = [greeted(srv) for _ in range(31)]
    barrier = threading.Barrier(31, timeout=TIMEOUT)

    def guess(i: int) -> dict[str, Any]:
        barrier.wait()
        return call(socks[i], "login", user="alice", password=f"guess-{i}")

    try:
        with ThreadPoolExecutor(max_workers=32) as pool:
            futures = [pool.submit(guess, i) for i in range(31)]
            for _ in range(5):
                assert entered.acquire(timeout=TIMEOUT), "fewer than 5 checks started"
            right = pool.submit(login, srv, "alice", PASSWORDS["alice"])  # past the 5
            gate.set()
            answers = [code(f.result(timeout=TIMEOUT)) for f in futures]
            assert code(right.result(timeout=TIMEOUT)) == (429, "too_many_attempts")
    finally:
        gate.set()
        for sock in socks:
            sock.close()
    assert len(checked) == 5 and PASSWORDS["alice"] not in checked
    assert answers.count((430, "login_failed")) == 5
    assert answers.count((429, "too_many_attempts")) == 26
    assert len(checked) == 5 and PASSWORDS["alice"] not in checked
    assert code(login(srv, "alice", PASSWORDS["alice"])) == (429, "too_many_attempts")
    assert code(login(srv, "alice", PASSWORDS["alice"], other_ip)) == (200, "ok")


def test_limits_failures_in_one_connection_count_too(server_factory):
    srv = server_factory(**LOCKING)
    sock = greeted(srv)
    for _ in range(3):
        assert code(call(sock, "login", user="carol", password="bad")) == (430, "login_failed")
    right = call(sock, "login", user="carol", password=PASSWORDS["carol"])
    assert code(right) == (429, "too_many_attempts")
    assert code(call(sock, "pwd")) == (401, "not_logged_in")
    sock.close()


def test_limits_address_lock_from_many_user_names(server_factory, other_ip):
    srv = server_factory(**LOCKING, login_max_failures_per_ip=4)
    for name in ("u1", "u2", "u3"):  # one failure each: no name reaches the limit
        assert code(login(srv, name, "guess")) == (430, "login_failed")
    # Below the per-address limit, the others at that address are not held up.
    assert code(login(srv, "bob", PASSWORDS["bob"])) == (200, "ok")
    assert code(login(srv, "u4", "guess")) == (430, "login_failed")
    assert code(login(srv, "carol", PASSWORDS["carol"])) == (429, "too_many_attempts")
    assert code(login(srv, "carol", PASSWORDS["carol"], other_ip)) == (200, "ok")


def test_limits_success_clears_the_pair_not_the_address(server_factory):
    srv = server_factory(**LOCKING, login_max_failures_per_ip=5)
    assert code(login(srv, "alice", "bad")) == (430, "login_failed")
    assert code(login(srv, "alice", "bad")) == (430, "login_failed")
    assert code(login(srv, "alice", PASSWORDS["alice"])) == (200, "ok")
    # alice's count restarted: two more failures do not lock her...
    assert code(login(srv, "alice", "bad")) == (430, "login_failed")
    assert code(login(srv, "alice", "bad")) == (430, "login_failed")
    assert code(login(srv, "alice", PASSWORDS["alice"])) == (200, "ok")
    # ...and successes are no failures, but the address kept its four: one more locks it.
    assert code(login(srv, "bob", "bad")) == (430, "login_failed")
    assert code(login(srv, "carol", PASSWORDS["carol"])) == (429, "too_many_attempts")


def test_limits_failed_login_is_delayed(server_factory):
    srv = server_factory(login_max_failures=10, login_lockout=30, login_delay=0.2)
    sock = greeted(srv)
    started = time.monotonic()
    assert code(call(sock, "login", user="alice", password="bad")) == (430, "login_failed")
    first = time.monotonic() - started
    started = time.monotonic()
    assert code(call(sock, "login", user="alice", password="bad")) == (430, "login_failed")
    second = time.monotonic() - started
    assert first >= 0.2 and second >= 0.4  # the brake doubles with each failure
    sock.close()


# --- what the log says about logins ------------------------------------------------


def _failregex() -> re.Pattern[str]:
    text = (ROOT / "conf" / "fail2ban" / "filter.d" / "ftpd.conf").read_text()
    rule = re.search(r"^failregex\s*=\s*(.+)$", text, re.M)
    assert rule is not None
    return re.compile(rule.group(1).strip().replace("<HOST>", r"(?P<host>\S+)"))


def test_limits_failed_login_logged_for_fail2ban_without_password(
    server_factory, log_file, log_records
):
    srv = server_factory(**LOCKING)
    secret_wrong, secret_right = "hunter2-WRONG-pw", PASSWORDS["alice"]
    assert code(login(srv, "mallory", secret_wrong)) == (430, "login_failed")
    assert code(login(srv, "alice", secret_wrong)) == (430, "login_failed")
    assert code(login(srv, "alice", secret_right)) == (200, "ok")
    # The per-command lines are written just after the reply: wait for the last one (one
    # session thread per login, so wait for each); once seen, the file holds it.
    for user in ("mallory", "alice"):
        log_records.wait_for(rf"CMD .* login user={user} .*-> 430 ")
    log_records.wait_for(r"CMD .* login user=alice .*-> 200 ")
    text = log_file.read_text(encoding="utf-8")
    assert "LOGIN FAILED user='mallory' ip=127.0.0.1" in text
    assert "LOGIN FAILED user='alice' ip=127.0.0.1" in text
    assert "LOGIN OK user='alice' ip=127.0.0.1" in text
    assert secret_wrong not in text and secret_right not in text
    regex = _failregex()
    hosts = [m.group("host") for line in text.splitlines() if (m := regex.search(line))]
    assert hosts == ["127.0.0.1", "127.0.0.1"]


@pytest.mark.parametrize(
    "name",
    [
        "x\n2026-01-01 00:00:00,000 WARNING ftpd.handler LOGIN FAILED user='y' ip=6.6.6.6",
        "x\r\nLOGIN FAILED user=y ip=6.6.6.6\n",
        "LOGIN FAILED user= ip=6.6.6.6 ",  # no control character needed to try
        "a\rb\x1b[2Jc ip=6.6.6.6",
    ],
)
def test_limits_user_name_cannot_forge_log_lines(server_factory, log_file, log_records, name):
    srv = server_factory(**LOCKING)
    assert code(login(srv, name, "pw")) == (430, "login_failed")
    log_records.wait_for(r"CMD .* login user=")  # written just after the reply
    text = log_file.read_text(encoding="utf-8")
    lines = text.splitlines()
    assert all(line.startswith("20") for line in lines), lines  # every line is a record
    assert "\x1b" not in text and "\r" not in text
    record = re.compile(r"\S+ \S+ WARNING ftpd\S* LOGIN FAILED ")
    failed = [line for line in lines if record.match(line)]
    assert len(failed) == 1 and failed[0].endswith(" ip=127.0.0.1")
    if "\n" in name:
        assert "user='x\\" in failed[0]  # the newline is written escaped
    # Whatever the name says, fail2ban's filter sees one failure, from the real address.
    hosts = [m.group("host") for line in lines if (m := _failregex().search(line))]
    assert hosts == ["127.0.0.1"]


_FIELDS = re.compile(r"LOGIN FAILED user='((?:[^'\\]|\\.)*)' ip=(\S+)$")


def test_limits_quote_in_user_name_cannot_forge_the_address_field(
    server_factory, log_file, log_records
):
    """``user='x' ip=6.6.6.6' ip=...``: a quote ended the field early (issue 9)."""
    srv = server_factory(**LOCKING)
    name = "x' ip=6.6.6.6"
    assert code(login(srv, name, "pw")) == (430, "login_failed")
    log_records.wait_for(r"CMD .* login user=")  # written just after the reply
    lines = log_file.read_text(encoding="utf-8").splitlines()
    failed = [line for line in lines if "LOGIN FAILED" in line]
    assert len(failed) == 1
    # Read as fields, the line has one user field, holding the whole name, and the real
    # address as the only ip field.
    fields = _FIELDS.search(failed[0])
    assert fields is not None, failed[0]
    assert fields.group(1) == "x\\' ip=6.6.6.6"
    assert fields.group(2) == "127.0.0.1"
    assert "'x'" not in failed[0]
    hosts = [m.group("host") for line in lines if (m := _failregex().search(line))]
    assert hosts == ["127.0.0.1"]


@pytest.mark.parametrize(
    ("text", "quoted", "unquoted"),
    [
        ("x' ip=6.6.6.6", "x\\' ip=6.6.6.6", "x\\'\\x20ip=6.6.6.6"),
        ("a\\'b", "a\\\\\\'b", "a\\\\\\'b"),  # a backslash cannot unescape the quote
        ('say "hi"', 'say "hi"', 'say\\x20"hi"'),
        ("x\n", "x\\n", "x\\n"),
    ],
)
def test_limits_log_fields_escape_what_could_end_them(text, quoted, unquoted):
    """``clean`` for ``'...'`` fields, ``word`` for bare ``key=value`` ones (issue 9)."""
    assert logs.clean(text) == quoted
    assert logs.word(text) == unquoted
    assert re.fullmatch(r"(?:[^'\\]|\\.)*", logs.clean(text))  # no bare quote left
    assert " " not in logs.word(text)


def test_limits_refusals_while_locked_are_logged_for_fail2ban(
    server_factory, log_file, log_records
):
    srv = server_factory(**LOCKING)
    for _ in range(3):
        assert code(login(srv, "mallory", "guess")) == (430, "login_failed")
    for _ in range(4):
        assert code(login(srv, "mallory", "guess")) == (429, "too_many_attempts")
    # LOGIN FAILED is written before the answer is sent: all seven are in the file.
    lines = log_file.read_text(encoding="utf-8").splitlines()
    hosts = [m.group("host") for line in lines if (m := _failregex().search(line))]
    assert hosts == ["127.0.0.1"] * 7


@pytest.mark.parametrize("size", [73, 100, 5000])
def test_limits_over_long_password_is_a_plain_failure(server_factory, size):
    """Past bcrypt's 72 bytes: 430 like any wrong password, never a 500."""
    srv = server_factory(**LOCKING)
    long_right = PASSWORDS["alice"] + "x" * (size - len(PASSWORDS["alice"]))
    assert code(login(srv, "alice", long_right)) == (430, "login_failed")
    assert code(login(srv, "nobody", "y" * size)) == (430, "login_failed")
    assert code(login(srv, "alice", PASSWORDS["alice"])) == (200, "ok")


def test_limits_1025th_failure_is_a_430_and_logged(server_factory, monkeypatch, log_records):
    """The delay was ``login_delay * 2 ** (n - 1)``: at n = 1025 a float overflow, a 500
    and no LOGIN FAILED line (issue 9).  Cheap hashes and no delay keep 1,025 fast."""
    monkeypatch.setattr(users, "CONTEXT", users.CONTEXT.copy(bcrypt__rounds=4))
    monkeypatch.setattr(throttle, "_MAX_DELAY_S", 0.0)
    srv = server_factory(
        login_max_failures=5000,
        login_max_failures_per_ip=5000,
        login_lockout=300,
        login_delay=0.01,
        login_timeout=300,
    )
    sock = greeted(srv)
    try:
        answers = {code(call(sock, "login", user="nobody", password="x")) for _ in range(1030)}
    finally:
        sock.close()
    assert answers == {(430, "login_failed")}
    failed = [m for m in log_records.messages() if "LOGIN FAILED user='nobody'" in m]
    assert len(failed) == 1030


# --- connection caps ----------------------------------------------------------------


def test_limits_max_connections_refuses_with_421_frame(server_factory):
    srv = server_factory(max_connections=3, max_per_ip=10)
    held = [greeted(srv) for _ in range(3)]
    sock, first = connect(srv)
    assert (first["ok"], first["code"], first["error"]) == (False, 421, "unavailable")
    assert "too many connections" in first["message"]
    assert_closed(sock)
    with pytest.raises(errors.UnavailableError):
        srv.connect(timeout=TIMEOUT)
    assert srv.server.session_count == 3
    held.pop().close()
    wait_until(lambda: srv.server.session_count == 2)
    assert greeted(srv) is not None
    for sock in held:
        sock.close()


def test_limits_max_per_ip_refuses_with_421_frame(server_factory, other_ip):
    srv = server_factory(max_connections=10, max_per_ip=2)
    held = [greeted(srv) for _ in range(2)]
    sock, first = connect(srv)
    assert (first["code"], first["error"]) == (421, "unavailable")
    assert "your address" in first["message"]
    assert_closed(sock)
    # The cap is per address: 127.0.0.2 still gets in.
    held.append(greeted(srv, other_ip))
    assert code(call(held[-1], "login", user="bob", password=PASSWORDS["bob"])) == (200, "ok")
    for sock in held:
        sock.close()


def test_limits_hundred_simultaneous_connects_all_greeted(server_factory):
    srv = server_factory(max_connections=200, max_per_ip=200)
    count = 100
    barrier = threading.Barrier(count, timeout=20)

    def one(_: int) -> tuple[socket.socket, dict[str, Any]]:
        barrier.wait()
        return connect(srv)

    with ThreadPoolExecutor(max_workers=count) as pool:
        results = list(pool.map(one, range(count), timeout=30))
    assert [first["code"] for _, first in results] == [220] * count
    wait_until(lambda: srv.server.session_count == count)
    for sock, _ in results:
        sock.close()
    wait_until(lambda: srv.server.session_count == 0)


def test_limits_sessions_freed_after_close_allow_new_ones(server_factory):
    srv = server_factory(max_connections=2, max_per_ip=2)
    for round_ in range(4):
        a, b = srv.login("alice"), srv.login("bob")
        assert a.call("pwd").data["cwd"] == "/"
        if round_ % 2:
            a.quit()
            b.quit()
        else:  # vanish without a word
            a.close()
            b.close()
        wait_until(lambda: srv.server.session_count == 0)


def test_limits_login_timeout_frees_the_slot(server_factory):
    srv = server_factory(max_connections=1, login_timeout=1, idle_timeout=30)
    silent = greeted(srv)
    refused, first = connect(srv)
    assert first["code"] == 421
    refused.close()
    started = time.monotonic()
    reply = read_frame(silent)  # the server speaks first, when the login time is up
    assert (reply["code"], reply["error"]) == (408, "timeout")
    assert time.monotonic() - started < 3.0
    assert_closed(silent)
    wait_until(lambda: srv.server.session_count == 0)
    conn = srv.login("alice")
    assert conn.call("pwd").data["cwd"] == "/"
    conn.close()


def test_limits_colleagues_logging_in_at_once_all_get_in(server_factory):
    """60 sessions of one user from one address at once (a backup tool, an office behind
    NAT), with the shipped limits: attempts beyond them wait for the ones being checked,
    and every one logs in."""
    srv = server_factory(login_max_failures=5, login_max_failures_per_ip=20, max_per_ip=64)
    socks = [greeted(srv) for _ in range(60)]
    barrier = threading.Barrier(60, timeout=TIMEOUT)

    def one(i: int) -> tuple[int, str]:
        barrier.wait()
        return code(call(socks[i], "login", user="alice", password=PASSWORDS["alice"]))

    try:
        with ThreadPoolExecutor(max_workers=60) as pool:
            answers = list(pool.map(one, range(60), timeout=30))
    finally:
        for sock in socks:
            sock.close()
    assert answers == [(200, "ok")] * 60
