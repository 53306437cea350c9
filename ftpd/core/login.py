"""Accounts and login for every front end: the brake, the verify, the delay, the home.

``Accounts.login`` is the one way in: it counts the attempt with the throttle (which may
refuse it), verifies the password (``accounts.users``), waits out the failure delay,
creates the home at first login and hands back a ``UserContext`` that the file service
is built on.  ``Accounts.check`` makes a reload visible: a user removed or disabled
since login is refused at the next command, whatever protocol the session speaks.

This module must never see a frame, a reply code or a socket; and never a plaintext
password beyond handing it to ``UserStore.authenticate``.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from ftpd.accounts.throttle import LoginThrottle
from ftpd.accounts.users import User, UserStore
from ftpd.errors import LoginFailedError, TooManyAttemptsError, UnavailableError
from ftpd.logs import clean
from ftpd.state.base import Ledger, Ledgers, Limits
from ftpd.storage.base import Storage, Tree

logger = logging.getLogger(__name__)
#: Password checks run here, not in the session's own thread: bcrypt's deep native stack
#: would otherwise stay touched (resident) in every session thread for its whole life, 8
#: of an idle session's ~30 KiB (docs/architecture.md, "What an idle session holds").
#: Threads are made as needed, up to this many, so that a burst of logins is checked in
#: parallel as before (the brake counts attempts in flight, accounts.throttle) while the
#: touched stacks stay with a few threads, not with every session.
VERIFY_THREADS = 32
_VERIFY = ThreadPoolExecutor(max_workers=VERIFY_THREADS, thread_name_prefix="ftpd-verify")


@dataclass(frozen=True)
class UserContext:
    """A logged-in user: the name, the home's tree and the quota ledger."""

    name: str
    tree: Tree
    ledger: Ledger


class Accounts:
    """Shared by every session of every listener.  ``users`` is swapped whole on reload."""

    def __init__(
        self, users: UserStore, throttle: LoginThrottle, storage: Storage, ledgers: Ledgers
    ) -> None:
        self.users = users
        self.throttle = throttle
        self.storage = storage
        self.ledgers = ledgers

    def set_users(self, users: UserStore) -> None:
        """Swap in a new snapshot; sessions see it at their next command."""
        self.users = users

    def login(self, name: str, password: str, ip: str) -> UserContext:
        """Count the attempt with the brake, verify, and open the user's home.

        Raises:
            TooManyAttemptsError: the (name, address) pair or the address is locked.
            LoginFailedError: wrong name or password (after the failure delay).
        """
        try:
            # Counted before the check, so parallel attempts get no more checks (issue 9).
            attempt = self.throttle.begin(name, ip)
        except TooManyAttemptsError:
            _log_failure(name, ip)  # a refusal is a failure too, for fail2ban
            raise
        try:
            account = _VERIFY.submit(self.users.authenticate, name, password).result()
        except BaseException:
            self.throttle.failed(name, ip)  # never leave an attempt in flight for ever
            raise
        if account is None:
            _log_failure(name, ip)  # first: nothing below may lose the line
            self.throttle.failed(name, ip)
            time.sleep(self.throttle.delay(attempt))  # the brake: a growing wait
            raise LoginFailedError("login incorrect")
        self.throttle.succeeded(name, ip)
        context = self.context(account.name)
        logger.info("LOGIN OK user='%s' ip=%s", clean(account.name), ip)
        return context

    def context(self, name: str) -> UserContext:
        """The user's home (made, 0700, at first use) and ledger."""
        tree = self.storage.tree(name)
        tree.ensure()
        return UserContext(name, tree, self.ledgers.ledger(name, tree.usage))

    def check(self, name: str) -> User:
        """The user's current record (re-read each time: a reload may change it).

        Raises:
            UnavailableError: removed or disabled since login.
        """
        account = self.users.get(name)
        if account is None or account.disabled:
            raise UnavailableError("your account was removed or disabled")
        return account

    def limits(self, name: str) -> Limits:
        account = self.check(name)
        return Limits(account.quota_bytes, account.max_files)


def _log_failure(name: str, ip: str) -> None:
    """The line fail2ban reads (conf/fail2ban): the real address last, the name escaped."""
    logger.warning("LOGIN FAILED user='%s' ip=%s", clean(name, 64), ip)
