"""Pipelined uploads (``put_many``, used by ``put -r``): many small puts in flight at once."""

from __future__ import annotations

import hashlib
import os

import pytest

from ftp_client import transfer
from ftpd import errors


def _files(tmp_path, sizes):
    pairs = []
    for i, size in enumerate(sizes):
        path = tmp_path / f"f{i:03d}.bin"
        path.write_bytes(os.urandom(size))
        pairs.append((path, f"dir/f{i:03d}.bin"))
    return pairs


def test_pipeline_many_small_and_one_large_arrive_verified(server, tmp_path):
    conn = server.login("bob")
    conn.call("mkdir", path="dir")
    sizes = [0, 1, 4096] * 40 + [transfer.INLINE_MAX + 7] + [100] * 20
    pairs = _files(tmp_path, sizes)
    notices: list[str] = []
    results = transfer.put_many(conn, pairs, notice=notices.append, window=8)
    assert [r.path for r in results] == [remote for _, remote in pairs]
    home = server.project.home("bob")
    for (local, remote), result in zip(pairs, results, strict=True):
        data = local.read_bytes()
        assert (home / remote).read_bytes() == data
        assert result.checksum == hashlib.md5(data).hexdigest()
    assert notices[-1] == f"[{len(pairs)}/{len(pairs)}] {pairs[-1][1]}"
    assert conn.call("pwd").data["cwd"] == "/"  # the session is in step afterwards
    conn.close()


def test_pipeline_stops_at_first_failure_and_keeps_the_session_in_step(server, tmp_path):
    conn = server.login("carol")  # 1 MiB quota
    conn.call("mkdir", path="dir")
    pairs = _files(tmp_path, [300 * 1024] * 6)  # the 4th does not fit
    with pytest.raises(errors.QuotaExceededError):
        transfer.put_many(conn, pairs, window=32)
    home = server.project.home("carol") / "dir"
    stored = sorted(p.name for p in home.iterdir())
    assert stored == [
        "f000.bin",
        "f001.bin",
        "f002.bin",
    ]  # in order; those in flight after it hit the quota too
    for name in stored:
        assert (home / name).read_bytes() == (tmp_path / name).read_bytes()
    assert conn.call("pwd").data["cwd"] == "/"
    conn.close()
