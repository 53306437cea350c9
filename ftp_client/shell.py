"""The interactive shell and the batch runner: ``cmd.Cmd`` whose ``do_*`` docstrings are the help.

Arguments are split as a POSIX shell would (``put "my file.txt"``), and ``#`` at the
start of a word begins a comment.  Every command failure prints one line and sets
``last_failed``; the batch runner stops there.  A lost connection is re-made (and
re-logged-in) on the next command, so re-issuing an interrupted ``put`` or ``get``
resumes it.  This module must never print a traceback.
"""

from __future__ import annotations

import cmd
import contextlib
import inspect
import os
import posixpath
import shlex
import stat as stat_mod
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from ftp_client import patterns, progress, transfer
from ftp_client.connection import ConnectError, Connection
from ftpd import errors
from ftpd.framed import streams
from ftpd.units import format_size

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_CONNECT, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
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


# --- splitting lines ------------------------------------------------------------------


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


def strip_comment(line: str) -> str:
    """``line`` without its comment: an unquoted, unescaped ``#`` that starts a word.

    As in a POSIX shell, ``#`` inside quotes or inside a word (``backup#1.tar``) is
    text; ``put a.txt  # note`` is ``put a.txt``.
    """
    quote, escaped, word_start = "", False, True
    for i, ch in enumerate(line):
        if escaped:  # this character is taken literally
            escaped = word_start = False
            continue
        if quote == "'":
            quote = "" if ch == "'" else quote
        elif quote == '"':
            if ch == "\\":
                escaped = True
            elif ch == '"':
                quote = ""
        elif ch == "\\":
            escaped = True
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and word_start:
            return line[:i].rstrip()
        word_start = not quote and not escaped and ch in " \t\r\n"
    return line


def split_line(line: str) -> list[str]:
    """The words of one command line (comment removed); ValueError on a quoting error."""
    return shlex.split(strip_comment(line))


@dataclass(frozen=True)
class BatchCommand:
    """One command of a script: where it came from (``line 3``) and its text."""

    where: str
    text: str


class ScriptError(ValueError):
    """A script line that cannot be parsed; nothing of the script has run."""


def parse_script(lines: list[str], unit: str = "line") -> list[BatchCommand]:
    """Parse a whole script before anything runs: blank and comment-only lines dropped.

    ``unit`` names the position in messages: ``line`` for ``-b``, ``command`` for ``-c``.
    Raises ScriptError (naming the position) on the first quoting error.
    """
    commands = []
    for number, raw in enumerate(lines, 1):
        text = strip_comment(raw).strip()
        if not text:
            continue
        try:
            shlex.split(text)
        except ValueError as exc:
            raise ScriptError(f"{unit} {number}: {text}: {str(exc).lower()}") from None
        commands.append(BatchCommand(f"{unit} {number}", text))
    return commands


# --- the shell ------------------------------------------------------------------------


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
        #: Where the running batch command came from (``line 3: put a.txt``), for errors.
        self.context: str | None = None
        self.bars = progress.Bars() if not quiet and sys.stderr.isatty() else None
        self.progress: transfer.ProgressFactory = (
            self.bars.file if self.bars is not None else transfer.no_progress
        )
        self._list_cache: dict[str, tuple[float, list[dict[str, Any]]]] = {}
        self._set_prompt()

    # --- plumbing ----------------------------------------------------------------

    def _set_prompt(self) -> None:
        self.prompt = f"ftp {self.session.user}:{self.session.cwd}> "

    def _print(self, text: str, stream: Any) -> None:
        if self.bars is not None and self.bars.overall is not None:
            self.bars.write(text, stream)  # above the bars, which are redrawn below
        else:
            print(text, file=stream)

    def say(self, text: str) -> None:
        self._print(text, sys.stdout)

    def notice(self, text: str) -> None:
        if not self.quiet:
            self._print(text, sys.stderr)

    def error(self, text: str, status: int = EXIT_FAILED) -> None:
        where = f"{self.context}: " if self.context else ""
        print(f"ftp-client: {where}{text}", file=sys.stderr)
        self.last_failed, self.last_status = True, status

    def onecmd(self, line: str) -> bool:
        self.last_failed, self.last_status = False, EXIT_OK
        try:
            return bool(super().onecmd(line))
        except UsageError as exc:
            self.error(str(exc), EXIT_USAGE)
        except patterns.PatternError as exc:
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
            self.error(self._os_message(exc))
        except transfer.Interrupted as exc:
            # Ctrl-C after every byte was sent: the server's answer is what happened.
            if exc.result is not None:
                self._report("put", exc.result)
                self.error(f"Ctrl-C: stopped after {exc.result.path} was stored", EXIT_INTERRUPTED)
            else:
                message = exc.error.message if exc.error is not None else "interrupted"
                self.error(message, EXIT_INTERRUPTED)
        except KeyboardInterrupt:
            self.session.drop()  # a transfer may be mid-body: the stream is unusable
            self.error("interrupted; re-issue the command to resume", EXIT_INTERRUPTED)
        return False

    def _os_message(self, exc: OSError) -> str:
        text = str(exc.strerror or exc)
        text = text[:1].lower() + text[1:]
        name = exc.filename
        if name is None:
            return text
        name = os.fsdecode(name) if isinstance(name, bytes) else str(name)
        if self.context and name in self.context.split():
            return text  # "line 3: put missing.txt: no such file or directory"
        return f"{name}: {text}"

    def do_help(self, arg: str) -> None:
        """help [CMD]: list the commands, or describe one."""
        name = arg.strip()
        method = getattr(self, f"do_{name}", None) if name else None
        if method is not None and method.__doc__:
            self.stdout.write(inspect.cleandoc(method.__doc__) + "\n")
            return
        super().do_help(arg)

    def default(self, line: str) -> None:
        self.error(f"unknown command: {line.split()[0]!r} (try help)", EXIT_USAGE)

    def emptyline(self) -> bool:
        return False

    def postcmd(self, stop: bool, line: str) -> bool:
        self._set_prompt()
        return stop

    def cmdloop(self, intro: Any = None) -> None:
        """cmd.Cmd's loop, except that only a real end of input (Ctrl-D) leaves.

        ``cmd.Cmd`` turns Ctrl-D into the line ``EOF``, so typing ``EOF`` would quit too;
        here ``EOF`` typed at the prompt is an unknown command like any other word.
        """
        self.preloop()
        readline: Any = None
        if self.use_rawinput and self.completekey:
            try:
                import readline
            except ImportError:  # pragma: no cover
                readline = None
            if readline is not None:
                self.old_completer = readline.get_completer()
                readline.set_completer(self.complete)
                readline.parse_and_bind(self.completekey + ": complete")
        try:
            if intro is not None:
                self.intro = intro
            if self.intro:
                self.stdout.write(str(self.intro) + "\n")
            stop = False
            while not stop:
                if self.cmdqueue:
                    line = self.cmdqueue.pop(0)
                else:
                    try:
                        line = input(self.prompt) if self.use_rawinput else self._read_line()
                    except EOFError:
                        print()
                        self.do_quit("")
                        break
                line = self.precmd(line)
                stop = self.onecmd(line)
                stop = self.postcmd(stop, line)
            self.postloop()
        finally:
            if readline is not None:
                readline.set_completer(self.old_completer)

    def _read_line(self) -> str:
        self.stdout.write(self.prompt)
        self.stdout.flush()
        line = self.stdin.readline()
        if not line:
            raise EOFError
        return line.rstrip("\r\n")

    def _words(self, line: str, usage: str) -> list[str]:
        try:
            return split_line(line)
        except ValueError as exc:
            raise UsageError(f"{str(exc).lower()}; usage: {usage}") from None

    def _args(self, line: str, low: int, high: int, usage: str) -> list[str]:
        """Plain words, no options: a word starting with ``-`` is a name."""
        args = self._words(line, usage)
        if not low <= len(args) <= high:
            raise UsageError(f"usage: {usage}")
        return args

    def _options(
        self, line: str, usage: str, letters: str, low: int, high: int
    ) -> tuple[set[str], list[str]]:
        """Single-letter options (``-r``, ``-la``) anywhere before ``--``, then the words."""
        opts: set[str] = set()
        words: list[str] = []
        ended = False
        for word in self._words(line, usage):
            if not ended and word == "--":
                ended = True
            elif not ended and word.startswith("-") and len(word) > 1:
                for letter in word[1:]:
                    if letter not in letters:
                        raise UsageError(f"unknown option -{letter}; usage: {usage}")
                    opts.add(letter)
            else:
                words.append(word)
        if not low <= len(words) <= high:
            raise UsageError(f"usage: {usage}")
        return opts, words

    @property
    def conn(self) -> Connection:
        return self.session.open()

    def _remote_is_dir(self, path: str) -> bool:
        try:
            return self.conn.call("stat", path=path).data.get("type") == "dir"
        except errors.NotFoundError:
            return False

    def _into(self, target: str, name: str) -> str:
        """``put FILE DIR``: into DIR if it is an existing remote folder, else named DIR."""
        if target.endswith("/") or self._remote_is_dir(target):
            return posixpath.join(target, name)
        return target

    # --- browsing ----------------------------------------------------------------

    def do_pwd(self, line: str) -> None:
        """pwd: print the remote working directory."""
        self._args(line, 0, 0, "pwd")
        self.say(self.conn.call("pwd").data["cwd"])

    def do_cd(self, line: str) -> None:
        """cd [PATH]: change the remote working directory (/, your home, if no PATH)."""
        args = self._args(line, 0, 1, "cd [PATH]")
        self.session.cwd = self.conn.call("cd", path=args[0] if args else "/").data["cwd"]

    def do_ls(self, line: str) -> None:
        """ls [-l] [-a] [PATH]: list a remote directory.

        -l: long listing (permissions, size in bytes, modification time); -a: dot files
        too.  An unfinished upload is marked, e.g. (unfinished: 40% of 1.0 MiB).
        """
        opts, args = self._options(line, "ls [-l] [-a] [PATH]", "la", 0, 1)
        entries = self.conn.listdir(args[0] if args else None, "a" in opts)
        show = _format_long if "l" in opts else _format_entry
        for e in entries:
            self.say(show(e))

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
        opts, args = self._options(line, "mkdir [-p] PATH", "p", 1, 1)
        self.conn.call("mkdir", path=args[0], parents=True if "p" in opts else None)

    def do_rm(self, line: str) -> None:
        """rm [-r] PATH...: remove remote files (-r: also directories, with all they hold).

        A PATH may end in a wildcard pattern: rm old/*.tmp.  Every pattern is matched
        before anything is removed; one that matches nothing is an error.
        """
        usage = "rm [-r] PATH..."
        opts, args = self._options(line, usage, "r", 1, 1000)
        recursive = "r" in opts
        targets: list[str] = []
        for arg in args:
            if not patterns.has_magic(arg):
                targets.append(arg)
                continue
            for path, entry in patterns.expand_remote(self.conn, arg):
                if entry.get("type") == "dir" and not recursive:
                    raise errors.ConflictError(
                        f"{path}: is a directory (use rm -r); nothing removed"
                    )
                targets.append(path)
        for path in targets:
            self.conn.call("rm", path=path, recursive=True if recursive else None)

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
        """put [-r] [-p] LOCAL [REMOTE]: upload a file (a tree with -r); resumes if interrupted.

        Into REMOTE if it is an existing folder.  LOCAL may be a pattern (put *.log):
        every match goes into REMOTE (a folder) or the current one.  -p keeps the
        modification time.
        """
        usage = "put [-r] [-p] LOCAL [REMOTE]"
        opts, args = self._options(line, usage, "rp", 1, 2)
        recursive, preserve = "r" in opts, "p" in opts
        target = args[1] if len(args) == 2 else None
        wild = patterns.has_magic(args[0])
        sources = patterns.expand_local(args[0]) if wild else [Path(args[0]).expanduser()]
        if len(sources) == 1:
            local = sources[0]
            if recursive and local.is_dir():
                return self._put_tree(local, target or local.name, preserve)
            if local.is_dir():
                raise UsageError(f"{local} is a directory (use put -r)")
            remote = self._into(target, local.name) if target else local.name
            self._report("put", self._put_one(local, remote, preserve))
            return None
        files = [p for p in sources if not p.is_dir()]
        trees = [p for p in sources if p.is_dir()] if recursive else []
        for skipped in (p for p in sources if p.is_dir() and not recursive):
            self.notice(f"skipping directory {skipped} (use put -r)")
        if not files and not trees:
            raise errors.NotFoundError(f"no files match {args[0]} (only directories; use put -r)")
        if target is not None and not self._remote_is_dir(target):
            raise errors.ConflictError(f"{target}: not a directory (several files go into one)")

        def dest(name: str) -> str:
            return posixpath.join(target, name) if target else name

        pairs = [(p, dest(p.name)) for p in files]
        for tree in trees:
            dirs, tree_files = transfer.walk_local(tree)
            root = dest(tree.name)
            folders = [posixpath.join(root, d.relative_to(tree).as_posix()) for d in dirs]
            transfer.make_dirs(self.conn, [root, *folders])
            pairs += [(f, posixpath.join(root, f.relative_to(tree).as_posix())) for f in tree_files]
        self._put_pairs(pairs, preserve, each=True)
        return None

    def _put_one(self, local: Path, remote: str, preserve: bool) -> transfer.Result:
        return transfer.put_file(
            self.conn, local, remote, self.progress, self.notice, self.digest, preserve=preserve
        )

    def _put_tree(self, local: Path, remote: str, preserve: bool = False) -> None:
        if not local.is_dir():
            raise UsageError(f"{local}: not a directory")
        dirs, files = transfer.walk_local(local)
        folders = [posixpath.join(remote, d.relative_to(local).as_posix()) for d in dirs]
        transfer.make_dirs(self.conn, [remote, *folders])
        pairs = [(f, posixpath.join(remote, f.relative_to(local).as_posix())) for f in files]
        self._put_pairs(pairs, preserve, each=False)
        self.say(f"put {len(files)} files, {len(dirs) + 1} directories to {remote}")

    def _put_pairs(self, pairs: list[tuple[Path, str]], preserve: bool, each: bool) -> None:
        """Upload many files (pipelined) under an overall bar; ``each``: a line per file."""

        def done(result: transfer.Result, index: int, count: int) -> None:
            if self.bars is not None and self.bars.overall is not None:
                self.bars.file_done(result.size)
            else:
                self.notice(f"[{index}/{count}] {result.path}")
            if each:
                self._report("put", result)

        total = 0
        for local, _remote in pairs:
            try:
                total += local.stat().st_size
            except OSError:
                pass  # put_many reports it, in order
        with self._overall(len(pairs), total), self._stopped("put", len(pairs)) as count:
            transfer.put_many(
                self.conn,
                pairs,
                self.progress,
                self.notice,
                digest=self.digest,
                preserve=preserve,
                done=count(done),
            )

    def do_get(self, line: str) -> None:
        """get [-r] [-p] REMOTE [LOCAL]: download a file (a tree with -r); resumes if interrupted.

        Into LOCAL if it is an existing folder.  The last part of REMOTE may be a
        pattern (get logs/*.gz): every match goes into LOCAL (a folder) or the current
        one.  -p keeps the modification time.
        """
        usage = "get [-r] [-p] REMOTE [LOCAL]"
        opts, args = self._options(line, usage, "rp", 1, 2)
        recursive, preserve = "r" in opts, "p" in opts
        target = Path(args[1]).expanduser() if len(args) == 2 else None
        matches = (
            patterns.expand_remote(self.conn, args[0]) if patterns.has_magic(args[0]) else None
        )
        if matches is None or len(matches) == 1:
            remote = args[0] if matches is None else matches[0][0]
            entry = {} if matches is None else matches[0][1]
            name = posixpath.basename(remote.rstrip("/")) or "home"
            local = target if target is not None else Path(name)
            if recursive and entry.get("type", "dir") == "dir":
                return self._get_tree(remote, local, preserve)
            if local.is_dir():
                local = local / name
            result = transfer.get_file(
                self.conn,
                remote,
                local,
                self.progress,
                self.notice,
                self.digest,
                preserve=preserve,
                known_mtime=entry.get("mtime"),
            )
            self._report("got", result)
            return None
        folder = target if target is not None else Path(".")
        if not folder.is_dir():
            raise errors.ConflictError(f"{folder}: not a directory (several files go into one)")
        jobs: list[tuple[str, Path, dict[str, Any]]] = []
        for path, entry in matches:
            kind = entry.get("type")
            if kind == "file":
                jobs.append((path, folder / entry["name"], entry))
            elif kind == "dir" and recursive:
                top = folder / entry["name"]
                top.mkdir(exist_ok=True)
                dirs, files = transfer.walk_remote_entries(self.conn, path)
                for d in dirs:
                    (top / posixpath.relpath(d, path)).mkdir(parents=True, exist_ok=True)
                jobs += [(p, top / posixpath.relpath(p, path), e) for p, e in files]
            else:
                self.notice(
                    f"skipping {path}: "
                    + ("a directory (use get -r)" if kind == "dir" else "not a file")
                )
        if not jobs and not (recursive and any(e.get("type") == "dir" for _p, e in matches)):
            raise errors.NotFoundError(f"no files match {args[0]}")
        self._get_jobs(jobs, folder, preserve, each=True)
        return None

    def _get_tree(self, remote: str, local: Path, preserve: bool = False) -> None:
        dirs, files = transfer.walk_remote_entries(self.conn, remote)
        local.mkdir(parents=True, exist_ok=True)
        base = remote.rstrip("/") or "/"
        for d in dirs:
            (local / posixpath.relpath(d, base)).mkdir(parents=True, exist_ok=True)
        jobs = [(path, local / posixpath.relpath(path, base), entry) for path, entry in files]
        self._get_jobs(jobs, local, preserve, each=False)
        self.say(f"got {len(files)} files, {len(dirs) + 1} directories into {local}")

    def _get_jobs(
        self, jobs: list[tuple[str, Path, dict[str, Any]]], top: Path, preserve: bool, each: bool
    ) -> None:
        """Download many files (small ones pipelined) under an overall bar; ``each``: a
        line per file."""
        root = top.resolve()
        for path, target, _entry in jobs:
            if not target.resolve().is_relative_to(root):  # belt and braces after walk_remote
                raise errors.PathEscapeError(f"{path}: would be written outside {top}")

        def done(result: transfer.Result, index: int, count: int) -> None:
            if self.bars is not None and self.bars.overall is not None:
                self.bars.file_done(result.size)
            else:
                self.notice(f"[{index}/{count}] {result.path}")
            if each:
                self._report("got", result)

        total = sum(int(entry.get("size") or 0) for _p, _l, entry in jobs)
        with self._overall(len(jobs), total), self._stopped("got", len(jobs)) as count:
            transfer.get_many(
                self.conn,
                jobs,
                self.progress,
                self.notice,
                digest=self.digest,
                preserve=preserve,
                done=count(done),
            )

    @contextlib.contextmanager
    def _stopped(self, verb: str, files: int) -> Iterator[Callable[..., Any]]:
        """A many-file transfer that fails says how far it got (the error line follows).

        Yields a wrapper for the ``done`` callback that counts the files.
        """
        counted = [0]

        def count(done: Callable[[transfer.Result, int, int], None]) -> Callable[..., None]:
            def wrapper(result: transfer.Result, index: int, total: int) -> None:
                counted[0] = index
                done(result, index, total)

            return wrapper

        try:
            yield count
        except (errors.FTPError, OSError):
            if files > 1:
                self.notice(
                    f"stopped at the first failure: {verb} {counted[0]} of {files} files; "
                    "run the same command again to resume"
                )
            raise

    def _overall(self, files: int, total: int) -> _Overall:
        return _Overall(self.bars, files, total)

    def _report(self, verb: str, result: transfer.Result) -> None:
        resumed = f", resumed at byte {result.offset}" if result.offset else ""
        self.say(
            f"{verb} {result.path}: {result.size} bytes, "
            f"{self.digest} {result.checksum} verified{resumed}"
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
        """lls [-l] [PATH]: list a local directory (-l: long listing)."""
        opts, args = self._options(line, "lls [-l] [PATH]", "l", 0, 1)
        folder = Path(args[0]).expanduser() if args else Path(".")
        paths = sorted(folder.iterdir()) if folder.is_dir() else [folder]
        show = _format_long if "l" in opts else _format_entry
        for p in paths:
            st = p.lstat()
            kind = (
                "dir"
                if p.is_dir()
                else "file"
                if p.is_file()
                else "link"
                if p.is_symlink()
                else "other"
            )
            if p.is_symlink() and kind != "link":
                st = p.stat()
            entry = {"name": p.name, "type": kind, "size": st.st_size, "mtime": st.st_mtime}
            self.say(show({**entry, "mode": stat_mod.S_IMODE(st.st_mode)}))

    # --- leaving -----------------------------------------------------------------

    def do_quit(self, line: str) -> bool:
        """quit: end the session (also: exit, or Ctrl-D)."""
        self.session.close()
        return True

    do_exit = do_quit

    def get_names(self) -> list[str]:
        return [n for n in super().get_names() if n != "do_exit"]

    # --- completion --------------------------------------------------------------

    def completenames(self, text: str, *ignored: Any) -> list[str]:
        return [n + " " for n in super().completenames(text, *ignored)]

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
        self,
        text: str,
        line: str,
        begidx: int,
        endidx: int,
        local_first: bool = False,
        dirs: bool = False,
    ) -> list[str]:
        """Complete the shell-quoted word under the cursor; results come back quoted too.

        readline splits words at spaces and quotes only, so ``put "my fi<TAB>`` hands us
        ``fi``: the whole word is re-read with shlex and only its tail is replaced.
        """
        tokens, quote = _split_partial(line[:endidx])
        word = "" if line[:endidx][-1:].isspace() or len(tokens) < 2 else tokens[-1]
        position = len([t for t in tokens if not t.startswith("-")]) - (
            0 if word == "" and len(tokens) >= 1 else 1
        )
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


class _Overall:
    """While a many-file transfer runs: the overall bar (if bars are on and files > 1)."""

    def __init__(self, bars: progress.Bars | None, files: int, total: int) -> None:
        self.bars, self.files, self.total = bars, files, total

    def __enter__(self) -> None:
        if self.bars is not None:
            self.bars.start(self.files, self.total)

    def __exit__(self, kind: type[BaseException] | None, *rest: object) -> None:
        if self.bars is not None:
            self.bars.finish(ok=kind is None)


def _matching(
    prefix: str, stem: str, entries: list[tuple[str, bool]], dirs_only: bool
) -> list[str]:
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


def _when(ts: object) -> str:
    try:
        return datetime.fromtimestamp(float(ts)).strftime("%Y-%m-%d %H:%M")  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError, OSError):
        return "????-??-?? ??:??"


_TYPE_CHAR = {"dir": "d", "file": "-", "link": "l"}
#: Permission bits shown when the server does not send ``mode``.
_DEFAULT_MODE = {"dir": 0o755, "file": 0o644, "link": 0o777}


def _int(value: object) -> int | None:
    return value if type(value) is int and value >= 0 else None


def _unfinished(e: dict[str, Any]) -> str:
    """`` (unfinished: 40% of 1.0 MiB)`` for a name an interrupted upload is filling."""
    held, expected = _int(e.get("partial")), _int(e.get("expected"))
    if held is None:
        return ""
    if expected:
        return f"  (unfinished: {min(100, held * 100 // expected)}% of {progress.binary(expected)})"
    return f"  (unfinished: {progress.binary(held)} so far)"


def _name(e: dict[str, Any]) -> str:
    return str(e.get("name", "?"))


def _format_entry(e: dict[str, Any]) -> str:
    kind = _TYPE_CHAR.get(e.get("type", ""), "?")
    size = "" if e.get("type") == "dir" else format_size(_int(e.get("size")) or 0)
    name = _name(e) + ("/" if e.get("type") == "dir" else "")
    return f"{kind} {size:>10}  {_when(e.get('mtime', 0))}  {name}{_unfinished(e)}"


def mode_string(kind: str, mode: object) -> str:
    """``drwxr-xr-x``: the type letter, then the permission bits (``mode`` or a default)."""
    bits = _int(mode)
    bits = _DEFAULT_MODE.get(kind, 0) if bits is None else bits & 0o7777
    return _TYPE_CHAR.get(kind, "?") + stat_mod.filemode(bits)[1:]


def _format_long(e: dict[str, Any]) -> str:
    """``-rw-r--r--      18231  2026-11-22 10:15  report.pdf``: like ``ls -l``."""
    kind = str(e.get("type", "unknown"))
    size = _int(e.get("size"))
    shown = str(size) if kind == "file" and size is not None else "-"
    when = _when(e.get("mtime", 0))
    return f"{mode_string(kind, e.get('mode'))} {shown:>12}  {when}  {_name(e)}{_unfinished(e)}"


def run_batch(shell: Shell, commands: list[BatchCommand] | list[str]) -> int:
    """Run commands in order; stop at the first failure and return its exit status.

    Plain strings are taken as script lines and parsed first, all of them: a quoting
    error anywhere runs nothing (exit status 2).
    """
    if any(not isinstance(c, BatchCommand) for c in commands):
        try:
            commands = parse_script([str(c) for c in commands])
        except ScriptError as exc:
            print(f"ftp-client: {exc}", file=sys.stderr)
            return EXIT_USAGE
    for command in commands:
        assert isinstance(command, BatchCommand)
        shell.context = f"{command.where}: {command.text}"
        try:
            stop = shell.onecmd(command.text)
        finally:
            shell.context = None
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
                shell.intro = ""  # no second greeting after ^C
    finally:
        if readline is not None:
            try:
                readline.write_history_file(HISTORY_FILE)
            except OSError:
                pass
    return EXIT_OK
