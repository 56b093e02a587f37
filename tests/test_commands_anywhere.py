"""README's emulator and benchmark commands run from a directory outside the repository (after pip install)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.helpers import ROOT, closed_port, run_cli


def test_the_emulator_command_serves_the_demo_bucket_from_any_directory(tmp_path: Path) -> None:
    port = closed_port()
    env = {**os.environ, "PYTHONPATH": ""}  # the installed package, not the repository on the path
    serve = [sys.executable, "-m", "pneumo.testing.gcs_emulator", "--port", str(port), "--bucket", "demo"]
    server = subprocess.Popen([*serve, "--n", "12", "--size", "32"], cwd=tmp_path, env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        waited = run_cli(["-m", "pneumo.testing.gcs_emulator", "--port", str(port), "--bucket", "demo", "--wait"],
                         cwd=tmp_path, timeout=120, env={"PYTHONPATH": ""})  # fmt: skip
        assert waited.returncode == 0, waited.stdout + waited.stderr
        from pneumo.testing.gcs_emulator import GCSEmulator

        em = GCSEmulator()
        em.port = port  # a client of the server above
        files = em.gcsfs().find("demo")
        assert sum(f.startswith("demo/png/") and f.endswith(".png") for f in files) == 12
        assert "demo/Data_Entry_2017.csv" in files and "demo/test_list.txt" in files
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert not (ROOT / "tests" / "gcs_emulator.py").exists()  # one emulator, in the package


def test_a_benchmark_runs_from_any_directory(tmp_path: Path) -> None:
    proc = run_cli([str(ROOT / "benchmarks" / "bench_evaluation.py"), "--resamples", "20", "--naive", "2"],
                   cwd=tmp_path, timeout=300, env={"PYTHONPATH": ""})  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "whole report (binary, 20 resamples" in proc.stdout


#: Top-level modules of the dev, sweeps and dicom extras: the emulator command must not need them.
NOT_IN_CORE_OR_EMULATOR = ("pytest", "_pytest", "sklearn", "optuna", "pylibjpeg")

_SERVE_WITH_EXTRAS_BLOCKED = """
import importlib.abc, os, sys, threading, traceback
blocked = set(sys.argv[1].split(","))

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in blocked:
            raise ModuleNotFoundError(f"{name} is blocked: not in pneumo's core or emulator extra", name=name)

sys.meta_path.insert(0, Block())
from pneumo.testing import gcs_emulator
port = int(sys.argv[2])
args = ["--port", str(port), "--bucket", "demo", "--n", "12", "--size", "32"]

def serve():  # it serves until killed: returning or raising is a failure
    try:
        gcs_emulator.main(args)
    except BaseException:
        traceback.print_exc()
    os._exit(3)

threading.Thread(target=serve, daemon=True).start()
served = gcs_emulator.wait_until_served(port, "demo", timeout_s=120)
print("loaded:", sorted(m for m in blocked if m in sys.modules), flush=True)
os._exit(served)
"""


def test_the_emulator_command_needs_only_the_core_and_emulator_packages(tmp_path: Path) -> None:
    proc = run_cli(["-c", _SERVE_WITH_EXTRAS_BLOCKED, ",".join(NOT_IN_CORE_OR_EMULATOR), str(closed_port())],
                   cwd=tmp_path, timeout=180, env={"PYTHONPATH": ""})  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    assert "serving gs://demo (12 images under png/)" in proc.stdout
    assert "loaded: []" in proc.stdout
