"""The daemon's control socket: admin commands that act on what only the daemon's memory holds.

The login brake's locks live in the running daemon, not in a file, so ``ftpd user unlock
NAME`` cannot lift them by editing one: it asks the daemon here.  One connection carries
one JSON line in (``{"cmd": "unlock", "user": "alice"}``) and one JSON line out
(``{"ok": true, "message": "...", "data": {...}}`` or ``{"ok": false, "error": "..."}``).

The socket is a Unix stream socket, mode 0600, at ``control_socket`` (by default
``<home_root>/.ftpd-control.sock``: user names cannot start with '.', so it is never a
home), and a peer whose uid is neither the daemon's nor root's is refused.  One thread
serves it, one connection at a time, each bounded by ``TIMEOUT_S`` (``rescan`` and ``gc``
take as long as counting the homes takes; the admin's side waits ``LONG_TIMEOUT_S``).
``rescan`` corrects the ledgers from the store (``ftpd quota rescan``); ``gc`` runs the
sweep of unfinished uploads now (``ftpd storage gc`` with the in-process state).  This
module must never act on a command that is not in ``COMMANDS``, and never write a file but
its socket (``gc`` removes unfinished uploads through the storage, as the sweep does).
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
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ftpd.logs import clean

if TYPE_CHECKING:
    from ftpd.accounts.throttle import LoginThrottle
    from ftpd.core.services import Services

logger = logging.getLogger(__name__)

TIMEOUT_S = 5.0
#: How long ``ftpd reload`` waits for the daemon to carry a reload out.
RELOAD_TIMEOUT_S = 60.0
#: How long ``rescan`` waits, at most, for running uploads to let go of a user's ledger.
RESCAN_WAIT_S = 10.0
#: How long ``ftpd quota rescan`` and ``ftpd storage gc`` wait for the answer (a recount
#: lists every key of every home).
LONG_TIMEOUT_S = 600.0
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


def _figures(usage: Any) -> dict[str, int]:
    return {
        "used": usage.used,
        "entries": usage.entries,
        "reserved": usage.reserved,
        "reserved_entries": usage.reserved_entries,
    }


def _rescan(server: ControlServer, request: dict[str, Any]) -> dict[str, Any]:
    """Count usage again from the store and correct the ledger: one user, or every user
    whose home exists.  A ledger that uploads hold (reservations) or that ``rm``/``mv``
    are changing is waited for, ``RESCAN_WAIT_S`` at most in all; then "busy" is reported
    for it rather than forcing a count that would be wrong."""
    from ftpd.accounts.users import check_name
    from ftpd.errors import FTPError

    services = server.services
    if services is None:
        return _error("this daemon cannot rescan from the control socket")
    storage = services.accounts.storage
    name = request.get("user")
    try:
        if name is None:
            names = list(storage.roots())
        elif not isinstance(name, str) or check_name(name):
            return _error(f"not a user name: {clean(str(name), 64)}")
        elif name not in set(storage.roots()):
            return _error(f"{name} has no home in the store: nothing to count")
        else:
            names = [name]
    except FTPError as exc:
        return _error(f"cannot list the homes: {exc.message}")
    deadline = time.monotonic() + RESCAN_WAIT_S
    results: list[dict[str, Any]] = []
    for user in names:
        tree = storage.tree(user)
        ledger = services.ledgers.ledger(user, tree.usage)
        try:
            before = ledger.usage()
            while not (taken := ledger.recount()) and time.monotonic() < deadline:
                server.pause.wait(0.1)  # uploads still hold the ledger: a bounded poll
            after = ledger.usage()
        except FTPError as exc:
            results.append({"user": user, "status": "failed", "error": exc.message})
            continue
        status = "recounted" if taken else "busy"
        logger.info(
            "RESCAN user='%s' %s used=%d->%d entries=%d->%d",
            clean(user, 64),
            status,
            before.used,
            after.used,
            before.entries,
            after.entries,
        )
        results.append(
            {"user": user, "status": status, "before": _figures(before), "after": _figures(after)}
        )
    busy = sum(1 for r in results if r["status"] != "recounted")
    message = f"rescanned {len(results) - busy} of {len(results)} user(s)"
    return {"ok": True, "message": message, "data": {"users": results}}


def _gc(server: ControlServer, request: dict[str, Any]) -> dict[str, Any]:
    """Remove unfinished uploads idle past ``partial_ttl`` now (the daemon's periodic
    sweep, at once), with the claims and ledgers only this daemon holds."""
    from ftpd.core.files import sweep_partials
    from ftpd.errors import FTPError

    services = server.services
    if services is None:
        return _error("this daemon cannot sweep from the control socket")
    removed: list[dict[str, Any]] = []

    def seen(user: str, info: Any, freed: int) -> None:
        removed.append({"user": user, "path": "/" + "/".join(info.parts), "freed": freed})

    ttl = services.config.partial_ttl
    try:
        freed = sweep_partials(
            services.accounts.storage, services.ledgers, services.runtime.claims, ttl, seen
        )
    except FTPError as exc:
        return _error(f"the sweep failed: {exc.message}")
    message = f"removed {len(removed)} unfinished upload(s), {freed} bytes freed"
    return {"ok": True, "message": message, "data": {"removed": removed, "freed": freed}}


#: Every command the socket accepts: the table first, never a name looked up otherwise.
COMMANDS: dict[str, Callable[[ControlServer, dict[str, Any]], dict[str, Any]]] = {
    "unlock": _unlock,
    "reload": _reload,
    "rescan": _rescan,
    "gc": _gc,
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
        services: Services | None = None,
    ) -> None:
        self.path = Path(path)
        self.throttle = throttle
        self.reload = reload
        #: The daemon's ledgers and storage (``rescan``, ``gc``); None: those are refused.
        self.services = services
        #: Set when the server stops, so a waiting ``rescan`` gives up at once.
        self.pause = threading.Event()
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
        self.pause.set()
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
    services: Services | None = None,
) -> ControlServer | None:
    """The control socket, serving in its thread; None (logged) when it cannot listen.

    The daemon runs on without it: only ``ftpd user unlock`` needs it, and a reload
    lifts every lock as well.
    """
    try:
        # Its folder (home_root by default) exists on the local disk; with the homes in an
        # object store it may not: make it (the last component only, as for log_dir).
        Path(path).parent.mkdir(exist_ok=True)
        server = ControlServer(path, throttle, reload, services)
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
