"""Pure tests of conf/ftpd.yaml loading: defaults, paths, and located errors for bad values."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from ftpd import config
from ftpd.config import ServerConfig, TLSConfig
from ftpd.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "conf" / "ftpd.yaml"


def _write(tmp_path: Path, text: str, name: str = "ftpd.yaml") -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def _problems(path: Path) -> list[tuple[str, int | None, str, str]]:
    with pytest.raises(ConfigError) as info:
        config.load(path)
    assert all(p[0] == str(path) for p in info.value.problems)
    return info.value.problems


def test_config_shipped_file_loads() -> None:
    cfg = config.load(SHIPPED)
    assert cfg.path == SHIPPED
    assert (cfg.host, cfg.port) == ("127.0.0.1", 2121)
    assert cfg.home_root == ROOT / "home"
    assert cfg.users_file == ROOT / "conf" / "users.yaml"
    assert cfg.log_dir == ROOT / "logs"
    assert cfg.log_max_bytes == 10 * 1024 * 1024
    assert cfg.tls is None and cfg.fsync is True
    assert cfg.users_file.is_file()


def test_config_shipped_values_match_defaults() -> None:
    """The dataclass defaults are documented as the shipped values."""
    cfg, default = config.load(SHIPPED), ServerConfig()
    for name in (
        "host",
        "port",
        "log_level",
        "log_max_bytes",
        "log_backup_count",
        "max_connections",
        "max_per_ip",
        "idle_timeout",
        "login_timeout",
        "login_max_failures",
        "login_lockout",
        "login_delay",
        "grace_period",
        "fsync",
        "tls",
    ):
        assert getattr(cfg, name) == getattr(default, name), name


@pytest.mark.parametrize("text", ["", "# only comments\n"])
def test_config_empty_file_gives_defaults(tmp_path: Path, text: str) -> None:
    cfg = config.load(_write(tmp_path, text))
    assert cfg.port == 2121 and cfg.idle_timeout == 300.0
    assert cfg.path == tmp_path / "ftpd.yaml"


def test_config_relative_paths_resolve_against_config_folder(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "home_root: data/home\nusers_file: ../users.yaml\nlog_dir: null\n",
        name="etc/ftpd/ftpd.yaml",
    )
    cfg = config.load(path)
    assert cfg.home_root == tmp_path / "etc" / "ftpd" / "data" / "home"
    assert cfg.users_file == tmp_path / "etc" / "users.yaml"
    assert cfg.log_dir is None
    assert not (tmp_path / "etc" / "ftpd" / "data").exists()  # loading creates nothing


def test_config_relative_config_path_is_made_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _write(tmp_path, "home_root: home\n", name="conf/ftpd.yaml")
    monkeypatch.chdir(tmp_path)
    cfg = config.load(Path("conf/ftpd.yaml"))
    assert cfg.home_root == tmp_path / "conf" / "home"
    assert cfg.path == tmp_path / "conf" / "ftpd.yaml"


def test_config_absolute_paths_kept(tmp_path: Path) -> None:
    path = _write(
        tmp_path, f"home_root: {tmp_path / 'abs'}\nlog_dir: {tmp_path / 'l'}\n", name="c/ftpd.yaml"
    )
    cfg = config.load(path)
    assert (cfg.home_root, cfg.log_dir) == (tmp_path / "abs", tmp_path / "l")


def test_config_values_converted(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "port: 0\nlog_level: debug\nlog_max_bytes: 1MiB\nidle_timeout: 2\nlogin_delay: 0.25\n"
        "log_backup_count: 0\nfsync: false\nhost: '::'\n",
    )
    cfg = config.load(path)
    assert (cfg.port, cfg.log_level, cfg.log_max_bytes) == (0, "DEBUG", 1024 * 1024)
    assert cfg.idle_timeout == 2.0 and isinstance(cfg.idle_timeout, float)
    assert (cfg.login_delay, cfg.log_backup_count, cfg.fsync, cfg.host) == (0.25, 0, False, "::")


def test_config_longest_timeout_works_with_sockets(tmp_path: Path) -> None:
    """Regression: .nan/.inf/1e12 used to load, then fail in every session's settimeout()."""
    cfg = config.load(_write(tmp_path, "idle_timeout: 100000000\n"))
    with socket.socket() as sock:
        sock.settimeout(cfg.idle_timeout)
        assert sock.gettimeout() == 1e8


def test_config_tls(tmp_path: Path) -> None:
    (tmp_path / "cert.pem").write_text("c")
    (tmp_path / "key.pem").write_text("k")
    cfg = config.load(_write(tmp_path, "tls:\n  cert: cert.pem\n  key: key.pem\n"))
    assert cfg.tls == TLSConfig(tmp_path / "cert.pem", tmp_path / "key.pem")


BAD_VALUES = [
    ("port", "70000"),
    ("port", "-1"),
    ("port", "x"),
    ("port", "true"),
    ("port", "21.5"),
    ("host", "''"),
    ("host", "[a]"),
    ("max_connections", "0"),
    ("max_connections", "-3"),
    ("max_connections", "'10'"),
    ("max_per_ip", "0"),
    ("login_max_failures", "1.5"),
    ("log_backup_count", "-1"),
    ("idle_timeout", "-1"),
    ("idle_timeout", "0"),
    ("idle_timeout", "soon"),
    ("idle_timeout", "true"),
    ("idle_timeout", ".nan"),
    ("idle_timeout", ".inf"),
    ("idle_timeout", "1.0e+12"),  # past time_t for settimeout()
    ("login_timeout", "1000000000000"),
    ("login_lockout", "100000001"),
    ("login_timeout", "-.inf"),
    ("login_lockout", "null"),
    ("login_delay", "-0.5"),
    ("grace_period", "[]"),
    ("log_level", "LOUD"),
    ("log_level", "5"),
    ("fsync", "'yes'"),
    ("fsync", "1"),
    ("fsync", "maybe"),
    ("log_max_bytes", "1XB"),
    ("log_max_bytes", "100"),
    ("log_max_bytes", "-1MiB"),
    ("home_root", "''"),
    ("home_root", "5"),
    ("users_file", "null"),
    ("log_dir", "[logs]"),
    ("tls", "{cert: missing.pem, key: missing.pem}"),
    ("tls", "{cert: ftpd.yaml}"),
    ("tls", "{cert: ftpd.yaml, key: ftpd.yaml, ca: ftpd.yaml}"),
    ("tls", "{cert: 5, key: ftpd.yaml}"),
    ("tls", "on"),
]


@pytest.mark.parametrize(("key", "value"), BAD_VALUES)
def test_config_bad_value_names_file_line_key(tmp_path: Path, key: str, value: str) -> None:
    path = _write(
        tmp_path,
        f"# settings\nhost: 127.0.0.1\n\n{key}: {value}\n"
        if key != "host"
        else f"# settings\nport: 21\n\n{key}: {value}\n",
    )
    [(where, line, name, message)] = _problems(path)
    assert (where, line, name) == (str(path), 4, key)
    assert message
    with pytest.raises(ConfigError) as info:
        config.load(path)
    assert str(info.value).startswith(f"{path}:4: {key}: ")


def test_config_tls_missing_file_is_named(tmp_path: Path) -> None:
    (tmp_path / "cert.pem").write_text("c")
    path = _write(tmp_path, "tls:\n  cert: cert.pem\n  key: nope.pem\n")
    [(_, line, key, message)] = _problems(path)
    assert (line, key) == (1, "tls")
    assert "nope.pem" in message


def test_config_unknown_key(tmp_path: Path) -> None:
    [(_, line, key, message)] = _problems(_write(tmp_path, "port: 21\nprot: 22\n"))
    assert (line, key) == (2, "prot")
    assert "unknown key" in message and "port" in message


def test_config_path_is_not_a_key(tmp_path: Path) -> None:
    [(_, _, key, _)] = _problems(_write(tmp_path, "path: /etc\n"))
    assert key == "path"


def test_config_reports_every_problem_at_once(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "port: 70000\nhost: 127.0.0.1\nmax_connections: 0\nidle_timeout: -1\nlog_level: LOUD\n"
        "fsync: 'yes'\ncolour: blue\nlog_max_bytes: 1XB\n",
    )
    located = [(p[1], p[2]) for p in _problems(path)]
    assert located == [
        (1, "port"),
        (3, "max_connections"),
        (4, "idle_timeout"),
        (5, "log_level"),
        (6, "fsync"),
        (7, "colour"),
        (8, "log_max_bytes"),
    ]


@pytest.mark.parametrize("text", ["- a\n- b\n", "just text\n", "42\n"])
def test_config_not_a_mapping(tmp_path: Path, text: str) -> None:
    assert _problems(_write(tmp_path, text))


def test_config_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "missing.yaml"
    [(where, line, _, message)] = _problems(path)
    assert (where, line, message) == (str(path), None, "file not found")


def test_config_yaml_syntax_error_has_line(tmp_path: Path) -> None:
    [(_, line, _, message)] = _problems(_write(tmp_path, "port: 21\nhost: [1, 2\nfsync: true\n"))
    assert line is not None and line >= 2
    assert "YAML syntax error" in message


def test_config_with_overrides_is_a_new_object() -> None:
    cfg = ServerConfig()
    other = cfg.with_overrides(port=0, host=None)
    assert (other.port, other.host, cfg.port) == (0, "127.0.0.1", 2121)
    with pytest.raises(AttributeError):
        cfg.port = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.1.2.3", True),
        ("::1", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("192.168.1.1", False),
        ("example.com", False),
    ],
)
def test_config_is_loopback(host: str, loopback: bool) -> None:
    assert config.is_loopback(host) is loopback
