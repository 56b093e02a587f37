"""The per-image prediction table of a split (written as ``predictions.csv`` next to the report).

Core columns, in this order: ``image``, ``patient``, ``probability`` (of pneumonia), ``label`` (0/1
pneumonia); then ``logit`` (the raw pneumonia logit, before temperature scaling) where known, and ``view``,
``sex``, ``age`` where the label index has them. Multi-label runs add ``p_<Finding>`` and ``y_<Finding>`` for
each of the 14 findings. Probabilities are written with full float64 precision so any tool recomputes the
report's numbers exactly.

``read_predictions`` reads any model's predictions CSV back into that table (``python -m pneumo.evaluation``):
an ``image`` (or ``Image Index``) column plus a pneumonia ``probability`` column, or one probability column
per finding named ``p_<Finding>`` (pneumo) or ``prob_<Finding>`` (CheXNet reproductions); labels, patients
and metadata come from a label index, never from the file.

Example:
    >>> frame = predictions_frame(np.array(["a.png", "b.png"]), np.array([0.2, 0.9]), np.array([0, 1]))
    >>> list(frame.columns)
    ['image', 'patient', 'probability', 'label']
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from pneumo.errors import PneumoError
from pneumo.io.files import atomic_write_text
from pneumo.io.reading import read_csv
from pneumo.nih.findings import FINDINGS, PNEUMONIA
from pneumo.nih.index import NIHLabelIndex

CORE_COLUMNS = ("image", "patient", "probability", "label")
METADATA_COLUMNS = ("view", "sex", "age")


def predictions_frame(
    image_ids: np.ndarray,
    probs: np.ndarray,
    targets: np.ndarray,
    metadata: pd.DataFrame | None = None,
    findings: Sequence[str] = FINDINGS,
    logits: np.ndarray | None = None,
) -> pd.DataFrame:
    """Build the prediction table.

    Args:
        image_ids: image names, one per row.
        probs: ``(n,)`` pneumonia probabilities (binary) or ``(n, F)`` finding probabilities (multi-label).
        targets: labels shaped like ``probs`` (0/1).
        metadata: label-index table with ``image``, ``patient`` and optionally ``view``, ``sex``, ``age``;
            without it each image counts as its own patient (the bootstrap then resamples images).
        findings: names of the ``F`` columns of a multi-label ``probs`` (default: NIH's 14, in order).
        logits: ``(n,)`` raw pneumonia logits (before temperature), to report calibration before scaling.
    """
    image_ids = np.asarray(image_ids).astype(str)
    probs = np.asarray(probs, dtype=np.float64)
    targets = np.asarray(targets)
    if probs.shape != targets.shape or len(probs) != len(image_ids):
        raise ValueError(
            f"predictions: {len(image_ids)} images, probabilities {probs.shape} and labels {targets.shape} disagree"
        )
    multilabel = probs.ndim == 2
    if multilabel and probs.shape[1] != len(findings):
        raise ValueError(f"predictions: {probs.shape[1]} probability columns for {len(findings)} findings")
    frame = pd.DataFrame({"image": image_ids})
    if metadata is not None:
        meta = metadata.drop_duplicates("image").set_index("image")
        unknown = ~frame["image"].isin(meta.index)
        if unknown.any():
            raise ValueError(
                f"predictions: {int(unknown.sum())} image(s) not in the label index, e.g. {frame['image'][unknown].iloc[0]}"
            )
        frame["patient"] = meta.loc[frame["image"], "patient"].to_numpy()
    else:
        frame["patient"] = frame["image"]
    col = findings.index(PNEUMONIA) if multilabel else None
    frame["probability"] = probs[:, col] if multilabel else probs
    frame["label"] = (targets[:, col] if multilabel else targets).astype(np.int64)
    if logits is not None:
        frame["logit"] = np.asarray(logits, dtype=np.float64)
    if metadata is not None:
        for name in METADATA_COLUMNS:
            if name in meta.columns:
                frame[name] = meta.loc[frame["image"], name].to_numpy()
    if multilabel:
        for j, name in enumerate(findings):
            frame[f"p_{name}"] = probs[:, j]
            frame[f"y_{name}"] = targets[:, j].astype(np.int64)
    return frame


def finding_columns(frame: pd.DataFrame) -> list[str]:
    """Names of the findings with ``p_``/``y_`` columns in a multi-label prediction table (else empty)."""
    return [c[2:] for c in frame.columns if c.startswith("p_") and f"y_{c[2:]}" in frame.columns]


def write_predictions(frame: pd.DataFrame, path: str | Path) -> Path:
    """Write the table as CSV with round-trip float precision, whole or not at all (``atomic_write_text``:
    the CSV is made in memory first, so an error while making it leaves an earlier file as it was)."""
    path = Path(path)
    atomic_write_text(path, frame.to_csv(index=False, float_format="%.17g"))
    return path


class PredictionsFileError(PneumoError, ValueError):
    """A predictions file that cannot be evaluated; the message names the file, the row and the fix."""


#: Image-name columns accepted, in order of preference.
IMAGE_COLUMNS = ("image", "Image Index")
_FINDING_COLUMN = re.compile(r"^(?:p|prob)_(.+)$")


def _finding_name(text: str) -> str | None:
    key = text.strip().replace(" ", "_").lower()
    return next((f for f in FINDINGS if f.lower() == key), None)


def _numbers(raw: pd.DataFrame, column: str, path: str, unit: bool) -> np.ndarray:
    """A column as float64; every value finite (and in [0, 1] when ``unit``), else the first bad line."""
    values = pd.to_numeric(raw[column].str.strip(), errors="coerce").to_numpy(dtype=np.float64)
    bad = ~np.isfinite(values)
    if unit:
        bad |= (values < 0.0) | (values > 1.0)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        what = "a probability in [0, 1]" if unit else "a finite number"
        raise PredictionsFileError(
            f"{path}, line {row + 2}: {column} = {raw[column].iloc[row]!r} is not {what} "
            f"({int(bad.sum())} such row(s))"
        )
    return values


def read_predictions(
    path: str, index: NIHLabelIndex, storage_options: Mapping | None = None, io: Mapping | None = None
) -> pd.DataFrame:
    """Read a predictions CSV into the prediction table (rows sorted by image name), labels from ``index``.

    Columns used: the image name (``image`` or ``Image Index``); ``p_<Finding>`` / ``prob_<Finding>`` for
    each finding it has (Pneumonia among them), else ``probability``; ``logit`` (raw pneumonia logit) when
    present. Other columns (``label``, ``predicted_label``, ``source``...) are ignored. ``io``: I/O limits of
    the read (``StorageSettings.io``).

    Raises:
        PredictionsFileError: the file is missing or not a CSV, lacks a column, holds a value that is not a
            probability, repeats an image, or names an image the label index does not have (one line each).

    Example:
        >>> frame = read_predictions("preds.csv", NIHLabelIndex.from_csv("Data_Entry_2017.csv"))  # doctest: +SKIP
    """
    try:
        raw = read_csv(path, storage_options, io=io, dtype=str, keep_default_na=False)
    except FileNotFoundError as err:
        raise PredictionsFileError(f"{path}: predictions file not found") from err
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise PredictionsFileError(f"{path}: not a CSV file ({str(err).splitlines()[0]})") from err
    columns = [str(c) for c in raw.columns]
    image_column = next((c for c in IMAGE_COLUMNS if c in columns), None)
    if image_column is None:
        raise PredictionsFileError(
            f"{path}: no image column (expected one of {list(IMAGE_COLUMNS)}); columns: {columns}"
        )
    by_finding: dict[str, str] = {}
    for column in columns:
        match = _FINDING_COLUMN.match(column)
        name = _finding_name(match.group(1)) if match else None
        if name is not None:
            by_finding.setdefault(name, column)
    findings = [f for f in FINDINGS if f in by_finding]
    if findings and PNEUMONIA not in by_finding:
        raise PredictionsFileError(
            f"{path}: finding columns {[by_finding[f] for f in findings]} but none for Pneumonia "
            "(p_Pneumonia or prob_Pneumonia): the report is about pneumonia"
        )
    if not findings and "probability" not in columns:
        raise PredictionsFileError(
            f"{path}: no pneumonia probability column: expected 'probability', or 'p_<Finding>' / "
            f"'prob_<Finding>' columns including Pneumonia; columns: {columns}"
        )
    images = raw[image_column].str.strip()
    if (images == "").any():
        raise PredictionsFileError(
            f"{path}, line {int(np.flatnonzero(images == '')[0]) + 2}: empty image name"
        )
    repeated = images[images.duplicated(keep=False)]
    if len(repeated):
        first = repeated.iloc[0]
        lines = (np.flatnonzero(images == first) + 2).tolist()
        raise PredictionsFileError(
            f"{path}: image {first} appears {len(lines)} times (lines {', '.join(map(str, lines[:5]))}); "
            f"{repeated.nunique()} image(s) repeat: one row per image"
        )
    known = pd.Index(index.table["image"]).get_indexer(images)
    if (known < 0).any():
        first = int(np.flatnonzero(known < 0)[0])
        raise PredictionsFileError(
            f"{path}, line {first + 2}: image {images.iloc[first]} is not in the label index {index.source} "
            f"({int((known < 0).sum())} such image(s)); pass labels_url=DATA_ENTRY_CSV that lists them"
        )
    order = np.argsort(images.to_numpy(), kind="mergesort")  # sorted by name, as a training run writes it
    rows = index.subset(images.to_numpy()[order])
    if findings:
        probs = np.stack([_numbers(raw, by_finding[f], path, True) for f in findings], axis=1)[order]
        targets = rows.findings[:, [FINDINGS.index(f) for f in findings]].astype(np.int64)
    else:
        probs = _numbers(raw, "probability", path, True)[order]
        targets = rows.pneumonia.astype(np.int64)
    logits = _numbers(raw, "logit", path, False)[order] if "logit" in columns else None
    return predictions_frame(
        images.to_numpy()[order], probs, targets, rows.table, findings=findings or FINDINGS, logits=logits
    )
