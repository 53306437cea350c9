"""The FTP listener: a ThreadingTCPServer over the daemon's shared services.

One thread per connection runs an ``FTPSession``.  Everything sessions share lives in
``ftpd.core`` (accounts and the brute-force brake, the runtime registry with its limits,
claims and graceful stop, the ledgers), the same objects the framed listener uses: a
failed login here counts there, and ``max_connections`` counts both.  This module only
accepts, admits through the runtime, and holds the passive port range.  It must never
block the accept loop on a client: refusals and TLS handshakes happen in the session's
thread.
"""

from __future__ import annotations

import logging
import socket
import socketserver
import ssl
from collections.abc import Callable
from typing import Any

from ftpd import proxy
from ftpd.config import FTPConfig, ServerConfig
from ftpd.core.services import Services
from ftpd.ftp.data import PassivePorts
from ftpd.ftp.session import FTPSession

logger = logging.getLogger(__name__)
VERSION = "0.1.0"

TLSFactory = Callable[[], ssl.SSLContext]


class FTPServer(socketserver.ThreadingTCPServer):
    """Owned by the main thread (``serve_forever``); sessions read its shared state.

    ``tls_factory`` makes one SSL context per session (AUTH TLS): its data connections
    resume that session's TLS session, and only that context stops issuing tickets once
    the control handshake is done.
    """

    allow_reuse_address = True
    daemon_threads = True
    request_queue_size = 1024  # 100 clients connecting at once all get in

    def __init__(
        self,
        config: ServerConfig,
        services: Services,
        tls_factory: TLSFactory | None = None,
        handler: type[FTPSession] = FTPSession,
    ) -> None:
        self.config = config
        self.ftp: FTPConfig = config.ftp or FTPConfig()
        self.services = services
        self.runtime = services.runtime
        self.tls_factory = tls_factory
        self.ports = PassivePorts(*self.ftp.passive_ports)
        self._refused: dict[Any, str] = {}
        self.proxy = proxy.Trusted(self.ftp.proxy_protocol)  # balancers (PROXY protocol)
        host = self.ftp.host or config.host
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        super().__init__((host, self.ftp.port), handler)

    def greeting(self) -> str:
        tls = " (AUTH TLS available)" if self.tls_factory is not None else ""
        return f"ftpd {VERSION} ready{tls}"

    def verify_request(self, request: Any, client_address: Any) -> bool:
        """Admit every connection to a thread; over-limit ones are told why there (421).

        A trusted balancer's connection counts here against ``max_connections`` only;
        its session counts it per client address once the PROXY header is read.
        """
        ip = str(client_address[0])
        reason = self.runtime.admit(request, None if ip in self.proxy else ip)
        if reason is not None:
            self._refused[request] = reason
        return True

    def refusal(self, request: Any) -> str | None:
        return self._refused.pop(request, None)

    def shutdown_request(self, request: Any) -> None:
        self.runtime.release(request)
        self._refused.pop(request, None)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A session crash outside dispatch: log it here, never on the client's stream.
        ip = client_address[0] if client_address else "-"
        logger.exception("session error proto=ftp ip=%s", ip)
