"""Shared fixtures: a project tree in tmp_path, a real server on 127.0.0.1 port 0, clients.

Layers (STYLE.md): pure tests use bytes and tmp_path only; ``server`` runs the real
``FramedServer`` in a thread; ``daemon`` runs ``python -m ftpd serve`` as a process for the
tests that send signals or kill it.  Every socket has a timeout; nothing sleeps to
synchronise; nothing is written outside tmp_path.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from passlib.hash import bcrypt

from ftp_client.connection import Connection
from ftpd import config as config_mod
from ftpd.accounts.users import UserStore
from ftpd.core.services import Services
from ftpd.framed.server import FramedServer
from tests.durability import journal  # noqa: F401 - a fixture for every test module
from tests.support import LogRecords

# Low-cost hashes keep the suite fast; production hashes use the default cost (12).
FAST = bcrypt.using(rounds=4)
PASSWORDS = {"alice": "alice-pw", "alice2": "alice2-pw", "bob": "bob-pw", "carol": "carol-pw"}
ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Project:
    """A config + users file + homes under tmp_path."""

    root: Path
    settings: dict[str, Any] = field(default_factory=dict)
    quotas: dict[str, str | None] = field(default_factory=dict)

    @property
    def config_path(self) -> Path:
        return self.root / "ftpd.yaml"

    @property
    def users_path(self) -> Path:
        return self.root / "users.yaml"

    @property
    def home_root(self) -> Path:
        return self.root / "home"

    def home(self, user: str) -> Path:
        return self.home_root / user

    def write_users(self, users: dict[str, dict[str, Any]] | None = None) -> None:
        if users is None:
            users = {
                name: {"password": FAST.hash(pw), "quota": self.quotas.get(name)}
                for name, pw in PASSWORDS.items()
            }
        lines = ["users:"]
        for name, fields in users.items():
            lines.append(f"  {name}:")
            for key, value in fields.items():
                if value is None:
                    continue
                text = (
                    f'"{value}"'
                    if key == "password"
                    else str(value).lower()
                    if isinstance(value, bool)
                    else value
                )
                lines.append(f"    {key}: {text}")
        self.users_path.write_text("\n".join(lines) + "\n", encoding="utf-8")

    def write_config(self, **overrides: Any) -> None:
        settings = {
            "host": "127.0.0.1",
            "port": 0,
            "home_root": "home",
            "users_file": "users.yaml",
            "log_dir": "logs",
            "login_delay": 0.01,
            "login_lockout": 60,
            "login_max_failures": 5,
            "idle_timeout": 30,
            "login_timeout": 30,
            "grace_period": 10,
            "fsync": False,
            **self.settings,
            **overrides,
        }
        lines = [f"{k}: {_yaml_value(v)}" for k, v in settings.items()]
        self.config_path.write_text("\n".join(lines) + "\n", encoding="utf-8")

    def load(self) -> config_mod.ServerConfig:
        return config_mod.load(self.config_path)


def _yaml_value(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_yaml_value(v)}" for k, v in value.items()) + "}"
    return str(value)


@pytest.fixture
def project(tmp_path: Path) -> Project:
    proj = Project(
        tmp_path / "srv", quotas={"alice": "10MiB", "alice2": "10MiB", "bob": None, "carol": "1MiB"}
    )
    proj.root.mkdir()
    proj.write_users()
    proj.write_config()
    return proj


@dataclass
class RunningServer:
    server: FramedServer
    host: str
    port: int
    project: Project

    def connect(self, timeout: float = 10.0) -> Connection:
        return Connection(self.host, self.port, timeout=timeout)

    def login(self, user: str = "alice", timeout: float = 10.0) -> Connection:
        conn = self.connect(timeout)
        conn.login(user, PASSWORDS[user])
        return conn

    def raw(self, timeout: float = 10.0) -> socket.socket:
        """A bare socket, greeting not yet read."""
        return socket.create_connection((self.host, self.port), timeout=timeout)


def start_server(project: Project, **overrides: Any) -> tuple[FramedServer, threading.Thread]:
    if overrides:
        project.write_config(**overrides)
    cfg = project.load()
    server = FramedServer(cfg, Services.build(cfg, UserStore.load(cfg.users_file)))
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    return server, thread


def stop_server(server: FramedServer, thread: threading.Thread) -> None:
    server.shutdown()
    server.server_close()
    server.drain(2.0)
    thread.join(timeout=10)


@pytest.fixture
def server_factory(project: Project) -> Iterator[Callable[..., RunningServer]]:
    started: list[tuple[FramedServer, threading.Thread]] = []

    def make(**overrides: Any) -> RunningServer:
        server, thread = start_server(project, **overrides)
        started.append((server, thread))
        host, port = server.server_address[:2]
        return RunningServer(server, host, port, project)

    yield make
    for server, thread in started:
        stop_server(server, thread)


@pytest.fixture
def server(server_factory: Callable[..., RunningServer]) -> RunningServer:
    return server_factory()


@pytest.fixture
def log_records() -> Iterator[LogRecords]:
    """Every log record of the in-process server (INFO and up), to wait for with a deadline.

    Its handler is the root logger's last, so when it sees a record the ``log_file``
    handler has already written it: waiting here is also waiting for the file.
    """
    root, ftpd_logger = logging.getLogger(), logging.getLogger("ftpd")
    records = LogRecords()
    level = ftpd_logger.level
    if ftpd_logger.getEffectiveLevel() > logging.INFO:
        ftpd_logger.setLevel(logging.INFO)
    root.addHandler(records)
    yield records
    root.removeHandler(records)
    ftpd_logger.setLevel(level)


@pytest.fixture
def log_file(project: Project, log_records: LogRecords) -> Iterator[Path]:
    """Route the in-process server's logging into project.root/logs/ftpd.log for one test.

    A line is in the file once ``log_records.wait_for`` has seen its record.
    """
    from ftpd.logs import setup_logging

    root = logging.getLogger()
    before, level = list(root.handlers), root.level
    setup_logging(project.root / "logs", "INFO", stderr=False)
    root.removeHandler(log_records)  # back to the end: after the file handler
    root.addHandler(log_records)
    yield project.root / "logs" / "ftpd.log"
    for handler in [h for h in root.handlers if h not in before]:
        root.removeHandler(handler)
        handler.close()
    root.setLevel(level)


@pytest.fixture
def client(server: RunningServer) -> Iterator[Connection]:
    conn = server.login("alice")
    yield conn
    conn.close()


# --- the daemon as a process (signals, SIGKILL) ---------------------------------------


class StderrLines:
    """A process's stderr, read line by line by a thread that wakes every waiter per line."""

    def __init__(self, stream: Any) -> None:
        self.lines: list[str] = []
        self.ended = False
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._pump, args=(stream,), daemon=True)
        self._thread.start()

    def _pump(self, stream: Any) -> None:
        try:
            for line in stream:
                with self._changed:
                    self.lines.append(line.rstrip("\n"))
                    self._changed.notify_all()
        finally:
            with self._changed:
                self.ended = True
                self._changed.notify_all()

    def wait_for(self, regex: re.Pattern[str], timeout: float, start: int = 0) -> str | None:
        """The first line from ``start`` on matching ``regex``; None at the deadline or EOF."""
        deadline = time.monotonic() + timeout
        seen = start
        with self._changed:
            while True:
                for line in self.lines[seen:]:
                    if regex.search(line):
                        return line
                seen = max(seen, len(self.lines))
                remaining = deadline - time.monotonic()
                if self.ended or remaining <= 0:
                    return None
                self._changed.wait(remaining)

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)


class DaemonProcess:
    """``python -m ftpd serve`` on port 0; the port is read from its LISTENING line."""

    def __init__(self, project: Project, env: dict[str, str] | None = None) -> None:
        self.project = project
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.proc: subprocess.Popen[str] | None = None
        self.port = 0
        self._stderr: StderrLines | None = None

    @property
    def lines(self) -> list[str]:
        """The stderr lines of the current (or last) run, as read so far."""
        return self._stderr.lines if self._stderr is not None else []

    def start(self, timeout: float = 20.0) -> DaemonProcess:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ftpd", "serve", "--config", str(self.project.config_path)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=self.env,
            cwd=self.project.root,
        )
        self._stderr = StderrLines(self.proc.stderr)  # a new list: a restart starts afresh
        listening = re.compile(r"LISTENING host=\S+ port=(\d+)")
        line = self._stderr.wait_for(listening, timeout)
        if line is None:
            self.kill()
            raise RuntimeError("daemon did not start:\n" + "\n".join(self.lines))
        self.port = int(listening.search(line).group(1))  # type: ignore[union-attr]
        return self

    def wait_for_line(self, pattern: str, timeout: float = 20.0, start: int = 0) -> str:
        """Block until a stderr line from index ``start`` on matches (woken per line read)."""
        assert self._stderr is not None, "the daemon was not started"
        line = self._stderr.wait_for(re.compile(pattern), timeout, start)
        if line is None:
            raise AssertionError(
                f"no line matching {pattern!r}; got:\n" + "\n".join(self.lines[-50:])
            )
        return line

    def connect(self, timeout: float = 10.0) -> Connection:
        return Connection("127.0.0.1", self.port, timeout=timeout)

    def login(self, user: str = "alice", timeout: float = 10.0) -> Connection:
        conn = self.connect(timeout)
        conn.login(user, PASSWORDS[user])
        return conn

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def wait(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        code = self.proc.wait(timeout)
        if self._stderr is not None:
            self._stderr.join(timeout=5)  # every line the process wrote is in self.lines
        return code

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()


@pytest.fixture
def daemon(project: Project) -> Iterator[DaemonProcess]:
    proc = DaemonProcess(project)
    yield proc
    proc.stop()
