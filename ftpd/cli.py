"""The ``ftpd`` command: serve, hash-password, check-config, and user administration.

``main(argv) -> int`` parses arguments and returns the exit status; nothing here knows
the wire protocol.  Exit status: 0 success, 1 failure (bad config, unknown user, ...),
2 usage.  This module must never print a password or a hash it did not just make.
"""

from __future__ import annotations

import argparse
import getpass
import logging
import sys
from pathlib import Path

from ftpd import config as config_mod
from ftpd.errors import ConfigError
from ftpd.logs import setup_logging
from ftpd.accounts.users import hash_password

logger = logging.getLogger("ftpd")
DEFAULT_CONFIG = Path("conf/ftpd.yaml")


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    argv = sys.argv[1:] if argv is None else argv
    if not argv or (argv[0].startswith("-") and argv[0] not in ("-h", "--help")):
        argv = ["serve", *argv]  # plain `ftpd` (or `ftpd --config X`) serves
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ConfigError as exc:
        print(f"ftpd: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ftpd", description="Multi-user file-transfer daemon.")
    sub = parser.add_subparsers(metavar="COMMAND")
    serve = sub.add_parser("serve", help="run the daemon (the default)")
    serve.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="ftpd.yaml (default: %(default)s)")
    serve.add_argument("--host", help="listen address (overrides the config)")
    serve.add_argument("--port", type=int, help="listen port (overrides the config; 0 picks one)")
    serve.set_defaults(func=_serve)

    hp = sub.add_parser("hash-password", help="print a password hash for users.yaml")
    hp.set_defaults(func=_hash_password)

    check = sub.add_parser("check-config", help="validate ftpd.yaml and the users file")
    check.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    check.set_defaults(func=_check_config)

    from ftpd.admin import commands as admin  # the user subcommands live beside their editor

    admin.add_parser(sub, DEFAULT_CONFIG)
    return parser


def read_password(prompt: str = "Password: ") -> str:
    """A hidden prompt asked twice on a terminal; else one line of stdin."""
    if sys.stdin.isatty():
        first = getpass.getpass(prompt)
        if first != getpass.getpass("Again: "):
            raise SystemExit("ftpd: the passwords differ")
    else:
        first = sys.stdin.readline().rstrip("\r\n")
    if not first:
        raise SystemExit("ftpd: empty password")
    return first


def _hash_password(args: argparse.Namespace) -> int:
    print(hash_password(read_password()))
    return 0


def _check_config(args: argparse.Namespace) -> int:
    problems: list[tuple[str, int | None, str, str]] = []
    try:
        cfg = config_mod.load(args.config)
    except ConfigError as exc:
        problems += exc.problems
        cfg = None
    if cfg is not None:
        from ftpd.accounts.users import UserStore

        try:
            store = UserStore.load(cfg.users_file)
        except ConfigError as exc:
            problems += exc.problems
        problems += _tls_problems(cfg)
    for problem in problems:
        print(ConfigError.format(problem), file=sys.stderr)
    if problems:
        print(f"ftpd: {len(problems)} problem(s) found", file=sys.stderr)
        return 1
    print(f"ftpd: {args.config} and {cfg.users_file} are valid ({len(store)} users)")
    return 0


def _tls_problems(cfg: config_mod.ServerConfig) -> list[tuple[str, int | None, str, str]]:
    """Load the certificate and key as the daemon will, so a bad PEM shows up here."""
    if cfg.tls is None:
        return []
    from ftpd.daemon import tls_context

    try:
        tls_context(cfg)
    except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
        return [(str(cfg.path), None, "tls", f"cannot load the certificate and key: {exc}")]
    return []


def _serve(args: argparse.Namespace) -> int:
    from ftpd.daemon import run

    cfg = config_mod.load(args.config).with_overrides(host=args.host, port=args.port)
    setup_logging(cfg.log_dir, cfg.log_level, cfg.log_max_bytes, cfg.log_backup_count)
    try:
        return run(cfg)
    except OSError as exc:  # bind failures, an unreadable TLS key, an unwritable home_root
        logger.error("cannot start: %s", exc)
        return 1


if __name__ == "__main__":
    sys.exit(main())
