"""The 14-finding (CheXNet-style) mode: one table row per finding present in the test split, numbers that
scikit-learn reproduces, the pneumonia operating point, and a clear error for a mismatched network."""

from __future__ import annotations

import json
from pathlib import Path

import hydra
import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import roc_auc_score

from pneumo.nih.findings import FINDINGS
from pneumo.pipelines.train import metric_value, train
from tests.helpers import tiny_overrides


def test_multilabel_demo_run_reports_every_present_finding(
    compose_train, demo_root: Path, tmp_path: Path
) -> None:
    cfg = compose_train(
        [
            *tiny_overrides(demo_root, tmp_path),
            "experiment=demo_multilabel",
            "model.class_weights=auto",  # the experiment trains unweighted; check the auto pos_weight here
            "debug=fdr",
            "trainer.detect_anomaly=false",
            "eval.bootstrap.resamples=200",
        ]
    )
    metrics, objects = train(cfg)
    run, model = Path(cfg.paths.output_dir), objects["model"]
    report = json.loads((run / "report.json").read_text())
    preds = pd.read_csv(run / "predictions.csv")
    assert report["task"] == "multilabel"

    # Findings present in the test split, straight from the demo's label file.
    test_images = (demo_root / "test_list.txt").read_text().split()
    labels = (
        pd.read_csv(demo_root / "Data_Entry_2017.csv")
        .set_index("Image Index")
        .loc[test_images, "Finding Labels"]
    )
    positives = {f: int(labels.str.split("|").apply(lambda x, f=f: f in x).sum()) for f in FINDINGS}
    present = [f for f in FINDINGS if positives[f] > 0]
    assert len(present) >= 3
    rows = report["findings"]
    assert [r["finding"] for r in rows] == present
    for row in rows:
        f = row["finding"]
        assert row["positives"] == positives[f] and row["images"] == len(test_images)
        y, p = preds[f"y_{f}"], preds[f"p_{f}"]
        if 0 < y.sum() < len(y):
            assert row["auroc"]["value"] == pytest.approx(roc_auc_score(y, p), abs=1e-6)
    defined = [r["auroc"]["value"] for r in rows if r["auroc"]["value"] is not None]
    assert report["mean_auroc"]["value"] == pytest.approx(np.mean(defined))
    absent = [f for f in FINDINGS if f not in present]
    if absent:
        assert any(absent[0] in m for m in report["messages"])
    assert "| Finding | AUROC | 95% CI | Positives | Images |" in (run / "report.md").read_text()

    # The pneumonia column is the binary target and carries the operating point explain.py reads.
    assert np.array_equal(preds["probability"], preds["p_Pneumonia"])
    assert model.threshold.item() == model.thresholds[FINDINGS.index("Pneumonia")].item()
    assert report["threshold"]["value"] == pytest.approx(model.threshold.item())
    assert model.predict_proba(torch.zeros(2, 1, 64, 64)).shape == (2,)
    assert model.predict_findings(torch.zeros(2, 1, 64, 64)).shape == (2, 14)
    # BCE pos_weight = negatives / positives per finding in train (1 where train has none)
    train_findings = objects["datamodule"].index.subset(objects["datamodule"].split.train).findings
    pos = train_findings.sum(axis=0)
    expected = np.where(pos > 0, (len(train_findings) - pos) / np.maximum(pos, 1), 1.0)
    assert np.allclose(model.class_weights.numpy(), expected, rtol=1e-5)
    assert metric_value(metrics, cfg.optimized_metric) == pytest.approx(metrics["val/auroc"].item())


def test_multilabel_task_needs_fourteen_outputs(compose_train, demo_root: Path, tmp_path: Path) -> None:
    cfg = compose_train([*tiny_overrides(demo_root, tmp_path), "model.task=multilabel"])
    with pytest.raises(Exception, match="model=densenet121_multilabel"):
        hydra.utils.instantiate(cfg.model, _recursive_=False)
