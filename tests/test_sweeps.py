"""Hydra multiruns through the real CLI: grid sweep, failed jobs, parallel (joblib) jobs, Optuna search."""

from __future__ import annotations

import math
from pathlib import Path

import hydra
import pandas as pd
import pytest
import torch
import yaml

from tests.helpers import ROOT, read_scalars, run_cli, tiny_overrides


def quick(demo_root: Path, out: Path) -> list[str]:
    """``tiny_overrides`` cut further: one train batch of 4, the whole (tiny) val split, no sanity check, no test.

    The whole val split keeps pneumonia cases in it: a single batch of 4 may hold none (AUROC undefined).
    """
    keep = [o for o in tiny_overrides(demo_root, out) if not o.startswith(("+trainer.limit_", "data.batch"))]
    return [
        *keep,
        "data.batch_size=4",
        "+trainer.limit_train_batches=1",
        "+trainer.num_sanity_val_steps=0",
        "test=false",
    ]


def the_sweep(out: Path) -> Path:
    [sweep] = list((out / "train" / "multiruns").iterdir())
    return sweep


@pytest.mark.slow
def test_grid_multirun_two_jobs(demo_root: Path, tmp_path: Path) -> None:
    proc = run_cli(["train.py", "-m", "model.optimizer.lr=1e-4,3e-4", *quick(demo_root, tmp_path)], cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    sweep = the_sweep(tmp_path)
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert [j.name for j in jobs] == ["0", "1"]
    best = [list((j / "checkpoints").glob("epoch_*.ckpt")) for j in jobs]
    assert [len(b) for b in best] == [1, 1]
    assert all((j / "checkpoints" / "last.ckpt").is_file() for j in jobs)

    table = pd.read_csv(sweep / "sweep_summary.csv")
    assert list(table["job"]) == [0, 1] and set(table["status"]) == {"COMPLETED"}
    assert list(table["model.optimizer.lr"]) == [1e-4, 3e-4]  # the swept key gets its own column
    assert list(table["metric_name"]) == ["val/loss", "val/loss"]  # the run's monitored metric
    for (_, row), job, [ckpt] in zip(table.iterrows(), jobs, best):
        assert row["best_checkpoint"] == str(ckpt) and row["output_dir"] == str(job)
        # the metric is the job's own val/loss, as its TensorBoard events have it
        assert row["metric"] == pytest.approx(read_scalars(job / "tensorboard")["val/loss"][-1], abs=1e-6)
        assert row["metric"] > 0.0
        # and the job trained with its own learning rate
        blob = torch.load(ckpt, map_location="cpu", weights_only=True)
        assert blob["optimizer_states"][0]["param_groups"][0]["lr"] == row["model.optimizer.lr"]


@pytest.mark.slow
def test_failed_job_is_reported_and_parallel_jobs_stay_apart(demo_root: Path, tmp_path: Path) -> None:
    """Job 0 fails while job 1 runs beside it (joblib, 2 processes): both get their own folder and row."""
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    proc = run_cli(
        [
            "train.py",
            "-m",
            "hydra/launcher=parallel",
            "hydra.launcher.n_jobs=2",
            "model.class_weights=[1.0,2.0,3.0],auto",
            "optimized_metric=null",
            *quick(demo_root, tmp_path),
        ],
        cwd=ROOT,
    )
    # the sweep ends normally (Hydra alone would re-raise the failure)
    assert proc.returncode == 0, proc.stderr[-3000:]
    sweep = the_sweep(tmp_path)
    table = pd.read_csv(sweep / "sweep_summary.csv", keep_default_na=False)
    assert list(table["status"]) == ["FAILED", "COMPLETED"]
    assert (
        "model.class_weights=[1.0, 2.0, 3.0]: choose one of 'auto', null or a list of 2 numbers (finite, >= 0)"
        in table["error"][0]
    )
    assert table["error"][1] == "" and list(table["model.class_weights"]) == ["[1.0,2.0,3.0]", "auto"]
    for job in (0, 1):
        overrides = yaml.safe_load((sweep / str(job) / ".hydra" / "overrides.yaml").read_text())
        assert overrides[0] == table["overrides"][job].split()[0]
    assert (
        "null or a list of 2 numbers" in (sweep / "0" / "train.log").read_text()
    )  # the job's own log has the traceback
    assert "1 of 2 jobs did not complete: 0" in proc.stderr + proc.stdout


@pytest.mark.slow
def test_optuna_three_trials(demo_root: Path, tmp_path: Path) -> None:
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    # data.image_size stays out of the overrides: a command-line value would fix it, not search it
    overrides = [o for o in quick(demo_root, tmp_path) if not o.startswith("data.image_size=")]
    proc = run_cli(["train.py", "hparams_search=optuna", "hydra.sweeper.n_trials=3", *overrides], cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    sweep = the_sweep(tmp_path)
    table = pd.read_csv(sweep / "sweep_summary.csv", keep_default_na=False)
    assert list(table["job"]) == [0, 1, 2] and set(table["status"]) == {"COMPLETED"}
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert results["best_value"] == pytest.approx(table["metric"].max())
    assert set(results["best_params"]) == {
        "model.optimizer.lr",
        "model.optimizer.weight_decay",
        "model.class_weights",
        "data.image_size",
    }
    for job in range(3):
        cfg = yaml.safe_load((sweep / str(job) / ".hydra" / "config.yaml").read_text())
        assert 1e-5 <= cfg["model"]["optimizer"]["lr"] <= 1e-3
        assert cfg["model"]["optimizer"]["weight_decay"] in (0.0, 1e-5, 1e-4, 1e-3)
        assert cfg["model"]["class_weights"] in ("auto", [1.0, 1.0], [1.0, 3.0])
        assert cfg["data"]["image_size"] in (64, 96, 128)
        assert not math.isnan(table["metric"][job])


@pytest.mark.parametrize("launcher", ["slurm", "parallel", "submitit_slurm", "joblib"])
def test_launcher_configs_compose_and_instantiate(launcher: str) -> None:
    plugin = "submitit" if "slurm" in launcher else "joblib"
    pytest.importorskip(f"hydra_plugins.hydra_{plugin}_launcher")
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from tests.helpers import CONF

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=[f"hydra/launcher={launcher}"], return_hydra_config=True)
    GlobalHydra.instance().clear()
    spec = cfg.hydra.launcher
    assert spec._target_.startswith("hydra_plugins.")
    hydra.utils.instantiate(spec)
    if launcher == "slurm":  # the plugin's fields, with the project's values on top
        assert spec.submitit_folder.endswith("/.submitit/%j") and spec.partition is None
        assert (spec.tasks_per_node, spec.gpus_per_node, spec.timeout_min) == (1, 1, 240)
    if launcher == "parallel":
        assert (spec.n_jobs, spec.batch_size, spec.prefer) == (2, "1", "processes")
