"""Localization scored the way CheXlocalize does (Saporta et al. 2022), against every box reference.

CheXlocalize turns a saliency map into a segmentation before scoring it: the map is min-max normalised to
0-255 (8-bit, as OpenCV's ``cv2.normalize(..., NORM_MINMAX, CV_8U)`` rounds it) and thresholded by Otsu's
method (``cv2.threshold(..., THRESH_OTSU)``: the level ``t`` maximising the between-class variance; pixels
above ``t`` are the segmentation). The **mIoU** is the mean over the images a reference boxes of
|segmentation ∩ boxes| / |segmentation ∪ boxes|. A fixed-threshold variant (``miou_fixed``: the min-max map at
or above ``fixed_threshold``) stands in for CheXlocalize's per-pathology threshold tuned on validation. The
**hit rate** is the pointing game (the map's maximum inside a box).

The references are ``pneumo.xai.reference_boxes``'s: per reference name (``nih``, ``rsna``, your own), one
``(k, 4)`` array of ``[x, y, w, h]`` boxes per image in the map's pixels (``k = 0``: not boxed by it). The hit
rate, its patient-bootstrap interval and the random-point baseline come from
``reference_boxes.localization_by_reference``; the mIoUs get intervals from the same patient bootstrap.

Example:
    >>> heat = np.zeros((8, 8)); heat[1:4, 2:5] = 1.0
    >>> out = localize_by_reference([heat, heat], {"nih": [np.array([[2, 1, 3, 3.]]), np.zeros((0, 4))],
    ...                                           "rsna": [np.array([[2, 1, 3, 3.]])] * 2}, resamples=50)
    >>> out["nih"]["n"], out["nih"]["miou_otsu"], out["rsna"]["n"], out["rsna"]["hit_rate"]
    (1, 1.0, 2, 1.0)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from pneumo.stats.bootstrap import DEFAULT_LEVEL, ClusterBootstrap
from pneumo.xai.localization import box_mask
from pneumo.xai.reference_boxes import DEFAULT_RESAMPLES, localization_by_reference

#: The fixed-threshold variant's level (of the min-max normalised map).
FIXED_THRESHOLD = 0.5


def to_uint8(heat: np.ndarray) -> np.ndarray:
    """``heat`` min-max normalised to 0-255 and rounded to 8 bits (a constant map: all zeros).

    Example:
        >>> to_uint8(np.array([[0.0, 0.25], [0.5, 1.0]])).tolist()
        [[0, 64], [128, 255]]
    """
    heat = np.asarray(heat, dtype=np.float64)
    span = heat.max() - heat.min()
    if not span > 0:
        return np.zeros(heat.shape, dtype=np.uint8)
    return np.rint((heat - heat.min()) / span * 255).astype(np.uint8)


def otsu_threshold(values: np.ndarray) -> int:
    """Otsu's threshold ``t`` of 8-bit values (pixels ``> t`` are the foreground), as OpenCV picks it: the
    first ``t`` in 0..255 maximising ``w0 * w1 * (mu0 - mu1)^2`` over the classes ``<= t`` and ``> t``.

    Example:
        >>> otsu_threshold(np.array([10, 10, 12, 200, 210], dtype=np.uint8))
        12
    """
    hist = np.bincount(np.asarray(values, dtype=np.uint8).ravel(), minlength=256).astype(np.float64)
    levels = np.arange(256, dtype=np.float64)
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * levels)
    mu0 = np.divide(m0, w0, out=np.zeros(256), where=w0 > 0)
    mu1 = np.divide(m0[-1] - m0, w1, out=np.zeros(256), where=w1 > 0)
    between = w0 * w1 * (mu0 - mu1) ** 2
    return int(np.argmax(between))


def segment(heat: np.ndarray, fixed_threshold: float | None = None) -> np.ndarray:
    """CheXlocalize's segmentation of one map: the 8-bit min-max map above its Otsu threshold, or (with
    ``fixed_threshold``) the min-max map at or above that level; empty for a constant map."""
    u8 = to_uint8(heat)
    if not u8.any():
        return np.zeros(u8.shape, dtype=bool)
    if fixed_threshold is not None:
        return u8 / 255.0 >= fixed_threshold
    return u8 > otsu_threshold(u8)


def iou(region: np.ndarray, truth: np.ndarray) -> float:
    """|region ∩ truth| / |region ∪ truth| (0 when both are empty)."""
    union = np.logical_or(region, truth).sum()
    return float(np.logical_and(region, truth).sum() / union) if union else 0.0


def _mious(
    maps: Sequence[np.ndarray], per_image: Sequence[np.ndarray], fixed_threshold: float
) -> tuple[list[int], np.ndarray, np.ndarray]:
    """Indices of the images with boxes, and their IoUs (Otsu, fixed)."""
    scored, otsu, fixed = [], [], []
    for i, (heat, given) in enumerate(zip(maps, per_image)):
        boxes = np.asarray(given, dtype=np.float64).reshape(-1, 4)
        if not len(boxes):
            continue
        truth = box_mask(boxes, np.asarray(heat).shape)
        scored.append(i)
        otsu.append(iou(segment(heat), truth))
        fixed.append(iou(segment(heat, fixed_threshold), truth))
    return scored, np.array(otsu), np.array(fixed)


def _mean_ious(otsu: np.ndarray, fixed: np.ndarray) -> Callable[[np.ndarray], dict[str, np.ndarray]]:
    """The bootstrap statistic: both mIoUs under a ``(resamples, n)`` weight matrix."""
    return lambda w: {"miou_otsu": (w @ otsu) / w.sum(1), "miou_fixed": (w @ fixed) / w.sum(1)}


def localize_by_reference(
    maps: Sequence[np.ndarray],
    boxes: Mapping[str, Sequence[np.ndarray]],
    patients: Sequence[Any] | None = None,
    fixed_threshold: float = FIXED_THRESHOLD,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    level: float = DEFAULT_LEVEL,
) -> dict[str, dict[str, Any]]:
    """Per reference: ``n`` (images it boxes), ``patients``, ``miou_otsu`` and ``miou_fixed`` with patient-
    bootstrap intervals (``*_ci``, ``None`` when undefined), ``hit_rate`` with ``hit_rate_ci`` and
    ``random_hit_rate`` (``reference_boxes``); ``{"n": 0}`` for a reference boxing none of the images.

    Args:
        maps: one ``(H, W)`` map per image (any range: each is min-max normalised here).
        boxes: per reference name, one ``(k, 4)`` array per image in map pixels (``k = 0``: not boxed).
        patients: patient of each image (the bootstrap's clusters); ``None`` = each image its own.
        fixed_threshold: level of the fixed-threshold variant.
        resamples, seed, level: the patient bootstrap.
    """
    norm = [np.asarray(m, dtype=np.float64) for m in maps]
    norm = [(m - m.min()) / (m.max() - m.min()) if m.max() > m.min() else np.zeros_like(m) for m in norm]
    pointing = localization_by_reference(norm, boxes, patients, resamples=resamples, seed=seed, level=level)
    patient_of = np.array([str(p) for p in (range(len(norm)) if patients is None else patients)])
    out: dict[str, dict[str, Any]] = {}
    for name, per_image in boxes.items():
        scored, otsu, fixed = _mious(norm, per_image, fixed_threshold)
        if not scored:
            out[name] = {"n": 0}
            continue
        units = patient_of[scored]
        boot = ClusterBootstrap(units, resamples=resamples, seed=seed, level=level)
        cis = boot.intervals(_mean_ious(otsu, fixed))
        hit = pointing[name]
        out[name] = {
            "n": len(scored),
            "patients": int(len(np.unique(units))),
            "miou_otsu": float(otsu.mean()),
            "miou_otsu_ci": [cis["miou_otsu"].low, cis["miou_otsu"].high]
            if cis["miou_otsu"].defined
            else None,
            "miou_fixed": float(fixed.mean()),
            "miou_fixed_ci": [cis["miou_fixed"].low, cis["miou_fixed"].high]
            if cis["miou_fixed"].defined
            else None,
            "fixed_threshold": fixed_threshold,
            "hit_rate": hit["hit_rate"],
            "hit_rate_ci": hit["hit_rate_ci"],
            "random_hit_rate": hit["random_hit_rate"],
        }
    return out
