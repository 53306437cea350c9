"""The ``ftpd`` command: serve, hash-password, check-config, and user administration.

``main(argv) -> int`` parses arguments and returns the exit status; nothing here knows
the wire protocol.  Exit status: 0 success, 1 failure (bad config, unknown user, ...),
2 usage.  This module must never print a password or a hash it did not just make.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from ftpd import config as config_mod
from ftpd.accounts.users import hash_password
from ftpd.errors import ConfigError
from ftpd.logs import setup_logging

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
    serve.add_argument(
        "--config", type=Path, default=DEFAULT_CONFIG, help="ftpd.yaml (default: %(default)s)"
    )
    serve.add_argument("--host", help="listen address (overrides the config)")
    serve.add_argument("--port", type=int, help="listen port (overrides the config; 0 picks one)")
    serve.set_defaults(func=_serve)

    hp = sub.add_parser("hash-password", help="print a password hash for users.yaml")
    hp.set_defaults(func=_hash_password)

    check = sub.add_parser("check-config", help="validate ftpd.yaml and the users file")
    check.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    check.set_defaults(func=_check_config)

    reload = sub.add_parser(
        "reload",
        help="make the running daemon re-read its files; exit 1 if it rejects them "
        "(systemd's ExecReload)",
    )
    reload.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    reload.set_defaults(func=_reload)

    from ftpd.admin import commands as admin  # the user subcommands live beside their editor
    from ftpd.admin import quota as quota_admin  # `ftpd quota rescan`
    from ftpd.admin import state as state_admin  # `ftpd state init`
    from ftpd.admin import storage as storage_admin  # `ftpd storage gc`

    admin.add_parser(sub, DEFAULT_CONFIG)
    state_admin.add_parser(sub, DEFAULT_CONFIG)
    quota_admin.add_parser(sub, DEFAULT_CONFIG)
    storage_admin.add_parser(sub, DEFAULT_CONFIG)
    return parser


def _reload(args: argparse.Namespace) -> int:
    """Ask the daemon (on its control socket) to reload, and report what it says."""
    from ftpd import control

    cfg = config_mod.load(args.config)
    try:
        reply = control.ask(cfg.control_path, {"cmd": "reload"}, control.RELOAD_TIMEOUT_S + 5)
    except control.ControlUnavailableError as exc:
        print(f"ftpd: {exc}", file=sys.stderr)
        return 1
    if not reply.get("ok"):
        print(f"ftpd: {reply.get('error', 'reload rejected')}", file=sys.stderr)
        return 1
    print(f"ftpd: {reply.get('message', 'reloaded')}")
    return 0


def _hash_password(args: argparse.Namespace) -> int:
    from ftpd.admin.commands import read_password  # beside the user subcommands using it

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
        problems += _bind_problems(cfg, cfg.host, "host")
        problems += _place_problems(cfg)
        problems += _ftp_problems(cfg)
    for problem in problems:
        print(ConfigError.format(problem), file=sys.stderr)
    if problems:
        print(f"ftpd: {len(problems)} problem(s) found", file=sys.stderr)
        return 1
    assert cfg is not None  # no problems: the config loaded
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


def _line(cfg: config_mod.ServerConfig, key: str) -> int | None:
    from ftpd import yamldoc

    return yamldoc.load(cfg.path).line(*key.split(".")) if cfg.path else None


def _bind_problems(
    cfg: config_mod.ServerConfig, host: str, key: str
) -> list[tuple[str, int | None, str, str]]:
    """Whether this machine can listen on ``host`` (port 0: nothing is bound for real)."""
    import socket

    try:
        infos = socket.getaddrinfo(host, 0, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, _, _, _, address = infos[0]
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.bind(address)
    except OSError as exc:
        why = exc.strerror or str(exc)
        return [(str(cfg.path), _line(cfg, key), key, f"cannot listen on {host}: {why}")]
    return []


def _place_problems(cfg: config_mod.ServerConfig) -> list[tuple[str, int | None, str, str]]:
    """``home_root`` and ``log_dir`` must be folders, or be makeable in an existing one
    (the daemon makes only the last component, so a typo never grows a tree)."""
    problems = []
    for key, folder in (("home_root", cfg.home_root), ("log_dir", cfg.log_dir)):
        if folder is None:
            continue
        if folder.exists() and not folder.is_dir():
            problems.append((str(cfg.path), _line(cfg, key), key, f"{folder} is not a folder"))
        elif not folder.exists() and not folder.parent.is_dir():
            why = f"{folder} does not exist, nor does the folder it would be made in"
            problems.append((str(cfg.path), _line(cfg, key), key, why))
    return problems


def _ftp_problems(cfg: config_mod.ServerConfig) -> list[tuple[str, int | None, str, str]]:
    """The ``ftp:`` section's address must be one this machine can listen on (the range
    and the other values were checked when the file was read)."""
    if cfg.ftp is None:
        return []
    import socket

    host = cfg.ftp.host or cfg.host
    key = "ftp.host" if cfg.ftp.host else "host"
    try:
        infos = socket.getaddrinfo(host, 0, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, _, _, _, address = infos[0]
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.bind(address)  # port 0: only the address is checked, nothing listens
    except OSError as exc:
        from ftpd import yamldoc

        line = yamldoc.load(cfg.path).line(*key.split(".")) if cfg.path else None
        return [(str(cfg.path), line, key, f"cannot listen on {host}: {exc}")]
    return []


def _serve(args: argparse.Namespace) -> int:
    from ftpd.daemon import run

    cfg = config_mod.load(args.config).with_overrides(host=args.host, port=args.port)
    try:
        setup_logging(cfg.log_dir, cfg.log_level, cfg.log_max_bytes, cfg.log_backup_count)
    except OSError as exc:
        print(f"ftpd: log_dir {cfg.log_dir}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    try:
        return run(cfg)
    except OSError as exc:  # bind failures, an unreadable TLS key, an unwritable home_root
        logger.error("cannot start: %s", exc)
        return 1


if __name__ == "__main__":
    sys.exit(main())
