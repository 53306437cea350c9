"""Standard FTP on SeaweedFS: the FTP front end, unchanged, over ``S3Storage`` (STOR of an
undeclared size, RETR, REST and APPE, which copy a finished file's head inside the store,
listings, renames, removals), driven by Python's ftplib."""

from __future__ import annotations

import ftplib
import hashlib
import io
import os
import threading
from collections.abc import Iterator

import pytest

from ftpd import daemon
from ftpd.accounts.users import UserStore
from ftpd.core.services import Services
from ftpd.storage.s3 import S3Storage
from tests.conftest import PASSWORDS, Project
from tests.ftp.conftest import free_port_range
from tests.s3.conftest import Weed, get, keys

MiB = 1 << 20


@pytest.fixture
def ftp(project: Project, storage: S3Storage) -> Iterator[ftplib.FTP]:
    low, high = free_port_range(10)
    project.write_config(ftp={"port": 0, "passive_ports": f"{low}-{high}"})
    config = project.load()
    services = Services.build(config, UserStore.load(config.users_file), storage)
    server = daemon.build_ftp_server(config, services)
    assert server is not None
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    client = ftplib.FTP(timeout=30)
    try:
        client.connect("127.0.0.1", int(server.server_address[1]), timeout=30)
        client.login("bob", PASSWORDS["bob"])
        yield client
    finally:
        client.close()
        server.shutdown()
        server.server_close()
        services.runtime.drain(2.0)
        thread.join(timeout=10)


def retr(client: ftplib.FTP, name: str) -> bytes:
    out = io.BytesIO()
    client.retrbinary(f"RETR {name}", out.write)
    return out.getvalue()


def test_ftp_commands_on_the_bucket(ftp: ftplib.FTP, storage: S3Storage, weed: Weed) -> None:
    home = f"{storage.prefix}bob/"
    first, second, third = os.urandom(12 * MiB), os.urandom(3 * MiB), os.urandom(100)
    ftp.mkd("dir")
    ftp.cwd("dir")
    assert ftp.storbinary("STOR f.bin", io.BytesIO(first)).startswith("226")
    assert get(weed, home + "dir/f.bin") == first
    assert retr(ftp, "f.bin") == first

    cut = 6 * MiB + 3  # REST on a finished file: its head is kept, the rest replaced
    ftp.storbinary("STOR f.bin", io.BytesIO(second), rest=cut)
    assert retr(ftp, "f.bin") == first[:cut] + second
    ftp.storbinary("APPE f.bin", io.BytesIO(third))
    whole = first[:cut] + second + third
    assert hashlib.md5(retr(ftp, "f.bin")).hexdigest() == hashlib.md5(whole).hexdigest()
    assert ftp.size("f.bin") == len(whole)

    assert [name for name, _ in ftp.mlsd()] == ["f.bin"]
    ftp.rename("f.bin", "/g.bin")
    ftp.cwd("/")
    assert sorted(name for name, _ in ftp.mlsd()) == ["dir", "g.bin"]
    ftp.delete("g.bin")
    ftp.rmd("dir")
    assert list(ftp.mlsd()) == []
    assert keys(weed, home) == [home]
