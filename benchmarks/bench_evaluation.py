"""Cost of the test report at NIH scale: the vectorised patient bootstrap against a naive resampling loop.

Synthetic predictions shaped like NIH's official test split (25,596 images, 2,797 patients, pneumonia
prevalence 2.17%, 14 findings). Prints, side by side in one process:

- seconds per bootstrap resample of AUROC + AUPRC: naive loop (draw patients, gather their images, call
  scikit-learn) vs ``ClusterBootstrap`` (weights on one pre-sorted table), and their ratio;
- wall time of the whole binary report and of the 14-finding report with 1000 resamples.

    python benchmarks/bench_evaluation.py [--resamples 1000] [--naive 50]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, roc_auc_score

from pneumo.nih.findings import FINDINGS
from pneumo.reporting.predictions import predictions_frame
from pneumo.reporting.report import EvalSettings, build_report
from pneumo.stats.bootstrap import ClusterBootstrap
from pneumo.stats.metrics import RankedScores, ranking_metrics

N_IMAGES, N_PATIENTS, PREVALENCE = 25_596, 2_797, 0.0217


def nih_like(seed: int = 0) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    patient = np.sort(rng.integers(0, N_PATIENTS, N_IMAGES))
    targets = (rng.random((N_IMAGES, len(FINDINGS))) < 0.05).astype(int)
    targets[:, FINDINGS.index("Pneumonia")] = rng.random(N_IMAGES) < PREVALENCE
    probs = np.clip(0.25 * targets + rng.random(targets.shape) * 0.75, 0, 1).astype(np.float32).astype(float)
    meta = pd.DataFrame(
        {
            "image": [f"{i:08d}_000.png" for i in range(N_IMAGES)],
            "patient": patient,
            "view": rng.choice(["AP", "PA"], N_IMAGES),
            "sex": rng.choice(["M", "F"], N_IMAGES),
            "age": rng.integers(1, 95, N_IMAGES).astype(float),
        }
    )
    return meta, probs, targets


def naive_seconds_per_resample(y: np.ndarray, p: np.ndarray, patient: np.ndarray, resamples: int) -> float:
    rng = np.random.default_rng(0)
    units = np.unique(patient)
    rows_of = {u: np.flatnonzero(patient == u) for u in units}
    start = time.perf_counter()
    for _ in range(resamples):
        drawn = rng.choice(units, size=len(units), replace=True)
        rows = np.concatenate([rows_of[u] for u in drawn])
        roc_auc_score(y[rows], p[rows])
        average_precision_score(y[rows], p[rows])
    return (time.perf_counter() - start) / resamples


def vectorised_seconds_per_resample(
    y: np.ndarray, p: np.ndarray, patient: np.ndarray, resamples: int
) -> float:
    start = time.perf_counter()
    ranked = RankedScores.of(y, p)
    ClusterBootstrap(patient, resamples=resamples, seed=0).intervals(lambda w: ranking_metrics(ranked, w))
    return (time.perf_counter() - start) / resamples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--naive", type=int, default=50, help="resamples timed for the naive loop")
    args = parser.parse_args()
    meta, probs, targets = nih_like()
    j = FINDINGS.index("Pneumonia")
    y, p, patient = targets[:, j], probs[:, j], meta["patient"].to_numpy()
    print(f"NIH-like test split: {N_IMAGES} images, {N_PATIENTS} patients, {int(y.sum())} pneumonia")
    naive = naive_seconds_per_resample(y, p, patient, args.naive)
    fast = vectorised_seconds_per_resample(y, p, patient, args.resamples)
    print(
        f"AUROC+AUPRC per patient resample: naive sklearn loop {1e3 * naive:.2f} ms, "
        f"ClusterBootstrap {1e3 * fast:.2f} ms  ->  {naive / fast:.1f}x"
    )
    settings = EvalSettings(resamples=args.resamples)
    for name, frame in (
        ("binary", predictions_frame(meta["image"], p, y, meta)),
        ("14 findings", predictions_frame(meta["image"], probs, targets, meta)),
    ):
        start = time.perf_counter()
        build_report(frame, 0.5, settings)
        print(
            f"whole report ({name}, {args.resamples} resamples, 8 subgroups): {time.perf_counter() - start:.1f} s"
        )


if __name__ == "__main__":
    main()
