"""The framed protocol's listener: a ThreadingTCPServer over the daemon's shared services.

One thread per connection runs a ``FramedSession``.  Everything sessions share lives in
``ftpd.core`` (accounts, the runtime registry with its limits and claims, the file
services): this module only accepts, admits through the runtime, and greets.  It must
never block the accept loop on a client: refusals in clear and TLS handshakes happen in
the session's thread, and a refused TLS connection is only closed (which never blocks).
"""

from __future__ import annotations

import logging
import socket
import socketserver
from typing import Any

from ftpd import proxy
from ftpd.config import ServerConfig
from ftpd.core.services import Services
from ftpd.framed import protocol
from ftpd.framed.session import FramedSession

logger = logging.getLogger(__name__)
VERSION = "0.1.0"


class FramedServer(socketserver.ThreadingTCPServer):
    """Owned by the main thread (``serve_forever``); sessions read its shared state."""

    allow_reuse_address = True
    daemon_threads = True
    # Large enough that 100 clients connecting at once all get in (the default is 5).
    request_queue_size = 1024

    def __init__(
        self,
        config: ServerConfig,
        services: Services,
        handler: type[FramedSession] = FramedSession,
        ssl_context: Any = None,
    ) -> None:
        self.config = config
        self.services = services
        self.runtime = services.runtime
        self.ssl_context = ssl_context
        self._refused: dict[Any, str] = {}
        self.proxy = proxy.Trusted(config.proxy_protocol)  # balancers (PROXY protocol)
        family = socket.AF_INET6 if ":" in config.host else socket.AF_INET
        self.address_family = family
        super().__init__((config.host, config.port), handler)

    def greeting(self) -> protocol.Response:
        data = {
            "server": protocol.SERVER_NAME,
            "version": VERSION,
            "protocol": protocol.PROTOCOL_VERSION,
            "digests": list(protocol.DIGESTS),
            "max_inline_body": protocol.MAX_INLINE_BODY,
        }
        message = f"{protocol.SERVER_NAME} {VERSION} ready"
        return protocol.Response(True, protocol.GREETING, message, data=data)

    @property
    def session_count(self) -> int:
        """Connections admitted by the runtime (every listener's)."""
        return self.runtime.session_count

    @property
    def transfers(self) -> int:
        return self.runtime.transfers

    # --- connection limits -----------------------------------------------------------

    def verify_request(self, request: Any, client_address: Any) -> bool:
        """Count the connection against the limits; decide how an over-limit one ends.

        In clear, a refused connection still gets a thread, which sends the 421 frame
        with a short timeout and ends, so a slow client never stalls the accept loop.
        Over TLS a 421 frame could only be read after a handshake, and a thread and a
        handshake per connection are what a flood must not get (issue 9: 150 stalled
        handshakes gave 152 threads), so a refused TLS connection is closed here, before
        any handshake, and no thread is started for it.  Handshakes of admitted
        connections run in their sessions' threads and count against the limits.

        A trusted balancer's connection counts here against ``max_connections`` only;
        its session counts it per client address once the PROXY header is read.
        """
        ip = str(client_address[0])
        reason = self.runtime.admit(request, None if ip in self.proxy else ip)
        if reason is None:
            return True
        if self.ssl_context is not None:
            logger.warning("REFUSED ip=%s: %s (closed before the TLS handshake)", ip, reason)
            return False  # socketserver calls shutdown_request: closed at once
        self._refused[request] = reason
        return True

    def refusal(self, request: Any) -> str | None:
        """Why this connection was refused at accept time, or None if it was admitted."""
        return self._refused.pop(request, None)

    def shutdown_request(self, request: Any) -> None:
        self.runtime.release(request)
        self._refused.pop(request, None)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A session crash outside dispatch: log it here, never on the client's stream.
        logger.exception("session error ip=%s", client_address[0] if client_address else "-")

    def close_idle(self, all_sessions: bool = False) -> int:
        return self.runtime.close_idle(all_sessions)

    def drain(self, grace_s: float) -> bool:
        return self.runtime.drain(grace_s)
