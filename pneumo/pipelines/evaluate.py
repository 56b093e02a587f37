"""Evaluate any model's predictions files: ``python -m pneumo.evaluation predictions=PATH out_dir=DIR``.

The same report as a training run (``report.md``, ``report.json``, ``predictions.csv``, figures) for a CSV
of predictions from any model (see ``pneumo.reporting.predictions.read_predictions`` for the layouts).
Labels, patients, views, sexes and ages come from a label index (NIH's shipped ``Data_Entry_2017_v2020`` by
default, any ``Data_Entry`` CSV with ``labels_url``).

The operating point is ``eval.threshold``: a number, or a rule (``youden``, ``sensitivity@0.90``...) applied
to a second file of **validation** images' predictions (``val_predictions``); never to the evaluated images
unless ``choose_on_evaluated=true``, and then the report's notes say so. With ``recalibrate=true`` a
temperature is fitted on the validation predictions (NLL) first and applied to both files: the "new site"
workflow (docs/evaluation.md, "Evaluate any predictions").

Example:
    >>> settings = EvaluateSettings(predictions="test_preds.csv", out_dir="out", val_predictions="val_preds.csv")
    >>> report = evaluate_files(settings)  # doctest: +SKIP
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from omegaconf import DictConfig

from pneumo.config import settings_from, to_plain
from pneumo.errors import PneumoError
from pneumo.io.files import prepare_out_dir
from pneumo.io.storage import StorageSettings
from pneumo.nih.index import NIHLabelIndex
from pneumo.nih.shipped import shipped_path
from pneumo.reporting.gallery import gallery_link
from pneumo.reporting.outputs import report_outputs, write_outputs
from pneumo.reporting.predictions import read_predictions
from pneumo.reporting.report import EvalSettings, build_report, describe_data
from pneumo.stats.temperature import fit_temperature, logit_of, scaled_probability
from pneumo.stats.threshold import OperatingPoint, ThresholdRule, select_threshold

log = logging.getLogger(__name__)

#: The label index used when ``labels_url`` is not given.
DEFAULT_LABELS = "Data_Entry_2017_v2020.csv.gz"


class EvaluateError(PneumoError, ValueError):
    """Settings of the evaluate command that cannot work together; the message names the keys and the fix."""


def _logits(frame: pd.DataFrame, path: str) -> np.ndarray:
    """Raw pneumonia logits: the ``logit`` column, else recovered from the probabilities."""
    if "logit" in frame.columns:
        return frame["logit"].to_numpy(dtype=np.float64)
    z = logit_of(frame["probability"].to_numpy())
    if not np.isfinite(z).all():
        raise EvaluateError(
            f"{path}: recalibrate=true needs logits, and a probability of exactly 0 or 1 has none: "
            "add a 'logit' column (explain.py and train.py write one)"
        )
    return z


def _recalibrate(frame: pd.DataFrame, temperature: float, path: str) -> pd.DataFrame:
    out = frame.copy()
    z = _logits(frame, path)
    out["logit"] = z
    out["probability"] = scaled_probability(z, temperature)
    if "p_Pneumonia" in out.columns:
        out["p_Pneumonia"] = out["probability"]
    return out


def _operating_point(
    rule: ThresholdRule,
    val: pd.DataFrame | None,
    frame: pd.DataFrame,
    choose_on_evaluated: bool,
    names: Mapping,
) -> OperatingPoint:
    """Where and how ``rule`` sets the threshold: fixed; on the validation predictions; on the evaluated
    images only when asked (``choose_on_evaluated``, with a note that the figures are optimistic)."""
    if rule.kind == "fixed":
        return OperatingPoint.initial(rule)
    if val is not None:
        on, chosen_on, note = val, f"val_predictions ({names['val']})", None
    elif choose_on_evaluated:
        on, chosen_on = frame, "the evaluated images themselves (choose_on_evaluated=true)"
        note = (
            f"the threshold was chosen by {rule} on the evaluated images themselves (choose_on_evaluated=true): "
            "sensitivity, specificity and the other operating-point figures are optimistic"
        )
    else:
        raise EvaluateError(
            f"eval.threshold={rule} is chosen on validation images: pass val_predictions=PATH (predictions of "
            "other, labelled images), or a number (eval.threshold=0.5), or choose_on_evaluated=true to choose "
            "it on the evaluated images themselves (the report then says so)"
        )
    y, p = on["label"].to_numpy(), on["probability"].to_numpy()
    choice = select_threshold(y, p, rule)
    if choice.value is None:
        raise EvaluateError(f"eval.threshold={rule} cannot be chosen on {chosen_on}: {choice.note}")
    notes = "; ".join(n for n in (note, choice.note) if n) or None
    return OperatingPoint.chosen(rule, y, p, choice.value, chosen_on, note=notes)


@dataclass
class EvaluateSettings:
    """Everything the evaluate command needs: the keys of ``conf/evaluate.yaml``, checked once.

    Build it from the config with ``EvaluateSettings.from_config(cfg)`` or in Python with keywords; a value
    that cannot work is a one-line ``PneumoError`` naming its key.

    Attributes:
        predictions: CSV of the evaluated images' predictions (path or fsspec URL).
        out_dir: where ``report.md``, ``report.json``, ``predictions.csv`` and the figures go.
        eval: the ``eval:`` settings (threshold rule, bootstrap, calibration bins, age bands, figures); a
            mapping of the config's keys is read by ``EvalSettings.from_config``.
        val_predictions: CSV of validation images' predictions: the threshold rule (and ``recalibrate``)
            is applied to it.
        labels_url: ``Data_Entry`` CSV with the labels; ``None`` = NIH's, shipped with pneumo.
        recalibrate: fit a temperature on ``val_predictions`` (NLL) and apply it to both files.
        choose_on_evaluated: apply a threshold rule to the evaluated images when no validation file is given.
        split: name of the evaluated images in messages.
        storage: ``StorageSettings`` (or its config mapping) of the three files' reads.
        overwrite: an ``out_dir`` holding another report is refused; ``True`` deletes that report's files
            and figures first (explain's rule: a report folder never mixes two runs).

    Example:
        >>> EvaluateSettings(predictions="test.csv", out_dir="out", eval={"threshold": 0.5}).eval.threshold
        0.5
        >>> EvaluateSettings(predictions="test.csv", out_dir="out", recalibrate=True)
        Traceback (most recent call last):
        ...
        pneumo.pipelines.evaluate.EvaluateError: recalibrate=true fits the temperature on validation images: pass val_predictions=PATH
    """

    predictions: str
    out_dir: str
    eval: EvalSettings = field(default_factory=EvalSettings)
    val_predictions: str | None = None
    labels_url: str | None = None
    recalibrate: bool = False
    choose_on_evaluated: bool = False
    split: str = "test"
    storage: StorageSettings | dict[str, Any] | None = None
    overwrite: bool = False

    def __post_init__(self) -> None:
        given: Any = self.eval  # a Hydra config hands a mapping here
        if not isinstance(given, EvalSettings):
            self.eval = EvalSettings.from_config(to_plain(given))
        ThresholdRule.parse(self.eval.threshold)  # a bad rule fails here, before any file is read
        self.predictions, self.out_dir = str(self.predictions), str(self.out_dir)
        self.recalibrate, self.choose_on_evaluated = bool(self.recalibrate), bool(self.choose_on_evaluated)
        self.overwrite = bool(self.overwrite)
        self.storage = StorageSettings.from_config(self.storage, key="storage")
        if self.recalibrate and self.val_predictions is None:
            raise EvaluateError(
                "recalibrate=true fits the temperature on validation images: pass val_predictions=PATH"
            )

    @classmethod
    def from_config(cls, cfg: Mapping | DictConfig) -> EvaluateSettings:
        """The settings of an evaluate config (``conf/evaluate.yaml``); its other keys (``seed``,
        ``task_name``, ``paths``, ``hydra``) are not the pipeline's and are left out."""
        plain = to_plain(cfg)
        return settings_from(cls, {k: v for k, v in plain.items() if k not in _NOT_SETTINGS})

    @property
    def storage_settings(self) -> StorageSettings:
        """``storage`` as ``StorageSettings`` (``__post_init__`` makes it one)."""
        assert isinstance(self.storage, StorageSettings)
        return self.storage


#: Keys of ``conf/evaluate.yaml`` that are the command's, not the pipeline's (``seed`` reaches the
#: bootstrap through ``eval.bootstrap.seed``); any other key is a setting.
_NOT_SETTINGS = {"task_name", "paths", "hydra", "seed"}


def evaluate_files(settings: EvaluateSettings) -> dict:
    """Write the report of a predictions file into ``settings.out_dir``; returns the report dict.

    Raises:
        PneumoError: a file or a setting that cannot be used (one line naming it and the fix).

    Example:
        >>> evaluate_files(EvaluateSettings(predictions="test.csv", out_dir="out"))["metrics"]["auroc"]  # doctest: +SKIP
    """
    # before any file is read: a folder that cannot be written, or holds another report, stops the command
    prepare_out_dir(
        settings.out_dir, report_outputs(settings.out_dir), settings.overwrite, "evaluate", create=False
    )
    frame, val, labels = read_files(settings)
    temperature = None
    if settings.recalibrate:
        assert val is not None
        frame, val, temperature = recalibrated(settings, frame, val)
    rule = ThresholdRule.parse(settings.eval.threshold)
    names = {"val": settings.val_predictions, "predictions": settings.predictions}
    op = _operating_point(rule, val, frame, settings.choose_on_evaluated, names)
    report = build_report(
        frame,
        op.value,
        settings.eval,
        operating_point=op.to_dict(),
        split=settings.split,
        temperature=temperature,
        data_source=describe_data(None, labels),
    )
    report["source"] = {
        "predictions": settings.predictions,
        "val_predictions": settings.val_predictions,
        "labels": labels,
    }
    gallery = gallery_link(settings.predictions, settings.out_dir)  # explain.py's page of these images
    if gallery:
        report["gallery"] = gallery
    write_outputs(frame, report, settings.eval, settings.out_dir)
    return report


def read_files(settings: EvaluateSettings) -> tuple[pd.DataFrame, pd.DataFrame | None, str]:
    """The evaluated and the validation predictions joined with their labels, and the label index used;
    an image in both files is an error (the threshold must be chosen on other images)."""
    labels = settings.labels_url or shipped_path(DEFAULT_LABELS)
    options, io = settings.storage_settings.options_for, settings.storage_settings.io
    index = NIHLabelIndex.from_csv(labels, options(labels), io=io)
    frame = read_predictions(settings.predictions, index, options(settings.predictions), io)
    val_path = settings.val_predictions
    val = read_predictions(val_path, index, options(val_path), io) if val_path else None
    if val is not None:
        shared = sorted(set(frame["image"]) & set(val["image"]))
        if shared:
            raise EvaluateError(
                f"{len(shared)} image(s) are in both predictions={settings.predictions} and val_predictions="
                f"{val_path}, e.g. {shared[0]}: the threshold must be chosen on other images"
            )
    return frame, val, labels


def recalibrated(
    settings: EvaluateSettings, frame: pd.DataFrame, val: pd.DataFrame
) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """Both files at the temperature fitted (NLL) on the validation predictions, and the report's record
    of the fit; no finite optimum means temperature 1 (the raw logits), and the record says so."""
    val_path = str(settings.val_predictions)
    fit = fit_temperature(_logits(val, val_path), val["label"].to_numpy())
    value = 1.0 if fit.value is None else fit.value
    temperature = {
        "value": value,
        "fitted_on": f"val_predictions ({val_path}, {fit.images} images)",
        "val_nll_before": fit.nll_before,
        "val_nll_after": fit.nll_after,
        "note": fit.note if fit.value is not None else f"{fit.note}; used temperature 1",
    }
    log.info("temperature %.4f fitted on %s (NLL %.4f -> %.4f)", value, val_path,
             fit.nll_before, fit.nll_after)  # fmt: skip
    return (
        _recalibrate(frame, value, settings.predictions),
        _recalibrate(val, value, val_path),
        temperature,
    )
