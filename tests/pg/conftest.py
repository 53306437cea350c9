"""A real PostgreSQL for the shared-state tests, started by the tests themselves.

``pg_server`` (once per session) runs ``initdb`` and ``pg_ctl`` into a temporary folder,
listening on a free port of 127.0.0.1 and on a Unix socket in that folder, as an
unprivileged system user when the tests run as root (PostgreSQL refuses root).  Missing
binaries skip these tests on a developer's machine and fail them in CI (``CI=true``).
``dsn`` hands each test the schema-initialised database with every table emptied;
``nodes`` makes ``PgState`` objects ("nodes", each with its own pool) and closes them.

Nothing sleeps to synchronise: ``pg_ctl -w`` waits for readiness itself, and every wait
here has a deadline.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

PG_USER = "ftpd-pgtest"
BINARIES = ("initdb", "pg_ctl", "postgres")
COMMAND_TIMEOUT_S = 90


class FakeClock:
    """Seconds since the epoch that every node of a test shares; moved by hand."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _service_user() -> str | None:
    """The user PostgreSQL runs as: None (ourselves) unless we are root."""
    if os.geteuid() != 0:
        return None
    try:
        subprocess.run(["id", "-u", PG_USER], check=True, capture_output=True, timeout=30)
    except subprocess.CalledProcessError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", PG_USER],
            check=True,
            capture_output=True,
            timeout=30,
        )
    return PG_USER


class PgServer:
    """One PostgreSQL cluster in ``base``; ``stop``/``start``/``freeze`` for the outage
    tests."""

    def __init__(self, base: Path, user: str | None) -> None:
        self.base = base
        self.user = user
        self.data = base / "data"
        self.sockets = base / "sock"
        self.log = base / "postgres.log"
        self.port = 0

    def _run(self, *argv: str) -> subprocess.CompletedProcess[str]:
        prefix = ["runuser", "-u", self.user, "--"] if self.user else []
        done = subprocess.run(
            [*prefix, *argv],
            cwd=self.base,
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT_S,
            env={**os.environ, "LC_ALL": "C", "LANG": "C"},
        )
        if done.returncode != 0:
            tail = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise RuntimeError(f"{argv[0]} failed: {done.stdout}{done.stderr}\n{tail}")
        return done

    def init(self) -> None:
        self.sockets.mkdir()
        if self.user:
            shutil.chown(self.base, self.user)
            shutil.chown(self.sockets, self.user)
        self._run(
            "initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust",
            "-E", "UTF8", "--locale=C", "--no-sync",
        )  # fmt: skip

    def start(self) -> None:
        """Start on the port it had (a free one the first time); returns when it accepts
        connections (``pg_ctl -w``)."""
        for attempt in range(3):
            if not self.port or attempt:
                self.port = _free_port()
            options = (
                f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.sockets}"
                " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
                " -c max_connections=200"
            )
            try:
                self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60",
                          "-o", options, "start")  # fmt: skip
                return
            except RuntimeError:
                if attempt == 2:
                    raise

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "-t", "60", "stop")

    def pids(self) -> list[int]:
        """The postmaster and its children (to freeze the whole server)."""
        master = int((self.data / "postmaster.pid").read_text().split()[0])
        found = [master]
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                with contextlib.suppress(OSError, IndexError, ValueError):
                    stat = (entry / "stat").read_text()
                    if int(stat.rsplit(")", 1)[1].split()[1]) == master:
                        found.append(int(entry.name))
        return found

    @contextlib.contextmanager
    def frozen(self) -> Iterator[None]:
        """SIGSTOP the server (a hung database: the socket stays open, nothing answers)."""
        pids = self.pids()
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        try:
            yield
        finally:
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)

    def dsn(self, dbname: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def create_database(self, name: str) -> str:
        import psycopg

        with psycopg.connect(self.dsn("postgres"), autocommit=True, connect_timeout=10) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.dsn(name)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    missing = [name for name in BINARIES if shutil.which(name) is None]
    if missing:
        why = f"PostgreSQL binaries not on PATH: {', '.join(missing)}"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{why} (CI must run the PostgreSQL tests)")
        pytest.skip(why)
    base = Path(tempfile.mkdtemp(prefix="ftpd-pg-"))  # short: the socket path has a limit
    server = PgServer(base, _service_user())
    try:
        server.init()
        server.start()
        yield server
    finally:
        with contextlib.suppress(Exception):
            server.stop()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_database(pg_server: PgServer) -> str:
    """The tests' database, with the schema made once."""
    from ftpd.state.postgresql import init_schema

    dsn = pg_server.create_database("ftpd_test")
    init_schema(dsn)
    return dsn


@pytest.fixture
def dsn(pg_database: str, pg_server: PgServer) -> str:
    """The tests' database with every table emptied (the server restarted if a test
    stopped it)."""
    import psycopg

    from ftpd.state.pg.schema import TABLES

    try:
        conn = psycopg.connect(pg_database, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError:
        pg_server.start()
        conn = psycopg.connect(pg_database, autocommit=True, connect_timeout=10)
    with conn:
        conn.execute(f"TRUNCATE {', '.join(TABLES)}")
    return pg_database


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


Nodes = Callable[..., Any]


@pytest.fixture
def nodes(dsn: str, clock: FakeClock) -> Iterator[Nodes]:
    """``nodes(**kw)``: a new ``PgState`` on the test's database (the shared fake clock,
    no background thread, short timeouts unless ``kw`` says otherwise)."""
    from ftpd.state.postgresql import PgState

    made: list[PgState] = []

    def make(target: str | None = None, **kw: Any) -> PgState:
        settings: dict[str, Any] = {
            "pool_min": 1,
            "pool_max": 4,
            "timeout_s": 3.0,
            "clock": clock,
            "background": False,
            **kw,
        }
        state = PgState(target or dsn, **settings)
        made.append(state)
        return state

    yield make
    for state in made:
        state.close()
