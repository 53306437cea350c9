"""One client connection: connect (optionally TLS), greet, log in, call commands.

Errors from the server come back as the same ``FTPError`` subclasses the daemon raised
(``errors.error_for``), so callers can catch ``NotFoundError``.  This module must never
block without a timeout, and never trust a length the server sends beyond its caps.
"""

from __future__ import annotations

import json
import selectors
import socket
import ssl
from typing import Any

from ftpd import errors
from ftpd.framed import protocol, streams
from ftpd.framed.protocol import Request, Response

DEFAULT_PORT = 2121
#: A listing body larger than this from a server is refused (a hostile server's bomb).
MAX_LIST_BODY = 512 * 1024 * 1024


class ConnectError(errors.FTPError):
    """Could not reach or greet the server (exit status 3)."""

    code = 0
    name = "connect_failed"


def parse_address(text: str) -> tuple[str, int]:
    """``host``, ``host:port``, ``[v6]:port`` -> (host, port)."""
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    elif text.count(":") == 1:
        host, port = text.split(":")
    else:
        host, port = text, ""
    if not host:
        raise ValueError(f"bad address {text!r}")
    if port and not (port.isdigit() and 0 < int(port) < 65536):
        raise ValueError(f"bad port in {text!r}")
    return host, int(port) if port else DEFAULT_PORT


def tls_context(cafile: str | None = None, insecure: bool = False) -> ssl.SSLContext:
    """Verify against the system store (or ``cafile``); ``insecure`` skips verification."""
    context = ssl.create_default_context(cafile=cafile)
    if insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


class Connection:
    """A logged-in (or not yet) session.  Used by one thread at a time."""

    def __init__(
        self,
        host: str,
        port: int = DEFAULT_PORT,
        timeout: float = 60.0,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.host, self.port, self.timeout = host, port, timeout
        try:
            sock = socket.create_connection((host, port), timeout=timeout)
            if tls is not None:
                sock = tls.wrap_socket(sock, server_hostname=host)
        except ssl.SSLCertVerificationError as exc:
            raise ConnectError(f"TLS certificate of {host} refused: {exc.verify_message}") from None
        except (OSError, ssl.SSLError) as exc:
            raise ConnectError(f"cannot connect to {host}:{port}: {exc.strerror or exc}") from None
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = sock
        self.reader = streams.SocketReader(sock)
        try:
            self.greeting = self.read_response()
        except errors.FTPError as exc:
            self.close()
            if isinstance(exc, errors.UnavailableError):
                raise
            raise ConnectError(f"{host}:{port} did not greet: {exc.message}") from None
        self.user: str | None = None

    # --- frames ------------------------------------------------------------------

    def send(self, message: protocol.Message, body: bytes | memoryview = b"") -> None:
        frame = protocol.encode(message)
        self.sock.sendall(frame + body if body and len(body) < 65536 else frame)
        if body and len(body) >= 65536:
            self.sock.sendall(body)

    def read_response(self) -> Response:
        """The next response; an error response is raised as its FTPError."""
        try:
            response = protocol.to_response(streams.read_header(self.reader))
        except TimeoutError:
            raise errors.TimeoutError_("the server did not answer in time") from None
        except streams.ConnectionClosed:
            raise streams.ConnectionClosed("the server closed the connection") from None
        if not response.ok:
            raise errors.error_for(response.code, response.error, response.message, response.data)
        return response

    def call(self, cmd: str, body: bytes | None = None, **args: Any) -> Response:
        """Send one command (``None`` args dropped) and return its successful response."""
        args = {k: v for k, v in args.items() if v is not None}
        self.send(Request(cmd, args, None if body is None else len(body)), body or b"")
        return self.read_response()

    def read_body(self, response: Response, limit: int = MAX_LIST_BODY) -> bytes:
        size = response.body or 0
        if size > limit:
            self.close()
            raise errors.ProtocolError(f"the server announced a {size}-byte body; refusing")
        return streams.read_exact(self.reader, size)

    # --- commands ----------------------------------------------------------------

    def login(self, user: str, password: str) -> Response:
        response = self.call("login", user=user, password=password)
        self.user = user
        return response

    def listdir(self, path: str | None = None, show_all: bool = False) -> list[dict[str, Any]]:
        response = self.call("ls", path=path, all=show_all or None)
        body = self.read_body(response)
        return [json.loads(line) for line in body.decode("utf-8").splitlines() if line]

    def is_stale(self) -> bool:
        """True if the server spoke or hung up since its last answer (idle timeout, stop).

        Between commands the daemon sends nothing, so anything readable now is a farewell
        frame (408, 421) or the end of the stream: this connection cannot take a command.
        """
        if self.reader.buffered:
            return True
        try:
            with selectors.DefaultSelector() as selector:  # poll/epoll: no FD_SETSIZE limit
                selector.register(self.sock, selectors.EVENT_READ)
                return bool(selector.select(0))
        except (OSError, ValueError):  # closed already
            return True

    @property
    def closed(self) -> bool:
        """True once this connection was closed (by us, or after a broken stream)."""
        return self.sock.fileno() == -1

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def quit(self) -> None:
        try:
            self.call("quit")
        except (errors.FTPError, OSError):
            pass
        self.close()

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.quit()
