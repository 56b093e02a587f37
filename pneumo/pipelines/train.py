"""The pipeline behind ``train.py``: compose -> instantiate -> fit -> test -> report -> metric.

``train=false ckpt_path=CKPT`` evaluates a checkpoint without training: the run is rebuilt from the
checkpoint (``pneumo.pipelines.runs``: its model, and its data module with the same split and skipped images), the
operating point is chosen on the validation split by ``eval.threshold`` (the same rule
that chose it during training gives the same threshold), and the test report is written as after training.
"""

from __future__ import annotations

import logging
from typing import Any

import hydra
import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import DictConfig, OmegaConf

from pneumo.callbacks.model_card import ModelCardCallback
from pneumo.config import to_plain
from pneumo.errors import ConfigError
from pneumo.io.storage import redact_secrets
from pneumo.pipelines.preflight import check_network_input, check_train_config
from pneumo.pipelines.runs import RUNTIME_DATA_KEYS, Run, load_run, setting_paths
from pneumo.reporting.model_card import card_fields, record_test_results, write_model_card
from pneumo.reporting.outputs import write_evaluation
from pneumo.reporting.report import EvalSettings

log = logging.getLogger(__name__)


def instantiate_group(cfg: DictConfig | None, kind: str) -> list[Any]:
    """Instantiate every ``_target_`` entry of a config group (callbacks, loggers); nulls are skipped."""
    objects = []
    for name, spec in (cfg or {}).items():
        if spec is None:
            continue
        if not isinstance(spec, DictConfig) or "_target_" not in spec:
            raise ConfigError(f"{kind}.{name!s} must be a config with a _target_, got {spec!r}")
        log.info("instantiating %s <%s>", kind, spec._target_)
        objects.append(hydra.utils.instantiate(spec))
    return objects


def without_logger_callbacks(callbacks: list[Any]) -> list[Any]:
    """Drop the callbacks that only write to a logger (Lightning refuses ``LearningRateMonitor`` without
    one), so that ``logger=none`` works with the default callbacks."""
    from lightning.pytorch.callbacks import LearningRateMonitor

    kept = [cb for cb in callbacks if not isinstance(cb, LearningRateMonitor)]
    if len(kept) < len(callbacks):
        log.info("logger=none: the learning-rate monitor has nothing to log to and is left out")
    return kept


class TrainedBatches(L.Callback):
    """Counts the training batches this process ran: a fit that trained none must not look like a run."""

    def __init__(self) -> None:
        self.batches = 0

    def on_train_batch_end(self, *args: Any, **kwargs: Any) -> None:
        self.batches += 1


def metric_value(metrics: dict[str, Any], name: str | None) -> float | None:
    """The optimized metric as a float (for Hydra sweepers); a clear error when it was never logged."""
    if not name:
        return None
    if name not in metrics:
        raise ConfigError(f"optimized_metric {name!r} was not logged; logged metrics: {sorted(metrics)}")
    value = metrics[name]
    return float(value.item() if isinstance(value, torch.Tensor) else value)


def load_run_of(cfg: DictConfig) -> Run:
    """The run of ``cfg.ckpt_path`` (model, data module, storage settings: ``pneumo.pipelines.runs.load_run``) for
    evaluation; this command's storage settings and ``RUNTIME_DATA_KEYS`` of ``data`` apply, the rule of
    its ``eval.threshold`` replaces the saved one (validation re-applies it to the weights)."""
    path = cfg.get("ckpt_path")
    if not path:
        raise ConfigError(
            "train=false evaluates a checkpoint: pass ckpt_path=PATH "
            "(e.g. ckpt_path=logs/train/runs/<timestamp>/checkpoints/last.ckpt)"
        )
    rule = cfg.eval.get("threshold") if cfg.get("eval") is not None else None
    data = dict(to_plain(cfg.get("data")) or {})
    log.info("rebuilding the run of %s (model, data module, storage settings)", path)
    run = load_run(path, storage=data.get("storage"), data=data, operating_point=rule)
    saved, given = setting_paths(run.datamodule.hparams), setting_paths(data)
    differing = sorted(
        k for k, v in given.items()
        if k in saved and k not in RUNTIME_DATA_KEYS and k != "storage" and v != saved[k]
    )  # fmt: skip
    if differing:
        log.warning(
            "train=false evaluates on the checkpoint's data: this command's data.%s differ(s) and are ignored",
            ", data.".join(differing),
        )
    return run


def train(cfg: DictConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """Fit (and test) the configured model, write the test report; return the metrics and the objects.

    With ``train=false`` the checkpoint ``ckpt_path`` is evaluated instead (validation picks the operating
    point, then test and the report).

    Example:
        >>> metrics, objects = train(cfg)  # doctest: +SKIP
        >>> objects["report"]["metrics"]["auroc"]["value"]  # doctest: +SKIP
    """
    check_train_config(cfg)  # values checkable without data: before anything is built or fetched
    if cfg.get("seed") is not None:
        # Lightning would print "Seed set to" on stderr; our log keeps it with the run's other lines.
        L.seed_everything(cfg.seed, workers=True, verbose=False)
        log.info("seed %s (torch, numpy, python and data-loader workers)", cfg.seed)
    settings = EvalSettings.from_config(to_plain(cfg.get("eval")))
    model, datamodule = build_model_and_data(cfg)
    trainer, trained = build_trainer(cfg)

    metrics: dict[str, Any] = {}
    if cfg.get("train"):
        run_fit(cfg, trainer, trained, model, datamodule, metrics)
    report, ckpt = None, None
    if cfg.get("test"):
        ckpt = run_test(cfg, trainer, model, datamodule, settings, metrics)
        report = write_evaluation(model, datamodule, trainer, settings, cfg.paths.output_dir, checkpoint=ckpt)
    elif not cfg.get("train"):
        log.warning("train=false and test=false: nothing to do")
    if (cfg.get("train") or cfg.get("test")) and trainer.is_global_zero:
        write_card(cfg, model, datamodule, report, ckpt)

    output_dir = cfg.paths.get("output_dir")
    log.info("outputs in %s", output_dir)
    best = _best_checkpoint(trainer)
    if best:
        log.info("best checkpoint: %s", best)
    objects = {"cfg": cfg, "datamodule": datamodule, "model": model, "trainer": trainer, "report": report}
    return metrics, objects


def build_model_and_data(cfg: DictConfig) -> tuple[L.LightningModule, L.LightningDataModule]:
    """The configured model and data module (``train=false``: the checkpoint's run), the network input
    checked against the image size before any data is read."""
    if not cfg.get("train") and (cfg.get("test") or cfg.get("ckpt_path")):
        run = load_run_of(cfg)
        model: L.LightningModule = run.model
        datamodule: L.LightningDataModule = run.datamodule
    else:
        log.info("instantiating data <%s>", cfg.data._target_)
        datamodule = hydra.utils.instantiate(cfg.data)
        log.info("instantiating model <%s>", cfg.model._target_)
        model = hydra.utils.instantiate(cfg.model, _recursive_=False)
    image_settings = getattr(datamodule, "image_settings", None)
    image_size = getattr(image_settings, "size", None)
    net = getattr(model, "net", None)
    if image_size is not None and isinstance(net, torch.nn.Module):
        # a pretrained RGB network gets the grey image replicated to its channels (model.input_norm)
        channels = int((getattr(model, "hparams", {}).get("net") or {}).get("in_channels", 1))
        check_network_input(net, image_size, in_channels=channels)
    return model, datamodule


def build_trainer(cfg: DictConfig) -> tuple[L.Trainer, TrainedBatches]:
    """The trainer with the configured callbacks and loggers (plus the model card's and a batch counter);
    the run's config goes to every logger, secrets redacted."""
    callbacks = instantiate_group(cfg.get("callbacks"), "callbacks")
    callbacks.append(ModelCardCallback(cfg))  # provenance into every checkpoint and model_card.md
    loggers = instantiate_group(cfg.get("logger"), "logger")
    if not loggers:
        callbacks = without_logger_callbacks(callbacks)
    trained = TrainedBatches()
    callbacks.append(trained)
    log.info("instantiating trainer <%s>", cfg.trainer._target_)
    trainer: L.Trainer = hydra.utils.instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    for lg in loggers:
        lg.log_hyperparams(redact_secrets(OmegaConf.to_container(cfg, resolve=True)))
    return trainer, trained


def run_fit(
    cfg: DictConfig,
    trainer: L.Trainer,
    trained: TrainedBatches,
    model: L.LightningModule,
    datamodule: L.LightningDataModule,
    metrics: dict[str, Any],
) -> None:
    """Train (resuming from ``ckpt_path`` when given); a fit that trained no batch is an error."""
    log.info("training")
    trainer.fit(model=model, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    if trained.batches == 0:  # e.g. resumed from a checkpoint that had already reached max_epochs
        why = (
            f"ckpt_path={cfg.ckpt_path} had already reached trainer.max_epochs={cfg.trainer.get('max_epochs')}"
            if cfg.get("ckpt_path")
            else "the trainer's limits allow no batch"
        )
        raise ConfigError(
            f"the run trained no batch ({why}): raise trainer.max_epochs to train on, or evaluate the "
            "checkpoint with train=false ckpt_path=CKPT; no test report was written"
        )
    metrics.update(trainer.callback_metrics)


def _best_checkpoint(trainer: L.Trainer) -> str:
    """The best checkpoint its ``ModelCheckpoint`` saved (``""``: no checkpoint callback, or none saved)."""
    callback = trainer.checkpoint_callback
    return callback.best_model_path if isinstance(callback, ModelCheckpoint) else ""


def run_test(
    cfg: DictConfig,
    trainer: L.Trainer,
    model: L.LightningModule,
    datamodule: L.LightningDataModule,
    settings: EvalSettings,
    metrics: dict[str, Any],
) -> str | None:
    """Test the trained model's best checkpoint (or its current weights); with ``train=false`` validate
    ``ckpt_path`` first (``eval.threshold`` chooses the operating point there), then test it. Returns the
    tested checkpoint."""
    if cfg.get("train"):
        best = _best_checkpoint(trainer)
        ckpt = best or None
        if not best:
            log.warning(
                "no best checkpoint (fast_dev_run or no checkpoint callback): testing current weights"
            )
        log.info("testing with %s", ckpt or "the current weights")
        trainer.test(model=model, datamodule=datamodule, ckpt_path=ckpt)
    else:
        ckpt = cfg.ckpt_path
        log.info("choosing the operating point (%s) on validation", settings.threshold)
        trainer.validate(model=model, datamodule=datamodule)
        metrics.update(trainer.callback_metrics)
        log.info("testing %s", ckpt)
        trainer.test(model=model, datamodule=datamodule)
    metrics.update(trainer.callback_metrics)
    return ckpt


def write_card(
    cfg: DictConfig,
    model: L.LightningModule,
    datamodule: L.LightningDataModule,
    report: dict | None,
    ckpt: str | None,
) -> None:
    """``model_card.md`` of the run, and the test results recorded in the checkpoint this run trained."""
    card = getattr(model, "model_card", None)
    if card is None and getattr(datamodule, "split", None) is not None:
        card = card_fields(cfg, datamodule, model)  # a checkpoint from before model cards
        # A plain attribute; torch types Module.__setattr__'s value as Tensor | Module only.
        model.model_card = card  # type: ignore[assignment]
    if card is not None:
        log.info("model card: %s", write_model_card(card, report, cfg.paths.output_dir))
    cohort = getattr(datamodule, "cohort", None)
    if cohort is not None:  # the images a data.cohort.query chose, so the cohort can be re-created
        log.info("cohort: %s", cohort.write_csv(cfg.paths.output_dir))
    if report is not None and cfg.get("train") and ckpt:  # the checkpoint this run wrote and tested
        record_test_results(ckpt, report)
