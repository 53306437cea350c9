"""FTPS (RFC 4217): AUTH TLS with the top-level certificate, PROT P data connections that
must resume the control connection's TLS session, and uploads cut without close_notify
never installed."""

from __future__ import annotations

import ftplib
import io
import os
import socket
import ssl

import pytest

from tests.conftest import PASSWORDS
from tests.ftp.conftest import TIMEOUT_S, FTPRunning


def _context(server: FTPRunning) -> ssl.SSLContext:
    context = ssl.create_default_context()
    assert server.ca is not None
    server.ca.configure_trust(context)
    return context


def test_ftps_login_list_upload_download(ftps_server: FTPRunning) -> None:
    client = ftps_server.connect(tls=True)
    assert "AUTH TLS" in client.sendcmd("FEAT")
    data = os.urandom(3 * 1024 * 1024 + 17)
    client.mkd("secure")
    client.cwd("secure")
    assert client.storbinary("STOR s.bin", io.BytesIO(data)).startswith("226")
    out = io.BytesIO()
    client.retrbinary("RETR s.bin", out.write)
    assert out.getvalue() == data
    assert (ftps_server.home() / "secure" / "s.bin").read_bytes() == data
    assert client.nlst() == ["s.bin"]
    assert "data connections protected: yes" in client.sendcmd("STAT")
    client.quit()


def test_ftps_many_uploads_are_never_cut(ftps_server: FTPRunning) -> None:
    """Session tickets on data connections cut uploads (issue 10); none are sent."""
    client = ftps_server.connect(tls=True)
    for i in range(20):
        payload = os.urandom(64 * 1024 + i)
        assert client.storbinary(f"STOR f{i}", io.BytesIO(payload)).startswith("226")
        assert (ftps_server.home() / f"f{i}").read_bytes() == payload
    client.quit()


def test_ftps_data_connection_without_session_reuse_is_refused(ftps_server: FTPRunning) -> None:
    client = ftplib.FTP_TLS(context=_context(ftps_server), timeout=TIMEOUT_S)
    client.connect(ftps_server.host, ftps_server.port)
    client.auth()
    client.login("alice", PASSWORDS["alice"])
    client.prot_p()
    with pytest.raises((ftplib.error_temp, ssl.SSLError, OSError)) as info:
        client.retrlines("LIST", lambda line: None)
    if isinstance(info.value, ftplib.error_temp):
        assert str(info.value).startswith("425")
    client.close()


def test_ftps_session_reuse_can_be_switched_off(ftp_factory) -> None:
    server = ftp_factory(tls=True, ftp={"tls_session_reuse": False})
    client = ftplib.FTP_TLS(context=_context(server), timeout=TIMEOUT_S)
    client.connect(server.host, server.port)
    client.auth()
    client.login("alice", PASSWORDS["alice"])
    client.prot_p()
    client.storbinary("STOR x", io.BytesIO(b"plain ftplib works"))
    assert (server.home() / "x").read_bytes() == b"plain ftplib works"
    client.quit()


def test_ftps_require_tls_refuses_user_before_auth(ftp_factory) -> None:
    server = ftp_factory(tls=True, ftp={"require_tls": True})
    plain = server.connect(user=None)
    with pytest.raises(ftplib.error_perm, match="^530"):
        plain.sendcmd("USER alice")
    with pytest.raises(ftplib.error_perm, match="^530"):
        plain.sendcmd("PASS alice-pw")
    plain.close()
    secure = server.connect(tls=True)
    assert secure.pwd() == "/"
    secure.quit()


def test_ftps_prot_c_transfers_in_clear_after_auth(ftps_server: FTPRunning) -> None:
    client = ftps_server.connect(tls=True)
    assert isinstance(client, ftplib.FTP_TLS)
    client.prot_c()
    client.storbinary("STOR c.txt", io.BytesIO(b"clear data"))
    assert (ftps_server.home() / "c.txt").read_bytes() == b"clear data"
    client.quit()


def test_ftps_sequence_rules(ftps_server: FTPRunning) -> None:
    client = ftps_server.connect(user=None)
    with pytest.raises(ftplib.error_perm, match="^503"):
        client.sendcmd("PBSZ 0")
    with pytest.raises(ftplib.error_perm, match="^503"):
        client.sendcmd("PROT P")
    client.close()


def test_ftps_upload_cut_without_close_notify_is_not_installed(ftps_server: FTPRunning) -> None:
    client = ftps_server.connect(tls=True)
    client.voidcmd("TYPE I")
    conn = client.transfercmd("STOR cut.bin")
    conn.sendall(b"q" * 100_000)
    conn.shutdown(socket.SHUT_RDWR)  # TCP FIN, no TLS close_notify
    conn.close()
    with pytest.raises(ftplib.error_temp, match="^426"):
        client.voidresp()
    assert not (ftps_server.home() / "cut.bin").exists()
    assert client.size("cut.bin") == 100_000  # kept for a resume
    client.quit()


def test_ftps_plaintext_after_auth_is_discarded(ftps_server: FTPRunning) -> None:
    """Lines sent in clear behind AUTH TLS are never run inside the TLS session
    (the STARTTLS command injection)."""
    raw = socket.create_connection((ftps_server.host, ftps_server.port), timeout=TIMEOUT_S)
    reader = raw.makefile("rb")
    assert reader.readline().startswith(b"220")
    raw.sendall(b"AUTH TLS\r\nUSER alice\r\n")
    assert reader.readline().startswith(b"234")
    secure = _context(ftps_server).wrap_socket(raw, server_hostname="127.0.0.1")
    secure.sendall(b"PASS alice-pw\r\n")
    assert secure.recv(1024).startswith(b"503")  # no USER was taken
    secure.close()


def test_ftp_auth_without_tls_configured_is_502(ftp: ftplib.FTP) -> None:
    with pytest.raises(ftplib.error_perm, match="^502"):
        ftp.sendcmd("AUTH TLS")
    assert ftp.sendcmd("NOOP").startswith("200")
