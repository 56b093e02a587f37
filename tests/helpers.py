"""Helpers shared by the tests (import them from here; ``conftest.py`` holds only fixtures)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"

#: Requester Pays bucket holding the tiny demo set in NIH's layout, and the project allowed to bill it.
NIH_BUCKET, BILLING_PROJECT = "nih-test", "test-billing"

# Tiny settings used by every training test: 64 px, few images, no workers.
TINY_DEMO = {"n": 80, "size": 64, "seed": 0}


#: Trainer overrides of every CLI training test: CPU, one epoch of two batches per split, no progress bar.
TINY_TRAINER = [
    "trainer.accelerator=cpu",
    "trainer.max_epochs=1",
    "+trainer.limit_train_batches=2",
    "+trainer.limit_val_batches=2",
    "+trainer.limit_test_batches=2",
    "callbacks.progress_bar.refresh_rate=0",
]


def tiny_overrides(data_root: Path, out: Path) -> list[str]:
    """Hydra overrides for a seconds-long run on the tiny demo set written at ``data_root``."""
    return [
        f"data.synthetic.root={data_root}",
        f"data.synthetic.n={TINY_DEMO['n']}",
        f"data.synthetic.size={TINY_DEMO['size']}",
        "data.image_size=64",
        "data.batch_size=16",
        "data.num_workers=0",
        f"paths.log_dir={out}",
        f"paths.data_dir={out}/data",
        *TINY_TRAINER,
    ]


def _tiny_datamodule(locations: dict, overrides: dict):
    """An ``NIHDataModule`` at test size (48 px, batches of 8, no workers) over ``locations``, with overrides."""
    from pneumo.data.datamodule import NIHDataModule

    args = {"image_size": 48, "batch_size": 8, "num_workers": 0, "val_fraction": 0.2, "progress": False}
    return NIHDataModule(**{**locations, **args, **overrides})


def demo_datamodule(demo_root: Path, **overrides):
    """An ``NIHDataModule`` over a demo set in NIH layout on local disk (see ``_tiny_datamodule``)."""
    locations = {
        "images_url": str(demo_root / "images"),
        "labels_url": str(demo_root / "Data_Entry_2017.csv"),
        "split_lists": {
            "train_val": str(demo_root / "train_val_list.txt"),
            "test": str(demo_root / "test_list.txt"),
        },
    }
    return _tiny_datamodule(locations, overrides)


def emulator_datamodule(em, bucket: str, storage: dict | None = None, **overrides):
    """The same over the demo set in an emulator's Requester Pays bucket, billed to ``BILLING_PROJECT``;
    ``storage`` replaces keys of its ``StorageSettings`` (anonymous, 8 requests in flight, short timeouts)."""
    from pneumo.testing.gcs_emulator import nih_urls

    settings = {
        "project": BILLING_PROJECT,
        "requester_pays": True,
        "token": "anon",
        "options": {"endpoint_url": em.endpoint},
        "concurrency": 8,
        "request_timeout_s": 5,
        "retry_deadline_s": 20,
    }
    return _tiny_datamodule(nih_urls(bucket), {"storage": {**settings, **(storage or {})}, **overrides})


def run_cli(args: list[str], cwd: Path = ROOT, timeout: int = 600, env: dict | None = None):
    """Run a project command in a subprocess with this interpreter; returns CompletedProcess."""
    import subprocess

    full_env = {**os.environ, "PYTHONWARNINGS": "ignore", **(env or {})}
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=full_env
    )


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def read_scalars(event_dir: Path) -> dict[str, list[float]]:
    """Every scalar series of the TensorBoard event files in ``event_dir``, by tag."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(event_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [e.value for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


#: What a wheel is built from: the files setuptools reads (tests/, benchmarks/, docs/ are not shipped).
WHEEL_SOURCES = ("pyproject.toml", "README.md", "pneumo", "conf")


def build_wheel(out_dir: Path) -> Path:
    """Build pneumo's wheel from a copy of the checkout's sources into ``out_dir``; returns the ``.whl``
    (pip's output is kept beside it in ``pip-wheel.log``).

    A copy, because setuptools builds in the source tree and its ``build/lib`` keeps modules deleted since
    (a stale wheel); offline (``--no-index``, ``--no-build-isolation``: this venv's setuptools).
    """
    import shutil
    import subprocess

    src = out_dir / "src"
    for name in WHEEL_SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            src.mkdir(parents=True, exist_ok=True)
            shutil.copy(ROOT / name, src / name)
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
         "-w", str(out_dir), str(src)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    (out_dir / "pip-wheel.log").write_text(proc.stdout + proc.stderr)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    wheels = list(out_dir.glob("pneumo-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]
