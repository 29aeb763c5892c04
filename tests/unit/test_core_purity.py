"""programuser_dagster/core/ is pure: none of its modules imports Dagster, the Kafka or the
Cassandra client, nor anything of the package outside core/ (which would bring them in)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CORE = REPO / "programuser_dagster" / "core"
FORBIDDEN = ("dagster", "confluent_kafka", "cassandra")
MODULES = sorted(p for p in CORE.glob("*.py"))


def _imported(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module) of every import in the file, relative ones resolved."""
    package = "programuser_dagster.core"
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found += [(node.lineno, module)]
    return found


def test_core_has_modules() -> None:
    assert len(MODULES) > 5, MODULES


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.name)
def test_imports_nothing_but_core_and_pure_libraries(path: Path) -> None:
    for line, module in _imported(path):
        top = module.split(".")[0]
        assert top not in FORBIDDEN, f"{path.name}:{line} imports {module}"
        if top == "programuser_dagster":
            assert module.startswith("programuser_dagster.core"), (
                f"{path.name}:{line} imports {module}, outside core/")


def test_importing_core_loads_no_client_library() -> None:
    """What the modules really load, their imports' imports included (the package's
    __init__ too): in a fresh interpreter, none of the forbidden packages."""
    names = [f"programuser_dagster.core.{p.stem}" for p in MODULES if p.stem != "__init__"]
    code = (
        "import sys\n"
        + "".join(f"import {n}\n" for n in names)
        + f"print(sorted(m for m in sys.modules if m.split('.')[0] in {FORBIDDEN!r}))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]", done.stdout
