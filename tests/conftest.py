"""Shared fixtures: a tiny synthetic NIH-layout data set, Hydra configs pointing at it, a GCS emulator.

Helpers (paths, overrides, data modules, ``run_cli``) live in ``tests/helpers.py``: import them from there.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pneumo.io.environment import prepare_gcsfs

# Re-exported for tests written before tests/helpers.py existed; new tests import tests.helpers.
from tests.helpers import (  # noqa: F401
    BILLING_PROJECT,
    CONF,
    NIH_BUCKET,
    ROOT,
    TINY_DEMO,
    TINY_TRAINER,
    demo_datamodule,
    emulator_datamodule,
    run_cli,
    tiny_overrides,
)


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A synthetic NIH-format data set (80 images, 64 px), written once per session."""
    from pneumo.synthetic.demo import ensure_synthetic_dataset

    root = tmp_path_factory.mktemp("nih_demo")
    ensure_synthetic_dataset(str(root), **TINY_DEMO)
    return root


@pytest.fixture(scope="session")
def tiny_ckpt(demo_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkpoint of a classifier trained for 2 batches on the tiny demo set (64 px), via train.py's code;
    trained once per session (explain, the Python API)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import open_dict

    from pneumo.pipelines.train import train

    out = tmp_path_factory.mktemp("tiny_run")
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=[*tiny_overrides(demo_root, out), "test=false", "logger=none"])
    GlobalHydra.instance().clear()
    with open_dict(cfg):
        cfg.paths.output_dir = str(out / "run")
        cfg.callbacks.gradcam_overlay = None
        cfg.callbacks.lr_monitor = None  # logger=none: nothing to monitor into
        cfg.callbacks.early_stopping = None
    train(cfg)
    return out / "run" / "checkpoints" / "last.ckpt"


@pytest.fixture(scope="session")
def moved_threshold_explain(tiny_ckpt: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, float]:
    """``(out_dir, threshold)``: explain.py's outputs on the tiny demo's val split with a copy of ``tiny_ckpt``
    whose threshold was moved between two of its probabilities, just above the lowest labelled positive: the
    decisions are mixed and there is at least one false negative (the checkpoint-threshold and gallery tests).
    """
    import torch

    from pneumo.pipelines.explain import ExplainSettings, explain_images

    root = tmp_path_factory.mktemp("moved_threshold")
    first = explain_images(ExplainSettings(str(tiny_ckpt), str(root / "a"), split="val", progress=False))
    probs = sorted(float(r["probability"]) for r in first.predictions)
    lowest_positive = min(float(r["probability"]) for r in first.predictions if str(r["true_label"]) == "1")
    above = [p for p in probs if p > lowest_positive]
    assert above, "the lowest positive has the highest probability: no threshold gives mixed decisions"
    threshold = (lowest_positive + above[0]) / 2  # between two probabilities
    blob = torch.load(tiny_ckpt, map_location="cpu", weights_only=True)
    blob["state_dict"]["threshold"] = torch.tensor(threshold)
    moved = root / "moved.ckpt"
    torch.save(blob, moved)
    explain_images(ExplainSettings(str(moved), str(root / "b"), split="val", progress=False))
    return root / "b", threshold


@pytest.fixture(scope="session")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """pneumo's wheel, built once per session from a copy of the checkout (``tests.helpers.build_wheel``)."""
    from tests.helpers import build_wheel

    return build_wheel(tmp_path_factory.mktemp("wheel"))


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


# ---------------------------------------------------------------- GCS emulator (issue 3: cloud data path)
# gcsfs's gRPC bucket probe stalls every call against the emulator; gcsfs decides when it is imported, which
# any test (a logger, fsspec) may trigger first: decided at collection (child processes inherit it).
prepare_gcsfs(emulator=True)


@pytest.fixture(scope="session")
def _gcs_emulator_session():
    from pneumo.testing.gcs_emulator import GCSEmulator

    em = GCSEmulator().start()
    yield em
    em.stop()


@pytest.fixture()
def gcs_emulator(_gcs_emulator_session):
    """The in-process emulator (pneumo.testing.gcs_emulator), running, with no faults, latency or request log."""
    em = _gcs_emulator_session
    if not em.running:
        em.start()
    em.clear_faults()
    em.latency_s = 0.0
    em.requests.clear()
    yield em
    em.clear_faults()
    em.latency_s = 0.0
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


# ---------------------------------------------------------------- BigQuery emulator (issue 24: bq:// sources)
@pytest.fixture(scope="session")
def bigquery_emulator():
    """``bqemulator`` as a subprocess on 127.0.0.1 (random ports), from its own environment (.bqemu-venv,
    made by .ci/run); ``$BIGQUERY_EMULATOR_HOST`` points at it for the session (child processes inherit it).
    Skips with the install line when the environment or google-cloud-bigquery is missing."""
    import os

    pytest.importorskip("google.cloud.bigquery", reason='pip install "pneumo[bigquery]"')
    from pneumo.testing.bigquery_emulator import BigQueryEmulator, EmulatorUnavailable, emulator_python

    try:
        emulator_python()
    except EmulatorUnavailable as err:
        pytest.skip(str(err))
    em = BigQueryEmulator(project="test").start()
    old = os.environ.get("BIGQUERY_EMULATOR_HOST")
    os.environ["BIGQUERY_EMULATOR_HOST"] = em.endpoint
    yield em
    if old is None:
        os.environ.pop("BIGQUERY_EMULATOR_HOST", None)
    else:
        os.environ["BIGQUERY_EMULATOR_HOST"] = old
    em.stop()


@pytest.fixture(scope="session")
def bq_demo(bigquery_emulator, demo_root: Path) -> str:
    """Dataset ``test.nih`` holding the tiny demo set, uploaded by pneumo's own command code once per
    session; returns ``"test.nih"``."""
    from pneumo.data.bigquery import upload

    upload("test.nih", str(demo_root))
    return "test.nih"
