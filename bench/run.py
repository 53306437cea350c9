"""Benchmark the daemon end to end, beside this machine's raw limits (docs/benchmarks.md).

Its one job: start a real ``python -m ftpd serve`` in a temporary project, drive it with
the real client code paths (``Connection``, ``put_file``, ``get_file``), and print each
figure next to its target and the raw limits measured in the same run.  It must never
touch the repository's conf/, home/ or logs/: everything lives in one temporary directory.

    python bench/run.py [--quick] [--size-mib N] [--fsync|--no-fsync] [--out FILE.json]

Raw limits come from ``rawlimits.py`` (throughput) and ``rawops.py`` (small operations);
profiling lives in ``hotspots.py``.  MB = 10**6 bytes throughout.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import hashlib
import json
import multiprocessing as mp
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

from passlib.hash import bcrypt

from ftp_client.connection import Connection
from ftp_client.transfer import get_file, put_file, put_many
from rawops import raw_limits, raw_round_trips, raw_small_files, settle  # bench/ is sys.path[0]

MiB, MB = 1 << 20, 10**6
USER, PASSWORD = "bench", "bench-pw"
RATIO_TARGET, SMALL_TARGET, LS_TARGET, RSS_TARGET_MIB = 0.85, 5000, 7000, 64
BURST_CLIENTS, BURST_PROCS, BURST_BYTES = 100, 4, 1 * MiB
SAMPLE_S = 0.05


# --- the daemon -----------------------------------------------------------------------


class Daemon:
    """A daemon process in its own temp project; owned by the main thread.

    ``serve`` replaces ``python -m ftpd serve`` (hotspots.py runs a profiled server);
    ``--config FILE`` is appended to it.
    """

    def __init__(self, root: Path, fsync: bool, serve: list[str] | None = None) -> None:
        self.root, self.serve = root, serve or [sys.executable, "-m", "ftpd", "serve"]
        root.mkdir(parents=True)
        (root / "users.yaml").write_text(
            f'users:\n  {USER}:\n    password: "{bcrypt.using(rounds=4).hash(PASSWORD)}"\n', "utf-8"
        )
        # Shipped settings except: port 0, paths in the temp dir, fsync as asked, and
        # max_per_ip raised from 32 because every burst client comes from 127.0.0.1.
        settings = {"host": "127.0.0.1", "port": 0, "home_root": "home", "users_file": "users.yaml",
                    "log_dir": "logs", "log_level": "INFO", "max_per_ip": 128,
                    "fsync": "true" if fsync else "false"}
        self.config = root / "ftpd.yaml"
        self.config.write_text("".join(f"{k}: {v}\n" for k, v in settings.items()), "utf-8")
        self.stderr_path = root / "stderr.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0

    def start(self, timeout_s: float = 20.0) -> "Daemon":
        with open(self.stderr_path, "wb") as err:  # a file, not a pipe: nothing to pump
            self.proc = subprocess.Popen([*self.serve, "--config", str(self.config)],
                                         stdout=subprocess.DEVNULL, stderr=err, cwd=self.root)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and self.proc.poll() is None:
            match = re.search(r"LISTENING host=\S+ port=(\d+)", self.stderr_path.read_text("utf-8", "replace"))
            if match:
                self.port = int(match.group(1))
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError("the daemon did not start:\n" + self.stderr_path.read_text("utf-8", "replace"))

    def status(self, key: str) -> int:
        """A number from /proc/<pid>/status (VmRSS in KiB, Threads)."""
        assert self.proc is not None
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
        raise KeyError(key)

    def cpu_s(self) -> float:
        """User + system CPU seconds the daemon has used so far (/proc/<pid>/stat)."""
        assert self.proc is not None
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def login(self) -> Connection:
        conn = Connection("127.0.0.1", self.port, timeout=120)
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


@contextlib.contextmanager
def sampling(d: Daemon) -> Iterator[dict[str, int]]:
    """Sample the daemon's VmRSS (KiB) and Threads every 50 ms in a thread; yield the peaks."""
    peaks, halt = {"rss_kib": 0, "threads": 0}, threading.Event()

    def sample() -> None:
        while True:
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


# --- figures ----------------------------------------------------------------------------


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


def big_transfer(d: Daemon, tmp: Path, src: Path, src_md5: str, digest: str) -> dict[str, Any]:
    """One put and one get of ``src`` with ``digest``; MB/s, RSS peak and the md5 check."""
    size, dst, remote = src.stat().st_size, tmp / f"got-{digest}.bin", f"/big-{digest}.bin"
    with d.login() as conn, sampling(d) as peaks:
        settle(tmp, size)
        t0 = time.perf_counter()
        put_file(conn, src, remote, digest=digest)
        put_s = time.perf_counter() - t0
        settle(tmp, size)
        t0 = time.perf_counter()
        get_file(conn, remote, dst, digest=digest)
        get_s = time.perf_counter() - t0
        conn.call("rm", path=remote)
    ok = md5_of(dst) == src_md5
    dst.unlink()
    return {"put_MBps": size / MB / put_s, "get_MBps": size / MB / get_s, "md5_ok": ok,
            "peak_rss_kib": peaks["rss_kib"], "peak_threads": peaks["threads"]}


def per_op(d: Daemon, count: int, loop: Callable[[], object]) -> dict[str, float]:
    """Run ``loop()`` (count round trips); the rate, and wall and CPU microseconds per op.

    CPU comes from /proc for the daemon (10 ms ticks) and process_time for this process:
    it shows whether a round trip waits on the daemon, on the client, or on neither.
    """
    os.sync()
    c0, s0, t0 = time.process_time(), d.cpu_s(), time.perf_counter()
    loop()
    wall, us = time.perf_counter() - t0, 1e6 / count
    return {"per_s": count / wall, "wall_us": wall * us, "server_cpu_us": (d.cpu_s() - s0) * us,
            "client_cpu_us": (time.process_time() - c0) * us}


def small_puts(d: Daemon, tmp: Path, count: int, pipelined: bool = False) -> dict[str, float]:
    """``count`` puts of 4 KiB in one session: one round trip each, or pipelined as
    ``put -r`` sends them (``put_many``: up to 32 in flight)."""
    src = tmp / "small.bin"
    src.write_bytes(os.urandom(4096))
    folder = "/piped" if pipelined else "/small"
    with d.login() as conn:
        conn.call("mkdir", path=folder, parents=True)
        if pipelined:
            pairs = [(src, f"{folder}/f{i:05d}") for i in range(count)]
            return per_op(d, count, lambda: put_many(conn, pairs))
        return per_op(d, count, lambda: [put_file(conn, src, f"{folder}/f{i:05d}") for i in range(count)])


def ls_round_trips(d: Daemon, tmp: Path, count: int) -> dict[str, float]:
    """``count`` listings of a 10-entry directory in one session."""
    src = tmp / "ls.bin"
    src.write_bytes(b"x" * 100)
    with d.login() as conn:
        conn.call("mkdir", path="/lsdir", parents=True)
        for i in range(10):
            put_file(conn, src, f"/lsdir/e{i}")
        assert len(conn.listdir("/lsdir")) == 10
        return per_op(d, count, lambda: [conn.listdir("/lsdir") for _ in range(count)])


def _burst_client(port: int, index: int, work: Path, go: threading.Event, out: list) -> None:
    """One burst client: connect, log in, put 1 MiB, get it back, compare md5s."""
    src, dst = work / f"src{index}", work / f"dst{index}"
    go.wait()
    started, error = time.monotonic(), None
    try:
        with Connection("127.0.0.1", port, timeout=120) as conn:
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
    go, out = threading.Event(), []
    threads = [threading.Thread(target=_burst_client, args=(port, i, work, go, out)) for i in range(first, first + n)]
    for t in threads:
        t.start()
    barrier.wait()
    go.set()
    for t in threads:
        t.join()
    results.put(out)


def burst(d: Daemon, tmp: Path) -> dict[str, Any]:
    """100 clients (4 processes x 25 threads) released at once; wall time and errors."""
    with d.login() as conn:
        conn.call("mkdir", path="/burst")
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(BURST_PROCS + 1), ctx.Queue()
    per = BURST_CLIENTS // BURST_PROCS
    procs = [ctx.Process(target=_burst_process, args=(d.port, p * per, per, tmp / "burst", barrier, results))
             for p in range(BURST_PROCS)]
    for p in procs:
        p.start()
    with sampling(d) as peaks:
        barrier.wait(timeout=120)
        t0 = time.monotonic()
        rows = [row for _ in procs for row in results.get(timeout=600)]
    for p in procs:
        p.join()
    errors = [e for _, _, e in rows if e]
    latencies = sorted(end - start for start, end, _ in rows)
    return {"clients": len(rows), "errors": len(errors), "error_samples": sorted(set(errors))[:5],
            "wall_s": max(end for _, end, _ in rows) - t0, "p50_s": latencies[len(latencies) // 2],
            "max_s": latencies[-1], "peak_rss_kib": peaks["rss_kib"], "peak_threads": peaks["threads"]}


# --- the run ----------------------------------------------------------------------------


def loadavg() -> str:
    with open("/proc/loadavg") as f:
        return f.read().split()[0]


def machine() -> dict[str, str]:
    with open("/proc/cpuinfo") as f:
        model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "?")
    return {"nproc": str(os.cpu_count()), "cpu": model, "kernel": platform.release(),
            "python": platform.python_version(), "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "loadavg_before": loadavg()}


def run(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    size, count = args.size, args.count
    res: dict[str, Any] = {"machine": machine(), "size_bytes": size, "count": count}
    print(f"raw limits ({size // MiB} MiB each) ...", flush=True)
    res["raw"] = raw = raw_limits(tmp, size)
    raw["small_files_per_s"] = raw_small_files(tmp, count, False)
    raw["small_files_fsync_per_s"] = raw_small_files(tmp, count, True)
    raw["round_trips_per_s"] = raw_round_trips()
    fsyncs = [args.fsync] if args.fsync is not None else [True, False]
    d = Daemon(tmp / "srv", fsyncs[0]).start()
    try:
        res["daemon_fsync"] = fsyncs[0]
        res["baseline_rss_kib"], res["baseline_threads"] = d.status("VmRSS"), d.status("Threads")
        src = tmp / "source.bin"
        src_md5 = make_source(src, size)
        digests = ["md5", "sha1"] if raw["sha1_MBps"] > raw["md5_MBps"] else ["md5"]  # md5 the ceiling?
        for digest in digests:
            print(f"{size // MiB} MiB put/get ({digest}) ...", flush=True)
            res[f"big_{digest}"] = big_transfer(d, tmp, src, src_md5, digest)
        src.unlink()
        print(f"{count} small puts, {count} ls, burst of {BURST_CLIENTS} ...", flush=True)
        res["small_puts"] = {fsyncs[0]: small_puts(d, tmp, count)}
        res["small_puts_piped"] = {fsyncs[0]: small_puts(d, tmp, count, pipelined=True)}
        res["ls"] = ls_round_trips(d, tmp, count)
        res["burst"] = burst(d, tmp)
        res["after_threads"] = d.status("Threads")
    finally:
        res["daemon_exit"] = d.stop()
    for fsync in fsyncs[1:]:  # the other fsync setting, for the small-puts figure only
        other = Daemon(tmp / f"srv-fsync-{fsync}", fsync).start()
        try:
            res["small_puts"][fsync] = small_puts(other, tmp, count)
            res["small_puts_piped"][fsync] = small_puts(other, tmp, count, pipelined=True)
        finally:
            other.stop()
    res["machine"]["loadavg_after"] = loadavg()
    return res


def rows(res: dict[str, Any]) -> list[tuple[str, str, str, bool | None]]:
    """(figure, value, target, pass) for the table; a pass of None is for information."""
    raw, out = res["raw"], []
    for digest in ("md5", "sha1"):
        big = res.get(f"big_{digest}")
        if big is None:
            continue
        limit = raw[f"loopback_verified_{digest}_MBps"]
        target = limit * RATIO_TARGET if digest == "md5" else None
        for op in ("put", "get"):
            mbps = big[f"{op}_MBps"]
            out.append((f"{op} {res['size_bytes'] // MiB} MiB, {digest}",
                        f"{mbps:4.0f} MB/s = {mbps / limit:4.0%} of raw verified {digest} ({limit:.0f})",
                        f">= {target:.0f} MB/s (85%)" if target else "(info)",
                        None if target is None else mbps >= target and big["md5_ok"]))
        out.append((f"  md5 after the {digest} round trip", "matches" if big["md5_ok"] else "DIFFERS",
                    "matches", big["md5_ok"]))
    for fsync, op in res["small_puts"].items():
        key = "small_files_fsync_per_s" if fsync else "small_files_per_s"
        out.append((f"{res['count']} puts x 4 KiB, fsync {'on' if fsync else 'off'}",
                    f"{op['per_s']:4.0f} files/s (raw file loop {raw[key]:.0f})",
                    f">= {SMALL_TARGET} files/s", op["per_s"] >= SMALL_TARGET))
    for fsync, op in res.get("small_puts_piped", {}).items():
        key = "small_files_fsync_per_s" if fsync else "small_files_per_s"
        out.append((f"  the same pipelined (put -r), fsync {'on' if fsync else 'off'}",
                    f"{op['per_s']:4.0f} files/s (raw file loop {raw[key]:.0f})",
                    f">= {SMALL_TARGET} files/s", op["per_s"] >= SMALL_TARGET))
    ls = res["ls"]
    out.append((f"{res['count']} ls round trips", f"{ls['per_s']:4.0f} ops/s (raw ping-pong {raw['round_trips_per_s']:.0f})",
                f">= {LS_TARGET} ops/s", ls["per_s"] >= LS_TARGET))
    b = res["burst"]
    out.append((f"burst: {b['clients']} clients, 1 MiB put+get",
                f"{b['errors']} errors, {b['wall_s']:.2f} s wall (p50 {b['p50_s']:.2f} s)",
                "0 errors", b["errors"] == 0 and b["clients"] == BURST_CLIENTS))
    base = res["baseline_rss_kib"]
    peak = max(res[k]["peak_rss_kib"] for k in ("big_md5", "big_sha1") if k in res)
    growth = (peak - base) / 1024
    out.append(("daemon RSS during big transfers", f"{base / 1024:.1f} -> {peak / 1024:.1f} MiB (+{growth:.1f})",
                f"growth < {RSS_TARGET_MIB} MiB", growth < RSS_TARGET_MIB))
    out.append(("daemon RSS during the burst", f"peak {b['peak_rss_kib'] / 1024:.1f} MiB", "(info)", None))
    out.append(("daemon threads", f"{res['baseline_threads']} idle, {b['peak_threads']} peak in burst, "
                f"{res['after_threads']} after", "(info)", None))
    return out


def report(res: dict[str, Any]) -> None:
    m, raw = res["machine"], res["raw"]
    print(f"\nftpd benchmark {m['date']}: {m['nproc']} x {m['cpu']}, Linux {m['kernel']}, "
          f"Python {m['python']}, load average {m['loadavg_before']} before, {m['loadavg_after']} after")
    print(f"raw limits, {res['size_bytes'] // MiB} MiB each for throughput:")
    for key, value in raw.items():
        print(f"  {key:<32} {value:8.0f} {'MB/s' if key.endswith('MBps') else '/s'}")
    table = rows(res)
    res["rows"] = [{"figure": f, "value": v, "target": t, "pass": p} for f, v, t, p in table]
    widths = [max(len(r[i]) for r in table) for i in range(3)]
    print(f"\n{'figure':<{widths[0]}}  {'value':<{widths[1]}}  {'target':<{widths[2]}}  result")
    for figure, value, target, ok in table:
        verdict = "-" if ok is None else "PASS" if ok else "MISS"
        print(f"{figure:<{widths[0]}}  {value:<{widths[1]}}  {target:<{widths[2]}}  {verdict}")
    print("\nper round trip, microseconds: wall / daemon CPU / client CPU")
    ops = [(f"put 4 KiB, fsync {'on' if k else 'off'}", v) for k, v in res["small_puts"].items()] + [("ls", res["ls"])]
    for name, op in ops:
        print(f"  {name:<20} {op['wall_us']:6.0f} / {op['server_cpu_us']:6.0f} / {op['client_cpu_us']:6.0f}")
    for error in res["burst"]["error_samples"]:
        print(f"burst error: {error}")
    print(f"daemon fsync {'on' if res['daemon_fsync'] else 'off'}; exit status after SIGTERM: {res['daemon_exit']}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="64 MiB and 200 ops instead of 1 GiB and 1,000")
    ap.add_argument("--size-mib", type=int, help="size of the big transfers and raw tests, MiB")
    ap.add_argument("--fsync", action=argparse.BooleanOptionalAction, default=None,
                    help="the daemon's fsync setting (default: on, and small puts also with it off)")
    ap.add_argument("--out", type=Path, help="write every figure to this JSON file")
    args = ap.parse_args(argv)
    args.size = (args.size_mib or (64 if args.quick else 1024)) * MiB
    args.count = 200 if args.quick else 1000
    return args


def main() -> int:
    args = parse_args()
    with tempfile.TemporaryDirectory(prefix="ftpd-bench-") as tmp:
        res = run(args, Path(tmp))
    report(res)
    if args.out:
        for key in ("small_puts", "small_puts_piped"):
            res[key] = {f"fsync_{'on' if k else 'off'}": v for k, v in res[key].items()}
        args.out.write_text(json.dumps(res, indent=2) + "\n", "utf-8")
        print(f"wrote {args.out}")
    return 1 if any(r["pass"] is False for r in res["rows"]) else 0


if __name__ == "__main__":
    sys.exit(main())
