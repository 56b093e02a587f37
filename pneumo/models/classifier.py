"""``PneumoniaClassifier``: the LightningModule that trains and evaluates a chest X-ray classifier.

Two tasks share the module: ``binary`` (the default: logits for [no pneumonia, pneumonia], cross-entropy)
and ``multilabel`` (the 14 ChestX-ray14 findings, as CheXNet: one logit per finding, BCE-with-logits).
Everything that differs between them (outputs, loss, probabilities, targets, automatic weights, which
output is pneumonia) lives in ``pneumo.models.tasks``; the module delegates to ``self.task``.

The operating point lives in the ``threshold`` buffer: the threshold on the **pneumonia probability**
(an image is called positive when ``probability >= threshold``). It is chosen on the validation split at the
end of every validation epoch by the rule ``operating_point`` (``youden``, ``sensitivity@0.90``,
``specificity@0.90`` or a fixed number), so each checkpoint carries the threshold of its own epoch; test
and ``explain.py`` use it. Multi-label models also carry ``thresholds`` (one per finding, same rule);
``threshold`` is then the pneumonia entry.

Probabilities are temperature-scaled (Guo et al. 2017): every logit is divided by the ``temperature``
buffer before the softmax / sigmoid. With ``temperature="fit"`` (the default config) it is fitted on the
validation split by NLL at the end of every validation epoch, before the operating point is chosen, so each
checkpoint carries the temperature and threshold of its own epoch (``pneumo.stats.temperature``); a
number fixes it (``1.0`` gives the unscaled probabilities exactly). Ranking metrics (AUROC) do not change.

Validation and test predictions are gathered across processes (DDP-safe) and kept in
``model.predictions["val" | "test"]`` for the evaluation report (``pneumo.evaluation``).

Example:
    >>> from functools import partial
    >>> model = PneumoniaClassifier(
    ...     net={"_target_": "monai.networks.nets.DenseNet121", "spatial_dims": 2, "in_channels": 1, "out_channels": 2},
    ...     optimizer=partial(torch.optim.Adam, lr=1e-4))
    >>> model(torch.zeros(2, 1, 64, 64)).shape
    torch.Size([2, 2])
    >>> float(model.threshold), model.predict_proba(torch.zeros(1, 1, 64, 64)).shape
    (0.5, torch.Size([1]))
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import lightning as L
import numpy as np
import torch
from hydra.utils import instantiate
from torch import nn
from torchmetrics import Metric

from pneumo.config import choice_error, to_plain
from pneumo.errors import ConfigError
from pneumo.images.batch import scale_batch
from pneumo.models.nets import build_net
from pneumo.models.pretrained import IMAGENET, IMAGENET_URL, PretrainedWeights, input_adapter
from pneumo.models.tasks import pneumonia_column, task_named
from pneumo.stats.metrics import average_precision, threshold_metrics
from pneumo.stats.temperature import fit_temperature
from pneumo.stats.threshold import DEFAULT_RULE, OperatingPoint, ThresholdRule, select_threshold

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvalOutputs:
    """Predictions of one split, gathered over processes, one row per image (sorted by image name).

    Attributes:
        image_ids: image names.
        probs: ``(n,)`` pneumonia probabilities (binary) or ``(n, 14)`` finding probabilities (multi-label),
            at the model's temperature.
        targets: labels shaped like ``probs``.
        logits: ``(n, outputs)`` raw network outputs (before temperature scaling).
    """

    image_ids: np.ndarray
    probs: np.ndarray
    targets: np.ndarray
    logits: np.ndarray

    @property
    def pneumonia(self) -> tuple[np.ndarray, np.ndarray]:
        """``(labels, probabilities)`` of pneumonia."""
        return pneumonia_column(self.targets), pneumonia_column(self.probs)


def _concat_parts(
    parts: list[tuple[list[str], torch.Tensor, torch.Tensor]], row_shape: tuple[int, ...], outputs: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(image ids, logits, targets)`` of one process's batches."""
    ids = np.array([i for part in parts for i in part[0]], dtype=object)
    logits = (
        torch.cat([p[1] for p in parts]).float().cpu().numpy()
        if parts
        else np.zeros((0, outputs), np.float32)
    )
    targets = (
        torch.cat([p[2] for p in parts]).long().cpu().numpy()
        if parts
        else np.zeros((0, *row_shape), dtype=np.int64)
    )
    return ids, logits, targets


class PneumoniaClassifier(L.LightningModule):
    """A pneumonia classifier (binary) or a 14-finding classifier (multi-label) with a chosen operating point.

    Args:
        net: ``_target_`` spec of the network (kept as plain data so checkpoints rebuild it); its
            ``out_channels`` must be 2 (binary) or 14 (multi-label).
        optimizer: ``_partial_`` spec (or a callable) taking the parameters, e.g. Adam lr 1e-4.
        scheduler: optional ``_partial_`` spec taking the optimizer (``ReduceLROnPlateau`` on ``monitor``).
        monitor: metric the scheduler watches.
        class_weights: ``"auto"`` (from train prevalence), explicit weights, or ``None``. Binary: the
            cross-entropy weights ``[w_neg, w_pos]`` (auto = inverse class frequency). Multi-label: the
            BCE ``pos_weight`` of each of the 14 findings (auto = negatives / positives in train; 1 for a
            finding without train positives).
        pretrained: first weights of the network (``pneumo.models.pretrained``): ``None`` (random),
            ``"imagenet"``, or the path/URL of a checkpoint or state dict (a pneumo ``.ckpt``, a CheXNet
            reproduction, any torchvision-layout DenseNet121). Sets ``net.in_channels`` and ``input_norm``
            to the source's. Only read when the model is built for training: ``load_from_checkpoint``
            rebuilds from the checkpoint's own weights.
        input_norm: the input normalisation the network expects (``"imagenet"``: grey replicated to RGB,
            ImageNet's mean and std; ``None``: grey in [0, 1] as is), applied inside ``forward`` so that
            training, test, ``explain.py`` and the Grad-CAM callback all feed it alike. Follows
            ``pretrained`` when that is set; saved with the model.
        task: ``binary`` or ``multilabel``.
        operating_point: rule choosing ``threshold`` on validation (``eval.threshold`` in the config).
        temperature: ``"fit"`` (fitted on validation by NLL every validation epoch) or a fixed number > 0.
    """

    # The buffers of _init_calibration (nn.Module types a registered name only as ``Tensor | Module``).
    class_weights: torch.Tensor
    threshold: torch.Tensor
    temperature: torch.Tensor
    thresholds: torch.Tensor

    def __init__(  # noqa: PLR0913 - one argument per key of conf/model/*.yaml (Hydra instantiates it)
        self,
        net: Mapping,
        optimizer: Mapping | Callable,
        scheduler: Mapping | Callable | None = None,
        monitor: str = "val/loss",
        class_weights: str | Sequence[float] | None = "auto",
        pretrained: str | None = None,
        input_norm: str | None = None,
        task: str = "binary",
        operating_point: str | float = DEFAULT_RULE,
        temperature: str | float = 1.0,
    ) -> None:
        super().__init__()
        net, optimizer, scheduler, class_weights = map(to_plain, (net, optimizer, scheduler, class_weights))
        #: What the outputs mean (``pneumo.models.tasks``): loss, probabilities, pneumonia output, weights.
        self.task = task_named(task)
        self._check_outputs(net, task)
        weights = self._weights_of(class_weights, self.task.outputs)
        fixed_temperature = self._fixed_temperature(temperature)
        self.fit_temperature = fixed_temperature is None
        self.operating_point_rule = ThresholdRule.parse(operating_point)
        source = PretrainedWeights.read(str(pretrained)) if pretrained else None
        if source is not None:
            net, input_norm = self._net_for(net, source, input_norm)
        self.save_hyperparameters(
            {
                "net": net,
                "optimizer": optimizer if isinstance(optimizer, Mapping) else None,
                "scheduler": scheduler if isinstance(scheduler, Mapping) or scheduler is None else None,
                "monitor": monitor,
                "class_weights": class_weights,
                "pretrained": pretrained,
                "input_norm": input_norm,
                "task": task,
                "operating_point": operating_point,
                "temperature": temperature,
            }
        )
        self._optimizer, self._scheduler = optimizer, scheduler
        #: Grey [0, 1] images -> what the network was trained to see (identity without ``input_norm``).
        self.input_adapter = input_adapter(input_norm)
        self.net = build_net(net)
        #: Where the network's first weights came from (the model card records it).
        self.initial_weights = None if source is None else self._apply_pretrained(source, input_norm)
        self._init_calibration(weights, fixed_temperature)
        self.checkpoint_epoch: int | None = None
        #: Provenance of the run (``pneumo.reporting.model_card.card_fields``), saved in checkpoints when set.
        self.model_card: dict | None = None
        self.train_metrics = nn.ModuleDict(self.task.train_metrics())
        self._outputs: dict[str, list] = {"val": [], "test": []}
        #: Gathered predictions of the last validation / test epoch (``EvalOutputs``).
        self.predictions: dict[str, EvalOutputs] = {}

    def _check_outputs(self, net: Any, task: str) -> None:
        """A network spec whose ``out_channels`` contradicts the task is refused, naming the fix."""
        n_out = self.task.outputs
        if isinstance(net, Mapping) and net.get("out_channels") not in (None, n_out):
            raise ConfigError(
                f"model.task={task} needs {n_out} network outputs but model.net.out_channels={net['out_channels']}; "
                f"{self.task.net_fix}"
            )

    @staticmethod
    def _fixed_temperature(temperature: str | float) -> float | None:
        """``None`` for ``"fit"`` (fitted on validation), else the fixed temperature, a number > 0."""
        if isinstance(temperature, str) and temperature.strip().lower() == "fit":
            return None
        try:
            fixed = float(temperature)
        except (TypeError, ValueError):
            fixed = float("nan")
        if not np.isfinite(fixed) or fixed <= 0:
            raise choice_error(temperature, "model.temperature", ("fit",), also="a number > 0")
        return fixed

    def _apply_pretrained(self, source: PretrainedWeights, input_norm: str | None) -> dict[str, Any]:
        """Copy ``source``'s weights into the network; the record of where they came from."""
        account = source.apply(self.net, self.task)
        log.info("model.pretrained=%s", account)
        return {
            "source": IMAGENET_URL if source.source == IMAGENET else source.source,
            "sha256": source.sha256,
            "input_norm": input_norm,
            "note": account,
        }

    def _init_calibration(self, weights: torch.Tensor, fixed_temperature: float | None) -> None:
        """The buffers that travel with checkpoints (class weights, threshold(s), temperature) and the records
        of how the threshold and the temperature were set."""
        self.register_buffer("class_weights", weights)
        # Operating point on the pneumonia probability (positive when >= threshold), chosen on validation.
        # A fixed rule holds from the start (a run without validation tests at it); the others start at 0.5.
        #: How ``threshold`` was chosen (rule, epoch, validation figures); saved in checkpoints.
        self.operating_point: dict[str, Any] = OperatingPoint.initial(self.operating_point_rule).to_dict()
        initial = float(self.operating_point["value"])
        self.register_buffer("threshold", torch.tensor(initial))
        # Divides every logit before the softmax / sigmoid; 1 until fitted (model.temperature=fit).
        self.register_buffer(
            "temperature", torch.tensor(1.0 if fixed_temperature is None else fixed_temperature)
        )
        #: How ``temperature`` was set (fitted on validation: epoch, NLL before/after); saved in checkpoints.
        self.calibration: dict[str, Any] = {
            "value": float(self.temperature),
            "fitted_on": None if self.fit_temperature else "fixed (model.temperature)",
            "epoch": None,
            "note": "not fitted on validation yet (initial 1)" if self.fit_temperature else None,
        }
        if self.task.findings:  # one threshold per finding; ``threshold`` is the pneumonia one
            self.register_buffer("thresholds", torch.full((len(self.task.findings),), initial))

    @staticmethod
    def _weights_of(class_weights: Any, n_out: int) -> torch.Tensor:
        """The initial ``class_weights`` buffer (ones for ``auto``/``None``: ``setup`` fills ``auto``)."""
        bad = choice_error(
            class_weights,
            "model.class_weights",
            ("auto", None),
            also=f"a list of {n_out} numbers (finite, >= 0)",
        )
        if isinstance(class_weights, str) and class_weights != "auto":
            raise bad
        if class_weights in (None, "auto"):
            return torch.ones(n_out)
        try:
            weights = torch.tensor(class_weights, dtype=torch.float32)
        except (TypeError, ValueError) as err:
            raise bad from err
        if weights.shape != (n_out,) or not bool(torch.isfinite(weights).all()) or bool((weights < 0).any()):
            raise bad
        return weights

    @staticmethod
    def _net_for(net: Mapping, source: PretrainedWeights, input_norm: str | None) -> tuple[dict, str | None]:
        """The network spec and input normalisation a pretrained source needs (its input channels and the
        normalisation it was trained with)."""
        if input_norm is not None and input_norm != source.input_norm:
            raise ConfigError(
                f"model.input_norm={input_norm} contradicts model.pretrained={source.source}, trained with "
                f"input_norm={source.input_norm}; leave model.input_norm unset"
            )
        if net.get("in_channels") != source.in_channels:
            log.info(
                "model.net.in_channels %s -> %d: model.pretrained=%s has %d input channel(s)%s",
                net.get("in_channels"), source.in_channels, source.source, source.in_channels,
                " (grey images are replicated)" if source.in_channels > 1 else "",
            )  # fmt: skip
        return {**net, "in_channels": source.in_channels}, source.input_norm

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path: Any, *args: Any, **kwargs: Any) -> PneumoniaClassifier:
        """Lightning's ``load_from_checkpoint``, without reading ``pretrained`` again: the checkpoint holds
        the weights (and its saved ``net`` and ``input_norm`` the shapes and the preprocessing)."""
        kwargs.setdefault("pretrained", None)
        return super().load_from_checkpoint(checkpoint_path, *args, **kwargs)

    # ------------------------------------------------------------------ inference
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of grey ``(B, 1, H, W)`` images in [0, 1] (normalised here as the network expects); a uint8
        batch straight from a data module's loader (``trainer.predict(model, dataloaders=dm.test_dataloader())``
        passes no data module to finish it) is scaled first, as the data module would."""
        if x.dtype == torch.uint8:
            x = scale_batch(x)
        return self.net(self.input_adapter(x))

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """Pneumonia probability ``(B,)`` (binary) or the 14 finding probabilities ``(B, 14)`` (multi-label),
        of the logits divided by the model's ``temperature``."""
        return self.task.probabilities(logits / self.temperature.to(logits.device))

    @torch.no_grad()
    def predict_proba(self, x: torch.Tensor) -> torch.Tensor:
        """Pneumonia probability per image (both tasks), at the model's temperature."""
        return pneumonia_column(self.probabilities(self(x)))

    def pneumonia_logit(self, logits: torch.Tensor) -> torch.Tensor:
        """``(B,)`` raw pneumonia logit ``z`` (before temperature): the probability is ``sigmoid(z / T)``."""
        return pneumonia_column(self.task.margins(logits.float()))

    @torch.no_grad()
    def predict_findings(self, x: torch.Tensor) -> torch.Tensor:
        """The ``(B, 14)`` finding probabilities of a multi-label model."""
        if not self.task.findings:
            raise ConfigError("predict_findings needs a model trained with model.task=multilabel")
        return self.probabilities(self(x))

    # ------------------------------------------------------------------ setup
    def setup(self, stage: str) -> None:
        if self.hparams["class_weights"] == "auto" and stage == "fit":
            self.class_weights.copy_(self.task.auto_weights(getattr(self.trainer, "datamodule", None)))
        if torch.are_deterministic_algorithms_enabled():  # trainer.deterministic=true
            deterministic_pooling(self.net)

    # ------------------------------------------------------------------ steps
    def _step(self, batch: Mapping[str, Any], stage: str) -> torch.Tensor:
        logits = self(batch["image"])
        target = self.task.targets(batch)
        loss = self.task.loss(logits, target, self.class_weights)
        n = len(target)
        # Lightning's epoch mean weighted by batch_size, summed over processes only at the epoch's end.
        self.log(f"{stage}/loss", loss.detach(), on_step=False, on_epoch=True, prog_bar=True, batch_size=n,
                 sync_dist=True)  # fmt: skip
        if stage == "train":
            self.log("train/loss_step", loss.detach(), on_step=True, on_epoch=False, batch_size=n)
            if len(self.train_metrics):
                probs, labels = (
                    pneumonia_column(self.probabilities(logits.detach())),
                    pneumonia_column(target),
                )
                metrics = cast("Mapping[str, Metric]", self.train_metrics)  # task.train_metrics()
                for name, metric in metrics.items():
                    metric.update(probs, labels)
                    self.log(f"train/{name}", metric, on_step=False, on_epoch=True, batch_size=n)
        else:
            # Raw logits kept on the device: one copy to the host per epoch (gather_outputs), no sync per batch;
            # probabilities follow at the epoch's end, at the temperature fitted then.
            self._outputs[stage].append((list(batch["image_id"]), logits.detach(), target.detach()))
        return loss

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        self._step(batch, "test")

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> dict[str, Any]:
        """``Trainer.predict``: the scores of one batch, as test scores them.

        ``batch`` is a data-module batch (a mapping with ``image`` and ``image_id``), an image tensor
        ``(B, 1, H, W)`` in [0, 1], or a tuple/list whose first element is that tensor. Returns
        ``probability`` ``(B,)`` (pneumonia, at the model's temperature), ``logit`` ``(B,)`` (the raw pneumonia
        logit), ``predicted_label`` ``(B,)`` (``probability >= threshold``), ``image_id`` (the batch's image
        names, or ``None``) and, for multi-label models, ``findings`` ``(B, 14)`` (every finding's probability).

        Example:
            >>> rows = L.Trainer(logger=False).predict(model, dataloaders=dm.test_dataloader())  # doctest: +SKIP
        """
        if isinstance(batch, Mapping):
            images, ids = batch["image"], batch.get("image_id")
        else:
            images, ids = (batch[0] if isinstance(batch, (tuple, list)) else batch), None
        logits = self(images)
        probabilities = self.probabilities(logits)
        probability = pneumonia_column(probabilities)
        out = {
            "image_id": None if ids is None else list(ids),
            "probability": probability,
            "logit": self.pneumonia_logit(logits),
            "predicted_label": (probability >= self.threshold.to(probability.device)).long(),
        }
        if self.task.findings:
            out["findings"] = probabilities
        return out

    # ------------------------------------------------------------------ epoch ends
    def on_validation_epoch_start(self) -> None:
        self._outputs["val"] = []

    def on_test_epoch_start(self) -> None:
        self._outputs["test"] = []

    def on_validation_epoch_end(self) -> None:
        outputs = self.gather_outputs("val")
        self.predictions["val"] = outputs
        if not self.trainer.sanity_checking:
            if self.fit_temperature:
                self._fit_temperature(outputs)
                outputs = self.predictions["val"] = self._with_probabilities(outputs)
            self._choose_operating_point(outputs)
        self._log_split_metrics("val", outputs)

    def on_test_epoch_end(self) -> None:
        outputs = self.gather_outputs("test")
        self.predictions["test"] = outputs
        self._log_split_metrics("test", outputs)

    def gather_outputs(self, stage: str) -> EvalOutputs:
        """This epoch's predictions of ``stage`` from every process, de-duplicated by image, sorted by name.

        Distributed samplers pad the last batch with repeated images; keeping one row per image id
        removes those repeats.
        """
        local = _concat_parts(self._outputs[stage], self.task.probability_shape, self.task.outputs)
        self._outputs[stage] = []
        parts = [local]
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            world = torch.distributed.get_world_size()
            if world > 1:
                gathered: list = [None] * world
                torch.distributed.all_gather_object(gathered, local)
                parts = gathered
        ids = np.concatenate([p[0] for p in parts]).astype(str)
        logits = np.concatenate([p[1] for p in parts])
        targets = np.concatenate([p[2] for p in parts])
        ids, first = np.unique(ids, return_index=True)
        return self._with_probabilities(EvalOutputs(ids, np.zeros(0), targets[first], logits[first]))

    def _with_probabilities(self, outputs: EvalOutputs) -> EvalOutputs:
        """``outputs`` with the probabilities of its logits at the current temperature."""
        probs = self.probabilities(torch.from_numpy(outputs.logits)).double().numpy()
        return EvalOutputs(outputs.image_ids, probs, outputs.targets, outputs.logits)

    def _fit_temperature(self, outputs: EvalOutputs) -> None:
        """Fit the temperature on the validation logits by NLL (every finding's for multi-label models)."""
        margins = self.task.margins(outputs.logits.astype(np.float64))
        fit = fit_temperature(margins, outputs.targets)
        # No finite optimum (perfectly separated or one-class validation): the unscaled logits, said so. Not
        # the previous epoch's T: that was fitted to other weights.
        self.temperature.fill_(1.0 if fit.value is None else fit.value)
        if fit.value is None:
            log.warning("temperature: %s; using temperature 1 (unscaled)", fit.note)
        self.calibration = {
            "value": float(self.temperature),
            "fitted_on": f"val ({fit.images} images)",
            "epoch": self.current_epoch if self.trainer.state.fn == "fit" else self.checkpoint_epoch,
            "val_nll_before": fit.nll_before,
            "val_nll_after": fit.nll_after if fit.value is not None else None,
            "note": fit.note if fit.value is not None else f"{fit.note}; used temperature 1",
        }

    def _choose_operating_point(self, outputs: EvalOutputs) -> None:
        """Apply the operating-point rule to the validation predictions (identical on every process)."""
        rule = self.operating_point_rule
        previous = float(self.threshold)
        y, p = outputs.pneumonia
        choice = select_threshold(y, p, rule)
        if choice.value is not None:
            self.threshold.fill_(choice.value)
        for j, _ in enumerate(self.task.findings):  # multi-label: one threshold per finding, same rule
            other = (
                choice
                if j == self.task.pneumonia_output
                else select_threshold(outputs.targets[:, j], outputs.probs[:, j], rule)
            )
            if other.value is not None:
                self.thresholds[j] = other.value
        note = choice.note
        if choice.value is None:
            note = f"{note}; kept the previous threshold {previous:.4g}"
            log.warning("operating point: %s", note)
        elif note:
            log.warning("operating point: %s", note)
        epoch = self.current_epoch if self.trainer.state.fn == "fit" else self.checkpoint_epoch
        per_finding = (
            dict(zip(self.task.findings, map(float, self.thresholds.tolist())))
            if self.task.findings
            else None
        )
        self.operating_point = OperatingPoint.chosen(
            rule, y, p, float(self.threshold), "val", epoch=epoch, note=note, thresholds=per_finding
        ).to_dict()

    def _log_split_metrics(self, stage: str, outputs: EvalOutputs) -> None:
        """Log AUROC/AUPRC and the metrics at the threshold, computed on the gathered predictions."""
        y, p = outputs.pneumonia
        values = {
            f"{stage}/{k}": v for k, v in self.task.auroc_values(outputs.targets, outputs.probs).items()
        }
        values[f"{stage}/auprc"] = average_precision(y, p) if len(y) else float("nan")
        threshold = float(self.threshold)
        at = threshold_metrics(y, p, threshold) if len(y) else {}
        values.update({f"{stage}/{k}": v for k, v in at.items() if k != "accuracy"})
        values[f"{stage}/threshold"] = threshold
        # Same values on every process (gathered data): syncing keeps Lightning's DDP bookkeeping happy.
        prog = {f"{stage}/auroc"}
        for name, value in values.items():
            self.log(name, float(value), prog_bar=name in prog, sync_dist=True)

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["operating_point"] = dict(self.operating_point)
        if self.initial_weights is not None:  # provenance outlives the rebuild (which skips pretrained)
            checkpoint["initial_weights"] = dict(self.initial_weights)
        checkpoint["calibration"] = dict(self.calibration)
        if self.model_card is not None:
            checkpoint["model_card"] = dict(self.model_card)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.checkpoint_epoch = checkpoint.get("epoch")
        if "operating_point" in checkpoint:
            self.operating_point = dict(checkpoint["operating_point"])
        if isinstance(checkpoint.get("initial_weights"), Mapping):
            self.initial_weights = dict(checkpoint["initial_weights"])
        if "calibration" in checkpoint:
            self.calibration = dict(checkpoint["calibration"])
        if "model_card" in checkpoint:
            self.model_card = dict(checkpoint["model_card"])
        # Checkpoints from before temperature scaling: their probabilities were unscaled (temperature 1).
        state = checkpoint.get("state_dict")
        if isinstance(state, dict) and "temperature" not in state:
            state["temperature"] = torch.tensor(1.0)

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
                "monitor": self.hparams["monitor"],
                "interval": "epoch",
            },
        }


class GlobalAveragePool(nn.Module):
    """``nn.AdaptiveAvgPool2d(1)`` as a mean over height and width: the same values, and a backward pass that
    CUDA runs deterministically (``adaptive_avg_pool2d_backward_cuda`` has no deterministic implementation:
    with ``torch.use_deterministic_algorithms(True)`` it raises at the first backward)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(-2, -1), keepdim=True)


def deterministic_pooling(net: nn.Module) -> int:
    """Replace every ``AdaptiveAvgPool2d`` to 1x1 in ``net`` (DenseNet121's ``class_layers.pool``) with
    ``GlobalAveragePool``; returns how many. No weights change: checkpoints load either way.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.AdaptiveAvgPool2d(1))
        >>> deterministic_pooling(net), type(net[1]).__name__
        (1, 'GlobalAveragePool')
    """
    swapped = 0
    for name, module in list(net.named_modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, nn.AdaptiveAvgPool2d) and child.output_size in (1, (1, 1)):
                setattr(module, child_name, GlobalAveragePool())
                swapped += 1
                log.debug("deterministic algorithms: %s.%s pools by a mean", name, child_name)
    return swapped
