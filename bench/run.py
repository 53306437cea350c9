"""The benchmark: our daemon through ftp-client, beside raw floors and peers, in one run.

Its one job: in one temporary folder, start a real ``python -m ftpd serve`` (fsync on, as
shipped), pyftpdlib and vsftpd (peers, skipped with a note when they cannot be had) and
a minimal server with our framing (``floor.py``), then measure, phase by phase so that
every row's figures are taken close together:

* 1 GiB put and get through ftp-client's shell (login timed apart), beside the raw
  verified limit (sendfile -> recv_into -> md5 -> write) with and without the final fsync;
* 1,000 files of 4 KiB: ``put -r`` of a folder, the same as a batch of one ``put`` per
  line, and the peers' ftplib STOR loop; then ``get -r``, batch gets and the RETR loop;
* 1,000 ``ls`` round trips beside the peers' NLST and the minimal server's ``ls``;
* 100 clients at once (login, put and get 1 MiB, md5 checked), the password-hash cost
  apart;
* 1,000 idle logged-in sessions: memory each, beside the peers and the minimal server.

The throughput rows run twice (``--rounds``) and keep each figure's best round; the raw
verified limits are measured right beside our big transfers.  It prints one table, each
row with its ratio, the goal of issue 11 and, where the goal is missed, the floor that
stops it; then the daemon's CPU per command.  It exits 0 when
the run completed and every transfer checked out (goals missed are reported, not
failures); 1 if a transfer failed, a burst client erred or the daemon stopped uncleanly.
Everything is on 127.0.0.1, bounded in count and time.  It never touches the
repository's conf/, home/ or logs/.

    python bench/run.py [--quick] [--size-mib N] [--count N] [--idle N] [--clients N]
                        [--rounds N] [--no-fsync] [--no-peers] [--out FILE.json]

MB = 10**6 bytes throughout.  Raw limits: ``rawlimits.py``, ``rawops.py``; peers:
``peers.py``; profiling: ``hotspots.py``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import hashlib
import io
import json
import multiprocessing as mp
import os
import platform
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import floor
import peers
from passlib.hash import bcrypt
from rawlimits import loopback_verified_limit
from rawops import (  # bench/ is sys.path[0]
    raw_limits,
    raw_round_trips,
    raw_small_files,
    raw_small_files_grouped,
    settle,
)

from ftp_client.connection import Connection
from ftp_client.shell import Session, Shell, parse_script, run_batch
from ftp_client.transfer import get_file, put_file, put_many

MiB, KiB, MB = 1 << 20, 1 << 10, 10**6
USER, PASSWORD = peers.USER, peers.PASSWORD
BENCH_ROUNDS = 4  # the bench's bcrypt cost; the shipped one is passlib's default
SMALL_BYTES = 4 * KiB
BURST_PROCS, BURST_BYTES = 4, 1 * MiB
SAMPLE_S = 0.05
IDLE_HOLD_S = 2.0
TIMEOUT_S = 120.0
ROOT = Path(__file__).resolve().parent.parent

# Goals of issue 11, as ratios measured in the same run.
GOAL_PUT_R = 2.0  # put -r of small files >= 2 x the better peer's STOR loop
GOAL_BATCH = 1.0  # one put per batch line >= 1 x it
GOAL_BIG_PUT = 0.85  # 1 GiB put >= 0.85 x raw verified with the final flush
GOAL_BIG_GET = 1.0  # 1 GiB get >= 1 x raw verified
GOAL_LS_VSFTPD = 2.0  # ls >= 2 x vsftpd's NLST
GOAL_LS_FLOOR = 0.7  # ls >= 0.7 x the minimal server
GOAL_IDLE_KIB = 32.0  # idle session <= 32 KiB


# --- the daemon -----------------------------------------------------------------------


class Daemon:
    """A daemon process in its own temp project; owned by the main thread.

    ``serve`` replaces ``python -m ftpd serve`` (hotspots.py runs a profiled server);
    ``--config FILE`` is appended to it.
    """

    def __init__(self, root: Path, fsync: bool, serve: list[str] | None = None) -> None:
        self.root, self.serve = root, serve or [sys.executable, "-m", "ftpd", "serve"]
        root.mkdir(parents=True)
        hashed = bcrypt.using(rounds=BENCH_ROUNDS).hash(PASSWORD)
        (root / "users.yaml").write_text(f'users:\n  {USER}:\n    password: "{hashed}"\n', "utf-8")
        # Shipped settings except: port 0, paths in the temp dir, fsync as asked, and the
        # connection limits raised: every client of the burst and of the idle sessions
        # comes from 127.0.0.1 (the shipped max_per_ip of 32 would refuse them).
        settings = {
            "host": "127.0.0.1",
            "port": 0,
            "home_root": "home",
            "users_file": "users.yaml",
            "log_dir": "logs",
            "log_level": "INFO",
            "max_connections": 4000,
            "max_per_ip": 4000,
            "fsync": "true" if fsync else "false",
        }
        self.config = root / "ftpd.yaml"
        self.config.write_text("".join(f"{k}: {v}\n" for k, v in settings.items()), "utf-8")
        self.stderr_path = root / "stderr.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0

    def start(self, timeout_s: float = 30.0) -> Daemon:
        with open(self.stderr_path, "wb") as err:  # a file, not a pipe: nothing to pump
            self.proc = subprocess.Popen(
                [*self.serve, "--config", str(self.config)],
                stdout=subprocess.DEVNULL,
                stderr=err,
                cwd=self.root,
            )
        deadline = time.monotonic() + timeout_s
        pattern = re.compile(r"LISTENING host=\S+ port=(\d+)")
        while time.monotonic() < deadline and self.proc.poll() is None:
            match = pattern.search(self.stderr_path.read_text("utf-8", "replace"))
            if match:
                self.port = int(match.group(1))
                return self
            time.sleep(0.05)  # polling the daemon's log for its port, with a deadline
        self.stop()
        log = self.stderr_path.read_text("utf-8", "replace")
        raise RuntimeError("the daemon did not start:\n" + log)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def status(self, key: str) -> int:
        """A number from /proc/<pid>/status (VmRSS in KiB, Threads)."""
        return proc_status(self.pid, key)

    def cpu_s(self) -> float:
        """User + system CPU seconds the daemon has used so far (/proc/<pid>/stat)."""
        return peers.cpu_s(self.pid)

    def login(self) -> Connection:
        conn = Connection("127.0.0.1", self.port, timeout=TIMEOUT_S)
        conn.login(USER, PASSWORD)
        return conn

    def stop(self) -> int | None:
        """SIGTERM (a graceful stop), then the exit status."""
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(10)


def proc_status(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


@contextlib.contextmanager
def sampling(d: Daemon) -> Iterator[dict[str, int]]:
    """Sample the daemon's VmRSS (KiB) and Threads every 50 ms in a thread; yield the peaks."""
    peaks, halt = {"rss_kib": 0, "threads": 0}, threading.Event()

    def sample() -> None:
        while True:
            with contextlib.suppress(OSError, KeyError):
                peaks["rss_kib"] = max(peaks["rss_kib"], d.status("VmRSS"))
                peaks["threads"] = max(peaks["threads"], d.status("Threads"))
            if halt.wait(SAMPLE_S):
                return

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield peaks
    finally:
        halt.set()
        thread.join()


# --- the client: ftp-client's shell, in this process --------------------------------------


def shell_for(d: Daemon, digest: str = "md5") -> Shell:
    """ftp-client's shell (``-q``, a batch), connected on first use."""
    session = Session(lambda: Connection("127.0.0.1", d.port, timeout=TIMEOUT_S), USER, PASSWORD)
    return Shell(session, quiet=True, interactive=False, digest=digest)


def run_lines(shell: Shell, lines: list[str]) -> float:
    """Seconds to run ``lines`` as ftp-client runs a batch file; raises if one fails."""
    commands = parse_script(lines)
    out = io.StringIO()
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(out):
        status = run_batch(shell, commands)
    elapsed = time.perf_counter() - t0
    if status:
        raise RuntimeError(f"ftp-client batch failed with status {status}")
    return elapsed


@contextlib.contextmanager
def keep_cwd() -> Iterator[None]:
    """``lcd`` moves this process's working directory: put it back afterwards."""
    before = os.getcwd()
    try:
        yield
    finally:
        os.chdir(before)


def make_source(path: Path, size: int) -> str:
    """Write ``size`` pseudo-random bytes (a 16 MiB random block, repeated); return the md5."""
    block, h = os.urandom(16 * MiB), hashlib.md5(usedforsecurity=False)
    with open(path, "wb") as f:
        for start in range(0, size, len(block)):
            piece = block[: min(len(block), size - start)]
            f.write(piece)
            h.update(piece)
    return h.hexdigest()


def md5_of(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, lambda: hashlib.md5(usedforsecurity=False)).hexdigest()


# --- phases against our daemon ----------------------------------------------------------------


def big_transfer(
    d: Daemon, tmp: Path, src: Path, src_md5: str, digest: str = "md5", rounds: int = 1
) -> dict[str, Any]:
    """``put`` and ``get`` of ``src`` through the shell, login timed apart; MB/s and md5.

    Each round measures the raw verified limit right before ours (with the final fsync
    before the put, without before the get), every step after ``settle``, so that each
    ratio compares figures taken seconds apart; the best of ``rounds`` of each is kept.
    """
    size, dst = src.stat().st_size, tmp / "got-big.bin"
    shell = shell_for(d, digest)
    t0 = time.perf_counter()
    shell.conn  # connect and log in  # noqa: B018
    login_s = time.perf_counter() - t0
    best = {"put_MBps": 0.0, "get_MBps": 0.0, "raw_flush_MBps": 0.0, "raw_MBps": 0.0}
    ok = True
    with sampling(d) as peaks:
        for _ in range(rounds):
            figures = {}
            settle(tmp, size)
            figures["raw_flush_MBps"] = loopback_verified_limit(tmp, size, fsync=True)
            settle(tmp, size)
            figures["put_MBps"] = size / MB / run_lines(shell, [f"put {src} /big.bin"])
            settle(tmp, size)
            figures["raw_MBps"] = loopback_verified_limit(tmp, size)
            settle(tmp, size)
            figures["get_MBps"] = size / MB / run_lines(shell, [f"get /big.bin {dst}"])
            run_lines(shell, ["rm /big.bin"])
            ok = ok and md5_of(dst) == src_md5
            dst.unlink()
            best = {k: max(v, figures[k]) for k, v in best.items()}
    shell.session.close()
    return {**best, "login_s": login_s, "md5_ok": ok, "peak_rss_kib": peaks["rss_kib"]}


def make_small_files(folder: Path, count: int) -> list[str]:
    folder.mkdir(parents=True)
    names = [f"f{i:05d}" for i in range(count)]
    for name in names:
        (folder / name).write_bytes(os.urandom(SMALL_BYTES))
    return names


def small_files(
    d: Daemon, tmp: Path, source: Path, names: list[str], tag: str = ""
) -> dict[str, Any]:
    """``put -r``, batch puts, ``get -r`` and batch gets of the small files through the
    shell: files/s, the daemon's and this process's CPU per file of each, and whether
    every file came back as it was.  ``tag`` keeps the folders of each round apart."""
    count, res = len(names), dict[str, Any]()
    shell = shell_for(d)
    shell.conn  # noqa: B018
    got_r, got_batch = tmp / f"got-r{tag}", tmp / f"got-batch{tag}"
    got_batch.mkdir()
    up_r, up_batch = f"/put-r{tag}", f"/batch{tag}"
    steps: list[tuple[str, list[str], list[str]]] = [
        ("put_r", [], [f"put -r {source} {up_r}"]),
        (
            "batch_put",
            [f"mkdir {up_batch}", f"cd {up_batch}", f"lcd {source}"],
            [f"put {n}" for n in names],
        ),
        ("get_r", ["cd /"], [f"get -r {up_r} {got_r}"]),
        ("batch_get", [f"cd {up_batch}", f"lcd {got_batch}"], [f"get {n}" for n in names]),
    ]
    with keep_cwd():
        for key, setup, lines in steps:
            run_lines(shell, setup)
            os.sync()
            cpu0, mine0 = d.cpu_s(), time.process_time()
            seconds = run_lines(shell, lines)
            res[key] = {
                "per_s": count / seconds,
                "server_cpu_us": (d.cpu_s() - cpu0) * 1e6 / count,
                "client_cpu_us": (time.process_time() - mine0) * 1e6 / count,
            }
    shell.session.close()
    res["verified"] = all(
        (got_r / n).read_bytes() == (got_batch / n).read_bytes() == (source / n).read_bytes()
        for n in names
    )
    shutil.rmtree(got_r)
    shutil.rmtree(got_batch)
    return res


def best_of(rounds: list[dict[str, Any]], key: str = "per_s") -> dict[str, Any]:
    """Per figure, the round where it went fastest (its CPU figures come with it)."""
    merged: dict[str, Any] = {}
    for name, value in rounds[0].items():
        if isinstance(value, dict) and key in value:
            merged[name] = max((r[name] for r in rounds), key=lambda fig: fig[key])
        elif isinstance(value, bool):
            merged[name] = all(r[name] for r in rounds)
        else:
            merged[name] = value
    return merged


def per_op(d: Daemon, count: int, loop: Callable[[], object]) -> dict[str, float]:
    """Run ``loop()`` (count round trips); the rate, and wall and CPU microseconds per op."""
    c0, s0, t0 = time.process_time(), d.cpu_s(), time.perf_counter()
    loop()
    wall, us = time.perf_counter() - t0, 1e6 / count
    return {
        "per_s": count / wall,
        "wall_us": wall * us,
        "server_cpu_us": (d.cpu_s() - s0) * us,
        "client_cpu_us": (time.process_time() - c0) * us,
    }


def small_puts(d: Daemon, tmp: Path, count: int, pipelined: bool = False) -> dict[str, float]:
    """``count`` puts of 4 KiB in one session, one round trip each or pipelined
    (``put_many``); kept for ``hotspots.py small``."""
    src = tmp / "small.bin"
    src.write_bytes(os.urandom(SMALL_BYTES))
    folder = "/piped" if pipelined else "/small"
    with d.login() as conn:
        conn.call("mkdir", path=folder, parents=True)
        if pipelined:
            pairs = [(src, f"{folder}/f{i:05d}") for i in range(count)]
            return per_op(d, count, lambda: put_many(conn, pairs))
        return per_op(
            d, count, lambda: [put_file(conn, src, f"{folder}/f{i:05d}") for i in range(count)]
        )


def ls_round_trips(d: Daemon, tmp: Path, count: int) -> dict[str, float]:
    """``count`` listings of a 10-entry directory in one session (also ``hotspots.py ls``)."""
    src = tmp / "ls.bin"
    src.write_bytes(b"x" * 100)
    with d.login() as conn:
        conn.call("mkdir", path="/lsdir", parents=True)
        for i in range(10):
            put_file(conn, src, f"/lsdir/e{i}")
        assert len(conn.listdir("/lsdir")) == 10
        return per_op(d, count, lambda: [conn.listdir("/lsdir") for _ in range(count)])


def stat_round_trips(d: Daemon, count: int) -> dict[str, float]:
    with d.login() as conn:
        return per_op(d, count, lambda: [conn.call("stat", path="/lsdir/e0") for _ in range(count)])


def floor_ls(f: floor.Floor, count: int) -> dict[str, float]:
    """The same ``ls`` loop against the minimal server."""
    conn = Connection("127.0.0.1", f.port, timeout=TIMEOUT_S)
    try:
        conn.login(USER, PASSWORD)
        assert len(conn.listdir("/lsdir")) == floor.ENTRIES
        c0, s0, t0 = time.process_time(), peers.cpu_s(f.pid), time.perf_counter()
        for _ in range(count):
            conn.listdir("/lsdir")
        wall, us = time.perf_counter() - t0, 1e6 / count
        return {
            "per_s": count / wall,
            "server_cpu_us": (peers.cpu_s(f.pid) - s0) * us,
            "client_cpu_us": (time.process_time() - c0) * us,
        }
    finally:
        conn.quit()


# --- many clients at once ---------------------------------------------------------------------


def _burst_client(port: int, index: int, work: Path, go: threading.Event, out: list) -> None:
    """One burst client: connect, log in, put 1 MiB, get it back, compare md5s."""
    src, dst = work / f"src{index}", work / f"dst{index}"
    go.wait()
    started, error = time.monotonic(), None
    try:
        with Connection("127.0.0.1", port, timeout=TIMEOUT_S) as conn:
            conn.login(USER, PASSWORD)
            put_file(conn, src, f"/burst/c{index}.bin")
            get_file(conn, f"/burst/c{index}.bin", dst)
        if md5_of(dst) != md5_of(src):
            error = "md5 mismatch after the round trip"
    except Exception as exc:  # counted and reported, never fatal to the run
        error = f"{type(exc).__name__}: {exc}"
    out.append((started, time.monotonic(), error))


def _burst_process(port: int, first: int, n: int, work: Path, barrier: Any, results: Any) -> None:
    """A worker process: prepares its files and threads, waits for all, then releases them."""
    work.mkdir(parents=True, exist_ok=True)
    for i in range(first, first + n):
        (work / f"src{i}").write_bytes(os.urandom(BURST_BYTES))
    go, out = threading.Event(), list[tuple]()
    threads = [
        threading.Thread(target=_burst_client, args=(port, i, work, go, out))
        for i in range(first, first + n)
    ]
    for t in threads:
        t.start()
    barrier.wait()
    go.set()
    for t in threads:
        t.join(TIMEOUT_S * 3)
    results.put(out)


def burst_rows(rows: list[tuple[float, float, str | None]], t0: float) -> dict[str, Any]:
    errors = [e for _, _, e in rows if e]
    latencies = sorted(end - start for start, end, _ in rows) or [0.0]
    return {
        "clients": len(rows),
        "errors": len(errors),
        "error_samples": sorted(set(errors))[:5],
        "wall_s": max((end for _, end, _ in rows), default=t0) - t0,
        "p50_s": latencies[len(latencies) // 2],
    }


def run_burst(
    target: Callable[..., None], args_of: Callable[[int, int], tuple], clients: int
) -> dict[str, Any]:
    """``clients`` clients in BURST_PROCS processes, released at once by a barrier."""
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(BURST_PROCS + 1), ctx.Queue()
    shares = [
        clients // BURST_PROCS + (1 if p < clients % BURST_PROCS else 0) for p in range(BURST_PROCS)
    ]
    starts = [sum(shares[:p]) for p in range(BURST_PROCS)]
    procs = [
        ctx.Process(target=target, args=(*args_of(starts[p], shares[p]), barrier, results))
        for p in range(BURST_PROCS)
    ]
    for p in procs:
        p.start()
    try:
        barrier.wait(timeout=TIMEOUT_S)
        t0 = time.monotonic()
        rows = [row for _ in procs for row in results.get(timeout=TIMEOUT_S * 4)]
    finally:
        for p in procs:
            p.join(30)
            if p.is_alive():
                p.kill()
    return burst_rows(rows, t0)


def burst(d: Daemon, tmp: Path, clients: int) -> dict[str, Any]:
    """Our daemon: ``clients`` at once, each login + put 1 MiB + get + md5 check."""
    with d.login() as conn:
        conn.call("mkdir", path="/burst")
    work = tmp / "burst"
    with sampling(d) as peaks:
        res = run_burst(_burst_process, lambda first, n: (d.port, first, n, work), clients)
    res["peak_rss_kib"], res["peak_threads"] = peaks["rss_kib"], peaks["threads"]
    shutil.rmtree(work, ignore_errors=True)
    return res


def hash_cost() -> dict[str, float]:
    """Milliseconds of one bcrypt verification at the bench's cost and at the shipped one."""
    from ftpd.accounts.users import CONTEXT

    cheap = bcrypt.using(rounds=BENCH_ROUNDS).hash(PASSWORD)
    shipped = CONTEXT.hash(PASSWORD)
    res = {}
    for key, hashed, n in (("bench_ms", cheap, 20), ("shipped_ms", shipped, 2)):
        t0 = time.perf_counter()
        for _ in range(n):
            CONTEXT.verify(PASSWORD, hashed)
        res[key] = (time.perf_counter() - t0) * 1000 / n
    res["shipped_rounds"] = float(CONTEXT.handler("bcrypt").default_rounds)
    return res


# --- idle sessions ----------------------------------------------------------------------------


def open_framed(port: int, count: int, threads: int = 8) -> tuple[list[Connection], list[str]]:
    """``count`` logged-in framed sessions, opened from ``threads`` threads."""
    conns: list[Connection] = []
    errors: list[str] = []
    lock = threading.Lock()

    def opener(n: int) -> None:
        for _ in range(n):
            try:
                conn = Connection("127.0.0.1", port, timeout=TIMEOUT_S)
                conn.login(USER, PASSWORD)
                with lock:
                    conns.append(conn)
            except Exception as exc:
                with lock:
                    errors.append(f"{type(exc).__name__}: {exc}")

    share = [count // threads + (1 if i < count % threads else 0) for i in range(threads)]
    workers = [threading.Thread(target=opener, args=(n,)) for n in share]
    for w in workers:
        w.start()
    for w in workers:
        w.join(TIMEOUT_S * 5)
    return conns, errors


def hold(measure: Callable[[], int], cpu: Callable[[], float]) -> tuple[int, float]:
    """Memory after the sessions are open, and the server's CPU share while they idle.

    The hold is the measurement itself (CPU over IDLE_HOLD_S), not a synchronisation.
    """
    c0, t0 = cpu(), time.monotonic()
    time.sleep(IDLE_HOLD_S)
    return measure(), (cpu() - c0) / (time.monotonic() - t0)


def idle_framed(port: int, pid: int, count: int) -> dict[str, Any]:
    """``count`` idle logged-in sessions on a framed server (ours or the floor)."""
    before = proc_status(pid, "VmRSS")
    conns, errors = open_framed(port, count)
    try:
        rss, cpu_share = hold(lambda: proc_status(pid, "VmRSS"), lambda: peers.cpu_s(pid))
        alive = 0
        for conn in conns[:: max(1, len(conns) // 20)]:  # a sample still answers
            conn.call("pwd")
            alive += 1
    finally:
        for conn in conns:
            conn.close()
    return {
        "opened": len(conns),
        "errors": errors[:5],
        "per_session_kib": (rss - before) / max(len(conns), 1),
        "idle_cpu_pct": cpu_share * 100,
        "sampled_alive": alive,
    }


def idle_peer(peer: peers.Peer, count: int) -> dict[str, Any]:
    before = peer.memory_kib()
    sessions, errors = peers.open_idle(peer, count)
    try:
        mem, cpu_share = hold(peer.memory_kib, peer.cpu_s)
    finally:
        peers.close_all(sessions)
    return {
        "opened": len(sessions),
        "errors": errors[:5],
        "per_session_kib": (mem - before) / max(len(sessions), 1),
        "idle_cpu_pct": cpu_share * 100,
    }


# --- peers ------------------------------------------------------------------------------------


def peer_small(peer: peers.Peer, tmp: Path, names: list[str], tag: str = "") -> dict[str, Any]:
    payload = os.urandom(SMALL_BYTES)
    stor_s, stor_cpu = peers.stor_loop(peer, names, payload, f"small{tag}")
    into = tmp / f"retr-{peer.name.split()[0]}{tag}"
    retr_s, retr_cpu = peers.retr_loop(peer, names, f"small{tag}", into)
    ok = all((into / n).read_bytes() == payload for n in names)
    shutil.rmtree(into)
    count = len(names)
    return {
        "stor_per_s": count / stor_s,
        "retr_per_s": count / retr_s,
        "stor_cpu_us": stor_cpu * 1e6 / count,
        "retr_cpu_us": retr_cpu * 1e6 / count,
        "retr_ok": ok,
    }


def best_peer_small(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """The best STOR round and the best RETR round, each with its own CPU figure."""
    stor = max(rounds, key=lambda r: r["stor_per_s"])
    retr = max(rounds, key=lambda r: r["retr_per_s"])
    return {
        "stor_per_s": stor["stor_per_s"],
        "stor_cpu_us": stor["stor_cpu_us"],
        "retr_per_s": retr["retr_per_s"],
        "retr_cpu_us": retr["retr_cpu_us"],
        "retr_ok": all(r["retr_ok"] for r in rounds),
    }


def peer_nlst(peer: peers.Peer, count: int) -> dict[str, float]:
    seconds, cpu = peers.nlst_loop(peer, count)
    return {"per_s": count / seconds, "server_cpu_us": cpu * 1e6 / count}


def peer_burst(peer: peers.Peer, clients: int) -> dict[str, Any]:
    def args_of(first: int, n: int) -> tuple:
        return (peer.port, peer.user, peer.password, peer.cwd, first, n)

    return run_burst(peers.burst_process, args_of, clients)


# --- the run ----------------------------------------------------------------------------------


def loadavg() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def machine() -> dict[str, str]:
    with open("/proc/cpuinfo") as f:
        model = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "?")
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    return {
        "nproc": str(os.cpu_count()),
        "cpu": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "commit": commit + (" + uncommitted changes" if dirty else ""),
        "loadavg_before": loadavg(),
    }


def phase(text: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {text} (load {loadavg()})", file=sys.stderr, flush=True)


def run(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    size, count = args.size, args.count
    res: dict[str, Any] = {
        "machine": machine(),
        "size_bytes": size,
        "count": count,
        "args": vars(args),
    }
    res["args"] = {k: v for k, v in vars(args).items() if k != "out"}
    phase(f"raw limits ({size // MiB} MiB each) and small-file floors")
    raw = res["raw"] = raw_limits(tmp, size)
    raw["small_files_per_s"] = raw_small_files(tmp, count, False)
    raw["small_files_durable_per_s"] = raw_small_files(tmp, count, True)
    raw["small_files_grouped_per_s"] = raw_small_files_grouped(tmp, count, 32)
    raw["round_trips_per_s"] = raw_round_trips()
    res["hash"] = hash_cost()

    d = Daemon(tmp / "srv", args.fsync).start()
    started: list[peers.Peer] = []
    f: floor.Floor | None = None
    res["peers"], res["skipped"] = {}, {}
    try:
        if args.peers:
            for name, start in (
                ("pyftpdlib", peers.start_pyftpdlib),
                ("vsftpd", peers.start_vsftpd),
            ):
                got = start(tmp / "peers")
                if isinstance(got, str):
                    res["skipped"][name] = got
                    print(f"# {name} skipped: {got}", file=sys.stderr)
                else:
                    started.append(got)
                    res["peers"][got.name] = {"notes": got.notes}
        f = floor.Floor()
        res["baseline_rss_kib"] = d.status("VmRSS")

        phase(f"{size // MiB} MiB put and get through ftp-client, the raw limits beside them")
        src = tmp / "source.bin"
        src_md5 = make_source(src, size)
        res["big"] = big_transfer(d, tmp, src, src_md5, rounds=args.rounds)
        src.unlink()

        phase(f"{count} x 4 KiB: put -r, batch puts, get -r, batch gets; STOR and RETR loops")
        source = tmp / "small"
        names = make_small_files(source, count)
        ours, theirs = [], {peer.name: list[dict[str, Any]]() for peer in started}
        for r in range(args.rounds):
            ours.append(small_files(d, tmp, source, names, tag=str(r)))
            for peer in started:
                theirs[peer.name].append(peer_small(peer, tmp, names, tag=str(r)))
        res["small"] = best_of(ours)
        for name, rounds in theirs.items():
            res["peers"][name]["small"] = best_peer_small(rounds)

        phase(f"{count} ls round trips; the peers' NLST; the minimal server")
        lists: dict[str, list[dict[str, Any]]] = {"ls": [], "stat": [], "floor_ls": []}
        nlsts: dict[str, list[dict[str, Any]]] = {peer.name: [] for peer in started}
        for _ in range(args.rounds):
            lists["ls"].append(ls_round_trips(d, tmp, count))
            lists["stat"].append(stat_round_trips(d, count))
            lists["floor_ls"].append(floor_ls(f, count))
            for peer in started:
                nlsts[peer.name].append(peer_nlst(peer, count))
        for key, rounds in lists.items():
            res[key] = max(rounds, key=lambda fig: fig["per_s"])
        for name, rounds in nlsts.items():
            res["peers"][name]["nlst"] = max(rounds, key=lambda fig: fig["per_s"])

        phase(f"{args.clients} clients at once")
        res["burst"] = burst(d, tmp, args.clients)
        for peer in started:
            res["peers"][peer.name]["burst"] = peer_burst(peer, args.clients)

        phase(f"{args.idle} idle logged-in sessions")
        res["idle"] = idle_framed(d.port, d.pid, args.idle)
        res["floor_idle"] = idle_framed(f.port, f.pid, args.idle)
        for peer in started:
            res["peers"][peer.name]["idle"] = idle_peer(peer, args.idle)
        if args.peers:
            threaded = peers.start_pyftpdlib(tmp / "peers-threaded", threaded=True)
            if isinstance(threaded, str):
                res["skipped"]["pyftpdlib (threaded)"] = threaded
            else:
                try:
                    res["peers"][threaded.name] = {"idle": idle_peer(threaded, args.idle)}
                finally:
                    threaded.stop()
        res["after_threads"] = d.status("Threads")
    finally:
        res["daemon_exit"] = d.stop()
        for peer in started:
            peer.stop()
        if f is not None:
            f.stop()
    res["machine"]["loadavg_after"] = loadavg()
    return res


# --- the table --------------------------------------------------------------------------------


@dataclass
class Row:
    figure: str
    ours: str
    pyftpdlib: str = ""
    vsftpd: str = ""
    ratio: str = ""
    goal: str = ""
    met: bool | None = None
    floor: str = ""


def _peer(res: dict[str, Any], name: str, *keys: str) -> float | None:
    value: Any = res["peers"].get(name)
    for key in keys:
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value


def _best(res: dict[str, Any], *keys: str, lower: bool = False) -> tuple[str, float] | None:
    """The better peer's figure for ``keys``; a peer whose clients erred is not counted."""
    found = [
        (name, v)
        for name in ("pyftpdlib", "vsftpd")
        if (v := _peer(res, name, *keys)) is not None and not _peer(res, name, keys[0], "errors")
    ]
    if not found:
        return None
    return (min if lower else max)(found, key=lambda nv: nv[1])


def _n(value: float | None, fmt: str = "{:,.0f}") -> str:
    return "skipped" if value is None else fmt.format(value)


def rows(res: dict[str, Any]) -> list[Row]:
    raw, out, size_mib = res["raw"], [], res["size_bytes"] // MiB
    count = res["count"]
    big = res["big"]
    flush, plain = big["raw_flush_MBps"], big["raw_MBps"]
    ratio = big["put_MBps"] / flush
    out.append(
        Row(
            f"put {size_mib} MiB through ftp-client, MB/s "
            f"(login {big['login_s'] * 1000:.0f} ms apart)",
            f"{big['put_MBps']:,.0f}",
            ratio=f"{ratio:.2f} × raw verified + flush ({flush:,.0f}); "
            f"{big['put_MBps'] / plain:.2f} × without ({plain:,.0f})",
            goal=f"≥ {GOAL_BIG_PUT} × with flush",
            met=ratio >= GOAL_BIG_PUT and big["md5_ok"],
            floor=f"raw verified + flush {flush:,.0f} MB/s; md5 alone {raw['md5_MBps']:,.0f} MB/s",
        )
    )
    ratio = big["get_MBps"] / plain
    out.append(
        Row(
            f"get {size_mib} MiB through ftp-client, MB/s",
            f"{big['get_MBps']:,.0f}" + ("" if big["md5_ok"] else " (md5 DIFFERS)"),
            ratio=f"{ratio:.2f} × raw verified ({plain:,.0f}); "
            f"{big['get_MBps'] / flush:.2f} × with flush",
            goal=f"≥ {GOAL_BIG_GET} × raw verified",
            met=ratio >= GOAL_BIG_GET and big["md5_ok"],
            floor=f"raw verified {plain:,.0f} MB/s (recv + md5 + write in one thread); "
            f"md5 alone {raw['md5_MBps']:,.0f} MB/s",
        )
    )
    small = res["small"]
    durable, grouped = raw["small_files_durable_per_s"], raw["small_files_grouped_per_s"]
    rt = res["floor_ls"]["per_s"]
    for verb, peer_key, ours_r, ours_b in (
        ("put", "stor_per_s", "put_r", "batch_put"),
        ("get", "retr_per_s", "get_r", "batch_get"),
    ):
        best = _best(res, "small", peer_key)
        loop = "STOR" if verb == "put" else "RETR"
        for key, label, goal in (
            (ours_r, f"{verb} -r of a folder", GOAL_PUT_R),
            (ours_b, f"batch file, one {verb} per line", GOAL_BATCH),
        ):
            value = small[key]["per_s"]
            cpu = small[key]["server_cpu_us"]
            row = Row(
                f"{count} × 4 KiB, {label}, files/s",
                f"{value:,.0f}",
                _n(_peer(res, "pyftpdlib", "small", peer_key)),
                _n(_peer(res, "vsftpd", "small", peer_key)),
            )
            if best is not None:
                r = value / best[1]
                row.ratio = f"{r:.2f} × {best[0]}'s {loop} loop"
                row.goal = f"≥ {goal:g} × the better peer" + (
                    "" if verb == "put" else " (as for put)"
                )
                row.met = r >= goal
            one = 1e6 / cpu if cpu else float("inf")
            client = small[key]["client_cpu_us"]
            if verb == "put":
                row.floor = (
                    f"durable one by one: {durable:,.0f}/s; 32 per syncfs: {grouped:,.0f}/s; "
                    f"daemon CPU {cpu:,.0f} µs/file = {one:,.0f}/s on one core; "
                    f"client CPU {client:,.0f} µs/file"
                )
                if key == ours_b:
                    row.floor += f"; minimal-server round trip {rt:,.0f}/s"
            else:
                row.floor = (
                    f"local create+write+rename {raw['small_files_per_s']:,.0f}/s; "
                    f"daemon CPU {cpu:,.0f} µs/file = {one:,.0f}/s on one core; "
                    f"client CPU {client:,.0f} µs/file"
                )
                if key == ours_b:
                    row.floor += f"; minimal-server round trip {rt:,.0f}/s"
            out.append(row)
    ls, fl = res["ls"], res["floor_ls"]
    vs = _peer(res, "vsftpd", "nlst", "per_s")
    row = Row(
        f"{count} ls round trips (10 entries), per s",
        f"{ls['per_s']:,.0f}",
        _n(_peer(res, "pyftpdlib", "nlst", "per_s")),
        _n(vs),
    )
    parts, met = (
        [f"{ls['per_s'] / fl['per_s']:.2f} × minimal server ({fl['per_s']:,.0f})"],
        ls["per_s"] / fl["per_s"] >= GOAL_LS_FLOOR,
    )
    if vs is not None:
        parts.insert(0, f"{ls['per_s'] / vs:.2f} × vsftpd's NLST")
        met = met and ls["per_s"] / vs >= GOAL_LS_VSFTPD
    row.ratio, row.goal, row.met = (
        "; ".join(parts),
        f"≥ {GOAL_LS_VSFTPD:g} × vsftpd, ≥ {GOAL_LS_FLOOR} × minimal",
        met,
    )
    row.floor = (
        f"minimal server {fl['per_s']:,.0f}/s with {fl['server_cpu_us']:,.0f} µs server CPU per ls "
        f"(ours {ls['server_cpu_us']:,.0f}); client CPU {ls['client_cpu_us']:,.0f} µs per ls"
    )
    out.append(row)
    b, h = res["burst"], res["hash"]
    clients = b["clients"]
    best = _best(res, "burst", "wall_s", lower=True)
    hash_s = clients * h["bench_ms"] / 1000 / int(res["machine"]["nproc"])
    shipped_s = clients * h["shipped_ms"] / 1000 / int(res["machine"]["nproc"])
    row = Row(
        f"{clients} clients at once: login, put + get 1 MiB, md5 checked; wall s",
        f"{b['wall_s']:.2f} ({b['errors']} errors)",
        _n(_peer(res, "pyftpdlib", "burst", "wall_s"), "{:.2f}"),
        _n(_peer(res, "vsftpd", "burst", "wall_s"), "{:.2f}"),
    )
    left_out = ""
    for name in ("pyftpdlib", "vsftpd"):
        errs = _peer(res, name, "burst", "errors")
        if errs:
            setattr(row, name, getattr(row, name) + f" ({errs:.0f} errors)")
            left_out += f" ({name} left out: its clients erred)"
    row.ratio = (f"{best[1] / b['wall_s']:.2f} × {best[0]}'s speed{left_out}; " if best else "") + (
        f"password hashing {hash_s:.2f} s of it (bcrypt cost {BENCH_ROUNDS}); "
        f"at the shipped cost {h['shipped_rounds']:.0f}: +{shipped_s:.1f} s"
    )
    row.goal, row.met = "0 errors", b["errors"] == 0
    out.append(row)
    idle, fi = res["idle"], res["floor_idle"]
    best = _best(res, "idle", "per_session_kib", lower=True)
    thr = _peer(res, "pyftpdlib (threaded)", "idle", "per_session_kib")
    row = Row(
        f"{idle['opened']} idle logged-in sessions, KiB each",
        f"{idle['per_session_kib']:.1f} (CPU while idle {idle['idle_cpu_pct']:.1f} %, "
        f"{100 / IDLE_HOLD_S / os.sysconf('SC_CLK_TCK'):.1f} % = one tick)",
        _n(_peer(res, "pyftpdlib", "idle", "per_session_kib"), "{:.1f}")
        + ("" if thr is None else f"; threaded {thr:.1f}"),
        _n(_peer(res, "vsftpd", "idle", "per_session_kib"), "{:.1f}"),
    )
    row.ratio = f"{idle['per_session_kib'] / best[1]:.1f} × {best[0]}'s memory" if best else ""
    row.goal, row.met = f"≤ {GOAL_IDLE_KIB:g} KiB", idle["per_session_kib"] <= GOAL_IDLE_KIB
    row.floor = f"minimal server, a thread per session: {fi['per_session_kib']:.1f} KiB each"
    out.append(row)
    return out


def report(res: dict[str, Any]) -> list[Row]:
    m, raw = res["machine"], res["raw"]
    print(
        f"\nftpd benchmark {m['date']}, commit {m['commit']}: {m['nproc']} × {m['cpu']}, "
        f"Linux {m['kernel']}, Python {m['python']}; load average {m['loadavg_before']} before, "
        f"{m['loadavg_after']} after; daemon fsync {'on' if res['args']['fsync'] else 'off'}"
    )
    print(
        f"\nraw limits ({res['size_bytes'] // MiB} MiB for throughput, {res['count']} files): "
        + ", ".join(f"{k} {v:,.0f}" for k, v in raw.items())
    )
    table = rows(res)
    print("\n| figure | ours | pyftpdlib | vsftpd | ratio | goal | met | floor |")
    print("|---|---:|---:|---:|---|---|---|---|")
    for r in table:
        met = "—" if r.met is None else "yes" if r.met else "**no**"
        shown_floor = r.floor if r.met is False else ""
        cells = [r.figure, r.ours, r.pyftpdlib, r.vsftpd, r.ratio, r.goal, met, shown_floor]
        print("| " + " | ".join(cells) + " |")
    print("\ndaemon CPU per command, µs (the minimal server's ls beside it):")
    s, cpu = res["small"], "server_cpu_us"
    print(
        f"  ls {res['ls'][cpu]:,.0f} (minimal server {res['floor_ls'][cpu]:,.0f}), "
        f"stat {res['stat'][cpu]:,.0f}, small put in put -r {s['put_r'][cpu]:,.0f}, "
        f"one by one {s['batch_put'][cpu]:,.0f}, small get in get -r {s['get_r'][cpu]:,.0f}, "
        f"one by one {s['batch_get'][cpu]:,.0f}"
    )
    for name, p in res["peers"].items():
        if "small" in p:
            small, nlst = p["small"], p["nlst"]
            print(
                f"  {name}: STOR {small['stor_cpu_us']:,.0f}, RETR {small['retr_cpu_us']:,.0f}, "
                f"NLST {nlst[cpu]:,.0f}"
            )
    base, big, b = res["baseline_rss_kib"], res["big"]["peak_rss_kib"], res["burst"]
    print(
        f"daemon RSS {base / 1024:.1f} MiB at start, peak {big / 1024:.1f} MiB in the big "
        f"transfers, {b['peak_rss_kib'] / 1024:.1f} MiB in the burst ({b['peak_threads']} "
        f"threads); exit status after SIGTERM: {res['daemon_exit']}"
    )
    for name, why in res["skipped"].items():
        print(f"skipped {name}: {why}")
    for name, p in res["peers"].items():
        for note in p.get("notes", []):
            print(f"{name}: {note}")
    for error in res["burst"]["error_samples"]:
        print(f"burst error: {error}")
    for name, p in res["peers"].items():
        for error in p.get("burst", {}).get("error_samples", []):
            print(f"{name} burst error: {error}")
    for key in ("idle", "floor_idle"):
        for error in res[key]["errors"]:
            print(f"{key} error: {error}")
    return table


def failed(res: dict[str, Any]) -> list[str]:
    """What makes the run itself fail (goals missed do not)."""
    problems = []
    if not res["big"]["md5_ok"]:
        problems.append("the 1 GiB round trip changed the file")
    if not res["small"]["verified"]:
        problems.append("a small file came back different")
    if res["burst"]["errors"]:
        problems.append(f"{res['burst']['errors']} burst clients failed")
    if res["idle"]["opened"] != res["args"]["idle"]:
        problems.append(f"only {res['idle']['opened']} idle sessions opened")
    if res["daemon_exit"] != 0:
        problems.append(f"the daemon exited with {res['daemon_exit']}")
    return problems


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument(
        "--quick",
        action="store_true",
        help="64 MiB, 200 files and ls, 20 clients, 100 idle sessions (a smoke test)",
    )
    ap.add_argument("--size-mib", type=int, help="size of the big transfers and raw tests, MiB")
    ap.add_argument("--count", type=int, help="small files and ls round trips (default 1,000)")
    ap.add_argument("--clients", type=int, help="clients at once (default 100)")
    ap.add_argument("--idle", type=int, help="idle sessions (default 1,000)")
    ap.add_argument(
        "--fsync",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="the daemon's fsync setting (default: on, as shipped)",
    )
    ap.add_argument(
        "--peers",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="run pyftpdlib and vsftpd beside us (default: yes)",
    )
    ap.add_argument("--rounds", type=int, help="rounds of the throughput rows, best kept (2)")
    ap.add_argument("--out", type=Path, help="also write every figure to this JSON file")
    args = ap.parse_args(argv)
    args.size = (args.size_mib or (64 if args.quick else 1024)) * MiB
    args.count = args.count or (200 if args.quick else 1000)
    args.clients = args.clients or (20 if args.quick else 100)
    args.idle = args.idle or (100 if args.quick else 1000)
    args.rounds = args.rounds or (1 if args.quick else 2)
    return args


def raise_nofile(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        soft = needed if hard == resource.RLIM_INFINITY else min(hard, needed)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def main() -> int:
    args = parse_args()
    raise_nofile(4 * args.idle + 1000)  # inherited by the servers: each session is a socket
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="ftpd-bench-") as tmp:
        res = run(args, Path(tmp))
    res["wall_s"] = time.monotonic() - started
    table = report(res)
    res["rows"] = [vars(r) for r in table]
    print(f"\nthe run took {res['wall_s']:.0f} s")
    if args.out:
        args.out.write_text(json.dumps(res, indent=1, default=str) + "\n", "utf-8")
        print(f"wrote {args.out}")
    problems = failed(res)
    for problem in problems:
        print(f"FAILED: {problem}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
