"""The data-connection commands of an FTP session: PASV/EPSV/PORT/EPRT, the listings,
RETR, and STOR/APPE/STOU with our guarantees carried over (issue 10).

Uploads go through the core's ``Upload`` with an undeclared size: it owns the partial,
the hasher, the quota held as bytes arrive and the claim on the target; this module only
moves bytes into it and answers.  The file takes its name only when the upload ended
cleanly: the data stream ended (over TLS, with close_notify), no ABOR came, and the
control connection is still there to hear the 226.  That last check waits
``INSTALL_SETTLE_S`` after the end of the data, because a client that dies closes its
data connection a few milliseconds before its control connection (issue 10); a client
that sends anything meanwhile has proved itself alive at once.  What is not installed
stays resumable (REST + STOR, APPE).

Downloads stream with ``socket.sendfile`` (no copy through Python on plain
connections), in slices, so ABOR and a vanished client are noticed between slices.

This module must never touch the disk or the quota itself.
"""

from __future__ import annotations

import contextlib
import ipaddress
import secrets
import socket
import ssl
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

from ftpd.core.files import Download, Upload
from ftpd.errors import BadRequestError, ConflictError, QuotaExceededError
from ftpd.ftp import listing
from ftpd.ftp.data import DataChannel
from ftpd.ftp.replies import (
    AbortedError,
    BadSequenceError,
    BusyError,
    ClientGoneError,
    DataConnectionError,
    RefusedError,
    Reply,
    RestartOffsetError,
    TransferAbortedError,
)

if TYPE_CHECKING:
    from ftpd.core.files import FileService
    from ftpd.ftp.server import FTPServer

#: Receive buffer per upload: big enough for full speed, small enough for many uploads.
RECV_CHUNK = 256 * 1024
#: sendfile slice: the control connection is looked at between two slices.
SEND_CHUNK = 8 * 1024 * 1024
#: Listing text is sent in pieces of about this size.
LIST_CHUNK = 64 * 1024
#: How long after the end of an upload's data the control connection must still be
#: there before the file takes its name (see the module docstring).
INSTALL_SETTLE_S = 0.005
_STOU_TRIES = 20


class TransferCommands:
    """``ftp_*`` methods that use a data connection; mixed into ``FTPSession`` and run
    in its thread.  The names below are the session's own (declared for the checker)."""

    if TYPE_CHECKING:
        server: FTPServer
        ip: str
        local_ip: str
        user: str | None
        data: DataChannel | None
        epsv_all: bool
        rest: int
        tls: ssl.SSLContext | None
        prot_private: bool
        facts: tuple[str, ...]
        note: str

        @property
        def _files(self) -> FileService: ...
        def send(self, reply: Reply) -> None: ...
        def control_event(self, wait_s: float) -> str | None: ...
        def _close_data(self, tls_goodbye: bool = False) -> None: ...

    _data_ended = 0.0

    # --- opening a data channel -------------------------------------------------------

    def ftp_pasv(self, arg: str) -> Reply:
        if self.epsv_all:
            raise BadSequenceError("EPSV ALL was sent: only EPSV is allowed")
        local = _ipv4(self.local_ip)
        if local is None:
            raise DataConnectionError("PASV needs IPv4; use EPSV")
        advertised = self.server.ftp.passive_address or local
        port = self._listen()
        numbers = advertised.replace(".", ",")
        return Reply(227, f"Entering Passive Mode ({numbers},{port >> 8},{port & 255}).")

    def ftp_epsv(self, arg: str) -> Reply:
        proto = arg.strip().upper()
        if proto == "ALL":
            self.epsv_all = True
            return Reply(200, "EPSV ALL ok")
        family = "1" if _ipv4(self.local_ip) is not None else "2"
        if proto and proto not in ("1", "2"):
            raise BadRequestError("EPSV takes 1, 2 or ALL")
        if proto and proto != family:
            return Reply(522, f"network protocol not supported, use ({family})")
        return Reply(229, f"Entering Extended Passive Mode (|||{self._listen()}|)")

    def _listen(self) -> int:
        self._close_data()
        listener = self.server.ports.listen(self.local_ip)
        self.data = DataChannel(self.ip, self.server.config.idle_timeout, listener=listener)
        return self.data.port

    def ftp_port(self, arg: str) -> Reply:
        numbers = arg.strip().split(",")
        if len(numbers) != 6 or not all(n.strip().isdigit() for n in numbers):
            raise BadRequestError("PORT takes h1,h2,h3,h4,p1,p2")
        values = [int(n) for n in numbers]
        if any(v > 255 for v in values):
            raise BadRequestError("PORT takes numbers from 0 to 255")
        host = ".".join(str(v) for v in values[:4])
        return self._active(host, values[4] * 256 + values[5])

    def ftp_eprt(self, arg: str) -> Reply:
        text = arg.strip()
        parts = text[1:-1].split(text[0]) if len(text) > 2 and text[0] == text[-1] else []
        if len(parts) != 3 or parts[0] not in ("1", "2") or not parts[2].isdigit():
            raise BadRequestError("EPRT takes |1|address|port| or |2|address|port|")
        return self._active(parts[1], int(parts[2]))

    def _active(self, host: str, port: int) -> Reply:
        """PORT/EPRT: only with ``ftp.active``, only to the control connection's peer and
        an unprivileged port (no bounce, docs/security.md)."""
        if not self.server.ftp.active:
            raise RefusedError("active mode is off on this server; use PASV or EPSV")
        if self.epsv_all:
            raise BadSequenceError("EPSV ALL was sent: only EPSV is allowed")
        if not _same_host(host, self.ip):
            raise RefusedError("a data connection goes only to your own address")
        if not 1024 <= port <= 65535:
            raise RefusedError("a data connection goes only to a port from 1024 to 65535")
        self._close_data()
        target = (self.ip if ":" in self.ip else host, port)
        self.data = DataChannel(self.ip, self.server.config.idle_timeout, target=target)
        return Reply(200, "PORT ok")

    def _require_data(self) -> DataChannel:
        if self.data is None:
            raise DataConnectionError("open a data connection first (PASV or EPSV)")
        return self.data

    def _connect_data(self) -> socket.socket:
        channel = self._require_data()
        tls = self.tls if self.prot_private else None
        return channel.connect(tls, require_reuse=self.server.ftp.tls_session_reuse)

    # --- listings -----------------------------------------------------------------------

    def ftp_list(self, arg: str) -> Reply:
        path, show_all = _list_args(arg)
        shown, entries = self._files.listing(path, show_all, unfinished=False)
        now, owner = time.time(), self.user or "-"
        return self._send_lines((listing.ls_line(e, owner, now) for e in entries), shown)

    def ftp_nlst(self, arg: str) -> Reply:
        path, show_all = _list_args(arg)
        shown, entries = self._files.listing(path, show_all, unfinished=False)
        return self._send_lines((listing.display_name(e.name) for e in entries), shown)

    def ftp_mlsd(self, arg: str) -> Reply:
        files = self._files
        shown, _, entry = files.resolve(arg or ".")
        if entry is not None and entry.kind != "dir":
            raise ConflictError(f"{shown}: not a directory")
        shown, entries = files.listing(arg or ".", show_all=True, unfinished=False)
        base = shown.rstrip("/")
        user = files.user.name
        lines = (
            listing.facts(e, listing.unique_id(user, f"{base}/{e.name}"), self.facts)
            for e in entries
        )
        return self._send_lines(lines, shown)

    def _send_lines(self, lines: Iterable[str], shown: str) -> Reply:
        self._require_data()
        self.send(Reply(150, f"here comes the listing of {shown}"))
        try:
            sock = self._connect_data()
            piece: list[str] = []
            size = 0
            for line in lines:
                piece.append(line + "\r\n")
                size += len(line) + 2
                if size >= LIST_CHUNK:
                    _send(sock, piece)
                    piece, size = [], 0
            _send(sock, piece)
        except BaseException:
            self._close_data()
            raise
        self._close_data(tls_goodbye=True)
        return Reply(226, "listing sent")

    # --- downloads ----------------------------------------------------------------------

    def ftp_retr(self, arg: str) -> Reply:
        rest, self.rest = self.rest, 0
        self._require_data()
        try:
            with self._files.download(arg, None) as download:
                if rest > download.size:
                    raise RestartOffsetError(f"{download.shown} has {download.size} bytes")
                count = download.size - rest
                self.send(Reply(150, f"sending {download.shown} ({count} bytes from {rest})"))
                started = time.monotonic()
                self._send_file(self._connect_data(), download, rest)
        except BaseException:
            self._close_data()
            raise
        self._close_data(tls_goodbye=True)
        rate = count / max(time.monotonic() - started, 1e-9) / 1e6
        self.note = f"RETR size={download.size} from={rest} {rate:.1f} MB/s"
        return Reply(226, f"sent {download.shown}")

    def _send_file(self, sock: socket.socket, download: Download, offset: int) -> None:
        pos, end = offset, download.size
        while pos < end:
            try:
                sent = sock.sendfile(download, pos, min(SEND_CHUNK, end - pos))
            except (OSError, ValueError) as exc:
                self._watch_control()  # an ABOR that came with the close is answered so
                raise TransferAbortedError(f"the data connection broke: {exc}") from None
            if not sent:
                raise TransferAbortedError("the file shrank while it was being sent")
            pos += sent
            self._watch_control()

    def _watch_control(self, wait_s: float = 0.0) -> str | None:
        event = self.control_event(wait_s)
        if event == "abort":
            raise AbortedError("the transfer was aborted (ABOR)")
        if event == "gone":
            raise ClientGoneError("the control connection closed during the transfer")
        return event

    # --- uploads ------------------------------------------------------------------------

    def ftp_stor(self, arg: str) -> Reply:
        return self._store(arg, "stor")

    def ftp_appe(self, arg: str) -> Reply:
        return self._store(arg, "appe")

    def ftp_stou(self, arg: str) -> Reply:
        base = arg.strip() or "ftpd"
        for _ in range(_STOU_TRIES):
            name = f"{base}.{secrets.token_hex(4)}"
            shown, _, entry = self._files.resolve(name)
            if entry is None and Upload.held(self._files, name) is None:
                return self._store(name, "stou")
        raise ConflictError(f"{base}: no unique name found; try another")

    def _store(self, arg: str, mode: str) -> Reply:
        rest, self.rest = self.rest, 0
        self._require_data()
        try:
            upload = self._files.upload(arg, None, resume=bool(rest) or mode == "appe")
        except ConflictError as exc:
            if "another" in exc.message:  # the claim: another session uploads it now
                raise BusyError(exc.message) from None
            raise
        try:
            if mode == "stou" and upload.stored.target_exists:
                raise ConflictError(f"{upload.shown}: taken meanwhile; send STOU again")
            _place(upload, rest, mode)
            text = (
                f"FILE: {upload.shown}"
                if mode == "stou"
                else (f"ready to receive {upload.shown} from byte {upload.offset}")
            )
            self.send(Reply(150, text))
            received = self._receive(self._connect_data(), upload)
            self._close_data(tls_goodbye=True)
            digest = upload.commit(before_install=self._still_there)
        except QuotaExceededError:
            upload.drop()  # the byte past the limit: nothing is kept, nothing installed
            raise
        except BaseException:
            upload.abort()  # kept as a partial for a resume
            raise
        finally:
            self._close_data()
        size = upload.offset + received
        rate = received / max(time.monotonic() - upload.started, 1e-9) / 1e6
        self.note = f"{mode.upper()} size={size} from={upload.offset} {rate:.1f} MB/s"
        return Reply(226, f"stored {upload.shown}: {size} bytes, md5 {digest}")

    def _receive(self, sock: socket.socket, upload: Upload) -> int:
        """Read the data connection to its end into ``upload``; returns the bytes read.

        Raises:
            TransferAbortedError: the connection broke, stalled, or (TLS) ended without
                close_notify; AbortedError on ABOR; ClientGoneError when the control
                connection went away.
        """
        buf = bytearray(RECV_CHUNK)
        view = memoryview(buf)
        total = 0
        while True:
            try:
                n = sock.recv_into(buf)
            except ssl.SSLError as exc:
                self._watch_control()
                raise TransferAbortedError(f"the TLS stream was cut: {exc.reason}") from None
            except TimeoutError:
                raise TransferAbortedError("the data connection stalled") from None
            except OSError as exc:
                self._watch_control()
                raise TransferAbortedError(f"the data connection broke: {exc}") from None
            if not n:
                break
            upload.write(view[:n])
            total += n
            if upload.error is not None:
                break  # commit reports it (a full disk drops the partial)
            self._watch_control()
        self._data_ended = time.monotonic()
        return total

    def _still_there(self) -> None:
        """Called by the core right before the install: the client must still be there.

        Raises:
            ClientGoneError: the control connection closed (the client died).
            AbortedError: ABOR came after the data.
        """
        deadline = self._data_ended + INSTALL_SETTLE_S
        while True:
            if self._watch_control(max(0.0, deadline - time.monotonic())) == "line":
                return  # it sent its next command: alive
            if time.monotonic() >= deadline:
                return


def _place(upload: Upload, rest: int, mode: str) -> None:
    """Where the upload starts: APPE after the finished file (or the interrupted upload);
    REST + STOR at ``rest`` of whichever SIZE reported (the finished file first)."""
    target = upload.target_size
    if mode == "appe":
        if target is not None:
            upload.seed(target)
        return
    if not rest:
        return
    if target is not None:
        if rest > target:
            raise RestartOffsetError(f"{upload.shown} has {target} bytes")
        upload.seed(rest)
    elif rest <= upload.offset:
        upload.seek(rest)
    else:
        raise RestartOffsetError(f"{upload.shown}: {upload.offset} bytes held, not {rest}")


def _send(sock: socket.socket, piece: list[str]) -> None:
    if not piece:
        return
    try:
        sock.sendall("".join(piece).encode("utf-8", "backslashreplace"))
    except (OSError, ValueError) as exc:
        raise TransferAbortedError(f"the data connection broke: {exc}") from None


def _list_args(arg: str) -> tuple[str, bool]:
    """LIST/NLST arguments: leading ``-la``-style options (what clients send), a path."""
    words = arg.split(" ")
    show_all = False
    while words and words[0].startswith("-") and len(words[0]) > 1:
        show_all = show_all or "a" in words[0] or "A" in words[0]
        words.pop(0)
    return " ".join(words).strip() or ".", show_all


def _ipv4(ip: str) -> str | None:
    """The IPv4 form of an address (an IPv4-mapped IPv6 one too), or None."""
    with contextlib.suppress(ValueError):
        addr = ipaddress.ip_address(ip)
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            return str(addr.ipv4_mapped)
        if isinstance(addr, ipaddress.IPv4Address):
            return str(addr)
    return None


def _same_host(host: str, peer: str) -> bool:
    try:
        a, b = ipaddress.ip_address(host), ipaddress.ip_address(peer)
    except ValueError:
        return False
    a4 = getattr(a, "ipv4_mapped", None) or a
    b4 = getattr(b, "ipv4_mapped", None) or b
    return a4 == b4
