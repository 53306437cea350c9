"""Fixtures for the service layer without sockets: ``Services`` built from a project's
config and users file, and ``FileService`` sessions of one user sharing its ledger."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from ftpd.accounts.users import UserStore
from ftpd.core.files import FileService
from ftpd.core.services import Services
from tests.conftest import FAST, PASSWORDS, Project


def user_fields(**limits: Any) -> dict[str, dict[str, Any]]:
    """The users file's entries: every test user, with ``name={"quota": .., ...}``."""
    users: dict[str, dict[str, Any]] = {
        name: {"password": FAST.hash(pw), "quota": None} for name, pw in PASSWORDS.items()
    }
    for name, fields in limits.items():
        users[name].update(fields)
    return users


Build = Callable[..., Services]


@pytest.fixture
def build(project: Project) -> Build:
    """``build(users={...}, **settings)``: fresh Services over the project's home root."""

    def make(users: dict[str, dict[str, Any]] | None = None, **settings: Any) -> Services:
        if users is not None:
            project.write_users(users)
        project.write_config(**settings)
        config = project.load()
        return Services.build(config, UserStore.load(config.users_file))

    return make


def session(services: Services, name: str = "alice", count_now: bool = True) -> FileService:
    """One session's file service (what a front end makes after a login).

    ``count_now`` takes the ledger's first count before anything is uploaded, so a test
    about something else is not thrown off by the count seeing the server's own
    ``.ftpd/partial`` folder (a core bug with its own tests:
    ``test_first_upload_of_a_fresh_user_fits_max_files`` and
    ``test_recount_after_uploads_agrees_with_the_ledger``).
    """
    files = FileService(services.accounts.context(name), services.accounts, services.runtime)
    if count_now:
        files.ledger.usage()
    return files
