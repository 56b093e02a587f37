"""Binary classification metrics in NumPy, with optional per-image weights (one row per bootstrap resample).

One implementation serves the point estimate (all weights 1) and the bootstrap (integer weights = how many
times each image was drawn), so the two can never disagree. Conventions follow scikit-learn: AUROC is the
trapezoidal area under the ROC curve, AUPRC is average precision (the step-wise sum
``sum_k (R_k - R_{k-1}) P_k``, no interpolation), and an image is called positive when its probability is
``>= threshold``. Undefined values (e.g. AUROC without positives) are ``NaN`` here; the report turns them
into messages.

Example:
    >>> y = np.array([0, 0, 1, 1]); p = np.array([0.1, 0.4, 0.35, 0.8])
    >>> float(auroc(y, p)), float(average_precision(y, p))
    (0.75, 0.8333333333333333)
    >>> confusion_counts(y, p, 0.5)
    {'tn': 2.0, 'fp': 0.0, 'fn': 1.0, 'tp': 1.0}
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Names of the threshold-dependent metrics, in report order.
THRESHOLD_METRICS = ("sensitivity", "specificity", "ppv", "npv", "f1", "accuracy")


def _as_2d(weights: np.ndarray | None, n: int) -> np.ndarray:
    if weights is None:
        return np.ones((1, n))
    w = np.asarray(weights, dtype=np.float64)
    return w[None] if w.ndim == 1 else w


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    num, den = np.broadcast_arrays(np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64))
    out = np.full(num.shape, np.nan)
    np.divide(num, den, out=out, where=den > 0)
    return out


@dataclass(frozen=True)
class RankedScores:
    """Scores sorted once (descending) with their tie groups, reused by every resample.

    Attributes:
        order: permutation sorting the scores in descending order.
        y: labels in that order (float 0/1).
        ends: index (in sorted order) of the last image of each group of equal scores.
        thresholds: the distinct scores, descending (``thresholds[k]`` = score of group ``k``).
    """

    order: np.ndarray
    y: np.ndarray
    ends: np.ndarray
    thresholds: np.ndarray

    @classmethod
    def of(cls, y: np.ndarray, scores: np.ndarray) -> RankedScores:
        y = np.asarray(y, dtype=np.float64)
        scores = np.asarray(scores, dtype=np.float64)
        if y.shape != scores.shape or y.ndim != 1:
            raise ValueError(
                f"labels and scores must be 1-D of equal length, got {y.shape} and {scores.shape}"
            )
        if len(y) and not np.isin(y, (0.0, 1.0)).all():
            raise ValueError(f"labels must be 0/1, got values {np.unique(y)[:5].tolist()}")
        if not np.isfinite(scores).all():
            raise ValueError("scores contain NaN or infinite values")
        order = np.argsort(-scores, kind="mergesort")
        s = scores[order]
        ends = np.flatnonzero(np.r_[s[1:] != s[:-1], True]) if len(s) else np.zeros(0, dtype=np.int64)
        return cls(order=order, y=y[order], ends=ends, thresholds=s[ends])

    def cumulative(self, weights: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """True and false positive (weighted) counts at each distinct threshold: two ``(B, K)`` arrays."""
        w = _as_2d(weights, len(self.y))[:, self.order]
        tp = np.cumsum(w * self.y, axis=1)[:, self.ends]
        fp = np.cumsum(w * (1.0 - self.y), axis=1)[:, self.ends]
        return tp, fp


def _auroc_from_cumulative(tp: np.ndarray, fp: np.ndarray) -> np.ndarray:
    pos, neg = tp[:, -1], fp[:, -1]
    tp0 = np.concatenate([np.zeros((len(tp), 1)), tp], axis=1)
    fp0 = np.concatenate([np.zeros((len(fp), 1)), fp], axis=1)
    area = np.sum(np.diff(fp0, axis=1) * (tp0[:, 1:] + tp0[:, :-1]) / 2.0, axis=1)
    return _safe_div(area, pos * neg)


def _ap_from_cumulative(tp: np.ndarray, fp: np.ndarray) -> np.ndarray:
    pos = tp[:, -1]
    precision = _safe_div(tp, tp + fp)
    gain = np.diff(np.concatenate([np.zeros((len(tp), 1)), tp], axis=1), axis=1)
    # Groups that a resample drew no image from add no recall (gain 0) and have no precision (NaN).
    contrib = np.where(gain > 0, gain * np.nan_to_num(precision), 0.0)
    return _safe_div(contrib.sum(axis=1), pos)


def auroc(y: np.ndarray, scores: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray | float:
    """Area under the ROC curve; ``NaN`` without positives or negatives. ``(B,)`` for 2-D weights."""
    ranked = RankedScores.of(y, scores)
    out = _auroc_from_cumulative(*ranked.cumulative(weights))
    return float(out[0]) if weights is None or np.ndim(weights) == 1 else out


def average_precision(
    y: np.ndarray, scores: np.ndarray, weights: np.ndarray | None = None
) -> np.ndarray | float:
    """Average precision (AUPRC, scikit-learn's definition); ``NaN`` without positives."""
    ranked = RankedScores.of(y, scores)
    out = _ap_from_cumulative(*ranked.cumulative(weights))
    return float(out[0]) if weights is None or np.ndim(weights) == 1 else out


def ranking_metrics(ranked: RankedScores, weights: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """AUROC and AUPRC for each row of ``weights`` (``(B, n)``), from one pre-sorted ``RankedScores``."""
    tp, fp = ranked.cumulative(weights)
    return {"auroc": _auroc_from_cumulative(tp, fp), "auprc": _ap_from_cumulative(tp, fp)}


def roc_points(y: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(fpr, tpr, thresholds)`` from (0, 0) to (1, 1); ``thresholds[0]`` is ``inf`` (nothing positive)."""
    ranked = RankedScores.of(y, scores)
    tp, fp = (a[0] for a in ranked.cumulative())
    fpr = _safe_div(np.r_[0.0, fp], fp[-1] if len(fp) else 0.0)
    tpr = _safe_div(np.r_[0.0, tp], tp[-1] if len(tp) else 0.0)
    return fpr, tpr, np.r_[np.inf, ranked.thresholds]


def pr_points(y: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(recall, precision, thresholds)`` at each distinct threshold, from the highest threshold down."""
    ranked = RankedScores.of(y, scores)
    tp, fp = (a[0] for a in ranked.cumulative())
    return _safe_div(tp, tp[-1] if len(tp) else 0.0), _safe_div(tp, tp + fp), ranked.thresholds


def confusion_counts(
    y: np.ndarray, scores: np.ndarray, threshold: float, weights: np.ndarray | None = None
) -> dict[str, np.ndarray | float]:
    """``tn, fp, fn, tp`` with an image positive when ``score >= threshold`` (``(B,)`` for 2-D weights)."""
    y = np.asarray(y, dtype=np.float64)
    pred = (np.asarray(scores, dtype=np.float64) >= threshold).astype(np.float64)
    w = _as_2d(weights, len(y))
    counts = {
        "tn": w @ ((1 - y) * (1 - pred)),
        "fp": w @ ((1 - y) * pred),
        "fn": w @ (y * (1 - pred)),
        "tp": w @ (y * pred),
    }
    if weights is None or np.ndim(weights) == 1:
        return {k: float(v[0]) for k, v in counts.items()}
    return counts


def rates(counts: dict[str, np.ndarray | float]) -> dict[str, np.ndarray]:
    """Sensitivity, specificity, PPV, NPV, F1 and accuracy from confusion counts (``NaN`` where 0/0)."""
    tn, fp, fn, tp = (np.asarray(counts[k], dtype=np.float64) for k in ("tn", "fp", "fn", "tp"))
    return {
        "sensitivity": _safe_div(tp, tp + fn),
        "specificity": _safe_div(tn, tn + fp),
        "ppv": _safe_div(tp, tp + fp),
        "npv": _safe_div(tn, tn + fn),
        "f1": _safe_div(2 * tp, 2 * tp + fp + fn),
        "accuracy": _safe_div(tp + tn, tp + tn + fp + fn),
    }


def threshold_metrics(y: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, float]:
    """The metrics of ``THRESHOLD_METRICS`` at one threshold, as floats (``NaN`` where undefined)."""
    return {k: float(v) for k, v in rates(confusion_counts(y, scores, threshold)).items()}


@dataclass(frozen=True)
class Calibration:
    """Expected calibration error, Brier score and the reliability-diagram bins.

    Attributes:
        ece: ``sum_b n_b / n * |mean probability_b - fraction positive_b|`` over equal-width bins.
        brier: mean squared difference between probability and label.
        edges: ``bins + 1`` bin edges on [0, 1].
        counts, mean_probability, fraction_positive: per bin (``NaN`` for empty bins).
    """

    ece: float
    brier: float
    edges: np.ndarray
    counts: np.ndarray
    mean_probability: np.ndarray
    fraction_positive: np.ndarray


def calibration(y: np.ndarray, probs: np.ndarray, bins: int = 10) -> Calibration:
    """Calibration of probabilities against 0/1 labels with ``bins`` equal-width bins.

    Example:
        >>> calibration(np.array([0, 1]), np.array([0.0, 1.0])).ece
        0.0
    """
    if bins < 1:
        raise ValueError(f"eval.calibration_bins must be >= 1, got {bins}")
    y = np.asarray(y, dtype=np.float64)
    p = np.asarray(probs, dtype=np.float64)
    if len(y) == 0:
        nan = np.full(bins, np.nan)
        return Calibration(np.nan, np.nan, np.linspace(0, 1, bins + 1), np.zeros(bins, int), nan, nan)
    edges = np.linspace(0.0, 1.0, bins + 1)
    # Bin b holds edges[b] <= p < edges[b+1]; p == 1 falls in the last bin.
    which = np.clip(np.searchsorted(edges, p, side="right") - 1, 0, bins - 1)
    counts = np.bincount(which, minlength=bins)
    mean_p = _safe_div(np.bincount(which, weights=p, minlength=bins), counts)
    frac = _safe_div(np.bincount(which, weights=y, minlength=bins), counts)
    filled = counts > 0
    ece = float(np.sum(counts[filled] / len(y) * np.abs(mean_p[filled] - frac[filled])))
    brier = float(np.mean((p - y) ** 2))
    return Calibration(ece, brier, edges, counts, mean_p, frac)
