"""Boxes from heatmaps, and Wang et al. 2017's localisation accuracy at IoBB / IoU thresholds.

``heatmap_boxes`` cuts a ``(H, W)`` heatmap in [0, 1] at ``threshold``, finds the 8-connected regions of
pixels at or above it, and returns each region's bounding box ranked by its **heat mass** (the sum of the
heatmap over the region's pixels), the top ``top_k``. A box ``[x, y, w, h]`` covers whole pixels
(``x`` = first column, ``w`` = columns spanned), in the heatmap's pixels or, given ``source_shape``, scaled
to the source image's (the coordinates of NIH's ``BBox_List_2017.csv``).

``box_overlaps`` and ``localization_table`` follow Wang et al. 2017 (ChestX-ray8, Table 3): a predicted box is
correct at ``T`` when its IoBB (intersection over the predicted box's area) with a ground-truth box reaches
``T``; an image counts as localised when any of its predicted boxes is correct. Images without a predicted
box (an all-zero heatmap) count as misses. The same is reported for IoU.

Example:
    >>> heat = np.zeros((8, 8)); heat[1:3, 1:4] = 1.0; heat[5:7, 5:6] = 0.8
    >>> [b.box.tolist() for b in heatmap_boxes(heat, threshold=0.5, top_k=2)]
    [[1.0, 1.0, 3.0, 2.0], [5.0, 5.0, 1.0, 2.0]]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from pneumo.errors import ConfigError
from pneumo.nih.boxes import scaled_to
from pneumo.xai.localization import DEFAULT_THRESHOLD

#: Boxes kept per heatmap unless told (``boxes.top_k``).
DEFAULT_TOP_K = 1
#: Wang et al. 2017's thresholds of the localisation table.
WANG_THRESHOLDS = (0.1, 0.25, 0.5, 0.75, 0.9)


@dataclass(frozen=True)
class HeatBox:
    """One region of a heatmap: its box ``[x, y, w, h]``, heat mass, and pixel count (heatmap pixels)."""

    box: np.ndarray
    mass: float
    pixels: int


def connected_regions(mask: np.ndarray) -> np.ndarray:
    """Label the 8-connected regions of a boolean ``(H, W)`` mask: ``0`` = background, ``1..n`` regions
    (numbered in row-major order of their first pixel)."""
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return np.zeros(mask.shape, dtype=np.int64)
    fg = torch.from_numpy(mask)[None, None]
    # Each foreground pixel starts with its own id; max-pooling spreads the largest id through its region.
    labels = torch.arange(1, mask.size + 1, dtype=torch.float64).reshape(fg.shape) * fg
    while True:
        spread = F.max_pool2d(labels, kernel_size=3, stride=1, padding=1) * fg
        if torch.equal(spread, labels):
            break
        labels = spread
    raw = labels[0, 0].numpy().astype(np.int64)
    ids, first = np.unique(raw.ravel(), return_index=True)
    order = ids[ids > 0][np.argsort(first[ids > 0])]
    out = np.zeros_like(raw)
    for new, old in enumerate(order, start=1):
        out[raw == old] = new
    return out


def heatmap_boxes(
    heatmap: np.ndarray,
    threshold: float = DEFAULT_THRESHOLD,
    top_k: int = DEFAULT_TOP_K,
    source_shape: tuple[int, int] | None = None,
) -> list[HeatBox]:
    """The boxes of the regions where ``heatmap >= threshold``, by heat mass (largest first), at most ``top_k``.

    Args:
        heatmap: ``(H, W)`` values in [0, 1] (an all-zero map has no region).
        threshold: level a pixel must reach.
        top_k: boxes kept per image (``>= 1``).
        source_shape: ``(H, W)`` of the source image: boxes are scaled to its pixels.
    """
    if top_k < 1:
        raise ConfigError(f"boxes.top_k must be >= 1, got {top_k}")
    heat = np.asarray(heatmap, dtype=np.float64)
    if heat.ndim != 2:
        raise ValueError(f"a heatmap must be 2-D (H, W), got shape {heat.shape}")
    if heat.max(initial=0.0) <= 0.0:
        return []
    regions = connected_regions(heat >= threshold)
    found = []
    for label in range(1, int(regions.max()) + 1):
        rows, cols = np.nonzero(regions == label)
        box = np.array(
            [cols.min(), rows.min(), cols.max() - cols.min() + 1, rows.max() - rows.min() + 1], float
        )
        found.append(HeatBox(box, float(heat[rows, cols].sum()), len(rows)))
    found.sort(key=lambda b: -b.mass)
    kept = found[:top_k]
    if source_shape is not None:
        kept = [HeatBox(scaled_to(b.box, heat.shape, source_shape)[0], b.mass, b.pixels) for b in kept]
    return kept


def box_overlaps(predicted: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """IoBB and IoU of each predicted box with each ground-truth box: two ``(P, G)`` arrays.

    IoBB = area(predicted ∩ truth) / area(predicted) (Wang et al. 2017); IoU = area(∩) / area(∪).
    """
    p = np.asarray(predicted, dtype=np.float64).reshape(-1, 4)[:, None, :]
    g = np.asarray(truth, dtype=np.float64).reshape(-1, 4)[None, :, :]
    w = np.clip(
        np.minimum(p[..., 0] + p[..., 2], g[..., 0] + g[..., 2]) - np.maximum(p[..., 0], g[..., 0]), 0, None
    )
    h = np.clip(
        np.minimum(p[..., 1] + p[..., 3], g[..., 1] + g[..., 3]) - np.maximum(p[..., 1], g[..., 1]), 0, None
    )
    inter = w * h
    area_p, area_g = p[..., 2] * p[..., 3], g[..., 2] * g[..., 3]
    return inter / area_p, inter / (area_p + area_g - inter)


def localization_table(
    predicted: Sequence[np.ndarray],
    truth: Sequence[np.ndarray],
    thresholds: Sequence[float] = WANG_THRESHOLDS,
) -> dict:
    """Share of images localised at each threshold, by IoBB and by IoU (Wang et al. 2017, Table 3).

    Args:
        predicted: per image, its ``(P, 4)`` predicted boxes (``P`` may be 0).
        truth: per image, its ``(G, 4)`` ground-truth boxes (``G >= 1``), same coordinates.

    Returns:
        ``{"n", "thresholds", "iobb": [share per T], "iou": [...], "best_iobb": [...], "best_iou": [...]}``
        (``best_*``: per image, its best predicted box's value; 0 without a predicted box).
    """
    if len(predicted) != len(truth):
        raise ValueError(f"{len(predicted)} images with predictions, {len(truth)} with ground truth")
    best_iobb, best_iou = [], []
    for p, g in zip(predicted, truth):
        if len(np.asarray(p).reshape(-1, 4)) == 0:
            best_iobb.append(0.0)
            best_iou.append(0.0)
            continue
        iobb, iou = box_overlaps(p, g)
        best_iobb.append(float(iobb.max()))
        best_iou.append(float(iou.max()))
    n = len(best_iobb)
    share = lambda values, t: float(np.mean(np.asarray(values) >= t)) if n else None  # noqa: E731
    return {
        "n": n,
        "thresholds": [float(t) for t in thresholds],
        "iobb": [share(best_iobb, t) for t in thresholds],
        "iou": [share(best_iou, t) for t in thresholds],
        "best_iobb": best_iobb,
        "best_iou": best_iou,
    }


def format_table(table: dict) -> list[str]:
    """The table as printed lines: one row per measure, one column per threshold."""
    if not table or not table.get("n"):
        return []
    head = "  ".join(f"T={t:<5g}" for t in table["thresholds"])
    lines = [
        f"Wang et al. 2017 localisation accuracy on {table['n']} boxed image(s) (top {table.get('top_k', '?')} box(es)):"
    ]
    lines.append(f"       {head}")
    for name in ("iobb", "iou"):
        lines.append(f"{name.upper():<6} " + "  ".join(f"{v:<7.3f}" for v in table[name]))
    return lines
