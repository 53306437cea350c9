"""FTP replies: the ``Reply`` object, its bytes, and the one map from errors to codes.

Lower layers raise ``ftpd.errors`` classes (the core's) or the few FTP-only ones below;
``reply_for`` is the only place that picks a reply code for a failure, the way the
framed front end's dispatcher is the only translator of its errors (STYLE.md,
paramiko's ``convert_errno``).  The codes are RFC 959's: 530 not logged in, 550 no such
file or refused path, 552 quota, 553 bad name, 425/426 data connection trouble.

This module must never touch a socket, and never put CR or LF from any text inside a
reply line (a name on disk or a client's argument could otherwise forge a reply).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from ftpd.errors import (
    BadRequestError,
    ChecksumError,
    ConflictError,
    FTPError,
    HeaderTooLargeError,
    InternalError,
    InvalidPathError,
    LoginFailedError,
    NotFoundError,
    NotLoggedInError,
    PermissionDeniedError,
    QuotaExceededError,
    StorageFullError,
    TimeoutError_,
    TooManyAttemptsError,
    UnavailableError,
    UnknownCommandError,
)
from ftpd.ftp.commands import UnimplementedError

_UNSAFE = re.compile("[\x00-\x1f\x7f]")


class FTPReplyError(FTPError):
    """An FTP-only failure that knows its reply code (``reply``)."""

    reply = 451
    name = "ftp_error"


class DataConnectionError(FTPReplyError):
    """No data connection could be opened or accepted (425)."""

    reply = 425
    name = "data_connection"


class TransferAbortedError(FTPReplyError):
    """The data connection broke or was aborted mid-transfer (426)."""

    reply = 426
    name = "transfer_aborted"


class AbortedError(TransferAbortedError):
    """The client sent ABOR: 426 for the transfer, then 226 for the ABOR (RFC 959)."""

    name = "aborted"


class BusyError(FTPReplyError):
    """The target is being uploaded by another session: try again later (450)."""

    reply = 450
    name = "busy"


class BadSequenceError(FTPReplyError):
    """A command out of its order: PASS before USER, RNTO before RNFR (503)."""

    reply = 503
    name = "bad_sequence"


class ParameterError(FTPReplyError):
    """A parameter this server does not implement: TYPE E, MODE B, PROT S (504)."""

    reply = 504
    name = "parameter_not_implemented"


class RestartOffsetError(FTPReplyError):
    """A REST offset past what is there to resume from (554, RFC 3659 §5.4)."""

    reply = 554
    name = "restart_offset"


class RefusedError(FTPReplyError):
    """Refused by policy: a PORT to a foreign address, active mode off (504/502)."""

    reply = 502
    name = "refused"


class ClientGoneError(FTPError):
    """The control connection went away: nobody is left to answer."""

    name = "client_gone"


#: Core error class -> reply code; the most specific class found in the MRO wins.
CODES: dict[type[FTPError], int] = {
    HeaderTooLargeError: 500,  # the command line over the cap (and the connection closes)
    UnimplementedError: 502,
    UnknownCommandError: 500,
    NotLoggedInError: 530,
    LoginFailedError: 530,
    TooManyAttemptsError: 530,
    InvalidPathError: 553,
    BadRequestError: 501,
    QuotaExceededError: 552,
    StorageFullError: 452,
    NotFoundError: 550,
    PermissionDeniedError: 550,  # PathEscapeError too: the jail answers 550
    ConflictError: 550,
    ChecksumError: 550,
    UnavailableError: 421,
    TimeoutError_: 421,
    InternalError: 421,
}


@dataclass(frozen=True)
class Reply:
    """One reply: a code and one or more lines of text (``lines`` make it multi-line)."""

    code: int
    text: str
    lines: list[str] = field(default_factory=list)
    close: bool = False  # close the control connection after sending it

    def encode(self) -> bytes:
        """The wire bytes; a multi-line reply is ``code-text``, `` line``..., ``code End``."""
        text = safe(self.text)
        if not self.lines:
            return f"{self.code} {text}\r\n".encode("utf-8", "backslashreplace")
        body = "".join(f" {safe(line)}\r\n" for line in self.lines)
        out = f"{self.code}-{text}\r\n{body}{self.code} End\r\n"
        return out.encode("utf-8", "backslashreplace")


def safe(text: str) -> str:
    """Text for one reply line: control characters become spaces."""
    return _UNSAFE.sub(" ", text)


def reply_for(exc: FTPError) -> Reply:
    """The reply for a failure (``exc.fatal``: and the connection closes)."""
    if isinstance(exc, FTPReplyError):
        return Reply(exc.reply, exc.message, close=exc.fatal)
    code = 451  # "local error in processing": an os_error, or a class not mapped
    for cls in type(exc).__mro__:
        if cls in CODES:
            code = CODES[cls]
            break
    return Reply(code, exc.message, close=exc.fatal or code == 421)


def quote_path(path: str) -> str:
    """A path in a 257 reply: in double quotes, inner quotes doubled (RFC 959)."""
    return '"' + path.replace('"', '""') + '"'
