"""Evaluate any model's predictions files: ``python -m pneumo.evaluation predictions=PATH out_dir=DIR``.

The same report as a training run (``report.md``, ``report.json``, ``predictions.csv``, figures) for a CSV
of predictions from any model (see ``pneumo.reporting.predictions.read_predictions`` for the layouts).
Labels, patients, views, sexes and ages come from a label index (NIH's shipped ``Data_Entry_2017_v2020`` by
default, any ``Data_Entry`` CSV with ``labels_url``).

The operating point is ``eval.threshold``: a number, or a rule (``youden``, ``sensitivity@0.90``...) applied
to a second file of **validation** images' predictions (``val_predictions``); never to the evaluated images
unless ``choose_on_evaluated=true``, and then the report's notes say so. With ``recalibrate=true`` a
temperature is fitted on the validation predictions (NLL) first and applied to both files: the "new site"
workflow (README, "Evaluate any predictions").

Example:
    >>> report = evaluate_files("test_preds.csv", "out", EvalSettings(), val_predictions="val_preds.csv")  # doctest: +SKIP
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from pneumo.errors import PneumoError
from pneumo.io.storage import StorageSettings
from pneumo.nih.index import NIHLabelIndex
from pneumo.nih.shipped import shipped_path
from pneumo.reporting.outputs import write_outputs
from pneumo.reporting.predictions import read_predictions
from pneumo.reporting.report import EvalSettings, build_report
from pneumo.stats.metrics import threshold_metrics
from pneumo.stats.temperature import fit_temperature, logit_of, scaled_probability
from pneumo.stats.threshold import ThresholdRule, select_threshold

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
) -> dict:
    if rule.kind == "fixed":
        return {"rule": str(rule), "value": rule.target, "chosen_on": "fixed"}
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
    at = threshold_metrics(y, p, choice.value)
    return {
        "rule": str(rule),
        "value": choice.value,
        "chosen_on": chosen_on,
        "val": {
            "images": len(y),
            "positives": int(y.sum()),
            "sensitivity": None if np.isnan(at["sensitivity"]) else at["sensitivity"],
            "specificity": None if np.isnan(at["specificity"]) else at["specificity"],
        },
        "note": "; ".join(n for n in (note, choice.note) if n) or None,
    }


def evaluate_files(
    predictions: str,
    out_dir: str | Path,
    settings: EvalSettings,
    val_predictions: str | None = None,
    labels_url: str | None = None,
    recalibrate: bool = False,
    choose_on_evaluated: bool = False,
    split: str = "test",
    storage: StorageSettings | Mapping | None = None,
) -> dict:
    """Write the report of a predictions file into ``out_dir``; returns the report dict.

    Args:
        predictions: CSV of the evaluated images' predictions (path or fsspec URL).
        out_dir: where ``report.md``, ``report.json``, ``predictions.csv`` and the figures go.
        settings: the ``eval:`` settings (threshold rule, bootstrap, calibration bins, age bands, figures).
        val_predictions: CSV of validation images' predictions: the threshold rule (and ``recalibrate``)
            is applied to it.
        labels_url: ``Data_Entry`` CSV with the labels; ``None`` = NIH's, shipped with pneumo.
        recalibrate: fit a temperature on ``val_predictions`` (NLL) and apply it to both files.
        choose_on_evaluated: apply a threshold rule to the evaluated images when no validation file is given.
        split: name of the evaluated images in messages.
        storage: ``StorageSettings`` (or its config mapping) of the three files' reads.

    Raises:
        PneumoError: a file or a setting that cannot be used (one line naming it and the fix).
    """
    rule = ThresholdRule.parse(settings.threshold)
    if recalibrate and val_predictions is None:
        raise EvaluateError(
            "recalibrate=true fits the temperature on validation images: pass val_predictions=PATH"
        )
    labels = labels_url or shipped_path(DEFAULT_LABELS)
    options = StorageSettings.from_config(storage).options_for
    index = NIHLabelIndex.from_csv(labels, options(labels))
    frame = read_predictions(predictions, index, options(predictions))
    val = read_predictions(val_predictions, index, options(val_predictions)) if val_predictions else None
    if val is not None:
        shared = sorted(set(frame["image"]) & set(val["image"]))
        if shared:
            raise EvaluateError(
                f"{len(shared)} image(s) are in both predictions={predictions} and val_predictions="
                f"{val_predictions}, e.g. {shared[0]}: the threshold must be chosen on other images"
            )
    temperature = None
    if recalibrate:
        assert val is not None
        fit = fit_temperature(_logits(val, val_predictions), val["label"].to_numpy())
        value = 1.0 if fit.value is None else fit.value  # no finite optimum: the raw logits, said so
        temperature = {
            "value": value,
            "fitted_on": f"val_predictions ({val_predictions}, {fit.images} images)",
            "val_nll_before": fit.nll_before,
            "val_nll_after": fit.nll_after,
            "note": fit.note if fit.value is not None else f"{fit.note}; used temperature 1",
        }
        val = _recalibrate(val, value, val_predictions)
        frame = _recalibrate(frame, value, predictions)
        log.info("temperature %.4f fitted on %s (NLL %.4f -> %.4f)", value, val_predictions,
                 fit.nll_before, fit.nll_after)  # fmt: skip
    names = {"val": val_predictions, "predictions": predictions}
    op = _operating_point(rule, val, frame, choose_on_evaluated, names)
    report = build_report(
        frame, float(op["value"]), settings, operating_point=op, split=split, temperature=temperature
    )
    report["source"] = {"predictions": predictions, "val_predictions": val_predictions, "labels": labels}
    write_outputs(frame, report, settings, out_dir)
    return report
