"""``ftp-client [-u USER] [-c "CMD; CMD"] [-b FILE] [-q] HOST[:PORT]``.

Exit status (a contract scripts rely on; docs/protocol.md and README list it too):
0 success, 1 a command failed, 2 usage error, 3 connection or login failed, 130 Ctrl-C.
The password comes from ``FTP_PASSWORD`` when set, else a hidden prompt.  This module
must never print a traceback or the password.
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from pathlib import Path

from ftpd import errors

from ftpd.framed import protocol
from ftp_client.connection import ConnectError, Connection, parse_address, tls_context
from ftp_client.shell import (
    EXIT_CONNECT,
    EXIT_USAGE,
    Session,
    Shell,
    interact,
    run_batch,
    split_commands,
)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ftp-client",
        description="Client for ftpd: an interactive shell, or batch commands with -c / -b.",
        epilog="Exit status: 0 ok, 1 a command failed, 2 usage, 3 connection or login failed. "
        "The password is read from FTP_PASSWORD, else prompted for.",
    )
    p.add_argument("address", metavar="HOST[:PORT]", help="server address (port 2121 by default)")
    p.add_argument("-u", "--user", help="user name (prompted for if omitted)")
    p.add_argument("-c", "--commands", metavar="CMDS", help='commands separated by ";", e.g. "cd a; put f"')
    p.add_argument("-b", "--batch", metavar="FILE", help="run commands from FILE, one per line (- for stdin)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars or notices")
    p.add_argument("--tls", action="store_true", help="connect with TLS, verifying the server")
    p.add_argument("--cafile", help="CA bundle to verify the server with (implies --tls)")
    p.add_argument("--insecure", action="store_true", help="with --tls: do not verify the certificate")
    p.add_argument("--timeout", type=float, default=60.0, help="network timeout in seconds (default 60)")
    p.add_argument(
        "--digest",
        choices=protocol.DIGESTS,
        default=protocol.DEFAULT_DIGEST,
        help="checksum for transfers (default md5; sha1 is faster on CPUs with SHA extensions)",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return EXIT_USAGE if exc.code else 0
    if args.commands is not None and args.batch is not None:
        print("ftp-client: use -c or -b, not both", file=sys.stderr)
        return EXIT_USAGE
    try:
        host, port = parse_address(args.address)
        lines = _batch_lines(args)
    except (ValueError, OSError) as exc:
        print(f"ftp-client: {exc}", file=sys.stderr)
        return EXIT_USAGE
    tls = tls_context(args.cafile, args.insecure) if (args.tls or args.cafile) else None
    try:
        user = args.user or _ask("Name: ")
        password = os.environ.get("FTP_PASSWORD")
        if password is None:
            password = getpass.getpass(f"Password for {user}@{host}: ")
    except (EOFError, KeyboardInterrupt):
        print("ftp-client: no user name or password given", file=sys.stderr)
        return EXIT_USAGE
    session = Session(lambda: Connection(host, port, args.timeout, tls), user, password)
    try:
        session.open()
    except (ConnectError, errors.FTPError, OSError) as exc:
        print(f"ftp-client: {getattr(exc, 'message', exc)}", file=sys.stderr)
        return EXIT_CONNECT
    shell = Shell(session, quiet=args.quiet, interactive=lines is None, digest=args.digest)
    try:
        if lines is not None:
            status = run_batch(shell, lines)
            session.close()
            return status
        return interact(shell)
    except KeyboardInterrupt:
        return 130


def _ask(prompt: str) -> str:
    if not sys.stdin.isatty():
        raise EOFError
    name = input(prompt).strip()
    if not name:
        raise EOFError
    return name


def _batch_lines(args: argparse.Namespace) -> list[str] | None:
    if args.commands is not None:
        return split_commands(args.commands)
    if args.batch is not None:
        text = sys.stdin.read() if args.batch == "-" else Path(args.batch).read_text(encoding="utf-8")
        return text.splitlines()
    return None


if __name__ == "__main__":
    sys.exit(main())
