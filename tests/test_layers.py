"""The layer rule (pyproject.toml ``[tool.importlinter]``, CONTRIBUTING.md): checked, and able to fail."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = [
    sys.executable,
    "-c",
    "import sys; from importlinter.cli import lint_imports_command as c; sys.exit(c())",
]


def _lint_imports(tree: Path) -> subprocess.CompletedProcess[str]:
    # PYTHONPATH first: the copy's pneumo is analysed, not the installed one.
    env = {**os.environ, "PYTHONPATH": str(tree)}
    return subprocess.run(LINT_IMPORTS, cwd=tree, env=env, capture_output=True, text=True, timeout=300)


def test_the_tree_keeps_the_layer_contract() -> None:
    proc = _lint_imports(ROOT)
    assert proc.returncode == 0, proc.stdout[-2000:]
    assert "1 kept, 0 broken" in proc.stdout


def test_an_upward_import_breaks_the_contract(tmp_path: Path) -> None:
    """stats (low) importing pipelines (high): lint-imports fails and names the import."""
    shutil.copytree(ROOT / "pneumo", tmp_path / "pneumo", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    metrics = tmp_path / "pneumo" / "stats" / "metrics.py"
    metrics.write_text(metrics.read_text() + "\nfrom pneumo.pipelines import runs  # noqa: E402, F401\n")
    proc = _lint_imports(tmp_path)
    assert proc.returncode != 0, proc.stdout[-2000:]
    assert "pneumo.stats.metrics -> pneumo.pipelines.runs" in proc.stdout, proc.stdout[-2000:]


def test_no_two_modules_import_each_other() -> None:
    graph = grimp.build_graph("pneumo")
    mutual = sorted(
        (a, b)
        for a in graph.modules
        for b in graph.find_modules_directly_imported_by(a)
        if a < b and a in graph.find_modules_directly_imported_by(b)
    )
    assert mutual == []
