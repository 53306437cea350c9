"""The peers of ``run.py``: pyftpdlib (from PyPI) and vsftpd (from Debian), driven by ftplib.

Its one job: start each peer on 127.0.0.1 in a temporary folder, run the same work as
``run.py`` asks of our daemon (a STOR loop and a RETR loop of small files in one session,
NLST round trips, clients at once, idle logged-in sessions) and return plain figures.  A
peer that cannot be had here is returned as a sentence saying why, and the run goes on
without it.  Neither peer verifies or flushes what it stores; that is the point of the
comparison.  Every socket has a timeout; every process started here is stopped by its own
id; nothing is sent beyond 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import ftplib
import io
import os
import pwd
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

USER, PASSWORD = "bench", "bench-pw"
TIMEOUT_S = 60.0
#: A burst client's socket timeout: vsftpd's listen backlog (32) can drop a connection
#: whose client then waits for a greeting that never comes; that is an error, counted.
BURST_TIMEOUT_S = 20.0
#: Passive ports of each peer: many, since thousands of data connections in TIME_WAIT
#: (each STOR, RETR and NLST opens one) make a small range stall new ones.
PASSIVE_PORTS = 1000


@dataclass
class Peer:
    """A peer server process; ``cwd`` is the folder to work in after login."""

    name: str
    port: int
    proc: subprocess.Popen[bytes]
    user: str = USER
    password: str = PASSWORD
    cwd: str = ""
    notes: list[str] = field(default_factory=list)

    def memory_kib(self) -> int:
        """PSS of the server and all its children (vsftpd forks per session): pages that
        forked sessions share are split between them, not counted once per process."""
        return sum(pss_kib(pid) for pid in process_tree(self.proc.pid))

    def cpu_s(self) -> float:
        return sum(cpu_s(pid) for pid in process_tree(self.proc.pid))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def process_tree(pid: int) -> list[int]:
    pids, todo = [], [pid]
    while todo:
        current = todo.pop()
        pids.append(current)
        with contextlib.suppress(OSError):
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
            todo += [int(c) for c in children]
    return pids


def pss_kib(pid: int) -> int:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    return 0


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of one process so far, with its reaped children's (a
    vsftpd session's processes hand their time to the listener when they end)."""
    with contextlib.suppress(OSError):
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")
    return 0.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def free_range(count: int) -> tuple[int, int]:
    """``count`` consecutive ports that are free now (for passive data connections).

    Looked for below the kernel's ephemeral range, where other programs' outgoing
    connections do not land and make a long run of free ports rare.
    """
    low_ephemeral = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    bases = list(range(10000, max(10001, low_ephemeral - count), count))
    random.shuffle(bases)
    for base in bases[:50]:
        socks = []
        try:
            for port in range(base, base + count):
                sock = socket.socket()
                socks.append(sock)
                # as the servers bind their passive ports: past connections' TIME_WAIT
                # entries do not make a port busy
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind(("127.0.0.1", port))
            return base, base + count - 1
        except OSError:
            continue
        finally:
            for sock in socks:
                sock.close()
    raise RuntimeError("no free port range")


def wait_ftp(port: int, proc: subprocess.Popen[bytes], timeout_s: float = 30.0) -> None:
    """Poll until the server greets (it says nothing elsewhere when it is ready)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"exited with status {proc.returncode}")
        with contextlib.suppress(OSError, EOFError, ftplib.Error):
            client = ftplib.FTP()
            client.connect("127.0.0.1", port, timeout=2)
            client.close()
            return
        time.sleep(0.05)  # polling an external process's readiness, with a deadline
    raise RuntimeError("did not listen in time")


# --- starting the peers -------------------------------------------------------------------

PYFTPDLIB = """
import logging, sys
from pyftpdlib.authorizers import DummyAuthorizer
from pyftpdlib.handlers import FTPHandler
from pyftpdlib.servers import FTPServer, ThreadedFTPServer
home, port, low, high, user, password, kind = sys.argv[1:8]
logging.basicConfig(level=logging.WARNING)
auth = DummyAuthorizer()
auth.add_user(user, password, home, perm="elradfmwMT")
FTPHandler.authorizer = auth
FTPHandler.passive_ports = range(int(low), int(high) + 1)
FTPHandler.banner = "pyftpdlib"
kind_of_server = ThreadedFTPServer if kind == "threaded" else FTPServer
server = kind_of_server(("127.0.0.1", int(port)), FTPHandler)
server.max_cons = 4000
server.max_cons_per_ip = 0
server.serve_forever()
"""


def start_pyftpdlib(work: Path, threaded: bool = False) -> Peer | str:
    """pyftpdlib's FTPServer (one process, epoll) or its ThreadedFTPServer."""
    try:
        import pyftpdlib  # type: ignore[import-untyped]  # noqa: F401
    except ImportError:
        return "pyftpdlib is not installed (pip install -e '.[test]')"
    kind = "threaded" if threaded else "async"
    home = work / f"pyftpdlib-{kind}"
    home.mkdir(parents=True)
    port, (low, high) = free_port(), free_range(PASSIVE_PORTS)
    argv = [str(home), str(port), str(low), str(high), USER, PASSWORD, kind]
    proc = subprocess.Popen(
        [sys.executable, "-c", PYFTPDLIB, *argv],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_ftp(port, proc)
    except RuntimeError as exc:
        proc.kill()
        proc.wait(10)
        return f"pyftpdlib did not start: {exc}"
    return Peer(f"pyftpdlib{' (threaded)' if threaded else ''}", port, proc)


def start_vsftpd(work: Path) -> Peer | str:
    """vsftpd with anonymous uploads into /pub of a temp folder (no system user is made)."""
    binary = shutil.which("vsftpd") or next(
        (p for p in ("/usr/sbin/vsftpd",) if Path(p).exists()), None
    )
    if binary is None:
        return "vsftpd is not installed (apt-get install -y vsftpd)"
    if os.geteuid() != 0:
        return "vsftpd needs root to start (it chroots and drops privileges)"
    try:
        ftp_user = pwd.getpwnam("ftp")
    except KeyError:
        return "vsftpd needs the 'ftp' system user, which its Debian package makes"
    root = work / "vsftpd"
    upload = root / "pub"
    upload.mkdir(parents=True)
    root.chmod(0o755)  # the chroot must not be writable by the session
    os.chown(upload, ftp_user.pw_uid, ftp_user.pw_gid)
    Path("/var/run/vsftpd/empty").mkdir(parents=True, exist_ok=True)
    port, (low, high) = free_port(), free_range(PASSIVE_PORTS)
    conf = work / "vsftpd.conf"
    conf.write_text(
        "listen=YES\nlisten_ipv6=NO\nbackground=NO\n"
        f"listen_address=127.0.0.1\nlisten_port={port}\n"
        f"anonymous_enable=YES\nno_anon_password=YES\nanon_root={root}\n"
        "write_enable=YES\nanon_upload_enable=YES\nanon_mkdir_write_enable=YES\n"
        "anon_other_write_enable=YES\nanon_world_readable_only=NO\nanon_umask=022\n"
        "local_enable=NO\npasv_enable=YES\n"
        f"pasv_min_port={low}\npasv_max_port={high}\npasv_address=127.0.0.1\n"
        "max_clients=4000\nmax_per_ip=4000\nseccomp_sandbox=NO\n"
        "xferlog_enable=NO\ndirmessage_enable=NO\nuse_localtime=NO\n"
        "idle_session_timeout=600\ndata_connection_timeout=600\n"
    )
    proc = subprocess.Popen(
        [binary, str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_ftp(port, proc)
    except RuntimeError as exc:
        proc.kill()
        proc.wait(10)
        return f"vsftpd did not start: {exc}"
    peer = Peer("vsftpd", port, proc, user="anonymous", password="", cwd="pub")
    peer.notes.append("anonymous uploads into /pub (no system user made for the run)")
    return peer


# --- the work -----------------------------------------------------------------------------


def login(peer: Peer, timeout_s: float = TIMEOUT_S) -> ftplib.FTP:
    client = ftplib.FTP()
    client.connect("127.0.0.1", peer.port, timeout=timeout_s)
    client.login(peer.user, peer.password)
    if peer.cwd:
        client.cwd(peer.cwd)
    client.voidcmd("TYPE I")
    return client


def stor_loop(peer: Peer, names: list[str], payload: bytes, folder: str) -> tuple[float, float]:
    """(seconds, server CPU seconds) for one session's STORs of ``payload`` under
    ``folder`` (made first); CPU is read while the session is still open."""
    client = login(peer)
    try:
        client.mkd(folder)
        client.cwd(folder)
        cpu0, started = peer.cpu_s(), time.perf_counter()
        for name in names:
            client.storbinary(f"STOR {name}", io.BytesIO(payload))
        return time.perf_counter() - started, peer.cpu_s() - cpu0
    finally:
        client.quit()


def retr_loop(peer: Peer, names: list[str], folder: str, into: Path) -> tuple[float, float]:
    """(seconds, server CPU seconds) for one session's RETRs of ``names``, each written
    to a local file."""
    client = login(peer)
    into.mkdir(parents=True, exist_ok=True)
    try:
        client.cwd(folder)
        cpu0, started = peer.cpu_s(), time.perf_counter()
        for name in names:
            with open(into / name, "wb") as f:
                client.retrbinary(f"RETR {name}", f.write)
        return time.perf_counter() - started, peer.cpu_s() - cpu0
    finally:
        client.quit()


def nlst_loop(peer: Peer, count: int, entries: int = 10) -> tuple[float, float]:
    """(seconds, server CPU seconds) for ``count`` NLSTs in one session, of a folder of
    ``entries`` files (made first, as for our ``ls``)."""
    client = login(peer)
    folder = "lsdir"
    try:
        with contextlib.suppress(ftplib.error_perm):  # made by an earlier round
            client.mkd(folder)
        for i in range(entries):
            client.storbinary(f"STOR {folder}/e{i}", io.BytesIO(b"x" * 100))
        assert len(client.nlst(folder)) == entries, "unexpected listing"
        cpu0, started = peer.cpu_s(), time.perf_counter()
        for _ in range(count):
            client.nlst(folder)
        return time.perf_counter() - started, peer.cpu_s() - cpu0
    finally:
        client.quit()


def _burst_client(
    port: int, user: str, password: str, cwd: str, index: int, go: threading.Event, out: list
) -> None:
    """One client: log in, STOR its payload, RETR it back, compare."""
    payload = os.urandom(1 << 20)
    go.wait()
    started, error = time.monotonic(), None
    try:
        client = ftplib.FTP()
        client.connect("127.0.0.1", port, timeout=BURST_TIMEOUT_S)
        client.login(user, password)
        if cwd:
            client.cwd(cwd)
        client.storbinary(f"STOR burst{index}.bin", io.BytesIO(payload))
        got = io.BytesIO()
        client.retrbinary(f"RETR burst{index}.bin", got.write)
        client.quit()
        if got.getvalue() != payload:
            error = "content differs after the round trip"
    except Exception as exc:  # counted and reported, never fatal to the run
        error = f"{type(exc).__name__}: {exc}"
    out.append((started, time.monotonic(), error))


def burst_process(
    port: int, user: str, password: str, cwd: str, first: int, n: int, barrier: Any, results: Any
) -> None:
    """A client process: its threads wait for every process, then start together."""
    go, out = threading.Event(), list[tuple]()
    threads = [
        threading.Thread(target=_burst_client, args=(port, user, password, cwd, i, go, out))
        for i in range(first, first + n)
    ]
    for t in threads:
        t.start()
    barrier.wait()
    go.set()
    for t in threads:
        t.join(TIMEOUT_S * 3)
    results.put(out)


def open_idle(peer: Peer, count: int, threads: int = 8) -> tuple[list[ftplib.FTP], list[str]]:
    """``count`` logged-in sessions (from ``threads`` threads); the errors, if any."""
    sessions: list[ftplib.FTP] = []
    errors: list[str] = []
    lock = threading.Lock()

    def opener(n: int) -> None:
        for _ in range(n):
            try:
                client = login(peer)
                with lock:
                    sessions.append(client)
            except Exception as exc:  # counted and reported
                with lock:
                    errors.append(f"{type(exc).__name__}: {exc}")

    share = [count // threads + (1 if i < count % threads else 0) for i in range(threads)]
    workers = [threading.Thread(target=opener, args=(n,)) for n in share]
    for w in workers:
        w.start()
    for w in workers:
        w.join(TIMEOUT_S * 5)
    return sessions, errors


def close_all(sessions: list[ftplib.FTP]) -> None:
    for client in sessions:
        with contextlib.suppress(OSError, EOFError, ftplib.Error):
            client.close()
