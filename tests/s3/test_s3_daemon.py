"""The daemon on an object store, configured only in ftpd.yaml (issue 12): `storage:
backend: s3` and nothing else changes for users; a file put through one daemon is listed
and fetched, verified, through a second daemon over the same bucket."""

from __future__ import annotations

import hashlib
import os
import uuid
from pathlib import Path

from ftp_client import transfer
from tests.conftest import DaemonProcess, Project
from tests.s3.conftest import ACCESS_KEY, BUCKET, SECRET_KEY, Weed


def _s3_config(
    project: Project, weed: Weed, prefix: str, home_root: str = "home", **extra: object
) -> None:
    project.write_config(
        home_root=home_root,
        storage={
            "backend": "s3",
            "endpoint_url": weed.endpoint,
            "bucket": BUCKET,
            "prefix": prefix,
            "region": "us-east-1",
            "access_key_id": ACCESS_KEY,
            "secret_access_key": SECRET_KEY,
            **extra,
        },
    )


def test_s3_two_daemons_share_one_bucket(project: Project, weed: Weed, tmp_path: Path) -> None:
    prefix = f"daemon-{uuid.uuid4().hex[:8]}/"
    _s3_config(project, weed, prefix)
    node_a, node_b = DaemonProcess(project), DaemonProcess(project)
    data = os.urandom(3 * 1024 * 1024 + 17)
    src = tmp_path / "src.bin"
    src.write_bytes(data)
    try:
        node_a.start()
        node_b.start()
        with node_a.login("alice") as a:
            a.call("mkdir", path="shared")
            sent = transfer.put_file(a, src, "shared/file.bin")
        assert sent.checksum == hashlib.md5(data).hexdigest()
        with node_b.login("alice") as b:
            names = [e["name"] for e in b.listdir("shared")]
            assert names == ["file.bin"]
            got = transfer.get_file(b, "shared/file.bin", tmp_path / "got.bin")
            assert got.checksum == sent.checksum
            assert b.call("quota").data["used"] == len(data)
        assert (tmp_path / "got.bin").read_bytes() == data
        # Nothing of the users' files lands on the local disk of either node.
        assert not any(p.is_file() for p in (project.root / "home").rglob("*"))
    finally:
        node_a.stop()
        node_b.stop()


def test_s3_part_size_and_parts_in_flight_from_the_config(project: Project, weed: Weed) -> None:
    """``storage: part_size`` and ``parts_in_flight`` reach the backend the daemon builds."""
    from ftpd.core.services import storage_for

    _s3_config(project, weed, f"cfg-{uuid.uuid4().hex[:8]}/", part_size="5MiB", parts_in_flight=3)
    storage = storage_for(project.load())
    try:
        assert (storage.part_size, storage.parts_in_flight) == (5 << 20, 3)  # type: ignore[attr-defined]
    finally:
        storage.close()  # type: ignore[attr-defined]
