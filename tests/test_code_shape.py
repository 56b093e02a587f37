"""No function of pneumo is longer than 80 lines (docstring included): one that long does several jobs and
should be split into pieces that each do one."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.helpers import ROOT

MAX_LINES = 80


def pneumo_files() -> list[Path]:
    """Every module of ``pneumo/``."""
    return sorted((ROOT / "pneumo").rglob("*.py"))


def long_functions(paths: list[Path], base: Path = ROOT) -> list[str]:
    """``path:line name (n lines)`` of every function (or method) in ``paths`` over ``MAX_LINES`` lines."""
    found = []
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_LINES:
                    found.append(
                        f"{path.relative_to(base).as_posix()}:{node.lineno} {node.name} ({lines} lines)"
                    )
    return found


def test_no_function_is_longer_than_80_lines() -> None:
    assert long_functions(pneumo_files()) == []


def test_the_walk_finds_a_long_method_and_passes_one_of_80_lines(tmp_path: Path) -> None:
    def body(n: int) -> str:
        return "\n".join(f"        x{i} = {i}" for i in range(n - 1))

    module = tmp_path / "m.py"
    module.write_text(f"class A:\n    def fits(self):\n{body(80)}\n\n    def long(self):\n{body(81)}\n")
    assert long_functions([module], tmp_path) == ["m.py:83 long (81 lines)"]
