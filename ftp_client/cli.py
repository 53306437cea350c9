"""``ftp-client [options] [USER@]HOST[:PORT]``.

Exit status (a contract scripts rely on; docs/protocol.md and README list it too):
0 success, 1 a command failed, 2 usage error, 3 connection or login failed, 130 Ctrl-C.
The password comes from ``FTP_PASSWORD`` when set, else a hidden prompt (three tries).
Every option is checked before anything connects, and a script (``-c``, ``-b``, or
commands piped to stdin) is parsed whole before its first command runs.  This module
must never print a traceback or the password.
"""

from __future__ import annotations

import argparse
import getpass
import math
import os
import ssl
import sys
from pathlib import Path
from typing import NoReturn

from ftp_client.connection import ConnectError, Connection, parse_address, tls_context
from ftp_client.shell import (
    EXIT_CONNECT,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    BatchCommand,
    ScriptError,
    Session,
    Shell,
    interact,
    parse_script,
    run_batch,
    split_commands,
)
from ftpd import errors
from ftpd.framed import protocol

#: Longest network timeout accepted, in seconds (a day).
MAX_TIMEOUT_S = 86400.0
#: Password prompts before giving up (exit status 3).
PASSWORD_TRIES = 3


class _Usage(Exception):
    """A bad option or argument: one line on stderr, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise _Usage(message)


def _timeout(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or not 0 < value <= MAX_TIMEOUT_S:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a number of seconds above 0 and at most {MAX_TIMEOUT_S:.0f}"
        )
    return value


def _parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="ftp-client",
        description="Client for ftpd: an interactive shell, or batch commands with -c / -b "
        "(or piped to stdin).",
        epilog="Exit status: 0 ok, 1 a command failed, 2 usage, 3 connection or login failed, "
        "130 interrupted. The password is read from FTP_PASSWORD, else prompted for.",
    )
    p.add_argument(
        "address",
        metavar="[USER@]HOST[:PORT]",
        help="server address (port 2121 by default); USER@ names the user unless -u does",
    )
    p.add_argument("-u", "--user", help="user name (wins over USER@; prompted for if neither)")
    p.add_argument(
        "-c", "--commands", metavar="CMDS", help='commands separated by ";", e.g. "cd a; put f"'
    )
    p.add_argument(
        "-b", "--batch", metavar="FILE", help="run commands from FILE, one per line (- for stdin)"
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars or notices")
    p.add_argument("--tls", action="store_true", help="connect with TLS, verifying the server")
    p.add_argument("--cafile", help="with --tls: CA certificates (PEM) to verify the server with")
    p.add_argument(
        "--insecure", action="store_true", help="with --tls: do not verify the certificate"
    )
    p.add_argument(
        "--timeout",
        type=_timeout,
        default=60.0,
        help=f"network timeout in seconds, above 0 and at most {MAX_TIMEOUT_S:.0f} (default 60)",
    )
    p.add_argument(
        "--digest",
        choices=protocol.DIGESTS,
        default=protocol.DEFAULT_DIGEST,
        help="checksum for transfers (default md5; sha1 is faster on CPUs with SHA extensions)",
    )
    return p


def _fail(message: str, status: int) -> int:
    print(f"ftp-client: {message}", file=sys.stderr)
    return status


def main(argv: list[str] | None = None) -> int:
    try:
        args = _parser().parse_args(argv)
        user, host, port = _target(args)
        tls = _tls(args)
        script = _script(args)
    except _Usage as exc:
        return _fail(f"{exc} (see --help)", EXIT_USAGE)
    except SystemExit as exc:  # --help
        return EXIT_USAGE if exc.code else 0
    except ScriptError as exc:
        return _fail(f"{exc}; nothing was run", EXIT_USAGE)
    try:
        user = user or _ask("Name: ")
        session, status = _log_in(user, host, port, args.timeout, tls)
    except (EOFError, KeyboardInterrupt):
        return _fail("no user name or password given", EXIT_USAGE)
    if session is None:
        return status
    shell = Shell(session, quiet=args.quiet, interactive=script is None, digest=args.digest)
    try:
        if script is not None:
            status = run_batch(shell, script)
            session.close()
            return status
        return interact(shell)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


def _target(args: argparse.Namespace) -> tuple[str | None, str, int]:
    """(user, host, port) from ``[USER@]HOST[:PORT]`` and ``-u`` (which wins)."""
    name, at, address = args.address.rpartition("@")
    if at and not name:
        raise _Usage(f"bad address {args.address!r}: no user name before '@'")
    try:
        host, port = parse_address(address)
    except ValueError as exc:
        raise _Usage(str(exc)) from None
    user = args.user if args.user is not None else (name or None)
    if user is not None and (not user or any(c.isspace() or not c.isprintable() for c in user)):
        raise _Usage(f"bad user name {user!r}")
    if args.commands is not None and args.batch is not None:
        raise _Usage("use -c or -b, not both")
    return user, host, port


def _tls(args: argparse.Namespace) -> ssl.SSLContext | None:
    if not args.tls:
        if args.cafile is not None or args.insecure:
            raise _Usage(f"{'--cafile' if args.cafile is not None else '--insecure'} needs --tls")
        return None
    if args.cafile is not None and args.insecure:
        raise _Usage("--cafile and --insecure contradict each other (verify, or do not)")
    if args.cafile is not None:
        path = Path(args.cafile).expanduser()
        if not path.is_file():
            reason = "is not a file" if path.exists() else "no such file"
            raise _Usage(f"--cafile {args.cafile}: {reason}")
        try:
            return tls_context(str(path), False)
        except (ssl.SSLError, ValueError, OSError):
            raise _Usage(f"--cafile {args.cafile}: not a PEM certificate file") from None
    return tls_context(None, args.insecure)


def _script(args: argparse.Namespace) -> list[BatchCommand] | None:
    """The commands to run, parsed whole; None for the interactive shell.

    Commands piped to stdin (no ``-c``, no ``-b``, stdin not a terminal) are a script,
    as with ``-b -``.
    """
    if args.commands is not None:
        return parse_script(split_commands(args.commands), unit="command")
    source = args.batch
    if source is None and (sys.stdin is None or not sys.stdin.isatty()):
        source = "-"
    if source is None:
        return None
    try:
        if source == "-":
            text = sys.stdin.read() if sys.stdin is not None else ""
        else:
            text = Path(source).read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise _Usage(f"{source}: not UTF-8 text") from None
    except OSError as exc:
        raise _Usage(f"{source}: {(exc.strerror or str(exc)).lower()}") from None
    return parse_script(text.splitlines())


def _log_in(
    user: str, host: str, port: int, timeout: float, tls: ssl.SSLContext | None
) -> tuple[Session | None, int]:
    """Connect and log in; a prompted password may be typed again (three tries in all)."""
    password = os.environ.get("FTP_PASSWORD")
    prompted = password is None
    for attempt in range(1, (PASSWORD_TRIES if prompted else 1) + 1):
        if prompted:
            password = getpass.getpass(f"Password for {user}@{host}: ")
        assert password is not None
        session = Session(lambda: Connection(host, port, timeout, tls), user, password)
        try:
            session.open()
            return session, 0
        except errors.LoginFailedError as exc:
            if attempt < (PASSWORD_TRIES if prompted else 1):
                print(f"ftp-client: {exc.message}; try again", file=sys.stderr)
                continue
            return None, _fail(exc.message, EXIT_CONNECT)
        except (ConnectError, errors.FTPError, OSError) as exc:
            return None, _fail(str(getattr(exc, "message", exc)), EXIT_CONNECT)
    raise AssertionError("unreachable")


def _ask(prompt: str) -> str:
    if sys.stdin is None or not sys.stdin.isatty():
        raise EOFError
    name = input(prompt).strip()
    if not name:
        raise EOFError
    return name


if __name__ == "__main__":
    sys.exit(main())
