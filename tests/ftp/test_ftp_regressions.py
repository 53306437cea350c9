"""Regressions from a hostile review of the FTP listener."""

from __future__ import annotations

import time
from typing import Any

from tests.conftest import PASSWORDS


def test_ftp_rein_after_login_timeout_keeps_the_connection(ftp_factory: Any) -> None:
    """REIN "logs out and keeps the connection" (docs/protocol.md §10.2, RFC 959), but
    the session's login deadline is counted from the connect and never renewed: once
    ``login_timeout`` has passed since the connect, the read after REIN's 220 hits the
    old deadline at once and the server answers 421 and closes."""
    running = ftp_factory(login_timeout=1)
    client = running.connect()
    try:
        deadline = time.monotonic() + 1.2
        while time.monotonic() < deadline:  # a session in use past the login timeout
            client.voidcmd("NOOP")
        assert client.sendcmd("REIN").startswith("220")
        reply = client.sendcmd("USER alice")
        assert reply.startswith("331"), reply
        assert client.sendcmd(f"PASS {PASSWORDS['alice']}").startswith("230")
    finally:
        client.close()
