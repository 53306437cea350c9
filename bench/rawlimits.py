"""Measure this machine's raw throughput limits, for comparison with the daemon.

Its one job: report how fast plain hashing, disk writes and loopback TCP
(``sendfile`` -> ``recv_into`` -> digest -> file) go here, with the standard
library only, so the daemon's benchmark can print its own figures beside them.
All figures are MB/s with MB = 10**6 bytes.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import socket
import tempfile
import threading
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

MB = 10**6
SOCK_TIMEOUT = 60.0
# SO_SNDBUF/SO_RCVBUF for the loopback runs; None keeps the kernel's autotuning.
# On the 2-core dev VM (0.5-1 GiB, 3 runs each, chunks 256 KiB-4 MiB) default, 1, 4
# and 8 MiB all gave raw ~2.0-2.5 GB/s and verified-md5 ~0.3-0.45 GB/s: differences
# were inside run-to-run noise, so the simplest (kernel default) is kept.
SOCK_BUF: int | None = None

try:  # optional, NOT a dependency: only reported when importable
    import xxhash  # type: ignore[import-not-found]
except ImportError:
    xxhash = None


def _new_digest(name: str) -> Any:
    """Return a fresh digest object; "xxhash" means xxhash.xxh3_64."""
    if name == "xxhash":
        if xxhash is None:
            raise ValueError("xxhash is not importable")
        return xxhash.xxh3_64()
    return hashlib.new(name, usedforsecurity=False)


def _mbps(nbytes: int, seconds: float) -> float:
    return nbytes / MB / seconds


def digest_throughput(name: str, total_bytes: int = 1 << 30, chunk: int = 1 << 20) -> float:
    """MB/s of ``update`` for digest ``name`` (hashlib name, or "xxhash") on a reused chunk."""
    buf = os.urandom(chunk)
    h = _new_digest(name)
    done = 0
    start = time.perf_counter()
    while done < total_bytes:
        n = min(chunk, total_bytes - done)
        h.update(buf if n == chunk else buf[:n])
        done += n
    h.digest()
    return _mbps(done, time.perf_counter() - start)


def md5_throughput(total_bytes: int = 1 << 30, chunk: int = 1 << 20) -> float:
    """MB/s of hashlib.md5(usedforsecurity=False).update."""
    return digest_throughput("md5", total_bytes, chunk)


def disk_write_throughput(dirpath: Path, total_bytes: int = 1 << 30, chunk: int = 1 << 20) -> float:
    """MB/s writing a file in dirpath (no fsync; flush/close are timed)."""
    buf = memoryview(os.urandom(chunk))
    path = Path(dirpath) / "rawlimits-disk.bin"
    try:
        done = 0
        start = time.perf_counter()
        with open(path, "wb") as f:
            while done < total_bytes:
                done += f.write(buf[: min(chunk, total_bytes - done)])
        return _mbps(done, time.perf_counter() - start)
    finally:
        path.unlink(missing_ok=True)


def _make_source(path: Path, total_bytes: int, chunk: int, digest: str | None) -> bytes | None:
    """Write total_bytes of random-ish data to path; return its digest (untimed)."""
    buf = memoryview(os.urandom(chunk))
    h = _new_digest(digest) if digest else None
    done = 0
    with open(path, "wb") as f:
        while done < total_bytes:
            piece = buf[: min(chunk, total_bytes - done)]
            done += f.write(piece)
            if h is not None:
                h.update(piece)
    return h.digest() if h is not None else None


def _loopback_pair(bufsize: int | None) -> tuple[socket.socket, socket.socket]:
    """Return a connected (sender, receiver) TCP pair on 127.0.0.1."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(SOCK_TIMEOUT)
        if bufsize:  # set before accept() so the accepted socket inherits it
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, bufsize)
        sender = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sender.settimeout(SOCK_TIMEOUT)
        if bufsize:
            sender.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, bufsize)
        sender.connect(listener.getsockname())
        receiver, _ = listener.accept()
    receiver.settimeout(SOCK_TIMEOUT)
    return sender, receiver


def _loopback(
    dirpath: Path,
    total_bytes: int,
    chunk: int,
    digest: str | None,
    write: bool,
    bufsize: int | None = SOCK_BUF,
    fsync: bool = False,
) -> float:
    """Time sendfile -> recv_into [-> digest] [-> file [-> fsync]] over loopback; MB/s."""
    src = Path(dirpath) / "rawlimits-src.bin"
    dst = Path(dirpath) / "rawlimits-dst.bin"
    try:
        expected = _make_source(src, total_bytes, chunk, digest)
        sender, receiver = _loopback_pair(bufsize)
        errors: list[BaseException] = []

        def send() -> None:
            try:
                with open(src, "rb") as f:
                    sender.sendfile(f)
            except BaseException as exc:  # surfaced in the main thread
                errors.append(exc)
            finally:
                sender.close()

        buf = bytearray(chunk)
        view = memoryview(buf)
        h = _new_digest(digest) if digest else None
        received = 0
        # Closing dst (flush) and the receiver is part of the timed work.
        with receiver, open(dst, "wb") if write else nullcontext() as out:
            start = time.perf_counter()
            thread = threading.Thread(target=send, daemon=True)
            thread.start()
            while received < total_bytes:
                n = receiver.recv_into(view, min(chunk, total_bytes - received))
                if n == 0:
                    break
                received += n
                if h is not None:
                    h.update(view[:n])
                if out is not None:
                    out.write(view[:n])
            if out is not None and fsync:  # the final flush a durable upload waits for
                out.flush()
                os.fsync(out.fileno())
            thread.join()
        elapsed = time.perf_counter() - start
        if errors:
            raise errors[0]
        if received != total_bytes:
            raise RuntimeError(f"received {received} of {total_bytes} bytes")
        if h is not None and h.digest() != expected:
            raise RuntimeError(f"{digest} mismatch over loopback")
        return _mbps(received, elapsed)
    finally:
        src.unlink(missing_ok=True)
        dst.unlink(missing_ok=True)


def loopback_verified_limit(
    dirpath: Path,
    total_bytes: int = 1 << 30,
    chunk: int = 1 << 20,
    digest: str = "md5",
    fsync: bool = False,
) -> float:
    """THE raw verified limit: sendfile -> recv_into -> digest -> file write [-> fsync]."""
    return _loopback(dirpath, total_bytes, chunk, digest, write=True, fsync=fsync)


def loopback_raw_limit(total_bytes: int = 1 << 30, chunk: int = 1 << 20) -> float:
    """Pure sendfile -> recv_into over loopback (no digest, no write)."""
    with tempfile.TemporaryDirectory() as tmp:  # the source file still needs a home
        return _loopback(Path(tmp), total_bytes, chunk, None, write=False)


def measure_all(
    dirpath: Path, total_bytes: int = 1 << 30, chunk: int = 1 << 20
) -> dict[str, float]:
    """Run every measurement; return MB/s figures under stable keys."""
    digests = ["md5", "sha1", "blake2b"] + (["xxhash"] if xxhash is not None else [])
    res = {f"{d}_MBps": digest_throughput(d, total_bytes, chunk) for d in digests}
    res["disk_write_MBps"] = disk_write_throughput(dirpath, total_bytes, chunk)
    res["loopback_raw_MBps"] = loopback_raw_limit(total_bytes, chunk)
    verified = ["md5", "sha1"] + [d for d in digests[2:] if res[f"{d}_MBps"] > res["md5_MBps"]]
    for d in verified:
        res[f"loopback_verified_{d}_MBps"] = loopback_verified_limit(dirpath, total_bytes, chunk, d)
    return res


def fastest_digest(results: dict[str, float]) -> str:
    """Name of the digest with the highest plain hashing throughput in results."""
    rates = {
        k[: -len("_MBps")]: v
        for k, v in results.items()
        if k.endswith("_MBps") and "_" not in k[: -len("_MBps")]
    }
    return max(rates, key=rates.__getitem__)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mib", type=int, default=1024, help="bytes per test, in MiB")
    ap.add_argument("--dir", type=Path, default=None, help="scratch dir (default: a temp dir)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        results = measure_all(args.dir or Path(tmp), args.size_mib << 20)
    width = max(map(len, results))
    print(f"raw limits, {args.size_mib} MiB per test, MB = 10**6 bytes")
    for key, value in results.items():
        print(f"  {key:<{width}}  {value:10.1f} MB/s")
    print(f"  {'fastest digest':<{width}}  {fastest_digest(results):>10}")


if __name__ == "__main__":
    main()
