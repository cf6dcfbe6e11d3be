"""The core's shape, checked: small modules, short functions, and imports that point down the layers."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
from pathlib import Path

from conftest import BIN, REPO

CORE = REPO / "core" / "anybind"
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60


def _modules():
    return sorted(p for p in CORE.rglob("*.py") if "templates" not in p.parts)


def _long_functions(path: Path) -> list[str]:
    """``path:line name (n lines)`` of every function (decorators included) over the limit."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            lines = node.end_lineno - min([node.lineno, *(d.lineno for d in node.decorator_list)]) + 1
            if lines > MAX_FUNCTION_LINES:
                out.append(f"{path}:{node.lineno} {node.name} ({lines} lines)")
    return out


def test_no_core_module_is_over_400_lines():
    long = [f"{p.relative_to(REPO)} ({n} lines)" for p in _modules()
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES]
    assert not long, long


def test_no_core_function_is_over_60_lines():
    long = [f for p in _modules() for f in _long_functions(p)]
    assert not long, long


def test_the_size_check_sees_a_long_function(tmp_path):
    module = tmp_path / "long.py"
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES))
    module.write_text(f"def short():\n    return 0\n\n\ndef long():\n{body}\n    return 0\n")
    assert [entry.split()[1] for entry in _long_functions(module)] == ["long"]


def _lint_imports(cwd: Path, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "lint-imports"), "--no-cache"], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=120)


def test_imports_point_down_the_layers():
    proc = _lint_imports(REPO)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "1 kept, 0 broken" in proc.stdout


def test_an_upward_import_breaks_the_layers_contract(tmp_path):
    """A training stage that imports evaluation (an upward import) fails lint-imports."""
    copy = tmp_path / "src" / "anybind"
    shutil.copytree(CORE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    stage = copy / "training" / "bind.py"
    stage.write_text(stage.read_text() + "\nfrom anybind.eval import evaluate_bind  # noqa\n")
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    proc = _lint_imports(tmp_path, env={"PYTHONPATH": str(tmp_path / "src")})
    assert proc.returncode != 0
    assert "anybind.training is not allowed to import anybind.eval" in proc.stdout
