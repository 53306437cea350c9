"""Edge cases of the S3 backend on moto's in-process S3, where a real store would need
gigabytes: the multipart copy past CopyObject's 5 GiB (with the limit lowered), and the
part size chosen so that a huge upload stays under S3's 10,000 parts.  The proof that
the backend works is the SeaweedFS suite beside this one, never these."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator

import pytest

moto = pytest.importorskip("moto")

from ftpd.storage.s3 import S3Storage  # noqa: E402
from ftpd.storage.s3_objects import MAX_PARTS, MIN_PART  # noqa: E402

MiB = 1 << 20


def _bytes_body(params: dict[str, object], **kwargs: object) -> None:
    if isinstance(params.get("Body"), bytearray):
        params["Body"] = bytes(params["Body"])  # type: ignore[arg-type]


@pytest.fixture
def storage(monkeypatch: pytest.MonkeyPatch) -> Iterator[S3Storage]:
    for name in ("AWS_PROFILE", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"):
        monkeypatch.delenv(name, raising=False)
    with moto.mock_aws():
        store = S3Storage(None, "edge", "p/", "us-east-1", "testing", "testing")
        # moto (through werkzeug) takes a request body of bytes, str or a form, never a
        # bytearray, which the backend hands botocore to send its buffers uncopied.
        for operation in ("UploadPart", "PutObject"):
            store.client.meta.events.register(f"before-parameter-build.s3.{operation}", _bytes_body)
        store.client.create_bucket(Bucket="edge")
        store.store.copy_limit = 6 * MiB  # stands in for CopyObject's 5 GiB
        store.store.copy_part = MIN_PART
        yield store
        store.close()


def test_rename_above_the_copy_limit_is_a_multipart_copy(storage: S3Storage) -> None:
    tree = storage.tree("alice")
    tree.ensure()
    data = os.urandom(12 * MiB + 5)
    up = tree.begin_upload(("big",), len(data), resume=True)
    up.write(memoryview(data))
    up.commit("md5", hashlib.md5(data).hexdigest(), 1234.5)
    up.close()
    calls: list[str] = []
    real = storage.client.upload_part_copy

    def spy(**kwargs: object) -> object:
        calls.append(str(kwargs["CopySourceRange"]))
        return real(**kwargs)

    storage.client.upload_part_copy = spy
    tree.rename(("big",), ("moved",))
    assert calls == ["bytes=0-5242879", "bytes=5242880-10485759", "bytes=10485760-12582916"]
    with tree.open_read(("moved",)) as reader:  # the tags came along, bound to the copy
        assert reader.recorded_digest("md5") == hashlib.md5(data).hexdigest()
        assert reader.mtime == 1234.5
    body = storage.client.get_object(Bucket="edge", Key="p/alice/moved")["Body"].read()
    assert body == data
    assert tree.lookup(("big",)).entry is None
    tree.set_mtime(("moved",), 99.0)  # a self-copy past the limit keeps the bytes
    assert tree.lookup(("moved",)).entry.mtime == 99.0  # type: ignore[union-attr]
    with tree.open_read(("moved",)) as reader:
        assert reader.read() == data
        assert reader.recorded_digest("md5") == hashlib.md5(data).hexdigest()


@pytest.mark.parametrize("size", [0, 8 * MiB, 80 * 1024 * MiB, 5 * 1024 * 1024 * MiB])
def test_part_size_keeps_an_upload_under_the_part_limit(storage: S3Storage, size: int) -> None:
    tree = storage.tree("alice")
    up = tree.begin_upload(("huge",), size, resume=True)
    try:
        assert -(-size // up._part_bytes(1)) < MAX_PARTS
        assert up._part_bytes(1) >= storage.part_size
    finally:
        up.close()


def test_parts_of_an_undeclared_size_grow(storage: S3Storage) -> None:
    up = storage.tree("alice").begin_upload(("s",), None, resume=True)
    try:
        total = sum(up._part_bytes(n) for n in range(1, MAX_PARTS + 1))
        assert total > 400 * 1024 * MiB  # 10,000 parts hold more than 400 GiB
    finally:
        up.close()
