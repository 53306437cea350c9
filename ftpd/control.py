"""The daemon's control socket: admin commands that act on what only the daemon's memory holds.

The login brake's locks live in the running daemon, not in a file, so ``ftpd user unlock
NAME`` cannot lift them by editing one: it asks the daemon here.  One connection carries
one JSON line in (``{"cmd": "unlock", "user": "alice"}``) and one JSON line out
(``{"ok": true, "message": "...", "data": {...}}`` or ``{"ok": false, "error": "..."}``).

The socket is a Unix stream socket, mode 0600, at ``control_socket`` (by default
``<home_root>/.ftpd-control.sock``: user names cannot start with '.', so it is never a
home), and a peer whose uid is neither the daemon's nor root's is refused.  One thread
serves it, one connection at a time, each bounded by ``TIMEOUT_S``.  This module must
never act on a command that is not in ``COMMANDS``, and never write a file but its socket.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import socket
import socketserver
import stat
import struct
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ftpd.logs import clean

if TYPE_CHECKING:
    from ftpd.accounts.throttle import LoginThrottle

logger = logging.getLogger(__name__)

TIMEOUT_S = 5.0
#: How long ``ftpd reload`` waits for the daemon to carry a reload out.
RELOAD_TIMEOUT_S = 60.0
MAX_LINE = 4096  # a request is a command and a user name: far less than this
_MODE = 0o600


class ControlUnavailableError(Exception):
    """Nobody answers on the control socket (the daemon is not running, or not ours)."""


# --- the daemon's side -------------------------------------------------------------


def _unlock(server: ControlServer, request: dict[str, Any]) -> dict[str, Any]:
    name = request.get("user")
    if not isinstance(name, str) or not name or len(name) > 1000:
        return _error("unlock needs a user name")
    lifted = server.throttle.unlock_user(name)
    logger.info(
        "UNLOCKED user='%s' addresses=%d by the control socket",
        clean(name, 64),
        len(lifted.unlocked),
    )
    if lifted.unlocked:
        message = f"unlocked {name} from {len(lifted.unlocked)} address(es)"
    elif lifted.cleared:
        message = f"{name} was not locked; its failed logins are forgotten"
    else:
        message = f"{name} was not locked and had no failed logins on record"
    if lifted.addresses_locked:
        # A lock on the address holds every name; only a reload lifts it (README).
        shown = ", ".join(lifted.addresses_locked)
        message += f"; still locked for every name: {shown} (a reload lifts it)"
    data = {
        "user": name,
        "unlocked": list(lifted.unlocked),
        "cleared": lifted.cleared,
        "addresses_locked": list(lifted.addresses_locked),
    }
    return {"ok": True, "message": message, "data": data}


def _reload(server: ControlServer, request: dict[str, Any]) -> dict[str, Any]:
    """Reload as SIGHUP does, and say whether it was taken (systemctl reload's answer)."""
    if server.reload is None:
        return _error("this daemon cannot reload from the control socket")
    ok, message = server.reload()
    return {"ok": True, "message": message} if ok else _error(message)


#: Every command the socket accepts: the table first, never a name looked up otherwise.
COMMANDS: dict[str, Callable[[ControlServer, dict[str, Any]], dict[str, Any]]] = {
    "unlock": _unlock,
    "reload": _reload,
}


def _error(text: str) -> dict[str, Any]:
    return {"ok": False, "error": text}


class ControlServer(socketserver.UnixStreamServer):
    """Owned by the daemon's main thread (``start``/``stop``); one thread serves it."""

    def __init__(
        self,
        path: Path,
        throttle: LoginThrottle,
        reload: Callable[[], tuple[bool, str]] | None = None,
    ) -> None:
        self.path = Path(path)
        self.throttle = throttle
        self.reload = reload
        self._node: tuple[int, int] | None = None
        self._thread: threading.Thread | None = None
        super().__init__(str(self.path), _Handler)

    def server_bind(self) -> None:
        """Bind under a temporary name, make it 0600, then rename it into place.

        ``bind`` makes the node with the umask's mode, and the umask is process-wide
        (other threads may be making homes), so it is not touched: the node gets its
        mode before it gets its name.  A stale socket left by a killed daemon is
        replaced; a live one, or anything that is not a socket, is left alone.
        """
        _check_free(self.path)
        # Short (shorter than the default name), so a path that fits fits here too.
        tmp = self.path.with_name(f".{secrets.token_hex(4)}.tmp")
        self.socket.bind(str(tmp))
        try:
            os.chmod(tmp, _MODE)
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        st = os.lstat(self.path)
        self._node = (st.st_dev, st.st_ino)
        self.server_address = str(self.path)

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self.serve_forever, kwargs={"poll_interval": 0.2}, name="control", daemon=True
        )
        self._thread.start()
        logger.info("CONTROL socket=%s", self.path)

    def stop(self) -> None:
        """Stop serving, close, and remove the socket if it is still ours."""
        if self._thread is not None:
            self.shutdown()
            self._thread.join(timeout=TIMEOUT_S + 1)
        self.server_close()

    def server_close(self) -> None:
        super().server_close()
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            return
        if (st.st_dev, st.st_ino) == self._node:  # not a newer daemon's socket
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)

    def answer(self, line: bytes) -> dict[str, Any]:
        """The answer to one request line; never raises for what the peer sent."""
        if len(line) > MAX_LINE:
            return _error(f"request longer than {MAX_LINE} bytes")
        try:
            request = json.loads(line)
        except (ValueError, RecursionError):  # RecursionError: "[[[[..." 4 KiB deep
            return _error("the request is not one JSON line")
        if not isinstance(request, dict) or not isinstance(request.get("cmd"), str):
            return _error('the request must be an object with a "cmd"')
        command = COMMANDS.get(request["cmd"])
        if command is None:
            return _error(f"unknown command (known: {', '.join(sorted(COMMANDS))})")
        return command(self, request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        logger.exception("BUG in the control socket")


class _Handler(socketserver.StreamRequestHandler):
    """One request line, one answer line, within ``TIMEOUT_S``."""

    timeout = TIMEOUT_S

    def handle(self) -> None:
        server: ControlServer = self.server  # type: ignore[assignment]
        if not _peer_allowed(self.connection):
            reply = _error("permission denied: only the daemon's user or root may ask")
        else:
            try:
                line = self.rfile.readline(MAX_LINE + 1)
            except OSError:  # a peer that sent no line in time: nothing to answer
                return
            reply = server.answer(line)
        with contextlib.suppress(OSError):
            self.wfile.write(json.dumps(reply).encode() + b"\n")


def _peer_allowed(sock: socket.socket) -> bool:
    """Whether the peer runs as the daemon's user or root (the 0600 mode says the same)."""
    option = getattr(socket, "SO_PEERCRED", None)
    if option is None:  # not Linux: the socket's mode is the only guard
        return True
    size = struct.calcsize("3i")
    _pid, uid, _gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, option, size))
    return uid in (os.geteuid(), 0)


def _check_free(path: Path) -> None:
    """Refuse a path held by something else; a dead daemon's socket may be replaced.

    Raises:
        OSError: the path is not a socket, or a live process answers on it.
    """
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise FileExistsError(f"{path} exists and is not a socket; not replacing it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(str(path))
    except (ConnectionRefusedError, FileNotFoundError):
        return  # nobody listens: left by a daemon that was killed
    finally:
        probe.close()
    raise OSError(f"{path} is in use by another running daemon")


def start(
    path: Path,
    throttle: LoginThrottle,
    reload: Callable[[], tuple[bool, str]] | None = None,
) -> ControlServer | None:
    """The control socket, serving in its thread; None (logged) when it cannot listen.

    The daemon runs on without it: only ``ftpd user unlock`` needs it, and a reload
    lifts every lock as well.
    """
    try:
        # Its folder (home_root by default) exists on the local disk; with the homes in an
        # object store it may not: make it (the last component only, as for log_dir).
        Path(path).parent.mkdir(exist_ok=True)
        server = ControlServer(path, throttle, reload)
    except OSError as exc:
        logger.error(
            "CONTROL socket unavailable at %s: %s; `ftpd user unlock` cannot reach this "
            "daemon (a reload lifts every lock)",
            path,
            exc.strerror or exc,
        )
        return None
    server.start()
    return server


# --- the admin's side ----------------------------------------------------------------


def ask(path: Path, request: dict[str, Any], timeout_s: float = TIMEOUT_S) -> dict[str, Any]:
    """Send one request to the daemon at ``path`` and return its answer.

    Raises:
        ControlUnavailableError: nothing answers there, or not as the protocol says.
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout_s)
    with sock:
        try:
            sock.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError):
            raise ControlUnavailableError(
                f"no daemon answers on {path}: is it running, with this configuration? "
                "(a stopped daemon holds no locks)"
            ) from None
        except PermissionError:
            raise ControlUnavailableError(
                f"{path}: permission denied; run this as the daemon's user or root"
            ) from None
        except OSError as exc:
            raise ControlUnavailableError(f"cannot reach the daemon at {path}: {exc}") from None
        try:
            sock.sendall(json.dumps(request).encode() + b"\n")
            with sock.makefile("rb") as answer:
                line = answer.readline(64 * 1024)
        except OSError as exc:  # the timeout included
            raise ControlUnavailableError(f"the daemon did not answer on {path}: {exc}") from None
    try:
        reply = json.loads(line)
    except ValueError:
        reply = None
    if not isinstance(reply, dict) or not isinstance(reply.get("ok"), bool):
        raise ControlUnavailableError(f"no proper answer from the daemon on {path}")
    return reply
