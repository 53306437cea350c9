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

from ftpd import errors
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
    # The address is locked too: another user from 127.0.0.1 is refused...
    assert code(login(srv, "bob", PASSWORDS["bob"])) == (429, "too_many_attempts")
    # ...while from another address bob is fine and alice's name stays locked.
    assert code(login(srv, "bob", PASSWORDS["bob"], other_ip)) == (200, "ok")
    assert code(login(srv, "alice", PASSWORDS["alice"], other_ip)) == (429, "too_many_attempts")


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
    srv = server_factory(**LOCKING)
    for name in ("u1", "u2", "u3"):  # one failure each: no name reaches the limit
        assert code(login(srv, name, "guess")) == (430, "login_failed")
    assert code(login(srv, "carol", PASSWORDS["carol"])) == (429, "too_many_attempts")
    assert code(login(srv, "carol", PASSWORDS["carol"], other_ip)) == (200, "ok")


def test_limits_success_clears_the_user_count_not_the_address(server_factory, other_ip):
    srv = server_factory(**LOCKING)
    assert code(login(srv, "alice", "bad")) == (430, "login_failed")
    assert code(login(srv, "alice", "bad")) == (430, "login_failed")
    assert code(login(srv, "alice", PASSWORDS["alice"])) == (200, "ok")
    # alice's count restarted: two more failures from elsewhere do not lock her name.
    assert code(login(srv, "alice", "bad", other_ip)) == (430, "login_failed")
    assert code(login(srv, "alice", "bad", other_ip)) == (430, "login_failed")
    assert code(login(srv, "alice", PASSWORDS["alice"], other_ip)) == (200, "ok")
    # 127.0.0.1 kept its two failures: one more from there locks the address.
    assert code(login(srv, "bob", "bad")) == (430, "login_failed")
    assert code(login(srv, "bob", PASSWORDS["bob"])) == (429, "too_many_attempts")


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
