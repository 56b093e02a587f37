"""``PneumoniaClassifier``: the LightningModule that trains and evaluates a pneumonia classifier.

Example:
    >>> from functools import partial
    >>> model = PneumoniaClassifier(
    ...     net={"_target_": "monai.networks.nets.DenseNet121", "spatial_dims": 2, "in_channels": 1, "out_channels": 2},
    ...     optimizer=partial(torch.optim.Adam, lr=1e-4))
    >>> model(torch.zeros(2, 1, 64, 64)).shape
    torch.Size([2, 2])
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from torchmetrics import MeanMetric, MetricCollection
from torchmetrics.classification import (
    BinaryAccuracy,
    BinaryAUROC,
    BinaryAveragePrecision,
    BinaryRecall,
    BinarySpecificity,
)

from pneumo.models.nets import build_net, load_initial_weights
from pneumo.utils.config import to_plain

log = logging.getLogger(__name__)


def _binary_metrics(prefix: str) -> MetricCollection:
    return MetricCollection(
        {
            "auroc": BinaryAUROC(),
            "auprc": BinaryAveragePrecision(),
            "accuracy": BinaryAccuracy(),
            "sensitivity": BinaryRecall(),
            "specificity": BinarySpecificity(),
        },
        prefix=f"{prefix}/",
    )


class PneumoniaClassifier(L.LightningModule):
    """A binary pneumonia classifier (logits for [no pneumonia, pneumonia]).

    Args:
        net: ``_target_`` spec of the network (kept as plain data so checkpoints rebuild it).
        optimizer: ``_partial_`` spec (or a callable) taking the parameters, e.g. Adam lr 1e-4.
        scheduler: optional ``_partial_`` spec taking the optimizer (``ReduceLROnPlateau`` on ``monitor``).
        monitor: metric the scheduler watches.
        class_weights: ``"auto"`` (inverse train prevalence), a list ``[w_neg, w_pos]``, or ``None``.
        init_weights: optional local checkpoint / state-dict file to initialise the network from.
    """

    def __init__(
        self,
        net: Mapping,
        optimizer: Mapping | Callable,
        scheduler: Mapping | Callable | None = None,
        monitor: str = "val/auroc",
        class_weights: str | Sequence[float] | None = "auto",
        init_weights: str | None = None,
    ) -> None:
        super().__init__()
        net, optimizer, scheduler, class_weights = map(to_plain, (net, optimizer, scheduler, class_weights))
        if isinstance(class_weights, str) and class_weights != "auto":
            raise ValueError(
                f"model.class_weights must be 'auto', a list of 2 numbers or null, got {class_weights!r}"
            )
        self.save_hyperparameters(
            {
                "net": net,
                "optimizer": optimizer if isinstance(optimizer, Mapping) else None,
                "scheduler": scheduler if isinstance(scheduler, Mapping) or scheduler is None else None,
                "monitor": monitor,
                "class_weights": class_weights,
                "init_weights": init_weights,
            }
        )
        self._optimizer, self._scheduler = optimizer, scheduler
        self.net = build_net(net)
        if init_weights:
            load_initial_weights(self.net, init_weights)
        num_classes = 2
        weights = (
            torch.ones(num_classes)
            if class_weights in (None, "auto")
            else torch.tensor(class_weights, dtype=torch.float32)
        )
        if weights.shape != (num_classes,):
            raise ValueError(f"model.class_weights needs {num_classes} numbers, got {class_weights}")
        # A buffer, so the weights travel with checkpoints and are right on any device.
        self.register_buffer("class_weights", weights)
        # Operating point on the pneumonia probability; evaluation chooses it on validation and stores it here.
        self.register_buffer("threshold", torch.tensor(0.5))
        # ModuleDict keys must not shadow nn.Module attributes such as .train, hence the "_stage" keys.
        self.losses = torch.nn.ModuleDict({f"_{s}": MeanMetric() for s in ("train", "val", "test")})
        self.metrics = torch.nn.ModuleDict({f"_{s}": _binary_metrics(s) for s in ("train", "val", "test")})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def setup(self, stage: str) -> None:
        if self.hparams.class_weights == "auto" and stage == "fit":
            datamodule = getattr(self.trainer, "datamodule", None)
            if datamodule is None or not hasattr(datamodule, "train_class_counts"):
                raise ValueError("model.class_weights=auto needs a data module with train_class_counts()")
            counts = torch.as_tensor(datamodule.train_class_counts(), dtype=torch.float32)
            if (counts == 0).any():
                raise ValueError(f"the train split has a class with no images (counts {counts.tolist()})")
            self.class_weights.copy_(counts.sum() / (len(counts) * counts))
            log.info(
                "class weights from train prevalence: %s", [round(w, 3) for w in self.class_weights.tolist()]
            )

    # ------------------------------------------------------------------ steps
    def _step(self, batch: Mapping[str, Any], stage: str) -> torch.Tensor:
        logits = self(batch["image"])
        target = batch["label"]
        loss = F.cross_entropy(logits, target, weight=self.class_weights)
        prob = logits.detach().float().softmax(dim=1)[:, 1]
        self.losses[f"_{stage}"].update(loss.detach(), weight=len(target))
        self.metrics[f"_{stage}"].update(prob, target)
        on_step = stage == "train"
        self.log(
            f"{stage}/loss",
            self.losses[f"_{stage}"],
            on_step=False,
            on_epoch=True,
            prog_bar=True,
            batch_size=len(target),
        )
        if on_step:
            self.log("train/loss_step", loss.detach(), on_step=True, on_epoch=False, batch_size=len(target))
        return loss

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        self._step(batch, "test")

    def _log_epoch_metrics(self, stage: str) -> None:
        values = self.metrics[f"_{stage}"].compute()
        self.log_dict(values, prog_bar=stage != "train", sync_dist=False)
        self.metrics[f"_{stage}"].reset()

    def on_train_epoch_end(self) -> None:
        self._log_epoch_metrics("train")

    def on_validation_epoch_end(self) -> None:
        self._log_epoch_metrics("val")

    def on_test_epoch_end(self) -> None:
        self._log_epoch_metrics("test")

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self) -> Any:
        make_opt = (
            instantiate(self._optimizer, _partial_=True)
            if isinstance(self._optimizer, Mapping)
            else self._optimizer
        )
        optimizer = make_opt(params=self.parameters())
        if self._scheduler is None:
            return optimizer
        make_sched = (
            instantiate(self._scheduler, _partial_=True)
            if isinstance(self._scheduler, Mapping)
            else self._scheduler
        )
        return {
            "optimizer": optimizer,
            "lr_scheduler": {
                "scheduler": make_sched(optimizer=optimizer),
                "monitor": self.hparams.monitor,
                "interval": "epoch",
            },
        }

    @torch.no_grad()
    def predict_proba(self, x: torch.Tensor) -> torch.Tensor:
        """Pneumonia probability per image."""
        return self(x).float().softmax(dim=1)[:, 1]
