"""The framed protocol's session: read frames, dispatch through COMMANDS, run ``cmd_*``.

One ``FramedSession`` per connection (socketserver makes it and runs it in that
connection's thread).  It speaks the wire and nothing else: logins go to
``core.login.Accounts``, files to a ``core.files.FileService``, limits and graceful stop
to ``core.runtime.Runtime``, all reached through ``self.server.services``.

Dispatch never calls ``getattr`` on client text: the name must be a key of
``protocol.COMMANDS`` first, and only then is ``cmd_<name>`` looked up.  Every failure is
turned into an error response here and only here (the service errors carry their wire
code); a bug becomes a logged traceback, a 500 and a closed connection, never a traceback
on the wire or in another session.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import select
import socket
import socketserver
import tempfile
import time
from typing import IO, TYPE_CHECKING, Any

from ftpd import proxy
from ftpd.core.files import FileService, commit_many
from ftpd.errors import (
    ConflictError,
    FTPError,
    InternalError,
    NotLoggedInError,
    ProtocolError,
    TimeoutError_,
    UnavailableError,
    from_oserror,
)
from ftpd.framed import protocol, streams
from ftpd.framed.protocol import OK, Request, Response
from ftpd.framed.transfer import PendingPut, answer_upload, receive_upload, send_download
from ftpd.logs import clean, word
from ftpd.storage.base import Entry

if TYPE_CHECKING:
    from ftpd.framed.server import FramedServer

logger = logging.getLogger(__name__)
#: An ``ls`` answer is kept in memory up to this size, in a temporary file past it.
LS_SPOOL_BYTES = 1 << 20
LS_CHUNK = 256 * 1024
#: Small puts committed together at most (group commit).  A pipelining client keeps up to
#: 32 in flight, so it goes on sending while half of them are flushed.
GROUP_MAX = 16
#: A put waits in a group only if its body is at most this big and already here.
GROUP_BODY_MAX = 1 << 20
#: Unfinished uploads listed by name in a ``quota`` answer (all are counted).
QUOTA_PARTIALS = 100


class FramedSession(socketserver.BaseRequestHandler):
    """A session.  Created by the server per connection; runs in that connection's thread."""

    server: FramedServer

    def setup(self) -> None:
        self.sock: socket.socket = self.request
        self.ip = str(self.client_address[0]) if self.client_address else "-"
        self.sock.settimeout(self.server.config.idle_timeout)
        if self.sock.family in (socket.AF_INET, socket.AF_INET6):
            # Each answer is one write (or a header, then sendfile): never wait for an ACK.
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.reader = streams.SocketReader(self.sock)
        self.user: str | None = None
        self.files: FileService | None = None
        self.closing = False
        self.busy = False  # inside a command (the server's graceful stop waits for these)
        self._pending_body = 0
        # The command being dispatched (its log line, its errors); forgotten once answered.
        self._started = 0.0
        self._request: Request | None = None
        self._header: dict[str, Any] = {}
        #: Small puts received and waiting for their group commit (``defer``, ``settle``).
        self.commits: list[PendingPut] = []
        self.server.runtime.register(self)

    # --- the loop ---------------------------------------------------------------------

    def handle(self) -> None:
        refused = self.server.refusal(self.request)
        # login_timeout bounds every byte before login, both ways: the PROXY header, the
        # TLS handshake, the greeting, each header and each answer (issue 9,
        # docs/protocol.md §4 and §6).
        login_deadline = time.monotonic() + self.server.config.login_timeout
        tls = self.server.ssl_context is not None
        via = self._proxy_header(login_deadline, check=tls)  # TLS: the client speaks first
        if via is None:
            return
        logger.info("CONNECT ip=%s%s", self.ip, f" via={via}" if via else "")
        if via and not refused:  # admitted by the balancer's address: count the client's
            refused = self.server.runtime.place(self.request, self.ip)
        try:
            if refused:  # the server closes a TLS connection refused at accept itself
                logger.warning("REFUSED ip=%s: %s", self.ip, refused)
                if not tls:  # over TLS (refused by its PROXY address) only closed
                    self._send_quietly(protocol.error_response(UnavailableError(refused)))
                return
            self._start_tls(login_deadline)
            self._bound_by(login_deadline)
            self.send(self.server.greeting())
        except (OSError, ValueError) as exc:
            logger.info("DROPPED ip=%s before greeting: %s", self.ip, clean(exc))
            return
        # In clear the client speaks after the greeting: look at its first bytes now.
        if not via and not tls and self._proxy_header(login_deadline, check=True) is None:
            return
        while not self.closing:
            try:
                header = self._next_header(login_deadline)
            except streams.ConnectionClosed as exc:
                if not exc.clean:
                    logger.info("DROPPED ip=%s user=%s: %s", self.ip, self.user, exc)
                break
            except TimeoutError:
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
                if self.user is None:  # the answer too must go out before the deadline
                    self._bound_by(login_deadline)
                self.dispatch(header)
            except OSError as exc:  # the answer itself could not be sent
                self._dropped(exc)
            finally:
                self.busy = bool(self.commits)
                self._request, self._header = None, {}  # a login's password included
            if self.server.runtime.stopping:
                self._settle_quietly()
                if not self.closing:
                    self.closing = True
                    self.farewell("the server is shutting down")
                break
        self._settle_quietly()  # puts received whole are installed even if nobody hears it

    def _proxy_header(self, deadline: float, check: bool) -> str | None:
        """Take a trusted balancer's PROXY header: ``self.ip`` becomes the client's
        address, and the balancer's is returned; "" when the peer is no balancer.  None:
        refused (logged; the connection is closed): a balancer sent no valid header in
        time, or (``check``) another peer's first bytes are a header (docs/security.md).
        """
        peer, trusted = self.ip, self.server.proxy
        try:
            self.ip = proxy.client_ip(self.sock, peer, trusted, deadline, check)
        except (proxy.ProxyError, OSError) as exc:
            logger.warning("PROXY REFUSED ip=%s: %s", peer, clean(exc))
            return None
        finally:
            self.sock.settimeout(self.server.config.idle_timeout)
        return peer if peer in trusted else ""

    def _start_tls(self, login_deadline: float) -> None:
        """Wrap the connection in TLS (in this thread, before the login deadline).

        The handshake's timeout is one deadline for the whole handshake (the ssl module
        counts it that way), so a client that drips its hello is cut like any other.
        """
        context = self.server.ssl_context
        if context is None:
            return
        self._bound_by(login_deadline)
        self.sock = context.wrap_socket(self.sock, server_side=True)
        self.sock.settimeout(self.server.config.idle_timeout)
        self.reader = streams.SocketReader(self.sock)

    def _bound_by(self, deadline: float) -> None:
        """Let no blocking send or receive on the socket outlast ``deadline``.

        Never 0 (that would make the socket non-blocking): a frame that arrived in time
        still gets its answer if the kernel takes it at once.
        """
        left = deadline - time.monotonic()
        self.sock.settimeout(max(0.01, min(left, self.server.config.idle_timeout)))

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
        self.server.runtime.unregister(self)
        if self.sock is not self.request:
            self.sock.close()  # the TLS wrapper; socketserver closes the raw socket
        logger.info("DISCONNECT ip=%s user=%s", self.ip, self.user)

    # --- dispatch ---------------------------------------------------------------------

    def dispatch(self, header: dict[str, Any]) -> None:
        """Validate, check login, call ``cmd_<name>``, answer; translate every failure."""
        self._started = time.perf_counter()
        self._request = None
        self._header = header
        try:
            if self.commits and header.get("cmd") != "put":
                self.settle()  # what this command sees and answers comes after them
            request = self._request = protocol.to_request(header)
            self._pending_body = request.body or 0
            spec = protocol.COMMANDS[request.cmd]
            if spec.login_required:
                self._check_account()
            method = getattr(self, "cmd_" + spec.name)  # a COMMANDS key, never client text
            response = method(request)
            if response is not None:  # None: the command answered with its body itself
                self.respond(response)
        except (streams.ConnectionClosed, TimeoutError, ConnectionError) as exc:
            self._dropped(exc)
        except FTPError as exc:
            self.respond(self._fail(exc))
        except OSError as exc:
            self.respond(self._fail(from_oserror(exc, _vpath_of(self._request))))
        except Exception:
            logger.exception(
                "BUG ip=%s user=%s cmd=%s", self.ip, self.user, clean(header.get("cmd"))
            )
            self.respond(self._fail(InternalError("internal error; the session is closed")))

    def _dropped(self, exc: BaseException) -> None:
        """The peer went away or stalled mid-command: no answer is possible, close."""
        self.closing = True
        logger.info(
            "DROPPED ip=%s user=%s during %s: %s",
            self.ip,
            self.user,
            clean(self._header.get("cmd"), 40),
            clean(exc),
        )

    def _fail(self, exc: FTPError) -> Response:
        announced = exc.data.get("body")
        pending = self._pending_body or (announced if isinstance(announced, int) else 0)
        if pending and self.user is None:
            return self._refuse_body(exc, pending)
        if pending and not exc.fatal:
            self._drain(pending)
        if exc.fatal:
            self.closing = True
        return protocol.error_response(exc)

    def _refuse_body(self, exc: FTPError, size: int) -> Response:
        """Before login no body is read, not even to skip it: answer, then close.

        Draining it would let a client that drips the body a byte at a time keep its
        connection, and a slot, past login_timeout (issue 9, docs/protocol.md §4).
        """
        self._pending_body = 0
        self.closing = True
        logger.warning("BODY BEFORE LOGIN ip=%s: %d bytes announced; closing", self.ip, size)
        response = protocol.error_response(exc)
        note = "no request body is accepted before login; the connection is closed"
        return dataclasses.replace(response, message=f"{response.message} ({note})")

    def _drain(self, size: int) -> None:
        """Skip a body we will not use, so the next frame can be read (bounded by the cap)."""
        self._pending_body = 0
        try:
            # 64 KiB at a time: a draining session holds no more, whatever the body's size.
            streams.copy_exact(self.reader, None, size, chunk=64 * 1024)
        except (OSError, ProtocolError):
            self.closing = True

    def _check_account(self) -> None:
        if self.user is None:
            raise NotLoggedInError("log in first")
        self.server.services.accounts.check(self.user)

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
        # A server fault is an ERROR; a client's bad command (501) or a full disk is not.
        level = logging.ERROR if response.error in ("internal_error", "os_error") else logging.INFO
        if not logger.isEnabledFor(level):
            return
        request = self._request
        name = request.cmd if request else self._header.get("cmd")
        args: dict[str, Any] = request.args if request else {}
        # word(): each value is one word, so a name with a space cannot add a field.
        shown = " ".join(f"{k}={word(v, 120)}" for k, v in args.items() if k != "password")
        fields = (
            self.ip,
            self.user,
            word(name, 40),
            shown,
            response.code,
            response.error or "ok",
            ms,
            note and " " + note,
        )
        # What logger.log does, less its walk up the stack for the caller's file and line
        # (FORMAT shows neither): a line per command is the daemon's most frequent record.
        record = logger.makeRecord(
            logger.name, level, __file__, _LOG_LINE, _CMD_LINE, fields, None, "log_command"
        )
        logger.handle(record)

    def send(self, response: Response, body: bytes = b"") -> None:
        if self.commits:  # answers go out in the order of the requests
            self.settle()
        try:
            frame = protocol.encode(response)
        except FTPError:  # e.g. text from an undecodable name on disk: never on the wire
            logger.exception("BUG ip=%s user=%s: unencodable answer", self.ip, self.user)
            self.closing = True
            frame, body = protocol.encode(protocol.error_response(InternalError())), b""
        self.sock.sendall(frame + body if body else frame)

    # --- group commit (docs/architecture.md, "Durability") -------------------------------

    def defer(self, put: PendingPut) -> None:
        """Hold a small put received whole while the client's next request is already
        here, whole: a pipelining client's puts are committed together (``commit_many``:
        two shared flushes per batch instead of two per file).  Settles at once when the
        next request is not all here yet, or the batch is full: the session never waits
        on its client with puts unanswered (nor holds their claims meanwhile)."""
        self.commits.append(put)
        if len(self.commits) >= GROUP_MAX or not self._next_frame_ready():
            self.settle()

    def _next_frame_ready(self) -> bool:
        """Whether the next request's header can be read without waiting."""
        reader, size = self.reader, protocol.LENGTH_SIZE
        if not reader.ready(size):
            return False
        try:
            length = protocol.parse_length(reader.peek(size))
        except ProtocolError:
            return False  # settle first: the loop reads it and answers the error
        return reader.ready(size + length)

    def body_ready(self, size: int) -> bool:
        """Whether a request body of ``size`` bytes can be read without waiting (a
        small one only: it is held in memory to know)."""
        return size <= GROUP_BODY_MAX and self.reader.ready(size)

    def settle(self) -> None:
        """Commit the puts waiting, as one group, and answer each in order: "stored"
        only now that the flushes covering its bytes and its name are done."""
        batch, self.commits = self.commits, []
        if not batch:
            return
        results = commit_many([(put.upload, put.checksum, put.mtime) for put in batch])
        saved = self._request, self._header, self._started
        try:
            for put, result in zip(batch, results, strict=True):
                self._request, self._header, self._started = put.request, put.header, put.started
                if isinstance(result, FTPError):
                    if result.fatal:
                        self.closing = True
                    self.respond(protocol.error_response(result))
                else:
                    answer_upload(self, put.upload, put.request, result)
        finally:
            self._request, self._header, self._started = saved

    def _settle_quietly(self) -> None:
        """``settle`` when the session ends: the files are installed; the answers go out
        if the connection still takes them."""
        try:
            self.settle()
        except OSError as exc:
            logger.info("DROPPED ip=%s user=%s before answering puts: %s", self.ip, self.user, exc)

    def farewell(self, reason: str) -> None:  # part of core.runtime.Session
        """Tell an idle session why it is being closed (called from another thread).

        One non-blocking send of a small frame: it never waits on a client that does not
        read, and an idle session's thread is not writing at the same time.  On a socket
        with a timeout Python waits for room before any send, MSG_DONTWAIT or not (up to
        idle_timeout: the stop stalled on such a client, issue 9), so the kernel is asked
        first: no room, no farewell.  ``poll``, not ``select``: descriptors past 1023.
        """
        frame = protocol.encode(protocol.error_response(UnavailableError(reason)))
        with contextlib.suppress(OSError, ValueError):  # ValueError: TLS sockets take no flags
            room = select.poll()
            room.register(self.sock, select.POLLOUT)
            if room.poll(0):
                self.sock.send(frame, socket.MSG_DONTWAIT)

    def _send_quietly(self, response: Response) -> None:
        try:
            self.sock.settimeout(2)
            self.send(response)
        except OSError:
            pass

    def interrupt(self) -> None:
        """Cut the connection (another thread: a takeover, or a stop past its grace)."""
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)

    # --- commands: session ------------------------------------------------------------

    def cmd_login(self, request: Request) -> Response:
        if self.user is not None:
            raise ConflictError("already logged in")
        services = self.server.services
        context = services.accounts.login(request.args["user"], request.args["password"], self.ip)
        self.files = FileService(
            context, services.accounts, services.runtime, self.server.config.partial_ttl
        )
        self.files.interrupt = self.interrupt
        self.user = context.name
        return Response(True, OK, f"welcome, {context.name}", data={"cwd": "/"})

    def cmd_quit(self, request: Request) -> Response:
        self.closing = True
        return Response(True, protocol.BYE, "goodbye")

    @property
    def _files(self) -> FileService:
        if self.files is None:
            raise NotLoggedInError("log in first")
        return self.files

    def cmd_pwd(self, request: Request) -> Response:
        cwd = self._files.pwd()
        return Response(True, OK, cwd, data={"cwd": cwd})

    def cmd_cd(self, request: Request) -> Response:
        cwd = self._files.cd(request.args["path"])
        return Response(True, OK, cwd, data={"cwd": cwd})

    def cmd_quota(self, request: Request) -> Response:
        info = self._files.quota()
        usage = info.usage
        data = {
            "used": usage.used,
            "limit": info.limit,
            "reserved": usage.reserved,
            "available": info.available,
            "files": usage.entries,
            "max_files": info.max_files,
            "reserved_files": usage.reserved_entries,
            # Unfinished uploads: what they hold (already inside "used") and the first
            # QUOTA_PARTIALS of them by path, so a user can see and give them up.
            "partial_bytes": sum(p["size"] for p in info.partials),
            "partial_count": len(info.partials),
            "partials": [_shown_partial(p) for p in info.partials[:QUOTA_PARTIALS]],
        }
        return Response(True, OK, "quota", data=data)

    # --- commands: browsing -----------------------------------------------------------

    def cmd_ls(self, request: Request) -> None:
        """The entries as JSON lines in the body, gathered as they are read from the
        folder: in memory up to ``LS_SPOOL_BYTES`` (sent with the header in one write, so
        the client wakes once), in a temporary file past that (sent after the header).
        One listing's memory is bounded whatever the folder's size, and a client that
        does not read holds no more than that."""
        path, show_all = request.args.get("path", ""), request.args.get("all", False)
        shown, entries = self._files.iter_listing(path, show_all)
        lines = bytearray()
        count = 0
        spill: IO[bytes] | None = None
        with contextlib.ExitStack() as stack:
            for entry in entries:
                lines += _entry_line(entry).encode("utf-8")
                count += 1
                if len(lines) > LS_SPOOL_BYTES:
                    if spill is None:
                        spill = stack.enter_context(tempfile.TemporaryFile())
                    spill.write(lines)
                    del lines[:]
            data = {"path": shown, "count": count}
            if spill is None:
                response = Response(True, OK, f"{count} entries", data=data, body=len(lines))
                self.respond(response, bytes(lines))
                return
            spill.write(lines)
            del lines[:]
            size = spill.tell()
            self.respond(Response(True, OK, f"{count} entries", data=data, body=size))
            spill.seek(0)
            while chunk := spill.read(LS_CHUNK):
                self.sock.sendall(chunk)

    def cmd_stat(self, request: Request) -> Response:
        shown, entry, checksum = self._files.stat(request.args["path"])
        data = _describe(entry)
        data["path"] = shown
        if checksum:
            data["checksum"] = checksum
        return Response(True, OK, entry.kind, data=data)

    def cmd_mkdir(self, request: Request) -> Response:
        shown = self._files.mkdir(request.args["path"], bool(request.args.get("parents")))
        return Response(True, OK, f"created {shown}")

    def cmd_rm(self, request: Request) -> Response:
        message = self._files.rm(request.args["path"], bool(request.args.get("recursive")))
        return Response(True, OK, message)

    def cmd_rmdir(self, request: Request) -> Response:
        return Response(True, OK, f"removed {self._files.rmdir(request.args['path'])}")

    def cmd_mv(self, request: Request) -> Response:
        return Response(
            True, OK, f"moved to {self._files.mv(request.args['src'], request.args['dst'])}"
        )

    # --- commands: transfers (the wire side is in ftpd.framed.transfer) ---------------

    def cmd_put(self, request: Request) -> None:
        return receive_upload(self, request)

    def cmd_get(self, request: Request) -> None:
        send_download(self, request)


#: The command line's format (admins and tests grep it) and where its records say they
#: come from (``log_command``).
_CMD_LINE = "CMD proto=framed ip=%s user=%s %s %s -> %d %s (%.1f ms)%s"
_LOG_LINE = FramedSession.log_command.__code__.co_firstlineno


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
#: A JSON string as ``_ENCODE`` writes it (non-ASCII kept, control characters escaped).
_STRING = json.encoder.encode_basestring


def _number(value: object) -> str:
    """A JSON number (or null) as ``_ENCODE`` writes it."""
    if type(value) is int or (type(value) is float and math.isfinite(value)):
        return repr(value)
    return _ENCODE(value)


def _kind(kind: str) -> str:
    return f',"type":{_STRING(kind)},"size":'


_KIND = {kind: _kind(kind) for kind in ("file", "dir", "link", "other", "unknown")}


def _entry_line(entry: Entry) -> str:
    """One ``ls`` body line: the JSON of ``_describe(entry)`` and a newline.

    The same text, written directly: no dict and no encoder call per entry (the hot
    path of a listing; tests/pure/test_hot_path_text.py holds the two together).
    """
    name = entry.name
    if name.isascii():  # no surrogates: nothing undecodable
        line = '{"name":' + _STRING(name)
    else:
        shown, undecodable = _display_name(name)
        line = '{"name":' + _STRING(shown) + (',"undecodable":true' if undecodable else "")
    size, mtime, mode = entry.size, entry.mtime, entry.mode
    if type(size) is int and type(mtime) is float and type(mode) is int and math.isfinite(mtime):
        line += (
            f'{_KIND.get(entry.kind) or _kind(entry.kind)}{size},"mtime":{mtime!r},"mode":{mode}'
        )
    else:
        line += (
            f'{_kind(entry.kind)}{_number(size)},"mtime":{_number(mtime)},"mode":{_number(mode)}'
        )
    if entry.partial is not None:
        line += f',"partial":{_number(entry.partial)},"expected":{_number(entry.expected)}'
    return line + "}\n"


def _describe(entry: Entry) -> dict[str, Any]:
    """One listing entry on the wire (docs/protocol.md §5.3)."""
    shown, undecodable = _display_name(entry.name)
    described: dict[str, Any] = {"name": shown}
    if undecodable:
        described["undecodable"] = True
    described.update(type=entry.kind, size=entry.size, mtime=entry.mtime, mode=entry.mode)
    if entry.partial is not None:
        described.update(partial=entry.partial, expected=entry.expected)
    return described


def _shown_partial(partial: dict[str, Any]) -> dict[str, Any]:
    shown = dict(partial)
    shown["path"] = _display_name(partial["path"])[0]
    return shown
