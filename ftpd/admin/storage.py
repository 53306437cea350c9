"""``ftpd storage gc``: remove unfinished uploads older than ``partial_ttl`` and free their room.

Unfinished uploads idle past ``partial_ttl`` are removed with ``core.files.sweep_partials``
(the daemon's own periodic sweep), their bytes taken off the ledger:

* ``state: local``: the ledgers and the claims live in the running daemon, so it is asked
  over its control socket (command ``gc``) to sweep at once; 1 when it is unreachable.
* ``state: postgresql``: the ledgers and claims are shared, so the sweep runs here over the
  configured storage and the database (an upload that any node is receiving holds a claim
  and is kept); reservations of nodes whose lease ran out are released first.

With ``storage: s3`` the bucket is then cleaned of what no state names: multipart uploads
under the service's prefix older than ``partial_ttl`` that no upload's state records (a
node that died before it first wrote the state, or a state lost), and tail (or
earlier-design part) objects without a state file older than the TTL.  Unfinished
uploads whose state is older than the TTL are removed by the sweep above, which aborts
their multipart uploads.  Every removal is printed.  This module must never remove
anything younger than ``partial_ttl``, nor a key outside the service's prefix.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ftpd import config as config_mod
from ftpd import control
from ftpd.errors import FTPError
from ftpd.state.base import Ledgers
from ftpd.units import format_size


def add_parser(sub: argparse._SubParsersAction, default_config: Path) -> None:
    storage = sub.add_parser("storage", help="the store's housekeeping")
    storage.add_argument(
        "--config", type=Path, default=default_config, help="ftpd.yaml (default: %(default)s)"
    )
    verbs = storage.add_subparsers(metavar="ACTION", required=True)
    after = argparse.ArgumentParser(add_help=False)
    after.add_argument("--config", type=Path, default=argparse.SUPPRESS, help="ftpd.yaml")
    gc = verbs.add_parser(
        "gc",
        parents=[after],
        help="remove unfinished uploads older than partial_ttl and free their room",
    )
    gc.set_defaults(func=gc_command)


@dataclass
class Collected:
    """What one ``gc`` removed, as lines to print."""

    lines: list[str] = field(default_factory=list)
    freed: int = 0


def gc_command(args: argparse.Namespace) -> int:
    cfg = config_mod.load(args.config)
    done = Collected()
    if cfg.state.backend == "postgresql":
        status = _sweep_shared(cfg, done)
    else:
        status = _sweep_in_daemon(cfg, done)
    if status == 0 and cfg.storage.backend == "s3" and cfg.state.backend != "postgresql":
        try:
            storage = _s3(cfg)
            try:
                bucket_gc(storage, cfg.partial_ttl, done)
            finally:
                storage.close()
        except FTPError as exc:
            print(f"ftpd: the object store: {exc.message}", file=sys.stderr)
            status = 1
    for line in done.lines:
        print(line)
    print(f"storage gc: {len(done.lines)} removed, {format_size(done.freed)} freed")
    return status


def _sweep_in_daemon(cfg: config_mod.ServerConfig, done: Collected) -> int:
    try:
        reply = control.ask(cfg.control_path, {"cmd": "gc"}, control.LONG_TIMEOUT_S)
    except control.ControlUnavailableError as exc:
        print(
            f"ftpd: {exc}\nftpd: with `state: local` the daemon's ledgers live in its memory; "
            "a running daemon also sweeps by itself every few minutes",
            file=sys.stderr,
        )
        return 1
    if not reply["ok"]:
        print(f"ftpd: the daemon refused: {reply.get('error')}", file=sys.stderr)
        return 1
    for row in reply.get("data", {}).get("removed", []):
        _note(done, f"unfinished upload {row['user']}:{row['path']}", int(row["freed"]))
    return 0


def _sweep_shared(cfg: config_mod.ServerConfig, done: Collected) -> int:
    from ftpd.core.files import sweep_partials
    from ftpd.core.services import storage_for
    from ftpd.state.postgresql import PgState

    assert cfg.state.dsn is not None  # checked when the file was read
    try:
        storage = storage_for(cfg)
        shared = PgState(
            cfg.state.dsn, pool_max=2, takeover_after=cfg.takeover_after, background=False
        )
    except FTPError as exc:
        print(f"ftpd: {exc.message}", file=sys.stderr)
        return 1
    try:
        shared.db.release_expired()  # dead nodes' reservations give their room back

        def seen(user: str, info: Any, freed: int) -> None:
            _note(done, f"unfinished upload {user}:/{'/'.join(info.parts)}", freed)

        sweep_partials(storage, shared.ledgers, shared.claims, cfg.partial_ttl, seen)
        if cfg.storage.backend == "s3":
            bucket_gc(storage, cfg.partial_ttl, done, shared.ledgers)
    except FTPError as exc:
        print(f"ftpd: {exc.message}", file=sys.stderr)
        return 1
    finally:
        shared.close()
        close = getattr(storage, "close", None)
        if close is not None:
            close()
    return 0


def _s3(cfg: config_mod.ServerConfig) -> Any:
    from ftpd.core.services import storage_for

    return storage_for(cfg)


def _note(done: Collected, what: str, freed: int) -> None:
    done.lines.append(f"removed {what} ({format_size(freed)})")
    done.freed += freed


def bucket_gc(
    storage: Any,
    ttl: float,
    done: Collected,
    ledgers: Ledgers | None = None,
    now: float | None = None,
) -> None:
    """Abort multipart uploads and delete part objects that no upload state names and
    that are older than ``ttl`` (an ``S3Storage``), under the service's prefix only; the
    parts' bytes come off the user's ledger when ``ledgers`` are given (else a daemon's
    next ``ftpd quota rescan`` sees them gone)."""
    now = time.time() if now is None else now
    named: set[str] = set()  # multipart uploads an upload's state names
    for user in storage.roots():
        states = storage.tree(user).states
        for stem, scan in states.scan().items():
            if scan.has_state:
                state = states.load(stem) or {}
                for job in state.get("upload"), state.get("composing"):
                    if isinstance(job, dict) and isinstance(job.get("id"), str):
                        named.add(job["id"])
            elif (scan.parts or scan.tail) and now - scan.mtime > ttl:
                freed = states.drop(stem, scan)
                ledger = ledgers.existing(user) if ledgers is not None else None
                if ledger is not None:
                    ledger.adjust(-freed, 0)
                count = len(scan.parts) + bool(scan.tail)
                _note(done, f"orphan parts {user}:{stem} ({count} objects)", freed)
    client = storage.client
    pages = client.get_paginator("list_multipart_uploads").paginate(
        Bucket=storage.bucket, Prefix=storage.prefix
    )
    try:
        uploads = [u for page in pages for u in page.get("Uploads", [])]
    except Exception as exc:
        from ftpd.storage.s3_objects import translate

        raise translate(exc) from None
    for upload in uploads:
        key, uid = upload["Key"], upload["UploadId"]
        if not key.startswith(storage.prefix) or uid in named:
            continue
        if now - upload["Initiated"].timestamp() <= ttl:
            continue
        try:
            client.abort_multipart_upload(Bucket=storage.bucket, Key=key, UploadId=uid)
        except Exception as exc:
            from ftpd.storage.s3_objects import error_code

            if error_code(exc) not in ("NoSuchUpload", "404"):
                raise
            continue
        _note(done, f"multipart upload {key} ({uid})", 0)
