"""TLS: a trustme CA signs the server's certificate; clients verify it, or are refused.

The server here is the real ``FramedServer`` with the SSL context the daemon builds from
``tls: {cert, key}`` (``ftpd.daemon.tls_context``), run in a thread as in conftest; one
test runs the daemon process itself with TLS on.  Every client has a short timeout, so a
refusal shows up as an error, never as a hang.
"""

from __future__ import annotations

import os
import select
import signal
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme

from ftp_client import cli as client_cli
from ftp_client.connection import ConnectError, Connection, tls_context
from ftp_client.transfer import INLINE_MAX, get_file, put_file
from ftpd import daemon as daemon_mod
from ftpd.accounts.users import UserStore
from ftpd.core.services import Services
from ftpd.framed import protocol
from ftpd.framed.server import FramedServer
from tests.conftest import PASSWORDS, DaemonProcess, Project
from tests.support import read_frame, wait_until

TIMEOUT_S = 5.0


@dataclass
class TLSServer:
    host: str
    port: int
    ca_file: Path
    server: FramedServer

    def connect(
        self, context: ssl.SSLContext | None, host: str | None = None, timeout: float = TIMEOUT_S
    ) -> Connection:
        return Connection(host or self.host, self.port, timeout=timeout, tls=context)

    def login(self, user: str = "alice", host: str | None = None) -> Connection:
        conn = self.connect(tls_context(cafile=str(self.ca_file)), host)
        conn.login(user, PASSWORDS[user])
        return conn


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def _write_cert(ca: trustme.CA, folder: Path, names: tuple[str, ...]) -> tuple[Path, Path, Path]:
    """(ca.pem, cert.pem, key.pem) for a server certificate valid for ``names``."""
    folder.mkdir(parents=True, exist_ok=True)
    issued = ca.issue_cert(*names)
    ca_file, cert, key = folder / "ca.pem", folder / "cert.pem", folder / "key.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    cert.write_bytes(b"".join(blob.bytes() for blob in issued.cert_chain_pems))
    issued.private_key_pem.write_to_path(str(key))
    return ca_file, cert, key


@pytest.fixture
def tls_server_factory(project: Project, ca: trustme.CA) -> Iterator[Callable[..., TLSServer]]:
    started: list[tuple[FramedServer, threading.Thread]] = []

    def make(names: tuple[str, ...] = ("127.0.0.1", "localhost")) -> TLSServer:
        ca_file, cert, key = _write_cert(ca, project.root / "tls", names)
        project.write_config(tls={"cert": str(cert), "key": str(key)})
        cfg = project.load()
        assert cfg.tls is not None and cfg.tls.cert == cert
        server = FramedServer(
            cfg,
            Services.build(cfg, UserStore.load(cfg.users_file)),
            ssl_context=daemon_mod.tls_context(cfg),
        )
        thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        thread.start()
        started.append((server, thread))
        host, port = server.server_address[:2]
        return TLSServer(str(host), port, ca_file, server)

    yield make
    for server, thread in started:
        server.shutdown()
        server.server_close()
        server.drain(2.0)
        thread.join(timeout=10)


@pytest.fixture
def tls_server(tls_server_factory: Callable[..., TLSServer]) -> TLSServer:
    return tls_server_factory()


# --- a verified session -------------------------------------------------------------


def test_tls_login_list_put_get_byte_identical(
    tls_server: TLSServer, project: Project, tmp_path: Path
) -> None:
    conn = tls_server.login("alice")
    assert isinstance(conn.sock, ssl.SSLSocket)
    assert conn.sock.version() in ("TLSv1.2", "TLSv1.3")
    assert conn.greeting.code == protocol.GREETING

    payload = os.urandom(2 * 1024 * 1024)
    assert len(payload) > INLINE_MAX  # the two-phase put
    local = tmp_path / "up.bin"
    local.write_bytes(payload)
    conn.call("mkdir", path="dir")
    put = put_file(conn, local, "dir/file.bin")
    assert put.size == len(payload) and put.offset == 0
    assert (project.home("alice") / "dir" / "file.bin").read_bytes() == payload

    assert [(e["name"], e["type"], e["size"]) for e in conn.listdir("dir")] == [
        ("file.bin", "file", len(payload))
    ]

    # The daemon's download uses socket.sendfile, which an SSL socket serves with send().
    back = tmp_path / "down.bin"
    got = get_file(conn, "dir/file.bin", back)
    assert got.checksum == put.checksum
    assert back.read_bytes() == payload

    small = tmp_path / "small.bin"
    small.write_bytes(b"inline over tls")
    put_file(conn, small, "small.bin")
    get_file(conn, "small.bin", tmp_path / "small-back.bin")
    assert (tmp_path / "small-back.bin").read_bytes() == b"inline over tls"
    conn.quit()


def test_tls_by_host_name_in_certificate(tls_server: TLSServer) -> None:
    conn = tls_server.connect(tls_context(cafile=str(tls_server.ca_file)), host="localhost")
    conn.login("bob", PASSWORDS["bob"])
    assert conn.call("pwd").data["cwd"] == "/"
    conn.quit()


# --- refusals -----------------------------------------------------------------------


def test_tls_unknown_ca_refused(tls_server: TLSServer) -> None:
    with pytest.raises(ConnectError) as info:
        tls_server.connect(tls_context())  # the system store does not know our test CA
    assert "certificate" in info.value.message
    tls_server.login("alice").quit()  # the server goes on


def test_tls_host_name_mismatch_refused(tls_server_factory: Callable[..., TLSServer]) -> None:
    server = tls_server_factory(names=("ftp.example.org",))
    with pytest.raises(ConnectError) as info:
        server.connect(tls_context(cafile=str(server.ca_file)))
    assert "certificate" in info.value.message
    assert "127.0.0.1" in info.value.message


@pytest.mark.parametrize("names", [("127.0.0.1",), ("ftp.example.org",)])
def test_tls_insecure_connects_without_verifying(
    tls_server_factory: Callable[..., TLSServer], names: tuple[str, ...]
) -> None:
    server = tls_server_factory(names=names)
    conn = server.connect(tls_context(insecure=True))  # no CA, maybe the wrong name
    conn.login("alice", PASSWORDS["alice"])
    assert conn.call("pwd").data["cwd"] == "/"
    conn.quit()


def test_tls_plain_client_fails_cleanly_and_server_serves_on(tls_server: TLSServer) -> None:
    # A plain client waits for a greeting that never comes in clear: its timeout ends it.
    with pytest.raises(ConnectError):
        tls_server.connect(None, timeout=1.0)

    # A plain client that speaks first: the handshake fails and the daemon closes at once.
    with socket.create_connection((tls_server.host, tls_server.port), timeout=TIMEOUT_S) as raw:
        header = b'{"cmd":"login","args":{"user":"alice","password":"x"}}'
        raw.sendall(struct.pack(">I", len(header)) + header)
        try:
            rest = raw.recv(65536)
            while rest and not rest.startswith(b"\x15"):  # at most a TLS alert, then EOF
                rest = raw.recv(65536)
        except ConnectionResetError:
            pass

    conn = tls_server.login("alice")
    assert conn.call("pwd").data["cwd"] == "/"
    conn.quit()


# --- connection limits: refused before any handshake (issue 9) -------------------


def _closed_at_once(sock: socket.socket, within: float = 2.0) -> bool:
    """Whether the daemon closed ``sock`` (EOF or reset) within ``within`` seconds."""
    sock.settimeout(within)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


@pytest.mark.parametrize(
    "limits",
    [{"max_connections": 2, "max_per_ip": 100}, {"max_connections": 100, "max_per_ip": 2}],
    ids=["max_connections", "max_per_ip"],
)
def test_tls_over_limit_closed_before_handshake_without_a_thread(
    tls_server_factory: Callable[..., TLSServer], project: Project, limits: dict[str, int]
) -> None:
    project.settings.update(limits, login_timeout=30)
    server = tls_server_factory()
    address = (server.host, server.port)
    # Two clients that connect and never start a handshake hold both slots: a handshake
    # in progress counts against the limits.
    stalled = [socket.create_connection(address, timeout=TIMEOUT_S) for _ in range(2)]
    # Counted at accept, before its thread starts: wait for both threads to run (each
    # registers its session first thing), or a late one would count as the flood's.
    wait_until(
        lambda: server.server.session_count == 2 and len(server.server.runtime._sessions) == 2
    )
    threads = threading.active_count()
    flood = [socket.create_connection(address, timeout=TIMEOUT_S) for _ in range(50)]
    try:
        # Each one past the limit is closed at once, before a byte of TLS, and no thread
        # waits on its hello (was: a thread and a handshake each, for login_timeout).
        started = time.monotonic()
        assert all(_closed_at_once(sock) for sock in flood)
        assert time.monotonic() - started < 3.0
        assert threading.active_count() <= threads
        assert server.server.session_count == 2
        # A real TLS client sees its connection closed during the handshake (no 421
        # frame can reach it before one): a connection error, exit status 3.
        with pytest.raises(ConnectError) as info:
            server.connect(tls_context(cafile=str(server.ca_file)))
        assert info.value.message.startswith(f"cannot connect to {server.host}:{server.port}")
    finally:
        for sock in flood + stalled:
            sock.close()
    wait_until(lambda: server.server.session_count == 0)
    server.login("alice").quit()  # the slots are free again


def test_tls_login_timeout_counts_the_handshake(
    tls_server_factory: Callable[..., TLSServer], project: Project
) -> None:
    """login_timeout runs from the connect, handshake included (was: after it, so twice)."""
    project.settings.update(login_timeout=1, idle_timeout=30)
    server = tls_server_factory()
    raw = socket.create_connection((server.host, server.port), timeout=TIMEOUT_S)
    started = time.monotonic()
    select.select([raw], [], [], 0.8)  # a slow client: its hello comes 0.8 s late
    context = tls_context(cafile=str(server.ca_file))
    with context.wrap_socket(raw, server_hostname=server.host) as sock:
        assert read_frame(sock)["code"] == protocol.GREETING
        reply = read_frame(sock)  # nothing sent: the daemon speaks when the time is up
        elapsed = time.monotonic() - started
    assert (reply["code"], reply["error"]) == (408, "timeout")
    assert elapsed < 1.6, elapsed  # 1 s from the connect, not 1 s from the handshake


# --- the ftp-client command ---------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "status"),
    [
        (("--tls", "--cafile", "{ca}"), 0),
        (("--cafile", "{ca}"), 2),  # --cafile without --tls: a usage error
        (("--tls", "--insecure"), 0),
        (("--tls",), 3),  # the system store does not know our CA
        ((), 3),  # plain against a TLS port: no greeting within the timeout
    ],
)
def test_tls_client_cli_exit_status(
    tls_server: TLSServer,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    extra: tuple[str, ...],
    status: int,
) -> None:
    monkeypatch.setenv("FTP_PASSWORD", PASSWORDS["alice"])
    argv = [a.format(ca=tls_server.ca_file) for a in extra]
    argv += ["-u", "alice", "-q", "--timeout", "2", "-c", "ls", f"127.0.0.1:{tls_server.port}"]
    assert client_cli.main(argv) == status
    _, err = capsys.readouterr()
    if extra == ("--tls",):
        assert "certificate" in err


# --- the daemon process -------------------------------------------------------------


def test_tls_daemon_process_serves_tls(project: Project, ca: trustme.CA) -> None:
    ca_file, cert, key = _write_cert(ca, project.root / "tls", ("127.0.0.1",))
    project.write_config(tls={"cert": str(cert), "key": str(key)})
    proc = DaemonProcess(project)
    try:
        proc.start()
        assert any("tls=True" in line for line in proc.lines if "LISTENING" in line)
        conn = Connection(
            "127.0.0.1", proc.port, timeout=TIMEOUT_S, tls=tls_context(cafile=str(ca_file))
        )
        conn.login("bob", PASSWORDS["bob"])
        assert conn.call("pwd").data["cwd"] == "/"
        # An idle TLS session is closed at once on SIGTERM, as a plain one is.
        proc.signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        assert any("STOPPED cleanly" in line for line in proc.lines)
        conn.close()
    finally:
        proc.stop()


def test_tls_off_on_public_address_warns(project: Project) -> None:
    project.write_config(host="0.0.0.0")
    proc = DaemonProcess(project)
    try:
        proc.start()
        line = proc.wait_for_line("passwords cross the network in clear")
        assert "WARNING" in line and "0.0.0.0" in line
        proc.signal(signal.SIGTERM)
        assert proc.wait() == 0
    finally:
        proc.stop()


def test_tls_off_on_loopback_does_not_warn(project: Project) -> None:
    proc = DaemonProcess(project)
    try:
        proc.start()
        proc.login("alice").quit()
        # The warning would come right after LISTENING, before any session.
        proc.wait_for_line("LOGIN OK")
        assert not any("in clear" in line for line in proc.lines)
    finally:
        proc.stop()


def test_tls_on_public_address_does_not_warn(project: Project, ca: trustme.CA) -> None:
    _, cert, key = _write_cert(ca, project.root / "tls", ("127.0.0.1",))
    project.write_config(host="0.0.0.0", tls={"cert": str(cert), "key": str(key)})
    proc = DaemonProcess(project)
    try:
        proc.start()
        mark = len(proc.lines)
        proc.signal(signal.SIGTERM)
        proc.wait_for_line("STOPPED", start=mark)
        assert not any("in clear" in line for line in proc.lines)
    finally:
        proc.stop()
