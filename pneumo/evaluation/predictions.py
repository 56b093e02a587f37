"""The per-image prediction table of a split (written as ``predictions.csv`` next to the report).

Core columns, in this order: ``image``, ``patient``, ``probability`` (of pneumonia), ``label`` (0/1
pneumonia); then ``view``, ``sex``, ``age`` where the label index has them. Multi-label runs add
``p_<Finding>`` and ``y_<Finding>`` for each of the 14 findings. Probabilities are written with full float64
precision so any tool recomputes the report's numbers exactly.

Example:
    >>> frame = predictions_frame(np.array(["a.png", "b.png"]), np.array([0.2, 0.9]), np.array([0, 1]))
    >>> list(frame.columns)
    ['image', 'patient', 'probability', 'label']
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from pneumo.data.findings import FINDINGS, PNEUMONIA

CORE_COLUMNS = ("image", "patient", "probability", "label")
METADATA_COLUMNS = ("view", "sex", "age")


def predictions_frame(
    image_ids: np.ndarray,
    probs: np.ndarray,
    targets: np.ndarray,
    metadata: pd.DataFrame | None = None,
    findings: Sequence[str] = FINDINGS,
) -> pd.DataFrame:
    """Build the prediction table.

    Args:
        image_ids: image names, one per row.
        probs: ``(n,)`` pneumonia probabilities (binary) or ``(n, F)`` finding probabilities (multi-label).
        targets: labels shaped like ``probs`` (0/1).
        metadata: label-index table with ``image``, ``patient`` and optionally ``view``, ``sex``, ``age``;
            without it each image counts as its own patient (the bootstrap then resamples images).
        findings: names of the ``F`` columns of a multi-label ``probs`` (default: NIH's 14, in order).
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
    """Write the table as CSV with round-trip float precision."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=False, float_format="%.17g")
    return path
