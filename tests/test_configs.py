"""Every config option composes and resolves; the CPU-runnable ones instantiate."""

from __future__ import annotations

from pathlib import Path

import hydra
import pytest
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf

from tests.helpers import CONF, ROOT, run_cli


def options(group: str) -> list[str]:
    return sorted(
        p.stem
        for p in (CONF / group).glob("*.yaml")
        if p.stem != "default" or group in ("trainer", "callbacks", "paths", "hydra")
    )


GROUP_OVERRIDES = (
    [
        f"{group}={option}"
        for group in ("data", "model", "trainer", "callbacks", "logger")
        for option in options(group)
    ]
    + [f"debug={o}" for o in options("debug") if o != "default"]
    + [f"experiment={o}" for o in options("experiment")]
)


@pytest.mark.parametrize("override", GROUP_OVERRIDES)
def test_option_composes_and_resolves(compose_train, override: str) -> None:
    cfg = compose_train([override])
    resolved = OmegaConf.to_container(cfg, resolve=True)
    assert resolved["data"]["_target_"] == "pneumo.data.datamodule.NIHDataModule"
    assert resolved["model"]["_target_"] == "pneumo.models.classifier.PneumoniaClassifier"
    assert set(resolved) >= {"task_name", "seed", "train", "test", "ckpt_path", "optimized_metric"}


@pytest.mark.parametrize(
    "override", ["data=demo", "data=nih", "trainer=cpu", "callbacks=default", "logger=tensorboard"]
)
def test_cpu_options_instantiate(compose_train, override: str, tmp_path: Path) -> None:
    cfg = compose_train([override, "trainer.accelerator=cpu"])
    dm = hydra.utils.instantiate(cfg.data)
    assert dm.hparams.images["size"] == dm.image_settings.size == cfg.data.images.size
    model = hydra.utils.instantiate(cfg.model, _recursive_=False)
    assert sum(p.numel() for p in model.parameters()) > 6_000_000  # DenseNet121 with a 2-class head
    for spec in (cfg.get("callbacks") or {}).values():
        hydra.utils.instantiate(spec)
    trainer = hydra.utils.instantiate(cfg.trainer, logger=False, enable_checkpointing=False)
    assert trainer.max_epochs == cfg.trainer.max_epochs


def test_run_dir_layout(compose_train) -> None:
    cfg = compose_train([])
    assert HydraConfig.get().run.dir.startswith("./logs/train/runs/2")
    # one monitored metric: the best checkpoint, early stopping, the scheduler and the sweep objective
    watched = [
        (cfg.callbacks.model_checkpoint.monitor, cfg.callbacks.model_checkpoint.mode),
        (cfg.callbacks.early_stopping.monitor, cfg.callbacks.early_stopping.mode),
        (cfg.model.monitor, "min"),
        (cfg.optimized_metric, "min"),
    ]
    assert watched == [("val/loss", "min")] * 4
    # last.ckpt is refreshed every epoch by a monitor-less checkpoint callback (the resume point)
    assert cfg.callbacks.last_checkpoint.filename == "last" and cfg.callbacks.last_checkpoint.monitor is None


def test_cfg_job_prints_the_composed_config() -> None:
    proc = run_cli(
        ["train.py", "--cfg", "job", "data.images.size=96", "model.optimizer.lr=3e-4"], cwd=ROOT, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    cfg = OmegaConf.create(proc.stdout)
    assert cfg.data.images.size == 96 and cfg.model.optimizer.lr == 3e-4
    assert cfg.model.net._target_ == "monai.networks.nets.DenseNet121"


def test_chexnet_recipe(compose_train) -> None:
    """experiment=chexnet: the paper's settings (Rajpurkar et al. 2017, section 3)."""
    cfg = compose_train(["experiment=chexnet"])
    model = cfg.model
    assert (model.task, model.net.out_channels, model.pretrained, model.class_weights) == (
        "multilabel", 14, "imagenet", None,
    )  # fmt: skip
    assert (cfg.data.images.size, cfg.data.loader.batch_size) == (224, 16)
    assert model.optimizer._target_ == "torch.optim.Adam" and model.optimizer.lr == 1e-3
    assert list(model.optimizer.betas) == [0.9, 0.999]
    sched = model.scheduler
    assert sched._target_.endswith("ReduceLROnPlateau") and (sched.factor, sched.mode) == (0.1, "min")
    # the lowest validation loss picks the checkpoint, and everything else watches the same
    assert model.monitor == cfg.callbacks.model_checkpoint.monitor == cfg.optimized_metric == "val/loss"
    assert cfg.callbacks.model_checkpoint.mode == cfg.callbacks.early_stopping.mode == "min"
    assert cfg.data.labels_url.endswith("Data_Entry_2017_v2020.csv.gz")  # NIH's data, official lists
    assert cfg.data.split_lists.test.endswith("test_list.txt")


def test_nih_pneumonia_recipe(compose_train) -> None:
    cfg = compose_train(["experiment=nih_pneumonia"])
    model = cfg.model
    assert (model.task, model.net.out_channels, model.pretrained, model.class_weights) == (
        "binary", 2, "imagenet", "auto",
    )  # fmt: skip
    assert cfg.data.images.size == 224 and model.optimizer.lr == 1e-4
    assert model.scheduler.mode == cfg.callbacks.early_stopping.mode == "min"
    assert model.monitor == cfg.callbacks.early_stopping.monitor == cfg.optimized_metric == "val/loss"
