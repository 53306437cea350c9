"""Tests for the deployment files: conf/ftpd.service and the fail2ban filter."""

from __future__ import annotations

import configparser
import re
import shutil
import subprocess
from pathlib import Path

import pytest

CONF = Path(__file__).resolve().parents[2] / "conf"
UNIT = CONF / "ftpd.service"
FILTER = CONF / "fail2ban" / "filter.d" / "ftpd.conf"
JAIL = CONF / "fail2ban" / "jail.d" / "ftpd.local"
PREFIX = "2026-11-22 10:00:00,123 WARNING ftpd.handler "  # as ftpd.logs formats a line


def _read(path: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keys are case-sensitive
    parser.read_string(path.read_text())
    return parser


@pytest.fixture(scope="module")
def service() -> configparser.SectionProxy:
    return _read(UNIT)["Service"]


def test_unit_file_is_notify_type(service: configparser.SectionProxy) -> None:
    assert service["Type"] == "notify"


def test_unit_file_reload_sends_hup(service: configparser.SectionProxy) -> None:
    assert re.fullmatch(r"\S*kill -(s )?HUP \$MAINPID", service["ExecReload"])


def test_unit_file_runs_unprivileged(service: configparser.SectionProxy) -> None:
    assert service.get("User", "root") not in ("root", "0")
    assert service.get("Group", "root") not in ("root", "0")
    assert "AmbientCapabilities" not in service


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("PrivateTmp", "yes"),
        ("ProtectHome", "yes"),
        ("KillMode", "mixed"),
    ],
)
def test_unit_file_hardening(service: configparser.SectionProxy, key: str, value: str) -> None:
    assert service[key] == value


def test_unit_file_writable_paths(service: configparser.SectionProxy) -> None:
    assert set(service["ReadWritePaths"].split()) == {"/srv/ftpd", "/var/log/ftpd"}


def test_unit_file_allows_notify_socket(service: configparser.SectionProxy) -> None:
    assert "AF_UNIX" in service["RestrictAddressFamilies"].split()


def test_unit_file_stop_timeout_exceeds_grace(service: configparser.SectionProxy) -> None:
    timeout_s = int(service["TimeoutStopSec"].removesuffix("s"))
    assert timeout_s > 30  # the daemon's default shutdown grace period


def test_unit_file_passes_systemd_analyze(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    # ExecStart must name an existing executable or verify complains about it.
    text = re.sub(r"(?m)^ExecStart=.*$", "ExecStart=/bin/true", UNIT.read_text())
    unit = tmp_path / "ftpd.service"
    unit.write_text(text)
    try:
        result = subprocess.run(
            [analyze, "verify", str(unit)],
            check=False,  # verify exits 0 even on bad keys; the output is what counts
            capture_output=True,
            text=True,
            timeout=60,
            cwd=tmp_path,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"systemd-analyze cannot run here: {exc}")
    output = (result.stdout + result.stderr).splitlines()
    ours = [line for line in output if str(unit) in line or "ftpd.service" in line]
    if result.returncode != 0 and not ours:
        pytest.skip(f"systemd-analyze cannot run here (rc={result.returncode}): {output[:3]}")
    # Other complaints (missing units, no D-Bus in a container) are not about our file.
    bad = [line for line in ours if re.search(r"Unknown|Invalid|Failed to parse", line)]
    assert bad == []


def _failregex() -> re.Pattern[str]:
    raw = _read(FILTER)["Definition"]["failregex"].strip()
    assert "\n" not in raw, "one failregex expected"
    return re.compile(raw.replace("<HOST>", r"(?P<host>\S+)"))


@pytest.mark.parametrize(
    ("line", "host"),
    [
        (
            PREFIX + "LOGIN FAILED user='mallory' ip=203.0.113.9",
            "203.0.113.9",
        ),
        (PREFIX + "LOGIN FAILED user='' ip=::1", "::1"),
        (  # a name crafted to look like an address must not frame someone else
            PREFIX + "LOGIN FAILED user='x ip=192.0.2.1' ip=198.51.100.7",
            "198.51.100.7",
        ),
    ],
)
def test_fail2ban_filter_matches_failed_login(line: str, host: str) -> None:
    match = _failregex().search(line)
    assert match is not None
    assert match["host"] == host


def test_fail2ban_filter_ignores_successful_login() -> None:
    line = PREFIX.replace("WARNING", "INFO") + "LOGIN OK user='alice' ip=127.0.0.1"
    assert _failregex().search(line) is None


def test_fail2ban_jail_watches_daemon_log() -> None:
    jail = _read(JAIL)["ftpd"]
    assert jail["filter"] == "ftpd"
    assert jail["logpath"] == "/var/log/ftpd/ftpd.log"
    assert jail.getboolean("enabled")
