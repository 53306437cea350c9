"""The services one daemon shares between its listeners, built from the configuration.

``Services.build`` picks the storage and state backends (today the local disk and the
in-process ledger and claims) and wires the accounts and the runtime on top.  Every front
end's server is handed the same ``Services``; a new backend plugs in here and nowhere
else.  This module must never open a listening socket.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from ftpd.accounts.throttle import LoginThrottle
from ftpd.accounts.users import UserStore
from ftpd.config import ServerConfig
from ftpd.core.login import Accounts
from ftpd.core.runtime import Runtime
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
    ledgers: LocalLedgers

    @classmethod
    def build(
        cls, config: ServerConfig, users: UserStore, storage: Storage | None = None
    ) -> Services:
        """``storage``: a backend made by the caller (prepared); else the local disk."""
        if storage is None:
            local = LocalStorage(config.home_root, fsync=config.fsync)
            local.prepare()
            storage = local
        ledgers = LocalLedgers()
        throttle = LoginThrottle(
            config.login_max_failures,
            config.login_lockout,
            config.login_delay,
            max_failures_per_ip=config.login_max_failures_per_ip,
            # Concurrent logins wait for each other's checks rather than being refused.
            wait_s=min(config.login_timeout, 30.0),
        )
        accounts = Accounts(users, throttle, storage, ledgers)
        claims = LocalClaims(takeover_after=config.takeover_after)
        runtime = Runtime(config.max_connections, config.max_per_ip, claims)
        return cls(config, accounts, runtime, ledgers)
