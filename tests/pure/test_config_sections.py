"""The backend sections of ftpd.yaml (issue 12): `storage:` and `state:`; absent means
the local disk and the in-process state, and every mistake names its file, line, key."""

from __future__ import annotations

from pathlib import Path

import pytest

from ftpd import config
from ftpd.errors import ConfigError


def _load(tmp_path: Path, text: str) -> config.ServerConfig:
    path = tmp_path / "ftpd.yaml"
    path.write_text("port: 0\n" + text, encoding="utf-8")
    return config.load(path)


def test_config_sections_absent_mean_local(tmp_path: Path) -> None:
    cfg = _load(tmp_path, "")
    assert cfg.storage == config.StorageConfig() and cfg.storage.backend == "local"
    assert cfg.state == config.StateConfig() and cfg.state.backend == "local"


def test_config_sections_s3_and_postgresql(tmp_path: Path) -> None:
    cfg = _load(
        tmp_path,
        "storage:\n  backend: s3\n  endpoint_url: http://127.0.0.1:8333\n  bucket: ftpd\n"
        "  prefix: site/\n  region: us-east-1\n"
        "state:\n  backend: postgresql\n  dsn: postgresql://ftpd@127.0.0.1:5432/ftpd\n",
    )
    assert (cfg.storage.backend, cfg.storage.bucket, cfg.storage.prefix) == ("s3", "ftpd", "site/")
    assert cfg.storage.access_key_id is None  # the usual AWS_* variables then
    assert cfg.state.dsn == "postgresql://ftpd@127.0.0.1:5432/ftpd"
    assert (cfg.storage.part_size, cfg.storage.parts_in_flight) == (8 << 20, 8)


def test_config_storage_part_size_and_parts_in_flight(tmp_path: Path) -> None:
    cfg = _load(
        tmp_path,
        "storage:\n  backend: s3\n  bucket: ftpd\n  part_size: 16MiB\n  parts_in_flight: 4\n",
    )
    assert (cfg.storage.part_size, cfg.storage.parts_in_flight) == (16 << 20, 4)
    cfg = _load(tmp_path, "storage:\n  backend: s3\n  bucket: b\n  part_size: 5242880\n")
    assert cfg.storage.part_size == 5 << 20


def test_config_state_timeout_and_pool(tmp_path: Path) -> None:
    assert (config.StateConfig().timeout_s, config.StateConfig().pool_max) == (5.0, 10)
    cfg = _load(
        tmp_path, "state:\n  backend: postgresql\n  dsn: x\n  timeout_s: 1.5\n  pool_max: 20\n"
    )
    assert (cfg.state.timeout_s, cfg.state.pool_max) == (1.5, 20)


@pytest.mark.parametrize(
    ("text", "line", "key", "words"),
    [
        ("storage:\n  backend: s4\n", 3, "storage.backend", "must be one of local, s3"),
        ("storage:\n  backend: s3\n", 2, "storage", "needed with backend: s3"),
        ("storage:\n  backend: s3\n  bucket: b\n  buckit: c\n", 5, "storage.buckit", "unknown key"),
        ("storage:\n  backend: s3\n  bucket: 5\n", 4, "storage.bucket", "must be a string"),
        ("state:\n  backend: postgresql\n", 2, "state", "needed with backend: postgresql"),
        ("state:\n  backend: redis\n", 3, "state.backend", "must be one of local, postgresql"),
        ("state: [1]\n", 2, "state", "must be a mapping"),
        (
            "state:\n  backend: postgresql\n  dsn: x\n  timeout_s: 0\n",
            5,
            "state.timeout_s",
            "from 0.5 to 60",
        ),
        (
            "state:\n  backend: postgresql\n  dsn: x\n  timeout_s: soon\n",
            5,
            "state.timeout_s",
            "seconds",
        ),
        (
            "state:\n  backend: postgresql\n  dsn: x\n  pool_max: 0\n",
            5,
            "state.pool_max",
            "from 1 to 1000",
        ),
        (
            "storage:\n  backend: s3\n  bucket: b\n  part_size: 4MiB\n",
            5,
            "storage.part_size",
            "from 5 MiB to 5 GiB",
        ),
        (
            "storage:\n  backend: s3\n  bucket: b\n  part_size: lots\n",
            5,
            "storage.part_size",
            "bad size",
        ),
        (
            "storage:\n  backend: s3\n  bucket: b\n  parts_in_flight: 0\n",
            5,
            "storage.parts_in_flight",
            "from 1 to 64",
        ),
        (
            "storage:\n  backend: s3\n  bucket: b\n  parts_in_flight: '4'\n",
            5,
            "storage.parts_in_flight",
            "integer",
        ),
    ],
)
def test_config_sections_mistakes_name_file_line_key(
    tmp_path: Path, text: str, line: int, key: str, words: str
) -> None:
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, text)
    problem = info.value.problems[0]  # the first names the mistake itself
    path, got_line, got_key, message = problem
    assert (Path(path).name, got_line, got_key) == ("ftpd.yaml", line, key), problem
    assert words in message
