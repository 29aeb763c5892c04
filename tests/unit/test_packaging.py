"""Only what a deployment imports ships: the wheel built from this checkout holds the package
and its schema, and none of the dev tooling (devtools/: the stacks and their server configs,
the benches, sample events, `produce`)."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "programuser_dagster"


# `make test` runs tests side by side; this module's stay on one worker so that
# the wheel is built once.
pytestmark = pytest.mark.xdist_group("test_packaging")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> zipfile.ZipFile:
    """The wheel pip builds from a copy of the checkout (a build writes build/ and *.egg-info
    beside its sources: not in the checkout other sessions run from)."""
    root = tmp_path_factory.mktemp("packaging")
    source = root / "source"
    source.mkdir()
    skip = shutil.ignore_patterns("__pycache__", "*.egg-info", "build")
    for item in REPO.iterdir():
        if item.name.startswith(".") or item.name in ("build", "dist"):
            continue  # the venv, the stacks' data, caches: nothing a build reads
        if item.is_dir():
            shutil.copytree(item, source / item.name, ignore=skip)
        else:
            shutil.copy2(item, source / item.name)
    out = root / "wheels"
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(out),
         str(source)],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    [built] = out.glob("programuser_dagster-*.whl")
    return zipfile.ZipFile(built)


def _files(wheel: zipfile.ZipFile) -> list[str]:
    return [n for n in wheel.namelist() if ".dist-info/" not in n]


def test_the_wheel_holds_no_dev_tooling(wheel: zipfile.ZipFile) -> None:
    files = _files(wheel)
    assert files
    assert not [n for n in files if not n.startswith("programuser_dagster/")]
    assert not [n for n in files if n.endswith((".xml", ".properties", ".yaml", ".yml"))]
    assert not [n for n in files if "/stack/" in n or "devtools" in n]
    for word in ("bench", "samples", "produce", "launcher", "docker", "postgres"):
        assert not [n for n in files if word in n], word


def test_the_wheel_holds_what_a_deployment_imports(wheel: zipfile.ZipFile) -> None:
    files = set(_files(wheel))
    assert "programuser_dagster/definitions.py" in files
    assert "programuser_dagster/cassandra/schema.cql" in files
    # Every module of the package, and nothing else.
    modules = {p.relative_to(REPO).as_posix() for p in PACKAGE.rglob("*.py")}
    assert {n for n in files if n.endswith(".py")} == modules
    assert files - modules == {"programuser_dagster/cassandra/schema.cql"}
    [entry_points] = [n for n in wheel.namelist() if n.endswith(".dist-info/entry_points.txt")]
    assert "programuser-dagster = programuser_dagster.cli:main" in (
        wheel.read(entry_points).decode())


def test_no_shipped_module_produces_or_imports_the_dev_tooling(wheel: zipfile.ZipFile) -> None:
    for name in (n for n in _files(wheel) if n.endswith(".py")):
        tree = ast.parse(wheel.read(name).decode(), name)
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                assert node.name != "produce", f"{name}: def produce"
            elif isinstance(node, ast.Import):
                assert not [a for a in node.names if a.name.split(".")[0] in ("devtools", "tests")
                            ], f"{name}:{node.lineno}"
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                assert node.module.split(".")[0] not in ("devtools", "tests"), (
                    f"{name}:{node.lineno}")
