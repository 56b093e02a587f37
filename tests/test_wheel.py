"""The wheel, installed in a fresh venv and run from a directory outside the checkout: every documented
command works from it (train, explain, evaluate, ``python -m pneumo.evaluation``, the shipped NIH files).

The wheel is installed with ``--no-deps``; its dependencies are this venv's, made importable by a path line
in a ``.pth`` file of the new venv. Python adds such a line to ``sys.path`` without reading the ``.pth`` files
inside it, so the checkout's editable install (a finder started by a ``.pth`` file here) stays out: the test
checks that ``pneumo`` is imported from the new venv.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from tests.helpers import ROOT, TINY_NET

pytestmark = pytest.mark.slow

#: A run of seconds: the tiny demo set (written under ./data of the working directory), two batches a split.
TINY_TRAIN = [
    "data.images.size=64",
    "trainer.max_epochs=1",
    "data.synthetic.n=80",
    "data.synthetic.size=64",
    "data.loader.batch_size=16",
    "data.loader.num_workers=0",
    "trainer.accelerator=cpu",
    "+trainer.limit_train_batches=2",
    "+trainer.limit_val_batches=2",
    "+trainer.limit_test_batches=2",
    "callbacks.progress_bar.refresh_rate=0",
    "logger=none",
    "callbacks.lr_monitor=null",
    *TINY_NET,
]


@pytest.fixture(scope="module")
def venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv holding the wheel (installed by this venv's pip) and a path line to this venv's packages."""
    root = tmp_path_factory.mktemp("wheel_venv") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True, timeout=120)
    python = root / "bin" / "python"
    install = [
        sys.executable,
        "-m",
        "pip",
        "--python",
        str(python),
        "install",
        "--no-deps",
        "--no-index",
        "-q",
    ]
    proc = subprocess.run([*install, str(wheel)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    (Path(purelib) / "pneumo-test-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return root


def _run(venv: Path, cwd: Path, *command: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}",
        "PYTHONWARNINGS": "ignore",
    }
    env.pop("PYTHONPATH", None)  # nothing of the checkout on the path
    proc = subprocess.run(list(command), cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, (
        f"{' '.join(command)}: exit {proc.returncode}\n{proc.stdout[-2000:]}{proc.stderr[-4000:]}"
    )
    return proc


def _start(venv: Path, cwd: Path, *command: str) -> subprocess.Popen:
    env = {
        **os.environ,
        "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}",
        "PYTHONWARNINGS": "ignore",
    }
    env.pop("PYTHONPATH", None)
    return subprocess.Popen(
        list(command), cwd=cwd, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )


def test_the_installed_wheel_trains_explains_and_evaluates_outside_the_checkout(
    venv: Path, tmp_path: Path
) -> None:
    python = str(venv / "bin" / "python")
    where = _run(
        venv,
        tmp_path,
        python,
        "-c",
        "import pneumo, pneumo.conf; print(pneumo.__file__, pneumo.conf.__file__)",
    )
    assert all(Path(f).is_relative_to(venv) for f in where.stdout.split()), where.stdout
    assert not Path(where.stdout.split()[0]).is_relative_to(ROOT)

    train = _run(venv, tmp_path, "pneumo-train", *TINY_TRAIN)
    (run,) = (tmp_path / "logs" / "train" / "runs").iterdir()
    ckpt = run / "checkpoints" / "last.ckpt"
    assert ckpt.exists() and (run / "predictions.csv").exists() and (run / "report.md").exists(), train.stderr
    assert (tmp_path / "data" / "nih_demo" / "Data_Entry_2017.csv").exists()  # the demo set, under ./data

    images = sorted((tmp_path / "data" / "nih_demo" / "images").iterdir())[:3]
    (tmp_path / "inputs.txt").write_text("".join(f"{p}\n" for p in images))
    labels = f"labels_url={tmp_path / 'data' / 'nih_demo' / 'Data_Entry_2017.csv'}"
    evaluate = [
        f"predictions={run / 'predictions.csv'}",
        labels,
        "eval.threshold=0.5",
        "eval.bootstrap.resamples=20",
    ]
    running = {
        "explained": _start(venv, tmp_path, "pneumo-explain", f"ckpt_path={ckpt}", "inputs=inputs.txt",
                            "out_dir=explained", "progress=false", "num_workers=1"),
        "evaluated": _start(venv, tmp_path, "pneumo-evaluate", *evaluate, "out_dir=evaluated"),
        "module": _start(venv, tmp_path, python, "-m", "pneumo.evaluation", *evaluate, "out_dir=module"),
        "index": _start(venv, tmp_path, python, "-m", "pneumo", "index"),
    }  # fmt: skip
    outputs = {}
    for name, proc in running.items():
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, f"{name}: exit {proc.returncode}\n{out[-2000:]}{err[-4000:]}"
        outputs[name] = out
    explained = json.loads((tmp_path / "explained" / "summary.json").read_text())
    assert explained["explained"] == 3 and len(list((tmp_path / "explained" / "heatmaps").iterdir())) == 3
    for folder in ("evaluated", "module"):
        report = json.loads((tmp_path / folder / "report.json").read_text())
        assert report["counts"]["images"] > 0 and (tmp_path / folder / "report.md").exists()
    assert json.loads(outputs["index"])["images"] == 112120  # NIH's label index, shipped in the wheel
