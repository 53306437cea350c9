"""Accounts, the runtime registry and ledger recounts, as every front end uses them."""

from __future__ import annotations

import os
import stat

import pytest

from ftpd.accounts.users import UserStore
from ftpd.core.files import FileService
from ftpd.core.login import UserContext
from ftpd.core.runtime import Runtime
from ftpd.errors import LoginFailedError, QuotaExceededError, UnavailableError
from ftpd.state.base import Limits, Usage
from ftpd.state.local import LocalClaims
from tests.conftest import PASSWORDS, Project
from tests.services.conftest import Build, session, user_fields


def test_login_makes_the_home_and_hands_out_one_ledger(build: Build, project: Project) -> None:
    services = build()
    assert not project.home("carol").exists()
    context = services.accounts.login("carol", PASSWORDS["carol"], "127.0.0.1")
    assert isinstance(context, UserContext) and context.name == "carol"
    assert stat.S_IMODE(os.stat(project.home("carol")).st_mode) == 0o700
    again = services.accounts.login("carol", PASSWORDS["carol"], "127.0.0.2")
    assert again.ledger is context.ledger
    with pytest.raises(LoginFailedError):
        services.accounts.login("carol", "wrong", "127.0.0.1")
    with pytest.raises(LoginFailedError):
        services.accounts.login("nobody", "wrong", "127.0.0.1")


def test_check_after_reload_without_the_user(build: Build, project: Project) -> None:
    services = build()
    files = session(services, "alice")
    assert services.accounts.check("alice").name == "alice"
    project.write_users({k: v for k, v in user_fields().items() if k != "alice"})
    services.accounts.set_users(UserStore.load(project.users_path))
    with pytest.raises(UnavailableError) as info:
        services.accounts.check("alice")
    assert info.value.code == 421
    for call in (files.quota, lambda: files.mkdir("d"), lambda: files.upload("f", 1)):
        with pytest.raises(UnavailableError):
            call()
    assert not (project.home("alice") / "d").exists()
    assert services.runtime.claims.claim("alice/f", lambda: None)  # the claim was released


def test_check_after_reload_disabling_the_user(build: Build, project: Project) -> None:
    services = build()
    project.write_users(user_fields(alice={"disabled": True}))
    services.accounts.set_users(UserStore.load(project.users_path))
    with pytest.raises(UnavailableError):
        services.accounts.check("alice")
    assert services.accounts.check("bob").name == "bob"


def test_reload_changes_limits_at_the_next_command(build: Build, project: Project) -> None:
    services = build(users=user_fields(alice={"quota": 1000, "max_files": 1}))
    files = session(services)
    assert services.accounts.limits("alice") == Limits(1000, 1)
    files.mkdir("a")
    with pytest.raises(QuotaExceededError):
        files.mkdir("b")
    project.write_users(user_fields(alice={"quota": 1000, "max_files": 2}))
    services.accounts.set_users(UserStore.load(project.users_path))
    files.mkdir("b")


class IncompleteCount:
    def __init__(self, nbytes: int, entries: int, complete: bool) -> None:
        self.result = (nbytes, entries, complete)

    def __call__(self) -> tuple[int, int, bool]:
        return self.result


def test_recount_never_lowers_on_an_incomplete_count(build: Build) -> None:
    services = build()
    counter = IncompleteCount(5000, 7, True)
    ledger = services.ledgers.ledger("alice", counter)
    tree = services.accounts.storage.tree("alice")
    tree.ensure()
    files = FileService(UserContext("alice", tree, ledger), services.accounts, services.runtime)
    assert files.quota().usage == Usage(5000, 0, 7, 0)
    counter.result = (10, 1, False)  # a folder could not be read this time
    services.ledgers.recount_all()
    assert files.quota().usage == Usage(5000, 0, 7, 0)
    counter.result = (10, 1, True)
    services.ledgers.recount_all()
    assert files.quota().usage == Usage(10, 0, 1, 0)


def test_recount_all_skips_a_user_who_is_uploading(build: Build, project: Project) -> None:
    services = build()
    files = session(services)
    up = files.upload("f", 10)
    (project.home("alice") / "behind").write_bytes(b"x" * 99)  # not the daemon's doing
    services.ledgers.recount_all()
    assert files.ledger.usage().used == 0
    up.write(memoryview(b"0123456789"))
    up.commit()
    services.ledgers.recount_all()
    assert files.ledger.usage().used == 109


# --- the runtime --------------------------------------------------------------------------


def test_admit_counts_connections_and_addresses() -> None:
    runtime = Runtime(max_connections=3, max_per_ip=2, claims=LocalClaims())
    assert runtime.admit("c1", "10.0.0.1") is None
    assert runtime.admit("c2", "10.0.0.1") is None
    assert runtime.admit("c3", "10.0.0.1") == "too many connections from your address"
    assert runtime.admit("c3", "10.0.0.2") is None
    assert runtime.session_count == 3
    assert runtime.admit("c4", "10.0.0.3") == "too many connections; try again later"
    runtime.release("c1")
    runtime.release("c1")  # twice is harmless
    assert runtime.admit("c4", "10.0.0.1") is None
    runtime.set_limits(10, 10)
    assert runtime.admit("c5", "10.0.0.1") is None
    runtime.stopping = True
    assert runtime.admit("c6", "10.0.0.9") == "the server is shutting down"
    assert runtime.status() == "4 sessions, 0 transfers"


def test_services_build_wires_the_config(build: Build, project: Project) -> None:
    services = build(max_connections=2, max_per_ip=1, takeover_after=30)
    assert (services.runtime.max_connections, services.runtime.max_per_ip) == (2, 1)
    assert services.runtime.claims.takeover_after == 30  # type: ignore[attr-defined]
    assert project.home_root.is_dir()
    assert services.runtime.admit("a", "1.1.1.1") is None
    assert services.runtime.admit("b", "1.1.1.1") is not None
