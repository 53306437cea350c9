"""Our guarantees in FTP's terms: atomic installs, the quota held during a transfer, the
md5 recorded, and resumes of interrupted uploads (REST + STOR, APPE) and downloads.

A client that dies is a real process killed with SIGKILL once it has said (on a pipe)
that its bytes are sent; the test then waits for the server's log line of that STOR.
"""

from __future__ import annotations

import ftplib
import hashlib
import io
import os
import signal
import subprocess
import sys
from collections.abc import Iterator

import pytest

from ftpd.errors import QuotaExceededError
from ftpd.storage.local import PARTIAL_DIR
from tests.conftest import PASSWORDS
from tests.ftp.conftest import FTPRunning
from tests.support import LogRecords, wait_until

MiB = 1024 * 1024

#: A client that logs in, starts a STOR (or APPE with REST) and sends N bytes, says so,
#: then waits to be killed (reading stdin, which the test never writes).
DYING_CLIENT = """
import ftplib, sys
host, port, user, password, verb, name, count, seed = sys.argv[1:9]
client = ftplib.FTP()
client.connect(host, int(port), timeout=30)
client.login(user, password)
client.voidcmd("TYPE I")
conn = client.transfercmd(f"{verb} {name}")
import random
data = random.Random(int(seed)).randbytes(int(count))
conn.sendall(data)
print("SENT", flush=True)
sys.stdin.read()
"""


def _source(size: int, seed: int = 7) -> bytes:
    import random

    return random.Random(seed).randbytes(size)


def _kill_mid_upload(
    server: FTPRunning, records: LogRecords, name: str, count: int, verb: str = "STOR"
) -> None:
    """Run DYING_CLIENT, SIGKILL it once its bytes are sent, wait for the server's line."""
    mark = records.mark()
    proc = subprocess.Popen(
        [sys.executable, "-c", DYING_CLIENT, server.host, str(server.port), "alice"]
        + [PASSWORDS["alice"], verb, name, str(count), "7"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "SENT"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    records.wait_for(rf"{verb} {name} -> no reply", timeout=10, start=mark)


@pytest.fixture
def records(log_records: LogRecords) -> Iterator[LogRecords]:
    yield log_records


def _store(client: ftplib.FTP, name: str, data: bytes, rest: int | None = None) -> str:
    return client.storbinary(f"STOR {name}", io.BytesIO(data), rest=rest)


def _held(server: FTPRunning, name: str, user: str = "alice") -> int:
    """The bytes the partial of ``name`` holds on disk (the only partial in the test)."""
    folder = server.home(user) / PARTIAL_DIR
    sizes = [p.stat().st_size for p in folder.iterdir()] if folder.exists() else []
    assert len(sizes) == 1, sizes
    return sizes[0]


def _partials(server: FTPRunning, user: str = "alice") -> list[str]:
    folder = server.home(user) / PARTIAL_DIR
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_ftp_killed_client_leaves_no_file_under_the_real_name_and_resumes(
    ftp_server: FTPRunning, records: LogRecords
) -> None:
    data = _source(3 * MiB)
    _kill_mid_upload(ftp_server, records, "big.bin", MiB)
    assert not (ftp_server.home() / "big.bin").exists()
    client = ftp_server.connect()
    # What curl -C - asks: the partial's size.  Bytes still in flight when the client died
    # may arrive after the server saw the control connection go, and are not kept.
    held = client.size("big.bin")
    assert 0 < held <= MiB and held == _held(ftp_server, "big.bin")
    assert "big.bin" not in client.nlst()
    _store(client, "big.bin", data[held:], rest=held)
    assert (ftp_server.home() / "big.bin").read_bytes() == data
    assert client.sendcmd("XMD5 big.bin") == f"250 {hashlib.md5(data).hexdigest()}"
    assert _partials(ftp_server) == []
    client.close()


def test_ftp_killed_client_resumes_with_appe(ftp_server: FTPRunning, records: LogRecords) -> None:
    data = _source(2 * MiB)
    _kill_mid_upload(ftp_server, records, "a.bin", MiB // 2)
    client = ftp_server.connect()
    held = client.size("a.bin")
    assert 0 < held <= MiB // 2 and held == _held(ftp_server, "a.bin")
    client.storbinary("APPE a.bin", io.BytesIO(data[held:]))
    assert (ftp_server.home() / "a.bin").read_bytes() == data
    client.close()


def test_ftp_killed_client_does_not_replace_a_finished_file(
    ftp_server: FTPRunning, records: LogRecords
) -> None:
    client = ftp_server.connect()
    _store(client, "keep.bin", b"the old, complete file")
    _kill_mid_upload(ftp_server, records, "keep.bin", 200_000)
    assert (ftp_server.home() / "keep.bin").read_bytes() == b"the old, complete file"
    assert client.size("keep.bin") == len(b"the old, complete file")
    client.close()


def test_ftp_stor_without_rest_starts_afresh(ftp_server: FTPRunning, records: LogRecords) -> None:
    _kill_mid_upload(ftp_server, records, "f.bin", 100_000)
    client = ftp_server.connect()
    _store(client, "f.bin", b"new")
    assert (ftp_server.home() / "f.bin").read_bytes() == b"new"
    assert _partials(ftp_server) == []
    client.close()


def test_ftp_rest_past_the_partial_is_554(ftp_server: FTPRunning, records: LogRecords) -> None:
    _kill_mid_upload(ftp_server, records, "p.bin", 1000)
    client = ftp_server.connect()
    with pytest.raises(ftplib.error_perm, match="^554"):
        _store(client, "p.bin", b"x", rest=5000)
    _store(client, "p.bin", b"y" * 10, rest=500)  # a shorter REST keeps the first 500
    assert (ftp_server.home() / "p.bin").read_bytes() == _source(1000)[:500] + b"y" * 10
    client.close()


def test_ftp_appe_onto_a_finished_file_is_atomic(ftp: ftplib.FTP, ftp_server: FTPRunning) -> None:
    _store(ftp, "log.txt", b"line 1\n")
    ftp.storbinary("APPE log.txt", io.BytesIO(b"line 2\n"))
    assert (ftp_server.home() / "log.txt").read_bytes() == b"line 1\nline 2\n"
    md5 = hashlib.md5(b"line 1\nline 2\n").hexdigest()
    assert ftp.sendcmd("XMD5 log.txt") == f"250 {md5}"
    ftp.storbinary("APPE new.txt", io.BytesIO(b"fresh"))  # APPE of a missing name creates
    assert (ftp_server.home() / "new.txt").read_bytes() == b"fresh"


def test_ftp_rest_stor_on_a_finished_file_keeps_its_head(
    ftp: ftplib.FTP, ftp_server: FTPRunning
) -> None:
    _store(ftp, "h.bin", b"0123456789")
    _store(ftp, "h.bin", b"abc", rest=4)
    assert (ftp_server.home() / "h.bin").read_bytes() == b"0123abc"


def test_ftp_upload_in_progress_is_never_under_its_name(ftp_server: FTPRunning) -> None:
    client = ftp_server.connect()
    client.voidcmd("TYPE I")
    conn = client.transfercmd("STOR slow.bin")
    conn.sendall(b"x" * 100_000)
    wait_until(lambda: sum(os.path.getsize(p) for p in _partial_paths(ftp_server)) == 100_000)
    assert not (ftp_server.home() / "slow.bin").exists()
    assert "slow.bin" not in ftp_server.connect().nlst()
    conn.close()
    assert client.voidresp().startswith("226")
    assert (ftp_server.home() / "slow.bin").stat().st_size == 100_000
    client.close()


def _partial_paths(server: FTPRunning) -> list[str]:
    folder = server.home() / PARTIAL_DIR
    return [str(p) for p in folder.iterdir()] if folder.exists() else []


def test_ftp_abor_mid_upload_keeps_the_partial(ftp_server: FTPRunning) -> None:
    client = ftp_server.connect()
    client.voidcmd("TYPE I")
    conn = client.transfercmd("STOR ab.bin")
    conn.sendall(b"y" * 50_000)
    wait_until(lambda: sum(os.path.getsize(p) for p in _partial_paths(ftp_server)) == 50_000)
    client.putline("ABOR")
    conn.close()
    assert client.getline().startswith("426")
    assert client.getline().startswith("226")
    assert not (ftp_server.home() / "ab.bin").exists()
    assert client.size("ab.bin") == 50_000
    client.close()


def test_ftp_quota_refuses_the_byte_past_the_limit_with_552(ftp_server: FTPRunning) -> None:
    client = ftp_server.connect("carol")  # quota 1 MiB
    _store(client, "fits.bin", b"a" * (MiB - 10))
    with pytest.raises(ftplib.error_perm, match="^552"):
        _store(client, "over.bin", b"b" * 11)
    client.close()
    client = ftp_server.connect("carol")
    assert "over.bin" not in client.nlst()
    assert not (ftp_server.home("carol") / "over.bin").exists()
    with pytest.raises(ftplib.error_perm, match="^550"):
        client.size("over.bin")  # the partial was dropped too
    _store(client, "exact.bin", b"c" * 10)  # exactly up to the limit still fits
    ledger = ftp_server.services.ledgers.ledger("carol", lambda: (0, 0, True))
    assert ledger.usage().reserved == 0 and ledger.usage().used == MiB
    client.close()


def test_ftp_quota_reply_is_552(ftp_server: FTPRunning) -> None:
    client = ftp_server.connect("carol")
    client.voidcmd("TYPE I")
    conn = client.transfercmd("STOR over.bin")
    try:
        conn.sendall(b"z" * (2 * MiB))
    except ConnectionError:
        pass  # the server closed the data connection at the byte past the limit
    conn.close()
    with pytest.raises(ftplib.error_perm, match="^552"):
        client.voidresp()
    assert client.sendcmd("NOOP").startswith("200")
    client.close()


def test_ftp_two_sessions_cannot_jointly_pass_the_quota(ftp_server: FTPRunning) -> None:
    first, second = ftp_server.connect(), ftp_server.connect()  # alice: 10 MiB
    ledger = ftp_server.services.ledgers.ledger("alice", lambda: (0, 0, True))
    first.voidcmd("TYPE I")
    conn1 = first.transfercmd("STOR one.bin")
    conn1.sendall(b"1" * (6 * MiB))
    wait_until(lambda: ledger.usage().used + ledger.usage().reserved >= 6 * MiB)
    second.voidcmd("TYPE I")
    conn2 = second.transfercmd("STOR two.bin")
    try:
        conn2.sendall(b"2" * (6 * MiB))
    except ConnectionError:
        pass
    conn2.close()
    with pytest.raises(ftplib.error_perm, match="^552"):
        second.voidresp()
    conn1.close()
    assert first.voidresp().startswith("226")
    assert (ftp_server.home() / "one.bin").stat().st_size == 6 * MiB
    assert not (ftp_server.home() / "two.bin").exists()
    first.close()
    second.close()


def test_ftp_and_framed_sessions_share_the_quota(ftp_server: FTPRunning, tmp_path) -> None:
    from ftp_client.transfer import put_file

    client = ftp_server.connect()
    ledger = ftp_server.services.ledgers.ledger("alice", lambda: (0, 0, True))
    client.voidcmd("TYPE I")
    conn = client.transfercmd("STOR ftp.bin")
    conn.sendall(b"f" * (6 * MiB))
    wait_until(lambda: ledger.usage().used + ledger.usage().reserved >= 6 * MiB)
    source = tmp_path / "framed.bin"
    source.write_bytes(b"g" * (5 * MiB))
    framed = ftp_server.framed_client()
    with pytest.raises(QuotaExceededError):
        put_file(framed, source, "framed.bin")
    framed.close()
    conn.close()
    assert client.voidresp().startswith("226")
    client.close()


def test_ftp_download_of_an_interrupted_download_resumes(ftp_server: FTPRunning) -> None:
    data = _source(2 * MiB, seed=3)
    client = ftp_server.connect()
    _store(client, "d.bin", data)
    client.voidcmd("TYPE I")
    conn = client.transfercmd("RETR d.bin")
    got = conn.recv(100_000)
    conn.close()  # the client gives up mid-way
    try:
        client.voidresp()  # 226 if the whole file already fitted in the socket buffers
    except ftplib.error_temp as exc:
        assert str(exc).startswith("426")
    out = io.BytesIO()
    client.retrbinary("RETR d.bin", out.write, rest=len(got))
    assert got + out.getvalue() == data
    client.close()


def test_ftp_one_upload_per_target_second_is_450(ftp_server: FTPRunning) -> None:
    first, second = ftp_server.connect(), ftp_server.connect()
    first.voidcmd("TYPE I")
    conn = first.transfercmd("STOR same.bin")
    conn.sendall(b"a" * 10_000)
    wait_until(lambda: sum(os.path.getsize(p) for p in _partial_paths(ftp_server)) == 10_000)
    with pytest.raises(ftplib.error_temp, match="^450"):
        _store(second, "same.bin", b"b")
    conn.close()
    assert first.voidresp().startswith("226")
    assert (ftp_server.home() / "same.bin").read_bytes() == b"a" * 10_000
    first.close()
    second.close()


def test_ftp_rest_survives_pasv_and_type_before_the_transfer(ftp_server: FTPRunning) -> None:
    client = ftp_server.connect()
    _store(client, "r.bin", b"0123456789")
    client.sendcmd("REST 4")
    client.sendcmd("TYPE I")
    conn = client.transfercmd("RETR r.bin")  # PASV comes between REST and RETR here
    assert conn.recv(100) == b"456789"
    conn.close()
    assert client.voidresp().startswith("226")
    client.close()
