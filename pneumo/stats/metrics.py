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
import numpy.typing as npt

from pneumo.errors import ConfigError

#: Equal-width probability bins of the expected calibration error and the reliability diagram, unless told.
CALIBRATION_BINS = 10
#: Names of the threshold-dependent metrics, in report order.
THRESHOLD_METRICS = ("sensitivity", "specificity", "ppv", "npv", "f1", "accuracy")


def _as_2d(weights: np.ndarray | None, n: int) -> np.ndarray:
    if weights is None:
        return np.ones((1, n))
    w = np.asarray(weights)
    if not np.issubdtype(w.dtype, np.floating):
        w = w.astype(np.float64)  # float32 bootstrap counts stay float32 (exact, half the memory traffic)
    return w[None] if w.ndim == 1 else w


def _safe_div(num: npt.ArrayLike, den: npt.ArrayLike) -> np.ndarray:
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
        positions: sorted positions of the positive images.
        pos_last: for each group holding positives, the index (into ``positions``) of its last positive.
        pos_end, pos_start: sorted positions where those groups end and start.
    """

    order: np.ndarray
    y: np.ndarray
    ends: np.ndarray
    thresholds: np.ndarray
    positions: np.ndarray
    pos_last: np.ndarray
    pos_end: np.ndarray
    pos_start: np.ndarray

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
        s, ys = scores[order], y[order]
        ends = np.flatnonzero(np.r_[s[1:] != s[:-1], True]) if len(s) else np.zeros(0, dtype=np.int64)
        positions = np.flatnonzero(ys == 1)
        group_of_pos = np.searchsorted(ends, positions)  # group k holds positions ends[k-1]+1 .. ends[k]
        last = (
            np.flatnonzero(np.r_[group_of_pos[1:] != group_of_pos[:-1], True])
            if len(positions)
            else positions
        )
        groups = group_of_pos[last]
        starts = np.r_[0, ends[:-1] + 1] if len(ends) else ends
        return cls(order, ys, ends, s[ends], positions, last, ends[groups], starts[groups])

    def cumulative(self, weights: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """True and false positive (weighted) counts at each distinct threshold: two ``(B, K)`` arrays."""
        w = _as_2d(weights, len(self.y))[:, self.order].astype(np.float64)
        tp = np.cumsum(w * self.y, axis=1)[:, self.ends]
        fp = np.cumsum(w * (1.0 - self.y), axis=1)[:, self.ends]
        return tp, fp


def auroc(y: np.ndarray, scores: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray | float:
    """Area under the ROC curve; ``NaN`` without positives or negatives. ``(B,)`` for 2-D weights."""
    out = ranking_metrics(RankedScores.of(y, scores), weights)["auroc"]
    return float(out[0]) if weights is None or np.ndim(weights) == 1 else out


def average_precision(
    y: np.ndarray, scores: np.ndarray, weights: np.ndarray | None = None
) -> np.ndarray | float:
    """Average precision (AUPRC, scikit-learn's definition); ``NaN`` without positives."""
    out = ranking_metrics(RankedScores.of(y, scores), weights)["auprc"]
    return float(out[0]) if weights is None or np.ndim(weights) == 1 else out


def ranking_metrics(ranked: RankedScores, weights: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """AUROC and AUPRC for each row of ``weights`` (``(B, n)``), from one pre-sorted ``RankedScores``.

    Only one pass over all images (a cumulative sum of the weights); everything else runs over the groups of
    tied scores that hold positives, the few percent of a low-prevalence split. Integer weights stay exact
    in float32 up to 2**24 images per resample.
    """
    w = _as_2d(weights, len(ranked.y))[:, ranked.order]
    every = np.cumsum(w, axis=1, dtype=np.float32 if w.dtype == np.float32 else np.float64)
    pos_cum = np.cumsum(w[:, ranked.positions], axis=1, dtype=np.float64)
    total = every[:, -1].astype(np.float64) if every.shape[1] else np.zeros(len(w))
    pos = pos_cum[:, -1] if pos_cum.shape[1] else np.zeros(len(w))
    neg = total - pos
    # Per group holding positives: positives through / in it, all images through / before it.
    pos_through = pos_cum[:, ranked.pos_last]
    pos_in = np.diff(pos_through, axis=1, prepend=0.0)
    all_through = every[:, ranked.pos_end].astype(np.float64)
    before = np.clip(ranked.pos_start - 1, 0, None)
    all_before = np.where(ranked.pos_start > 0, every[:, before], 0.0).astype(np.float64)
    neg_above = all_before - (pos_through - pos_in)
    neg_tied = (all_through - all_before) - pos_in
    area = np.sum(pos_in * (neg[:, None] - neg_above - neg_tied / 2.0), axis=1)
    precision = np.divide(pos_through, all_through, out=np.zeros_like(pos_through), where=all_through > 0)
    return {"auroc": _safe_div(area, pos * neg), "auprc": _safe_div(np.sum(pos_in * precision, axis=1), pos)}


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
    # One product for the four cells; integer weights stay exact in float32 (up to 2**24 images).
    cells = np.stack([(1 - y) * (1 - pred), (1 - y) * pred, y * (1 - pred), y * pred], axis=1).astype(w.dtype)
    tn, fp, fn, tp = (w @ cells).astype(np.float64).T
    counts = {"tn": tn, "fp": fp, "fn": fn, "tp": tp}
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


def calibration(y: np.ndarray, probs: np.ndarray, bins: int = CALIBRATION_BINS) -> Calibration:
    """Calibration of probabilities against 0/1 labels with ``bins`` equal-width bins.

    Example:
        >>> calibration(np.array([0, 1]), np.array([0.0, 1.0])).ece
        0.0
    """
    if bins < 1:
        raise ConfigError(f"eval.calibration_bins must be >= 1, got {bins}")
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
