"""One exception tree for the daemon and the client; each class knows its wire code.

Lower layers raise these and never build replies; the handler's dispatcher is the only
place that turns them into error responses, and the client turns an error response back
into the same class with :func:`error_for` (paramiko's client does the same).

This module must never import anything else of ours.
"""

from __future__ import annotations

import errno


class FTPError(Exception):
    """Base class: ``code`` is the stable numeric wire code, ``name`` its stable slug."""

    code = 500
    name = "internal_error"
    #: Whether the daemon closes the connection after answering with this error.
    fatal = False

    # ``message`` is positional-only so a peer's data field called "message" cannot
    # collide with it when error_for rebuilds the exception.
    def __init__(self, message: str | None = None, /, **data: object) -> None:
        super().__init__(message or self.default_message())
        self.message = message or self.default_message()
        #: Extra machine-readable fields sent with the error (e.g. ``available``).
        self.data = data

    @classmethod
    def default_message(cls) -> str:
        return cls.name.replace("_", " ")


class BadRequestError(FTPError):
    """A frame or message that is not what the protocol says (docs/protocol.md §2)."""

    code = 400
    name = "bad_request"


class ProtocolError(BadRequestError):
    """The byte stream itself is broken; the connection cannot continue."""

    name = "protocol_error"
    fatal = True


class NotLoggedInError(FTPError):
    code = 401
    name = "not_logged_in"


class PermissionDeniedError(FTPError):
    code = 403
    name = "permission_denied"


class PathEscapeError(PermissionDeniedError):
    """A path that would leave the user's home (``..``, symlinks, reserved names)."""

    name = "path_escape"


class InvalidPathError(BadRequestError):
    """NUL, control characters, or an over-long name."""

    name = "invalid_path"


class NotFoundError(FTPError):
    code = 404
    name = "not_found"


class TimeoutError_(FTPError):  # noqa: N801 - the builtin name is taken
    code = 408
    name = "timeout"
    fatal = True


class ConflictError(FTPError):
    """Exists already, not empty, is a directory, not a directory."""

    code = 409
    name = "conflict"


class QuotaExceededError(FTPError):
    code = 413
    name = "quota_exceeded"


class ChecksumError(FTPError):
    code = 422
    name = "checksum_mismatch"


class TooManyAttemptsError(FTPError):
    code = 429
    name = "too_many_attempts"


class LoginFailedError(FTPError):
    code = 430
    name = "login_failed"


class HeaderTooLargeError(ProtocolError):
    code = 431
    name = "header_too_large"


class UnavailableError(FTPError):
    """Too many connections, shutting down, account removed: try later."""

    code = 421
    name = "unavailable"
    fatal = True


class InternalError(FTPError):
    code = 500
    name = "internal_error"
    fatal = True


class UnknownCommandError(FTPError):
    code = 501
    name = "unknown_command"


class StorageFullError(FTPError):
    code = 507
    name = "storage_full"


_BY_CODE_NAME: dict[tuple[int, str], type[FTPError]] = {}
_BY_CODE: dict[int, type[FTPError]] = {}


def _register(cls: type[FTPError]) -> None:
    _BY_CODE_NAME[(cls.code, cls.name)] = cls
    _BY_CODE.setdefault(cls.code, cls)
    for sub in cls.__subclasses__():
        _register(sub)


_register(FTPError)
#: Every (code, name) pair the daemon can send; docs/protocol.md lists the same table.
ERROR_CLASSES = dict(_BY_CODE_NAME)


def error_for(code: int, name: str, message: str, data: dict | None = None) -> FTPError:
    """Rebuild the exception a peer reported, so callers can catch ``NotFoundError``."""
    cls = _BY_CODE_NAME.get((code, name)) or _BY_CODE.get(code) or FTPError
    exc = cls(message, **(data or {}))
    if cls is FTPError:
        exc.code, exc.name = code, name
    return exc


_ERRNO_MAP: dict[int, type[FTPError]] = {
    errno.ENOENT: NotFoundError,
    errno.ENOTDIR: ConflictError,
    errno.EISDIR: ConflictError,
    errno.EEXIST: ConflictError,
    errno.ENOTEMPTY: ConflictError,
    errno.EACCES: PermissionDeniedError,
    errno.EPERM: PermissionDeniedError,
    errno.EROFS: PermissionDeniedError,
    errno.ELOOP: PathEscapeError,
    errno.ENAMETOOLONG: InvalidPathError,
    errno.EINVAL: BadRequestError,
    errno.EXDEV: ConflictError,
    errno.ENOSPC: StorageFullError,
    errno.EDQUOT: StorageFullError,
    errno.EFBIG: StorageFullError,
}

_ERRNO_TEXT: dict[int, str] = {
    errno.ENOENT: "no such file or directory",
    errno.ENOTDIR: "not a directory",
    errno.EISDIR: "is a directory",
    errno.EEXIST: "already exists",
    errno.ENOTEMPTY: "directory not empty",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EROFS: "read-only file system",
    errno.ELOOP: "too many levels of symbolic links",
    errno.ENAMETOOLONG: "file name too long",
    errno.EXDEV: "cannot move across file systems",
    errno.ENOSPC: "no space left on the server's disk",
    errno.EDQUOT: "disk quota exceeded on the server",
}


def from_oserror(exc: OSError, vpath: str | None = None) -> FTPError:
    """Translate an ``OSError`` without leaking the real path on disk.

    ``vpath`` is the client's own (virtual) path, safe to echo back.
    """
    cls = _ERRNO_MAP.get(exc.errno or 0, InternalError if exc.errno is None else FTPError)
    text = _ERRNO_TEXT.get(exc.errno or 0, "operation failed")
    message = f"{vpath}: {text}" if vpath else text
    err = cls(message)
    if cls is FTPError:
        # An errno we have no class for: a plain, non-fatal failure of this command.
        err.code, err.name = 500, "os_error"
    return err


class ConfigError(Exception):
    """A problem in ftpd.yaml or users.yaml, located for the admin (never sent on the wire).

    ``problems`` holds every (file, line, key, message) found, so ``check-config`` can list
    them all at once; ``str()`` gives one line per problem.
    """

    def __init__(self, problems: list[tuple[str, int | None, str, str]]) -> None:
        self.problems = problems
        super().__init__("\n".join(self.format(p) for p in problems))

    @staticmethod
    def format(problem: tuple[str, int | None, str, str]) -> str:
        path, line, key, message = problem
        where = f"{path}:{line}" if line else path
        return f"{where}: {key}: {message}" if key else f"{where}: {message}"
