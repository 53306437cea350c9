"""``ftpd quota rescan [USER]``: count usage again from the store and correct the ledger.

The ledger lives in the running daemon (``state: local``) or in the database that the
daemon uses (``state: postgresql``); either way the daemon holds what a recount must
respect (running uploads' reservations), so the command asks it over its control socket
(``ftpd.control``, command ``rescan``) and prints the figures before and after.  A user
whose uploads keep the ledger busy past the daemon's bounded wait is reported as busy,
never forced.  Exit status: 0 when every user was recounted, 1 when the daemon is
unreachable, refuses, or some user stayed busy.  This module must never touch a ledger
itself.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ftpd import config as config_mod
from ftpd import control
from ftpd.units import format_size


def add_parser(sub: argparse._SubParsersAction, default_config: Path) -> None:
    quota = sub.add_parser("quota", help="quota ledgers of the running daemon")
    quota.add_argument(
        "--config", type=Path, default=default_config, help="ftpd.yaml (default: %(default)s)"
    )
    verbs = quota.add_subparsers(metavar="ACTION", required=True)
    after = argparse.ArgumentParser(add_help=False)
    after.add_argument("--config", type=Path, default=argparse.SUPPRESS, help="ftpd.yaml")
    rescan = verbs.add_parser(
        "rescan",
        parents=[after],
        help="count usage again from the store and correct the ledger (one user, or all)",
    )
    rescan.add_argument("user", nargs="?", help="one user (default: every user with a home)")
    rescan.set_defaults(func=rescan_command)


def _shown(figures: dict[str, Any]) -> str:
    return f"{format_size(int(figures['used']))} in {int(figures['entries'])} entries"


def rescan_command(args: argparse.Namespace) -> int:
    cfg = config_mod.load(args.config)
    request: dict[str, Any] = {"cmd": "rescan"}
    if args.user is not None:
        request["user"] = args.user
    try:
        reply = control.ask(cfg.control_path, request, control.LONG_TIMEOUT_S)
    except control.ControlUnavailableError as exc:
        print(f"ftpd: {exc}", file=sys.stderr)
        return 1
    if not reply["ok"]:
        print(f"ftpd: the daemon refused: {reply.get('error')}", file=sys.stderr)
        return 1
    users = reply.get("data", {}).get("users", [])
    status = 0
    for row in users:
        name = row.get("user")
        if row.get("status") == "failed":
            print(f"{name}: could not be counted: {row.get('error')}", file=sys.stderr)
            status = 1
            continue
        before, after = row.get("before", {}), row.get("after", {})
        change = int(after.get("used", 0)) - int(before.get("used", 0))
        if row.get("status") == "busy":
            print(f"{name}: busy, try again (uploads are running); ledger: {_shown(before)}")
            status = 1
        elif change or before.get("entries") != after.get("entries"):
            sign = "+" if change >= 0 else "-"
            print(
                f"{name}: corrected {_shown(before)} -> {_shown(after)} "
                f"({sign}{format_size(abs(change))})"
            )
        else:
            print(f"{name}: unchanged, {_shown(after)}")
    print(reply.get("message", "rescanned"))
    return status
