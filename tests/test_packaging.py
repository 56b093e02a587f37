"""Packaging: pyproject.toml lists every package, and the wheel holds the configs, the NIH files and the entry
points (the wheel is built once per session from a copy of the checkout: the ``wheel`` fixture)."""

from __future__ import annotations

import configparser
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.helpers import CONF, ROOT

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

PACKAGE = ROOT / "pneumo"
SCRIPTS = {
    "pneumo": "pneumo.__main__:main",
    "pneumo-train": "pneumo.cli.train:main",
    "pneumo-explain": "pneumo.cli.explain:main",
    "pneumo-evaluate": "pneumo.cli.evaluate:main",
    "pneumo-export": "pneumo.cli.export:main",
}


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _source_dirs() -> list[Path]:
    return [PACKAGE, *(p for p in PACKAGE.rglob("*") if p.is_dir() and p.name != "__pycache__")]


def test_the_packages_list_names_every_package_under_pneumo() -> None:
    listed = set(_pyproject()["tool"]["setuptools"]["packages"])
    packages = {".".join(d.relative_to(ROOT).parts) for d in _source_dirs() if (d / "__init__.py").exists()}
    assert packages - listed == set(), "add these to [tool.setuptools] packages in pyproject.toml"
    assert listed - packages == {"pneumo.conf"}, "listed packages that do not exist"
    # A folder of modules without __init__.py would be a namespace package that the list cannot see.
    no_init = [d for d in _source_dirs() if any(d.glob("*.py")) and not (d / "__init__.py").exists()]
    assert no_init == []
    assert (CONF / "__init__.py").exists()  # pneumo.conf is a regular package (importlib.resources, Hydra)


def test_the_wheel_holds_every_config_the_nih_files_and_py_typed(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    configs = {f"pneumo/conf/{p.relative_to(CONF).as_posix()}" for p in CONF.rglob("*.yaml")}
    assert "pneumo/conf/hydra/launcher/slurm.yaml" in configs and len(configs) > 30
    assert configs - names == set()
    nih = {f"pneumo/nih/files/{p.name}" for p in (PACKAGE / "nih" / "files").iterdir()}
    assert "pneumo/nih/files/Data_Entry_2017_v2020.csv.gz" in nih
    assert nih - names == set()
    modules = {p.relative_to(ROOT).as_posix() for p in PACKAGE.rglob("*.py")}
    assert modules - names == set()
    assert {"pneumo/py.typed", "pneumo/conf/__init__.py"} <= names
    # Nothing from outside the package: no tests, benchmarks, caches, or conf/ at the top level.
    strays = [n for n in names if not n.startswith(("pneumo/", "pneumo-")) or "__pycache__" in n]
    assert strays == []


def test_the_wheel_declares_the_console_scripts_and_builds_without_warnings(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        entry_points = zf.read(next(n for n in zf.namelist() if n.endswith(".dist-info/entry_points.txt")))
    parser = configparser.ConfigParser()
    parser.read_string(entry_points.decode())
    assert dict(parser["console_scripts"]) == SCRIPTS
    log = (wheel.parent / "pip-wheel.log").read_text()
    assert "Successfully built pneumo" in log
    # setuptools' "Package would be ignored" and deprecation notices are warnings.
    assert "warning" not in log.lower(), log


@pytest.mark.parametrize("command", ["train", "index", "synthetic", "dicom"])
def test_python_m_pneumo_dispatches_each_command(command: str, tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "pneumo", command, "--help"], cwd=tmp_path, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    expected = "train is powered by Hydra" if command == "train" else f"usage: python -m pneumo {command}"
    assert expected in proc.stdout


def test_python_m_pneumo_lists_its_commands_and_refuses_an_unknown_one(tmp_path: Path) -> None:
    run = [sys.executable, "-m", "pneumo"]
    listing = subprocess.run(run, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert listing.returncode == 0
    for command in ("train", "explain", "evaluate", "index", "synthetic", "dicom"):
        assert f"\n  {command} " in listing.stdout
    typo = subprocess.run([*run, "evalute"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert typo.returncode == 2
    assert typo.stderr.startswith("error: no pneumo command 'evalute'") and "evaluate" in typo.stderr
