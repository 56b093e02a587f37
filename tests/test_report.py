"""The test report of a real run: files, numbers recomputed with scikit-learn, split counts, TensorBoard,
the threshold carried by the best checkpoint, and `train=false ckpt_path=...` reproducing the report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from omegaconf import open_dict
from sklearn.metrics import average_precision_score, recall_score, roc_auc_score

from pneumo.errors import PneumoError
from pneumo.pipelines.train import train
from tests.helpers import ROOT, run_cli, tiny_overrides

FILES = (
    "report.json",
    "report.md",
    "predictions.csv",
    "roc.png",
    "pr.png",
    "reliability.png",
    "confusion_matrix.png",
)


def _overrides(data_root: Path, out: Path) -> list[str]:
    """Tiny run, but every val/test image is evaluated (no limit on val/test batches)."""
    keep = [o for o in tiny_overrides(data_root, out) if "limit_" not in o and "max_epochs" not in o]
    return [
        *keep,
        "+trainer.limit_train_batches=1",
        "trainer.max_epochs=2",
        "+trainer.num_sanity_val_steps=0",
        "eval.bootstrap.resamples=300",
    ]


def _read_tensorboard(event_dir: Path) -> tuple[dict[str, list[float]], list[str]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(event_dir), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    scalars = {tag: [e.value for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}
    return scalars, acc.Tags()["images"]


@pytest.mark.slow
def test_report_of_a_run_and_of_its_checkpoint(compose_train, demo_root: Path, tmp_path: Path) -> None:
    overrides = _overrides(demo_root, tmp_path)
    cfg = compose_train(overrides)
    _, objects = train(cfg)
    run = Path(cfg.paths.output_dir)
    for name in FILES:
        assert (run / name).stat().st_size > 0, name
    report = json.loads((run / "report.json").read_text())
    preds = pd.read_csv(run / "predictions.csv")
    assert list(preds.columns[:4]) == ["image", "patient", "probability", "label"]

    # 1. The numbers, recomputed from predictions.csv with scikit-learn.
    y, p, t = preds["label"].to_numpy(), preds["probability"].to_numpy(), report["threshold"]["value"]
    m = report["metrics"]
    assert m["auroc"]["value"] == pytest.approx(roc_auc_score(y, p), abs=1e-6)
    assert m["auprc"]["value"] == pytest.approx(average_precision_score(y, p), abs=1e-6)
    assert m["sensitivity"]["value"] == pytest.approx(recall_score(y, p >= t), abs=1e-6)
    assert m["specificity"]["value"] == pytest.approx(recall_score(1 - y, p < t), abs=1e-6)
    assert m["auroc"]["ci"][0] <= m["auroc"]["value"] <= m["auroc"]["ci"][1]

    # 2. Counts equal the split's, read straight from the demo's files; subgroup rows sum to the whole.
    test_images = (demo_root / "test_list.txt").read_text().split()
    labels = pd.read_csv(demo_root / "Data_Entry_2017.csv").set_index("Image Index").loc[test_images]
    counts = report["counts"]
    assert counts["images"] == len(test_images) == len(preds)
    assert counts["patients"] == labels["Patient ID"].nunique()
    assert counts["positives"] == labels["Finding Labels"].str.contains("Pneumonia").sum() == y.sum()
    assert report["split_counts"]["images"] == counts["images"]
    cm = report["confusion_matrix"]
    assert cm["tp"] + cm["fn"] == counts["positives"] and sum(cm.values()) == counts["images"]
    for attribute in ("view", "sex", "age"):
        rows = report["subgroups"][attribute]
        assert sum(r["images"] for r in rows) == counts["images"], attribute
        assert sum(r["positives"] for r in rows) == counts["positives"], attribute

    # 3. TensorBoard holds the figures and the intervals.
    scalars, images = _read_tensorboard(run / "tensorboard")
    assert {"test/roc", "test/pr", "test/reliability", "test/confusion_matrix"} <= set(images)
    assert scalars["test/auroc_ci_low"][-1] == pytest.approx(m["auroc"]["ci"][0], abs=1e-6)

    # 4. The best checkpoint carries the threshold chosen at its own epoch; test used it.
    best = Path(objects["trainer"].checkpoint_callback.best_model_path)
    blob = torch.load(best, map_location="cpu", weights_only=True)
    epoch = blob["epoch"]
    assert len(scalars["val/threshold"]) == 2
    assert blob["state_dict"]["threshold"].item() == pytest.approx(scalars["val/threshold"][epoch], abs=1e-6)
    assert blob["operating_point"]["epoch"] == epoch == report["threshold"]["epoch"]
    assert t == pytest.approx(blob["state_dict"]["threshold"].item(), abs=1e-7)

    # 5. One command evaluates the checkpoint and writes the same report.
    proc = run_cli(["train.py", *overrides, "train=false", f"ckpt_path={best}", "task_name=eval"], cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (again_dir,) = (tmp_path / "eval" / "runs").iterdir()
    again = json.loads((again_dir / "report.json").read_text())
    for key in (
        "counts",
        "threshold",
        "metrics",
        "confusion_matrix",
        "calibration",
        "subgroups",
        "temperature",
    ):
        assert again[key] == report[key], key
    assert again["checkpoint"] == str(best)
    assert np.array_equal(pd.read_csv(again_dir / "predictions.csv")["probability"], p)

    # 6. The run's own predictions.csv through the evaluate command at the same threshold: the same numbers.
    out = tmp_path / "evaluated"
    proc = run_cli(
        ["-m", "pneumo.evaluation", f"predictions={run / 'predictions.csv'}", f"out_dir={out}",
         f"labels_url={demo_root / 'Data_Entry_2017.csv'}", f"eval.threshold={t!r}",
         "eval.bootstrap.resamples=300", f"paths.log_dir={tmp_path}/logs"],
        cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    evaluated = json.loads((out / "report.json").read_text())
    assert evaluated["threshold"]["value"] == t and evaluated["threshold"]["chosen_on"] == "fixed"
    for key in ("counts", "metrics", "confusion_matrix", "calibration", "subgroups"):
        assert_same_numbers(evaluated[key], report[key], key)
    for phase in ("before", "after"):  # calibration before and after the run's temperature, from its logits
        assert_same_numbers(evaluated["temperature"][phase], report["temperature"][phase], phase)


def assert_same_numbers(got: object, want: object, where: str) -> None:
    """Every number of ``want`` equals ``got``'s to 1e-9 (same structure, same text, same nulls)."""
    if isinstance(want, dict):
        assert isinstance(got, dict) and sorted(got) == sorted(want), where
        for k in want:
            assert_same_numbers(got[k], want[k], f"{where}.{k}")
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), where
        for i, (g, w) in enumerate(zip(got, want)):
            assert_same_numbers(g, w, f"{where}[{i}]")
    elif isinstance(want, float) and not isinstance(want, bool):
        assert got == pytest.approx(want, abs=1e-9, rel=0), where
    else:
        assert got == want, where


def test_evaluation_only_needs_a_checkpoint(compose_train, demo_root: Path, tmp_path: Path) -> None:
    # Nothing to fit or test: no checkpoint needed, no report (sweep smoke tests rely on this).
    _, objects = train(compose_train([*tiny_overrides(demo_root, tmp_path), "train=false", "test=false"]))
    assert objects["report"] is None and not (tmp_path / "run" / "report.json").exists()
    cfg = compose_train([*tiny_overrides(demo_root, tmp_path), "train=false"])
    with pytest.raises(PneumoError, match="pass ckpt_path=PATH"):
        train(cfg)
    with open_dict(cfg):
        cfg.ckpt_path = str(tmp_path / "nope.ckpt")
    with pytest.raises(PneumoError, match=r"nope\.ckpt: no such file"):
        train(cfg)
