"""Two daemon processes, one service: node A and node B over one bucket prefix (SeaweedFS)
and one database (PostgreSQL), both started by the tests (issue 12).

The ``weed`` and PostgreSQL fixtures of ``tests/s3`` and ``tests/pg`` are imported here,
so that they are visible to these tests too; they keep their session scope (one SeaweedFS
and one PostgreSQL for all the cluster tests).  ``cluster`` writes one configuration per
node (``ftpd.yaml`` and ``ftpd-b.yaml``: the same ``storage:`` and ``state:`` sections,
each node its own ``home_root`` and ``log_dir``, the same users file), starts both
daemons on port 0 of 127.0.0.1 and stops them at the end.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import DaemonProcess, Project
from tests.pg.conftest import dsn, pg_database, pg_server  # noqa: F401 - fixtures
from tests.s3.conftest import ACCESS_KEY, BUCKET, SECRET_KEY, Weed, weed  # noqa: F401

#: A claim whose holder wrote no touch for this long is taken over by another node.  The
#: holders' touches reach the database about once a second, so it must stay above that.
TAKEOVER_AFTER_S = 2


@dataclass
class NodeProject(Project):
    """The shared project seen by one node: the same root and users, its own config."""

    config_name: str = "ftpd.yaml"

    @property
    def config_path(self) -> Path:
        return self.root / self.config_name


@dataclass
class Cluster:
    weed: Weed
    prefix: str
    dsn: str
    a: DaemonProcess
    b: DaemonProcess

    def home(self, user: str) -> str:
        """The key prefix of ``user``'s home in the bucket."""
        return f"{self.prefix}{user}/"


def _configure(node: NodeProject, name: str, store: Weed, prefix: str, database: str) -> None:
    node.write_config(
        home_root=f"home-{name}",
        log_dir=f"logs-{name}",
        takeover_after=TAKEOVER_AFTER_S,
        storage={
            "backend": "s3",
            "endpoint_url": store.endpoint,
            "bucket": BUCKET,
            "prefix": prefix,
            "region": "us-east-1",
            "access_key_id": ACCESS_KEY,
            "secret_access_key": SECRET_KEY,
        },
        state={"backend": "postgresql", "dsn": database},
    )


def _start_together(daemons: list[DaemonProcess]) -> None:
    """Start the daemons at the same time (each waits for its own LISTENING line)."""
    failures: list[BaseException] = []

    def start(daemon: DaemonProcess) -> None:
        try:
            daemon.start()
        except BaseException as exc:  # noqa: BLE001 - raised in the test's thread below
            failures.append(exc)

    threads = [threading.Thread(target=start, args=(d,), daemon=True) for d in daemons]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    if failures:
        raise failures[0]
    assert all(d.port for d in daemons), "a daemon did not start in time"


@pytest.fixture
def cluster(project: Project, weed: Weed, dsn: str) -> Iterator[Cluster]:  # noqa: F811
    prefix = f"cluster-{uuid.uuid4().hex[:10]}/"
    nodes = []
    for name, config in (("a", "ftpd.yaml"), ("b", "ftpd-b.yaml")):
        node = NodeProject(project.root, dict(project.settings), project.quotas, config)
        _configure(node, name, weed, prefix, dsn)
        # On S3 nothing of the homes is on local disk, but the control socket's default
        # place is in home_root, which the daemon does not make then: made here.
        (project.root / f"home-{name}").mkdir()
        nodes.append(DaemonProcess(node))
    a, b = nodes
    try:
        _start_together(nodes)
        yield Cluster(weed, prefix, dsn, a, b)
    finally:
        a.stop()
        b.stop()
    for node, daemon in (("A", a), ("B", b)):
        bad = [line for line in daemon.lines if " ERROR " in line or "Traceback" in line]
        assert not bad, f"node {node} logged errors:\n" + "\n".join(bad)
