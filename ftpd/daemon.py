"""Run the server as a service: signals, reload, graceful stop, systemd notify, TLS.

The accept loop runs in a thread; the main thread only waits for signals and acts on
them (a signal handler must not call ``shutdown()`` on the loop it interrupted).  SIGHUP
re-reads the users file and log settings; SIGTERM and SIGINT stop accepting, let running
transfers finish within ``grace_period``, then close.  This module must never exit on a
bad users file at reload: the previous users stay in force.
"""

from __future__ import annotations

import logging
import queue
import signal
import ssl
import threading

from ftpd import config as config_mod
from ftpd.config import ServerConfig
from ftpd.errors import ConfigError
from ftpd.logs import setup_logging
from ftpd.notify import Notifier
from ftpd.accounts.users import UserStore
from ftpd.core.services import Services
from ftpd.framed.server import FramedServer

logger = logging.getLogger(__name__)
STATUS_EVERY_S = 2.0


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
    server = FramedServer(cfg, services, ssl_context=tls_context(cfg))
    host, port = server.server_address[:2]
    users = len(services.accounts.users)
    tls = cfg.tls is not None
    logger.info("LISTENING host=%s port=%d tls=%s users=%d", host, port, tls, users)
    if cfg.tls is None and not config_mod.is_loopback(cfg.host):
        logger.warning(
            "TLS is off and the daemon listens on %s: passwords cross the network in clear; "
            "set tls: {cert, key} in %s", cfg.host, cfg.path,
        )
    return server


def reload(server: FramedServer) -> bool:
    """Re-read users and log settings; on any error keep what is in force."""
    cfg = server.config
    try:
        fresh = config_mod.load(cfg.path) if cfg.path else cfg
        users = UserStore.load(cfg.users_file)
    except ConfigError as exc:
        logger.error("RELOAD REJECTED, keeping the previous users: %s", exc)
        return False
    setup_logging(fresh.log_dir, fresh.log_level, fresh.log_max_bytes, fresh.log_backup_count)
    server.services.accounts.set_users(users)
    # Usage is counted again from the disk, in the background: a big site must not hold
    # up the reload (sessions keep using the counts they have meanwhile).
    threading.Thread(target=server.services.ledgers.recount_all, name="recount", daemon=True).start()
    logger.info("RELOADED users=%d", len(users))
    return True


def status_line(server: FramedServer) -> str:
    return server.runtime.status()


def run(cfg: ServerConfig, notifier: Notifier | None = None) -> int:
    """Serve until SIGTERM/SIGINT; returns the exit status (0 after a graceful stop)."""
    notifier = notifier or Notifier()
    # Handlers go in before the LISTENING line: a SIGHUP sent by whoever watches for that
    # line would otherwise kill the daemon with the default action.
    signals: queue.Queue[int] = queue.Queue()
    for signum in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda n, _frame: signals.put(n))
    server = build_server(cfg)
    loop = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2}, name="accept")
    loop.start()
    notifier.ready(status_line(server))
    try:
        while True:
            try:
                signum = signals.get(timeout=STATUS_EVERY_S)
            except queue.Empty:
                notifier.status(status_line(server))
                continue
            if signum == signal.SIGHUP:
                notifier.reloading()
                reload(server)
                notifier.ready(status_line(server))
                continue
            break
    finally:
        notifier.stopping()
        server.runtime.stopping = True  # a connection accepted before the close below gets a 421
        server.shutdown()
        server.server_close()
        logger.info("STOPPING: no new connections; grace period %.0f s", cfg.grace_period)
        clean = server.drain(cfg.grace_period)
        loop.join(timeout=5)
        logger.info("STOPPED %s", "cleanly" if clean else "after closing sessions still running")
        notifier.close()
    return 0
