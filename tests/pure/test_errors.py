"""Pure tests of the exception tree: wire codes, rebuilding from a reply, OSError mapping."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from ftpd import errors
from ftpd.errors import (
    ERROR_CLASSES,
    BadRequestError,
    ConfigError,
    ConflictError,
    FTPError,
    InternalError,
    InvalidPathError,
    NotFoundError,
    PathEscapeError,
    PermissionDeniedError,
    ProtocolError,
    StorageFullError,
    error_for,
    from_oserror,
)

# The table in the protocol summary: every (code, name) the daemon may send.
WIRE_TABLE = {
    (400, "bad_request"),
    (400, "protocol_error"),
    (400, "invalid_path"),
    (401, "not_logged_in"),
    (403, "permission_denied"),
    (403, "path_escape"),
    (404, "not_found"),
    (408, "timeout"),
    (409, "conflict"),
    (413, "quota_exceeded"),
    (421, "unavailable"),
    (422, "checksum_mismatch"),
    (429, "too_many_attempts"),
    (430, "login_failed"),
    (431, "header_too_large"),
    (500, "internal_error"),
    (501, "unknown_command"),
    (507, "storage_full"),
}
FATAL = {"protocol_error", "header_too_large", "timeout", "unavailable", "internal_error"}


def test_errors_table_matches_protocol_summary() -> None:
    assert set(ERROR_CLASSES) == WIRE_TABLE


@pytest.mark.parametrize(("code", "name"), sorted(WIRE_TABLE))
def test_errors_class_knows_its_code(code: int, name: str) -> None:
    cls = ERROR_CLASSES[(code, name)]
    assert issubclass(cls, FTPError)
    assert (cls.code, cls.name) == (code, name)
    assert cls.fatal is (name in FATAL)


@pytest.mark.parametrize(("code", "name"), sorted(WIRE_TABLE))
def test_errors_error_for_rebuilds_exact_class(code: int, name: str) -> None:
    exc = error_for(code, name, "the message", {"available": 3})
    assert type(exc) is ERROR_CLASSES[(code, name)]
    assert (exc.code, exc.name, exc.message, str(exc)) == (code, name, "the message", "the message")
    assert exc.data == {"available": 3}


def test_errors_error_for_known_code_unknown_name_uses_code_class() -> None:
    exc = error_for(404, "gone_fishing", "x")
    assert isinstance(exc, NotFoundError)


def test_errors_error_for_unknown_code_keeps_code_and_name() -> None:
    exc = error_for(599, "future_error", "from a newer server", None)
    assert type(exc) is FTPError
    assert (exc.code, exc.name, exc.message, exc.data) == (
        599,
        "future_error",
        "from a newer server",
        {},
    )


def test_errors_error_for_does_not_mutate_class_attributes() -> None:
    error_for(599, "future_error", "x")
    assert (FTPError.code, FTPError.name) == (500, "internal_error")


def test_errors_error_for_data_named_message() -> None:
    """Regression: a peer's data field called "message" must not crash the rebuild."""
    exc = error_for(409, "conflict", "exists", {"message": "other", "path": "/a"})
    assert type(exc) is ConflictError
    assert exc.message == "exists"
    assert exc.data == {"message": "other", "path": "/a"}


@pytest.mark.parametrize("cls", sorted(set(ERROR_CLASSES.values()), key=lambda c: c.__name__))
def test_errors_default_message(cls: type[FTPError]) -> None:
    assert cls().message == cls.name.replace("_", " ")


def test_errors_hierarchy() -> None:
    assert issubclass(ProtocolError, BadRequestError)
    assert issubclass(errors.HeaderTooLargeError, ProtocolError)
    assert issubclass(InvalidPathError, BadRequestError)
    assert issubclass(PathEscapeError, PermissionDeniedError)


@pytest.mark.parametrize(
    ("err", "cls", "code"),
    [
        (errno.ENOENT, NotFoundError, 404),
        (errno.EACCES, PermissionDeniedError, 403),
        (errno.EPERM, PermissionDeniedError, 403),
        (errno.EROFS, PermissionDeniedError, 403),
        (errno.ENOSPC, StorageFullError, 507),
        (errno.EDQUOT, StorageFullError, 507),
        (errno.EFBIG, StorageFullError, 507),
        (errno.EISDIR, ConflictError, 409),
        (errno.ENOTDIR, ConflictError, 409),
        (errno.ENOTEMPTY, ConflictError, 409),
        (errno.EEXIST, ConflictError, 409),
        (errno.EXDEV, ConflictError, 409),
        (errno.ELOOP, PathEscapeError, 403),
        (errno.ENAMETOOLONG, InvalidPathError, 400),
        (errno.EINVAL, BadRequestError, 400),
    ],
)
def test_errors_from_oserror_mapping(err: int, cls: type[FTPError], code: int) -> None:
    secret = "/srv/ftpd/home/alice/secret dir/f.txt"
    exc = from_oserror(OSError(err, os.strerror(err), secret, None, "/srv/other"), "/f.txt")
    assert type(exc) is cls
    assert exc.code == code
    assert exc.message.startswith("/f.txt: ")
    for text in (exc.message, str(exc), repr(exc), repr(exc.data)):
        assert "/srv" not in text
    assert not exc.fatal


def test_errors_from_oserror_without_vpath() -> None:
    exc = from_oserror(OSError(errno.ENOENT, "No such file", "/real/path"))
    assert exc.message == "no such file or directory"


def test_errors_from_oserror_unknown_errno_is_plain_500() -> None:
    exc = from_oserror(OSError(errno.EIO, "I/O error", "/real/path"), "/a")
    assert (exc.code, exc.name, exc.fatal) == (500, "os_error", False)
    assert "/real" not in exc.message


def test_errors_from_oserror_without_errno_is_internal() -> None:
    exc = from_oserror(OSError("something odd at /real/path"), "/a")
    assert type(exc) is InternalError
    assert "/real" not in exc.message


def _read(path: Path) -> bytes:
    return path.read_bytes()


@pytest.mark.parametrize(
    ("action", "cls"),
    [
        (lambda p: _read(p / "missing"), NotFoundError),
        (lambda p: os.rmdir(p / "full"), ConflictError),
        (lambda p: os.mkdir(p / "full"), ConflictError),
        (lambda p: _read(p / "full"), ConflictError),  # EISDIR
        (lambda p: os.listdir(p / "full" / "f"), ConflictError),  # ENOTDIR
        (lambda p: _read(p / ("x" * 300)), InvalidPathError),
    ],
)
def test_errors_from_real_oserror_hides_real_path(
    tmp_path: Path, action: Callable[[Path], object], cls: type[FTPError]
) -> None:
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "f").write_bytes(b"x")
    with pytest.raises(OSError) as info:
        action(tmp_path)
    assert str(tmp_path) in str(info.value)  # the raw error does carry the real path
    exc = from_oserror(info.value, "/virtual")
    assert type(exc) is cls
    assert str(tmp_path) not in exc.message and str(tmp_path) not in str(exc)
    assert exc.message.startswith("/virtual: ")


def test_errors_config_error_formats_every_problem() -> None:
    problems = [
        ("/etc/ftpd.yaml", 3, "port", "must be an integer port from 0 to 65535"),
        ("/etc/ftpd.yaml", None, "", "file not found"),
        ("/etc/users.yaml", 7, "users.bob.password", "not a recognised password hash"),
        ("/etc/users.yaml", 2, "", "YAML syntax error: x"),
    ]
    exc = ConfigError(problems)
    assert exc.problems == problems
    assert str(exc).splitlines() == [
        "/etc/ftpd.yaml:3: port: must be an integer port from 0 to 65535",
        "/etc/ftpd.yaml: file not found",
        "/etc/users.yaml:7: users.bob.password: not a recognised password hash",
        "/etc/users.yaml:2: YAML syntax error: x",
    ]
    assert not isinstance(exc, FTPError)  # never sent on the wire
