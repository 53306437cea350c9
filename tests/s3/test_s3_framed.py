"""The framed daemon end to end on SeaweedFS: the real ``FramedServer`` in a thread over
``Services`` built with ``S3Storage``, driven by the real client (``ftp_client``)."""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from ftp_client import transfer
from ftp_client.connection import Connection
from ftpd import errors
from ftpd.accounts.users import UserStore
from ftpd.core.services import Services
from ftpd.framed.protocol import Data, Request
from ftpd.framed.server import FramedServer
from ftpd.storage.s3 import S3Storage
from tests.conftest import PASSWORDS, Project
from tests.s3.conftest import Weed, get, keys

MiB = 1 << 20


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


@pytest.fixture
def server(project: Project, storage: S3Storage) -> Iterator[tuple[str, int]]:
    config = project.load()
    storage.prepare()
    srv = FramedServer(config, Services.build(config, UserStore.load(config.users_file), storage))
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield srv.server_address[:2]
    finally:
        srv.shutdown()
        srv.server_close()
        srv.drain(2.0)
        thread.join(timeout=10)


def login(address: tuple[str, int], user: str = "bob") -> Connection:
    conn = Connection(address[0], address[1], timeout=30)
    conn.login(user, PASSWORDS[user])
    return conn


def test_put_get_ls_mv_rm_through_the_daemon(
    server: tuple[str, int], storage: S3Storage, weed: Weed, tmp_path: Path
) -> None:
    home = f"{storage.prefix}bob/"
    small, big = os.urandom(3000), os.urandom(20 * MiB + 3)
    (tmp_path / "small").write_bytes(small)
    (tmp_path / "big").write_bytes(big)
    with login(server) as conn:
        conn.call("mkdir", path="/docs/sub", parents=True)
        up = transfer.put_file(conn, tmp_path / "small", "/docs/small.txt", preserve=True)
        assert up.checksum == md5(small)
        up = transfer.put_file(conn, tmp_path / "big", "/docs/sub/big.bin")
        assert (up.checksum, up.size, up.offset) == (md5(big), len(big), 0)
        assert get(weed, home + "docs/sub/big.bin") == big

        listed = {e["name"]: e for e in conn.listdir("/docs")}
        assert sorted(listed) == ["small.txt", "sub"]
        assert listed["small.txt"]["size"] == 3000
        assert int(listed["small.txt"]["mtime"]) == int((tmp_path / "small").stat().st_mtime)

        down = transfer.get_file(conn, "/docs/sub/big.bin", tmp_path / "back")
        assert down.checksum == md5(big) and (tmp_path / "back").read_bytes() == big

        conn.call("mv", src="/docs", dst="/moved")
        assert [e["name"] for e in conn.listdir("/")] == ["moved"]
        transfer.get_file(conn, "/moved/small.txt", tmp_path / "back2")
        assert (tmp_path / "back2").read_bytes() == small
        quota = conn.call("quota").data
        assert quota["used"] == len(small) + len(big)

        conn.call("rm", path="/moved", recursive=True)
        assert conn.listdir("/") == []
        assert keys(weed, home) == [home]
        with pytest.raises(errors.NotFoundError):
            transfer.get_file(conn, "/moved/small.txt", tmp_path / "gone")


def test_interrupted_put_resumes_through_the_daemon(
    server: tuple[str, int], storage: S3Storage, weed: Weed, tmp_path: Path
) -> None:
    """A connection dropped after 12 MiB of 20: the next put resumes from what the bucket
    holds, the prefix digest checked by the client, and the whole file matches."""
    data = os.urandom(20 * MiB)
    (tmp_path / "f").write_bytes(data)
    conn = login(server)
    conn.send(Request("put", {"path": "/f.bin", "size": len(data)}))
    ready = conn.read_response()
    assert ready.data["offset"] == 0
    conn.send(Data(len(data)), data[: 12 * MiB])
    conn.close()  # the connection drops mid-body

    with login(server) as again:
        for _ in range(100):  # the first session notices the drop and lets go
            try:
                result = transfer.put_file(again, tmp_path / "f", "/f.bin")
                break
            except errors.ConflictError:
                threading.Event().wait(0.1)
        else:
            pytest.fail("the dropped upload was never released")
        assert result.offset > 0 and result.checksum == md5(data)
    assert md5(get(weed, f"{storage.prefix}bob/f.bin")) == md5(data)
    assert not keys(weed, f"{storage.prefix}bob/.ftpd/")
