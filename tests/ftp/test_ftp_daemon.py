"""The daemon process with both listeners: the shipped configuration serves FTP beside the
framed protocol (curl lists the demo home), reload reaches FTP sessions, and a graceful
stop says goodbye to them."""

from __future__ import annotations

import ftplib
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import FAST, ROOT, StderrLines
from tests.ftp.conftest import TIMEOUT_S, free_port_range, need_tool


class Daemon:
    """``python -m ftpd serve`` on a copy of conf/, with both ports read from its lines."""

    def __init__(self, conf: Path) -> None:
        self.conf = conf
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ftpd", "serve", "--config", str(conf / "ftpd.yaml")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            cwd=conf.parent,
        )
        self.lines = StderrLines(self.proc.stderr)
        framed = self.lines.wait_for(re.compile(r"LISTENING host=\S+ port=(\d+)"), 20)
        ftp = self.lines.wait_for(re.compile(r"LISTENING ftp host=\S+ port=(\d+)"), 20)
        if framed is None or ftp is None:
            self.stop()
            raise RuntimeError("daemon did not start:\n" + "\n".join(self.lines.lines))
        self.framed_port = _port(framed)
        self.ftp_port = _port(ftp)

    def wait_for(self, pattern: str, timeout: float = 20) -> str:
        line = self.lines.wait_for(re.compile(pattern), timeout)
        assert line is not None, "\n".join(self.lines.lines[-30:])
        return line

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def _port(line: str) -> int:
    found = re.search(r"port=(\d+)", line)
    assert found is not None
    return int(found.group(1))


@pytest.fixture
def shipped(tmp_path: Path) -> Iterator[Daemon]:
    """The shipped conf/, on free ports (the values README states are checked elsewhere)."""
    conf = tmp_path / "conf"
    shutil.copytree(ROOT / "conf", conf)
    (tmp_path / "home").mkdir()
    (tmp_path / "logs").mkdir()
    low, high = free_port_range(10)
    text = (conf / "ftpd.yaml").read_text(encoding="utf-8")
    text = re.sub(r"(?m)^port: 2121", "port: 0", text)
    text = re.sub(r"(?m)^  port: 2100", "  port: 0", text)
    text = re.sub(r"(?m)^  passive_ports: 50000-50100", f"  passive_ports: {low}-{high}", text)
    text = re.sub(r"(?m)^fsync: true", "fsync: false", text)
    (conf / "ftpd.yaml").write_text(text, encoding="utf-8")
    daemon = Daemon(conf)
    yield daemon
    daemon.stop()


def test_ftp_daemon_shipped_config_serves_ftp_and_curl_lists_the_demo_home(
    shipped: Daemon,
) -> None:
    curl = need_tool("curl")
    home = shipped.conf.parent / "home" / "demo"
    client = ftplib.FTP()
    client.connect("127.0.0.1", shipped.ftp_port, timeout=TIMEOUT_S)
    client.login("demo", "demo")
    client.storbinary("STOR hello.txt", __import__("io").BytesIO(b"hello"))
    client.quit()
    assert (home / "hello.txt").read_bytes() == b"hello"
    done = subprocess.run(
        [curl, "-sS", "-u", "demo:demo", f"ftp://127.0.0.1:{shipped.ftp_port}/"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0 and done.stdout.rstrip().endswith(" hello.txt")
    shipped.wait_for(r"CMD proto=ftp ip=127\.0\.0\.1 user=demo LIST -> 226")


def test_ftp_daemon_reload_and_graceful_stop(shipped: Daemon) -> None:
    client = ftplib.FTP()
    client.connect("127.0.0.1", shipped.ftp_port, timeout=TIMEOUT_S)
    client.login("demo", "demo")
    users = shipped.conf / "users.yaml"
    users.write_text(
        users.read_text(encoding="utf-8") + f'  zed:\n    password: "{FAST.hash("zed-pw")}"\n',
        encoding="utf-8",
    )
    shipped.proc.send_signal(signal.SIGHUP)
    shipped.wait_for(r"RELOADED users=2")
    other = ftplib.FTP()
    other.connect("127.0.0.1", shipped.ftp_port, timeout=TIMEOUT_S)
    assert other.login("zed", "zed-pw").startswith("230")
    other.quit()
    shipped.proc.send_signal(signal.SIGTERM)
    assert client.getline().startswith("421")
    assert shipped.proc.wait(20) == 0
