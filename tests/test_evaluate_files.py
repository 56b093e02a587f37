"""`python -m pneumo.evaluation`: any model's predictions files, the adjudicated reference, recalibration."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from pneumo.errors import PneumoError
from pneumo.nih.adjudicated import ADJUDICATED_FILE
from pneumo.nih.findings import FINDINGS
from pneumo.nih.index import NIHLabelIndex
from pneumo.nih.shipped import shipped_path
from pneumo.pipelines.evaluate import EvaluateError, EvaluateSettings, evaluate_files
from pneumo.reporting.predictions import PredictionsFileError
from pneumo.reporting.report import EvalSettings
from pneumo.stats.temperature import fit_temperature, nll
from tests.helpers import ROOT, run_cli

SETTINGS = EvalSettings(resamples=200, figures=False)


def _demo(demo_root: Path) -> tuple[pd.DataFrame, list[str], list[str]]:
    index = pd.read_csv(demo_root / "Data_Entry_2017.csv").set_index("Image Index")
    return (
        index,
        (demo_root / "test_list.txt").read_text().split(),
        (demo_root / "train_val_list.txt").read_text().split(),
    )


def _write(path: Path, frame: pd.DataFrame) -> str:
    frame.to_csv(path, index=False)
    return str(path)


def test_chexnet_layout_gives_the_finding_table(demo_root: Path, tmp_path: Path) -> None:
    index, test, _ = _demo(demo_root)
    rng = np.random.default_rng(0)
    labels = {f: index.loc[test, "Finding Labels"].str.contains(f).to_numpy().astype(int) for f in FINDINGS}
    probs = {f"prob_{f}": np.clip(0.3 * labels[f] + 0.7 * rng.random(len(test)), 0, 1) for f in FINDINGS}
    path = _write(
        tmp_path / "preds.csv",
        pd.DataFrame({"Image Index": test[::-1], **{k: v[::-1] for k, v in probs.items()}}),
    )
    labels_url = str(demo_root / "Data_Entry_2017.csv")
    report = evaluate_files(
        EvaluateSettings(path, tmp_path / "out", SETTINGS, labels_url=labels_url, choose_on_evaluated=True)
    )
    assert report["task"] == "multilabel"
    rows = {r["finding"]: r for r in report["findings"]}
    present = [f for f in FINDINGS if labels[f].sum() > 0]
    assert sorted(rows) == sorted(present) and len(present) >= 5
    for f in present:
        if 0 < labels[f].sum() < len(test):
            assert rows[f]["auroc"]["value"] == pytest.approx(
                roc_auc_score(labels[f], probs[f"prob_{f}"]), abs=1e-12
            )
    assert report["metrics"]["auroc"]["value"] == pytest.approx(
        roc_auc_score(labels["Pneumonia"], probs["prob_Pneumonia"]), abs=1e-12
    )
    # asked explicitly to choose the threshold on the evaluated images: the notes say so
    assert any("chosen by youden on the evaluated images themselves" in m for m in report["messages"])
    assert "## Per-finding AUROC" in (tmp_path / "out" / "report.md").read_text()


def test_threshold_is_chosen_on_validation_never_silently_on_the_evaluated_file(
    demo_root: Path, tmp_path: Path
) -> None:
    index, test, val = _demo(demo_root)
    rng = np.random.default_rng(1)
    labels_url = str(demo_root / "Data_Entry_2017.csv")

    def preds(names: list[str]) -> pd.DataFrame:
        y = index.loc[names, "Finding Labels"].str.contains("Pneumonia").to_numpy()
        return pd.DataFrame(
            {"image": names, "probability": np.clip(0.4 * y + 0.6 * rng.random(len(names)), 0, 1)}
        )

    test_path, val_path = _write(tmp_path / "t.csv", preds(test)), _write(tmp_path / "v.csv", preds(val))
    with pytest.raises(EvaluateError, match="pass val_predictions=PATH"):
        evaluate_files(EvaluateSettings(test_path, tmp_path / "a", SETTINGS, labels_url=labels_url))
    report = evaluate_files(
        EvaluateSettings(test_path, tmp_path / "b", SETTINGS, val_predictions=val_path, labels_url=labels_url)
    )
    v = pd.read_csv(val_path)
    y_val = index.loc[v["image"], "Finding Labels"].str.contains("Pneumonia").to_numpy().astype(int)
    from pneumo.stats.threshold import select_threshold

    assert (
        report["threshold"]["value"] == select_threshold(y_val, v["probability"].to_numpy(), "youden").value
    )
    assert report["threshold"]["chosen_on"].startswith("val_predictions")
    # the record training saves in checkpoints (OperatingPoint), with the figures at the chosen threshold
    from pneumo.stats.metrics import threshold_metrics
    from pneumo.stats.threshold import OperatingPoint

    at = threshold_metrics(y_val, v["probability"].to_numpy(), report["threshold"]["value"])
    assert report["threshold"] == OperatingPoint.from_dict(report["threshold"]).to_dict()
    assert report["threshold"]["val"] == {
        "images": len(v), "positives": int(y_val.sum()), "sensitivity": at["sensitivity"],
        "specificity": at["specificity"],
    }  # fmt: skip
    assert not any("evaluated images themselves" in m for m in report["messages"])
    with pytest.raises(EvaluateError, match="in both predictions"):
        evaluate_files(
            EvaluateSettings(
                test_path, tmp_path / "c", SETTINGS, val_predictions=test_path, labels_url=labels_url
            )
        )


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda f: f.drop(columns="probability"), "no pneumonia probability column"),
        (lambda f: f.rename(columns={"image": "file"}), "no image column"),
        (
            lambda f: f.assign(image=f["image"].where(f.index != 3, "99999999_000.png")),
            r"line 5: image 99999999_000.png is not in the label index",
        ),
        (
            lambda f: f.assign(probability=f["probability"].where(f.index != 2, 1.5)),
            r"line 4: probability = '1.5' is not a probability in \[0, 1\]",
        ),
        (
            lambda f: f.assign(probability=f["probability"].astype(str).where(f.index != 0, "abc")),
            r"line 2: probability = 'abc'",
        ),
        (lambda f: pd.concat([f, f.iloc[[1]]]), r"appears 2 times \(lines 3, \d+\)"),
    ],
)
def test_bad_files_give_one_clear_line(demo_root: Path, tmp_path: Path, edit, message: str) -> None:
    _, test, _ = _demo(demo_root)
    good = pd.DataFrame({"image": test, "probability": np.linspace(0, 1, len(test))})
    path = _write(tmp_path / "bad.csv", edit(good))
    with pytest.raises(PredictionsFileError, match=message) as err:
        labels_url = str(demo_root / "Data_Entry_2017.csv")
        evaluate_files(
            EvaluateSettings(
                path, tmp_path / "out", SETTINGS, labels_url=labels_url, choose_on_evaluated=True
            )
        )
    assert isinstance(err.value, PneumoError) and str(path) in str(err.value) and "\n" not in str(err.value)


@pytest.mark.slow
def test_cli_prints_a_bad_file_as_one_line_and_exits_2(demo_root: Path, tmp_path: Path) -> None:
    _, test, _ = _demo(demo_root)
    path = _write(
        tmp_path / "dup.csv", pd.DataFrame({"image": [test[0], test[0]], "probability": [0.1, 0.2]})
    )
    proc = run_cli(["-m", "pneumo.evaluation", f"predictions={path}", f"labels_url={demo_root / 'Data_Entry_2017.csv'}",
                    "eval.threshold=0.5", f"paths.log_dir={tmp_path}/logs"], cwd=ROOT)  # fmt: skip
    lines = [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.strip()]
    assert proc.returncode == 2, lines
    assert len(lines) == 1 and f"{path}: image {test[0]} appears 2 times" in lines[0], lines


def test_adjudicated_reference_section(tmp_path: Path) -> None:
    raw = pd.read_csv(shipped_path(ADJUDICATED_FILE), dtype=str)
    ref = raw[raw["Set Id"] == "test"]
    rng = np.random.default_rng(2)
    opacity = (ref["Airspace opacity"] == "YES").to_numpy().astype(int)
    p = np.clip(0.25 * opacity + 0.75 * rng.random(len(ref)), 0, 1)
    # the adjudicated test images plus 300 of its val images: only the 1,962 'test' ones are the reference
    extra = raw[raw["Set Id"] == "val"].iloc[:300]
    frame = pd.DataFrame(
        {"image": [*ref["Image Index"], *extra["Image Index"]], "probability": [*p, *rng.random(300)]}
    )
    path = _write(tmp_path / "p.csv", frame)
    report = evaluate_files(
        EvaluateSettings(path, tmp_path / "out", EvalSettings(threshold=0.6, resamples=200, figures=False))
    )
    refs = {r["name"]: r for r in report["reference_standards"]["references"]}
    adj = refs["adjudicated"]
    assert adj["images"] == 1962 == len(ref)
    assert adj["counts"]["positives"] == opacity.sum() and adj["counts"]["images"] == 1962
    assert adj["counts"]["patients"] == ref["Patient ID"].nunique()
    assert adj["metrics"]["auroc"]["value"] == pytest.approx(roc_auc_score(opacity, p), abs=1e-12)
    lo, hi = adj["metrics"]["auroc"]["ci"]
    assert lo < adj["metrics"]["auroc"]["value"] < hi
    assert adj["metrics"]["sensitivity"]["value"] == pytest.approx(np.mean(p[opacity == 1] >= 0.6))
    nih = NIHLabelIndex.from_csv(shipped_path("Data_Entry_2017_v2020.csv.gz")).subset(ref["Image Index"])
    assert refs["nih"]["images"] == len(frame)  # NIH's label covers every evaluated image
    pair = next(
        r for r in report["reference_standards"]["crosstab"] if (r["a"], r["b"]) == ("nih", "adjudicated")
    )
    assert pair["images"] == 1962
    assert pair["both_positive"] == int((nih.pneumonia & opacity).sum())
    assert pair["a_only"] == int((nih.pneumonia & (1 - opacity)).sum())
    text = (tmp_path / "out" / "report.md").read_text()
    assert "## Reference standards" in text and "Adjudicated airspace opacity" in text and "NLP" in text
    assert "Majkowska" in text  # the citation of a reference the report used


def test_no_adjudicated_images_no_section(demo_root: Path, tmp_path: Path) -> None:
    _, test, _ = _demo(demo_root)
    path = _write(
        tmp_path / "p.csv", pd.DataFrame({"image": test, "probability": np.linspace(0, 1, len(test))})
    )
    settings = EvalSettings(threshold=0.5, resamples=50, figures=False)
    labels_url = str(demo_root / "Data_Entry_2017.csv")
    report = evaluate_files(EvaluateSettings(path, tmp_path / "out", settings, labels_url=labels_url))
    # synthetic images carry NIH-pattern names (patient id included): the radiologists' files never count them
    refs = {r["name"]: r for r in report["reference_standards"]["references"]}
    assert refs["nih"]["images"] == len(test)
    assert refs["adjudicated"]["images"] == refs["rsna"]["images"] == 0
    text = (tmp_path / "out" / "report.md").read_text()
    assert "Majkowska" not in text and "Shih" not in text  # no attribution of references it did not use


def test_a_new_sites_temperature_and_threshold(demo_root: Path, tmp_path: Path) -> None:
    """Over-confident logits at a 'site': the refitted temperature is > 1 and lowers the validation NLL."""
    index, test, val = _demo(demo_root)
    rng = np.random.default_rng(3)

    def preds(names: list[str]) -> pd.DataFrame:
        y = index.loc[names, "Finding Labels"].str.contains("Pneumonia").to_numpy()
        logit = 6.0 * (np.where(y, 0.6, -0.6) + rng.normal(0, 1.0, len(names)))
        return pd.DataFrame({"image": names, "probability": 1 / (1 + np.exp(-logit)), "logit": logit})

    val_frame = preds(val)
    labels_url = str(demo_root / "Data_Entry_2017.csv")
    report = evaluate_files(EvaluateSettings(_write(tmp_path / "t.csv", preds(test)), tmp_path / "out", SETTINGS,
                                             val_predictions=_write(tmp_path / "v.csv", val_frame),
                                             labels_url=labels_url, recalibrate=True))  # fmt: skip
    t = report["temperature"]
    y_val = index.loc[val, "Finding Labels"].str.contains("Pneumonia").to_numpy()
    fit = fit_temperature(val_frame["logit"].to_numpy(), y_val)
    assert t["value"] == pytest.approx(fit.value) and t["value"] > 2.0
    assert t["val_nll_after"] < t["val_nll_before"] == pytest.approx(nll(val_frame["logit"], y_val))
    out = pd.read_csv(tmp_path / "out" / "predictions.csv")
    np.testing.assert_allclose(out["probability"], 1 / (1 + np.exp(-out["logit"] / t["value"])), rtol=1e-12)
    assert t["before"]["brier"] > t["after"]["brier"]
    saved = json.loads((tmp_path / "out" / "report.json").read_text())
    assert saved["temperature"]["value"] == t["value"]
    assert "Calibration before and after temperature scaling" in (tmp_path / "out" / "report.md").read_text()
