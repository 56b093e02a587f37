"""Localization scores of heatmaps against ground-truth boxes: pointing game, IoU and IoBB.

Conventions (one heatmap of shape ``(H, W)``, boxes ``[x, y, w, h]`` in that heatmap's pixels):

* A pixel ``(row, col)`` lies in a box when its centre ``(col + 0.5, row + 0.5)`` does; an image's
  ground truth is the union of its boxes.
* **Pointing game** (hit): the heatmap's maximum (first one, in row-major order) lies in the ground truth.
  A uniformly random point hits with probability = the ground truth's share of the image, so the
  **random-point baseline** of a set is the mean of that share (an exact expectation, no sampling).
* **IoU**: |region ∩ truth| / |region ∪ truth|, with region = pixels where the heatmap >= ``threshold``.
* **IoBB** (Wang et al. 2017): |region ∩ truth| / |region|, the share of the highlighted region that lies
  in a box; ``iobb_accuracy`` is the share of images with IoBB >= 0.1 (Wang's headline cut-off).

Example:
    >>> heat = np.zeros((8, 8), np.float32); heat[2, 3] = 1.0
    >>> s = score_heatmap(heat, np.array([[2.0, 1.0, 3.0, 3.0]]))
    >>> s.hit, s.iou, s.box_fraction
    (True, 0.1111111111111111, 0.140625)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

#: Share of the normalised heatmap's range above which a pixel counts as highlighted (for IoU / IoBB).
DEFAULT_THRESHOLD = 0.5
IOBB_CUTOFF = 0.1


@dataclass(frozen=True)
class LocalizationScore:
    """Scores of one heatmap against one image's boxes."""

    hit: bool
    iou: float
    iobb: float
    #: share of the image inside the ground truth = hit probability of a uniformly random point
    box_fraction: float
    peak_row: int
    peak_col: int

    def as_dict(self) -> dict:
        return asdict(self)


def box_mask(boxes: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Boolean ``shape`` mask of the union of ``[x, y, w, h]`` boxes (pixel centres inside a box)."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    rows = np.arange(shape[0]) + 0.5
    cols = np.arange(shape[1]) + 0.5
    mask = np.zeros(shape, dtype=bool)
    for x, y, w, h in boxes:
        in_rows = (rows >= y) & (rows < y + h)
        in_cols = (cols >= x) & (cols < x + w)
        mask |= in_rows[:, None] & in_cols[None, :]
    return mask


def score_heatmap(
    heatmap: np.ndarray, boxes: np.ndarray, threshold: float = DEFAULT_THRESHOLD
) -> LocalizationScore:
    """Pointing game, IoU and IoBB of one ``(H, W)`` heatmap in [0, 1] against its image's boxes."""
    heatmap = np.asarray(heatmap)
    if heatmap.ndim != 2:
        raise ValueError(f"a heatmap must be 2-D (H, W), got shape {heatmap.shape}")
    truth = box_mask(boxes, heatmap.shape)
    if not truth.any():
        raise ValueError(
            f"no box covers a pixel of the {heatmap.shape} heatmap (boxes {np.asarray(boxes).tolist()})"
        )
    peak_row, peak_col = np.unravel_index(int(np.argmax(heatmap)), heatmap.shape)
    region = heatmap >= threshold if heatmap.max() > 0 else np.zeros_like(truth)
    inter = float(np.logical_and(region, truth).sum())
    union = float(np.logical_or(region, truth).sum())
    return LocalizationScore(
        hit=bool(truth[peak_row, peak_col]),
        iou=inter / union,
        iobb=inter / float(region.sum()) if region.any() else 0.0,
        box_fraction=float(truth.mean()),
        peak_row=int(peak_row),
        peak_col=int(peak_col),
    )


def wilson_interval(successes: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """Wilson score 95% confidence interval of a proportion (sound for small ``n`` and rates near 0 or 1)."""
    if n == 0:
        return (math.nan, math.nan)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def summarize(scores: Sequence[LocalizationScore]) -> dict:
    """Summary of a set: ``n``, ``hit_rate`` with ``hit_rate_ci95``, ``random_hit_rate`` (a uniformly random
    point), ``hit_rate_vs_random`` (their ratio), ``mean_iou``, ``mean_iobb``, ``iobb_accuracy`` (IoBB >= 0.1)."""
    n = len(scores)
    if n == 0:
        return {"n": 0}
    hits = sum(s.hit for s in scores)
    random_rate = float(np.mean([s.box_fraction for s in scores]))
    hit_rate = hits / n
    lo, hi = wilson_interval(hits, n)
    return {
        "n": n,
        "hits": hits,
        "hit_rate": hit_rate,
        "hit_rate_ci95": [lo, hi],
        "random_hit_rate": random_rate,
        "hit_rate_vs_random": hit_rate / random_rate if random_rate > 0 else math.inf,
        "mean_iou": float(np.mean([s.iou for s in scores])),
        "mean_iobb": float(np.mean([s.iobb for s in scores])),
        "iobb_accuracy": float(np.mean([s.iobb >= IOBB_CUTOFF for s in scores])),
    }
