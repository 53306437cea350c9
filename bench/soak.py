"""Soak and idle-session load test of the daemon (docs/benchmarks.md, "Soak and idle sessions").

Its one job: start a real ``python -m ftpd serve`` in a temporary project, keep hundreds of
sessions of the real client (``Connection``, ``put_file``, ``get_file``) busy for a while,
check every uploaded file on the server's disk, then hold a thousand idle sessions and check
that connections past ``max_connections`` are refused with a 421 frame.  It must never
touch the repository's conf/, home/ or logs/, nor any address but 127.0.0.1.

    python bench/soak.py [--sessions 200] [--seconds 60] [--idle 1000] [--quick] [--out FILE.json]

Exits 1 on any error, corrupted file, leftover partial, logged error, bad refusal or unclean stop.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import multiprocessing as mp
import os
import platform
import random
import re
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from passlib.hash import bcrypt

from ftpd import errors
from ftp_client.connection import Connection
from ftp_client.transfer import get_file, put_file

MiB, MB = 1 << 20, 10**6
USERS, PASSWORD, PROCS, EXTRA = 20, "soak-pw", 4, 50
SLOTS = 8  # file names per session: the disk never holds more than sessions x 8 x 4 MiB
MIX = {"put": 4, "get": 3, "ls": 2, "mkdir": 1}  # relative weights of the operations
TIMEOUT_S = 120.0  # every client socket
DAEMONS: list["Daemon"] = []  # all stopped at exit, whatever happened


def user_of(n: int) -> str:
    return f"u{n % USERS:02d}"


class Daemon:
    """``python -m ftpd serve`` in its own temp project; owned by the main thread."""

    SERVE = [sys.executable, "-m", "ftpd", "serve"]  # a tracing run may replace it

    def __init__(self, root: Path, **settings: Any) -> None:
        root.mkdir(parents=True)
        hashed = bcrypt.using(rounds=4).hash(PASSWORD)
        entry = '  {}:\n    password: "' + hashed + '"\n    quota: 100GiB\n'
        users = "".join(entry.format(user_of(i)) for i in range(USERS))
        (root / "users.yaml").write_text("users:\n" + users, "utf-8")
        conf = {"host": "127.0.0.1", "port": 0, "home_root": "home", "users_file": "users.yaml",
                "log_dir": "logs", "log_max_bytes": "1GiB", "idle_timeout": 300, "fsync": "true",
                "max_connections": 1200, "max_per_ip": 1200, **settings}
        (root / "ftpd.yaml").write_text("".join(f"{k}: {v}\n" for k, v in conf.items()), "utf-8")
        self.root, self.home, self.stderr = root, root / "home", root / "stderr.log"
        with open(self.stderr, "wb") as err:  # a file, not a pipe: nothing to pump
            self.proc = subprocess.Popen([*self.SERVE, "--config", str(root / "ftpd.yaml")],
                                         stdout=subprocess.DEVNULL, stderr=err, cwd=root)
        DAEMONS.append(self)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and self.proc.poll() is None:
            text = self.stderr.read_text("utf-8", "replace")
            if found := re.search(r"LISTENING host=\S+ port=(\d+)", text):
                self.port = int(found.group(1))
                return
            time.sleep(0.05)
        raise RuntimeError("the daemon did not start:\n" + self.stderr.read_text("utf-8", "replace"))

    def sample(self) -> dict[str, Any]:
        """VmRSS (KiB), Threads and open fds of the daemon, from /proc."""
        with open(f"/proc/{self.proc.pid}/status") as f:
            status = dict(line.split(":", 1) for line in f)
        return {"rss_kib": int(status["VmRSS"].split()[0]), "threads": int(status["Threads"]),
                "fds": len(os.listdir(f"/proc/{self.proc.pid}/fd"))}

    def settle(self, threads: int, timeout_s: float = 15.0) -> dict[str, Any]:
        """Poll until the daemon is back to ``threads`` threads (sessions ended); the last sample."""
        deadline = time.monotonic() + timeout_s
        while (now := self.sample())["threads"] > threads and time.monotonic() < deadline:
            time.sleep(0.1)
        return now

    def log_problems(self) -> dict[str, int]:
        """ERROR/CRITICAL lines and tracebacks in the daemon's log files."""
        found: Counter = Counter()
        for path in (self.root / "logs").glob("ftpd.log*"):
            for line in path.read_text("utf-8", "replace").splitlines():
                if " ERROR " in line or " CRITICAL " in line or line.startswith("Traceback"):
                    found[line.split(" ", 4)[-1][:160]] += 1
        return dict(found)

    def stop(self) -> int:
        """SIGTERM (graceful stop), then the exit status (killed after 60 s: -9)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode


class Sampler(threading.Thread):
    """The daemon's RSS, threads and fds once a second, from a thread of the main process."""

    def __init__(self, d: Daemon) -> None:
        super().__init__(daemon=True)
        self.d, self.halt, self.rows, self.t0 = d, threading.Event(), [], time.monotonic()
        self.start()

    def run(self) -> None:
        while not self.halt.is_set():
            self.rows.append({"t": round(time.monotonic() - self.t0, 1), **self.d.sample()})
            self.halt.wait(1.0)

    def stop(self) -> list[dict[str, Any]]:
        self.halt.set()
        self.join()
        return self.rows


def raise_nofile(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        soft = needed if hard == resource.RLIM_INFINITY else min(hard, needed)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def login(port: int, user: str, timeout_s: float = TIMEOUT_S) -> Connection:
    conn = Connection("127.0.0.1", port, timeout=timeout_s)
    try:
        conn.login(user, PASSWORD)
    except BaseException:
        conn.close()
        raise
    return conn


def describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:200]


# --- the soak: busy sessions ----------------------------------------------------------


class Session:
    """One soak session in one client thread: a random mix of put/get/ls/mkdir until the deadline.

    ``files`` maps each path it uploaded to the md5s the server may hold for it: one after a
    successful put; after a failed one, the old and the new (None = absent).
    """

    def __init__(self, sid: int, port: int, block: bytes, scratch: Path) -> None:
        self.sid, self.port, self.block, self.user = sid, port, block, user_of(sid)
        self.rng, self.root, self.seq = random.Random(sid), f"/s{sid:03d}", 0
        self.src, self.dst = scratch / f"src{sid}", scratch / f"dst{sid}"
        self.dirs, self.files, self.bytes = [self.root], {}, 0
        self.ops, self.errors, self.lat = Counter(), Counter(), defaultdict(list)
        self.conn: Connection | None = None

    def run(self, deadline: float) -> dict[str, Any]:
        while time.monotonic() < deadline:
            op = self.rng.choices(list(MIX), list(MIX.values()))[0]
            if op == "get" and not any(len(v) == 1 for v in self.files.values()):
                op = "put"
            started = time.monotonic()
            try:
                if self.conn is None:
                    self.conn = login(self.port, self.user)
                    self.conn.call("mkdir", path=self.root, parents=True)
                getattr(self, op)()
                self.ops[op] += 1
                self.lat[op].append(time.monotonic() - started)
            except Exception as exc:  # counted and reported, never fatal to the run
                self.fail(op, exc)
        if self.conn is not None:
            self.conn.quit()
        return {"user": self.user, "ops": self.ops, "errors": self.errors, "lat": dict(self.lat),
                "bytes": self.bytes, "files": self.files, "end": time.monotonic()}

    def fail(self, op: str, exc: BaseException) -> None:
        self.errors[f"{op}: {describe(exc)}"] += 1
        if self.conn is not None:
            self.conn.close()
            self.conn = None  # reconnect for the next operation

    def put(self) -> None:
        rng, self.seq = self.rng, self.seq + 1
        if len(self.files) < SLOTS and (not self.files or rng.random() < 0.5):
            path = f"{rng.choice(self.dirs)}/f{self.seq}"
        else:
            path = rng.choice(sorted(self.files))
        size = int(2 ** rng.uniform(10, 22))  # 1 KiB..4 MiB, log-uniform: inline and streamed puts
        start = rng.randrange(len(self.block) - size)
        # A unique prefix, so that a stale version of this path can never pass for this one.
        data = (f"{self.sid}:{self.seq}:".encode() + self.block[start : start + size])[:size]
        self.src.write_bytes(data)
        md5 = hashlib.md5(data, usedforsecurity=False).hexdigest()
        self.files[path] = self.files.get(path, {None}) | {md5}  # either, until it is answered
        put_file(self.conn, self.src, path)
        self.files[path], self.bytes = {md5}, self.bytes + size

    def get(self) -> None:
        path = self.rng.choice(sorted(p for p, v in self.files.items() if len(v) == 1))
        result = get_file(self.conn, path, self.dst)  # checks the bytes against the server's md5
        self.bytes += result.size
        if result.checksum not in self.files[path]:
            raise errors.ChecksumError(f"get {path} returned other content than the last put")

    def ls(self) -> None:
        self.conn.listdir(self.rng.choice(self.dirs))

    def mkdir(self) -> None:
        self.seq += 1
        path = f"{self.rng.choice(self.dirs)}/d{self.seq}"
        self.conn.call("mkdir", path=path)
        self.dirs.append(path)


def soak_worker(
    port: int, sids: list[int], seconds: float, scratch: Path, barrier: Any, results: Any
) -> None:
    """A client process: once every process is ready, its sessions run, one thread each.

    All sessions log in at the start, so the soak opens with a burst of logins.
    """
    block, out = os.urandom(8 * MiB), []
    sessions = [Session(sid, port, block, scratch) for sid in sids]
    barrier.wait(TIMEOUT_S)
    deadline = time.monotonic() + seconds
    threads = [threading.Thread(target=lambda s=s: out.append(s.run(deadline))) for s in sessions]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    results.put(out)


def verify(d: Daemon, sessions: list[dict[str, Any]]) -> dict[str, Any]:
    """Read every path each session uploaded from the server's disk: is its md5 the one sent?"""
    checked, uncertain, bad = 0, 0, []
    for s in sessions:
        for path, expected in s["files"].items():
            try:
                with open(d.home / s["user"] / path.lstrip("/"), "rb") as f:
                    actual = hashlib.file_digest(f, lambda: hashlib.md5(usedforsecurity=False)).hexdigest()
            except FileNotFoundError:
                actual = None
            checked, uncertain = checked + 1, uncertain + (len(expected) > 1)
            if actual not in expected:
                bad.append(f"{s['user']}:{path} holds {actual}, expected {sorted(map(str, expected))}")
    return {"files_checked": checked, "files_uncertain": uncertain, "corrupted": len(bad),
            "corrupted_samples": bad[:10], "leftover_partials": len(list(d.home.glob("*/.ftpd/partial/*")))}


def soak(tmp: Path, sessions: int, seconds: float) -> dict[str, Any]:
    d = Daemon(tmp / "soak")
    base, ctx = d.sample(), mp.get_context("spawn")
    barrier, results = ctx.Barrier(PROCS + 1), ctx.Queue()
    shm = "/dev/shm" if os.path.isdir("/dev/shm") else tmp  # client files: spare the disk
    scratch = Path(tempfile.mkdtemp(prefix="ftpd-soak-", dir=shm))
    try:
        procs = [ctx.Process(target=soak_worker, args=(d.port, list(range(p, sessions, PROCS)), seconds,
                                                       scratch, barrier, results)) for p in range(PROCS)]
        for p in procs:
            p.start()
        barrier.wait(TIMEOUT_S * 2)
        t0, sampler = time.monotonic(), Sampler(d)
        rows = [r for _ in procs for r in results.get(timeout=seconds + 900)]
        series = sampler.stop()
        for p in procs:
            p.join(30)
    finally:
        for path in scratch.iterdir():
            path.unlink()
        scratch.rmdir()
    wall, ops, errs, lat = max(r["end"] for r in rows) - t0, Counter(), Counter(), defaultdict(list)
    for r in rows:
        ops.update(r["ops"])
        errs.update(r["errors"])
        for k, v in r["lat"].items():
            lat[k] += v
    moved = sum(r["bytes"] for r in rows)
    return {"sessions": len(rows), "wall_s": wall, "ops": dict(ops), "ops_total": sum(ops.values()),
            "ops_per_s": sum(ops.values()) / wall, "errors": sum(errs.values()),
            "error_messages": dict(errs.most_common()), "bytes": moved, "MBps": moved / MB / wall,
            "latency_s": {k: pct(v) for k, v in sorted(lat.items())}, **verify(d, rows),
            "baseline": base, "series": series, "after": d.settle(base["threads"]),
            "log_problems": d.log_problems(), "exit_status": d.stop()}


def pct(values: list[float]) -> dict[str, float]:
    v = sorted(values)
    return {"p50": v[len(v) // 2], "p99": v[min(len(v) - 1, int(len(v) * 0.99))], "max": v[-1]}


# --- idle sessions and the connection limit ---------------------------------------------


def idle_worker(port: int, first: int, n: int, release: Any, results: Any) -> None:
    """Open ``n`` logged-in sessions from 8 threads, report, hold them until released, then
    check each one still answers (``pwd``) and quit."""
    raise_nofile(n + 100)
    conns, errs, lock = [], Counter(), threading.Lock()

    def opener(ids: range) -> None:
        for i in ids:
            try:
                conn = login(port, user_of(i), timeout_s=60)
                with lock:
                    conns.append(conn)
            except Exception as exc:
                with lock:
                    errs[f"login: {describe(exc)}"] += 1

    threads = [threading.Thread(target=opener, args=(range(first + k, first + n, 8),)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    results.put(len(conns))
    release.wait(600)
    alive = 0
    for conn in conns:
        try:
            conn.call("pwd")
            alive += 1
        except Exception as exc:
            errs[f"pwd after the hold: {describe(exc)}"] += 1
        conn.quit()
    results.put((alive, dict(errs)))


def try_extra(port: int, count: int) -> tuple[Counter, float]:
    """Open ``count`` connections past the limit; how each was answered, and the slowest answer."""
    outcomes, slowest = Counter(), 0.0
    for _ in range(count):
        t0 = time.monotonic()
        try:
            Connection("127.0.0.1", port, timeout=10).close()
            outcomes["ACCEPTED (should have been refused)"] += 1
        except errors.UnavailableError as exc:
            outcomes[f"421 {exc.name}: {exc.message}"] += 1
        except Exception as exc:
            outcomes[describe(exc)] += 1
        slowest = max(slowest, time.monotonic() - t0)
    return outcomes, slowest


def idle(tmp: Path, count: int, hold_s: float = 5.0) -> dict[str, Any]:
    d = Daemon(tmp / "idle", max_connections=count, max_per_ip=count + EXTRA + 10)
    threads0 = d.sample()["threads"]
    login(d.port, user_of(0)).quit()  # loads passlib's bcrypt backend before the baseline
    base, ctx, per = d.settle(threads0), mp.get_context("spawn"), -(-count // PROCS)
    release, results, t0 = ctx.Event(), ctx.Queue(), time.monotonic()
    procs = [ctx.Process(target=idle_worker,
                         args=(d.port, p * per, min(per, count - p * per), release, results))
             for p in range(PROCS)]
    for p in procs:
        p.start()
    opened = sum(results.get(timeout=600) for _ in procs)
    open_s, sampler = time.monotonic() - t0, Sampler(d)
    time.sleep(hold_s)  # the hold is the measurement itself, not a synchronisation
    held = sampler.stop()
    outcomes, slowest = try_extra(d.port, EXTRA)
    release.set()
    done = [results.get(timeout=600) for _ in procs]
    for p in procs:
        p.join(30)
    errs: Counter = Counter()
    for _, e in done:
        errs.update(e)
    return {"idle": count, "opened": opened, "open_s": open_s, "alive_after_hold": sum(a for a, _ in done),
            "errors": dict(errs), "baseline": base, "held": held[-1], "hold_series": held,
            "per_session_kib": (held[-1]["rss_kib"] - base["rss_kib"]) / max(opened, 1),
            "extra": EXTRA, "extra_outcomes": dict(outcomes), "extra_slowest_s": slowest,
            "refused_421": sum(v for k, v in outcomes.items() if k.startswith("421")),
            "after": d.settle(base["threads"]), "log_problems": d.log_problems(), "exit_status": d.stop()}


# --- the run --------------------------------------------------------------------------


def machine() -> dict[str, str]:
    with open("/proc/cpuinfo") as f:
        model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "?")
    return {"nproc": str(os.cpu_count()), "cpu": model, "kernel": platform.release(),
            "python": platform.python_version(),
            "date": datetime.datetime.now().isoformat(timespec="seconds")}


def series_text(rows: list[dict[str, Any]], key: str, scale: float = 1.0, points: int = 8) -> str:
    values = [r[key] / scale for r in rows]
    picks = [rows[round(i * (len(rows) - 1) / (points - 1))] for i in range(min(points, len(rows)))]
    trail = "  ".join(f"{p['t']:.0f}s:{p[key] / scale:.0f}" for p in picks)
    spread = f"{min(values):.0f} / {statistics.median(values):.0f} / {max(values):.0f}"
    return f"min / median / max {spread}   [{trail}]"


def state(x: dict[str, Any]) -> str:
    return f"RSS {x['rss_kib'] / 1024:.1f} MiB, {x['threads']} threads, {x['fds']} fds"


def report(res: dict[str, Any]) -> None:
    m, s, i = res["machine"], res["soak"], res["idle"]
    print(f"\nftpd soak {m['date']}: {m['nproc']} x {m['cpu']}, Linux {m['kernel']}, Python {m['python']}")
    print(f"command: {res['command']}\n\nsoak: {s['sessions']} sessions for {s['wall_s']:.1f} s "
          f"({PROCS} client processes), fsync on")
    print(f"  operations  {s['ops_total']} ({s['ops_per_s']:.0f}/s): "
          + ", ".join(f"{k} {v}" for k, v in sorted(s["ops"].items())))
    for k, v in s["latency_s"].items():
        ms = {q: f"{v[q] * 1000:5.0f} ms" for q in ("p50", "p99", "max")}
        print(f"  {k:<6} p50 {ms['p50']}   p99 {ms['p99']}   max {ms['max']}")
    print(f"  moved       {s['bytes'] / MB:.0f} MB ({s['MBps']:.1f} MB/s)\n  errors      {s['errors']}")
    for msg, n in s["error_messages"].items():
        print(f"    {n:5d} x {msg}")
    print(f"  files       {s['files_checked']} checked on disk: {s['corrupted']} corrupted, "
          f"{s['files_uncertain']} after a failed put, {s['leftover_partials']} partials left")
    for line in s["corrupted_samples"]:
        print(f"    {line}")
    for label, key, scale in (("RSS MiB", "rss_kib", 1024), ("threads", "threads", 1), ("fds", "fds", 1)):
        print(f"  daemon {label:<8} {series_text(s['series'], key, scale)}")
    print(f"  before: {state(s['baseline'])}; after: {state(s['after'])}")
    print(f"\nidle: {i['opened']} of {i['idle']} sessions logged in ({i['open_s']:.1f} s), "
          f"{i['alive_after_hold']} answered after the hold")
    print(f"  before: {state(i['baseline'])}\n  held:   {state(i['held'])}\n  after:  {state(i['after'])}")
    print(f"  memory per idle session: {i['per_session_kib']:.0f} KiB")
    print(f"  {i['extra']} more connections: {i['refused_421']} refused with 421 "
          f"(slowest answer {i['extra_slowest_s'] * 1000:.0f} ms)")
    for msg, n in {**i["extra_outcomes"], **i["errors"]}.items():
        print(f"    {n:5d} x {msg}")
    for name in ("soak", "idle"):
        for msg, n in res[name]["log_problems"].items():
            print(f"  {name} daemon log: {n} x {msg}")
    print(f"daemon exit status after SIGTERM: soak {s['exit_status']}, idle {i['exit_status']}")


def failed(res: dict[str, Any]) -> bool:
    s, i = res["soak"], res["idle"]
    bad_soak = s["errors"] or s["corrupted"] or s["leftover_partials"] or s["log_problems"]
    bad_idle = i["errors"] or i["log_problems"] or i["refused_421"] != i["extra"]
    lost = i["opened"] != i["idle"] or i["alive_after_hold"] != i["idle"]
    return bool(bad_soak or bad_idle or lost or s["exit_status"] or i["exit_status"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sessions", type=int, help="busy sessions in the soak (default 200)")
    ap.add_argument("--seconds", type=float, help="length of the soak (default 60)")
    ap.add_argument("--idle", type=int, help="idle sessions held (default 1000)")
    ap.add_argument("--quick", action="store_true", help="20 sessions, 10 s, 100 idle")
    ap.add_argument("--out", type=Path, help="write every figure to this JSON file")
    args = ap.parse_args()
    sessions = args.sessions or (20 if args.quick else 200)
    seconds = args.seconds or (10.0 if args.quick else 60.0)
    count = args.idle or (100 if args.quick else 1000)
    raise_nofile(2 * count + 1000)  # inherited by the daemons and the client processes
    res: dict[str, Any] = {"machine": machine(), "command": " ".join(["python", *sys.argv])}
    with tempfile.TemporaryDirectory(prefix="ftpd-soak-") as tmp:
        try:
            print(f"soak: {sessions} sessions, {seconds:.0f} s ...", flush=True)
            res["soak"] = soak(Path(tmp), sessions, seconds)
            print(f"idle: {count} sessions, then {EXTRA} past the limit ...", flush=True)
            res["idle"] = idle(Path(tmp), count)
        finally:
            for d in DAEMONS:
                d.stop()
    report(res)
    if args.out:
        args.out.write_text(json.dumps(res, indent=1) + "\n", "utf-8")
        print(f"wrote {args.out}")
    return 1 if failed(res) else 0


if __name__ == "__main__":
    sys.exit(main())
