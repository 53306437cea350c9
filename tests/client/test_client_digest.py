"""``ftp-client --digest sha1``: the faster negotiated digest, end to end through the CLI."""

from __future__ import annotations

import hashlib
import os

from ftp_client.cli import main
from tests.conftest import PASSWORDS


def test_client_digest_sha1_put_and_get_verified(server, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FTP_PASSWORD", PASSWORDS["bob"])
    monkeypatch.chdir(tmp_path)
    small, big = tmp_path / "small.bin", tmp_path / "big.bin"
    small.write_bytes(os.urandom(1000))
    big.write_bytes(os.urandom(2 * 1024 * 1024 + 3))  # over the inline limit: two-phase
    addr = f"{server.host}:{server.port}"
    cmds = "put small.bin; put big.bin; get big.bin back.bin; mkdir d; put -r . d/tree"
    status = main(["-q", "--digest", "sha1", "-u", "bob", "-c", cmds, addr])
    out = capsys.readouterr().out
    assert status == 0, out
    assert f"sha1 {hashlib.sha1(big.read_bytes()).hexdigest()} verified" in out
    assert (tmp_path / "back.bin").read_bytes() == big.read_bytes()
    home = server.project.home("bob")
    assert (home / "d" / "tree" / "small.bin").read_bytes() == small.read_bytes()


def test_client_digest_unknown_is_a_usage_error(server, capsys):
    assert (
        main(["--digest", "crc32", "-u", "bob", "-c", "pwd", f"{server.host}:{server.port}"]) == 2
    )
