"""The daemon's settings: conf/ftpd.yaml -> a frozen ServerConfig.

Relative paths resolve against the config file's folder, so the shipped ``conf/`` works
from any cwd.  Unknown keys and bad values are errors naming the file, line and key.
This module must never set anything at runtime on a class (pyftpdlib's
``reset_server_opts`` lesson): a new config is a new object.
"""

from __future__ import annotations

import ipaddress
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from ftpd import yamldoc
from ftpd.errors import ConfigError
from ftpd.units import parse_size


@dataclass(frozen=True)
class TLSConfig:
    cert: Path
    key: Path


@dataclass(frozen=True)
class FTPConfig:
    """The ``ftp:`` section: the standard FTP/FTPS listener (absent: no such listener)."""

    host: str | None = None  # None: the top-level host
    port: int = 2100
    passive_ports: tuple[int, int] = (50000, 50100)
    passive_address: str | None = None  # advertised in PASV (NAT); None: the local address
    require_tls: bool = False  # USER and PASS refused before AUTH TLS
    tls_session_reuse: bool = True  # PROT P data connections must resume the control's
    active: bool = False  # PORT/EPRT allowed (only towards the control connection's peer)
    proxy_protocol: tuple[str, ...] = ()  # balancers whose PROXY header is taken (ftpd.proxy)


@dataclass(frozen=True)
class StorageConfig:
    """The ``storage:`` section: where homes live (docs/scale-out.md).  ``local``: under
    ``home_root`` on this machine (the default); ``s3``: key prefixes in an
    S3-compatible bucket, shared by several daemons."""

    backend: str = "local"
    endpoint_url: str | None = None
    bucket: str | None = None
    prefix: str = ""
    region: str | None = None
    access_key_id: str | None = None  # or the usual AWS_* variables / credentials file
    secret_access_key: str | None = None
    #: An upload's part (S3's minimum is 5 MiB) and how many of them are stored at once:
    #: each upload holds up to ``part_size * (parts_in_flight + 1)`` bytes of memory.
    part_size: int = 8 * 1024 * 1024
    parts_in_flight: int = 8


@dataclass(frozen=True)
class StateConfig:
    """The ``state:`` section: where quota ledgers and upload claims live.  ``local``: in
    this process (the default); ``postgresql``: in a database shared by several daemons."""

    backend: str = "local"
    dsn: str | None = None
    #: The longest a call waits for the database (a connection included) before the
    #: client gets its 421/451; and the connections each node keeps at most.
    timeout_s: float = 5.0
    pool_max: int = 10


@dataclass(frozen=True)
class ServerConfig:
    """Everything the daemon reads from ftpd.yaml; the defaults are the shipped values."""

    host: str = "127.0.0.1"
    port: int = 2121
    home_root: Path = Path("home")
    users_file: Path = Path("users.yaml")
    log_dir: Path | None = Path("logs")
    log_level: str = "INFO"
    log_max_bytes: int = 10 * 1024 * 1024
    log_backup_count: int = 5
    max_connections: int = 256
    max_per_ip: int = 32
    idle_timeout: float = 300.0
    login_timeout: float = 30.0
    login_max_failures: int = 5
    login_max_failures_per_ip: int = 20
    login_lockout: float = 300.0
    login_delay: float = 1.0
    grace_period: float = 30.0
    takeover_after: float = 15.0
    partial_ttl: float = 7 * 24 * 3600.0
    fsync: bool = True
    tls: TLSConfig | None = None
    ftp: FTPConfig | None = None
    storage: StorageConfig = StorageConfig()
    state: StateConfig = StateConfig()
    control_socket: Path | None = None  # None: <home_root>/.ftpd-control.sock
    proxy_protocol: tuple[str, ...] = ()  # balancers whose PROXY header is taken (ftpd.proxy)
    path: Path | None = None  # the file this came from (not a key)

    @property
    def control_path(self) -> Path:
        """Where the daemon's control socket listens (ftpd.control)."""
        # User names cannot start with '.', so this is never somebody's home.
        return self.control_socket or self.home_root / ".ftpd-control.sock"

    def with_overrides(self, **changes: Any) -> ServerConfig:
        return replace(self, **{k: v for k, v in changes.items() if v is not None})


_KEYS = {f.name for f in fields(ServerConfig)} - {"path"}
_PATHS = ("home_root", "users_file", "log_dir", "control_socket")
_SIZES = ("log_max_bytes",)
_POSITIVE_INTS = (
    "max_connections",
    "max_per_ip",
    "login_max_failures",
    "login_max_failures_per_ip",
)
#: A Unix socket's path fits in sockaddr_un.sun_path (108 bytes with its NUL on Linux).
_MAX_SOCKET_PATH = 107
_SECONDS = (
    "idle_timeout",
    "login_timeout",
    "login_lockout",
    "login_delay",
    "grace_period",
    "partial_ttl",
)
#: Durations where 0 is meaningful ("at once").
_SECONDS_OR_ZERO = ("takeover_after",)
_MAX_SECONDS = 10**8  # over three years


def load(path: Path) -> ServerConfig:
    """Read and validate ``path``; every problem is reported at once.

    Raises:
        ConfigError: with file, line and key for each problem.
    """
    path = Path(path).absolute()
    doc = yamldoc.load(path)
    data = doc.data if doc.data is not None else {}
    if not isinstance(data, dict):
        raise ConfigError([doc.problem("the file must be a mapping of key: value")])
    problems: list[tuple[str, int | None, str, str]] = []
    values: dict[str, Any] = {"path": path}
    for key, value in data.items():
        key = str(key)
        if key not in _KEYS:
            problems.append(doc.problem(f"unknown key (known: {', '.join(sorted(_KEYS))})", key))
            continue
        try:
            if key == "ftp":
                values[key] = _ftp(value, doc, problems)
                continue
            if key in _SECTIONS:
                values[key] = _section(key, value, doc, problems)
                continue
            values[key] = _convert(key, value, path.parent)
        except ValueError as exc:
            problems.append(doc.problem(str(exc), key))
    ftp = values.get("ftp")
    if ftp is not None:
        problems += _ftp_port_problems(ftp, values.get("port", ServerConfig.port), doc)
    if problems:
        raise ConfigError(problems)
    return ServerConfig(**values)


def _convert(key: str, value: Any, base: Path) -> Any:
    if key in _PATHS:
        if key == "log_dir" and value is None:
            return None  # stderr only (e.g. under systemd, to the journal)
        if not isinstance(value, str) or not value:
            raise ValueError("must be a path")
        resolved = (base / Path(value).expanduser()).resolve()
        if key == "control_socket" and len(os.fsencode(resolved)) > _MAX_SOCKET_PATH:
            raise ValueError(f"{resolved} is longer than {_MAX_SOCKET_PATH} bytes (a socket)")
        return resolved
    if key == "host":
        if not isinstance(value, str) or not value:
            raise ValueError("must be an address or host name")
        return value
    if key == "port":
        if type(value) is not int or not 0 <= value <= 65535:
            raise ValueError("must be an integer port from 0 to 65535")
        return value
    if key in _SIZES:
        size = parse_size(value)
        if size < 1024:
            raise ValueError("must be at least 1 KiB")
        return size
    if key in _POSITIVE_INTS or key == "log_backup_count":
        low = 0 if key == "log_backup_count" else 1
        if type(value) is not int or value < low:
            raise ValueError(f"must be an integer >= {low}")
        return value
    if key in _SECONDS_OR_ZERO:
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not number or not 0 <= value <= _MAX_SECONDS:
            raise ValueError(f"must be a number of seconds from 0 to {_MAX_SECONDS}")
        return float(value)
    if key in _SECONDS:
        # Written so that YAML's .nan fails too; socket.settimeout() refuses NaN, inf and
        # anything past time_t at run time, in every session, so refuse them here.
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not number or not 0 < value <= _MAX_SECONDS:
            raise ValueError(f"must be a positive number of seconds (at most {_MAX_SECONDS})")
        return float(value)
    if key == "log_level":
        if not isinstance(value, str) or value.upper() not in logging.getLevelNamesMapping():
            raise ValueError("must be DEBUG, INFO, WARNING or ERROR")
        return value.upper()
    if key == "fsync":
        if not isinstance(value, bool):
            raise ValueError("must be true or false")
        return value
    if key == "tls":
        return _tls(value, base)
    if key == "proxy_protocol":
        return parse_networks(value)
    raise AssertionError(key)


def _tls(value: Any, base: Path) -> TLSConfig | None:
    if value is None:
        return None
    if not isinstance(value, dict) or set(value) != {"cert", "key"}:
        raise ValueError("must be a mapping with exactly 'cert' and 'key'")
    paths = {}
    for name in ("cert", "key"):
        if not isinstance(value[name], str) or not value[name]:
            raise ValueError(f"{name} must be a path")
        paths[name] = (base / Path(value[name]).expanduser()).resolve()
        if not paths[name].is_file():
            raise ValueError(f"{name}: {paths[name]} does not exist")
    return TLSConfig(**paths)


_FTP_KEYS = {f.name for f in fields(FTPConfig)}
#: Optional sections for backends: name -> (dataclass, allowed backends, required keys).
_SECTIONS: dict[str, tuple[type, tuple[str, ...], dict[str, tuple[str, ...]]]] = {
    "storage": (StorageConfig, ("local", "s3"), {"s3": ("bucket",)}),
    "state": (StateConfig, ("local", "postgresql"), {"postgresql": ("dsn",)}),
}


def _part_size(value: Any) -> int:
    size = parse_size(value)
    if not 5 * 1024 * 1024 <= size <= 5 * 1024**3:
        raise ValueError("must be from 5 MiB to 5 GiB (S3's limits for a part)")
    return size


def _parts_in_flight(value: Any) -> int:
    if type(value) is not int or not 1 <= value <= 64:
        raise ValueError("must be an integer from 1 to 64")
    return value


def _state_timeout(value: Any) -> float:
    if type(value) not in (int, float) or not 0.5 <= value <= 60:
        raise ValueError("must be a number of seconds from 0.5 to 60")
    return float(value)


def _pool_max(value: Any) -> int:
    if type(value) is not int or not 1 <= value <= 1000:
        raise ValueError("must be an integer from 1 to 1000")
    return value


#: The keys of backend sections that are numbers, not strings: key -> its check.
_SECTION_NUMBERS: dict[str, Callable[[Any], float]] = {
    "part_size": _part_size,
    "parts_in_flight": _parts_in_flight,
    "timeout_s": _state_timeout,
    "pool_max": _pool_max,
}


def _section(
    name: str, value: Any, doc: yamldoc.Doc, problems: list[tuple[str, int | None, str, str]]
) -> Any:
    """A backend section (``storage:``, ``state:``): known keys, strings, a known backend,
    and the keys that backend needs; each problem names its own key."""
    cls, backends, required = _SECTIONS[name]
    if value is None:
        return cls()
    if not isinstance(value, dict):
        raise ValueError("must be a mapping with a 'backend' (or null)")
    known = {f.name for f in fields(cls)}
    values: dict[str, Any] = {}
    for key, item in value.items():
        key = str(key)
        if key not in known:
            problems.append(
                doc.problem(f"unknown key (known: {', '.join(sorted(known))})", name, key)
            )
        elif key in _SECTION_NUMBERS:
            try:
                values[key] = _SECTION_NUMBERS[key](item)
            except ValueError as exc:
                problems.append(doc.problem(str(exc), name, key))
        elif item is not None and not isinstance(item, str):
            problems.append(doc.problem("must be a string", name, key))
        else:
            values[key] = item if item is not None or key != "prefix" else ""
    backend = values.get("backend", "local")
    if backend not in backends:
        problems.append(doc.problem(f"must be one of {', '.join(backends)}", name, "backend"))
        return cls()
    for key in required.get(backend, ()):
        if not values.get(key):
            problems.append(doc.problem(f"needed with backend: {backend}", name))
    return cls(**values)


def _ftp(value: Any, doc: yamldoc.Doc, problems: list[tuple[str, int | None, str, str]]) -> Any:
    """The ``ftp:`` section (null: off); each bad sub-key is a problem of its own."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ValueError("must be a mapping (port, passive_ports, ...) or null")
    values: dict[str, Any] = {}
    for key, item in value.items():
        key = str(key)
        if key not in _FTP_KEYS:
            known = ", ".join(sorted(_FTP_KEYS))
            problems.append(doc.problem(f"unknown key (known: {known})", "ftp", key))
            continue
        try:
            values[key] = _ftp_value(key, item)
        except ValueError as exc:
            problems.append(doc.problem(str(exc), "ftp", key))
    return FTPConfig(**values)


def _ftp_value(key: str, value: Any) -> Any:
    if key == "port":
        return _convert("port", value, Path())
    if key == "host":
        return None if value is None else _convert("host", value, Path())
    if key == "passive_ports":
        return parse_port_range(value)
    if key == "passive_address":
        if value is None:
            return None
        try:
            return str(ipaddress.IPv4Address(str(value)))
        except ValueError:
            raise ValueError("must be an IPv4 address (what PASV advertises) or null") from None
    if key == "proxy_protocol":
        return parse_networks(value)
    if not isinstance(value, bool):
        raise ValueError("must be true or false")
    return value


def parse_networks(value: Any) -> tuple[str, ...]:
    """``proxy_protocol``: a list of IP addresses or CIDR networks (null or []: off) ->
    their normalised network strings ("10.0.0.5" -> "10.0.0.5/32").

    Raises:
        ValueError: not a list, or an item that is not an address or network.
    """
    if value is None:
        return ()
    if not isinstance(value, list):
        raise ValueError("must be a list of IP addresses or networks, e.g. [10.0.0.5, 10.1.0.0/24]")
    networks = []
    for item in value:
        if not isinstance(item, str) or not item.strip():
            raise ValueError(f"{item!r} is not an IP address or network")
        try:
            networks.append(str(ipaddress.ip_network(item.strip())))
        except ValueError as exc:
            raise ValueError(f"{item!r} is not an IP address or network ({exc})") from None
    return tuple(networks)


def parse_port_range(value: Any) -> tuple[int, int]:
    """``"LOW-HIGH"`` (or one port) -> (low, high), unprivileged ports only.

    Raises:
        ValueError: not a range of ports from 1024 to 65535, low first.
    """
    ok = isinstance(value, (str, int)) and not isinstance(value, bool)
    text = str(value).strip() if ok else ""
    low_s, _, high_s = text.partition("-")
    if not high_s:
        high_s = low_s
    if not (low_s.strip().isdigit() and high_s.strip().isdigit()):
        raise ValueError('must be a range of ports "LOW-HIGH", e.g. "50000-50100"')
    low, high = int(low_s), int(high_s)
    if not 1024 <= low <= high <= 65535:
        raise ValueError("must be ports from 1024 to 65535, the lower one first")
    return low, high


def _ftp_port_problems(
    ftp: FTPConfig, framed_port: int, doc: yamldoc.Doc
) -> list[tuple[str, int | None, str, str]]:
    """A passive range must not hold a control port (the daemon's own listeners)."""
    low, high = ftp.passive_ports
    problems = []
    for name, port in (("ftp.port", ftp.port), ("port", framed_port)):
        if port and low <= port <= high:
            message = f"the range {low}-{high} holds the control port {port} ({name})"
            problems.append(doc.problem(message, "ftp", "passive_ports"))
    return problems


def is_loopback(host: str) -> bool:
    """Whether ``host`` only listens on loopback (used for the plaintext warning)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
