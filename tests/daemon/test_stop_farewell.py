"""Idle sessions are told why they are closed when the daemon stops."""

from __future__ import annotations

import signal

import pytest

from ftpd import errors


def test_stop_idle_session_gets_a_421_farewell(daemon):
    daemon.start()
    conn = daemon.login("alice")
    daemon.signal(signal.SIGTERM)
    with pytest.raises(errors.UnavailableError) as info:
        conn.read_response()  # nothing was asked: the farewell frame arrives by itself
    assert "shutting down" in info.value.message
    assert daemon.wait() == 0
