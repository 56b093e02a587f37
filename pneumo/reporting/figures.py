"""Report figures: ROC and PR curves with the operating point, reliability diagram, confusion matrix.

Figures are plain ``matplotlib.figure.Figure`` objects (no pyplot state, no display needed); ``save_figures``
writes them as PNGs and ``report_figures`` returns them for TensorBoard (``SummaryWriter.add_figure``).
When a curve is undefined (e.g. no positive images) the figure says so instead of failing.

Example:
    >>> frame = pd.DataFrame({"probability": [.1, .8, .3, .7], "label": [0, 1, 0, 1]})
    >>> figs = report_figures(frame, threshold=0.5)
    >>> sorted(figs)
    ['confusion_matrix', 'pr', 'reliability', 'roc']
"""

from __future__ import annotations

import io
import textwrap
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from pneumo.io.files import atomic_write_bytes
from pneumo.nih.findings import PNEUMONIA
from pneumo.reporting.predictions import finding_columns
from pneumo.stats.metrics import (
    CALIBRATION_BINS,
    auroc,
    average_precision,
    calibration,
    confusion_counts,
    pr_points,
    roc_points,
    threshold_metrics,
)

#: File stem of each figure, in report order.
FIGURE_NAMES = ("roc", "pr", "reliability", "confusion_matrix")


def _figure(size: tuple[float, float] = (4.6, 4.2)) -> tuple[Figure, Axes]:
    fig = Figure(figsize=size, dpi=110, layout="constrained")
    return fig, fig.add_subplot()


def _undefined(ax: Axes, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", wrap=True, fontsize=9, transform=ax.transAxes)


#: Resamples of the ROC curve's bootstrap band, and its seed (the band is the same on every run).
ROC_BAND_RESAMPLES, ROC_BAND_SEED = 200, 0


def roc_band(
    y: np.ndarray, p: np.ndarray, resamples: int = ROC_BAND_RESAMPLES, level: float = 0.95
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(fpr grid, lower tpr, upper tpr)``: a pointwise percentile bootstrap band of the ROC curve (images
    resampled with replacement, stratified by class so every resample has both; vertical averaging on a
    101-point FPR grid).

    Example:
        >>> grid, lo, hi = roc_band(np.r_[np.zeros(20), np.ones(20)], np.r_[np.linspace(0, .6, 20), np.linspace(.4, 1, 20)])
        >>> bool((lo <= hi).all()), float(lo[-1]), len(grid)
        (True, 1.0, 101)
    """
    rng = np.random.default_rng(ROC_BAND_SEED)
    grid = np.linspace(0.0, 1.0, 101)
    neg, pos = np.flatnonzero(y == 0), np.flatnonzero(y == 1)
    curves = np.empty((resamples, len(grid)))
    for b in range(resamples):
        idx = np.r_[rng.choice(neg, len(neg)), rng.choice(pos, len(pos))]
        fpr, tpr, _ = roc_points(y[idx], p[idx])
        curves[b] = np.interp(grid, fpr, tpr)  # fpr is non-decreasing: the curve's upper envelope at ties
    tail = 100 * (1 - level) / 2
    return grid, np.percentile(curves, tail, axis=0), np.percentile(curves, 100 - tail, axis=0)


def roc_figure(y: np.ndarray, p: np.ndarray, threshold: float, title: str = "ROC") -> Figure:
    """ROC curve with its 95% bootstrap band, the chance diagonal and the operating point."""
    fig, ax = _figure()
    ax.plot([0, 1], [0, 1], ls="--", color="0.6", lw=1, label="chance")
    if 0 < y.sum() < len(y):
        grid, lo, hi = roc_band(y, p)
        ax.fill_between(grid, lo, hi, color="C0", alpha=0.2, lw=0,
                        label=f"95% band ({ROC_BAND_RESAMPLES} bootstrap resamples)")  # fmt: skip
        fpr, tpr, _ = roc_points(y, p)
        ax.plot(fpr, tpr, lw=2, label=f"AUROC {auroc(y, p):.3f}")
        op = threshold_metrics(y, p, threshold)
        ax.plot(
            1.0 - op["specificity"],
            op["sensitivity"],
            "o",
            ms=8,
            color="C3",
            label=f"threshold {threshold:.3f}",
        )
        ax.legend(loc="lower right", fontsize=8)
    else:
        _undefined(ax, "ROC undefined: the split holds one class only")
    ax.set(
        xlim=(0, 1), ylim=(0, 1.01), xlabel="1 - specificity (FPR)", ylabel="sensitivity (TPR)", title=title
    )
    return fig


def pr_figure(y: np.ndarray, p: np.ndarray, threshold: float, title: str = "Precision-recall") -> Figure:
    """Precision-recall curve (step, as average precision sums it), prevalence baseline, operating point."""
    fig, ax = _figure()
    if y.sum() > 0:
        recall, precision, _ = pr_points(y, p)
        ax.step(
            np.r_[0.0, recall],
            np.r_[precision[0], precision],
            where="pre",
            lw=2,
            label=f"AUPRC {average_precision(y, p):.3f}",
        )
        ax.axhline(y.mean(), ls="--", color="0.6", lw=1, label=f"prevalence {y.mean():.3f}")
        op = threshold_metrics(y, p, threshold)
        if np.isfinite(op["ppv"]):
            ax.plot(op["sensitivity"], op["ppv"], "o", ms=8, color="C3", label=f"threshold {threshold:.3f}")
        ax.legend(loc="best", fontsize=8)
    else:
        _undefined(ax, "PR curve undefined: the split has no positive images")
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="recall (sensitivity)", ylabel="precision (PPV)", title=title)
    return fig


def reliability_figure(
    y: np.ndarray, p: np.ndarray, bins: int = CALIBRATION_BINS, title: str = "Reliability"
) -> Figure:
    """Observed frequency against mean predicted probability per bin, with the image count per bin."""
    fig, ax = _figure()
    cal = calibration(y, p, bins)
    centers = (cal.edges[:-1] + cal.edges[1:]) / 2
    width = cal.edges[1] - cal.edges[0]
    ax.plot([0, 1], [0, 1], ls="--", color="0.6", lw=1, label="perfect calibration")
    filled = cal.counts > 0
    ax.bar(
        centers[filled],
        cal.fraction_positive[filled],
        width=width * 0.9,
        alpha=0.35,
        color="C0",
        edgecolor="C0",
        label="fraction positive per bin",
    )
    # NaN at empty bins breaks the line there: no segment is drawn across bins without images
    ax.plot(np.where(filled, cal.mean_probability, np.nan), np.where(filled, cal.fraction_positive, np.nan),
            "o-", color="C0", ms=4)  # fmt: skip
    for x, h, n in zip(centers[filled], cal.fraction_positive[filled], cal.counts[filled]):
        ax.text(x, min(h + 0.02, 0.95), str(n), ha="center", fontsize=7, color="0.3")
    ece = "n/a" if not np.isfinite(cal.ece) else f"{cal.ece:.3f}"
    brier = "n/a" if not np.isfinite(cal.brier) else f"{cal.brier:.3f}"
    ax.set(
        xlim=(0, 1),
        ylim=(0, 1.01),
        xlabel="predicted probability",
        ylabel="observed frequency",
        title=f"{title} (ECE {ece}, Brier {brier})",
    )
    ax.legend(loc="upper left", fontsize=8)
    return fig


def confusion_figure(
    y: np.ndarray, p: np.ndarray, threshold: float, title: str = "Confusion matrix"
) -> Figure:
    """2x2 confusion matrix (counts and row shares) at the threshold."""
    fig, ax = _figure((4.2, 3.8))
    cm = confusion_counts(y, p, threshold)
    grid = np.array([[cm["tn"], cm["fp"]], [cm["fn"], cm["tp"]]])
    rows = grid.sum(axis=1, keepdims=True)
    share = np.divide(grid, rows, out=np.zeros_like(grid), where=rows > 0)
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for i in range(2):
        for j in range(2):
            ax.text(
                j,
                i,
                f"{int(grid[i, j])}\n({100 * share[i, j]:.0f}%)",
                ha="center",
                va="center",
                color="white" if share[i, j] > 0.5 else "black",
                fontsize=11,
            )
    ax.set_xticks([0, 1], ["negative", "positive"])
    ax.set_yticks([0, 1], ["negative", "positive"])
    ax.set(xlabel="predicted", ylabel="actual")
    # Two lines: a long target name and the threshold on one line ran past the figure's edge
    ax.set_title(f"{textwrap.fill(title, 32)}\n(threshold {threshold:.3f})", fontsize=10)
    return fig


def findings_roc_figure(frame: pd.DataFrame) -> Figure | None:
    """ROC curves of every finding with both classes (multi-label runs), or ``None``."""
    names = [f for f in finding_columns(frame) if 0 < frame[f"y_{f}"].sum() < len(frame)]
    if not names:
        return None
    fig, ax = _figure((6.0, 5.0))
    ax.plot([0, 1], [0, 1], ls="--", color="0.6", lw=1)
    for i, f in enumerate(names):
        y, p = frame[f"y_{f}"].to_numpy(), frame[f"p_{f}"].to_numpy()
        fpr, tpr, _ = roc_points(y, p)
        ax.plot(
            fpr, tpr, lw=1.3, color=f"C{i % 10}", ls="-" if i < 10 else ":", label=f"{f} {auroc(y, p):.3f}"
        )
    ax.legend(loc="lower right", fontsize=6.5)
    ax.set(
        xlim=(0, 1), ylim=(0, 1.01), xlabel="1 - specificity", ylabel="sensitivity", title="ROC per finding"
    )
    return fig


def report_figures(
    frame: pd.DataFrame, threshold: float, bins: int = CALIBRATION_BINS, target: str = PNEUMONIA
) -> dict[str, Figure]:
    """The four report figures of the ``probability``/``label`` columns (plus ``roc_findings`` if multi-label)."""
    y = frame["label"].to_numpy().astype(np.float64)
    p = frame["probability"].to_numpy().astype(np.float64)
    figs = {
        "roc": roc_figure(y, p, threshold, f"ROC: {target}"),
        "pr": pr_figure(y, p, threshold, f"Precision-recall: {target}"),
        "reliability": reliability_figure(y, p, bins, "Reliability"),
        "confusion_matrix": confusion_figure(y, p, threshold, f"Confusion matrix: {target}"),
    }
    findings = findings_roc_figure(frame)
    if findings is not None:
        figs["roc_findings"] = findings
    return figs


def save_figures(figures: Mapping[str, Figure], out_dir: str | Path) -> list[Path]:
    """Write each figure as ``<name>.png`` into ``out_dir``, each whole (rendered in memory, then
    ``atomic_write_bytes``)."""
    out = Path(out_dir)
    paths = []
    for name, fig in figures.items():
        path = out / f"{name}.png"
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png")
        atomic_write_bytes(path, buffer.getvalue())
        paths.append(path)
    return paths
