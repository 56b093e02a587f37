"""Localization of heatmaps against every box reference: pointing game with a patient-bootstrap interval,
IoU / IoBB, and Wang et al. 2017's table of boxes from heatmaps vs the reference's boxes.

NIH boxes 120 pneumonias; RSNA's radiologists boxed 9,534 opacities (4,220 on NIH's test list). A pointing
game on NIH's boxes alone measures very little; ``localization_by_reference`` scores the same heatmaps
against each reference's boxes separately. It is a plain function over arrays, so any explainer's maps
(Grad-CAM, the saliency explainers) are scored the same way.

Conventions are ``pneumo.xai.localization``'s (one ``(H, W)`` heatmap in [0, 1] per image; boxes
``[x, y, w, h]`` in that heatmap's pixels; an image is scored against a reference only when the reference
boxes it). The hit rate's interval resamples **patients** (``patients``; each image its own patient when
not given), as the report's intervals do: several images of one patient are not independent evidence.

Example:
    >>> heat = np.zeros((8, 8)); heat[2, 3] = 1.0
    >>> out = localization_by_reference([heat, heat], {"nih": [np.array([[2, 1, 3, 3.]]), np.zeros((0, 4))],
    ...                                                "rsna": [np.array([[5, 5, 2, 2.]])] * 2}, resamples=50)
    >>> out["nih"]["n"], out["nih"]["hit_rate"], out["rsna"]["n"], out["rsna"]["hit_rate"]
    (1, 1.0, 2, 0.0)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pneumo.stats.bootstrap import DEFAULT_LEVEL, ClusterBootstrap
from pneumo.xai.heatmap_boxes import DEFAULT_TOP_K, WANG_THRESHOLDS, heatmap_boxes, localization_table
from pneumo.xai.localization import DEFAULT_THRESHOLD, LocalizationScore, score_heatmap, summarize

#: Resamples of the hit rate's patient bootstrap unless told.
DEFAULT_RESAMPLES = 1000


@dataclass(frozen=True)
class ReferenceHit:
    """One image scored against one reference's boxes: its patient, the ``LocalizationScore``, the boxes
    cut from its heatmap and the reference's boxes (heatmap pixels)."""

    patient: Any
    score: LocalizationScore
    predicted: np.ndarray
    truth: np.ndarray


def score_references(
    heatmap: np.ndarray,
    boxes: Mapping[str, np.ndarray],
    patient: Any = None,
    threshold: float = DEFAULT_THRESHOLD,
    top_k: int = DEFAULT_TOP_K,
) -> dict[str, ReferenceHit]:
    """Score one heatmap against each reference that boxes its image (``boxes``: per reference name, its
    ``(k, 4)`` boxes of this image in heatmap pixels; ``k = 0``: left out). Streaming callers (explain.py)
    keep only these rows, never the heatmaps."""
    predicted: np.ndarray | None = None
    out = {}
    for name, given in boxes.items():
        truth = np.asarray(given, dtype=np.float64).reshape(-1, 4)
        if not len(truth):
            continue
        if predicted is None:
            predicted = np.array([b.box for b in heatmap_boxes(heatmap, threshold, top_k)]).reshape(-1, 4)
        out[name] = ReferenceHit(
            patient, score_heatmap(heatmap, truth, threshold=threshold), predicted, truth
        )
    return out


def summarize_references(
    hits: Mapping[str, Sequence[ReferenceHit]],
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    level: float = DEFAULT_LEVEL,
    top_k: int = DEFAULT_TOP_K,
) -> dict[str, dict[str, Any]]:
    """Per reference: ``pneumo.xai.localization.summarize``'s keys (``n``, ``hits``, ``hit_rate``, Wilson
    ``hit_rate_ci95``, ``random_hit_rate``, ``mean_iou``, ``mean_iobb``, ``iobb_accuracy``) plus
    ``hit_rate_ci`` (patient bootstrap), ``patients``, ``unit`` and ``wang`` (``localization_table``'s shares
    at Wang et al.'s thresholds); ``{"n": 0}`` for a reference with no scored image."""
    out: dict[str, dict[str, Any]] = {}
    for name, rows in hits.items():
        if not rows:
            out[name] = {"n": 0}
            continue
        summary = summarize([r.score for r in rows])
        patients = np.array([i if r.patient is None else r.patient for i, r in enumerate(rows)], dtype=object)
        patients = np.array([str(p) for p in patients])
        scored = np.array([r.score.hit for r in rows], dtype=np.float64)

        def statistic(w: np.ndarray, scored: np.ndarray = scored) -> dict[str, np.ndarray]:
            return {"hit_rate": (w @ scored) / w.sum(axis=1)}

        boot = ClusterBootstrap(patients, resamples=resamples, seed=seed, level=level)
        interval = boot.intervals(statistic)["hit_rate"]
        table = localization_table([r.predicted for r in rows], [r.truth for r in rows], WANG_THRESHOLDS)
        summary.update(
            {
                "hit_rate_ci": [interval.low, interval.high] if interval.defined else None,
                "patients": int(len(np.unique(patients))),
                "unit": "patient",
                "wang": {k: v for k, v in table.items() if not k.startswith("best_")} | {"top_k": top_k},
            }
        )
        out[name] = summary
    return out


def localization_by_reference(
    heatmaps: Sequence[np.ndarray],
    boxes: Mapping[str, Sequence[np.ndarray]],
    patients: Sequence[Any] | None = None,
    threshold: float = DEFAULT_THRESHOLD,
    top_k: int = DEFAULT_TOP_K,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    level: float = DEFAULT_LEVEL,
) -> dict[str, dict[str, Any]]:
    """Score heatmaps against the boxes of each reference (``score_references`` per image, then
    ``summarize_references``).

    Args:
        heatmaps: one ``(H, W)`` map in [0, 1] per image.
        boxes: per reference name, one ``(k, 4)`` array per image (``k = 0``: not boxed by it), heatmap pixels.
        patients: patient of each image (the bootstrap's clusters); ``None`` = each image its own.
        threshold: heatmap level of the highlighted region (IoU / IoBB) and of the boxes cut from it.
        top_k: boxes cut from each heatmap for Wang et al.'s table.
        resamples, seed, level: the hit rate's patient bootstrap.
    """
    patient_of = list(range(len(heatmaps))) if patients is None else list(patients)
    if len(patient_of) != len(heatmaps):
        raise ValueError(f"{len(heatmaps)} heatmaps but {len(patient_of)} patients")
    for name, per_image in boxes.items():
        if len(per_image) != len(heatmaps):
            raise ValueError(f"reference {name}: boxes for {len(per_image)} images, {len(heatmaps)} heatmaps")
    collected: dict[str, list[ReferenceHit]] = {name: [] for name in boxes}
    for i, heatmap in enumerate(heatmaps):
        scored = score_references(
            heatmap, {n: b[i] for n, b in boxes.items()}, patient_of[i], threshold, top_k
        )
        for name, hit in scored.items():
            collected[name].append(hit)
    return summarize_references(collected, resamples, seed, level, top_k)


def format_by_reference(
    results: Mapping[str, Mapping[str, Any]], titles: Mapping[str, str] | None = None
) -> list[str]:
    """One printed line per reference: pointing game with its patient-bootstrap interval, IoU, IoBB.

    Example:
        >>> format_by_reference({"rsna": {"n": 0}})
        ['pointing game vs rsna: no image with its boxes']
    """
    lines = []
    for name, s in results.items():
        title = (titles or {}).get(name, name)
        if not s.get("n"):
            lines.append(f"pointing game vs {title}: no image with its boxes")
            continue
        ci = s.get("hit_rate_ci")
        interval = f" (95% CI {ci[0]:.3f}-{ci[1]:.3f}, {s['patients']} patients)" if ci else ""
        lines.append(
            f"pointing game vs {title}: {s['hit_rate']:.3f}{interval} on {s['n']} boxed image(s); random "
            f"{s['random_hit_rate']:.3f}; mean IoU {s['mean_iou']:.3f}, IoBB {s['mean_iobb']:.3f}; Wang IoBB>=0.1 "
            f"{s['wang']['iobb'][0]:.3f}"
        )
    return lines
