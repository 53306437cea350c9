"""Fixtures shared by the framed listener's tests."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tests.conftest import RunningServer


@pytest.fixture
def balanced(server_factory: Callable[..., RunningServer]) -> Callable[..., RunningServer]:
    """``make(trusted=None, **overrides)``: a framed listener that takes PROXY headers
    from ``trusted`` (127.0.0.1 by default)."""

    def make(trusted: list[str] | None = None, **overrides: Any) -> RunningServer:
        return server_factory(proxy_protocol=trusted or ["127.0.0.1"], **overrides)

    return make
