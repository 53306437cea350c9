"""The services one daemon shares between its listeners, built from the configuration.

``Services.build`` picks the storage and state backends (today the local disk and the
in-process ledger and claims) and wires the accounts and the runtime on top.  Every front
end's server is handed the same ``Services``; a new backend plugs in here and nowhere
else.  This module must never open a listening socket.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from ftpd.accounts.throttle import LoginThrottle
from ftpd.accounts.users import UserStore
from ftpd.config import ServerConfig
from ftpd.core.login import Accounts
from ftpd.core.runtime import Runtime
from ftpd.state.base import Ledgers
from ftpd.state.local import LocalClaims, LocalLedgers
from ftpd.storage.base import Storage
from ftpd.storage.local import LocalStorage

logger = logging.getLogger(__name__)


@dataclass
class Services:
    """What every listener of one daemon shares.  Built once, by the main thread."""

    config: ServerConfig
    accounts: Accounts
    runtime: Runtime
    ledgers: Ledgers
    shared: Any = None  # the database-held state, when ``state: postgresql``

    @classmethod
    def build(
        cls, config: ServerConfig, users: UserStore, storage: Storage | None = None
    ) -> Services:
        """``storage``: a backend made by the caller (prepared); else the local disk."""
        if storage is None:
            storage = storage_for(config)
        limits = (config.login_max_failures, config.login_lockout, config.login_delay)
        per_ip = config.login_max_failures_per_ip
        # Concurrent logins wait for each other's checks rather than being refused.
        wait_s = min(config.login_timeout, 30.0)
        shared: Any = None
        if config.state.backend == "postgresql":
            from ftpd.state.postgresql import PgState

            assert config.state.dsn is not None  # checked when the file was read
            shared = PgState(
                config.state.dsn,
                pool_max=config.state.pool_max,
                timeout_s=config.state.timeout_s,
                takeover_after=config.takeover_after,
            )
            ledgers, claims = shared.ledgers, shared.claims
            throttle = shared.throttle(*limits, max_failures_per_ip=per_ip, wait_s=wait_s)
        else:
            ledgers = LocalLedgers()
            claims = LocalClaims(takeover_after=config.takeover_after)
            throttle = LoginThrottle(*limits, max_failures_per_ip=per_ip, wait_s=wait_s)
        accounts = Accounts(users, throttle, storage, ledgers)
        runtime = Runtime(config.max_connections, config.max_per_ip, claims)
        return cls(config, accounts, runtime, ledgers, shared)

    def close(self) -> None:
        """Let go of shared state (a database pool) at the daemon's exit."""
        if self.shared is not None:
            self.shared.close()


def storage_for(config: ServerConfig) -> Storage:
    """The storage backend ``config`` names, prepared (its homes' folder, or its bucket,
    checked).  The object-store client is imported only when chosen."""
    section = config.storage
    if section.backend == "s3":
        from ftpd.storage.s3 import S3Storage

        assert section.bucket is not None  # checked when the file was read
        s3 = S3Storage(
            section.endpoint_url,
            section.bucket,
            section.prefix,
            section.region,
            section.access_key_id,
            section.secret_access_key,
            part_size=section.part_size,
            parts_in_flight=section.parts_in_flight,
        )
        s3.prepare()
        return s3
    local = LocalStorage(config.home_root, fsync=config.fsync)
    local.prepare()
    return local
