"""Training end to end: fast_dev_run in process, a real `python train.py` subprocess, TensorBoard read back."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import open_dict

from pneumo.pipelines.train import train
from tests.helpers import ROOT, demo_datamodule, read_scalars, run_cli, tiny_overrides


def test_fast_dev_run(compose_train, demo_root: Path, tmp_path: Path) -> None:
    cfg = compose_train([*tiny_overrides(demo_root, tmp_path), "debug=fdr"])
    with open_dict(cfg):
        cfg.trainer.detect_anomaly = False
    metrics, objects = train(cfg)
    assert objects["trainer"].fast_dev_run
    for name in ("train/loss", "val/loss", "test/loss", "test/auroc"):
        assert name in metrics and torch.isfinite(torch.as_tensor(metrics[name]))


def test_logger_none_runs_without_a_logger(compose_train, demo_root: Path, tmp_path: Path) -> None:
    """``logger=none`` with the default callbacks: the LR monitor (which needs a logger) is left out, the
    Grad-CAM overlays have nowhere to go, and the run still trains, tests and writes its report."""
    from lightning.pytorch.callbacks import LearningRateMonitor

    cfg = compose_train([*tiny_overrides(demo_root, tmp_path), "debug=fdr", "logger=none"])
    metrics, objects = train(cfg)
    trainer = objects["trainer"]
    assert trainer.loggers == []
    assert not any(isinstance(cb, LearningRateMonitor) for cb in trainer.callbacks)
    assert "test/auroc" in metrics
    assert not list(Path(cfg.paths.output_dir).rglob("events.out.tfevents.*"))


def test_class_weights_auto_follow_train_prevalence(compose_train, demo_root: Path, tmp_path: Path) -> None:
    cfg = compose_train([*tiny_overrides(demo_root, tmp_path), "debug=fdr", "test=false"])
    _, objects = train(cfg)
    counts = objects["datamodule"].train_class_counts()
    w = objects["model"].class_weights
    assert torch.allclose(w, torch.tensor(counts.sum() / (2 * counts), dtype=torch.float32))
    assert w[1] > w[0]  # pneumonia is the minority class


def test_a_fixed_threshold_holds_without_validation(demo_root: Path) -> None:
    """``eval.threshold=0.3``: testing a model that never ran validation calls positives at 0.3, not 0.5."""
    from functools import partial

    import lightning as L

    from pneumo.models.classifier import PneumoniaClassifier

    net = {
        "_target_": "monai.networks.nets.DenseNet121",
        "spatial_dims": 2,
        "in_channels": 1,
        "out_channels": 2,
    }
    model = PneumoniaClassifier(net=net, optimizer=partial(torch.optim.Adam, lr=1e-4), operating_point=0.3)
    assert float(model.threshold) == pytest.approx(0.3)
    assert model.operating_point["chosen_on"] == "fixed" and model.operating_point["value"] == pytest.approx(
        0.3
    )
    trainer = L.Trainer(
        accelerator="cpu",
        limit_test_batches=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
    )
    (metrics,) = trainer.test(model, datamodule=demo_datamodule(demo_root), verbose=False)
    assert metrics["test/threshold"] == pytest.approx(0.3)


@pytest.mark.slow
def test_train_cli_end_to_end(demo_root: Path, tmp_path: Path) -> None:
    # the configured DenseNet121 (the other test runs use tiny_overrides' small DenseNet)
    proc = run_cli(
        ["train.py", *tiny_overrides(demo_root, tmp_path, net=False), "trainer.max_epochs=3"], cwd=ROOT
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = list((tmp_path / "train" / "runs").iterdir())
    assert len(runs) == 1
    run = runs[0]
    ckpts = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert "last.ckpt" in ckpts and any(n.startswith("epoch_") for n in ckpts), ckpts
    scalars = read_scalars(run / "tensorboard")
    for tag in ("val/auroc", "val/loss", "train/loss"):
        assert tag in scalars, sorted(scalars)
    assert len(scalars["val/auroc"]) == 3 and all(0.0 <= v <= 1.0 for v in scalars["val/auroc"])
    # the best checkpoint is the epoch of the lowest validation loss (the monitored metric), whatever AUROC did
    [best] = [n for n in ckpts if n.startswith("epoch_")]
    losses = scalars["val/loss"]
    assert best == f"epoch_{losses.index(min(losses)):03d}.ckpt", (best, losses)
    assert all(v > 0 for v in scalars["train/loss"])
    # checkpoints load without unpickling code, and carry the preprocessing to rebuild the data
    blob = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert blob["datamodule_hyper_parameters"]["images"]["size"] == 64
    assert blob["hyper_parameters"]["net"]["_target_"] == "monai.networks.nets.DenseNet121"
    assert "test/auroc" in proc.stderr + proc.stdout
    train_log = (run / "train.log").read_text()
    assert "test/auroc = " in train_log
    assert "alembic" not in train_log  # third-party set-up chatter stays out of the run's log


def test_pretrained_from_a_pneumo_checkpoint(compose_train, demo_root: Path, tmp_path: Path) -> None:
    import hydra

    from pneumo.models.pretrained import PretrainedFileNotFoundError

    cfg = compose_train([*tiny_overrides(demo_root, tmp_path)])
    donor = hydra.utils.instantiate(cfg.model, _recursive_=False)
    path = tmp_path / "donor.ckpt"
    torch.save({"state_dict": donor.state_dict(), "hyper_parameters": dict(donor.hparams)}, path)
    with open_dict(cfg):
        cfg.model.pretrained = str(path)
    model = hydra.utils.instantiate(cfg.model, _recursive_=False)
    for (k, a), b in zip(donor.net.state_dict().items(), model.net.state_dict().values()):
        assert torch.equal(a, b), k
    assert model.hparams.input_norm is None and model.hparams.net["in_channels"] == 1  # the donor's, grey
    assert model.initial_weights["source"] == str(path) and len(model.initial_weights["sha256"]) == 64
    with open_dict(cfg):
        cfg.model.pretrained = str(tmp_path / "absent.pt")
    with pytest.raises(Exception, match=r"absent\.pt does not exist") as caught:
        hydra.utils.instantiate(cfg.model, _recursive_=False)
    assert isinstance(caught.value.__cause__ or caught.value, PretrainedFileNotFoundError)  # Hydra wraps it


def test_missing_data_root_fails_before_training(tmp_path: Path) -> None:
    proc = run_cli(
        [
            "train.py",
            "data=nih",
            f"data.images_url={tmp_path}/png",
            f"data.labels_url={tmp_path}/labels.csv",
            "data.split_lists=null",
            f"paths.log_dir={tmp_path}/logs",
        ],
        cwd=ROOT,
        timeout=120,
    )
    assert proc.returncode != 0
    assert (
        f"{tmp_path}/labels.csv does not exist" in proc.stderr and "python -m pneumo synthetic" in proc.stderr
    )
    assert "Epoch 0" not in proc.stderr
