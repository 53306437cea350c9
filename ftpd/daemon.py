"""Run the server as a service: signals, reload, graceful stop, systemd notify, TLS.

The accept loop runs in a thread; the main thread only waits for signals and acts on
them (a signal handler must not call ``shutdown()`` on the loop it interrupted).  SIGHUP
re-reads the users file and log settings and lifts every login lock (``ftpd.control``
lifts one user's, from its own thread); SIGTERM and SIGINT stop accepting, let running
transfers finish within ``grace_period``, then close.  This module must never exit on a
bad users file at reload: the previous users stay in force.
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import signal
import ssl
import threading
from typing import TYPE_CHECKING

from ftpd import config as config_mod
from ftpd import control as control_mod
from ftpd.accounts.users import UserStore
from ftpd.config import ServerConfig
from ftpd.core.files import sweep_partials
from ftpd.core.services import Services
from ftpd.errors import ConfigError
from ftpd.framed.server import FramedServer
from ftpd.logs import setup_logging
from ftpd.notify import Notifier

if TYPE_CHECKING:
    from ftpd.ftp.server import FTPServer

logger = logging.getLogger(__name__)
STATUS_EVERY_S = 2.0
#: The longest wait between two sweeps of unfinished uploads (shorter for a short TTL).
SWEEP_EVERY_S = 3600.0


def tls_context(cfg: ServerConfig) -> ssl.SSLContext | None:
    if cfg.tls is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cfg.tls.cert, cfg.tls.key)
    return context


def build_server(cfg: ServerConfig, services: Services | None = None) -> FramedServer:
    """The framed listener over ``services`` (built from ``cfg`` when not given)."""
    if services is None:
        services = Services.build(cfg, UserStore.load(cfg.users_file))
    try:
        server = FramedServer(cfg, services, ssl_context=tls_context(cfg))
    except OSError as exc:  # name the address: "Address already in use" alone does not
        raise OSError(
            exc.errno, f"cannot listen on {cfg.host} port {cfg.port}: {exc.strerror}"
        ) from None
    if cfg.tls is None and not config_mod.is_loopback(cfg.host):
        logger.warning(
            "TLS is off and the daemon listens on %s: passwords cross the network in clear; "
            "set tls: {cert, key} in %s",
            cfg.host,
            cfg.path,
        )
    return server


def build_ftp_server(cfg: ServerConfig, services: Services) -> FTPServer | None:
    """The standard FTP listener over the same ``services`` (None: no ``ftp:`` section).

    Each session gets its own SSL context from the top-level ``tls`` at AUTH TLS, so its
    data connections can resume its TLS session (docs/protocol.md, FTP).
    """
    if cfg.ftp is None:
        return None
    from ftpd.ftp.server import FTPServer

    factory = None
    if cfg.tls is not None:
        tls_context(cfg)  # a bad certificate fails the start, not the first AUTH TLS

        def factory() -> ssl.SSLContext:
            context = tls_context(cfg)
            assert context is not None
            return context

    server = FTPServer(cfg, services, tls_factory=factory)
    host = server.server_address[0]
    if cfg.tls is None and not config_mod.is_loopback(str(host)):
        logger.warning(
            "TLS is off and the FTP listener is on %s: passwords and files cross the "
            "network in clear; set tls: {cert, key} in %s",
            host,
            cfg.path,
        )
    return server


def reload(server: FramedServer) -> bool:
    """Re-read users and log settings; on any error keep what is in force."""
    return reload_outcome(server)[0]


def reload_outcome(server: FramedServer) -> tuple[bool, str]:
    """``reload``, with a sentence saying what happened (for ``ftpd reload``)."""
    cfg = server.config
    try:
        fresh = config_mod.load(cfg.path) if cfg.path else cfg
        users = UserStore.load(cfg.users_file)
    except ConfigError as exc:
        logger.error("RELOAD REJECTED, keeping the previous users: %s", exc)
        return False, f"reload rejected, the previous settings stay in force:\n{exc}"
    try:
        setup_logging(fresh.log_dir, fresh.log_level, fresh.log_max_bytes, fresh.log_backup_count)
    except OSError as exc:
        logger.error("RELOAD REJECTED, log_dir %s: %s", fresh.log_dir, exc.strerror or exc)
        return False, f"reload rejected: log_dir {fresh.log_dir}: {exc.strerror or exc}"
    later = restart_only_changes(cfg, fresh)
    if later:
        logger.warning(
            "RELOAD: %s changed in %s; these take effect after a restart",
            ", ".join(later),
            cfg.path,
        )
    server.services.accounts.set_users(users)
    # Locks live only in memory; a reload is the admin's way to lift them all (README).
    lifted = server.services.accounts.throttle.clear()
    if lifted:
        logger.info("LOCKS LIFTED by the reload: %d", lifted)
    # Usage is counted again from the disk, in the background: a big site must not hold
    # up the reload (sessions keep using the counts they have meanwhile).
    threading.Thread(
        target=server.services.ledgers.recount_all, name="recount", daemon=True
    ).start()
    logger.info("RELOADED users=%d", len(users))
    message = f"reloaded: {len(users)} users"
    if later:
        message += f"; {', '.join(later)} take effect after a restart"
    return True, message


class ReloadRequest:
    """A reload asked for on the control socket, carried out by the main thread."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.outcome: tuple[bool, str] = (False, "the daemon is stopping")


#: Settings a reload applies; every other one needs a restart.
RELOADABLE = {"users_file", "log_dir", "log_level", "log_max_bytes", "log_backup_count", "path"}


def restart_only_changes(old: ServerConfig, new: ServerConfig) -> list[str]:
    """The settings that differ between two configs and only a restart applies."""
    return [
        f.name
        for f in dataclasses.fields(old)
        if f.name not in RELOADABLE and getattr(old, f.name) != getattr(new, f.name)
    ]


def status_line(server: FramedServer) -> str:
    return server.runtime.status()


def sweep_forever(services: Services, stop: threading.Event) -> None:
    """Remove unfinished uploads idle past ``partial_ttl``, now and then, until ``stop``."""
    ttl = services.config.partial_ttl
    interval = min(max(ttl / 4, 1.0), SWEEP_EVERY_S)
    while not stop.wait(interval):
        try:
            accounts = services.accounts
            sweep_partials(accounts.storage, services.ledgers, services.runtime.claims, ttl)
        except Exception:  # a sweep must never take the daemon down; the next one retries
            logger.exception("SWEEP failed")


def announce(cfg: ServerConfig, server: FramedServer, ftp: FTPServer | None) -> None:
    """The LISTENING lines, once everything answers: the listeners and the control
    socket (scripts wait for these lines, then may run ``ftpd reload`` at once)."""
    host, port = server.server_address[:2]
    users = len(server.services.accounts.users)
    tls = cfg.tls is not None
    logger.info("LISTENING host=%s port=%d tls=%s users=%d", host, port, tls, users)
    if ftp is not None and cfg.ftp is not None:
        host, port = ftp.server_address[:2]
        passive = "{}-{}".format(*cfg.ftp.passive_ports)
        logger.info("LISTENING ftp host=%s port=%d passive=%s tls=%s", host, port, passive, tls)


def run(cfg: ServerConfig, notifier: Notifier | None = None) -> int:
    """Serve until SIGTERM/SIGINT; returns the exit status (0 after a graceful stop)."""
    notifier = notifier or Notifier()
    # Handlers go in before the LISTENING line: a SIGHUP sent by whoever watches for that
    # line would otherwise kill the daemon with the default action.
    # SimpleQueue: its put is safe to call from a signal handler. Queue.put takes a lock
    # that the main thread may hold inside get(timeout=...) when the signal lands, and the
    # handler then waits for it for ever: SIGHUP and SIGTERM were ignored from then on.
    signals: queue.SimpleQueue[int | ReloadRequest] = queue.SimpleQueue()
    for signum in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda n, _frame: signals.put(n))
    server = build_server(cfg)
    loop = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.2}, name="accept"
    )
    loop.start()
    ftp = build_ftp_server(cfg, server.services)
    ftp_loop = None
    if ftp is not None:
        ftp_loop = threading.Thread(
            target=ftp.serve_forever, kwargs={"poll_interval": 0.2}, name="accept-ftp"
        )
        ftp_loop.start()
    stop_sweeping = threading.Event()
    sweeper = threading.Thread(
        target=sweep_forever, args=(server.services, stop_sweeping), name="sweep", daemon=True
    )
    sweeper.start()

    def request_reload() -> tuple[bool, str]:
        asked = ReloadRequest()
        signals.put(asked)
        if not asked.done.wait(control_mod.RELOAD_TIMEOUT_S):
            return False, "the daemon did not finish the reload in time"
        return asked.outcome

    control = control_mod.start(
        cfg.control_path,
        server.services.accounts.throttle,
        reload=request_reload,
        services=server.services,
    )
    announce(cfg, server, ftp)
    rejected = False  # the last reload was refused: `systemctl status` says so until the next

    def status() -> str:
        line = status_line(server)
        return line + "; the last reload was REJECTED (see the log)" if rejected else line

    notifier.ready(status())
    try:
        while True:
            try:
                event = signals.get(timeout=STATUS_EVERY_S)
            except queue.Empty:
                notifier.status(status())
                continue
            if isinstance(event, ReloadRequest):  # from `ftpd reload`
                notifier.reloading()
                event.outcome = reload_outcome(server)
                rejected = not event.outcome[0]
                event.done.set()
                notifier.ready(status())
                continue
            if event == signal.SIGHUP:
                notifier.reloading()
                rejected = not reload(server)
                notifier.ready(status())
                continue
            break
    finally:
        notifier.stopping()
        if control is not None:
            control.stop()
        stop_sweeping.set()
        server.runtime.stopping = True  # a connection accepted before the close below gets a 421
        server.shutdown()
        server.server_close()
        if ftp is not None:
            ftp.shutdown()
            ftp.server_close()
        logger.info("STOPPING: no new connections; grace period %.0f s", cfg.grace_period)
        clean = server.drain(cfg.grace_period)
        loop.join(timeout=5)
        if ftp_loop is not None:
            ftp_loop.join(timeout=5)
        logger.info("STOPPED %s", "cleanly" if clean else "after closing sessions still running")
        server.services.close()  # a database pool, when the state is shared
        notifier.close()
    return 0
