"""Load a YAML mapping with the line of every key, so errors can say where they are.

Only ``yaml.SafeLoader`` is used: nothing in a config file can build Python objects.
This module must never report a problem without the file it came from.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from ftpd.errors import ConfigError


class Doc:
    """A parsed YAML file: ``data`` plus ``line(*keys)`` for any nested key path."""

    def __init__(self, path: Path, data: Any, lines: dict[tuple[str, ...], int]) -> None:
        self.path = path
        self.data = data
        self._lines = lines

    def line(self, *keys: str) -> int | None:
        while keys:
            if keys in self._lines:
                return self._lines[keys]
            keys = keys[:-1]
        return None

    def problem(self, message: str, *keys: str) -> tuple[str, int | None, str, str]:
        return (str(self.path), self.line(*keys), ".".join(keys), message)


def _walk(node: yaml.Node, prefix: tuple[str, ...], lines: dict[tuple[str, ...], int]) -> None:
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = (*prefix, str(key_node.value))
            lines.setdefault(key, key_node.start_mark.line + 1)
            _walk(value_node, key, lines)


def load(path: Path) -> Doc:
    """Parse ``path``; a missing file or a YAML syntax error is a ConfigError with its line."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([(str(path), None, "", "file not found")]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([(str(path), None, "", f"cannot read: {exc}")]) from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        line = mark.line + 1 if mark else None
        raise ConfigError([(str(path), line, "", f"YAML syntax error: {exc.problem}")]) from None
    except yaml.YAMLError as exc:
        raise ConfigError([(str(path), None, "", f"YAML error: {exc}")]) from None
    lines: dict[tuple[str, ...], int] = {}
    if node is not None:
        _walk(node, (), lines)
    return Doc(path, data, lines)
