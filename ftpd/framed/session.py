"""One session per connection: read frames, dispatch through COMMANDS, run ``cmd_*``.

This is where protocol, jail, users and quota meet (pyftpdlib's ``FramedSession``).  Session
state (user, jail with its cwd) lives on the handler instance, which socketserver makes
per connection and runs in that connection's thread; shared state is on ``self.server``.

Dispatch never calls ``getattr`` on client text: the name must be a key of
``protocol.COMMANDS`` first, and only then is ``cmd_<name>`` looked up.  Every failure is
turned into an error response here and only here; a bug becomes a logged traceback, a
500 and a closed connection, never a traceback on the wire or in another session.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import posixpath
import socket
import socketserver
import stat as stat_mod
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ftpd import store

from ftpd.framed import protocol

from ftpd.framed import streams
from ftpd.errors import (
    ConflictError,
    FTPError,
    InternalError,
    LoginFailedError,
    NotLoggedInError,
    ProtocolError,
    TimeoutError_,
    UnavailableError,
    from_oserror,
)
from ftpd.jail import PARTIAL_PREFIX, RESERVED, Jail
from ftpd.logs import clean
from ftpd.framed.protocol import OK, Request, Response
from ftpd.framed.transfer import receive_upload, send_download

if TYPE_CHECKING:
    from ftpd.framed.server import FramedServer

logger = logging.getLogger(__name__)


class FramedSession(socketserver.BaseRequestHandler):
    """A session.  Created by the server per connection; runs in that connection's thread."""

    server: "FramedServer"

    def setup(self) -> None:
        self.sock: socket.socket = self.request
        self.ip = str(self.client_address[0]) if self.client_address else "-"
        self.sock.settimeout(self.server.config.idle_timeout)
        if self.sock.family in (socket.AF_INET, socket.AF_INET6):
            # Each answer is one write (or a header, then sendfile): never wait for an ACK.
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.reader = streams.SocketReader(self.sock)
        self.user: str | None = None
        self.jail: Jail | None = None
        self.closing = False
        self.busy = False  # inside a command (the server's graceful stop waits for these)
        self._pending_body = 0
        self.server.register(self)

    # --- the loop ---------------------------------------------------------------------

    def handle(self) -> None:
        logger.info("CONNECT ip=%s", self.ip)
        refused = self.server.refusal(self.request)
        try:
            self._start_tls()
            if refused:
                logger.warning("REFUSED ip=%s: %s", self.ip, refused)
                self._send_quietly(protocol.error_response(UnavailableError(refused)))
                return
            self.send(self.server.greeting())
        except (OSError, ValueError) as exc:
            logger.info("DROPPED ip=%s before greeting: %s", self.ip, clean(exc))
            return
        login_deadline = time.monotonic() + self.server.config.login_timeout
        while not self.closing:
            try:
                header = self._next_header(login_deadline)
            except streams.ConnectionClosed as exc:
                if not exc.clean:
                    logger.info("DROPPED ip=%s user=%s: %s", self.ip, self.user, exc)
                break
            except (TimeoutError, socket.timeout):
                self._send_quietly(protocol.error_response(TimeoutError_("idle timeout")))
                logger.info("TIMEOUT ip=%s user=%s", self.ip, self.user)
                break
            except ProtocolError as exc:
                self._send_quietly(protocol.error_response(exc))
                logger.warning("BAD FRAME ip=%s user=%s: %s", self.ip, self.user, clean(exc))
                break
            except OSError as exc:
                logger.info("DROPPED ip=%s user=%s: %s", self.ip, self.user, exc)
                break
            self.busy = True
            try:
                self.dispatch(header)
            except OSError as exc:  # the answer itself could not be sent
                self._dropped(exc)
            finally:
                self.busy = False
            if self.server.stopping:
                if not self.closing:
                    self.closing = True
                    self.farewell("the server is shutting down")
                break

    def _start_tls(self) -> None:
        """Wrap the connection in TLS (in this thread, within the login timeout)."""
        context = self.server.ssl_context
        if context is None:
            return
        self.sock.settimeout(self.server.config.login_timeout)
        self.sock = context.wrap_socket(self.sock, server_side=True)
        self.sock.settimeout(self.server.config.idle_timeout)
        self.reader = streams.SocketReader(self.sock)

    def _next_header(self, login_deadline: float) -> dict[str, Any]:
        idle = self.server.config.idle_timeout
        # The whole header must arrive within the idle timeout (and before the login
        # deadline while nobody is logged in): a slow drip does not keep a session alive.
        deadline = time.monotonic() + idle
        self.reader.deadline = deadline if self.user else min(deadline, login_deadline)
        try:
            return streams.read_header(self.reader)
        finally:
            self.reader.deadline = None
            self.sock.settimeout(idle)

    def finish(self) -> None:
        self.server.unregister(self)
        if self.sock is not self.request:
            self.sock.close()  # the TLS wrapper; socketserver closes the raw socket
        logger.info("DISCONNECT ip=%s user=%s", self.ip, self.user)

    # --- dispatch ---------------------------------------------------------------------

    def dispatch(self, header: dict[str, Any]) -> None:
        """Validate, check login, call ``cmd_<name>``, answer; translate every failure."""
        self._started = time.perf_counter()
        self._request: Request | None = None
        self._header = header
        try:
            request = self._request = protocol.to_request(header)
            self._pending_body = request.body or 0
            spec = protocol.COMMANDS[request.cmd]
            if spec.login_required:
                self._check_account()
            method = getattr(self, "cmd_" + spec.name)  # a COMMANDS key, never client text
            response = method(request)
            if response is not None:  # None: the command answered with its body itself
                self.respond(response)
        except (streams.ConnectionClosed, TimeoutError, socket.timeout, ConnectionError) as exc:
            self._dropped(exc)
        except FTPError as exc:
            self.respond(self._fail(exc))
        except OSError as exc:
            self.respond(self._fail(from_oserror(exc, _vpath_of(self._request))))
        except Exception:
            logger.exception("BUG ip=%s user=%s cmd=%s", self.ip, self.user, clean(header.get("cmd")))
            self.respond(self._fail(InternalError("internal error; the session is closed")))

    def _dropped(self, exc: BaseException) -> None:
        """The peer went away or stalled mid-command: no answer is possible, close."""
        self.closing = True
        logger.info(
            "DROPPED ip=%s user=%s during %s: %s",
            self.ip, self.user, clean(self._header.get("cmd"), 40), clean(exc),
        )

    def _fail(self, exc: FTPError) -> Response:
        pending = self._pending_body or (exc.data.get("body") or 0)
        if pending and not exc.fatal:
            self._drain(pending)
        if exc.fatal:
            self.closing = True
        return protocol.error_response(exc)

    def _drain(self, size: int) -> None:
        """Skip a body we will not use, so the next frame can be read (bounded by the cap)."""
        self._pending_body = 0
        try:
            streams.copy_exact(self.reader, None, size)
        except (OSError, ProtocolError):
            self.closing = True

    def _check_account(self) -> None:
        if self.user is None:
            raise NotLoggedInError("log in first")
        account = self.server.users.get(self.user)
        if account is None or account.disabled:
            raise UnavailableError("your account was removed or disabled")

    def respond(self, response: Response, body: bytes = b"", log: bool = True) -> None:
        """Send a response (and a small body) for the command being dispatched, and log it.

        ``log=False`` when the command logs itself after a body that follows (``get``).
        """
        self.send(response, body)
        if log:
            self.log_command(response)

    def log_command(self, response: Response, note: str = "") -> None:
        """The one log line of a command: who, what, the result, the time, and ``note``."""
        ms = (time.perf_counter() - self._started) * 1000
        request = self._request
        name = request.cmd if request else self._header.get("cmd")
        args = request.args if request else {}
        shown = " ".join(f"{k}={clean(v, 120)}" for k, v in args.items() if k != "password")
        logger.log(
            # A server fault is an ERROR; a client's bad command (501) or a full disk is not.
            logging.ERROR if response.error in ("internal_error", "os_error") else logging.INFO,
            "CMD ip=%s user=%s %s %s -> %d %s (%.1f ms)%s",
            self.ip, self.user, clean(name, 40), shown, response.code, response.error or "ok", ms,
            note and " " + note,
        )

    def send(self, response: Response, body: bytes = b"") -> None:
        try:
            frame = protocol.encode(response)
        except FTPError:  # e.g. text from an undecodable name on disk: never on the wire
            logger.exception("BUG ip=%s user=%s: unencodable answer", self.ip, self.user)
            self.closing = True
            frame, body = protocol.encode(protocol.error_response(InternalError())), b""
        self.sock.sendall(frame + body if body else frame)

    def farewell(self, reason: str) -> None:
        """Tell an idle session why it is being closed (called from another thread).

        One non-blocking send of a small frame: it never waits on a client that does not
        read, and an idle session's thread is not writing at the same time.
        """
        frame = protocol.encode(protocol.error_response(UnavailableError(reason)))
        with contextlib.suppress(OSError, ValueError):  # ValueError: TLS sockets take no flags
            self.sock.send(frame, socket.MSG_DONTWAIT)

    def _send_quietly(self, response: Response) -> None:
        try:
            self.sock.settimeout(2)
            self.send(response)
        except OSError:
            pass

    def account(self):  # type: ignore[no-untyped-def]
        """The current user's record (re-read each time: a reload may change the quota)."""
        account = self.server.users.get(self.user or "")
        if account is None:
            raise UnavailableError("your account was removed")
        return account

    # --- commands: session ------------------------------------------------------------

    def cmd_login(self, request: Request) -> Response:
        if self.user is not None:
            raise ConflictError("already logged in")
        name, password = request.args["user"], request.args["password"]
        throttle = self.server.throttle
        throttle.check(name, self.ip)
        account = self.server.users.authenticate(name, password)
        if account is None:
            delay = throttle.failed(name, self.ip)
            logger.warning("LOGIN FAILED user='%s' ip=%s", clean(name, 64), self.ip)
            time.sleep(delay)  # the brake: a growing wait before the answer
            raise LoginFailedError("login incorrect")
        throttle.succeeded(name, self.ip)
        home = self.server.home_of(account.name)
        self.user, self.jail = account.name, Jail(home)
        logger.info("LOGIN OK user='%s' ip=%s", clean(account.name), self.ip)
        return Response(True, OK, f"welcome, {account.name}", data={"cwd": "/"})

    def cmd_quit(self, request: Request) -> Response:
        self.closing = True
        return Response(True, protocol.BYE, "goodbye")

    def cmd_pwd(self, request: Request) -> Response:
        return Response(True, OK, str(self._jail.cwd), data={"cwd": str(self._jail.cwd)})

    def cmd_cd(self, request: Request) -> Response:
        cwd = self._jail.chdir(request.args["path"])
        return Response(True, OK, cwd, data={"cwd": cwd})

    def cmd_quota(self, request: Request) -> Response:
        used, reserved = self.server.ledger(self.user or "").usage(rescan=True)
        limit = self.account().quota_bytes
        free = None if limit is None else max(0, limit - used - reserved)
        data = {"used": used, "limit": limit, "reserved": reserved, "available": free}
        return Response(True, OK, "quota", data=data)

    @property
    def _jail(self) -> Jail:
        if self.jail is None:
            raise NotLoggedInError("log in first")
        return self.jail

    # --- commands: browsing -----------------------------------------------------------

    def cmd_ls(self, request: Request) -> None:
        vpath = request.args.get("path", "")
        real = self._jail.existing(vpath)
        show_all = request.args.get("all", False)
        if real.is_dir():
            at_root = real == self._jail.root
            with os.scandir(real) as it:
                found = [
                    e for e in it
                    if not (at_root and e.name == RESERVED)
                    and not e.name.startswith(PARTIAL_PREFIX)
                    and (show_all or not e.name.startswith("."))
                ]
            found.sort(key=lambda e: e.name)
            lines = [_entry_line(e.path, e.name, self._jail) for e in found]
        else:
            lines = [_entry_line(str(real), real.name, self._jail)]
        body = "".join(lines).encode("utf-8")
        data = {"path": str(self._jail.normalize(vpath)), "count": len(lines)}
        self.respond(Response(True, OK, f"{len(lines)} entries", data=data, body=len(body)), body)

    def cmd_stat(self, request: Request) -> Response:
        real = self._jail.existing(request.args["path"])
        vpath = self._jail.normalize(request.args["path"])
        # The name the client used: not a link's target, nor the home's real name for "/".
        entry = _describe(real, vpath.name or "/", self._jail)
        entry["path"] = str(vpath)
        if entry["type"] == "file":  # the recorded digest only: stat never hashes a file
            with store.open_regular(real) as f:
                known = store.recorded_digest(f.fileno(), os.fstat(f.fileno()), protocol.DEFAULT_DIGEST)
            if known:
                entry["checksum"] = known
        return Response(True, OK, entry["type"], data=entry)

    def cmd_mkdir(self, request: Request) -> Response:
        vpath = request.args["path"]
        real = self._jail.resolve(vpath)
        if request.args.get("parents"):
            if real.exists() and not real.is_dir():
                raise ConflictError(f"{self._jail.normalize(vpath)}: exists and is not a directory")
            os.makedirs(real, exist_ok=True)
        else:
            os.mkdir(real)
        return Response(True, OK, f"created {self._jail.normalize(vpath)}")

    def cmd_rm(self, request: Request) -> Response:
        vpath = request.args["path"]
        real = self._jail.resolve_entry(vpath)
        shown = self._jail.normalize(vpath)
        ledger = self.server.ledger(self.user or "")
        try:
            st = os.lstat(real)
        except FileNotFoundError:
            # No file, but maybe an interrupted upload to that name: rm gives it up.
            count, freed = store.discard_partials(self._jail.root, real)
            if not count:
                raise
            ledger.adjust(-freed)
            return Response(True, OK, f"removed the interrupted upload of {shown}")
        if stat_mod.S_ISDIR(st.st_mode):
            raise ConflictError(f"{shown}: is a directory (use rmdir)")
        os.unlink(real)
        freed = st.st_size if stat_mod.S_ISREG(st.st_mode) else 0
        freed += store.discard_partials(self._jail.root, real)[1]
        ledger.adjust(-freed)
        return Response(True, OK, f"removed {shown}")

    def cmd_rmdir(self, request: Request) -> Response:
        vpath = request.args["path"]
        real = self._jail.resolve_entry(vpath)
        if not stat_mod.S_ISDIR(os.lstat(real).st_mode):
            raise ConflictError(f"{self._jail.normalize(vpath)}: not a directory")
        os.rmdir(real)
        if self._jail.cwd.is_relative_to(self._jail.normalize(vpath)):
            self._jail.cwd = self._jail.normalize(vpath).parent
        return Response(True, OK, f"removed {self._jail.normalize(vpath)}")

    def cmd_mv(self, request: Request) -> Response:
        jail = self._jail
        src = jail.resolve_entry(request.args["src"])
        src_st = os.lstat(src)  # must exist: 404 otherwise
        dst_v = request.args["dst"]
        if jail.resolve(dst_v).is_dir():  # like mv(1): into an existing directory
            dst_v = posixpath.join(str(jail.normalize(dst_v)), src.name)
        dst = jail.resolve_entry(dst_v)
        if stat_mod.S_ISDIR(src_st.st_mode) and dst.is_relative_to(src):
            raise ConflictError("cannot move a directory into itself")
        freed = store.regular_size(dst) if dst != src else 0
        os.rename(src, dst)
        if freed:
            self.server.ledger(self.user or "").adjust(-freed)
        return Response(True, OK, f"moved to {jail.normalize(dst_v)}")

    # --- commands: transfers (the mechanics are in ftpd.framed.transfer) ---------------------

    def cmd_put(self, request: Request) -> None:
        return receive_upload(self, request)

    def cmd_get(self, request: Request) -> None:
        send_download(self, request)


def _vpath_of(request: Request | None) -> str | None:
    if request is None:
        return None
    value = request.args.get("path") or request.args.get("src")
    return clean(value, 200) if isinstance(value, str) else None


def _display_name(name: str) -> tuple[str, bool]:
    """A name safe for UTF-8 JSON: undecodable bytes on disk become ``\\xNN`` escapes."""
    try:
        name.encode("utf-8")
        return name, False
    except UnicodeEncodeError:
        return os.fsencode(name).decode("utf-8", "backslashreplace"), True


_ENCODE = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def _entry_line(real: str, name: str, jail: Jail) -> str:
    """One ``ls`` body line (JSON and a newline)."""
    return _ENCODE(_describe(real, name, jail)) + "\n"


def _describe(real: str | Path, name: str, jail: Jail) -> dict[str, Any]:
    """One listing entry.  A symlink is shown as its target only if that stays inside."""
    shown, undecodable = _display_name(name)
    entry: dict[str, Any] = {"name": shown}
    if undecodable:
        entry["undecodable"] = True
    try:
        st = os.lstat(real)
        if stat_mod.S_ISLNK(st.st_mode):
            target = os.path.realpath(real)
            if jail.contains(target) and os.path.exists(target):
                st = os.stat(target)
            else:
                entry.update(type="link", size=0, mtime=st.st_mtime)
                return entry
    except OSError:
        entry.update(type="unknown", size=0, mtime=0)
        return entry
    mode = st.st_mode
    kind = "dir" if stat_mod.S_ISDIR(mode) else "file" if stat_mod.S_ISREG(mode) else "other"
    entry.update(type=kind, size=st.st_size if kind == "file" else 0, mtime=st.st_mtime)
    return entry
