"""Fault injection through a real server: full disk, read-only places, files changed
behind the daemon's back, and a stalled upload taken over by a new connection.

The full-disk case mounts a small tmpfs, which needs root; elsewhere it is skipped with
that reason.  Nothing here sleeps to synchronise: waits poll a condition with a deadline.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import time
from pathlib import Path

import pytest

from ftp_client import transfer
from ftpd import errors
from ftpd.framed import protocol

IS_ROOT = os.geteuid() == 0


def _mount_tmpfs(path: Path, size: str, readonly: bool = False) -> None:
    path.mkdir(parents=True, exist_ok=True)
    opts = f"size={size}" + (",ro" if readonly else "")
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)], capture_output=True
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.decode().strip()}")


@pytest.fixture
def mounts():
    mounted: list[Path] = []
    yield mounted
    for path in reversed(mounted):
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def _until(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)


@pytest.mark.skipif(not IS_ROOT, reason="mounting a small file system to fill needs root")
def test_faults_disk_full_mid_upload_gives_clear_error_and_serves_on(
    project, server_factory, mounts, tmp_path
):
    home = project.home("bob")  # bob has no quota: only the disk can stop him
    _mount_tmpfs(home, "2m")
    mounts.append(home)
    server = server_factory()
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(3 * 1024 * 1024 + 5))
    conn = server.login("bob")
    with pytest.raises(errors.StorageFullError) as info:
        transfer.put_file(conn, src, "big.bin")
    assert info.value.code == 507
    # Nothing half-written under the real name, and the space was given back.
    assert not (home / "big.bin").exists()
    assert not any((home / ".ftpd" / "partial").iterdir())
    # The same session and another user carry on.
    small = tmp_path / "small.bin"
    small.write_bytes(b"x" * 1000)
    assert transfer.put_file(conn, small, "small.bin").size == 1000
    assert (home / "small.bin").read_bytes() == b"x" * 1000
    other = server.login("alice")
    assert other.call("pwd").data["cwd"] == "/"
    other.close()
    conn.close()


def test_faults_unwritable_directory_is_refused_clearly(project, server_factory, mounts, tmp_path):
    home = project.home("alice")
    locked = home / "locked"
    if IS_ROOT:  # root ignores permission bits: use a read-only file system instead
        _mount_tmpfs(locked, "1m", readonly=True)
        mounts.append(locked)
    else:
        locked.mkdir(parents=True)
        locked.chmod(0o555)
    server = server_factory()
    conn = server.login("alice")
    src = tmp_path / "f.txt"
    src.write_bytes(b"data")
    with pytest.raises(errors.PermissionDeniedError) as info:
        transfer.put_file(conn, src, "locked/f.txt")
    assert info.value.code == 403
    assert "/tmp" not in info.value.message and str(home) not in info.value.message
    with pytest.raises(errors.PermissionDeniedError):
        conn.call("mkdir", path="locked/sub")
    assert conn.call("pwd").data["cwd"] == "/"  # the session survives
    conn.close()


@pytest.mark.skipif(IS_ROOT, reason="root reads files whatever their permission bits")
def test_faults_unreadable_file_is_refused_clearly(project, server_factory, tmp_path):
    home = project.home("alice")
    home.mkdir(parents=True)
    secret = home / "secret.txt"
    secret.write_bytes(b"s")
    secret.chmod(0)
    server = server_factory()
    conn = server.login("alice")
    with pytest.raises(errors.PermissionDeniedError):
        transfer.get_file(conn, "secret.txt", tmp_path / "out.txt")
    assert not (tmp_path / "out.txt").exists()
    assert conn.call("pwd").data["cwd"] == "/"
    conn.close()


def test_faults_file_changed_on_disk_between_downloads(project, server, tmp_path):
    conn = server.login("alice")
    src = tmp_path / "v1.bin"
    src.write_bytes(os.urandom(2 * 1024 * 1024))
    transfer.put_file(conn, src, "doc.bin")
    first = transfer.get_file(conn, "doc.bin", tmp_path / "a.bin")
    assert first.checksum == hashlib.md5(src.read_bytes()).hexdigest()
    # Someone with shell access rewrites the file (new size and mtime).
    new = os.urandom(2 * 1024 * 1024 + 3)
    stored = project.home("alice") / "doc.bin"
    stored.write_bytes(new)
    st = stored.stat()
    os.utime(stored, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    second = transfer.get_file(conn, "doc.bin", tmp_path / "b.bin")
    assert second.checksum == hashlib.md5(new).hexdigest()
    assert (tmp_path / "b.bin").read_bytes() == new
    conn.close()


def test_faults_stalled_upload_is_taken_over_by_a_new_connection(project, server_factory, tmp_path):
    """A client whose network died mid-put reconnects: once the old upload has received
    nothing for ``takeover_after`` seconds, the new put takes it over and resumes."""
    server = server_factory(takeover_after=0.5)
    payload = os.urandom(3 * 1024 * 1024)
    src = tmp_path / "big.bin"
    src.write_bytes(payload)
    stalled = server.login("alice")
    ready = stalled.call("put", path="big.bin", size=len(payload))
    assert ready.code == protocol.READY_FOR_DATA and ready.data["offset"] == 0
    stalled.send(protocol.Data(len(payload), 0))
    stalled.sock.sendall(payload[: 1024 * 1024])  # then silence: no FIN, no more bytes
    partial_dir = project.home("alice") / ".ftpd" / "partial"
    _until(lambda: any(p.stat().st_size >= 1024 * 1024 for p in partial_dir.iterdir()))

    fresh = server.login("alice")
    result = transfer.put_file(fresh, src, "big.bin")
    assert result.offset == 1024 * 1024  # resumed from what the stalled one had sent
    assert (project.home("alice") / "big.bin").read_bytes() == payload
    stalled.close()
    fresh.close()


@pytest.mark.skipif(not IS_ROOT, reason="mounting a file system inside a home needs root")
def test_faults_upload_onto_a_mount_inside_the_home_is_atomic(
    project, server_factory, mounts, tmp_path
):
    """A target on another file system gets its partial beside it: rename stays atomic."""
    mnt = project.home("alice") / "shared"
    _mount_tmpfs(mnt, "8m")
    mounts.append(mnt)
    server = server_factory()
    conn = server.login("alice")
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(2 * 1024 * 1024 + 1))
    assert transfer.put_file(conn, src, "shared/big.bin").size == src.stat().st_size
    assert (mnt / "big.bin").read_bytes() == src.read_bytes()
    assert sorted(p.name for p in mnt.iterdir()) == ["big.bin"]  # no partial left beside it
    names = [e["name"] for e in conn.listdir("shared", show_all=True)]
    assert names == ["big.bin"]
    with pytest.raises(errors.PathEscapeError):
        conn.call("stat", path="shared/.ftpd-part.x")
    conn.close()
