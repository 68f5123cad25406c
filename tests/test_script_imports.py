"""Every experiment and benchmark script imports only names the package still has, and every shell script parses
(they are not run in CI)."""

from __future__ import annotations

import ast
import importlib
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(
    p for d in ("experiments", "benchmarks", "docs") for p in (ROOT / d).rglob("*.py")
)


def _venncell_imports(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if (
            isinstance(node, ast.ImportFrom)
            and node.module
            and node.module.split(".")[0] == "venncell"
        ):
            yield node.module, [a.name for a in node.names]
        elif isinstance(node, ast.Import):
            yield from ((a.name, []) for a in node.names if a.name.split(".")[0] == "venncell")


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_script_imports_resolve(path):
    for module, names in _venncell_imports(path):
        mod = importlib.import_module(module)
        missing = [n for n in names if not hasattr(mod, n) and not _is_submodule(module, n)]
        assert not missing, f"{path.name}: {module} has no {missing}"


def _is_submodule(module: str, name: str) -> bool:
    try:
        importlib.import_module(f"{module}.{name}")
    except ModuleNotFoundError:
        return False
    return True


@pytest.mark.parametrize(
    "path", sorted((ROOT / "benchmarks").rglob("*.sh")), ids=lambda p: str(p.relative_to(ROOT))
)
def test_shell_script_parses(path):
    done = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
