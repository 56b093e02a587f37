"""Shared fixtures: a tiny synthetic NIH-layout data set and Hydra configs pointing at it."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"

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
    from tests.gcs_emulator import nih_urls

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


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A synthetic NIH-format data set (80 images, 64 px), written once per session."""
    from pneumo.data.synthetic import ensure_synthetic_dataset

    root = tmp_path_factory.mktemp("nih_demo")
    ensure_synthetic_dataset(str(root), **TINY_DEMO)
    return root


@pytest.fixture()
def compose_train(tmp_path: Path):
    """Compose ``conf/train.yaml`` with overrides, as Hydra would for ``python train.py``."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    def _compose(overrides: list[str], config_name: str = "train"):
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            cfg = compose(config_name=config_name, overrides=overrides, return_hydra_config=True)
        HydraConfig().set_config(cfg)
        with open_dict(cfg):
            cfg.paths.output_dir = str(tmp_path / "run")
            del cfg["hydra"]  # as in @hydra.main: the job's config holds no hydra node
        return cfg

    yield _compose
    GlobalHydra.instance().clear()


def run_cli(args: list[str], cwd: Path = ROOT, timeout: int = 600, env: dict | None = None):
    """Run a project command in a subprocess with this interpreter; returns CompletedProcess."""
    import subprocess

    full_env = {**os.environ, "PYTHONWARNINGS": "ignore", **(env or {})}
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=full_env
    )


# ---------------------------------------------------------------- GCS emulator (issue 3: cloud data path)
# gcsfs >= 2026 probes buckets over gRPC when this is on, stalling every call against the emulator; it is
# read when gcsfs is imported, which any test (a logger, fsspec) may trigger first: set it at collection.
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")

#: Requester Pays bucket holding the tiny demo set in NIH's layout, and the project allowed to bill it.
NIH_BUCKET, BILLING_PROJECT = "nih-test", "test-billing"


@pytest.fixture(scope="session")
def _gcs_emulator_session():
    from tests.gcs_emulator import GCSEmulator

    em = GCSEmulator().start()
    yield em
    em.stop()


@pytest.fixture()
def gcs_emulator(_gcs_emulator_session):
    """The in-process emulator (tests/gcs_emulator.py), running, with no faults, latency or request log."""
    em = _gcs_emulator_session
    if not em.running:
        em.start()
    em.fault, em.latency_s = None, 0.0
    em.requests.clear()
    yield em
    em.fault, em.latency_s = None, 0.0
    if not em.running:
        em.start()


@pytest.fixture()
def nih_bucket(gcs_emulator, demo_root: Path) -> str:
    """``gs://nih-test``: the demo set in NIH's layout (png/, CSVs, lists), Requester Pays (billing project
    ``test-billing``); uploaded once per session. Returns the bucket name."""
    em = gcs_emulator
    if NIH_BUCKET not in em.requester_pays:
        em.create_bucket(NIH_BUCKET, requester_pays_projects={BILLING_PROJECT})
        em.upload_nih_layout(demo_root, NIH_BUCKET)
    em.requests.clear()
    return NIH_BUCKET
