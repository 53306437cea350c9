"""Real FTP clients against the real listener: curl, lftp and rclone.

Each does what a person does with it: log in, list, cd, mkdir, upload, download,
rename, delete, resume an interrupted transfer where the client can (curl ``-C -``,
lftp ``reput``/``get -c``), the same over FTPS, and meets the quota (552) and the jail
(550).  A client missing here is skipped, except in CI, where .ci/run installs them all
and a missing one fails.  Every client runs under a timeout.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import PASSWORDS
from tests.ftp.conftest import FTPRunning, need_tool

RUN_TIMEOUT_S = 60
MiB = 1024 * 1024


def _run(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        env={**os.environ, **(env or {})},
        check=False,
    )


def _payload(tmp_path: Path, name: str, size: int) -> Path:
    path = tmp_path / name
    path.write_bytes(os.urandom(size))
    return path


# --- curl --------------------------------------------------------------------------------


def _curl(server: FTPRunning, *args: str, tls: bool = False) -> subprocess.CompletedProcess[str]:
    curl = need_tool("curl")
    base = [curl, "-sS", "--max-time", "30", "-u", f"alice:{PASSWORDS['alice']}"]
    if tls:
        base += ["--ssl-reqd", "--cacert", str(server.ca_file)]
    return _run(base + list(args))


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "ftps"])
def test_curl_list_mkdir_upload_download_rename_delete(
    ftp_factory: Callable[..., FTPRunning], tmp_path: Path, tls: bool
) -> None:
    server = ftp_factory(tls=tls)
    base = f"ftp://{server.host}:{server.port}"
    source = _payload(tmp_path, "src.bin", 2 * MiB + 3)
    done = _curl(server, "--ftp-create-dirs", "-T", str(source), f"{base}/docs/a.bin", tls=tls)
    assert done.returncode == 0, done.stderr
    assert (server.home() / "docs" / "a.bin").read_bytes() == source.read_bytes()
    listing = _curl(server, f"{base}/docs/", tls=tls)
    assert listing.returncode == 0 and listing.stdout.rstrip().endswith(" a.bin")
    target = tmp_path / "down.bin"
    got = _curl(server, "-o", str(target), f"{base}/docs/a.bin", tls=tls)
    assert got.returncode == 0 and target.read_bytes() == source.read_bytes()
    quoted = ["-Q", "RNFR docs/a.bin", "-Q", "RNTO docs/b.bin", "-Q", "MKD more"]
    assert _curl(server, *quoted, f"{base}/", tls=tls).returncode == 0
    assert (server.home() / "docs" / "b.bin").exists() and (server.home() / "more").is_dir()
    removed = _curl(server, "-Q", "DELE docs/b.bin", "-Q", "RMD more", f"{base}/", tls=tls)
    assert removed.returncode == 0
    assert not (server.home() / "docs" / "b.bin").exists()


def test_curl_lists_the_home_as_the_issue_says(ftp_server: FTPRunning) -> None:
    (ftp_server.home()).mkdir(parents=True, exist_ok=True)
    (ftp_server.home() / "hello.txt").write_text("hi")
    done = _curl(ftp_server, f"ftp://{ftp_server.host}:{ftp_server.port}/")
    assert done.returncode == 0 and "hello.txt" in done.stdout


def test_curl_resumes_an_interrupted_upload_and_download(
    ftp_server: FTPRunning, tmp_path: Path
) -> None:
    base = f"ftp://{ftp_server.host}:{ftp_server.port}"
    source = _payload(tmp_path, "big.bin", 3 * MiB)
    head = tmp_path / "head.bin"
    head.write_bytes(source.read_bytes()[:MiB])
    assert _curl(ftp_server, "-T", str(head), f"{base}/big.bin").returncode == 0
    resumed = _curl(ftp_server, "-C", "-", "-T", str(source), f"{base}/big.bin")
    assert resumed.returncode == 0, resumed.stderr
    assert (ftp_server.home() / "big.bin").read_bytes() == source.read_bytes()
    target = tmp_path / "down.bin"
    target.write_bytes(source.read_bytes()[: MiB + 5])
    got = _curl(ftp_server, "-C", "-", "-o", str(target), f"{base}/big.bin")
    assert got.returncode == 0 and target.read_bytes() == source.read_bytes()


def test_curl_quota_and_jail_refusals(ftp_server: FTPRunning, tmp_path: Path) -> None:
    base = f"ftp://{ftp_server.host}:{ftp_server.port}"
    curl = need_tool("curl")
    big = _payload(tmp_path, "big.bin", 2 * MiB)
    over = _run([curl, "-sS", "-u", "carol:carol-pw", "-T", str(big), f"{base}/big.bin"])
    assert over.returncode == 70, over.stderr  # CURLE_REMOTE_DISK_FULL: the 552
    assert not (ftp_server.home("carol") / "big.bin").exists()
    outside = ftp_server.project.root / "secret.txt"
    outside.write_text("secret")
    ftp_server.home().mkdir(parents=True, exist_ok=True)
    os.symlink(outside, ftp_server.home() / "link")
    refused = _curl(ftp_server, f"{base}/link")
    assert refused.returncode != 0 and "secret" not in refused.stdout
    reserved = _curl(ftp_server, f"{base}/.ftpd/partial/")
    assert reserved.returncode != 0


# --- lftp --------------------------------------------------------------------------------


def _lftp(server: FTPRunning, script: str, tls: bool = False, user: str = "alice") -> str:
    lftp = need_tool("lftp")
    settings = "set net:max-retries 1; set net:timeout 15; set cmd:fail-exit yes; "
    if tls:
        settings += (
            f"set ssl:ca-file {server.ca_file}; set ftp:ssl-force yes; "
            "set ftp:ssl-protect-data yes; "
        )
    else:
        settings += "set ftp:ssl-allow no; "
    opened = f"open -u {user},{PASSWORDS[user]} ftp://{server.host}:{server.port}; "
    done = _run([lftp, "-c", settings + opened + script], env={"HOME": str(server.project.root)})
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "ftps"])
def test_lftp_session(ftp_factory: Callable[..., FTPRunning], tmp_path: Path, tls: bool) -> None:
    server = ftp_factory(tls=tls)
    source = _payload(tmp_path, "src.bin", 2 * MiB + 1)
    target = tmp_path / "back.bin"
    out = _lftp(
        server,
        f"mkdir lf; cd lf; put {source} -o a.bin; ls; get a.bin -o {target}; "
        "mv a.bin b.bin; cls -1; rm b.bin; cd ..; rmdir lf; cls -1",
        tls=tls,
    )
    assert " a.bin" in out and "b.bin" in out
    assert target.read_bytes() == source.read_bytes()
    assert not (server.home() / "lf").exists()


def test_lftp_reput_and_get_c_resume(ftp_server: FTPRunning, tmp_path: Path) -> None:
    source = _payload(tmp_path, "src.bin", 3 * MiB)
    half = tmp_path / "half.bin"
    half.write_bytes(source.read_bytes()[: MiB + 77])
    target = tmp_path / "got.bin"
    target.write_bytes(source.read_bytes()[:1000])
    _lftp(ftp_server, f"put {half} -o r.bin; reput {source} -o r.bin; get -c r.bin -o {target}")
    assert (ftp_server.home() / "r.bin").read_bytes() == source.read_bytes()
    assert target.read_bytes() == source.read_bytes()


def test_lftp_quota_and_jail_refusals(ftp_server: FTPRunning, tmp_path: Path) -> None:
    lftp = need_tool("lftp")
    big = _payload(tmp_path, "big.bin", 2 * MiB)
    opened = f"open -u carol,carol-pw ftp://{ftp_server.host}:{ftp_server.port}; "
    base = "set ftp:ssl-allow no; set net:max-retries 1; set cmd:fail-exit yes; "
    over = _run([lftp, "-c", base + opened + f"put {big} -o big.bin"])
    assert over.returncode != 0 and "552" in over.stderr
    assert not (ftp_server.home("carol") / "big.bin").exists()
    jail = _run([lftp, "-c", base + opened + "cd /.ftpd/partial"])
    assert jail.returncode != 0 and "550" in jail.stderr


# --- rclone (the fourth client) ----------------------------------------------------------


def _rclone(server: FTPRunning, *args: str, tls: bool = False, user: str = "alice") -> str:
    rclone = need_tool("rclone")
    obscured = _run([rclone, "obscure", PASSWORDS[user]]).stdout.strip()
    flags = [
        "--ftp-host", server.host, "--ftp-port", str(server.port), "--ftp-user", user,
        "--ftp-pass", obscured, "--retries", "1", "--low-level-retries", "1",
        "--contimeout", "10s", "--timeout", "20s",
    ]  # fmt: skip
    if tls:
        flags += ["--ftp-explicit-tls", "--ca-cert", str(server.ca_file)]
    done = _run([rclone, *args, *flags], env={"RCLONE_CONFIG": os.devnull})
    if done.returncode != 0:
        raise AssertionError(f"rclone {args[0]} failed: {done.stderr[-2000:]}")
    return done.stdout


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "ftps"])
def test_rclone_session(ftp_factory: Callable[..., FTPRunning], tmp_path: Path, tls: bool) -> None:
    server = ftp_factory(tls=tls)
    source = _payload(tmp_path, "src.bin", MiB + 9)
    target = tmp_path / "back.bin"
    _rclone(server, "mkdir", ":ftp:/rc", tls=tls)
    _rclone(server, "copyto", str(source), ":ftp:/rc/a.bin", tls=tls)
    assert (server.home() / "rc" / "a.bin").read_bytes() == source.read_bytes()
    assert _rclone(server, "lsf", ":ftp:/rc", tls=tls).split() == ["a.bin"]
    _rclone(server, "copyto", ":ftp:/rc/a.bin", str(target), tls=tls)
    assert target.read_bytes() == source.read_bytes()
    _rclone(server, "moveto", ":ftp:/rc/a.bin", ":ftp:/rc/b.bin", tls=tls)
    assert _rclone(server, "lsf", ":ftp:/rc", tls=tls).split() == ["b.bin"]
    _rclone(server, "deletefile", ":ftp:/rc/b.bin", tls=tls)
    _rclone(server, "rmdir", ":ftp:/rc", tls=tls)
    assert not (server.home() / "rc").exists()


def test_rclone_quota_and_jail_refusals(ftp_server: FTPRunning, tmp_path: Path) -> None:
    big = _payload(tmp_path, "big.bin", 2 * MiB)
    with pytest.raises(AssertionError, match="552"):
        _rclone(ftp_server, "copyto", str(big), ":ftp:/big.bin", user="carol")
    names = [p.name for p in ftp_server.home("carol").iterdir() if not p.name.startswith(".")]
    assert not any(n.startswith("big.bin") for n in names)
    with pytest.raises(AssertionError, match="550|not found|doesn't exist"):
        _rclone(ftp_server, "lsf", ":ftp:/.ftpd/partial")
