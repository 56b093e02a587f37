"""The training pipeline behind ``train.py``: compose -> instantiate -> fit -> test -> metric."""

from __future__ import annotations

import logging
from typing import Any

import hydra
import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf

from pneumo.data.store import redact_secrets

log = logging.getLogger(__name__)


def instantiate_group(cfg: DictConfig | None, kind: str) -> list[Any]:
    """Instantiate every ``_target_`` entry of a config group (callbacks, loggers); nulls are skipped."""
    objects = []
    for name, spec in (cfg or {}).items():
        if spec is None:
            continue
        if not isinstance(spec, DictConfig) or "_target_" not in spec:
            raise ValueError(f"{kind}.{name} must be a config with a _target_, got {spec!r}")
        log.info("instantiating %s <%s>", kind, spec._target_)
        objects.append(hydra.utils.instantiate(spec))
    return objects


def metric_value(metrics: dict[str, Any], name: str | None) -> float | None:
    """The optimized metric as a float (for Hydra sweepers); a clear error when it was never logged."""
    if not name:
        return None
    if name not in metrics:
        raise KeyError(f"optimized_metric {name!r} was not logged; logged metrics: {sorted(metrics)}")
    value = metrics[name]
    return float(value.item() if isinstance(value, torch.Tensor) else value)


def train(cfg: DictConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """Fit (and test) the configured model; return the logged metrics and the instantiated objects."""
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)

    log.info("instantiating data <%s>", cfg.data._target_)
    datamodule: L.LightningDataModule = hydra.utils.instantiate(cfg.data)
    log.info("instantiating model <%s>", cfg.model._target_)
    model: L.LightningModule = hydra.utils.instantiate(cfg.model, _recursive_=False)
    callbacks = instantiate_group(cfg.get("callbacks"), "callbacks")
    loggers = instantiate_group(cfg.get("logger"), "logger")
    log.info("instantiating trainer <%s>", cfg.trainer._target_)
    trainer: L.Trainer = hydra.utils.instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)

    for lg in loggers:
        lg.log_hyperparams(redact_secrets(OmegaConf.to_container(cfg, resolve=True)))

    metrics: dict[str, Any] = {}
    if cfg.get("train"):
        log.info("training")
        trainer.fit(model=model, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
        metrics.update(trainer.callback_metrics)

    if cfg.get("test"):
        ckpt = cfg.get("ckpt_path") if not cfg.get("train") else None
        if cfg.get("train"):
            best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
            ckpt = best or None
            if not best:
                log.warning(
                    "no best checkpoint (fast_dev_run or no checkpoint callback): testing current weights"
                )
        log.info("testing with %s", ckpt or "the current weights")
        trainer.test(model=model, datamodule=datamodule, ckpt_path=ckpt)
        metrics.update(trainer.callback_metrics)

    output_dir = cfg.paths.get("output_dir")
    log.info("outputs in %s", output_dir)
    if trainer.checkpoint_callback and trainer.checkpoint_callback.best_model_path:
        log.info("best checkpoint: %s", trainer.checkpoint_callback.best_model_path)
    objects = {"cfg": cfg, "datamodule": datamodule, "model": model, "trainer": trainer}
    return metrics, objects
