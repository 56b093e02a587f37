"""What a classifier's outputs mean: the ``binary`` and ``multilabel`` tasks of ``PneumoniaClassifier``.

A task owns everything that differs between the two kinds of model, so that the classifier never asks
which one it is:

=================  ===================================  ==============================================
                   ``binary``                           ``multilabel`` (CheXNet)
=================  ===================================  ==============================================
outputs            2 logits: [no pneumonia, pneumonia]  14 logits, one per ChestX-ray14 finding
loss               cross-entropy, class ``weight``      BCE-with-logits, ``pos_weight`` per finding
probabilities      ``(B,)`` softmax of pneumonia        ``(B, 14)`` sigmoid of each finding
targets (batch)    ``batch["label"]``                   ``batch["findings"]``
automatic weights  inverse class frequency (train)      negatives / positives per finding (train)
=================  ===================================  ==============================================

"Which output is pneumonia" is answered here only (``Task.pneumonia_output``, ``pneumonia_column``).

Example:
    >>> task = task_named("multilabel")
    >>> task.outputs, task.pneumonia_output, FINDINGS[task.pneumonia_output]
    (14, 6, 'Pneumonia')
    >>> task.pneumonia_probability(torch.zeros(3, 14)).tolist()
    [0.5, 0.5, 0.5]
    >>> task_named("binary").pneumonia_probability(torch.tensor([[0.0, 0.0]])).tolist()
    [0.5]
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any, ClassVar, TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from torchmetrics import Metric
from torchmetrics.classification import BinaryAUROC, BinaryAveragePrecision

from pneumo.config import choice
from pneumo.errors import ConfigError
from pneumo.nih.findings import FINDINGS, PNEUMONIA_INDEX
from pneumo.stats.metrics import auroc

log = logging.getLogger(__name__)

ArrayOrTensor = TypeVar("ArrayOrTensor", np.ndarray, torch.Tensor)


def pneumonia_column(values: ArrayOrTensor) -> ArrayOrTensor:
    """The pneumonia entries of predictions or labels: ``(n,)`` as is (binary), column ``Pneumonia`` of
    ``(n, 14)`` (multi-label).

    Example:
        >>> pneumonia_column(np.eye(14)[[6, 0]]).tolist()
        [1.0, 0.0]
    """
    return values[:, PNEUMONIA_INDEX] if values.ndim == 2 else values


class Task(ABC):
    """One kind of classifier output (see the module docstring); subclasses are stateless singletons."""

    #: The ``model.task`` value (saved in checkpoints' hyperparameters).
    name: ClassVar[str]
    #: Number of network outputs (``model.net.out_channels``).
    outputs: ClassVar[int]
    #: Index of the pneumonia logit among the outputs.
    pneumonia_output: ClassVar[int]
    #: Names of the per-finding probability columns (empty for a single pneumonia probability).
    findings: ClassVar[tuple[str, ...]] = ()
    #: The ``model.net.out_channels`` fix printed when the network does not have ``outputs`` outputs.
    net_fix: ClassVar[str]

    def __str__(self) -> str:
        return self.name

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    @property
    def probability_shape(self) -> tuple[int, ...]:
        """Shape of one image's probabilities: ``()`` or ``(14,)``."""
        return (len(self.findings),) if self.findings else ()

    @abstractmethod
    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """Probabilities shaped ``(B,) + probability_shape`` from ``(B, outputs)`` logits (float32)."""

    def pneumonia_probability(self, logits: torch.Tensor) -> torch.Tensor:
        """``(B,)`` pneumonia probability from logits."""
        return pneumonia_column(self.probabilities(logits))

    @abstractmethod
    def margins(self, logits: ArrayOrTensor) -> ArrayOrTensor:
        """The logits ``z`` whose ``sigmoid(z / T)`` are the probabilities at temperature ``T``, shaped like the
        probabilities (binary: pneumonia logit - no-pneumonia logit; multi-label: the logits themselves)."""

    @abstractmethod
    def targets(self, batch: Mapping[str, Any]) -> torch.Tensor:
        """The loss targets of a batch from ``NIHDataModule`` / ``SyntheticDataModule``."""

    @abstractmethod
    def loss(self, logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """Mean loss of a batch; ``weights`` are the model's ``class_weights`` buffer (``outputs`` numbers)."""

    @abstractmethod
    def auto_weights(self, datamodule: Any) -> torch.Tensor:
        """``model.class_weights=auto``: the weights from the train split's prevalence."""

    def train_metrics(self) -> dict[str, Metric]:
        """Metrics updated on every training batch (name -> metric on pneumonia probabilities)."""
        return {}

    def auroc_values(self, targets: np.ndarray, probs: np.ndarray) -> dict[str, float]:
        """AUROC values logged per split (``auroc`` is the monitored one)."""
        y, p = pneumonia_column(targets), pneumonia_column(probs)
        return {"auroc": auroc(y, p) if len(y) else float("nan")}


class BinaryTask(Task):
    """Pneumonia against everything else: 2 logits, softmax, weighted cross-entropy."""

    name = "binary"
    outputs = 2
    pneumonia_output = 1
    net_fix = "set `model.net.out_channels=2`"

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.float().softmax(dim=1)[:, self.pneumonia_output]

    def margins(self, logits: ArrayOrTensor) -> ArrayOrTensor:
        return logits[:, self.pneumonia_output] - logits[:, 1 - self.pneumonia_output]

    def targets(self, batch: Mapping[str, Any]) -> torch.Tensor:
        return batch["label"]

    def loss(self, logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, targets, weight=weights)

    def auto_weights(self, datamodule: Any) -> torch.Tensor:
        if datamodule is None or not hasattr(datamodule, "train_class_counts"):
            raise ConfigError(
                "model.class_weights=auto needs a data module with train_class_counts(); "
                "or set model.class_weights=null"
            )
        counts = torch.as_tensor(datamodule.train_class_counts(), dtype=torch.float32)
        if (counts == 0).any():
            raise ConfigError(
                f"the train split has a class with no images (counts {counts.tolist()}): "
                "check data.labels_url / the split settings, or set model.class_weights=null"
            )
        weights = counts.sum() / (len(counts) * counts)
        log.info("class weights from train prevalence: %s", [round(w, 3) for w in weights.tolist()])
        return weights

    def train_metrics(self) -> dict[str, Metric]:
        return {"auroc": BinaryAUROC(), "auprc": BinaryAveragePrecision()}


class MultiLabelTask(Task):
    """The 14 ChestX-ray14 findings (CheXNet): one logit each, sigmoid, BCE-with-logits."""

    name = "multilabel"
    outputs = len(FINDINGS)
    pneumonia_output = PNEUMONIA_INDEX
    findings = FINDINGS
    net_fix = "use `model=densenet121_multilabel` (or add `model.net.out_channels=14`)"

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.float().sigmoid()

    def margins(self, logits: ArrayOrTensor) -> ArrayOrTensor:
        return logits

    def targets(self, batch: Mapping[str, Any]) -> torch.Tensor:
        return batch["findings"].float()

    def loss(self, logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(logits, targets, pos_weight=weights)

    def auto_weights(self, datamodule: Any) -> torch.Tensor:
        if datamodule is None or not hasattr(datamodule, "train_finding_counts"):
            raise ConfigError(
                "model.class_weights=auto (multilabel) needs a data module with train_finding_counts() "
                "(NIHDataModule); or set model.class_weights=null"
            )
        positives, n = datamodule.train_finding_counts()
        pos = torch.as_tensor(np.asarray(positives), dtype=torch.float32)
        weights = torch.where(pos > 0, (n - pos) / pos.clamp(min=1), torch.ones_like(pos))
        log.info(
            "BCE pos_weight from train prevalence: %s",
            dict(zip(FINDINGS, [round(w, 2) for w in weights.tolist()])),
        )
        absent = [f for f, p in zip(FINDINGS, pos.tolist()) if p == 0]
        if absent:
            log.warning("findings without a train positive (pos_weight 1, nothing to learn): %s", absent)
        return weights

    def auroc_values(self, targets: np.ndarray, probs: np.ndarray) -> dict[str, float]:
        per_finding = {
            f"auroc_{name}": auroc(targets[:, j], probs[:, j])
            for j, name in enumerate(self.findings)
            if 0 < targets[:, j].sum() < len(targets)
        }
        mean = float(np.mean(list(per_finding.values()))) if per_finding else float("nan")
        # The monitored metric of a multi-label run is the mean AUROC over findings.
        return {**per_finding, "auroc_mean": mean, "auroc": mean}


#: Every task by its ``model.task`` name.
TASKS: dict[str, Task] = {task.name: task for task in (BinaryTask(), MultiLabelTask())}


def task_named(name: str) -> Task:
    """The task called ``name`` (``model.task``).

    Raises:
        ConfigError: an unknown name (the message lists the valid ones).
    """
    return TASKS[choice(name, "model.task", TASKS)]


def task_of(model: torch.nn.Module) -> Task:
    """The task of a ``PneumoniaClassifier``; a bare network (no ``task``) counts as ``binary``."""
    task = getattr(model, "task", None)
    return task if isinstance(task, Task) else TASKS["binary"]
