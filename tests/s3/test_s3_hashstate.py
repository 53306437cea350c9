"""Saved hash states (``ftpd.storage.s3_hashstate``) give hashlib's digests exactly, on
any node, and a state that does not fit is refused, never used."""

from __future__ import annotations

import hashlib
import json
import random

import pytest

try:  # loads a second libcrypto, as a daemon with the database backend does
    import psycopg  # noqa: F401
except ImportError:
    pass

from ftpd.storage import s3_hashstate

SIZES = [0, 1, 55, 56, 63, 64, 65, 119, 120, 127, 128, 129, 1000, 4096, 65_537, 1 << 20]


@pytest.mark.parametrize("name", ["md5", "sha1"])
def test_saved_state_continues_to_hashlibs_digest(name: str) -> None:
    assert s3_hashstate.supported(name)
    rng = random.Random(12)
    for size in SIZES + [rng.randrange(1, 300_000) for _ in range(40)]:
        prefix, rest = rng.randbytes(size), rng.randbytes(rng.randrange(0, 5000))
        hasher = s3_hashstate.new(name)
        assert hasher is not None
        hasher.update(memoryview(bytearray(prefix)))  # writable, as a receive buffer
        state = json.loads(json.dumps(hasher.state()))  # as stored in the bucket
        assert state["digest"] == hashlib.new(name, prefix).hexdigest()
        other = s3_hashstate.restore(state, name)  # another node
        assert other is not None
        assert other.hexdigest() == hashlib.new(name, prefix).hexdigest()
        other.update(rest)  # read-only bytes
        assert other.hexdigest() == hashlib.new(name, prefix + rest).hexdigest()
        assert other.copy().hexdigest() == other.hexdigest()  # hexdigest spends nothing
        hasher.update(rest)  # the source is untouched by its state() and digests
        assert hasher.hexdigest() == other.hexdigest()
        assert hasher.digest() == hashlib.new(name, prefix + rest).digest()


def test_a_state_is_refused_where_it_does_not_fit() -> None:
    md5 = s3_hashstate.new("md5")
    assert md5 is not None
    md5.update(b"abc")
    state = md5.state()
    assert s3_hashstate.restore(state, "sha1") is None  # another digest
    forged = {**state, "digest": hashlib.md5(b"abd").hexdigest()}
    assert s3_hashstate.restore(forged) is None  # the bytes do not give that digest
    assert s3_hashstate.restore({**state, "ctx": "AAAA"}) is None  # wrong size
    assert s3_hashstate.restore({**state, "ctx": "not base64!"}) is None
    assert s3_hashstate.restore({**state, "format": "other"}) is None
    assert s3_hashstate.restore({**state, "name": "sha256"}) is None
    assert s3_hashstate.restore(None) is None
    assert s3_hashstate.restore(["md5"]) is None
    restored = s3_hashstate.restore(state, "md5")
    assert restored is not None and restored.hexdigest() == hashlib.md5(b"abc").hexdigest()


def test_digests_without_a_saved_state_are_not_offered() -> None:
    assert not s3_hashstate.supported("blake2b")
    assert s3_hashstate.new("blake2b") is None
    assert s3_hashstate.restore({"name": "blake2b", "format": "openssl-ctx-1", "ctx": ""}) is None
