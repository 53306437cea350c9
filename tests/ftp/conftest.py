"""Fixtures for the FTP front end: the daemon's two listeners in-process, sharing Services.

``ftp_server`` builds the services, the framed listener and the FTP listener with the
daemon's own functions (``daemon.build_server``, ``daemon.build_ftp_server``) on
127.0.0.1 port 0, with a passive range the OS says is free (so parallel runs do not
clash), and serves them from threads.  ``ftp_factory(tls=True, **ftp_keys)`` makes one
with other settings.  Clients: ``connect()`` gives a Python ``ftplib.FTP`` (or
``FTP_TLS`` that resumes the control session on data connections, as FileZilla does).
Every socket has a timeout; nothing sleeps to synchronise.
"""

from __future__ import annotations

import ftplib
import os
import shutil
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trustme

from ftp_client.connection import Connection
from ftpd import daemon
from ftpd.accounts.users import UserStore
from ftpd.core.services import Services
from ftpd.framed.server import FramedServer
from ftpd.ftp.server import FTPServer
from tests.conftest import PASSWORDS, Project

TIMEOUT_S = 10.0


class ReusingFTPTLS(ftplib.FTP_TLS):
    """ftplib's FTP_TLS with data connections that resume the control connection's TLS
    session, as FileZilla and WinSCP do (the daemon requires it by default)."""

    def ntransfercmd(
        self, cmd: str, rest: int | str | None = None
    ) -> tuple[socket.socket, int | None]:
        conn, size = ftplib.FTP.ntransfercmd(self, cmd, rest)
        if self._prot_p:  # type: ignore[attr-defined]
            assert isinstance(self.sock, ssl.SSLSocket)
            conn = self.context.wrap_socket(
                conn, server_hostname=self.host, session=self.sock.session
            )
        return conn, size


def free_port_range(count: int) -> tuple[int, int]:
    """``count`` consecutive ports nothing listens on now (asked of the OS)."""
    for _ in range(100):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            base = probe.getsockname()[1]
        if base + count > 65535:
            continue
        held: list[socket.socket] = []
        try:
            for port in range(base, base + count):
                sock = socket.socket()
                held.append(sock)
                sock.bind(("127.0.0.1", port))
            return base, base + count - 1
        except OSError:
            continue
        finally:
            for sock in held:
                sock.close()
    raise RuntimeError("no free port range")


@dataclass
class FTPRunning:
    """The two listeners of one in-process daemon."""

    ftp: FTPServer
    framed: FramedServer
    project: Project
    ca: trustme.CA | None
    passive: tuple[int, int]
    threads: list[threading.Thread] = field(default_factory=list)

    @property
    def host(self) -> str:
        return "127.0.0.1"

    @property
    def port(self) -> int:
        return int(self.ftp.server_address[1])

    @property
    def services(self) -> Services:
        return self.ftp.services

    def home(self, user: str = "alice") -> Path:
        return self.project.home(user)

    def connect(
        self, user: str | None = "alice", tls: bool = False, timeout: float = TIMEOUT_S
    ) -> ftplib.FTP:
        """A client; logged in as ``user`` unless None; ``tls``: AUTH TLS + PROT P."""
        client: ftplib.FTP
        if tls:
            assert self.ca is not None, "start the server with tls=True"
            context = ssl.create_default_context()
            self.ca.configure_trust(context)
            client = ReusingFTPTLS(context=context, timeout=timeout)
        else:
            client = ftplib.FTP(timeout=timeout)
        client.connect(self.host, self.port, timeout=timeout)
        if tls:
            assert isinstance(client, ftplib.FTP_TLS)
            client.auth()
        if user is not None:
            client.login(user, PASSWORDS[user])
        if tls:
            assert isinstance(client, ftplib.FTP_TLS)
            client.prot_p()
        return client

    def framed_client(self, user: str = "alice") -> Connection:
        conn = Connection(self.host, int(self.framed.server_address[1]), timeout=TIMEOUT_S)
        conn.login(user, PASSWORDS[user])
        return conn

    def url(self, path: str = "", user: str = "alice", scheme: str = "ftp") -> str:
        return f"{scheme}://{user}:{PASSWORDS[user]}@{self.host}:{self.port}/{path}"

    @property
    def ca_file(self) -> Path:
        return self.project.root / "ca.pem"


def _start(project: Project, tls: bool, ca: trustme.CA, settings: dict[str, Any]) -> FTPRunning:
    passive = free_port_range(int(settings.pop("passive_count", 20)))
    ftp_keys = {"port": 0, "passive_ports": f"{passive[0]}-{passive[1]}"}
    ftp_keys.update(settings.pop("ftp", {}))
    if tls:
        cert = ca.issue_cert("127.0.0.1", "localhost")
        cert.private_key_and_cert_chain_pem.write_to_path(str(project.root / "server.pem"))
        ca.cert_pem.write_to_path(str(project.root / "ca.pem"))
        settings["tls"] = {"cert": "server.pem", "key": "server.pem"}
    project.write_config(ftp=ftp_keys, **settings)
    cfg = project.load()
    services = Services.build(cfg, UserStore.load(cfg.users_file))
    framed = daemon.build_server(cfg, services)
    ftp = daemon.build_ftp_server(cfg, services)
    assert ftp is not None
    running = FTPRunning(ftp, framed, project, ca if tls else None, passive)
    for server in (framed, ftp):
        thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        thread.start()
        running.threads.append(thread)
    return running


def _stop(running: FTPRunning) -> None:
    for server in (running.ftp, running.framed):
        server.shutdown()
        server.server_close()
    running.services.runtime.drain(2.0)
    for thread in running.threads:
        thread.join(timeout=10)


@pytest.fixture(scope="session")
def ftp_ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def ftp_factory(project: Project, ftp_ca: trustme.CA) -> Iterator[Callable[..., FTPRunning]]:
    """``make(tls=False, ftp={...}, **top_level_settings)``: a running pair of listeners."""
    started: list[FTPRunning] = []

    def make(tls: bool = False, **settings: Any) -> FTPRunning:
        running = _start(project, tls, ftp_ca, dict(settings))
        started.append(running)
        return running

    yield make
    for running in started:
        _stop(running)


@pytest.fixture
def ftp_server(ftp_factory: Callable[..., FTPRunning]) -> FTPRunning:
    return ftp_factory()


@pytest.fixture
def ftps_server(ftp_factory: Callable[..., FTPRunning]) -> FTPRunning:
    return ftp_factory(tls=True)


@pytest.fixture
def ftp(ftp_server: FTPRunning) -> Iterator[ftplib.FTP]:
    """A logged-in ftplib client of alice (quota 10 MiB)."""
    client = ftp_server.connect()
    yield client
    client.close()


def need_tool(name: str) -> str:
    """The path of an external client; skipped only when it is missing outside CI."""
    found = shutil.which(name) or _venv_tool(name)
    if found is None:
        if os.environ.get("CI"):
            pytest.fail(f"{name} is required in CI (.ci/run installs it)")
        pytest.skip(f"{name} is not installed")
    return found


def _venv_tool(name: str) -> str | None:
    import sys

    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else None


@pytest.fixture
def balanced(ftp_factory: Callable[..., FTPRunning]) -> Callable[..., FTPRunning]:
    """``make(trusted=None, **settings)``: an FTP listener that takes PROXY headers from
    ``trusted`` (127.0.0.1 by default)."""

    def make(trusted: list[str] | None = None, **settings: Any) -> FTPRunning:
        return ftp_factory(ftp={"proxy_protocol": trusted or ["127.0.0.1"]}, **settings)

    return make
