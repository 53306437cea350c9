"""``ftpd user add|passwd|quota|disable|enable|del|list|unlock``: accounts without editing hashes.

Each subcommand validates its input (name, size unit, password) and then calls
``useredit``, which keeps the admin's comments and replaces the file atomically; a
running daemon picks the change up on reload (SIGHUP).  ``unlock`` is the exception: the
login locks live in the daemon's memory, so it asks the daemon over its control socket
(``ftpd.control``).  This module must never write the users file itself, and never
print a password.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from collections.abc import Callable
from pathlib import Path

from ftpd import config as config_mod
from ftpd import control
from ftpd.accounts.users import UserStore, check_name, hash_password
from ftpd.admin import useredit
from ftpd.storage.local import LocalStorage
from ftpd.units import format_size, parse_size

MAX_PASSWORD_BYTES = 72  # bcrypt's: it ignores the rest, and passlib refuses it


def add_parser(sub: argparse._SubParsersAction, default_config: Path) -> None:
    user = sub.add_parser("user", help="manage accounts in the users file")
    user.add_argument(
        "--config", type=Path, default=default_config, help="ftpd.yaml (default: %(default)s)"
    )
    verbs = user.add_subparsers(metavar="ACTION", required=True)
    # Also after the action (`ftpd user list --config X`, as with `ftpd serve --config X`);
    # SUPPRESS: an action given none leaves the value parsed before it in place.
    after = argparse.ArgumentParser(add_help=False)
    after.add_argument("--config", type=Path, default=argparse.SUPPRESS, help="ftpd.yaml")

    add = verbs.add_parser(
        "add", parents=[after], help="add a user (password from a prompt or one stdin line)"
    )
    add.add_argument("name")
    add.add_argument("--quota", help="e.g. 500MiB, 2GiB, 1GB (decimal); default unlimited")
    add.set_defaults(func=_add)

    passwd = verbs.add_parser("passwd", parents=[after], help="set a user's password")
    passwd.add_argument("name")
    passwd.set_defaults(func=_passwd)

    quota = verbs.add_parser(
        "quota", parents=[after], help="set a user's quota ('none' for unlimited)"
    )
    quota.add_argument("name")
    quota.add_argument("size")
    quota.add_argument(
        "--files", metavar="N", help="at most N files and folders ('none' for unlimited)"
    )
    quota.set_defaults(func=_quota)

    for verb, flag in (("disable", True), ("enable", False)):
        p = verbs.add_parser(
            verb, parents=[after], help=f"{verb} a user's logins (sessions end on reload)"
        )
        p.add_argument("name")
        p.set_defaults(func=_toggle, disabled=flag)

    delete = verbs.add_parser("del", parents=[after], help="remove a user (their home is kept)")
    delete.add_argument("name")
    delete.set_defaults(func=_delete)

    listing = verbs.add_parser(
        "list", parents=[after], help="users with bytes used against their quota"
    )
    listing.set_defaults(func=_list)

    unlock = verbs.add_parser(
        "unlock",
        parents=[after],
        help="lift a name's login locks, from every address, in the running daemon",
    )
    unlock.add_argument("name")
    unlock.set_defaults(func=_unlock)


def read_password(prompt: str = "Password: ") -> str:
    """A hidden prompt asked twice on a terminal; else one line of stdin."""
    if sys.stdin.isatty():
        first = getpass.getpass(prompt)
        if first != getpass.getpass("Again: "):
            raise SystemExit("ftpd: the passwords differ")
    else:
        try:
            first = sys.stdin.readline().rstrip("\r\n")
        except UnicodeDecodeError:
            raise SystemExit("ftpd: the password is not valid UTF-8 text") from None
    if not first:
        raise SystemExit("ftpd: empty password")
    why = password_problem(first)
    if why:
        raise SystemExit(f"ftpd: {why}")
    return first


def password_problem(password: str) -> str | None:
    """Why bcrypt (the default scheme, accounts.users) cannot hash ``password``, or None.

    bcrypt reads 72 bytes and no NUL; passlib refuses more rather than truncate, and that
    was a traceback at ``ftpd user add`` (issue 9): say so in one line instead.
    """
    try:
        size = len(password.encode("utf-8"))
    except UnicodeEncodeError:
        return "the password is not valid UTF-8 text"
    if size > MAX_PASSWORD_BYTES:
        return (
            f"the password is {size} bytes long; at most {MAX_PASSWORD_BYTES} bytes "
            "(UTF-8) are allowed, bcrypt's limit"
        )
    if "\0" in password:
        return "a password cannot contain a NUL character"
    return None


def _users_file(args: argparse.Namespace) -> tuple[config_mod.ServerConfig, Path]:
    cfg = config_mod.load(args.config)
    return cfg, cfg.users_file


def _checked_size(text: str) -> str | int | None:
    if text.lower() in ("none", "unlimited"):
        return None
    try:
        parse_size(text)
    except ValueError as exc:
        raise SystemExit(f"ftpd: {exc}") from None
    return int(text) if text.isdigit() else text


def _run(action: Callable[..., object], *params: object) -> int:
    try:
        action(*params)
    except useredit.UsersFileEditError as exc:
        print(f"ftpd: {exc}", file=sys.stderr)
        return 1
    return 0


def _add(args: argparse.Namespace) -> int:
    why = check_name(args.name)
    if why:
        print(f"ftpd: {why}", file=sys.stderr)
        return 2
    quota = _checked_size(args.quota) if args.quota else None
    _, path = _users_file(args)
    status = _run(useredit.add_user, path, args.name, hash_password(read_password()), quota)
    if not status:
        print(f"added {args.name}; reload the daemon (systemctl reload ftpd) to apply")
    return status


def _passwd(args: argparse.Namespace) -> int:
    _, path = _users_file(args)
    status = _run(useredit.set_password, path, args.name, hash_password(read_password()))
    if not status:
        print(f"password of {args.name} changed; reload the daemon to apply")
    return status


def _checked_files(text: str | None) -> int | None | bool:
    if text is None:
        return False  # not given: leave the file quota as it is
    if text.lower() in ("none", "unlimited"):
        return None
    if not text.isdigit():
        raise SystemExit(f"ftpd: --files takes a whole number of files, or 'none' (not {text!r})")
    return int(text)


def _quota(args: argparse.Namespace) -> int:
    _, path = _users_file(args)
    size, files = _checked_size(args.size), _checked_files(args.files)
    status = _run(useredit.set_quota, path, args.name, size, files)
    if not status:
        shown = args.size if files is False else f"{args.size} and {args.files} files"
        print(f"quota of {args.name} set to {shown}; reload the daemon to apply")
    return status


def _toggle(args: argparse.Namespace) -> int:
    _, path = _users_file(args)
    status = _run(useredit.set_disabled, path, args.name, args.disabled)
    if not status:
        done = "disabled" if args.disabled else "enabled"
        print(f"{done} {args.name}; reload the daemon to apply")
    return status


def _delete(args: argparse.Namespace) -> int:
    _, path = _users_file(args)
    status = _run(useredit.delete_user, path, args.name)
    if not status:
        print(f"removed {args.name} (home kept); reload the daemon to apply")
    return status


def _list(args: argparse.Namespace) -> int:
    cfg, path = _users_file(args)
    store = UserStore.load(path)
    storage = LocalStorage(cfg.home_root)
    # New columns go last, so scripts reading the older ones by position keep working.
    print(
        f"{'USER':<20} {'USED':>12} {'QUOTA':>12} {'USE%':>5}  {'STATE':<8} {'FILES':>9} MAX_FILES"
    )
    for name in sorted(store.users):
        user = store.users[name]
        used, files, _ = storage.tree(name).usage()  # by descriptor: no path hides bytes
        limit = "unlimited" if user.quota_bytes is None else format_size(user.quota_bytes)
        pct = "-" if not user.quota_bytes else f"{100 * used // user.quota_bytes}%"
        most = "-" if user.max_files is None else str(user.max_files)
        state = "disabled" if user.disabled else "enabled"
        print(
            f"{name:<20} {format_size(used):>12} {limit:>12} {pct:>5}  {state:<8} {files:>9} {most}"
        )
    return 0


def _unlock(args: argparse.Namespace) -> int:
    cfg = config_mod.load(args.config)
    try:
        reply = control.ask(cfg.control_path, {"cmd": "unlock", "user": args.name})
    except control.ControlUnavailableError as exc:
        print(f"ftpd: {exc}", file=sys.stderr)
        return 1
    if not reply["ok"]:
        print(f"ftpd: the daemon refused: {reply.get('error')}", file=sys.stderr)
        return 1
    print(reply.get("message", f"unlocked {args.name}"))
    return 0
