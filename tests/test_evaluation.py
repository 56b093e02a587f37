"""Evaluation maths against scikit-learn, the patient bootstrap, threshold rules, subgroups and degenerate reports."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import average_precision_score, recall_score, roc_auc_score, roc_curve

from pneumo.errors import ConfigError
from pneumo.reporting.figures import FIGURE_NAMES, report_figures, save_figures
from pneumo.reporting.report import EvalSettings, build_report, report_markdown, write_report
from pneumo.stats.bootstrap import ClusterBootstrap
from pneumo.stats.metrics import auroc, average_precision, calibration, threshold_metrics
from pneumo.stats.threshold import ThresholdRule, select_threshold


def _scores(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    y = (rng.random(n) < 0.3).astype(int)
    y[:2] = [0, 1]
    # Rounded scores: many ties, the case where implementations differ.
    p = np.round(np.clip(0.35 * y + rng.random(n) * 0.65, 0, 1), 2)
    return y, p


def test_metrics_match_scikit_learn_with_ties_and_weights() -> None:
    rng = np.random.default_rng(3)
    for n in (7, 60, 400):
        y, p = _scores(rng, n)
        w = rng.integers(0, 4, n).astype(float)
        w[:2] = 1
        assert auroc(y, p) == pytest.approx(roc_auc_score(y, p), abs=1e-12)
        assert average_precision(y, p) == pytest.approx(average_precision_score(y, p), abs=1e-12)
        # Integer weights = a bootstrap resample: the same numbers as repeating the images.
        assert auroc(y, p, w) == pytest.approx(roc_auc_score(y, p, sample_weight=w), abs=1e-12)
        assert average_precision(y, p, w) == pytest.approx(
            average_precision_score(y, p, sample_weight=w), abs=1e-12
        )
        t = float(np.median(p))
        at = threshold_metrics(y, p, t)
        assert at["sensitivity"] == pytest.approx(recall_score(y, p >= t), abs=1e-12)
        assert at["specificity"] == pytest.approx(recall_score(1 - y, p < t), abs=1e-12)


def test_calibration_on_known_bins() -> None:
    y = np.array([0, 0, 1, 1])
    p = np.array([0.05, 0.15, 0.95, 0.55])
    cal = calibration(y, p, bins=2)
    # bin [0, .5): mean p .10, 0 positives; bin [.5, 1]: mean p .75, all positive
    assert cal.counts.tolist() == [2, 2]
    assert cal.ece == pytest.approx(0.5 * 0.10 + 0.5 * 0.25)
    assert cal.brier == pytest.approx(np.mean((p - y) ** 2))


def _clustered(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """40 one-image patients plus one patient with 40 images that the model scores badly."""
    y_single, p_single = _scores(rng, 40)
    y_big = np.r_[np.ones(20), np.zeros(20)].astype(int)
    p_big = np.r_[np.full(20, 0.2), np.full(20, 0.8)] + rng.normal(0, 0.01, 40)
    units = np.r_[np.arange(40), np.full(40, 999)]
    return np.r_[y_single, y_big], np.r_[p_single, p_big], units


def test_patient_bootstrap_is_wider_than_image_bootstrap_and_seeded() -> None:
    y, p, units = _clustered(np.random.default_rng(0))

    def stat(w: np.ndarray) -> dict[str, np.ndarray]:
        return {"auroc": auroc(y, p, w)}

    patient = ClusterBootstrap(units, resamples=500, seed=7).intervals(stat)["auroc"]
    image = ClusterBootstrap(None, n=len(y), resamples=500, seed=7).intervals(stat)["auroc"]
    assert patient.defined and image.defined
    assert patient.low <= auroc(y, p) <= patient.high
    # The 40-image patient is one draw, not 40 independent ones: its presence or absence moves AUROC a lot.
    assert (patient.high - patient.low) > 1.5 * (image.high - image.low)
    again = ClusterBootstrap(units, resamples=500, seed=7).intervals(stat)["auroc"]
    other = ClusterBootstrap(units, resamples=500, seed=8).intervals(stat)["auroc"]
    assert (again.low, again.high) == (patient.low, patient.high)
    assert (other.low, other.high) != (patient.low, patient.high)


def test_threshold_rules_pick_the_documented_points() -> None:
    rng = np.random.default_rng(1)
    y, p = _scores(rng, 300)
    fpr, tpr, _ = roc_curve(y, p)
    youden = select_threshold(y, p, "youden").value
    at = threshold_metrics(y, p, youden)
    assert at["sensitivity"] + at["specificity"] - 1 == pytest.approx(np.max(tpr - fpr))

    sens = select_threshold(y, p, "sensitivity@0.9").value
    assert threshold_metrics(y, p, sens)["sensitivity"] >= 0.9
    higher = np.unique(p[p >= sens])  # the next distinct score up must fall short of the target
    assert threshold_metrics(y, p, float(higher[1]))["sensitivity"] < 0.9

    spec = select_threshold(y, p, "specificity@0.95").value
    assert threshold_metrics(y, p, spec)["specificity"] >= 0.95
    lower = np.unique(p[p < spec])
    assert threshold_metrics(y, p, float(lower[-1]))["specificity"] < 0.95

    assert select_threshold(y, p, 0.3).value == 0.3
    none = select_threshold(np.zeros(5, int), p[:5], "youden")
    assert none.value is None and "no positive images" in none.note


@pytest.mark.parametrize("bad", ["youdn", "sensitivity@1.5", "1.2", "sensitivity@", True])
def test_bad_threshold_rules_name_the_key(bad: object) -> None:
    with pytest.raises(ValueError, match=r"eval\.threshold"):
        ThresholdRule.parse(bad)


def test_a_misspelt_threshold_rule_gets_the_shared_choice_error() -> None:
    with pytest.raises(ConfigError) as err:
        ThresholdRule.parse("youdn")
    assert str(err.value) == (
        "eval.threshold='youdn': choose one of 'youden', 'sensitivity@0.90', 'specificity@0.90' or a number "
        "in [0, 1] (did you mean 'youden'?)"
    )


def _frame(n: int, seed: int = 0, positives: bool = True) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    y, p = _scores(rng, n)
    if not positives:
        y[:] = 0
    frame = pd.DataFrame(
        {
            "image": [f"{i:08d}_000.png" for i in range(n)],
            "patient": rng.integers(0, n // 2, n),
            "probability": p,
            "label": y,
            "view": rng.choice(["AP", "PA"], n),
            "sex": rng.choice(["M", "F"], n),
            "age": rng.integers(20, 90, n).astype(float),
        }
    )
    frame.loc[:2, "age"] = np.nan
    return frame


def test_subgroup_rows_partition_the_split() -> None:
    frame = _frame(120)
    report = build_report(
        frame, 0.5, EvalSettings(resamples=200), split_counts={"images": 120, "patients": 0}
    )
    for attribute in ("view", "sex", "age"):
        rows = report["subgroups"][attribute]
        assert sum(r["images"] for r in rows) == 120
        assert sum(r["positives"] for r in rows) == report["counts"]["positives"] == frame["label"].sum()
    ages = [r["value"] for r in report["subgroups"]["age"]]
    assert ages[-1] == "unknown" and report["subgroups"]["age"][-1]["images"] == 3
    mask = frame["view"] == "AP"
    ap = next(r for r in report["subgroups"]["view"] if r["value"] == "AP")
    assert ap["auroc"]["value"] == pytest.approx(
        roc_auc_score(frame["label"][mask], frame["probability"][mask])
    )


def _assert_clean(report: dict, frame: pd.DataFrame, out: Path) -> str:
    """Strict JSON (no NaN), Markdown and the four figures all come out; returns the Markdown."""
    json_path, md_path = write_report(report, out)
    json.loads(json_path.read_text(), parse_constant=lambda c: pytest.fail(f"{c} in report.json"))
    save_figures(report_figures(frame, report["threshold"]["value"]), out)
    assert all((out / f"{name}.png").stat().st_size > 0 for name in FIGURE_NAMES)
    text = md_path.read_text()
    assert not re.search(r"\bnan\b", text, flags=re.IGNORECASE)
    return text


def test_degenerate_cases_give_messages_not_nan(tmp_path: Path) -> None:
    settings = EvalSettings(resamples=100)

    no_pos = _frame(40, positives=False)
    report = build_report(no_pos, 0.5, settings)
    assert report["metrics"]["auroc"]["value"] is None
    assert "no positive images" in report["metrics"]["auroc"]["note"]
    assert report["metrics"]["sensitivity"]["value"] is None
    assert report["metrics"]["specificity"]["value"] is not None
    assert any("has no positive images" in m for m in report["messages"])
    text = _assert_clean(report, no_pos, tmp_path / "no_pos")
    assert "has no positive images" in text

    frame = _frame(60, seed=2)
    frame.loc[frame["view"] == "PA", "label"] = 0  # a subgroup of one class
    everything_negative = float(frame["probability"].max()) + 0.01
    report = build_report(frame, everything_negative, settings)
    pa = next(r for r in report["subgroups"]["view"] if r["value"] == "PA")
    assert pa["auroc"]["value"] is None and "only negative images" in pa["auroc"]["note"]
    assert any("view=PA" in m for m in report["messages"])
    assert report["confusion_matrix"]["tp"] == report["confusion_matrix"]["fp"] == 0
    assert report["metrics"]["sensitivity"]["value"] == 0.0
    assert report["metrics"]["ppv"]["value"] is None
    assert "labels every image negative" in report["metrics"]["ppv"]["note"]
    assert any("labels every test image negative" in m for m in report["messages"])
    text = _assert_clean(report, frame, tmp_path / "all_negative")
    assert "labels every test image negative" in text and "only negative images" in text


def test_empty_split_reports_instead_of_failing(tmp_path: Path) -> None:
    empty = _frame(10).iloc[:0]
    report = build_report(empty, 0.5, EvalSettings(resamples=50))
    assert report["counts"]["images"] == 0 and report["metrics"]["auroc"]["value"] is None
    assert any("no predictions" in m for m in report["messages"])
    write_report(report, tmp_path)
    assert "no predictions" in report_markdown(report)


def test_eval_settings_reject_unknown_keys() -> None:
    with pytest.raises(ValueError, match="unknown eval config key"):
        EvalSettings.from_config({"treshold": "youden"})
    with pytest.raises(ValueError, match=r"eval\.bootstrap\.resamples"):
        EvalSettings.from_config({"bootstrap": {"resamples": 0}})


def test_no_interval_when_a_class_comes_from_one_patient() -> None:
    frame = _frame(60, seed=4)
    frame["label"] = 0
    frame.loc[frame["patient"] == frame["patient"].iloc[0], "label"] = 1  # all positives: one patient
    report = build_report(frame, 0.5, EvalSettings(resamples=100))
    auroc_entry = report["metrics"]["auroc"]
    assert auroc_entry["value"] is not None and auroc_entry["ci"] is None
    assert auroc_entry["note"] == "no interval: every positive image comes from one patient"


def test_without_patient_ids_every_message_names_images() -> None:
    frame = _frame(60, seed=4)
    frame["patient"] = frame["image"]  # what predictions_frame gives without a label index
    frame["label"] = 0
    frame.loc[0, "label"] = 1  # a single positive image
    report = build_report(frame, 0.5, EvalSettings(resamples=100))
    assert report["bootstrap"]["unit"] == "image" and "images drawn" in report["bootstrap"]["method"]
    assert report["metrics"]["auroc"]["note"] == "no interval: every positive image comes from one image"
    assert any("the bootstrap resamples images" in m for m in report["messages"])
    assert "patient" not in json.dumps(report["metrics"])
