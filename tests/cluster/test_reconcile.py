"""Reconciliation on the shared backends (issue 12): ``ftpd storage gc`` over SeaweedFS and
PostgreSQL started by the tests.

An unfinished upload left in the bucket (its parts and state, its bytes in the shared
ledger), an orphan multipart upload (a node that died while composing, its state gone) and
part objects without a state are made directly; ``ftpd storage gc`` removes each once it
is older than ``partial_ttl`` and takes the upload's bytes off the ledger, and leaves them
all while they are younger.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator

import pytest

from ftpd.state.postgresql import PgState
from ftpd.storage.s3 import S3Storage
from tests.cluster.conftest import NodeProject, _configure
from tests.conftest import Project
from tests.s3.conftest import ACCESS_KEY, BUCKET, SECRET_KEY, Weed, keys

KiB = 1024


@pytest.fixture
def node(project: Project, weed: Weed, dsn: str) -> Iterator[tuple[NodeProject, S3Storage]]:
    prefix = f"gc-{uuid.uuid4().hex[:10]}/"
    node = NodeProject(project.root, dict(project.settings), project.quotas, "ftpd.yaml")
    _configure(node, "a", weed, prefix, dsn)
    store = S3Storage(weed.endpoint, BUCKET, prefix, "us-east-1", ACCESS_KEY, SECRET_KEY)
    yield node, store
    store.close()


def _gc(node: NodeProject, ttl: float) -> subprocess.CompletedProcess[str]:
    text = node.config_path.read_text()
    lines = [line for line in text.splitlines() if not line.startswith("partial_ttl:")]
    node.config_path.write_text("\n".join([*lines, f"partial_ttl: {ttl}"]) + "\n")
    return subprocess.run(
        [sys.executable, "-m", "ftpd", "storage", "gc", "--config", str(node.config_path)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=node.root,
    )


def _uploads(weed: Weed, prefix: str) -> list[str]:
    answer = weed.client.list_multipart_uploads(Bucket=BUCKET, Prefix=prefix)
    return [u["UploadId"] for u in answer.get("Uploads", [])]


def test_gc_removes_old_unfinished_uploads_and_their_ledger_bytes(
    node: tuple[NodeProject, S3Storage], weed: Weed, dsn: str
) -> None:
    project, store = node
    tree = store.tree("alice")
    tree.ensure()
    upload = tree.begin_upload(("big.bin",), 300 * KiB, resume=False)
    upload.write(memoryview(b"z" * (100 * KiB)))
    upload.close()  # a dropped connection: the bytes stay as a part, for a resume
    partial = f"{store.prefix}alice/.ftpd/partial/"
    assert any(k.endswith(".json") for k in keys(weed, partial))
    orphan_parts = f"{partial}{'0' * 40}.777.parts/00001"
    weed.client.put_object(Bucket=BUCKET, Key=orphan_parts, Body=b"o" * KiB)
    orphan = weed.client.create_multipart_upload(
        Bucket=BUCKET, Key=f"{store.prefix}alice/composed.bin"
    )["UploadId"]
    with PgState(dsn, background=False) as shared:
        ledger = shared.ledgers.ledger("alice", tree.usage)
        before = ledger.usage().used
    assert before >= 100 * KiB + KiB  # the unfinished upload's and the orphan's bytes

    young = _gc(project, 3600)  # nothing is an hour old: all of it stays
    assert young.returncode == 0, young.stderr
    assert "storage gc: 0 removed" in young.stdout
    assert orphan in _uploads(weed, store.prefix)

    result = _gc(project, 0.001)
    assert result.returncode == 0, result.stderr
    assert "removed unfinished upload alice:/big.bin" in result.stdout, result.stdout
    assert "removed orphan parts alice:" in result.stdout
    assert f"removed multipart upload {store.prefix}alice/composed.bin ({orphan})" in result.stdout
    assert keys(weed, partial) == []
    assert orphan not in _uploads(weed, store.prefix)
    with PgState(dsn, background=False) as shared:
        after = shared.ledgers.ledger("alice", tree.usage).usage()
    assert after.used == before - 100 * KiB - KiB
    assert after.reserved == 0
