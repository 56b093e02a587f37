"""The evaluation report of a split: numbers with patient-level bootstrap intervals, as a dict, JSON and Markdown.

``build_report`` turns a prediction table (``predictions_frame``) and the operating point into a plain dict:
counts and prevalence, AUROC/AUPRC with 95% intervals, sensitivity/specificity/PPV/NPV/F1/accuracy at the
threshold (with intervals), the confusion matrix, calibration (ECE, Brier, reliability bins), AUROC per
subgroup (view, sex, age band) and, for multi-label runs, the CheXNet-style per-finding table. Undefined
values are ``None`` with a ``note`` saying why; the report never holds NaN.

Example:
    >>> frame = pd.DataFrame({"image": list("abcd"), "patient": [1, 1, 2, 3],
    ...                       "probability": [.1, .8, .3, .7], "label": [0, 1, 0, 1]})
    >>> report = build_report(frame, threshold=0.5, settings=EvalSettings(resamples=100))
    >>> report["metrics"]["auroc"]["value"], report["confusion_matrix"]
    (1.0, {'tn': 2, 'fp': 0, 'fn': 0, 'tp': 2})
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pneumo.config import checked_number
from pneumo.errors import ConfigError
from pneumo.io.files import atomic_write_text
from pneumo.io.storage import redact_url
from pneumo.nih.findings import PNEUMONIA
from pneumo.nih.references import DEFAULT_REFERENCES, Reference, load_references, reference_spec
from pneumo.nih.shipped import HERE as SHIPPED_FOLDER
from pneumo.reporting.predictions import finding_columns
from pneumo.stats.bootstrap import DEFAULT_LEVEL, DEFAULT_RESAMPLES, ClusterBootstrap, Interval
from pneumo.stats.metrics import (
    CALIBRATION_BINS,
    THRESHOLD_METRICS,
    RankedScores,
    calibration,
    confusion_counts,
    ranking_metrics,
    rates,
)
from pneumo.stats.subgroups import subgroup_masks
from pneumo.stats.temperature import probability_nll, scaled_probability
from pneumo.stats.threshold import DEFAULT_RULE, OperatingPoint, ThresholdRule

#: Display names of the metrics, in report order.
METRIC_NAMES = {
    "auroc": "AUROC",
    "auprc": "AUPRC (average precision)",
    "sensitivity": "Sensitivity (recall)",
    "specificity": "Specificity",
    "ppv": "PPV (precision)",
    "npv": "NPV",
    "f1": "F1",
    "accuracy": "Accuracy",
}
SUBGROUP_NAMES = {"view": "View position", "sex": "Sex", "age": "Age band"}


@dataclass(frozen=True)
class EvalSettings:
    """The ``eval:`` block of ``conf/train.yaml``.

    Attributes:
        threshold: operating-point rule chosen on validation (see ``pneumo.stats.threshold``).
        resamples: bootstrap resamples (patients drawn with replacement).
        seed: seed of the bootstrap.
        level: confidence level of the intervals.
        calibration_bins: equal-width bins of the ECE and the reliability diagram.
        age_bands: ages where the age bands are cut (``[40, 60, 80]`` -> <40, 40-59, 60-79, 80+).
        figures: also draw the ROC, PR, reliability and confusion-matrix figures.
        references: the reference standards of the "Reference standards" section, in order: built-in names
            (``nih``, ``adjudicated``, ``rsna``) or mappings describing another labels file
            (``pneumo.nih.references.ReferenceSpec``).
    """

    threshold: str | float = DEFAULT_RULE
    resamples: int = DEFAULT_RESAMPLES
    seed: int = 0
    level: float = DEFAULT_LEVEL
    calibration_bins: int = CALIBRATION_BINS
    age_bands: tuple[float, ...] = (40, 60, 80)
    figures: bool = True
    references: tuple[str | dict, ...] = DEFAULT_REFERENCES

    @classmethod
    def from_config(cls, cfg: Mapping | None) -> EvalSettings:
        """Read the ``eval:`` config block (``None`` = defaults); unknown keys are an error."""
        cfg = dict(cfg or {})
        boot = dict(cfg.pop("bootstrap", None) or {})
        known = {"threshold", "calibration_bins", "age_bands", "figures", "references"}
        unknown = sorted(set(cfg) - known) + [
            f"bootstrap.{k}" for k in sorted(set(boot) - {"resamples", "seed", "level"})
        ]
        if unknown:
            raise ConfigError(
                f"unknown eval config key(s) {unknown}; known: {sorted(known)} and bootstrap.resamples/seed/level"
            )
        # a key left out keeps the class default (the one copy); age_bands: null or [] cuts no bands
        settings = cls(
            threshold=cfg.get("threshold", cls.threshold),
            resamples=int(
                checked_number(boot.get("resamples", cls.resamples), "eval.bootstrap.resamples", int)
            ),
            seed=int(checked_number(boot.get("seed") or cls.seed, "eval.bootstrap.seed", int, 0)),
            level=float(checked_number(boot.get("level", cls.level), "eval.bootstrap.level", float)),
            calibration_bins=int(
                checked_number(
                    cfg.get("calibration_bins", cls.calibration_bins), "eval.calibration_bins", int, 1
                )
            ),
            age_bands=tuple(float(a) for a in (cfg.get("age_bands", cls.age_bands) or ())),
            figures=bool(cfg.get("figures", cls.figures)),
            references=tuple(
                r if isinstance(r, str) else dict(r) for r in (cfg.get("references", cls.references) or ())
            ),
        )
        for entry in settings.references:
            reference_spec(entry)  # an unknown name or key fails here, before any file is read
        ThresholdRule.parse(settings.threshold)  # fail early on a bad rule
        ClusterBootstrap(n=1, resamples=settings.resamples, level=settings.level)
        if settings.calibration_bins < 1:
            raise ConfigError(f"eval.calibration_bins must be >= 1, got {settings.calibration_bins}")
        return settings


# ---------------------------------------------------------------------------------------------- helpers
def _num(value: Any) -> float | None:
    """A finite float, or None."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _entry(value: Any, interval: Interval | None = None, note: str | None = None) -> dict:
    """``{"value", "ci", "note"}``: value and interval as floats or None, and why something is missing."""
    value = _num(value)
    ci = (
        [interval.low, interval.high]
        if interval is not None and interval.defined and value is not None
        else None
    )
    if note is None and value is not None and interval is not None and ci is None:
        note = interval.reason or "no interval"
    if note is None and value is None:
        note = "undefined"
    return {"value": value, "ci": ci, "note": note}


def _class_notes(
    pos: int, neg: int, pred_pos: int, pred_neg: int, threshold: float, split: str
) -> dict[str, str]:
    notes: dict[str, str] = {}
    if pos == 0:
        for k in ("auroc", "auprc", "sensitivity"):
            notes[k] = f"undefined: the {split} split has no positive images"
    if neg == 0:
        for k in ("auroc", "specificity"):
            notes.setdefault(k, f"undefined: the {split} split has no negative images")
    if pred_pos == 0:
        notes["ppv"] = f"undefined: threshold {threshold:.4g} labels every image negative"
        if pos == 0:
            notes["f1"] = "undefined: no positive images and none called positive"
    if pred_neg == 0:
        notes["npv"] = f"undefined: threshold {threshold:.4g} labels every image positive"
    if pos + neg == 0:
        notes["accuracy"] = "undefined: no images"
    return notes


def _binary_section(
    y: np.ndarray, p: np.ndarray, resampling: _Resampling, threshold: float, split: str
) -> tuple[dict, list[str]]:
    """Counts, metrics with intervals, confusion matrix and calibration of one binary target."""
    n, pos = len(y), int(y.sum())
    neg = n - pos
    counts = confusion_counts(y, p, threshold)
    cm = {k: int(round(v)) for k, v in counts.items()}
    pred_pos, pred_neg = cm["tp"] + cm["fp"], cm["tn"] + cm["fn"]
    notes = _class_notes(pos, neg, pred_pos, pred_neg, threshold, split)
    messages = _degenerate_messages(n, pos, neg, pred_pos, pred_neg, threshold, split)
    section = {
        "counts": {
            "images": n,
            "patients": int(len(np.unique(resampling.units))),
            "positives": pos,
            "negatives": neg,
            "prevalence": _num(pos / n) if n else None,
        },
        "metrics": _binary_metrics(y, p, resampling, threshold, notes),
        "confusion_matrix": cm,
        "calibration": _calibration_entry(y, p, resampling.settings.calibration_bins),
    }
    return section, messages


def _degenerate_messages(
    n: int, pos: int, neg: int, pred_pos: int, pred_neg: int, threshold: float, split: str
) -> list[str]:
    """What a split without predictions, without one class, or with one predicted class leaves undefined."""
    messages: list[str] = []
    if n == 0:
        messages.append(f"the {split} split produced no predictions: nothing to evaluate")
    if pos == 0 and n:
        messages.append(
            f"the {split} split has no positive images ({n} negatives): AUROC, AUPRC and sensitivity are undefined"
        )
    if neg == 0 and n:
        messages.append(
            f"the {split} split has no negative images ({n} positives): AUROC and specificity are undefined"
        )
    if pred_pos == 0 and n:
        messages.append(
            f"the threshold {threshold:.4g} labels every {split} image negative: "
            + ("sensitivity is 0, " if pos else "")
            + "PPV is undefined; choose a lower eval.threshold or a data-driven rule (youden)"
        )
    if pred_neg == 0 and n:
        messages.append(
            f"the threshold {threshold:.4g} labels every {split} image positive: "
            + ("specificity is 0, " if neg else "")
            + "NPV is undefined; choose a higher eval.threshold or a data-driven rule (youden)"
        )
    return messages


def _binary_metrics(
    y: np.ndarray, p: np.ndarray, resampling: _Resampling, threshold: float, notes: Mapping[str, str]
) -> dict[str, dict]:
    """AUROC, AUPRC and the threshold metrics, each with its bootstrap interval (or the note why none)."""
    point: dict[str, float] = {}
    intervals: dict[str, Interval] = {}
    if len(y):
        ranked = RankedScores.of(y, p)
        point.update({k: float(v[0]) for k, v in ranking_metrics(ranked).items()})
        point.update({k: float(v) for k, v in rates(confusion_counts(y, p, threshold)).items()})

        def statistic(w: np.ndarray) -> dict[str, np.ndarray]:
            return {**ranking_metrics(ranked, w), **rates(confusion_counts(y, p, threshold, w))}

        intervals = resampling.intervals(y, statistic, point)
    return {
        k: _entry(point.get(k), intervals.get(k), notes.get(k))
        for k in ("auroc", "auprc", *THRESHOLD_METRICS)
    }


def _calibration_entry(y: np.ndarray, p: np.ndarray, bins: int) -> dict[str, Any]:
    """Expected calibration error, Brier score and the reliability bins."""
    cal = calibration(y, p, bins)
    reliability = [
        {
            "lower": float(cal.edges[b]),
            "upper": float(cal.edges[b + 1]),
            "count": int(cal.counts[b]),
            "mean_probability": _num(cal.mean_probability[b]),
            "fraction_positive": _num(cal.fraction_positive[b]),
        }
        for b in range(bins)
    ]
    return {"ece": _num(cal.ece), "brier": _num(cal.brier), "bins": bins, "reliability": reliability}


@dataclass(frozen=True)
class _Resampling:
    """The bootstrap of one report: the cluster of each image and what a cluster is (``patient``, or ``image``
    when the predictions carry no patient ids)."""

    units: np.ndarray
    settings: EvalSettings
    unit: str = "patient"

    def subset(self, mask: np.ndarray) -> _Resampling:
        return replace(self, units=self.units[mask])

    def description(self) -> dict[str, Any]:
        """The report's ``bootstrap`` entry: what was resampled, how often, at which level."""
        s = self.settings
        return {
            "unit": self.unit,
            "resamples": s.resamples,
            "seed": s.seed,
            "level": s.level,
            "method": f"percentile; threshold fixed, {self.unit}s drawn with replacement",
        }

    def bootstrap(self) -> ClusterBootstrap:
        s = self.settings
        return ClusterBootstrap(
            self.units, resamples=s.resamples, seed=s.seed, level=s.level, unit_name=self.unit
        )

    def single_unit_class(self, y: np.ndarray) -> str | None:
        """Why no interval can be honest: one class comes from a single cluster (``None`` if both have >= 2)."""
        for label, name in ((1, "positive"), (0, "negative")):
            if len(np.unique(self.units[y == label])) == 1:
                return f"no interval: every {name} image comes from one {self.unit}"
        return None

    def intervals(
        self, y: np.ndarray, statistic: Callable[[np.ndarray], Mapping[str, np.ndarray]], names: Iterable[str]
    ) -> dict[str, Interval]:
        """Bootstrap intervals of ``statistic`` (see ``ClusterBootstrap.intervals``), or for each of ``names``
        an empty interval saying why when one class comes from a single cluster."""
        single = self.single_unit_class(y)
        if single is not None:
            return {k: Interval(np.nan, np.nan, 0, self.settings.resamples, single) for k in names}
        return self.bootstrap().intervals(statistic)


def _auroc_with_interval(y: np.ndarray, p: np.ndarray, resampling: _Resampling) -> dict:
    pos = int(y.sum())
    neg = len(y) - pos
    if pos == 0 or neg == 0:
        only = "negative" if pos == 0 else "positive"
        return _entry(None, None, f"undefined: only {only} images ({len(y)})")
    ranked = RankedScores.of(y, p)

    def statistic(w: np.ndarray) -> dict[str, np.ndarray]:
        return {"auroc": ranking_metrics(ranked, w)["auroc"]}

    interval = resampling.intervals(y, statistic, ["auroc"])["auroc"]
    return _entry(ranking_metrics(ranked)["auroc"][0], interval)


def _subgroups(frame: pd.DataFrame, resampling: _Resampling) -> tuple[dict, list[str]]:
    y, p, units = frame["label"].to_numpy(), frame["probability"].to_numpy(), resampling.units
    out: dict[str, list[dict]] = {}
    one_class: list[str] = []
    for attribute, rows in subgroup_masks(frame, resampling.settings.age_bands).items():
        out[attribute] = []
        for value, mask in rows:
            entry = _auroc_with_interval(y[mask], p[mask], resampling.subset(mask))
            if entry["value"] is None:
                one_class.append(f"{attribute}={value}")
            out[attribute].append(
                {
                    "value": value,
                    "images": int(mask.sum()),
                    "patients": int(len(np.unique(units[mask]))),
                    "positives": int(y[mask].sum()),
                    "auroc": entry,
                }
            )
    messages = []
    if one_class:
        messages.append(
            f"subgroup AUROC undefined where a subgroup holds one class only: {', '.join(one_class)}"
        )
    return out, messages


def _findings_table(frame: pd.DataFrame, resampling: _Resampling) -> tuple[list[dict], dict, list[str]]:
    """CheXNet-style per-finding AUROC table (findings with at least one positive) and the mean AUROC."""
    names = finding_columns(frame)
    present = [f for f in names if frame[f"y_{f}"].sum() > 0]
    absent = [f for f in names if f not in present]
    ranked: dict[str, RankedScores] = {}
    for f in present:
        y = frame[f"y_{f}"].to_numpy()
        if 0 < y.sum() < len(y):
            ranked[f] = RankedScores.of(y, frame[f"p_{f}"].to_numpy())
    boot = resampling.bootstrap()  # one set of resamples for every finding and their mean
    dists = boot.distributions(lambda w: {f: ranking_metrics(r, w)["auroc"] for f, r in ranked.items()})
    rows: list[dict[str, Any]] = []
    for f in present:
        y = frame[f"y_{f}"].to_numpy()
        if f in ranked:
            single = resampling.single_unit_class(y)
            interval = (
                boot.interval_of(dists[f]) if single is None else Interval(np.nan, np.nan, 0, 0, single)
            )
            entry = _entry(ranking_metrics(ranked[f])["auroc"][0], interval)
        else:
            entry = _entry(None, None, f"undefined: every image is positive ({len(y)})")
        rows.append({"finding": f, "positives": int(y.sum()), "images": int(len(y)), "auroc": entry})
    defined = [r["auroc"]["value"] for r in rows if r["auroc"]["value"] is not None]
    mean = float(np.mean(defined)) if defined else None
    mean_interval = (
        boot.interval_of(np.mean(np.stack([dists[f] for f in ranked]), axis=0)) if ranked else None
    )
    mean_entry = _entry(mean, mean_interval, None if defined else "undefined: no finding has both classes")
    mean_entry["findings"] = len(defined)
    messages = []
    if absent:
        messages.append(f"findings with no positive image in this split (no table row): {', '.join(absent)}")
    return rows, mean_entry, messages


#: The reference metrics of the "Reference standards" section.
REFERENCE_METRICS = ("auroc", "auprc", "sensitivity", "specificity")


def _reference_standards(
    frame: pd.DataFrame,
    resampling: _Resampling,
    threshold: float,
    references: Sequence[Reference],
    main: Mapping[str, Any],
) -> dict[str, Any] | None:
    """Per reference: covered images, patients, positives, AUROC/AUPRC with the patient bootstrap interval,
    sensitivity/specificity at ``threshold``; the cross-tab of every two references on the images they
    share; the caveats and citations of the references that cover an image (``None``: no references)."""
    if not references:
        return None
    p = frame["probability"].to_numpy(dtype=np.float64)
    entries, labels = [], {}
    for ref in references:
        mask, y = ref.covers(frame)
        full = np.full(len(frame), -1, dtype=np.int64)
        full[mask] = y
        entry: dict[str, Any] = {
            "name": ref.name,
            "title": ref.title,
            "description": ref.description,
            "source": ref.source,
            "images": int(mask.sum()),
        }
        if mask.all() and np.array_equal(y, frame["label"].to_numpy()):
            counts, metrics = main["counts"], main["metrics"]  # the report's own target: computed once
        elif mask.any():
            section, _ = _binary_section(
                y, p[mask], resampling.subset(mask), threshold, f"{ref.name}-covered"
            )
            counts, metrics = section["counts"], section["metrics"]
        else:
            counts, metrics = None, None
            entry["note"] = "no evaluated image is covered (name, patient, view, sex and age must agree)"
        if counts is not None:
            labels[ref.name] = full
            entry["counts"] = dict(counts)
            entry["metrics"] = {k: metrics[k] for k in REFERENCE_METRICS}
        entries.append(entry)
    used = [r for r in references if r.name in labels]
    return {
        "threshold": threshold,
        "references": entries,
        "crosstab": _crosstab(labels),
        "notes": [f"{r.title}: {r.note}" for r in used if r.note],
        "attribution": [r.citation for r in used if r.citation],
    }


def _crosstab(labels: Mapping[str, np.ndarray]) -> list[dict[str, Any]]:
    """For every two covering references, in order: their shared images and how their labels agree there."""
    names, rows = list(labels), []
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            ya, yb = labels[a], labels[b]
            shared = (ya >= 0) & (yb >= 0)
            ya, yb = ya[shared], yb[shared]
            rows.append(
                {
                    "a": a,
                    "b": b,
                    "images": int(shared.sum()),
                    "both_positive": int(((ya == 1) & (yb == 1)).sum()),
                    "a_only": int(((ya == 1) & (yb == 0)).sum()),
                    "b_only": int(((ya == 0) & (yb == 1)).sum()),
                    "both_negative": int(((ya == 0) & (yb == 0)).sum()),
                }
            )
    return rows


def _temperature_section(
    frame: pd.DataFrame, settings: EvalSettings, temperature: Mapping | None
) -> dict | None:
    """Calibration of the raw logits (temperature 1) and of the reported probabilities, on these images."""
    if "logit" not in frame.columns:
        return None
    y = frame["label"].to_numpy().astype(np.float64)
    phases = {
        "before": scaled_probability(frame["logit"].to_numpy(), 1.0),
        "after": frame["probability"].to_numpy(dtype=np.float64),
    }
    out: dict[str, Any] = {"value": None, "fitted_on": None, **dict(temperature or {})}
    for name, p in phases.items():
        cal = calibration(y, p, settings.calibration_bins)
        out[name] = {"ece": _num(cal.ece), "brier": _num(cal.brier), "nll": _num(probability_nll(y, p))}
    return out


def _clean(obj: Any) -> Any:
    """Plain JSON types; NaN/inf become None."""
    if isinstance(obj, Mapping):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_clean(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    return obj


# ---------------------------------------------------------------------------------------------- public
def build_report(  # noqa: PLR0913 - the report's inputs, keywords after the first three
    frame: pd.DataFrame,
    threshold: float,
    settings: EvalSettings,
    *,
    operating_point: Mapping | None = None,
    split: str = "test",
    split_counts: Mapping | None = None,
    checkpoint: str | None = None,
    temperature: Mapping | None = None,
    references: Sequence[Reference] | None = None,
    data_source: Mapping | None = None,
) -> dict:
    """Build the report of a prediction table.

    Args:
        frame: ``predictions_frame`` output (``image``, ``patient``, ``probability``, ``label``, metadata,
            and ``p_*``/``y_*`` columns for a multi-label run).
        threshold: operating point on ``probability`` (positive when ``>= threshold``).
        settings: bootstrap, calibration and subgroup settings.
        operating_point: how the threshold was chosen (rule, epoch, validation figures, note).
        split: name of the evaluated split (for messages).
        split_counts: ``{"images", "patients"}`` of the whole split, to flag a partial evaluation.
        checkpoint: the evaluated checkpoint, recorded in the report.
        temperature: the temperature behind ``probability`` (``value``, ``fitted_on``...); with a ``logit``
            column the report adds calibration before (temperature 1) and after scaling.
        references: the reference standards of the "Reference standards" section; ``None`` =
            ``settings.references`` at their shipped files, with ``nih`` the table's own ``label``.
        data_source: where the images and labels came from (``describe_data``), named in the report.
    """
    missing = [c for c in ("image", "patient", "probability", "label") if c not in frame.columns]
    if missing:
        raise ValueError(f"prediction table lacks column(s) {missing}")
    threshold = float(threshold)
    y = frame["label"].to_numpy().astype(np.int64)
    p = frame["probability"].to_numpy().astype(np.float64)
    units = frame["patient"].to_numpy()
    # Without a label index the patient column holds the image names: the bootstrap then resamples images.
    unit = "image" if np.array_equal(units.astype(str), frame["image"].to_numpy().astype(str)) else "patient"
    resampling = _Resampling(units, settings, unit)
    section, messages = _binary_section(y, p, resampling, threshold, split)
    op_entry = _operating_point_entry(threshold, settings, operating_point)
    if op_entry["note"]:
        messages.append(f"operating point: {op_entry['note']}")
    report: dict[str, Any] = {
        "task": "multilabel" if finding_columns(frame) else "binary",
        "target": PNEUMONIA,  # the binary target of both tasks (``pneumo.models.tasks``)
        "split": split,
        "checkpoint": checkpoint,
        "data_source": dict(data_source) if data_source else None,
        "counts": section["counts"],
        "split_counts": dict(split_counts) if split_counts else None,
        "threshold": op_entry,
        "bootstrap": resampling.description(),
        "settings": settings_dict(settings),
        "metrics": section["metrics"],
        "confusion_matrix": section["confusion_matrix"],
        "calibration": section["calibration"],
    }
    messages += _coverage_messages(len(frame), split, split_counts, unit)
    sections, section_messages = _further_sections(frame, resampling, threshold, split, temperature)
    if references is None:
        references = load_references(settings.references)
    standards = _reference_standards(frame, resampling, threshold, references, section)
    if standards is not None:
        sections["reference_standards"] = standards
    report.update(sections)
    report["messages"] = messages + section_messages
    return _clean(report)


#: Where NIH ChestX-ray14's images are published (Google's public copy); its shipped label files are NIH's too.
NIH_IMAGES = "gcs-public-data--healthcare-nih-chest-xray"


def describe_data(images_url: str | None, labels_url: str | None, synthetic: bool = False) -> dict:
    """The data source a report names: ``kind`` (``synthetic``, ``bigquery``, ``nih`` or ``user``) and a
    sentence for ``report.md``.

    Example:
        >>> describe_data("data/nih_demo/images", "data/nih_demo/Data_Entry_2017.csv", synthetic=True)["kind"]
        'synthetic'
        >>> describe_data("/scans", "bq://p.nih.labels")["text"]
        'labels from the BigQuery table `bq://p.nih.labels`, images from `/scans`'
        >>> describe_data("/scans", "/scans/labels.csv")["kind"]
        'user'
    """
    images, labels = redact_url(str(images_url or "")), redact_url(str(labels_url or ""))
    where = f", images from `{images}`" if images else ""
    if synthetic:
        kind = "synthetic"
        text = (
            f"the **synthetic demo set** (drawn shapes in NIH's layout, `pneumo.synthetic`; its figures say the "
            f"pipeline works, nothing about chest X-rays): labels `{labels}`{where}"
        )
    elif labels.startswith("bq://"):
        kind, text = "bigquery", f"labels from the BigQuery table `{labels}`{where}"
    elif NIH_IMAGES in images or (not images and labels.startswith(str(SHIPPED_FOLDER))):
        kind, text = "nih", f"NIH ChestX-ray14: labels `{labels}`{where}"
    else:
        kind, text = "user", f"your files: labels `{labels}`{where}"
    return {"kind": kind, "text": text, "images_url": images or None, "labels_url": labels or None}


def _operating_point_entry(threshold: float, settings: EvalSettings, operating_point: Mapping | None) -> dict:
    """The report's record of the threshold: its value and how it was chosen (rule, split, epoch, note)."""
    rule = str(ThresholdRule.parse(settings.threshold))
    op = OperatingPoint.from_dict(operating_point, rule=rule, value=threshold, chosen_on="val")
    return replace(op, value=threshold, thresholds=None).to_dict()


def _coverage_messages(n: int, split: str, split_counts: Mapping | None, unit: str) -> list[str]:
    """Warnings that the numbers describe less than they seem to: part of the split, images not patients."""
    messages = []
    if split_counts and int(split_counts.get("images", n)) != n:
        messages.append(
            f"evaluated {n} of the {split_counts['images']} images of the {split} split "
            "(e.g. trainer.limit_test_batches): the numbers describe that subset"
        )
    if unit == "image":
        messages.append(
            "no patient ids (no label index): the bootstrap resamples images, intervals are too narrow"
        )
    return messages


def _further_sections(
    frame: pd.DataFrame, resampling: _Resampling, threshold: float, split: str, temperature: Mapping | None
) -> tuple[dict[str, Any], list[str]]:
    """The sections after the binary target's (subgroups, temperature, findings), in report order, and
    their messages."""
    sections: dict[str, Any] = {}
    subgroups, sub_messages = _subgroups(frame, resampling)
    sections["subgroups"] = subgroups
    messages: list[str] = []
    scaling = _temperature_section(frame, resampling.settings, temperature)
    if scaling is not None:
        sections["temperature"] = scaling
        if scaling.get("note"):
            messages.append(f"temperature: {scaling['note']}")
    messages += sub_messages
    if finding_columns(frame):
        rows, mean_entry, find_messages = _findings_table(frame, resampling)
        sections["findings"] = rows
        sections["mean_auroc"] = mean_entry
        messages += find_messages
    return sections, messages


def report_scalars(report: Mapping, prefix: str = "test") -> dict[str, float]:
    """Flat ``{prefix/name: value}`` of the report's defined numbers (for loggers and Hydra)."""
    out: dict[str, float] = {}
    for name, entry in report["metrics"].items():
        if entry["value"] is not None:
            out[f"{prefix}/{name}"] = entry["value"]
        if entry["ci"]:
            out[f"{prefix}/{name}_ci_low"], out[f"{prefix}/{name}_ci_high"] = entry["ci"]
    for name in ("ece", "brier"):
        if report["calibration"][name] is not None:
            out[f"{prefix}/{name}"] = report["calibration"][name]
    out[f"{prefix}/threshold"] = report["threshold"]["value"]
    if report.get("mean_auroc") and report["mean_auroc"]["value"] is not None:
        out[f"{prefix}/auroc_mean"] = report["mean_auroc"]["value"]
        if report["mean_auroc"]["ci"]:
            out[f"{prefix}/auroc_mean_ci_low"], out[f"{prefix}/auroc_mean_ci_high"] = report["mean_auroc"][
                "ci"
            ]
    for row in report.get("findings", []):
        if row["auroc"]["value"] is not None:
            out[f"{prefix}/auroc_{row['finding']}"] = row["auroc"]["value"]
    return out


# ---------------------------------------------------------------------------------------------- markdown
def _fmt(value: float | None, digits: int = 4) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _fmt_ci(entry: Mapping) -> str:
    return f"{entry['ci'][0]:.4f} – {entry['ci'][1]:.4f}" if entry.get("ci") else ""


def _cell(entry: Mapping) -> tuple[str, str, str]:
    return _fmt(entry["value"]), _fmt_ci(entry), entry.get("note") or ""


def metrics_table(report: Mapping) -> list[str]:
    """The Markdown lines of the metrics table (with intervals, ECE and Brier score)."""
    lines = ["| Metric | Value | 95% CI | Note |", "|---|---|---|---|"]
    for name, entry in report["metrics"].items():
        value, ci, note = _cell(entry)
        lines.append(f"| {METRIC_NAMES.get(name, name)} | {value} | {ci} | {note} |")
    cal = report["calibration"]
    return lines + [
        f"| Expected calibration error ({cal['bins']} bins) | {_fmt(cal['ece'])} | | |",
        f"| Brier score | {_fmt(cal['brier'])} | | |",
    ]


def subgroup_table(report: Mapping) -> list[str]:
    """The Markdown lines of the subgroup AUROC table."""
    lines = [
        "| Subgroup | Value | Images | Patients | Positives | AUROC | 95% CI |",
        "|---|---|---|---|---|---|---|",
    ]
    for attribute, rows in report.get("subgroups", {}).items():
        for row in rows:
            value, ci, note = _cell(row["auroc"])
            lines.append(
                f"| {SUBGROUP_NAMES.get(attribute, attribute)} | {row['value']} | {row['images']} | "
                f"{row['patients']} | {row['positives']} | {value} | {ci or note} |"
            )
    return lines


def report_markdown(report: Mapping) -> str:
    """The report as Markdown tables (what ``report.md`` holds)."""
    c, t, b = report["counts"], report["threshold"], report["bootstrap"]
    split = report["split"]
    if report["task"] == "multilabel":
        title = f"14 findings (multi-label) and {report['target'].lower()}"
    else:
        title = f"{report['target'].lower()} (binary)"
    lines = [f"# Evaluation report: {title}, {split} split", ""]
    if report.get("checkpoint"):
        lines += [f"Checkpoint: `{report['checkpoint']}`", ""]
    if report.get("data_source"):
        lines += [f"Data: {report['data_source']['text']}.", ""]
    prevalence = "n/a" if c["prevalence"] is None else f"{100 * c['prevalence']:.1f}%"
    lines += [
        f"{c['images']} images, {c['patients']} patients, {c['positives']} {report['target'].lower()} "
        f"positives (prevalence {prevalence}).",
        "",
    ]
    if t.get("chosen_on") == "fixed":
        chosen = "fixed by eval.threshold"
    else:
        chosen = f"rule {t['rule']}, chosen on {t.get('chosen_on') or 'val'}"
    if t.get("epoch") is not None:
        chosen += f" at epoch {t['epoch']}"
    if t.get("val"):
        v = t["val"]
        chosen += f"; validation sensitivity {_fmt(v.get('sensitivity'), 3)}, specificity {_fmt(v.get('specificity'), 3)}"
    lines += [
        f"Operating point: probability ≥ **{t['value']:.4f}** ({chosen}).",
        f"Intervals: {100 * b['level']:g}% percentile bootstrap over {b['resamples']} resamples of "
        f"{b['unit']}s (seed {b['seed']}).",
        "",
    ]
    if report["task"] == "multilabel":
        m = report["mean_auroc"]
        lines += [
            "## Per-finding AUROC (CheXNet layout)",
            "",
            "| Finding | AUROC | 95% CI | Positives | Images |",
            "|---|---|---|---|---|",
        ]
        for row in report["findings"]:
            value, ci, note = _cell(row["auroc"])
            lines.append(
                f"| {row['finding']} | {value} | {ci or note} | {row['positives']} | {row['images']} |"
            )
        value, ci, note = _cell(m)
        lines += [f"| **Mean ({m['findings']} findings)** | **{value}** | {ci or note} | | |", ""]
        lines += [f"## {report['target']} at the operating point", ""]
    lines += metrics_table(report)
    lines += [
        "",
        *_temperature_markdown(report.get("temperature")),
        f"Confusion matrix at threshold {t['value']:.4f}:",
        "",
        "| | predicted negative | predicted positive |",
        "|---|---|---|",
        f"| **actual negative** | {report['confusion_matrix']['tn']} (TN) | {report['confusion_matrix']['fp']} (FP) |",
        f"| **actual positive** | {report['confusion_matrix']['fn']} (FN) | {report['confusion_matrix']['tp']} (TP) |",
        "",
    ]
    if report.get("subgroups"):
        lines += [f"## AUROC by subgroup ({report['target'].lower()})", "", *subgroup_table(report), ""]
    if report.get("reference_standards"):
        lines += _references_markdown(report["reference_standards"], report["target"])
    if report.get("messages"):
        lines += ["## Notes", ""] + [f"- {m}" for m in report["messages"]] + [""]
    if report.get("figures"):
        lines += ["## Figures", ""] + [f"![{name}]({name})" for name in report["figures"]] + [""]
    if report.get("gallery"):
        lines += ["## Explanations", "", f"The explained images, sortable and filterable by outcome: "
                  f"[the gallery]({report['gallery']}) (`index.html` of the explain run that wrote these "
                  "predictions).", ""]  # fmt: skip
    return "\n".join(lines)


def _temperature_markdown(section: Mapping | None) -> list[str]:
    if not section:
        return []
    value = section.get("value")
    fitted = not str(section.get("note") or "").startswith("temperature not fitted")
    how = (
        "no temperature recorded"
        if value is None
        else f"temperature {value:.4f}, fitted on {section.get('fitted_on') or 'validation'} by NLL"
        if fitted
        else f"temperature {value:.4f}, not fitted on {section.get('fitted_on') or 'validation'}: see the notes"
    )
    b, a = section["before"], section["after"]
    return [
        f"Calibration before and after temperature scaling ({how}):",
        "",
        "| | ECE | Brier | NLL |",
        "|---|---|---|---|",
        f"| before (temperature 1) | {_fmt(b['ece'])} | {_fmt(b['brier'])} | {_fmt(b['nll'])} |",
        f"| after (reported probabilities) | {_fmt(a['ece'])} | {_fmt(a['brier'])} | {_fmt(a['nll'])} |",
        "",
    ]


def _references_markdown(section: Mapping, target: str) -> list[str]:
    """The "Reference standards" section: one row per reference, the cross-tab, caveats and citations."""
    lines = [
        "## Reference standards",
        "",
        f"The same {target.lower()} probabilities at the same operating point ({section['threshold']:.4f}), scored "
        "against each reference on the evaluated images it covers:",
        "",
        "| Reference | Images | Patients | Positives | Prevalence | AUROC | 95% CI | AUPRC | 95% CI "
        "| Sensitivity | 95% CI | Specificity | 95% CI |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    titles = {}
    for ref in section["references"]:
        titles[ref["name"]] = ref["title"]
        if "counts" not in ref:
            lines.append(f"| {ref['title']} | 0 | | | | {ref['note']} | | | | | | | |")
            continue
        c = ref["counts"]
        prevalence = "n/a" if c["prevalence"] is None else f"{100 * c['prevalence']:.1f}%"
        cells = []
        for metric in REFERENCE_METRICS:
            value, ci, note = _cell(ref["metrics"][metric])
            cells += [value, ci or note]
        lines.append(
            f"| {ref['title']} | {c['images']} | {c['patients']} | {c['positives']} | {prevalence} | "
            f"{' | '.join(cells)} |"
        )
    lines.append("")
    if section["crosstab"]:
        lines += [
            "How the references label the images they share:",
            "",
            "| Reference A | Reference B | Shared images | Both positive | A only | B only | Both negative |",
            "|---|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {titles[r['a']]} | {titles[r['b']]} | {r['images']} | {r['both_positive']} | {r['a_only']} | "
            f"{r['b_only']} | {r['both_negative']} |"
            for r in section["crosstab"]
        ]
        lines.append("")
    lines += [
        f"- {ref['title']}: {ref['description']}"
        for ref in section["references"]
        if ref.get("description") and "counts" in ref
    ]
    lines += [f"- {note}" for note in section["notes"]]
    if section["attribution"]:
        lines += ["", "Sources (cite them with these results):", ""]
        lines += [f"- {citation}" for citation in section["attribution"]]
    return [*lines, ""]


def references_markdown(report: Mapping) -> str:
    """The "Reference standards" section alone (a TensorBoard text of its own); empty without one."""
    section = report.get("reference_standards")
    return "\n".join(_references_markdown(section, report["target"])) if section else ""


def write_report(report: Mapping, out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``report.json`` and ``report.md`` into ``out_dir``; returns both paths.

    Both are rendered before either is written, and each is written whole (``atomic_write_text``): an error
    while rendering leaves the earlier files as they were, a crash never leaves a truncated one.
    """
    out = Path(out_dir)
    json_path, md_path = out / "report.json", out / "report.md"
    json_text = json.dumps(_clean(report), indent=2, allow_nan=False) + "\n"
    md_text = report_markdown(report)
    atomic_write_text(json_path, json_text)
    atomic_write_text(md_path, md_text)
    return json_path, md_path


def settings_dict(settings: EvalSettings) -> dict:
    """The settings as plain data (recorded in the report)."""
    out = asdict(settings)
    out["age_bands"] = list(settings.age_bands)
    return out
