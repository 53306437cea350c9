"""FTP sessions through Python's ftplib against the real listener: login, browsing,
changes, transfers, facts, and the files shared with the framed listener."""

from __future__ import annotations

import ftplib
import hashlib
import io
import os
from pathlib import Path

import pytest

from ftp_client.transfer import get_file, put_file
from tests.ftp.conftest import FTPRunning


def _store(client: ftplib.FTP, name: str, data: bytes) -> str:
    return client.storbinary(f"STOR {name}", io.BytesIO(data))


def _fetch(client: ftplib.FTP, name: str, rest: int | None = None) -> bytes:
    out = io.BytesIO()
    client.retrbinary(f"RETR {name}", out.write, rest=rest)
    return out.getvalue()


def test_ftp_greeting_login_and_quit(ftp_server: FTPRunning) -> None:
    client = ftp_server.connect(user=None)
    assert client.getwelcome().startswith("220 ftpd")
    assert client.login("alice", "alice-pw").startswith("230")
    assert client.pwd() == "/"
    assert client.quit().startswith("221")


def test_ftp_wrong_password_is_530_and_session_continues(ftp_server: FTPRunning) -> None:
    client = ftp_server.connect(user=None)
    with pytest.raises(ftplib.error_perm, match="^530"):
        client.login("alice", "wrong")
    assert client.login("alice", "alice-pw").startswith("230")
    client.close()


def test_ftp_failures_count_for_the_framed_listener_too(ftp_factory) -> None:
    server = ftp_factory(login_max_failures=2)
    client = server.connect(user=None)
    for _ in range(2):
        with pytest.raises(ftplib.error_perm, match="^530"):
            client.login("bob", "wrong")
    from ftpd.errors import TooManyAttemptsError

    with pytest.raises(TooManyAttemptsError):
        server.framed_client("bob")  # the same brake: bob is locked on both listeners
    client.close()


def test_ftp_mkdir_cd_list_upload_download_rename_delete(ftp: ftplib.FTP) -> None:
    data = os.urandom(200_000)
    assert ftp.mkd("docs") == "/docs"
    ftp.cwd("docs")
    assert ftp.pwd() == "/docs"
    assert _store(ftp, "report.bin", data).startswith("226")
    assert _fetch(ftp, "report.bin") == data
    lines: list[str] = []
    ftp.retrlines("LIST", lines.append)
    assert len(lines) == 1 and lines[0].startswith("-rw") and lines[0].endswith(" report.bin")
    assert " 200000 " in lines[0]
    assert ftp.nlst() == ["report.bin"]
    ftp.rename("report.bin", "final.bin")
    assert ftp.nlst() == ["final.bin"]
    ftp.cwd("..")
    assert ftp.pwd() == "/"
    assert ftp.nlst("docs") == ["final.bin"]
    ftp.delete("docs/final.bin")
    ftp.rmd("docs")
    assert ftp.nlst() == []


def test_ftp_upload_records_md5_and_sizes(ftp: ftplib.FTP, ftp_server: FTPRunning) -> None:
    data = b"hello world\n" * 1000
    reply = _store(ftp, "a.txt", data)
    md5 = hashlib.md5(data).hexdigest()
    assert md5 in reply
    assert (ftp_server.home() / "a.txt").read_bytes() == data
    assert ftp.size("a.txt") == len(data)
    assert ftp.sendcmd("XMD5 a.txt") == f"250 {md5}"
    assert ftp.sendcmd("HASH a.txt") == f"213 MD5 0-{len(data)} {md5} /a.txt"
    sha1 = hashlib.sha1(data).hexdigest()
    assert ftp.sendcmd("XSHA1 a.txt") == f"250 {sha1}"
    assert ftp.sendcmd("OPTS HASH SHA-1") == "200 SHA-1"
    assert ftp.sendcmd("HASH a.txt").split()[3] == sha1


def test_ftp_upload_downloads_verified_through_the_framed_listener(
    ftp: ftplib.FTP, ftp_server: FTPRunning, tmp_path: Path
) -> None:
    data = os.urandom(100_000)
    _store(ftp, "cross.bin", data)
    conn = ftp_server.framed_client()
    try:
        target = tmp_path / "cross.bin"
        get_file(conn, "cross.bin", target)
        assert target.read_bytes() == data
        stat = conn.call("stat", path="cross.bin").data
        assert stat["checksum"] == hashlib.md5(data).hexdigest()
        source = tmp_path / "up.bin"
        source.write_bytes(data[::-1])
        put_file(conn, source, "framed.bin")
    finally:
        conn.close()
    assert _fetch(ftp, "framed.bin") == data[::-1]
    assert ftp.sendcmd("XMD5 framed.bin") == f"250 {hashlib.md5(data[::-1]).hexdigest()}"


def test_ftp_download_resumes_with_rest(ftp: ftplib.FTP) -> None:
    data = os.urandom(50_000)
    _store(ftp, "r.bin", data)
    assert _fetch(ftp, "r.bin", rest=12_345) == data[12_345:]
    with pytest.raises(ftplib.error_perm, match="^554"):
        _fetch(ftp, "r.bin", rest=60_000)


def test_ftp_mlsd_mlst_mdtm_mfmt(ftp: ftplib.FTP) -> None:
    ftp.mkd("sub")
    _store(ftp, "f.txt", b"12345")
    entries = dict(ftp.mlsd())
    assert entries["f.txt"]["type"] == "file" and entries["f.txt"]["size"] == "5"
    assert entries["sub"]["type"] == "dir" and entries["f.txt"]["perm"] == "adfrw"
    assert entries["f.txt"]["unique"] != entries["sub"]["unique"]
    reply = ftp.sendcmd("MLST f.txt")
    assert reply.startswith("250-") and "type=file;size=5;" in reply and " /f.txt" in reply
    assert "type=cdir" in ftp.sendcmd("MLST")
    assert ftp.sendcmd("MFMT 20200102030405 f.txt") == "213 Modify=20200102030405; f.txt"
    assert ftp.sendcmd("MDTM f.txt") == "213 20200102030405"
    assert ftp.sendcmd("OPTS MLST type;size;") == "200 MLST OPTS type;size;"
    assert dict(ftp.mlsd())["f.txt"] == {"type": "file", "size": "5"}


def test_ftp_x_variants_and_cdup(ftp: ftplib.FTP) -> None:
    assert ftp.sendcmd("XMKD xd").startswith('257 "/xd"')
    assert ftp.sendcmd("XCWD xd").startswith("250")
    assert ftp.sendcmd("XPWD").startswith('257 "/xd"')
    assert ftp.sendcmd("XCUP").startswith("250")
    assert ftp.sendcmd("CDUP").startswith("250")  # at / it stays at /
    assert ftp.sendcmd("XRMD xd").startswith("250")


def test_ftp_session_commands(ftp: ftplib.FTP) -> None:
    assert ftp.sendcmd("SYST") == "215 UNIX Type: L8"
    assert ftp.sendcmd("NOOP").startswith("200")
    assert ftp.sendcmd("TYPE A").startswith("200") and ftp.sendcmd("TYPE I").startswith("200")
    assert ftp.sendcmd("MODE S").startswith("200") and ftp.sendcmd("STRU F").startswith("200")
    for bad in ("TYPE E", "MODE B", "STRU R"):
        with pytest.raises(ftplib.error_perm, match="^504"):
            ftp.sendcmd(bad)
    assert ftp.sendcmd("ACCT x").startswith("202")
    assert ftp.sendcmd("ALLO 1000").startswith("200")
    with pytest.raises(ftplib.error_perm, match="^552"):
        ftp.sendcmd("ALLO 99999999999")
    assert ftp.sendcmd("OPTS UTF8 ON").startswith("200")
    help_text = ftp.sendcmd("HELP")
    assert help_text.startswith("214-") and "MLSD" in help_text
    assert ftp.sendcmd("HELP STOR").startswith("214 STOR")
    assert ftp.sendcmd("SITE HELP").startswith("214")
    assert ftp.sendcmd("STAT").startswith("211-")
    feat = ftp.sendcmd("FEAT")
    for word in ("MLST type*;size*;modify*;perm*;unique*;", "REST STREAM", "EPSV", "UTF8"):
        assert word in feat
    assert "AUTH TLS" not in feat  # no tls: configured
    assert ftp.sendcmd("CLNT test").startswith("200")


def test_ftp_stat_with_a_path_lists_on_the_control_connection(ftp: ftplib.FTP) -> None:
    _store(ftp, "s.txt", b"x")
    reply = ftp.sendcmd("STAT /")
    assert reply.startswith("213-") and " s.txt" in reply


def test_ftp_stou_makes_a_new_name(ftp: ftplib.FTP, ftp_server: FTPRunning) -> None:
    _store(ftp, "u", b"first")
    conn = ftp.transfercmd("STOU u")
    name = ftp.lastresp
    conn.sendall(b"second")
    conn.close()
    assert ftp.voidresp().startswith("226")
    names = sorted(p.name for p in ftp_server.home().iterdir() if not p.name.startswith("."))
    assert names[0] == "u" and names[1].startswith("u.") and len(names) == 2
    assert (ftp_server.home() / "u").read_bytes() == b"first"
    assert (ftp_server.home() / names[1]).read_bytes() == b"second"
    assert name == "150"


def test_ftp_rein_logs_out(ftp: ftplib.FTP) -> None:
    assert ftp.sendcmd("REIN").startswith("220")
    with pytest.raises(ftplib.error_perm, match="^530"):
        ftp.pwd()
    ftp.login("bob", "bob-pw")
    assert ftp.pwd() == "/"


def test_ftp_rename_sequence_rules(ftp: ftplib.FTP) -> None:
    with pytest.raises(ftplib.error_perm, match="^503"):
        ftp.sendcmd("RNTO x")
    with pytest.raises(ftplib.error_perm, match="^550"):
        ftp.sendcmd("RNFR missing")
    _store(ftp, "a", b"a")
    ftp.sendcmd("RNFR a")
    ftp.sendcmd("NOOP")
    with pytest.raises(ftplib.error_perm, match="^503"):
        ftp.sendcmd("RNTO b")  # RNTO must follow RNFR at once


def test_ftp_missing_and_refused_paths_are_550(ftp: ftplib.FTP, ftp_server: FTPRunning) -> None:
    outside = ftp_server.project.root / "secret.txt"
    outside.write_text("secret")
    os.symlink(outside, ftp_server.home() / "link")
    for command in (
        "RETR missing",
        "CWD missing",
        "SIZE missing",
        "DELE missing",
        "RETR ../bob/x",
        "CWD /.ftpd",
        "RETR link",
        "SIZE /.ftpd/partial",
        "MDTM link",
    ):
        with pytest.raises(ftplib.error_perm, match="^550"):
            if command.startswith("RETR"):
                _fetch(ftp, command.split(" ", 1)[1])
            else:
                ftp.sendcmd(command)
    assert ftp.sendcmd("CWD ../../..").startswith("250")
    assert ftp.pwd() == "/"  # .. stops at the home


def test_ftp_bad_names_are_553(ftp: ftplib.FTP) -> None:
    with pytest.raises(ftplib.error_perm, match="^553"):
        ftp.sendcmd("MKD a\\b")
    with pytest.raises(ftplib.error_perm, match="^553"):
        ftp.sendcmd("MKD " + "x" * 300)


def test_ftp_users_are_isolated(ftp_server: FTPRunning) -> None:
    alice = ftp_server.connect("alice")
    bob = ftp_server.connect("bob")
    _store(alice, "mine.txt", b"alice")
    assert bob.nlst() == []
    with pytest.raises(ftplib.error_perm, match="^550"):
        _fetch(bob, "/mine.txt")
    alice2 = ftp_server.connect("alice2")
    with pytest.raises(ftplib.error_perm, match="^550"):
        _fetch(alice2, "../alice/mine.txt")
    for client in (alice, bob, alice2):
        client.close()


def test_ftp_non_utf8_names_never_break_a_listing(ftp: ftplib.FTP, ftp_server: FTPRunning) -> None:
    home = os.fsencode(ftp_server.home())
    with open(home + b"/caf\xe9.txt", "wb") as f:
        f.write(b"latin-1 name")
    with open(home + b"/new\nline", "wb") as f:
        f.write(b"x")
    _store(ftp, "ok.txt", b"ok")
    names = ftp.nlst()
    assert "caf\\xe9.txt" in names and "new\\x0aline" in names and "ok.txt" in names
    lines: list[str] = []
    ftp.retrlines("LIST", lines.append)
    assert len(lines) == 3
    assert len(dict(ftp.mlsd())) == 3
    with pytest.raises(ftplib.error_perm, match="^55"):
        _fetch(ftp, "caf\\xe9.txt")
    assert ftp.sendcmd("NOOP").startswith("200")  # the session goes on


def test_ftp_utf8_names_round_trip(ftp: ftplib.FTP, ftp_server: FTPRunning) -> None:
    name = "备份 é.txt"
    _store(ftp, name, b"unicode")
    assert ftp.nlst() == [name]
    assert _fetch(ftp, name) == b"unicode"
    assert (ftp_server.home() / name).read_bytes() == b"unicode"


def test_ftp_empty_file_and_overwrite(ftp: ftplib.FTP, ftp_server: FTPRunning) -> None:
    _store(ftp, "e", b"")
    assert (ftp_server.home() / "e").read_bytes() == b""
    _store(ftp, "e", b"longer content")
    _store(ftp, "e", b"short")
    assert (ftp_server.home() / "e").read_bytes() == b"short"
    usage = ftp_server.services.ledgers.ledger("alice", lambda: (0, 0, True)).usage()
    assert usage.reserved == 0


def test_ftp_stor_onto_a_directory_is_550(ftp: ftplib.FTP) -> None:
    ftp.mkd("d")
    with pytest.raises(ftplib.error_perm, match="^550"):
        _store(ftp, "d", b"x")
    with pytest.raises(ftplib.error_perm, match="^550"):
        ftp.delete("d")


def test_ftp_epsv_and_epsv_all(ftp: ftplib.FTP) -> None:
    ftp.af = 0
    assert ftp.sendcmd("EPSV").startswith("229 Entering Extended Passive Mode (|||")
    with pytest.raises(ftplib.error_perm, match="^522"):
        ftp.sendcmd("EPSV 2")
    assert ftp.sendcmd("EPSV ALL").startswith("200")
    with pytest.raises(ftplib.error_perm, match="^503"):
        ftp.sendcmd("PASV")
    ftp.sendcmd("EPSV 1")


def test_ftp_abor_without_transfer(ftp: ftplib.FTP) -> None:
    assert ftp.sendcmd("ABOR").startswith("225")
    ftp.sendcmd("PASV")
    assert ftp.sendcmd("ABOR").startswith("226")


def test_ftp_abor_during_download_answers_426_then_226(ftp_server: FTPRunning) -> None:
    ftp = ftp_server.connect("bob")  # no quota
    _store(ftp, "big", os.urandom(1 << 20) * 64)
    conn = ftp.transfercmd("RETR big")
    conn.recv(65536)
    ftp.putline("ABOR")
    conn.close()
    first = ftp.getline()
    second = ftp.getline()
    assert first.startswith("426") and second.startswith("226")
    assert ftp.sendcmd("NOOP").startswith("200")
