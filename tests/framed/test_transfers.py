"""put and get against a real server: byte-identical, verified, atomic, never half-named.

The client side is ``ftp_client.transfer`` (and the ``Shell`` for trees); where the test
needs to misbehave on the wire (a wrong digest, a flipped byte, a digest name) it speaks
raw frames through ``Connection.send`` / ``read_response``.
"""

from __future__ import annotations

import hashlib
import os
import random
import shlex
import time
from pathlib import Path
from typing import Any

import pytest

from ftp_client import transfer
from ftp_client.connection import Connection
from ftp_client.shell import Session, Shell
from ftpd import errors
from ftpd.framed import protocol
from ftpd.framed.protocol import Data, End, Request
from ftpd.storage.local import PARTIAL_DIR
from tests.conftest import PASSWORDS, RunningServer

MiB = 1024 * 1024


def payload(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


def md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def partials(home: Path) -> list[Path]:
    folder = home / PARTIAL_DIR
    return sorted(folder.iterdir()) if folder.is_dir() else []


def spy_sends(conn: Connection, monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Record every message the client sends (to tell inline from two-phase)."""
    sent: list[Any] = []
    real_send = conn.send

    def send(message: protocol.Message, body: bytes | memoryview = b"") -> None:
        sent.append(message)
        real_send(message, body)

    monkeypatch.setattr(conn, "send", send)
    return sent


def start_two_phase(conn: Connection, path: str, size: int, **args: Any) -> protocol.Response:
    conn.send(Request("put", {"path": path, "size": size, **args}))
    ready = conn.read_response()
    assert ready.code == protocol.READY_FOR_DATA
    return ready


def wait_until(condition: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)


def wait_idle(server: RunningServer) -> None:
    """Until no transfer runs on the server (a dropped one has been noticed)."""
    wait_until(lambda: server.server.transfers == 0)


def tree(root: Path) -> dict[str, bytes | None]:
    """relative path -> file bytes, or None for a directory."""
    out: dict[str, bytes | None] = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        out[rel] = None if path.is_dir() else path.read_bytes()
    return out


# --- round trips --------------------------------------------------------------------


@pytest.mark.parametrize(
    "size, inline",
    [
        (0, True),
        (1, True),
        (4097, True),
        (transfer.INLINE_MAX, True),
        (transfer.INLINE_MAX + 1, False),
        (3 * MiB + 17, False),
        (9 * MiB + 5, False),
    ],
    ids=["empty", "1B", "4KiB+1", "inline-max", "inline-max+1", "3MiB+17", "9MiB+5"],
)
def test_transfer_round_trip_is_byte_identical(
    server: RunningServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, size: int, inline: bool
) -> None:
    data = payload(size, seed=size)
    (tmp_path / "local").mkdir()
    src = tmp_path / "local" / "src.bin"
    src.write_bytes(data)
    conn = server.login("bob")
    sent = spy_sends(conn, monkeypatch)

    up = transfer.put_file(conn, src, "f.bin")

    put_request = sent[0]
    assert isinstance(put_request, Request) and put_request.cmd == "put"
    assert (put_request.body == size) is inline
    assert any(isinstance(m, Data) for m in sent) is not inline
    assert any(isinstance(m, End) for m in sent) is not inline
    assert up.checksum == md5(data) and up.size == size and up.offset == 0
    assert (server.project.home("bob") / "f.bin").read_bytes() == data

    dst = tmp_path / "local" / "dst.bin"
    down = transfer.get_file(conn, "f.bin", dst)
    assert dst.read_bytes() == data
    assert down.checksum == md5(data) and down.size == size and down.offset == 0
    assert sorted(p.name for p in dst.parent.iterdir()) == ["dst.bin", "src.bin"]
    assert partials(server.project.home("bob")) == []
    conn.quit()


@pytest.mark.parametrize(
    "cwd, remote",
    [
        ("/", "a/b/c/deep.bin"),
        ("/", "/a/b/c/deep.bin"),
        ("/a", "b/c/deep.bin"),
        ("/a/b/c", "deep.bin"),
        ("/a/b", "../b/./c//deep.bin"),
    ],
)
def test_transfer_nested_path_lands_in_place(
    server: RunningServer, tmp_path: Path, cwd: str, remote: str
) -> None:
    data = payload(2 * MiB + 3, seed=7)
    src = tmp_path / "src.bin"
    src.write_bytes(data)
    conn = server.login("alice")
    conn.call("mkdir", path="/a/b/c", parents=True)
    conn.call("cd", path=cwd)

    result = transfer.put_file(conn, src, remote)
    got = transfer.get_file(conn, remote, tmp_path / "back.bin")

    assert (server.project.home("alice") / "a" / "b" / "c" / "deep.bin").read_bytes() == data
    assert (tmp_path / "back.bin").read_bytes() == data
    assert result.checksum == got.checksum == md5(data)
    conn.quit()


@pytest.mark.parametrize("new_size", [100, 2 * MiB + 1], ids=["inline", "two-phase"])
def test_transfer_put_replaces_existing_target_atomically(
    server: RunningServer, tmp_path: Path, new_size: int
) -> None:
    old, new = payload(3 * MiB, seed=1), payload(new_size, seed=2)
    target = server.project.home("alice") / "f.bin"
    conn = server.login("alice")
    (tmp_path / "old").write_bytes(old)
    (tmp_path / "new").write_bytes(new)
    transfer.put_file(conn, tmp_path / "old", "f.bin")
    old_inode = target.stat().st_ino
    seen: list[bool] = []

    class Watch:
        def update(self, n: int) -> None:
            seen.append(target.read_bytes() == old)  # the old file stands whole meanwhile

        def close(self) -> None:
            pass

    transfer.put_file(conn, tmp_path / "new", "f.bin", progress=lambda *_a: Watch())

    if new_size > transfer.INLINE_MAX:  # inline: the one progress update comes after the 200
        assert seen and all(seen)
    assert target.read_bytes() == new
    assert target.stat().st_ino != old_inode  # renamed into place, not rewritten in it
    assert partials(server.project.home("alice")) == []
    conn.quit()


# --- trees through the shell ----------------------------------------------------------


def make_tree(root: Path) -> None:
    (root / "empty").mkdir(parents=True)
    (root / "nested" / "a" / "b" / "c").mkdir(parents=True)
    (root / "nested" / "a" / "empty2").mkdir()
    (root / "nested" / "a" / "b" / "c" / "deep.txt").write_bytes(b"deep\n")
    (root / "été").mkdir()
    (root / "été" / "naïve café.txt").write_bytes("crème brûlée\n".encode())
    (root / "中文目录").mkdir()
    (root / "中文目录" / "文件.bin").write_bytes(payload(200_000, seed=3))
    (root / "top.txt").write_bytes(b"")
    (root / "big.bin").write_bytes(payload(MiB + 512, seed=4))
    (root / ".hidden").write_bytes(b"dot file\n")


def test_transfer_recursive_put_and_get_through_shell(
    server: RunningServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    local = tmp_path / "local"
    make_tree(local)
    session = Session(server.connect, "alice", PASSWORDS["alice"])
    shell = Shell(session, quiet=True, interactive=False)

    shell.onecmd(f"put -r {shlex.quote(str(local))} up")
    assert not shell.last_failed, capsys.readouterr().err
    assert tree(server.project.home("alice") / "up") == tree(local)

    down = tmp_path / "down"
    shell.onecmd(f"get -r up {shlex.quote(str(down))}")
    assert not shell.last_failed, capsys.readouterr().err
    assert tree(down) == tree(local)
    out = capsys.readouterr().out
    assert "put 6 files, 9 directories to up" in out
    assert "got 6 files, 9 directories into" in out
    assert not list(down.rglob("*" + transfer.PARTIAL_SUFFIX))
    session.close()


# --- corruption is caught -------------------------------------------------------------


@pytest.mark.parametrize("fault", ["wrong-end-checksum", "flipped-byte-on-wire"])
def test_transfer_corrupted_two_phase_upload_is_422_and_installs_nothing(
    server: RunningServer, fault: str
) -> None:
    data = payload(2 * MiB + 9, seed=5)
    conn = server.login("alice")
    start_two_phase(conn, "f.bin", len(data))
    body = bytearray(data)
    checksum = md5(data)
    if fault == "wrong-end-checksum":
        checksum = md5(data + b"x")
    else:
        body[MiB] ^= 0x01
    conn.send(Data(len(body), 0))
    conn.sock.sendall(body)
    conn.send(End(checksum))

    with pytest.raises(errors.ChecksumError) as info:
        conn.read_response()

    assert info.value.code == 422
    home = server.project.home("alice")
    assert not (home / "f.bin").exists()
    assert partials(home) == []
    assert conn.call("quota").data["used"] == 0
    assert conn.call("pwd").data["cwd"] == "/"  # the session goes on
    conn.quit()


def test_transfer_corrupted_inline_upload_is_422_and_installs_nothing(
    server: RunningServer,
) -> None:
    data = payload(5000, seed=6)
    conn = server.login("alice")
    with pytest.raises(errors.ChecksumError):
        conn.call("put", body=data, path="f.bin", size=len(data), checksum=md5(data[:-1] + b"\0"))
    home = server.project.home("alice")
    assert not (home / "f.bin").exists()
    assert partials(home) == []
    assert conn.call("pwd").data["cwd"] == "/"
    conn.quit()


def flip_byte(path: Path, at: int, keep_mtime: bool) -> bytes:
    st = path.stat()
    with open(path, "r+b") as f:
        f.seek(at)
        byte = f.read(1)
        f.seek(at)
        f.write(bytes([byte[0] ^ 0xFF]))
    if keep_mtime:
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    else:
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 2_000_000_000))
    assert path.stat().st_size == st.st_size
    return path.read_bytes()


@pytest.mark.parametrize("size", [3000, 2 * MiB + 1], ids=["inline", "two-phase"])
def test_transfer_get_of_file_corrupted_on_disk_fails_verification(
    server: RunningServer, tmp_path: Path, size: int
) -> None:
    data = payload(size, seed=8)
    (tmp_path / "src").write_bytes(data)
    conn = server.login("alice")
    transfer.put_file(conn, tmp_path / "src", "f.bin")
    stored = server.project.home("alice") / "f.bin"
    recorded = os.getxattr(stored, "user.ftpd.md5").decode()
    assert recorded.startswith(md5(data) + ":")  # the premise: a digest is on record
    flip_byte(stored, size // 2, keep_mtime=True)
    down = tmp_path / "down"
    down.mkdir()

    with pytest.raises(errors.ChecksumError):
        transfer.get_file(conn, "f.bin", down / "f.bin")

    assert list(down.iterdir()) == []  # neither the real name nor a partial
    conn.quit()


def test_transfer_get_after_on_disk_change_with_new_mtime_sends_new_content(
    server: RunningServer, tmp_path: Path
) -> None:
    data = payload(2 * MiB + 1, seed=9)
    (tmp_path / "src").write_bytes(data)
    conn = server.login("alice")
    transfer.put_file(conn, tmp_path / "src", "f.bin")
    changed = flip_byte(server.project.home("alice") / "f.bin", 12345, keep_mtime=False)

    result = transfer.get_file(conn, "f.bin", tmp_path / "down")

    assert (tmp_path / "down").read_bytes() == changed != data
    assert result.checksum == md5(changed)
    conn.quit()


# --- nothing half-written under a real name -------------------------------------------


@pytest.mark.parametrize("existing", [False, True], ids=["new", "over-existing"])
def test_transfer_download_partial_never_under_real_name(
    server: RunningServer, tmp_path: Path, existing: bool
) -> None:
    data = payload(3 * MiB + 1, seed=10)
    conn = server.login("alice")
    (server.project.home("alice") / "f.bin").write_bytes(data)  # placed by hand: hashed on demand
    local = tmp_path / "down" / "f.bin"
    local.parent.mkdir()
    if existing:
        local.write_bytes(b"old content")
    checks: list[tuple[bytes | None, list[str]]] = []

    class Watch:
        def update(self, n: int) -> None:
            now = local.read_bytes() if local.exists() else None
            checks.append((now, sorted(p.name for p in local.parent.iterdir())))

        def close(self) -> None:
            pass

    transfer.get_file(conn, "f.bin", local, progress=lambda *_a: Watch())

    partial = f".f.bin.{md5(data)}{transfer.PARTIAL_SUFFIX}"
    assert checks
    for now, names in checks:
        assert now == (b"old content" if existing else None)
        assert partial in names
    assert local.read_bytes() == data
    assert sorted(p.name for p in local.parent.iterdir()) == ["f.bin"]
    conn.quit()


def test_transfer_partial_upload_shown_by_name_but_never_reachable(server: RunningServer) -> None:
    data = payload(2 * MiB, seed=11)
    cut = server.login("alice")
    start_two_phase(cut, "f.bin", len(data))
    cut.send(Data(len(data), 0))
    cut.sock.sendall(data[:MiB])
    home = server.project.home("alice")
    wait_until(lambda: [p.stat().st_size for p in partials(home)] == [MiB])
    cut.close()
    wait_idle(server)
    conn = server.login("alice")

    # The bookkeeping never shows; the unfinished upload shows under its own name,
    # marked with what it holds and what it expects (issue 9: in plain sight).
    for show_all in (False, True):
        entries = conn.listdir("/", show_all=show_all)
        assert [e["name"] for e in entries] == ["f.bin"], entries
        assert (entries[0]["partial"], entries[0]["expected"]) == (MiB, len(data))
    for path in ("/.ftpd", ".ftpd/partial", "/.ftpd/partial/" + partials(home)[0].name):
        with pytest.raises(errors.PathEscapeError):
            conn.listdir(path)
        with pytest.raises(errors.PathEscapeError):
            conn.call("get", path=path)
    stat = conn.call("stat", path="f.bin").data
    assert (stat["size"], stat["partial"], stat["expected"]) == (MiB, MiB, len(data))
    assert "checksum" not in stat
    with pytest.raises(errors.NotFoundError):
        conn.call("get", path="f.bin")  # nothing to download until it is whole
    quota = conn.call("quota").data
    assert quota["partial_bytes"] == MiB and quota["partial_count"] == 1
    assert quota["partials"] == [
        {
            "path": "/f.bin",
            "size": MiB,
            "expected": len(data),
            "mtime": quota["partials"][0]["mtime"],
        }
    ]
    assert len(partials(home)) == 1  # kept for a resume
    conn.quit()


# --- refusals -------------------------------------------------------------------------


@pytest.mark.parametrize("size", [10, 2 * MiB], ids=["inline", "two-phase"])
@pytest.mark.parametrize(
    "remote, error",
    [("adir", errors.ConflictError), ("missing/f.bin", errors.NotFoundError)],
    ids=["onto-directory", "into-missing-directory"],
)
def test_transfer_put_refused_by_path_leaves_session_usable(
    server: RunningServer, tmp_path: Path, size: int, remote: str, error: type[errors.FTPError]
) -> None:
    (tmp_path / "src").write_bytes(payload(size))
    conn = server.login("alice")
    conn.call("mkdir", path="adir")

    with pytest.raises(error) as info:
        transfer.put_file(conn, tmp_path / "src", remote)

    assert info.value.code == {errors.ConflictError: 409, errors.NotFoundError: 404}[error]
    # A refused inline body is drained (docs/protocol.md §3): the session goes on.
    assert conn.call("pwd").data["cwd"] == "/"
    home = server.project.home("alice")
    assert partials(home) == []
    assert sorted(p.name for p in home.iterdir() if p.name != ".ftpd") == ["adir"]
    assert list((home / "adir").iterdir()) == []
    conn.quit()


def test_transfer_get_of_directory_is_409(server: RunningServer, tmp_path: Path) -> None:
    conn = server.login("alice")
    conn.call("mkdir", path="adir")
    with pytest.raises(errors.ConflictError) as info:
        transfer.get_file(conn, "adir", tmp_path / "adir")
    assert info.value.code == 409
    assert not (tmp_path / "adir").exists()
    assert conn.call("pwd").data["cwd"] == "/"
    conn.quit()


def test_transfer_get_of_missing_file_is_404_and_saves_nothing(
    server: RunningServer, tmp_path: Path
) -> None:
    conn = server.login("alice")
    (tmp_path / "down").mkdir()
    with pytest.raises(errors.NotFoundError):
        transfer.get_file(conn, "nope.bin", tmp_path / "down" / "nope.bin")
    assert list((tmp_path / "down").iterdir()) == []
    conn.quit()


# --- the digest argument (raw frames) -------------------------------------------------


@pytest.mark.parametrize("digest", ["sha1", "blake2b"])
def test_transfer_two_phase_put_and_get_with_negotiated_digest(
    server: RunningServer, digest: str
) -> None:
    data = payload(MiB + 77, seed=12)
    want = hashlib.new(digest, data).hexdigest()
    conn = server.login("alice")

    ready = start_two_phase(conn, "f.bin", len(data), digest=digest)
    assert ready.data["digest"] == digest and ready.data["offset"] == 0
    conn.send(Data(len(data), 0))
    conn.sock.sendall(data)
    conn.send(End(want))
    done = conn.read_response()
    assert done.code == 200 and done.data["checksum"] == want and done.data["digest"] == digest
    assert (server.project.home("alice") / "f.bin").read_bytes() == data

    response = conn.call("get", path="f.bin", digest=digest)
    assert response.data["checksum"] == want and response.data["digest"] == digest
    assert conn.read_body(response) == data
    # md5 was never recorded for it: computed on demand, still right.
    response = conn.call("get", path="f.bin")
    assert response.data["checksum"] == md5(data)
    assert conn.read_body(response) == data
    conn.quit()


def test_transfer_inline_put_with_sha1_digest(server: RunningServer) -> None:
    data = payload(777, seed=13)
    want = hashlib.sha1(data).hexdigest()
    conn = server.login("alice")
    done = conn.call("put", body=data, path="f.bin", size=len(data), checksum=want, digest="sha1")
    assert done.data["checksum"] == want
    with pytest.raises(errors.ChecksumError):  # an md5 where a sha1 was announced
        conn.call("put", body=data, path="g.bin", size=len(data), checksum=md5(data), digest="sha1")
    assert (server.project.home("alice") / "f.bin").read_bytes() == data
    assert not (server.project.home("alice") / "g.bin").exists()
    conn.quit()


def test_transfer_get_resume_with_sha1_offset_and_checksum(server: RunningServer) -> None:
    data = payload(300_000, seed=14)
    want = hashlib.sha1(data).hexdigest()
    conn = server.login("alice")
    (server.project.home("alice") / "f.bin").write_bytes(data)
    response = conn.call("get", path="f.bin", offset=1000, checksum=want, digest="sha1")
    assert response.data["offset"] == 1000 and response.body == len(data) - 1000
    assert conn.read_body(response) == data[1000:]
    conn.quit()


@pytest.mark.parametrize("form", ["get", "put-two-phase", "put-inline"])
def test_transfer_unknown_digest_is_400(server: RunningServer, form: str) -> None:
    data = payload(100)
    conn = server.login("alice")
    (server.project.home("alice") / "f.bin").write_bytes(data)
    with pytest.raises(errors.BadRequestError) as info:
        if form == "get":
            conn.call("get", path="f.bin", digest="crc32")
        elif form == "put-two-phase":
            conn.call("put", path="g.bin", size=len(data), digest="crc32")
        else:
            conn.call(
                "put", body=data, path="g.bin", size=len(data), checksum=md5(data), digest="crc32"
            )
    assert info.value.code == 400 and info.value.name == "bad_request"
    assert "crc32" in info.value.message
    assert conn.call("pwd").data["cwd"] == "/"  # not fatal; an inline body was drained
    assert not (server.project.home("alice") / "g.bin").exists()
    assert partials(server.project.home("alice")) == []
    conn.quit()
