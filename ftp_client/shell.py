"""The interactive shell and the batch runner: ``cmd.Cmd`` whose ``do_*`` docstrings are the help.

Arguments are split as a POSIX shell would (``put "my file.txt"``).  Every command
failure prints one line and sets ``last_failed``; the batch runner stops there.  A lost
connection is re-made (and re-logged-in) on the next command, so re-issuing an
interrupted ``put`` or ``get`` resumes it.  This module must never print a traceback.
"""

from __future__ import annotations

import cmd
import os
import posixpath
import shlex
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

from ftpd import errors

from ftpd.framed import streams
from ftpd.units import format_size
from ftp_client import transfer
from ftp_client.connection import ConnectError, Connection

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_CONNECT = 0, 1, 2, 3
HISTORY_FILE = Path(os.environ.get("FTP_CLIENT_HISTORY", "~/.ftp_client_history")).expanduser()


class UsageError(Exception):
    """Wrong arguments to a shell command (batch exit status 2)."""


class Session:
    """Credentials and the current connection; reconnects after a drop."""

    def __init__(self, connect: Callable[[], Connection], user: str, password: str) -> None:
        self._connect, self.user, self._password = connect, user, password
        self.conn: Connection | None = None
        self.cwd = "/"

    def open(self) -> Connection:
        if self.conn is not None and self.conn.is_stale():
            self.drop()  # closed by the server while we were idle: reconnect, keep the cwd
        if self.conn is None:
            conn = self._connect()
            try:
                conn.login(self.user, self._password)
                if self.cwd != "/":
                    conn.call("cd", path=self.cwd)
            except BaseException:
                conn.close()
                raise
            self.conn = conn
        return self.conn

    def drop(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def close(self) -> None:
        if self.conn is not None:
            self.conn.quit()
            self.conn = None


def split_commands(text: str) -> list[str]:
    """Split ``a; b "c;d"`` at unquoted semicolons (for ``-c``)."""
    parts, current, quote, escaped = [], [], "", False
    for ch in text:
        if escaped:
            current.append(ch)
            escaped = False
        elif ch == "\\" and quote != "'":
            current.append(ch)
            escaped = True
        elif quote:
            current.append(ch)
            quote = "" if ch == quote else quote
        elif ch in "\"'":
            current.append(ch)
            quote = ch
        elif ch == ";":
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    parts.append("".join(current))
    return [p.strip() for p in parts if p.strip()]


def _progress_factory(enabled: bool) -> transfer.ProgressFactory:
    if not enabled:
        return transfer.no_progress
    from tqdm import tqdm

    def make(label: str, total: int, initial: int) -> transfer.Progress:
        return tqdm(
            total=total, initial=initial, desc=label, unit="B", unit_scale=True,
            unit_divisor=1024, file=sys.stderr, dynamic_ncols=True, leave=True,
        )

    return make


class Shell(cmd.Cmd):
    """The ``ftp-client`` shell.  Type ``help`` for commands, ``help CMD`` for one."""

    intro = "Connected. Type help for commands, quit to leave."
    doc_header = "Commands (help CMD for details):"

    def __init__(
        self, session: Session, quiet: bool = False, interactive: bool = True, digest: str = "md5"
    ) -> None:
        super().__init__()
        self.digest = digest  # md5 by default; sha1/blake2b if the user asked (--digest)
        self.session = session
        self.quiet = quiet
        self.interactive = interactive
        self.last_failed = False
        self.last_status = EXIT_OK
        self.progress = _progress_factory(not quiet and sys.stderr.isatty())
        self._list_cache: dict[str, tuple[float, list[dict[str, Any]]]] = {}
        self._set_prompt()

    # --- plumbing ----------------------------------------------------------------

    def _set_prompt(self) -> None:
        self.prompt = f"ftp {self.session.user}:{self.session.cwd}> "

    def say(self, text: str) -> None:
        print(text)

    def notice(self, text: str) -> None:
        if not self.quiet:
            print(text, file=sys.stderr)

    def error(self, text: str, status: int = EXIT_FAILED) -> None:
        print(f"ftp-client: {text}", file=sys.stderr)
        self.last_failed, self.last_status = True, status

    def onecmd(self, line: str) -> bool:
        self.last_failed, self.last_status = False, EXIT_OK
        try:
            return bool(super().onecmd(line))
        except UsageError as exc:
            self.error(str(exc), EXIT_USAGE)
        except ConnectError as exc:
            self.error(exc.message, EXIT_CONNECT)
        except (streams.ConnectionClosed, ConnectionError, errors.TimeoutError_) as exc:
            self.session.drop()
            self.error(f"connection lost ({exc}); the next command reconnects", EXIT_FAILED)
        except errors.FTPError as exc:
            if exc.fatal:
                self.session.drop()
            self.error(exc.message)
        except OSError as exc:
            self.error(f"{exc.filename or ''}{': ' if exc.filename else ''}{exc.strerror or exc}")
        except KeyboardInterrupt:
            self.session.drop()  # a transfer may be mid-body: the stream is unusable
            self.error("interrupted; re-issue the command to resume")
        return False

    def default(self, line: str) -> bool:
        self.error(f"unknown command: {line.split()[0]!r} (try help)", EXIT_USAGE)
        return False

    def emptyline(self) -> bool:
        return False

    def postcmd(self, stop: bool, line: str) -> bool:
        self._set_prompt()
        return stop

    def _args(self, line: str, low: int, high: int, usage: str) -> list[str]:
        try:
            args = shlex.split(line)
        except ValueError as exc:
            raise UsageError(f"{exc}; usage: {usage}") from None
        if not low <= len(args) <= high:
            raise UsageError(f"usage: {usage}")
        return args

    @property
    def conn(self) -> Connection:
        return self.session.open()

    def _flags(self, args: list[str], allowed: str) -> tuple[set[str], list[str]]:
        flags = {a for a in args if a.startswith("-") and len(a) == 2 and a[1] in allowed}
        return flags, [a for a in args if a not in flags]

    # --- browsing ----------------------------------------------------------------

    def do_pwd(self, line: str) -> None:
        """pwd: print the remote working directory."""
        self._args(line, 0, 0, "pwd")
        self.say(self.conn.call("pwd").data["cwd"])

    def do_cd(self, line: str) -> None:
        """cd PATH: change the remote working directory (/ is your home)."""
        (path,) = self._args(line, 1, 1, "cd PATH")
        self.session.cwd = self.conn.call("cd", path=path).data["cwd"]

    def do_ls(self, line: str) -> None:
        """ls [-a] [PATH]: list a remote directory (-a shows dot files)."""
        flags, args = self._flags(self._args(line, 0, 2, "ls [-a] [PATH]"), "a")
        if len(args) > 1:
            raise UsageError("usage: ls [-a] [PATH]")
        entries = self.conn.listdir(args[0] if args else None, "-a" in flags)
        for e in entries:
            self.say(_format_entry(e))

    def do_stat(self, line: str) -> None:
        """stat PATH: type, size, modification time (and md5 if known) of a remote path."""
        (path,) = self._args(line, 1, 1, "stat PATH")
        data = self.conn.call("stat", path=path).data
        for key in ("path", "type", "size", "mtime", "checksum"):
            if key in data:
                value = _when(data[key]) if key == "mtime" else data[key]
                self.say(f"{key:>8}: {value}")

    def do_mkdir(self, line: str) -> None:
        """mkdir [-p] PATH: make a remote directory (-p: with parents, no error if it exists)."""
        flags, args = self._flags(self._args(line, 1, 2, "mkdir [-p] PATH"), "p")
        if len(args) != 1:
            raise UsageError("usage: mkdir [-p] PATH")
        self.conn.call("mkdir", path=args[0], parents=True if "-p" in flags else None)

    def do_rm(self, line: str) -> None:
        """rm PATH: remove a remote file."""
        (path,) = self._args(line, 1, 1, "rm PATH")
        self.conn.call("rm", path=path)

    def do_rmdir(self, line: str) -> None:
        """rmdir PATH: remove an empty remote directory."""
        (path,) = self._args(line, 1, 1, "rmdir PATH")
        self.conn.call("rmdir", path=path)

    def do_mv(self, line: str) -> None:
        """mv SRC DST: rename or move a remote file or directory (into DST if it is a directory)."""
        src, dst = self._args(line, 2, 2, "mv SRC DST")
        self.conn.call("mv", src=src, dst=dst)

    def do_quota(self, line: str) -> None:
        """quota: bytes used in your home, and your limit."""
        self._args(line, 0, 0, "quota")
        d = self.conn.call("quota").data
        limit = "unlimited" if d.get("limit") is None else format_size(d["limit"])
        free = "" if d.get("available") is None else f", {format_size(d['available'])} free"
        self.say(f"used {format_size(d['used'])} of {limit}{free}")

    # --- transfers ---------------------------------------------------------------

    def do_put(self, line: str) -> None:
        """put [-r] LOCAL [REMOTE]: upload a file (or a tree with -r); resumes if interrupted."""
        flags, args = self._flags(self._args(line, 1, 3, "put [-r] LOCAL [REMOTE]"), "r")
        if not 1 <= len(args) <= 2:
            raise UsageError("usage: put [-r] LOCAL [REMOTE]")
        local = Path(args[0]).expanduser()
        remote = args[1] if len(args) == 2 else local.name
        if "-r" in flags:
            return self._put_tree(local, remote)
        if local.is_dir():
            raise UsageError(f"{local} is a directory (use put -r)")
        self._report("put", transfer.put_file(self.conn, local, remote, self.progress, self.notice, self.digest))

    def _put_tree(self, local: Path, remote: str) -> None:
        if not local.is_dir():
            raise UsageError(f"{local}: not a directory")
        dirs, files = transfer.walk_local(local)
        self.conn.call("mkdir", path=remote, parents=True)
        for d in dirs:
            self.conn.call("mkdir", path=posixpath.join(remote, d.relative_to(local).as_posix()), parents=True)
        pairs = [(f, posixpath.join(remote, f.relative_to(local).as_posix())) for f in files]
        transfer.put_many(self.conn, pairs, self.progress, self.notice, digest=self.digest)
        self.say(f"put {len(files)} files, {len(dirs) + 1} directories to {remote}")

    def do_get(self, line: str) -> None:
        """get [-r] REMOTE [LOCAL]: download a file (or a tree with -r); resumes if interrupted."""
        flags, args = self._flags(self._args(line, 1, 3, "get [-r] REMOTE [LOCAL]"), "r")
        if not 1 <= len(args) <= 2:
            raise UsageError("usage: get [-r] REMOTE [LOCAL]")
        remote = args[0]
        name = posixpath.basename(remote.rstrip("/")) or "home"
        local = Path(args[1]).expanduser() if len(args) == 2 else Path(name)
        if "-r" in flags:
            return self._get_tree(remote, local)
        if local.is_dir():
            local = local / name
        self._report("got", transfer.get_file(self.conn, remote, local, self.progress, self.notice, self.digest))

    def _get_tree(self, remote: str, local: Path) -> None:
        dirs, files = transfer.walk_remote(self.conn, remote)
        local.mkdir(parents=True, exist_ok=True)
        base = remote.rstrip("/") or "/"
        for d in dirs:
            (local / posixpath.relpath(d, base)).mkdir(parents=True, exist_ok=True)
        top = local.resolve()
        for i, (path, _size) in enumerate(files, 1):
            target = local / posixpath.relpath(path, base)
            if not target.resolve().is_relative_to(top):  # belt and braces after walk_remote
                raise errors.PathEscapeError(f"{path}: would be written outside {local}")
            self.notice(f"[{i}/{len(files)}] {path}")
            transfer.get_file(self.conn, path, target, self.progress, self.notice, self.digest)
        self.say(f"got {len(files)} files, {len(dirs) + 1} directories into {local}")

    def _report(self, verb: str, result: transfer.Result) -> None:
        resumed = f", resumed at byte {result.offset}" if result.offset else ""
        self.say(
            f"{verb} {result.path}: {result.size} bytes, {self.digest} {result.checksum} verified{resumed}"
        )

    # --- local -------------------------------------------------------------------

    def do_lcd(self, line: str) -> None:
        """lcd [PATH]: change the local working directory (home if no PATH)."""
        args = self._args(line, 0, 1, "lcd [PATH]")
        os.chdir(Path(args[0]).expanduser() if args else Path.home())
        self.say(os.getcwd())

    def do_lpwd(self, line: str) -> None:
        """lpwd: print the local working directory."""
        self._args(line, 0, 0, "lpwd")
        self.say(os.getcwd())

    def do_lls(self, line: str) -> None:
        """lls [PATH]: list a local directory."""
        args = self._args(line, 0, 1, "lls [PATH]")
        folder = Path(args[0]).expanduser() if args else Path(".")
        paths = sorted(folder.iterdir()) if folder.is_dir() else [folder]
        for p in paths:
            st = p.stat()
            kind = "dir" if p.is_dir() else "file"
            self.say(_format_entry({"name": p.name, "type": kind, "size": st.st_size, "mtime": st.st_mtime}))

    # --- leaving -----------------------------------------------------------------

    def do_quit(self, line: str) -> bool:
        """quit: end the session (also: exit, or Ctrl-D)."""
        self.session.close()
        return True

    do_exit = do_quit

    def do_EOF(self, line: str) -> bool:  # noqa: N802 - cmd.Cmd's name for Ctrl-D
        """Ctrl-D: end the session."""
        print()
        return self.do_quit(line)

    def get_names(self) -> list[str]:
        return [n for n in super().get_names() if n not in ("do_EOF", "do_exit")]

    # --- completion --------------------------------------------------------------

    def completenames(self, text: str, *ignored: Any) -> list[str]:
        return [n + " " for n in super().completenames(text, *ignored) if n != "EOF"]

    def _remote_matches(self, text: str, dirs_only: bool = False) -> list[str]:
        folder, sep, stem = text.rpartition("/")
        listing = (folder or "/") if sep else ""
        hit = self._list_cache.get(listing)
        if hit is None or time.monotonic() - hit[0] > 5:
            try:
                hit = (time.monotonic(), self.conn.listdir(listing or None, True))
            except (errors.FTPError, OSError):
                return []
            self._list_cache[listing] = hit
        entries = [(e["name"], e["type"] == "dir") for e in hit[1] if not e.get("undecodable")]
        return _matching(folder + sep, stem, entries, dirs_only)

    def _local_matches(self, text: str, dirs_only: bool = False) -> list[str]:
        folder, sep, stem = text.rpartition("/")
        base = Path((folder or "/") if sep else ".").expanduser()
        try:
            names = os.listdir(base)
        except OSError:
            return []
        entries = [(n, (base / n).is_dir()) for n in names if n.startswith(stem)]
        return _matching(folder + sep, stem, entries, dirs_only)

    def _complete(
        self, text: str, line: str, begidx: int, endidx: int, local_first: bool = False, dirs: bool = False
    ) -> list[str]:
        """Complete the shell-quoted word under the cursor; results come back quoted too.

        readline splits words at spaces and quotes only, so ``put "my fi<TAB>`` hands us
        ``fi``: the whole word is re-read with shlex and only its tail is replaced.
        """
        tokens, quote = _split_partial(line[:endidx])
        word = "" if line[:endidx][-1:].isspace() or len(tokens) < 2 else tokens[-1]
        position = len(tokens) - (0 if word == "" and len(tokens) >= 1 else 1)
        finder = self._local_matches if local_first and position <= 1 else self._remote_matches
        out = []
        for match in finder(word, dirs):
            tail = match[len(word) - len(text) :] if len(word) >= len(text) else match
            # Inside quotes readline closes the quote itself; outside, escape like a shell.
            out.append(tail if quote else _escape(tail))
        return out

    def complete_cd(self, text: str, line: str, begidx: int, endidx: int) -> list[str]:
        return self._complete(text, line, begidx, endidx, dirs=True)

    complete_rmdir = complete_mkdir = complete_cd

    def complete_ls(self, text: str, line: str, begidx: int, endidx: int) -> list[str]:
        return self._complete(text, line, begidx, endidx)

    complete_stat = complete_rm = complete_mv = complete_get = complete_ls

    def complete_put(self, text: str, line: str, begidx: int, endidx: int) -> list[str]:
        return self._complete(text, line, begidx, endidx, local_first=True)

    def complete_lcd(self, text: str, line: str, begidx: int, endidx: int) -> list[str]:
        return self._complete(text, line, begidx, endidx, local_first=True, dirs=True)

    def complete_lls(self, text: str, line: str, begidx: int, endidx: int) -> list[str]:
        return self._complete(text, line, begidx, endidx, local_first=True)

    def precmd(self, line: str) -> str:
        self._list_cache.clear()
        return line


def _matching(prefix: str, stem: str, entries: list[tuple[str, bool]], dirs_only: bool) -> list[str]:
    """Completions: names starting with ``stem``, directories with a trailing ``/``."""
    return sorted(
        prefix + name + ("/" if is_dir else "")
        for name, is_dir in entries
        if name.startswith(stem) and (is_dir or not dirs_only)
    )


_SPECIAL = set(" \t\"'\\$`!;&|<>()*?[]#~{}")


def _escape(text: str) -> str:
    """Backslash-escape what a POSIX shell would split or expand."""
    return "".join("\\" + c if c in _SPECIAL else c for c in text)


def _split_partial(head: str) -> tuple[list[str], str]:
    """Split a half-typed line; returns the words and the still-open quote, if any."""
    for closer in ("", '"', "'"):
        try:
            return shlex.split(head + closer), closer
        except ValueError:
            continue
    return head.split(), ""


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M")


def _format_entry(e: dict[str, Any]) -> str:
    kind = {"dir": "d", "file": "-", "link": "l"}.get(e.get("type", ""), "?")
    size = "" if e.get("type") == "dir" else format_size(int(e.get("size", 0)))
    name = e["name"] + ("/" if e.get("type") == "dir" else "")
    return f"{kind} {size:>10}  {_when(e.get('mtime', 0))}  {name}"


def run_batch(shell: Shell, lines: list[str]) -> int:
    """Run commands in order; stop at the first failure and return its exit status."""
    for line in lines:
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        stop = shell.onecmd(stripped)
        if shell.last_failed:
            return shell.last_status
        if stop:
            break
    return EXIT_OK


def interact(shell: Shell) -> int:
    """The interactive loop with readline history; returns the exit status."""
    try:
        import readline
    except ImportError:  # pragma: no cover - readline is on every POSIX Python we ship for
        readline = None  # type: ignore[assignment]
    if readline is not None:
        readline.set_completer_delims(" \t\n\"'")
        readline.set_history_length(1000)
        try:
            readline.read_history_file(HISTORY_FILE)
        except OSError:
            pass
    try:
        while True:
            try:
                shell.cmdloop()
                break
            except KeyboardInterrupt:
                print("^C")
                shell.intro = None
    finally:
        if readline is not None:
            try:
                readline.write_history_file(HISTORY_FILE)
            except OSError:
                pass
    return EXIT_OK
