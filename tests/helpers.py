"""Helpers shared by the tests (import them from here; ``conftest.py`` holds only fixtures)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from pneumo.testing.tiny_run import densenet_net

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


#: The network of test runs: a MONAI DenseNet with DenseNet121's class, layer names (Grad-CAM's
#: ``features.transition2.conv``) and in-place ReLUs, but 2 layers per block and 16 initial features: 15 k
#: parameters and a 0.2 MB checkpoint instead of 7 M and 84 MB (writing, syncing and reading DenseNet121's
#: checkpoints took most of a tiny run's time). Tests about DenseNet121 itself ask for ``net=False``.
TINY_NET = densenet_net(16, 8, 2)


def tiny_overrides(data_root: Path, out: Path, net: bool = True) -> list[str]:
    """Hydra overrides for a seconds-long run on the tiny demo set written at ``data_root`` (with ``TINY_NET``
    unless ``net=False``: the configured DenseNet121)."""
    return [
        f"data.synthetic.root={data_root}",
        f"data.synthetic.n={TINY_DEMO['n']}",
        f"data.synthetic.size={TINY_DEMO['size']}",
        "data.images.size=64",
        "data.loader.batch_size=16",
        "data.loader.num_workers=0",
        f"paths.log_dir={out}",
        f"paths.data_dir={out}/data",
        *TINY_TRAINER,
        *(TINY_NET if net else []),
    ]


#: The settings groups of every test data module: 48 px, batches of 8, no workers, no progress bar.
TINY_GROUPS = {
    "images": {"size": 48},
    "loader": {"batch_size": 8, "num_workers": 0},
    "split": {"val_fraction": 0.2},
    "cache": {"progress": False},
}


def _tiny_datamodule(locations: dict, overrides: dict):
    """An ``NIHDataModule`` at test size (``TINY_GROUPS``) over ``locations``; ``overrides`` replace locations
    and keys of the groups (``images={"suffix": ".dcm"}`` keeps the size of ``TINY_GROUPS``)."""
    from pneumo.data.datamodule import NIHDataModule

    groups = {name: {**values, **(overrides.get(name) or {})} for name, values in TINY_GROUPS.items()}
    return NIHDataModule(**{**locations, **overrides, **groups})


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


_PRELOADED = None


def run_cli(
    args: list[str], cwd: Path = ROOT, timeout: int = 600, env: dict | None = None, fresh: bool = False
):
    """Run a project command (``python *args``: a script or ``-m module``) in a child process; returns
    ``CompletedProcess``. The child is forked from an interpreter that has imported the heavy libraries
    (``tests.preloaded``: seconds saved per command); ``fresh=True`` (or ``-c`` code) starts a new interpreter,
    for tests about imports or installs."""
    import subprocess

    full_env = {**os.environ, "PYTHONWARNINGS": "ignore", **(env or {})}
    if fresh or args[0] == "-c" or os.environ.get("PNEUMO_TESTS_FRESH_CLI"):
        return subprocess.run(
            [sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=full_env
        )
    return _preloaded().run(list(args), Path(cwd), full_env, timeout)


def _preloaded():
    """The session's preloading interpreter (``tests.preloaded``), started on first use."""
    global _PRELOADED
    from tests.preloaded import PreloadedInterpreter

    if _PRELOADED is None:
        import atexit

        _PRELOADED = PreloadedInterpreter(ROOT)
        atexit.register(_PRELOADED.close)
    return _PRELOADED


def start_cli(args: list[str], cwd: Path = ROOT, env: dict | None = None):
    """Start a project command (as ``run_cli``) and return at once, for tests that kill it mid-run: an object
    with ``subprocess.Popen``'s ``pid``, ``poll``, ``wait``, ``send_signal`` and ``kill``, plus ``output()``
    (stdout, stderr) once it has ended. Other ``run_cli`` calls wait until it has ended. Always a forked
    child, even under ``PNEUMO_TESTS_FRESH_CLI``: these tests are about the command's crash behaviour, which a
    fresh interpreter shares."""
    full_env = {**os.environ, "PYTHONWARNINGS": "ignore", **(env or {})}
    return _preloaded().start(list(args), Path(cwd), full_env)


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
