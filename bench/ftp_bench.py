"""Benchmark our FTP listener against pyftpdlib and vsftpd with the same client work.

Its one job: start each server in a temporary directory on 127.0.0.1, drive it with the
same clients (curl for 1 GiB STOR and RETR, ftplib for 1,000 STORs of 4 KiB in one
session and 1,000 NLST round trips, 100 ftplib clients at once, 1,000 idle logged-in
sessions whose memory is read from /proc), and print one table with the ratios.  A
peer that cannot be had here (pyftpdlib not installed, no vsftpd binary) is skipped
with a note.  Where we cannot win a row, the floor that stops us is printed beside it:
we fsync every upload and record its md5, the peers do neither.

    python bench/ftp_bench.py [--quick] [--size-mib N] [--no-fsync] [--only ours,pyftpdlib]

It never touches the repository's conf/, home/ or logs/, sends nothing beyond 127.0.0.1,
and stops every server it started (by its own process id).
"""

from __future__ import annotations

import argparse
import contextlib
import ftplib
import hashlib
import io
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

MiB = 1 << 20
USER, PASSWORD = "bench", "bench-pw"
ROOT = Path(__file__).resolve().parent.parent


def free_range(count: int) -> tuple[int, int]:
    """``count`` consecutive free ports (asked of the OS)."""
    for _ in range(200):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            base = probe.getsockname()[1]
        socks = []
        try:
            for port in range(base, base + count):
                sock = socket.socket()
                socks.append(sock)
                sock.bind(("127.0.0.1", port))
            return base, base + count - 1
        except OSError:
            continue
        finally:
            for sock in socks:
                sock.close()
    raise RuntimeError("no free port range")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
            return
        time.sleep(0.05)  # polling a server that says nothing when it is ready
    raise RuntimeError("server did not listen in time")


# --- the servers ---------------------------------------------------------------------------


@dataclass
class Server:
    """One server process under test; ``user``/``password`` log in, ``home`` is its folder."""

    name: str
    port: int
    home: Path
    proc: subprocess.Popen[bytes]
    user: str = USER
    password: str = PASSWORD
    notes: list[str] = field(default_factory=list)

    def rss_kib(self) -> int:
        """Memory (PSS) of the server and all its children (vsftpd forks per session)."""
        return sum(_rss(pid) for pid in _tree(self.proc.pid))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def _tree(pid: int) -> list[int]:
    pids, todo = [], [pid]
    while todo:
        current = todo.pop()
        pids.append(current)
        with contextlib.suppress(OSError):
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
            todo += [int(c) for c in children]
    return pids


def _rss(pid: int) -> int:
    """KiB of proportional set size (PSS): pages shared by vsftpd's forked sessions are
    split between them, not counted once per process."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    return 0


def start_ours(work: Path, fsync: bool) -> Server:
    from passlib.hash import bcrypt

    root = work / "ours"
    (root / "home").mkdir(parents=True)
    (root / "users.yaml").write_text(
        f'users:\n  {USER}:\n    password: "{bcrypt.using(rounds=4).hash(PASSWORD)}"\n'
    )
    port = free_port()
    low, high = free_range(101)
    (root / "ftpd.yaml").write_text(
        "host: 127.0.0.1\nport: 0\nhome_root: home\nusers_file: users.yaml\nlog_dir: null\n"
        f"log_level: WARNING\nmax_connections: 2000\nmax_per_ip: 2000\n"
        # The brake counts an attempt when it starts, so 100 logins at once from one
        # address would be braked as a parallel brute force; the peers have no brake.
        "login_max_failures: 10000\nlogin_max_failures_per_ip: 10000\n"
        f"fsync: {'true' if fsync else 'false'}\n"
        f"ftp:\n  port: {port}\n  passive_ports: {low}-{high}\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "ftpd", "serve", "--config", str(root / "ftpd.yaml")],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_port(port, proc)
    return Server("ours", port, root / "home" / USER, proc)


PYFTPDLIB = """
import sys
from pyftpdlib.authorizers import DummyAuthorizer
from pyftpdlib.handlers import FTPHandler
from pyftpdlib.servers import FTPServer
home, port, low, high, user, password = sys.argv[1:7]
auth = DummyAuthorizer()
auth.add_user(user, password, home, perm="elradfmwMT")
FTPHandler.authorizer = auth
FTPHandler.passive_ports = range(int(low), int(high) + 1)
FTPHandler.banner = "pyftpdlib"
import logging
logging.basicConfig(level=logging.WARNING)
server = FTPServer(("127.0.0.1", int(port)), FTPHandler)
server.max_cons = 2000
server.max_cons_per_ip = 0
server.serve_forever()
"""


def start_pyftpdlib(work: Path) -> Server | str:
    try:
        import pyftpdlib  # noqa: F401
    except ImportError:
        return "pyftpdlib is not installed (pip install pyftpdlib)"
    home = work / "pyftpdlib"
    home.mkdir()
    port = free_port()
    low, high = free_range(101)
    proc = subprocess.Popen(
        [sys.executable, "-c", PYFTPDLIB, str(home), str(port), str(low), str(high)]
        + [USER, PASSWORD],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_port(port, proc)
    return Server("pyftpdlib", port, home, proc)


def start_vsftpd(work: Path) -> Server | str:
    """vsftpd with anonymous uploads into a folder (no system user is made for the run)."""
    binary = shutil.which("vsftpd") or (
        "/usr/sbin/vsftpd" if Path("/usr/sbin/vsftpd").exists() else None
    )
    if binary is None:
        return "vsftpd is not installed (apt-get install vsftpd)"
    if os.geteuid() != 0:
        return "vsftpd needs root to start here"
    root = work / "vsftpd"
    upload = root / "pub"
    upload.mkdir(parents=True)
    root.chmod(0o755)
    with contextlib.suppress(KeyError, PermissionError):
        import pwd

        ftp_user = pwd.getpwnam("ftp")
        os.chown(upload, ftp_user.pw_uid, ftp_user.pw_gid)
    Path("/var/run/vsftpd/empty").mkdir(parents=True, exist_ok=True)
    port = free_port()
    low, high = free_range(101)
    conf = root / "vsftpd.conf"
    conf.write_text(
        "listen=YES\nlisten_ipv6=NO\nbackground=NO\n"
        f"listen_address=127.0.0.1\nlisten_port={port}\n"
        f"anonymous_enable=YES\nno_anon_password=YES\nanon_root={root}\n"
        "write_enable=YES\nanon_upload_enable=YES\nanon_mkdir_write_enable=YES\n"
        "anon_other_write_enable=YES\nanon_world_readable_only=NO\nanon_umask=022\n"
        "local_enable=NO\npasv_enable=YES\n"
        f"pasv_min_port={low}\npasv_max_port={high}\npasv_address=127.0.0.1\n"
        "max_clients=2000\nmax_per_ip=2000\nseccomp_sandbox=NO\n"
        "xferlog_enable=NO\ndirmessage_enable=NO\nuse_localtime=NO\n"
        "idle_session_timeout=600\ndata_connection_timeout=600\n"
    )
    proc = subprocess.Popen(
        [binary, str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_port(port, proc)
    except RuntimeError as exc:
        return f"vsftpd did not start: {exc}"
    server = Server("vsftpd", port, upload, proc, user="anonymous", password="")
    server.notes.append("anonymous uploads into /pub (no system user made for the run)")
    return server


# --- the work ------------------------------------------------------------------------------


def login(server: Server, timeout: float = 60) -> ftplib.FTP:
    client = ftplib.FTP()
    client.connect("127.0.0.1", server.port, timeout=timeout)
    client.login(server.user, server.password)
    if server.name == "vsftpd":
        client.cwd("pub")
    return client


def remote(server: Server, name: str) -> str:
    prefix = "pub/" if server.name == "vsftpd" else ""
    return f"ftp://{server.user}:{server.password}@127.0.0.1:{server.port}/{prefix}{name}"


def curl_store(server: Server, source: Path) -> float:
    started = time.perf_counter()
    subprocess.run(["curl", "-sS", "-T", str(source), remote(server, "big.bin")], check=True)
    return time.perf_counter() - started


def curl_fetch(server: Server) -> float:
    started = time.perf_counter()
    subprocess.run(["curl", "-sS", "-o", "/dev/null", remote(server, "big.bin")], check=True)
    return time.perf_counter() - started


def small_stores(server: Server, count: int) -> float:
    client = login(server)
    payload = os.urandom(4096)
    client.voidcmd("TYPE I")
    started = time.perf_counter()
    for i in range(count):
        client.storbinary(f"STOR s{i}", io.BytesIO(payload))
    elapsed = time.perf_counter() - started
    client.quit()
    return elapsed


def nlst_round_trips(server: Server, count: int) -> float:
    client = login(server)
    started = time.perf_counter()
    for _ in range(count):
        client.nlst()
    elapsed = time.perf_counter() - started
    client.quit()
    return elapsed


def burst(server: Server, clients: int) -> float:
    """``clients`` at once, each: log in, STOR 64 KiB, RETR it, quit."""
    payload = os.urandom(64 * 1024)
    errors: list[BaseException] = []
    start = threading.Barrier(clients + 1)

    def one(i: int) -> None:
        try:
            start.wait(60)
            client = login(server)
            client.storbinary(f"STOR b{i}", io.BytesIO(payload))
            out = io.BytesIO()
            client.retrbinary(f"RETR b{i}", out.write)
            assert out.getvalue() == payload
            client.quit()
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    start.wait(60)
    started = time.perf_counter()
    for thread in threads:
        thread.join(300)
    elapsed = time.perf_counter() - started
    if errors:
        raise RuntimeError(f"{len(errors)} of {clients} clients failed: {errors[0]!r}")
    return elapsed


def idle_sessions(server: Server, count: int) -> float:
    """KiB of server memory per idle logged-in session."""
    settle_rss = server.rss_kib()
    sessions = []
    try:
        for _ in range(count):
            sessions.append(login(server))
        sessions[-1].voidcmd("NOOP")
        after = server.rss_kib()
    finally:
        for client in sessions:
            with contextlib.suppress(OSError, EOFError, ftplib.Error):
                client.close()
    return (after - settle_rss) / count


# --- floors --------------------------------------------------------------------------------


def md5_floor(size: int) -> float:
    """Seconds to md5 ``size`` bytes here: what every byte of our uploads pays."""
    block = os.urandom(MiB)
    hasher = hashlib.md5(usedforsecurity=False)
    started = time.perf_counter()
    for _ in range(size // MiB):
        hasher.update(block)
    return time.perf_counter() - started


def fsync_floor(folder: Path, count: int) -> float:
    """Seconds for ``count`` create + write 4 KiB + fsync(file) + fsync(folder)."""
    fd_dir = os.open(folder, os.O_RDONLY)
    started = time.perf_counter()
    try:
        for i in range(count):
            path = folder / f"f{i}"
            fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
            os.write(fd, b"x" * 4096)
            os.fsync(fd)
            os.close(fd)
            os.fsync(fd_dir)
    finally:
        os.close(fd_dir)
    return time.perf_counter() - started


def thread_floor(count: int) -> float:
    """KiB of memory per idle Python thread blocked in recv (what each session costs us
    before it holds anything of its own)."""
    before = _rss(os.getpid())
    pairs = [socket.socketpair() for _ in range(count)]
    threads = [threading.Thread(target=a.recv, args=(1,), daemon=True) for a, _ in pairs]
    for thread in threads:
        thread.start()
    after = _rss(os.getpid())
    for _, b in pairs:
        b.send(b"x")
    for thread in threads:
        thread.join(10)
    for a, b in pairs:
        a.close()
        b.close()
    return (after - before) / count


# --- the run -------------------------------------------------------------------------------


@dataclass
class Row:
    name: str
    unit: str
    better: str  # "lower" or "higher"
    values: dict[str, float] = field(default_factory=dict)
    floor: str = ""


def run(args: argparse.Namespace) -> list[Row]:
    size = args.size_mib * MiB
    small, nlst, clients, idle = (200, 200, 20, 100) if args.quick else (1000, 1000, 100, 1000)
    rows = [
        Row(f"STOR {args.size_mib} MiB (curl)", "MB/s", "higher"),
        Row(f"RETR {args.size_mib} MiB (curl)", "MB/s", "higher"),
        Row(f"{small} STORs of 4 KiB, one ftplib session", "files/s", "higher"),
        Row(f"{nlst} NLST round trips", "ops/s", "higher"),
        Row(f"{clients} clients at once (login, STOR+RETR 64 KiB)", "s", "lower"),
        Row(f"{idle} idle logged-in sessions", "KiB each", "lower"),
    ]
    with tempfile.TemporaryDirectory(prefix="ftp-bench-") as tmp:
        work = Path(tmp)
        source = work / "big.src"
        with open(source, "wb") as f:
            chunk = os.urandom(MiB)
            for _ in range(args.size_mib):
                f.write(chunk)
        starters: dict[str, Callable[[], Server | str]] = {
            "ours": lambda: start_ours(work, not args.no_fsync),
            "pyftpdlib": lambda: start_pyftpdlib(work),
            "vsftpd": lambda: start_vsftpd(work),
        }
        for name, starter in starters.items():
            if args.only and name not in args.only:
                continue
            started = starter()
            if isinstance(started, str):
                print(f"# {name}: skipped: {started}")
                continue
            server = started
            steps: list[tuple[Row, Callable[[], float]]] = [
                (rows[0], lambda s=server: size / curl_store(s, source) / 1e6),
                (rows[1], lambda s=server: size / curl_fetch(s) / 1e6),
                (rows[2], lambda s=server: small / small_stores(s, small)),
                (rows[3], lambda s=server: nlst / nlst_round_trips(s, nlst)),
                (rows[4], lambda s=server: burst(s, clients)),
                (rows[5], lambda s=server: idle_sessions(s, idle)),
            ]
            try:
                print(f"# {name}: running", flush=True)
                for row, step in steps:
                    try:
                        row.values[name] = step()
                    except (OSError, EOFError, ftplib.Error, RuntimeError) as exc:
                        server.notes.append(f"{row.name}: failed: {exc!r}"[:200])
                for note in server.notes:
                    print(f"# {name}: {note}")
            finally:
                server.stop()
        floor_dir = work / "floor"
        floor_dir.mkdir()
        md5_s = md5_floor(size)
        rows[0].floor = f"md5 of every byte alone: {size / md5_s / 1e6:.0f} MB/s"
        from ftpd.ftp.transfer import INSTALL_SETTLE_S

        check = f"the {INSTALL_SETTLE_S * 1000:.0f} ms install check alone: "
        check += f"{1 / INSTALL_SETTLE_S:.0f} files/s"
        rows[2].floor = check
        if not args.no_fsync:
            fsync_s = fsync_floor(floor_dir, min(small, 300)) / min(small, 300)
            rows[2].floor += f"; fsync of file + folder alone: {1 / fsync_s:.0f} files/s"
        rows[5].floor = f"a thread per session: {thread_floor(200):.0f} KiB each"
    return rows


def show(rows: list[Row]) -> None:
    names = ["ours", "pyftpdlib", "vsftpd"]
    print(f"\n| row | {' | '.join(names)} | ours vs best peer | floor |")
    print("|---|" + "---|" * (len(names) + 2))
    for row in rows:
        cells = [f"{row.values[n]:.1f}" if n in row.values else "-" for n in names]
        peers = [row.values[n] for n in names[1:] if n in row.values]
        ratio = "-"
        if "ours" in row.values and peers:
            best = max(peers) if row.better == "higher" else min(peers)
            mine = row.values["ours"]
            value = mine / best if row.better == "higher" else best / mine
            ratio = f"{value:.2f}x {'ahead' if value >= 1 else 'behind'}"
        print(f"| {row.name} ({row.unit}) | {' | '.join(cells)} | {ratio} | {row.floor} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="64 MiB, 200 ops, 20 clients")
    parser.add_argument("--size-mib", type=int, default=None)
    parser.add_argument("--no-fsync", action="store_true", help="our daemon without fsync")
    parser.add_argument("--only", type=lambda s: s.split(","), default=None)
    args = parser.parse_args()
    if args.size_mib is None:
        args.size_mib = 64 if args.quick else 1024
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 8192)), hard))
    if shutil.which("curl") is None:
        print("curl is required", file=sys.stderr)
        return 2
    print(
        f"# {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}, python {sys.version.split()[0]}"
    )
    show(run(args))
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
    sys.exit(130)
