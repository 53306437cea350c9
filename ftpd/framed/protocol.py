"""The wire format: frames <-> validated Request/Response objects, and the COMMANDS table.

A frame is a 4-byte unsigned big-endian length, then that many bytes of a UTF-8 JSON
object (the header).  A header may carry ``"body": N``: exactly N raw bytes follow the
frame.  docs/protocol.md is the prose version of this module.

Like h11, this module turns bytes into objects and back and never touches a socket, a
file or the clock: anything that reads or writes belongs to ``streams`` or the callers.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from ftpd.errors import BadRequestError, HeaderTooLargeError, ProtocolError, UnknownCommandError

PROTOCOL_VERSION = 1
SERVER_NAME = "ftpd"
#: A declared header length above this is refused before a byte of it is read.
MAX_HEADER_BYTES = 64 * 1024
#: Largest body a frame may announce (1 PiB): a sanity bound, not a quota.
MAX_BODY_BYTES = 1 << 50
#: Latest modification time a client may set (year ~5138; past it ``utime`` overflows).
MAX_TIME_S = 1e11
#: Largest body a request may carry inline (small files in one round trip).
MAX_INLINE_BODY = 16 * 1024 * 1024
#: Digests a transfer may ask for; md5 is the default and the one recorded on disk.
DIGESTS = ("md5", "sha1", "blake2b")
DEFAULT_DIGEST = "md5"

LENGTH = struct.Struct(">I")
LENGTH_SIZE = LENGTH.size

# Success codes (docs/protocol.md §3).
OK = 200
GREETING = 220
READY_FOR_DATA = 150
BYE = 221


@dataclass(frozen=True)
class Arg:
    """One argument of a command: its JSON type and whether it must be present."""

    kind: type
    required: bool = False


@dataclass(frozen=True)
class Command:
    """A row of the COMMANDS table; the handler's method is ``cmd_<name>``."""

    name: str
    args: dict[str, Arg] = field(default_factory=dict)
    login_required: bool = True
    #: Whether the request frame may announce a body (inline upload data).
    body: bool = False
    summary: str = ""


def _cmd(name: str, summary: str, login: bool = True, body: bool = False, **args: Arg) -> Command:
    return Command(name, dict(args), login, body, summary)


_S, _I, _B = Arg(str), Arg(int), Arg(bool)
#: A time in seconds since the epoch (int or float; what ``stat`` reports as ``mtime``).
_T = Arg(float)
_RS = Arg(str, required=True)
_RI = Arg(int, required=True)

#: The only names a client can reach.  A test keeps this and the ``cmd_*`` methods in step.
COMMANDS: dict[str, Command] = {
    c.name: c
    for c in (
        _cmd("login", "authenticate", login=False, user=_RS, password=_RS),
        _cmd("quit", "end the session", login=False),
        _cmd("pwd", "print the working directory"),
        _cmd("cd", "change the working directory", path=_RS),
        _cmd("ls", "list a directory (entries in the body, JSON lines)", path=_S, all=_B),
        _cmd("stat", "describe one path", path=_RS),
        _cmd("mkdir", "make a directory", path=_RS, parents=_B),
        _cmd("rm", "remove a file (or a whole tree with recursive)", path=_RS, recursive=_B),
        _cmd("rmdir", "remove an empty directory", path=_RS),
        _cmd("mv", "rename or move", src=_RS, dst=_RS),
        _cmd("quota", "bytes used and the limit"),
        _cmd(
            "put",
            "upload a file (two-phase, or inline with a body)",
            body=True,
            path=_RS,
            size=_RI,
            digest=_S,
            checksum=_S,
            resume=_B,
            mtime=_T,
        ),
        _cmd(
            "get",
            "download a file (body follows the response)",
            path=_RS,
            offset=_I,
            checksum=_S,
            digest=_S,
        ),
    )
}


@dataclass(frozen=True)
class Request:
    """A client's command.  ``body`` is the raw byte count that follows, or None."""

    cmd: str
    args: dict[str, Any] = field(default_factory=dict)
    body: int | None = None

    def to_header(self) -> dict[str, Any]:
        header: dict[str, Any] = {"cmd": self.cmd, "args": self.args}
        if self.body is not None:
            header["body"] = self.body
        return header


@dataclass(frozen=True)
class Response:
    """A server's answer.  ``error`` is the stable slug of a failure, '' on success."""

    ok: bool
    code: int
    message: str = ""
    error: str = ""
    data: dict[str, Any] = field(default_factory=dict)
    body: int | None = None

    def to_header(self) -> dict[str, Any]:
        header: dict[str, Any] = {"ok": self.ok, "code": self.code, "message": self.message}
        if self.error:
            header["error"] = self.error
        if self.data:
            header["data"] = self.data
        if self.body is not None:
            header["body"] = self.body
        return header


@dataclass(frozen=True)
class Data:
    """A frame that only announces raw bytes: the second phase of a two-phase ``put``."""

    body: int
    #: Where the bytes start: the offered resume offset (default) or 0 to start afresh.
    offset: int | None = None

    def to_header(self) -> dict[str, Any]:
        header: dict[str, Any] = {"body": self.body}
        if self.offset is not None:
            header["offset"] = self.offset
        return header


@dataclass(frozen=True)
class End:
    """The trailer of a two-phase ``put``: the sender's whole-file digest, in hex.

    It comes after the body so that the client hashes while it sends (no pre-pass).
    """

    checksum: str

    def to_header(self) -> dict[str, Any]:
        return {"checksum": self.checksum}


Message = Request | Response | Data | End


def encode(message: Message) -> bytes:
    """Encode one frame (length prefix + header); the caller sends any body after it."""
    raw = json.dumps(message.to_header(), ensure_ascii=False, separators=(",", ":"))
    try:
        data = raw.encode("utf-8")
    except UnicodeEncodeError:
        # A lone surrogate, e.g. an undecodable local file name from os.fsdecode: the
        # peer decodes strictly and would drop the connection, so refuse it before sending.
        raise BadRequestError("text is not valid Unicode (an undecodable file name?)") from None
    if len(data) > MAX_HEADER_BYTES:
        raise HeaderTooLargeError(f"header of {len(data)} bytes exceeds {MAX_HEADER_BYTES}")
    return LENGTH.pack(len(data)) + data


def parse_length(prefix: bytes) -> int:
    """Read the 4-byte length prefix; refuse an oversize header before anything else."""
    if len(prefix) != LENGTH_SIZE:
        raise ProtocolError("truncated length prefix")
    (length,) = LENGTH.unpack(prefix)
    if length > MAX_HEADER_BYTES:
        raise HeaderTooLargeError(f"declared header of {length} bytes exceeds {MAX_HEADER_BYTES}")
    if length == 0:
        raise ProtocolError("empty header")
    return length


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def parse_header(raw: bytes) -> dict[str, Any]:
    """Decode the JSON header: strict UTF-8, strict JSON, an object at the top."""
    try:
        text = raw.decode("utf-8")
        header = json.loads(text, parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ProtocolError(f"header is not UTF-8 JSON: {type(exc).__name__}") from None
    if not isinstance(header, dict):
        raise ProtocolError("header is not a JSON object")
    return header


def _body_field(header: dict[str, Any]) -> int | None:
    body = header.get("body")
    if body is None:
        return None
    if type(body) is not int or not 0 <= body <= MAX_BODY_BYTES:
        raise ProtocolError("'body' must be a non-negative integer")
    return body


def to_request(header: dict[str, Any]) -> Request:
    """Validate a client header against COMMANDS: name, login rule aside, and arguments.

    Raises:
        ProtocolError: the frame cannot be trusted (bad body length, not a request):
            the connection closes, since the stream position is unknown.
        UnknownCommandError: a name not in COMMANDS (501).
        BadRequestError: missing, unknown or wrongly typed arguments (400).
    """
    body = _body_field(header)
    if body is not None and body > MAX_INLINE_BODY:
        raise ProtocolError(
            f"a request body is at most {MAX_INLINE_BODY} bytes; use a two-phase put"
        )
    cmd = header.get("cmd")
    if not isinstance(cmd, str):
        raise ProtocolError("a request needs a string 'cmd'")
    spec = COMMANDS.get(cmd)
    if spec is None:
        raise UnknownCommandError(f"unknown command {cmd!r}"[:200], body=body)
    if body is not None and not spec.body:
        raise ProtocolError(f"{cmd} takes no body")
    extra = set(header) - {"cmd", "args", "body"}
    if extra:
        raise BadRequestError(f"unknown header field {sorted(extra)[0]!r}"[:200], body=body)
    args = header.get("args", {})
    if not isinstance(args, dict):
        raise BadRequestError("'args' must be an object", body=body)
    return Request(cmd, check_args(spec, args, body), body)


def check_args(spec: Command, args: dict[str, Any], body: int | None = None) -> dict[str, Any]:
    """Check names and JSON types of ``args``; bools are not ints, ints are not negative."""
    for name, value in args.items():
        arg = spec.args.get(name)
        if arg is None:
            raise BadRequestError(f"{spec.name}: unknown argument {name!r}"[:200], body=body)
        if arg.kind is float:  # a time: any finite JSON number from 0 to year ~5138
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            ok = ok and 0 <= value <= MAX_TIME_S  # NaN compares false: refused too
        else:
            ok = isinstance(value, arg.kind) and not (arg.kind is int and isinstance(value, bool))
            ok = ok and not (arg.kind is int and not 0 <= value <= MAX_BODY_BYTES)
        if not ok:
            want = {
                str: "a string",
                int: "a non-negative integer",
                bool: "true or false",
                float: "a time in seconds since 1970 (a number)",
            }
            raise BadRequestError(f"{spec.name}: {name!r} must be {want[arg.kind]}", body=body)
    for name, arg in spec.args.items():
        if arg.required and name not in args:
            raise BadRequestError(f"{spec.name}: missing argument {name!r}", body=body)
    return args


def to_response(header: dict[str, Any]) -> Response:
    """Validate a server header (the client's side of the same rules)."""
    ok, code = header.get("ok"), header.get("code")
    if not isinstance(ok, bool) or type(code) is not int:
        raise ProtocolError("a response needs boolean 'ok' and integer 'code'")
    message, error = header.get("message", ""), header.get("error", "")
    data = header.get("data", {})
    if not isinstance(message, str) or not isinstance(error, str) or not isinstance(data, dict):
        raise ProtocolError("malformed response fields")
    return Response(ok, code, message, error, data, _body_field(header))


def to_data(header: dict[str, Any]) -> Data:
    """Validate the second frame of a two-phase put: only ``body``."""
    body = _body_field(header)
    offset = header.get("offset")
    if body is None or set(header) - {"body", "offset"}:
        raise ProtocolError("expected a data frame with 'body' and optionally 'offset'")
    if offset is not None and (type(offset) is not int or not 0 <= offset <= MAX_BODY_BYTES):
        raise ProtocolError("'offset' must be a non-negative integer")
    return Data(body, offset)


def to_end(header: dict[str, Any]) -> End:
    """Validate the trailer of a two-phase put: only a hex ``checksum``."""
    checksum = header.get("checksum")
    if set(header) != {"checksum"} or not isinstance(checksum, str) or not is_hex_digest(checksum):
        raise ProtocolError("expected an end frame with only a hex 'checksum'")
    return End(checksum)


def is_hex_digest(value: object) -> bool:
    """True for a lower-case hex string of a plausible digest length (16..64 bytes)."""
    return (
        isinstance(value, str)
        and 32 <= len(value) <= 128
        and len(value) % 2 == 0
        and all(c in "0123456789abcdef" for c in value)
    )


def error_response(exc: BadRequestError | Exception) -> Response:
    """The one way an FTPError becomes a Response (used by the handler's dispatcher)."""
    code = getattr(exc, "code", 500)
    name = getattr(exc, "name", "internal_error")
    message = getattr(exc, "message", "internal error")
    data = {k: v for k, v in getattr(exc, "data", {}).items() if k != "body"}
    return Response(False, code, message, name, data)


# --- incremental decoding, for peers that receive bytes in arbitrary pieces ---------------


@dataclass(frozen=True)
class Frame:
    """A decoded header, as the incremental decoder yields it."""

    header: dict[str, Any]


@dataclass(frozen=True)
class BodyChunk:
    """Some bytes of a frame's body; ``last`` marks the final chunk."""

    data: bytes
    last: bool


class FrameDecoder:
    """Feed bytes in any pieces, get Frames and BodyChunks out (h11's receive_data style).

    Refuses an oversize declared header as soon as its 4 length bytes are in, before
    buffering any of it.  ``eof()`` raises if the stream ended inside a frame or body.
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self._need_header: int | None = None
        self._body_left = 0

    def feed(self, data: bytes) -> Iterator[Frame | BodyChunk]:
        self._buf += data
        while True:
            if self._body_left:
                if not self._buf:
                    return
                take = bytes(self._buf[: self._body_left])
                del self._buf[: len(take)]
                self._body_left -= len(take)
                yield BodyChunk(take, self._body_left == 0)
                continue
            if self._need_header is None:
                if len(self._buf) < LENGTH_SIZE:
                    return
                self._need_header = parse_length(bytes(self._buf[:LENGTH_SIZE]))
                del self._buf[:LENGTH_SIZE]
            if len(self._buf) < self._need_header:
                return
            header = parse_header(bytes(self._buf[: self._need_header]))
            del self._buf[: self._need_header]
            self._need_header = None
            self._body_left = _body_field(header) or 0
            yield Frame(header)

    @property
    def idle(self) -> bool:
        """True between frames: nothing buffered, no header or body pending."""
        return not self._buf and self._need_header is None and not self._body_left

    def eof(self) -> None:
        if not self.idle:
            raise ProtocolError("connection closed inside a frame")
