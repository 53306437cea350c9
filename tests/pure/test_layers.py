"""The floors of the house stay visible (docs/architecture.md): imports run downward only,
no import cycles, no imports in ``__init__`` files, only the storage layer touches the
disk by path, and the client loads neither passlib nor yaml."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "ftpd"

#: What a module of each floor may import from the daemon's own packages.
FORBIDDEN = {
    "ftpd.storage": ("ftpd.core", "ftpd.framed", "ftpd.ftp", "ftpd.accounts", "ftpd.state"),
    "ftpd.state": ("ftpd.core", "ftpd.framed", "ftpd.ftp", "ftpd.storage", "ftpd.accounts"),
    "ftpd.accounts": ("ftpd.core", "ftpd.framed", "ftpd.ftp", "ftpd.storage", "ftpd.state"),
    "ftpd.core": ("ftpd.framed", "ftpd.ftp", "ftpd.daemon", "ftpd.cli", "ftpd.admin"),
    "ftpd.framed": ("ftpd.ftp", "ftpd.storage.local", "ftpd.state.local", "ftpd.daemon"),
    "ftpd.ftp": ("ftpd.framed", "ftpd.storage.local", "ftpd.state.local", "ftpd.daemon"),
}
#: Path-based file-system calls: only the storage layer may make them on user data.
DISK_CALLS = {
    "open", "unlink", "remove", "rename", "replace", "mkdir", "makedirs", "rmdir",
    "scandir", "listdir", "stat", "lstat", "utime", "walk", "fwalk", "chmod", "symlink",
    "readlink", "link", "truncate",
}  # fmt: skip


def _modules() -> dict[str, ast.Module]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        out[name.removesuffix(".__init__")] = ast.parse(path.read_text(encoding="utf-8"))
    return out


def _imports(tree: ast.Module) -> set[str]:
    """Every ``ftpd`` module imported, at any depth, outside ``if TYPE_CHECKING:``."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("ftpd"):
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("ftpd"))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


MODULES = _modules()
GRAPH = {
    name: {d for d in _imports(tree) if d in MODULES and d != name and not name.startswith(d + ".")}
    for name, tree in MODULES.items()
}


def test_layers_no_import_cycles() -> None:
    cycles: list[list[str]] = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def dfs(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(GRAPH[node]):
            if state.get(nxt) == 1:
                cycles.append([*stack[stack.index(nxt) :], nxt])
            elif not state.get(nxt):
                dfs(nxt)
        stack.pop()
        state[node] = 2

    for name in sorted(GRAPH):
        if not state.get(name):
            dfs(name)
    assert cycles == []


@pytest.mark.parametrize("floor", sorted(FORBIDDEN))
def test_layers_imports_run_downward(floor: str) -> None:
    wrong = [
        f"{name} imports {dep}"
        for name, deps in GRAPH.items()
        if name == floor or name.startswith(floor + ".")
        for dep in deps
        if any(dep == bad or dep.startswith(bad + ".") for bad in FORBIDDEN[floor])
    ]
    assert wrong == []


def test_layers_init_files_import_nothing() -> None:
    for path in PACKAGE.rglob("__init__.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        imports = [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))]
        assert imports == [], path


@pytest.mark.parametrize("floor", ["ftpd.core", "ftpd.framed", "ftpd.ftp"])
def test_layers_only_storage_touches_the_disk(floor: str) -> None:
    """No ``os.<call>(path)`` nor ``open(path)`` above the storage layer."""
    wrong = []
    for name, tree in MODULES.items():
        if not (name == floor or name.startswith(floor + ".")):
            continue
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            if isinstance(func, ast.Name) and func.id == "open":
                wrong.append(f"{name}:{node.lineno} open()")
            elif (
                isinstance(func, ast.Attribute)
                and isinstance(func.value, ast.Name)
                and func.value.id in ("os", "shutil")
                and func.attr in DISK_CALLS
            ):
                wrong.append(f"{name}:{node.lineno} {func.value.id}.{func.attr}()")
    assert wrong == []


def test_layers_client_loads_neither_passlib_nor_yaml() -> None:
    code = (
        "import sys, ftp_client.shell, ftp_client.cli; "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('passlib', 'yaml', 'ruamel')]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=60)
