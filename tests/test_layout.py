"""The rooms of worker/ keep their doors one way (import-linter's contracts in pyproject.toml), and
stay small enough to read."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT

LINT = [sys.executable, "-c", "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"]


def _lint(cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(LINT, cwd=cwd, capture_output=True, text=True, timeout=120, env={"PYTHONPATH": str(cwd)})


def test_the_import_contracts_hold():
    run = _lint(ROOT)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    assert "4 kept, 0 broken" in run.stdout


def test_a_forbidden_import_breaks_a_contract(tmp_path):
    """The contracts are not vacuous: torch imported by the common room fails the check."""
    for part in ("worker", "producer", "pyproject.toml"):
        src = ROOT / part
        (shutil.copytree if src.is_dir() else shutil.copy)(src, tmp_path / part)
    errors = tmp_path / "worker" / "common" / "errors.py"
    errors.write_text(errors.read_text() + "\nimport torch  # noqa\n")
    run = _lint(tmp_path)
    assert run.returncode != 0 and "worker.common.errors -> torch" in run.stdout, run.stdout[-2000:]


def test_modules_and_functions_stay_readable():
    """No module over 300 lines, no function over 60 (issue 22's rule of thumb)."""
    too_long = []
    for path in sorted([*ROOT.glob("worker/**/*.py"), *ROOT.glob("producer/**/*.py")]):
        text = path.read_text(encoding="utf-8")
        if len(text.splitlines()) > 300:
            too_long.append(f"{path.relative_to(ROOT)}: {len(text.splitlines())} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > 60:
                too_long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}: {node.end_lineno - node.lineno + 1} lines")
    assert not too_long, "\n".join(too_long)
