"""Where the CPU goes: one benchmark phase against a daemon whose sessions run under cProfile.

Its one job: rerun a phase of ``bench/run.py`` (small puts, ls, stat, or one big put + get)
against a separate daemon process whose session threads each run under a CPU-time
``cProfile`` (``time.thread_time``, so waiting on a socket costs nothing), profile the
client side the same way, and print both.  Profiling slows everything several-fold: use
it for proportions, never for figures.  It must never change ftpd/ code.

    python bench/hotspots.py small|ls|stat|big [--quick] [--fsync|--no-fsync] [--top N]
                             [--save FILE]   (the daemon's profile, for pstats callers/callees)
"""

from __future__ import annotations

import argparse
import cProfile
import logging
import pstats
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import run  # bench/run.py: the daemon wrapper and the phases themselves


def serve(out_path: str, config_path: str) -> int:
    """Like ``ftpd serve``, but every session thread runs under its own CPU-time profile."""
    from ftpd import config as config_mod
    from ftpd.accounts.users import UserStore
    from ftpd.core.services import Services
    from ftpd.framed.server import FramedServer
    from ftpd.framed.session import FramedSession
    from ftpd.logs import setup_logging

    profiles: list[cProfile.Profile] = []

    class ProfiledHandler(FramedSession):
        def handle(self) -> None:
            profile = cProfile.Profile(time.thread_time)
            profiles.append(profile)
            profile.runcall(super().handle)

    cfg = config_mod.load(Path(config_path))
    setup_logging(cfg.log_dir, cfg.log_level, cfg.log_max_bytes, cfg.log_backup_count)
    services = Services.build(cfg, UserStore.load(cfg.users_file))
    server = FramedServer(cfg, services, handler=ProfiledHandler)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    loop = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2})
    loop.start()
    logging.getLogger("ftpd").info(
        "LISTENING host=%s port=%d (profiled)", *server.server_address[:2]
    )
    stop.wait()
    server.shutdown()
    server.server_close()
    server.drain(10)
    loop.join()
    pstats.Stats(*profiles).dump_stats(out_path)
    return 0


def stat_phase(d: run.Daemon, tmp: Path, count: int) -> dict[str, float]:
    """``count`` stats of one file (the ls phase's folder, made by one listing first)."""
    run.ls_round_trips(d, tmp, 1)
    return run.stat_round_trips(d, count)


def main() -> int:
    if sys.argv[1:2] == ["--serve"]:  # the daemon side: --serve OUT --config FILE
        return serve(sys.argv[2], sys.argv[4])
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("phase", choices=["small", "ls", "stat", "big"])
    ap.add_argument("--quick", action="store_true", help="64 MiB and 200 ops")
    ap.add_argument("--fsync", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--top", type=int, default=25, help="rows per listing")
    ap.add_argument("--save", type=Path, help="keep the daemon's profile in this file")
    args = ap.parse_args()
    sizes = run.parse_args(["--quick"] if args.quick else [])
    with tempfile.TemporaryDirectory(prefix="ftpd-hotspots-") as name:
        tmp = Path(name)
        out = tmp / "daemon.prof"
        d = run.Daemon(
            tmp / "srv", args.fsync, serve=[sys.executable, __file__, "--serve", str(out)]
        ).start()
        client = cProfile.Profile(time.thread_time)
        try:
            if args.phase == "big":
                src = tmp / "source.bin"
                result: Any = client.runcall(
                    run.big_transfer, d, tmp, src, run.make_source(src, sizes.size), "md5"
                )
            else:
                phase = {"small": run.small_puts, "ls": run.ls_round_trips, "stat": stat_phase}
                result = client.runcall(phase[args.phase], d, tmp, sizes.count)
        finally:
            d.stop()
        if args.save:
            shutil.copyfile(out, args.save)
        print(f"{args.phase}, fsync {'on' if args.fsync else 'off'} (slowed by profiling):")
        print("  " + ", ".join(f"{k}={v:.0f}" for k, v in result.items() if isinstance(v, float)))
        for side, stats in (
            ("daemon sessions", pstats.Stats(str(out))),
            ("client", pstats.Stats(client)),
        ):
            print(f"\n=== {side}: CPU seconds, by own time")
            stats.sort_stats("tottime").print_stats(args.top)
            print(f"=== {side}: CPU seconds, cumulative, ftpd/ and ftp_client/ only")
            stats.sort_stats("cumulative").print_stats(r"ftpd/|ftp_client/", args.top)
    return 0


if __name__ == "__main__":
    sys.exit(main())
