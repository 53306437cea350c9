"""One FTP control connection: read lines, dispatch through COMMANDS, run ``ftp_*``.

One ``FTPSession`` per connection (socketserver makes it and runs it in that
connection's thread).  It speaks FTP and nothing else: logins go to
``core.login.Accounts``, files to a ``core.files.FileService``, limits, claims and
graceful stop to ``core.runtime.Runtime``, all reached through ``self.server.services``
and shared with the framed listener.  The data-connection commands live in
``ftpd.ftp.transfer`` (a mixin), listings' text in ``ftpd.ftp.listing``.

Dispatch never calls ``getattr`` on client text: the verb must be a key of
``commands.COMMANDS`` first, and only the table's method name is looked up.  Every
failure becomes a reply here and only here, through ``replies.reply_for``; a bug is a
logged traceback, a 421 and a closed connection, never a traceback on the wire.
"""

from __future__ import annotations

import contextlib
import logging
import math
import select
import socket
import socketserver
import ssl
import time
from typing import TYPE_CHECKING

from ftpd import proxy
from ftpd.core.files import FileService, Upload
from ftpd.errors import (
    BadRequestError,
    FTPError,
    InternalError,
    NotFoundError,
    NotLoggedInError,
    QuotaExceededError,
    from_oserror,
)
from ftpd.ftp import commands, listing
from ftpd.ftp.commands import Command, LineBuffer, LineTooLongError
from ftpd.ftp.data import DataChannel
from ftpd.ftp.replies import (
    AbortedError,
    BadSequenceError,
    ClientGoneError,
    ParameterError,
    Reply,
    quote_path,
    reply_for,
)
from ftpd.ftp.transfer import TransferCommands
from ftpd.logs import clean
from ftpd.storage.base import Entry

if TYPE_CHECKING:
    from ftpd.ftp.server import FTPServer

logger = logging.getLogger(__name__)
RECV_BYTES = 4096
#: Digest algorithms for HASH (draft-bryan-ftpext-hash) -> our digest names.
HASHES = {"MD5": "md5", "SHA-1": "sha1"}


class FTPSession(TransferCommands, socketserver.BaseRequestHandler):
    """A session.  Created by the server per connection; runs in that connection's thread
    (``farewell`` and ``interrupt`` are called from others: graceful stop, takeovers)."""

    server: FTPServer

    def setup(self) -> None:
        self.sock: socket.socket = self.request
        self.ip = str(self.client_address[0]) if self.client_address else "-"
        self.local_ip = str(self.sock.getsockname()[0])
        self.sock.settimeout(self.server.config.idle_timeout)
        with contextlib.suppress(OSError):
            # ABOR comes with urgent data (RFC 959 §4.1.3): keep it in the stream.
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_OOBINLINE, 1)
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.lines = LineBuffer()
        self.queued: list[bytes] = []  # read mid-transfer (a deque would cost 0.7 KiB idle)
        self.user: str | None = None
        self.files: FileService | None = None
        self.pending_user: str | None = None
        self.closing = False
        self.busy = False  # inside a command (graceful stop waits for these)
        self.tls: ssl.SSLContext | None = None  # this session's context, after AUTH TLS
        self.pbsz = False
        self.prot_private = False
        self.data: DataChannel | None = None
        self.epsv_all = False
        self.rest = 0
        self.rename_from: str | None = None
        self.facts = listing.FACTS
        self.hash_algo = "MD5"
        self.note = ""  # the transfer figures for this command's log line
        self.server.runtime.register(self)

    # --- the loop ---------------------------------------------------------------------

    def handle(self) -> None:
        refused = self.server.refusal(self.request)
        # A balancer's PROXY header comes first, within login_timeout (docs/security.md).
        via = self._proxy_header(time.monotonic() + self.server.config.login_timeout)
        if via is None:
            return
        logger.info("CONNECT proto=ftp ip=%s%s", self.ip, f" via={via}" if via else "")
        if via and not refused:  # admitted by the balancer's address: count the client's
            refused = self.server.runtime.place(self.request, self.ip)
        try:
            if refused:
                logger.warning("REFUSED proto=ftp ip=%s: %s", self.ip, refused)
                self._send_quietly(Reply(421, refused))
                return
            self.send(Reply(220, self.server.greeting()))
        except OSError as exc:
            logger.info("DROPPED proto=ftp ip=%s before greeting: %s", self.ip, clean(exc))
            return
        self.login_deadline = time.monotonic() + self.server.config.login_timeout
        # The client speaks after the greeting: a header from a non-balancer is refused.
        if not via and self._proxy_header(self.login_deadline, check=True) is None:
            return
        while not self.closing:
            try:
                raw = self._next_line(self.login_deadline)
            except LineTooLongError as exc:
                self._send_quietly(reply_for(exc))
                logger.warning("LINE TOO LONG proto=ftp ip=%s user=%s", self.ip, self.user)
                break
            except TimeoutError:
                self._send_quietly(Reply(421, "idle timeout; closing the control connection"))
                logger.info("TIMEOUT proto=ftp ip=%s user=%s", self.ip, self.user)
                break
            except (EOFError, OSError) as exc:
                logger.info("DROPPED proto=ftp ip=%s user=%s: %s", self.ip, self.user, clean(exc))
                break
            self.busy = True
            try:
                self.dispatch(raw)
            finally:
                self.busy = False
            if self.server.runtime.stopping and not self.closing:
                self.closing = True
                self._send_quietly(Reply(421, "the server is shutting down"))

    def _proxy_header(self, deadline: float, check: bool = False) -> str | None:
        """Take a trusted balancer's PROXY header: ``self.ip`` becomes the client's
        address (for limits, the brake, logs and the data connection check), and the
        balancer's is returned; "" when the peer is no balancer.  None: refused (logged;
        the connection is closed): a balancer sent no valid header in time, or
        (``check``) another peer's first bytes are a header.
        """
        peer, trusted = self.ip, self.server.proxy
        try:
            self.ip = proxy.client_ip(self.sock, peer, trusted, deadline, check)
        except (proxy.ProxyError, OSError) as exc:
            logger.warning("PROXY REFUSED proto=ftp ip=%s: %s", peer, clean(exc))
            return None
        finally:
            self.sock.settimeout(self.server.config.idle_timeout)
        return peer if peer in trusted else ""

    def _next_line(self, login_deadline: float) -> bytes:
        """The next command line: one queued during a transfer, or from the socket.  It
        must arrive whole within the idle timeout (and the login timeout before login);
        a passive port nobody used is closed when its own timeout passes."""
        deadline = time.monotonic() + self.server.config.idle_timeout
        if self.user is None:
            deadline = min(deadline, login_deadline)
        while True:
            line = self.queued.pop(0) if self.queued else self.lines.next_line()
            if line is not None:
                return line
            now = time.monotonic()
            if now >= deadline:
                raise TimeoutError("idle timeout")
            wait = deadline - now
            if self.data is not None and self.data.sock is None:
                if self.data.expired:
                    self._close_data()
                else:
                    wait = min(wait, self.data.opened + self.data.timeout_s - now + 0.01)
            if not self._readable(wait):
                continue  # re-checks the deadlines above
            # Readable: in clear the bytes are there; TLS may still wait for the rest of a
            # record, at most until the deadline.
            self.sock.settimeout(max(deadline - time.monotonic(), 0.001))
            try:
                chunk = self.sock.recv(RECV_BYTES)
            except TimeoutError:
                continue
            finally:
                self.sock.settimeout(self.server.config.idle_timeout)
            if not chunk:
                raise EOFError("closed by the client")
            self.lines.feed(chunk)

    def _readable(self, wait_s: float) -> bool:
        """Whether the control connection has bytes within ``wait_s`` (or is closed).

        An idle session waits here, not in ``recv``: a blocked ``recv(n)`` holds its
        ``n``-byte buffer for as long as it waits, a poll holds nothing.  Bytes that TLS
        already decrypted (``SSLSocket.pending()``) are inside the SSL object, where poll
        does not see them: no wait then.
        """
        sock = self.sock
        if isinstance(sock, ssl.SSLSocket) and sock.pending():
            return True
        poller = select.poll()
        poller.register(sock, select.POLLIN | select.POLLPRI)
        return bool(poller.poll(max(1, math.ceil(wait_s * 1000))))

    def control_event(self, wait_s: float) -> str | None:
        """Look at the control connection during a transfer, waiting up to ``wait_s``.

        Returns ``"gone"`` (closed or reset), ``"abort"`` (ABOR), ``"line"`` (another
        command, queued for after the transfer) or None (nothing).  STAT is answered at
        once (RFC 959 §4.1.3).
        """
        sock = self.sock
        pending = isinstance(sock, ssl.SSLSocket) and sock.pending()
        if not pending:
            poller = select.poll()
            poller.register(sock, select.POLLIN | select.POLLPRI | select.POLLHUP)
            if not poller.poll(max(0, math.ceil(wait_s * 1000))):  # never a busy loop
                return None
        try:
            sock.settimeout(min(1.0, self.server.config.idle_timeout))
            chunk = sock.recv(RECV_BYTES)
        except (TimeoutError, ssl.SSLWantReadError, BlockingIOError):
            return None
        except OSError:
            return "gone"
        finally:
            sock.settimeout(self.server.config.idle_timeout)
        if not chunk:
            return "gone"
        try:
            self.lines.feed(chunk)
        except LineTooLongError:
            return "gone"
        return self._sort_lines()

    def _sort_lines(self) -> str | None:
        event = None
        while (line := self.lines.next_line()) is not None:
            verb = commands.strip_telnet(line).lstrip(b" ").split(b" ", 1)[0].upper()
            if verb == b"ABOR":
                return "abort"
            if verb == b"STAT":
                self._send_quietly(Reply(213, "a transfer is in progress"))
                continue
            self.queued.append(line)
            event = "line"
        return event

    def finish(self) -> None:
        self._close_data()
        self.server.runtime.unregister(self)
        if self.sock is not self.request:
            with contextlib.suppress(OSError):
                self.sock.close()  # the TLS wrapper; socketserver closes the raw socket
        logger.info("DISCONNECT proto=ftp ip=%s user=%s", self.ip, self.user)

    # --- dispatch ---------------------------------------------------------------------

    def dispatch(self, raw: bytes) -> None:
        """Parse, check login and argument, call ``ftp_<method>``, reply; translate every
        failure through ``reply_for``."""
        started = time.perf_counter()
        command: Command | None = None
        self.note = ""
        reply: Reply | None
        try:
            command = commands.parse(raw)
            spec = command.spec
            if spec.login:
                if self.user is None:
                    raise NotLoggedInError("log in with USER and PASS first")
                self.server.services.accounts.check(self.user)
            commands.check_arg(command)
            if spec.name in ("LIST", "NLST", "MLSD", "STOU", "REIN"):
                self.rest = 0  # REST applies to the next RETR, STOR or APPE only (which
                # take it); PASV, TYPE and the like may come between (FileZilla, ftplib)
            if spec.name not in ("RNFR", "RNTO"):
                self.rename_from = None  # RNTO must come right after RNFR
            method = getattr(self, "ftp_" + spec.method)  # a table entry, never client text
            reply = method(command.arg)
        except ClientGoneError as exc:
            self.closing = True
            self.note = exc.message
            reply = None
        except AbortedError as exc:
            self._reply_quietly(Reply(426, exc.message))  # the transfer's answer
            reply = Reply(226, "ABOR ok")  # and the ABOR's (RFC 959 §4.1.3)
        except FTPError as exc:
            reply = reply_for(exc)
        except (ConnectionError, TimeoutError) as exc:
            self.closing = True  # the control connection itself failed
            self.note = f"dropped: {clean(exc)}"
            reply = None
        except OSError as exc:
            reply = reply_for(from_oserror(exc))
        except Exception:
            shown = command.shown if command else "?"
            logger.exception("BUG proto=ftp ip=%s user=%s cmd=%s", self.ip, self.user, clean(shown))
            reply = reply_for(InternalError("internal error; the session is closed"))
        if reply is not None:
            self._reply_quietly(reply)
        self._log(command, raw, reply, started)

    def _log(self, command: Command | None, raw: bytes, reply: Reply | None, t0: float) -> None:
        ms = (time.perf_counter() - t0) * 1000
        shown = command.shown if command else raw[:40].decode("utf-8", "backslashreplace")
        result = f"{reply.code} {clean(reply.text, 120)}" if reply else "no reply"
        level = logging.ERROR if reply is not None and reply.code == 421 else logging.INFO
        logger.log(
            level,
            "CMD proto=ftp ip=%s user=%s %s -> %s (%.1f ms)%s",
            self.ip,
            self.user,
            clean(shown, 200),
            result,
            ms,
            self.note and " " + self.note,
        )

    def send(self, reply: Reply) -> None:
        self.sock.sendall(reply.encode())
        if reply.close:
            self.closing = True

    def _reply_quietly(self, reply: Reply) -> None:
        try:
            self.send(reply)
        except OSError as exc:
            self.closing = True
            self.note = f"{self.note} reply lost: {clean(exc)}".strip()

    def _send_quietly(self, reply: Reply) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.sock.settimeout(2)
            self.sock.sendall(reply.encode())

    def farewell(self, reason: str) -> None:  # part of core.runtime.Session
        """Tell an idle session why it is closed (another thread): one non-blocking send."""
        with contextlib.suppress(OSError, ValueError):  # ValueError: TLS takes no flags
            self.sock.send(Reply(421, reason).encode(), socket.MSG_DONTWAIT)

    def interrupt(self) -> None:
        """Cut the connections (another thread: a takeover, or a stop past its grace)."""
        data = self.data
        for sock in (self.sock, data.sock if data is not None else None):
            if sock is not None:
                with contextlib.suppress(OSError, ValueError):
                    sock.shutdown(socket.SHUT_RDWR)

    @property
    def _files(self) -> FileService:
        if self.files is None:
            raise NotLoggedInError("log in with USER and PASS first")
        return self.files

    # --- login and session ------------------------------------------------------------

    def _tls_first(self) -> None:
        if self.server.ftp.require_tls and self.tls is None:
            raise NotLoggedInError("this server requires TLS: send AUTH TLS first")

    def ftp_user(self, arg: str) -> Reply:
        if self.user is not None:
            raise NotLoggedInError("already logged in; send REIN to change user")
        self._tls_first()
        self.pending_user = arg
        return Reply(331, f"password required for {arg}")

    def ftp_pass(self, arg: str) -> Reply:
        if self.user is not None:
            raise BadSequenceError("already logged in")
        self._tls_first()
        if self.pending_user is None:
            raise BadSequenceError("send USER first")
        name, self.pending_user = self.pending_user, None
        services = self.server.services
        context = services.accounts.login(name, arg, self.ip)
        ttl = getattr(self.server.config, "partial_ttl", None)
        self.files = FileService(context, services.accounts, services.runtime, ttl)
        self.files.interrupt = self.interrupt
        self.user = context.name
        return Reply(230, f"welcome, {context.name}; / is your home")

    def ftp_acct(self, arg: str) -> Reply:
        return Reply(202, "ACCT is not needed here")

    def ftp_rein(self, arg: str) -> Reply:
        # A new login gets a new login_timeout, counted from now (RFC 959: REIN keeps
        # the connection; the old deadline would close it at once).
        self.login_deadline = time.monotonic() + self.server.config.login_timeout
        self._close_data()
        self.user = self.files = self.pending_user = self.rename_from = None
        self.rest = 0
        return Reply(220, "logged out; ready for a new user")

    def ftp_quit(self, arg: str) -> Reply:
        self.closing = True
        return Reply(221, "goodbye")

    def ftp_noop(self, arg: str) -> Reply:
        return Reply(200, "NOOP ok")

    def ftp_clnt(self, arg: str) -> Reply:
        return Reply(200, "noted")

    def ftp_syst(self, arg: str) -> Reply:
        return Reply(215, "UNIX Type: L8")

    def ftp_feat(self, arg: str) -> Reply:
        facts = "".join(f"{f}{'*' if f in self.facts else ''};" for f in listing.FACTS)
        hashes = ";".join(f"{h}{'*' if h == self.hash_algo else ''}" for h in HASHES)
        lines = ["EPRT", "EPSV", "MDTM", "MFMT", f"MLST {facts}", "REST STREAM", "SIZE"]
        lines += ["TVFS", "UTF8", f"HASH {hashes}", "XMD5", "XSHA1", "CLNT"]
        if self.server.tls_factory is not None:
            lines = ["AUTH TLS", "PBSZ", "PROT"] + lines
        return Reply(211, "Features:", sorted(lines))

    def ftp_opts(self, arg: str) -> Reply:
        name, _, value = arg.strip().partition(" ")
        name = name.upper()
        if name == "UTF8":
            return Reply(200, "always in UTF-8 mode")
        if name == "MLST":
            self.facts = listing.parse_facts(value)
            return Reply(200, "MLST OPTS " + "".join(f"{f};" for f in self.facts))
        if name == "HASH":
            if not value:
                return Reply(200, self.hash_algo)
            if value.strip().upper() not in HASHES:
                raise BadRequestError(f"unknown algorithm; use one of {', '.join(HASHES)}")
            self.hash_algo = value.strip().upper()
            return Reply(200, self.hash_algo)
        raise BadRequestError(f"unknown option {clean(name, 20)}")

    def ftp_help(self, arg: str) -> Reply:
        if arg.strip():
            spec = commands.COMMANDS.get(arg.strip().upper())
            if spec is None:
                raise BadRequestError("unknown command")
            return Reply(214, spec.help)
        return Reply(214, "The following commands are recognized:", commands.help_lines())

    def ftp_site(self, arg: str) -> Reply:
        if arg.strip().upper() == "HELP":
            return Reply(214, "SITE commands: HELP")
        raise BadRequestError("SITE command not understood; try SITE HELP")

    def ftp_stat(self, arg: str) -> Reply:
        if arg.strip():
            shown, entries = self._files.listing(arg, show_all=True, unfinished=False)
            now = time.time()
            lines = [listing.ls_line(e, self.user or "-", now) for e in entries]
            return Reply(213, f"status of {shown}:", lines)
        lines = [
            f"connected from {self.ip}",
            f"logged in as {self.user}",
            f"TLS on the control connection: {'yes' if self.tls else 'no'}",
            f"data connections protected: {'yes' if self.prot_private else 'no'}",
            "type: binary; mode: stream; structure: file",
        ]
        return Reply(211, "ftpd status:", lines)

    # --- TLS (RFC 4217) ---------------------------------------------------------------

    def ftp_auth(self, arg: str) -> Reply | None:
        if arg.strip().upper() not in ("TLS", "SSL", "TLS-C", "TLS-P"):
            raise ParameterError("only AUTH TLS is supported")
        if self.server.tls_factory is None:
            return Reply(502, "TLS is not configured on this server")
        if self.tls is not None:
            raise BadSequenceError("TLS is already on")
        context = self.server.tls_factory()
        self.send(Reply(234, "AUTH TLS ok; start the handshake"))
        self.sock.settimeout(self.server.config.login_timeout)
        try:
            self.sock = context.wrap_socket(self.sock, server_side=True)
        except (OSError, ValueError) as exc:
            self.closing = True
            self.note = f"TLS handshake failed: {clean(exc)}"
            return None
        self.sock.settimeout(self.server.config.idle_timeout)
        # Data connections issue no session tickets (issue 10: unread tickets turn an
        # uploading client's close into a reset); the control connection got its own.
        context.num_tickets = 0
        self.tls = context
        self.lines = LineBuffer()  # nothing sent in clear before the handshake survives
        self.queued.clear()
        return None

    def ftp_pbsz(self, arg: str) -> Reply:
        if self.tls is None:
            raise BadSequenceError("send AUTH TLS first")
        self.pbsz = True
        return Reply(200, "PBSZ=0")

    def ftp_prot(self, arg: str) -> Reply:
        level = arg.strip().upper()
        if self.tls is None:
            raise BadSequenceError("send AUTH TLS first")
        if not self.pbsz:
            raise BadSequenceError("send PBSZ 0 first")
        if level in ("S", "E"):
            return Reply(536, f"PROT {level} is not supported; use P or C")
        if level not in ("P", "C"):
            raise ParameterError("PROT takes P or C")
        self.prot_private = level == "P"
        return Reply(200, f"data connections are {'protected' if self.prot_private else 'clear'}")

    # --- navigation and changes -------------------------------------------------------

    def ftp_pwd(self, arg: str) -> Reply:
        return Reply(257, f"{quote_path(self._files.pwd())} is the current directory")

    def ftp_cwd(self, arg: str) -> Reply:
        return Reply(250, f"directory changed to {self._files.cd(arg or '/')}")

    def ftp_cdup(self, arg: str) -> Reply:
        return Reply(250, f"directory changed to {self._files.cd('..')}")

    def ftp_mkd(self, arg: str) -> Reply:
        return Reply(257, f"{quote_path(self._files.mkdir(arg))} created")

    def ftp_rmd(self, arg: str) -> Reply:
        return Reply(250, f"removed {self._files.rmdir(arg)}")

    def ftp_dele(self, arg: str) -> Reply:
        return Reply(250, self._files.rm(arg))

    def ftp_rnfr(self, arg: str) -> Reply:
        shown, _, entry = self._files.resolve(arg, follow=False)
        if entry is None:
            raise NotFoundError(f"{shown}: no such file or directory")
        self.rename_from = shown
        return Reply(350, "ready for RNTO")

    def ftp_rnto(self, arg: str) -> Reply:
        source, self.rename_from = self.rename_from, None
        if source is None:
            raise BadSequenceError("send RNFR first")
        return Reply(250, f"renamed to {self._files.mv(source, arg)}")

    # --- parameters ---------------------------------------------------------------------

    def ftp_type(self, arg: str) -> Reply:
        kind = " ".join(arg.upper().split())
        if kind in ("A", "A N"):
            return Reply(200, "type set to A (transfers are binary: no line-end conversion)")
        if kind in ("I", "L 8"):
            return Reply(200, "type set to I")
        raise ParameterError(f"TYPE {clean(kind, 10)} is not supported; use I")

    def ftp_mode(self, arg: str) -> Reply:
        if arg.strip().upper() == "S":
            return Reply(200, "mode set to S")
        raise ParameterError("only MODE S (stream) is supported")

    def ftp_stru(self, arg: str) -> Reply:
        if arg.strip().upper() == "F":
            return Reply(200, "structure set to F")
        raise ParameterError("only STRU F (file) is supported")

    def ftp_rest(self, arg: str) -> Reply:
        text = arg.strip()
        if not text.isdigit() or len(text) > 18:
            raise BadRequestError("REST takes a byte offset")
        self.rest = int(text)
        return Reply(350, f"restarting at {self.rest}; send STOR, APPE or RETR")

    def ftp_allo(self, arg: str) -> Reply:
        text = arg.split()[0] if arg.split() else ""
        if not text.isdigit():
            raise BadRequestError("ALLO takes a number of bytes")
        files = self._files
        limit = files.accounts.limits(files.user.name).nbytes
        usage = files.ledger.usage()
        if limit is not None and usage.used + usage.reserved + int(text) > limit:
            free = max(0, limit - usage.used - usage.reserved)
            raise QuotaExceededError(f"quota exceeded: {free} bytes free")
        return Reply(200, "ALLO ok: it fits (the quota is held while the upload runs)")

    # --- facts of one file --------------------------------------------------------------

    def _finished(self, arg: str) -> tuple[str, Entry | None]:
        """The entry at ``arg`` (None: nothing finished there)."""
        shown, _, entry = self._files.resolve(arg)
        return shown, entry

    def _held(self, arg: str) -> int | None:
        """Bytes an interrupted FTP upload holds for ``arg`` (None: no such upload)."""
        return Upload.held(self._files, arg)

    def ftp_size(self, arg: str) -> Reply:
        shown, entry = self._finished(arg)
        if entry is None:
            held = self._held(arg)
            if held is None:
                raise NotFoundError(f"{shown}: no such file")
            return Reply(213, str(held))
        if entry.kind != "file":
            raise NotFoundError(f"{shown}: not a regular file")
        return Reply(213, str(entry.size))

    def ftp_mdtm(self, arg: str) -> Reply:
        shown, entry = self._finished(arg)
        if entry is None or entry.kind != "file":
            raise NotFoundError(f"{shown}: no such file")
        return Reply(213, listing.mdtm(entry.mtime))

    def ftp_mfmt(self, arg: str) -> Reply:
        stamp, _, path = arg.partition(" ")
        try:
            mtime = listing.parse_mdtm(stamp)
        except ValueError as exc:
            raise BadRequestError(str(exc)) from None
        if not path:
            raise BadRequestError("MFMT takes a time and a path")
        self._files.set_mtime(path, mtime)
        return Reply(213, f"Modify={listing.mdtm(mtime)}; {path}")

    def ftp_mlst(self, arg: str) -> Reply:
        files = self._files
        shown, entry = self._finished(arg or ".")
        kind = ""
        if entry is None:
            held = self._held(arg)
            if held is None:
                raise NotFoundError(f"{shown}: no such file or directory")
            entry = Entry(shown.rsplit("/", 1)[-1], "file", held, time.time(), 0o600)
        elif entry.kind == "dir" and not arg.strip("./"):
            kind = "cdir"
        entry = Entry(shown, entry.kind, entry.size, entry.mtime, entry.mode)
        unique = listing.unique_id(files.user.name, shown)
        return Reply(250, f"facts of {shown}:", [listing.facts(entry, unique, self.facts, kind)])

    def ftp_hash(self, arg: str) -> Reply:
        algo = self.hash_algo
        shown, hexdigest, size = self._digest(arg, HASHES[algo])
        return Reply(213, f"{algo} 0-{size} {hexdigest} {shown}")

    def ftp_xmd5(self, arg: str) -> Reply:
        return Reply(250, self._digest(arg, "md5")[1])

    def ftp_xsha1(self, arg: str) -> Reply:
        return Reply(250, self._digest(arg, "sha1")[1])

    def _digest(self, arg: str, digest: str) -> tuple[str, str, int]:
        """The file's digest: the one recorded at upload (md5), else computed once (and
        then recorded) by the core."""
        files = self._files
        if digest == "md5":
            shown, entry, recorded = files.stat(arg)
            if recorded is not None and entry.kind == "file":
                return shown, recorded, entry.size
        with files.download(arg, digest) as download:
            return download.shown, str(download.checksum), download.size

    def ftp_abor(self, arg: str) -> Reply:
        had = self.data is not None
        self._close_data()
        return Reply(226 if had else 225, "no transfer to abort; data connection closed")

    # --- the data channel's end ---------------------------------------------------------

    def _close_data(self, tls_goodbye: bool = False) -> None:
        data, self.data = self.data, None
        if data is not None:
            data.close(tls_goodbye)
