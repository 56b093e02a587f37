"""Reference standards: NIH's label, the adjudicated labels and RSNA's, scored side by side in every report;
a fourth reference as one config entry; training on RSNA's labels; the demo's documented disagreements."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from omegaconf import open_dict
from sklearn.metrics import roc_auc_score

from pneumo.nih.index import NIHLabelIndex
from pneumo.nih.references import ReferenceError, load_reference, reference_spec, relabelled
from pneumo.nih.rsna import RSNALabels
from pneumo.nih.shipped import location
from pneumo.nih.splits import read_image_list
from pneumo.pipelines.evaluate import EvaluateSettings, evaluate_files
from pneumo.reporting.report import EvalSettings
from tests.helpers import ROOT, run_cli, tiny_overrides


def _by_name(report: dict) -> dict[str, dict]:
    return {r["name"]: r for r in report["reference_standards"]["references"]}


@pytest.mark.slow
def test_evaluation_cli_scores_nih_images_against_every_reference(tmp_path: Path) -> None:
    """`python -m pneumo.evaluation` on NIH names with scores: the RSNA row is scikit-learn's AUROC on the
    covered images, and the cross-tab is pandas' count of the three labels on the shared images."""
    index = NIHLabelIndex.from_csv(location("Data_Entry_2017_v2020.csv.gz")).table.set_index("image")
    rsna = RSNALabels.from_csv().images.set_index("image")["opacity"]
    google = pd.read_csv(location("google2019_nih-chest-xray-labels.csv.gz"), dtype=str)
    google = (
        google[google["Set Id"] == "test"].set_index("Image Index")["Airspace opacity"].eq("YES").astype(int)
    )
    test = np.array(sorted(read_image_list(location("test_list.txt"))))
    rng = np.random.default_rng(0)
    images = rng.choice(test, size=3000, replace=False)
    signal = pd.Series(images).map(rsna).fillna(0).to_numpy()
    p = np.clip(0.3 * signal + 0.7 * rng.random(len(images)), 0, 1)
    pd.DataFrame({"image": images, "probability": p}).to_csv(tmp_path / "p.csv", index=False)
    out = tmp_path / "out"
    proc = run_cli(["-m", "pneumo.evaluation", f"predictions={tmp_path / 'p.csv'}", f"out_dir={out}",
                    "eval.threshold=0.5", "eval.bootstrap.resamples=200", "eval.figures=false",
                    f"paths.log_dir={tmp_path}/logs"], cwd=ROOT)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    report = json.loads((out / "report.json").read_text())
    refs = _by_name(report)
    covered = np.isin(images, rsna.index)
    y = rsna.reindex(images[covered]).to_numpy()
    assert refs["rsna"]["images"] == covered.sum() > 500
    assert refs["rsna"]["counts"]["positives"] == y.sum()
    assert refs["rsna"]["counts"]["patients"] == index.loc[images[covered], "patient"].nunique()
    assert refs["rsna"]["metrics"]["auroc"]["value"] == pytest.approx(roc_auc_score(y, p[covered]), abs=1e-6)
    lo, hi = refs["rsna"]["metrics"]["auroc"]["ci"]
    assert lo < refs["rsna"]["metrics"]["auroc"]["value"] < hi
    labels = pd.DataFrame(
        {
            "nih": index.loc[images, "pneumonia"].to_numpy(),
            "adjudicated": pd.Series(images).map(google).to_numpy(),
            "rsna": pd.Series(images).map(rsna).to_numpy(),
        }
    )
    for row in report["reference_standards"]["crosstab"]:
        shared = labels[[row["a"], row["b"]]].dropna().astype(int)
        table = pd.crosstab(shared[row["a"]], shared[row["b"]]).reindex(
            index=[0, 1], columns=[0, 1], fill_value=0
        )
        assert (row["images"], row["both_positive"], row["a_only"], row["b_only"], row["both_negative"]) == (
            len(shared), table.loc[1, 1], table.loc[1, 0], table.loc[0, 1], table.loc[0, 0],
        ), row  # fmt: skip
    text = (out / "report.md").read_text()
    assert "## Reference standards" in text and "not drawn at random" in text  # the enrichment note
    assert "Shih G" in text and "TorchXRayVision" in text  # RSNA's attribution
    assert "reference RSNA lung opacity (radiologists): AUROC on" in proc.stdout + proc.stderr


def _worked_example() -> tuple[str, list[str]]:
    """docs/evaluation.md's worked example: the header of its labels file and its commands."""
    text = (ROOT / "docs" / "evaluation.md").read_text()
    section = text.split("### Worked example: a fourth reference", 1)[1]
    header = section.split("```csv\n", 1)[1].splitlines()[0]
    commands = section.split("```bash\n", 1)[1].split("```", 1)[0].splitlines()
    return header, [c.split("  #")[0].strip() for c in commands]


def test_a_fourth_reference_is_one_config_entry(
    demo_root: Path, tiny_ckpt: Path, tmp_path: Path, compose_train
) -> None:
    """The docs' worked example, as written: a site's labels file with boxes, one entry in explain.py's
    references and in the evaluation command's eval.references; no code."""
    from pneumo.pipelines.explain import ExplainSettings, explain_images, format_summary

    header, commands = _worked_example()
    assert header == "image,label,x,y,w,h"
    # the site's readers: the tiny demo's boxed test images (their boxes) and every second other test image
    test = read_image_list(str(demo_root / "test_list.txt"))
    drawn = pd.read_csv(demo_root / "BBox_List_2017.csv").iloc[:, :6]
    drawn.columns = ["image", "finding", "x", "y", "w", "h"]
    read = sorted(set(test[::2]) | (set(drawn["image"]) & set(test)))
    rows = []
    for i, name in enumerate(read):
        boxes = drawn[drawn["image"] == name][["x", "y", "w", "h"]].to_numpy()
        label = int(len(boxes) > 0 or i % 3 == 0)  # a few positives without a box too
        rows += [[name, 1, *b] for b in boxes] if len(boxes) else [[name, label, "", "", "", ""]]
    site_csv = tmp_path / "site_labels.csv"
    pd.DataFrame(rows, columns=header.split(",")).to_csv(site_csv, index=False)
    site = pd.DataFrame(rows, columns=header.split(",")).groupby("image")["label"].max()

    def documented(program: str, paths: dict[str, str]) -> list[str]:
        line = next(c for c in commands if c.split()[:2] == program.split()[:2] or c.startswith(program))
        args = shlex.split(line)[len(program.split()) :]
        args = [a.replace("url:site_labels.csv", f"url:{site_csv}") for a in args]
        return [
            f"{a.split('=')[0]}={paths[a.split('=')[0]]}" if a.split("=")[0] in paths else a for a in args
        ]

    explain_args = documented(
        "python explain.py", {"ckpt_path": str(tiny_ckpt), "out_dir": str(tmp_path / "x")}
    )
    cfg = compose_train(
        [*explain_args, "num_workers=0", "progress=false", "device=cpu"], config_name="explain"
    )
    result = explain_images(ExplainSettings.from_config(cfg))
    by_ref = result.summary["references"]
    assert list(by_ref) == ["nih", "rsna", "site"]
    assert by_ref["site"]["n"] == len(set(drawn["image"]) & set(test)) > 0
    assert any(line.startswith("pointing game vs site:") for line in format_summary(result.summary))
    assert result.summary["attribution"] == {"site": "Site radiology 2026"}  # the demo's rsna: no citation

    evaluate_args = documented("pneumo-evaluate", {
        "predictions": str(tmp_path / "x" / "predictions.csv"),
        "labels_url": str(demo_root / "Data_Entry_2017.csv"),
        "out_dir": str(tmp_path / "report"),
    })  # fmt: skip
    cfg = compose_train([*evaluate_args, "eval.threshold=0.5", "eval.bootstrap.resamples=50",
                         "eval.figures=false"], config_name="evaluate")  # fmt: skip
    report = evaluate_files(EvaluateSettings.from_config(cfg))
    refs = _by_name(report)
    assert list(refs) == ["nih", "site"] and refs["site"]["images"] == len(site)
    scores = pd.read_csv(tmp_path / "x" / "predictions.csv").set_index("image")
    p, y = scores["probability"].reindex(site.index), site.to_numpy()
    assert refs["site"]["metrics"]["auroc"]["value"] == pytest.approx(roc_auc_score(y, p), abs=1e-6)
    nih = scores["true_label"].reindex(site.index).to_numpy()
    (row,) = report["reference_standards"]["crosstab"]
    assert (row["a"], row["b"], row["images"]) == ("nih", "site", len(site))
    assert (row["both_positive"], row["a_only"], row["b_only"], row["both_negative"]) == (
        int(((nih == 1) & (y == 1)).sum()), int(((nih == 1) & (y == 0)).sum()),
        int(((nih == 0) & (y == 1)).sum()), int(((nih == 0) & (y == 0)).sum()),
    )  # fmt: skip
    text = (tmp_path / "report" / "report.md").read_text()
    assert "| Site readers |" in text and "- Site radiology 2026" in text  # its row and its citation
    with pytest.raises(
        ReferenceError, match="unknown reference 'radiologist'; built-in: nih, adjudicated, rsna"
    ):
        EvalSettings.from_config({"references": ["radiologist"]})


def test_rsna_labels_on_a_data_set_rsna_does_not_cover_is_one_line(demo_root: Path) -> None:
    index = NIHLabelIndex.from_csv(str(demo_root / "Data_Entry_2017.csv"))
    with pytest.raises(ReferenceError) as err:
        relabelled(index, load_reference("rsna"))  # the shipped file: NIH's images, not the demo's
    assert "data.labels=rsna: the rsna reference" in str(err.value) and "covers none of the" in str(err.value)
    assert "\n" not in str(err.value)
    # the demo's own RSNA-style file covers its images: relabelled, restricted to them
    spec = reference_spec("rsna", {"rsna": {"url": str(demo_root / "rsna_pneumonia.csv"),
                                            "index_url": str(demo_root / "Data_Entry_2017.csv")}})  # fmt: skip
    ours = relabelled(index, load_reference(spec))
    written = pd.read_csv(demo_root / "rsna_pneumonia.csv").groupby("Image Index")["Target"].max()
    assert len(ours) == len(written) < len(index)
    assert ours.table.set_index("image")["pneumonia"].sort_index().tolist() == written.sort_index().tolist()


@pytest.mark.slow
def test_demo_run_on_rsna_labels_reports_the_written_disagreements(
    demo_root: Path, tmp_path: Path, compose_train
) -> None:
    """`python train.py data=demo data.labels=rsna`: trains and tests on the RSNA-style images, and the report
    shows the three references with the cross-tab the demo writer recorded for the test split."""
    from pneumo.pipelines.train import train

    cfg = compose_train([*tiny_overrides(demo_root, tmp_path), "data.labels=rsna", "logger=none",
                         "eval.bootstrap.resamples=50", "eval.figures=false"])  # fmt: skip
    with open_dict(cfg):
        cfg.callbacks.gradcam_overlay = cfg.callbacks.lr_monitor = cfg.callbacks.early_stopping = None
    _, objects = train(cfg)
    manifest = json.loads((demo_root / "demo_manifest.json").read_text())["references"]["counts"]
    report = objects["report"]
    refs = _by_name(report)
    written = manifest["test"]
    assert (
        report["counts"]["images"] == written["images"] == refs["rsna"]["images"]
    )  # RSNA-covered test images
    assert refs["rsna"]["counts"]["positives"] == written["positives"] == report["counts"]["positives"]
    assert refs["adjudicated"]["images"] == manifest["adjudicated"]["images"]
    pairs = {(r["a"], r["b"]): r for r in report["reference_standards"]["crosstab"]}
    for pair, counts in ((("nih", "rsna"), written), (("nih", "adjudicated"), manifest["adjudicated"])):
        row = pairs[pair]
        assert (row["both_positive"], row["a_only"], row["b_only"], row["both_negative"]) == (
            counts["both_positive"], counts["nih_only"], counts["rsna_only"], counts["both_negative"],
        )  # fmt: skip
    card = (Path(cfg.paths.output_dir) / "model_card.md").read_text()
    assert "| training target | rsna: RSNA-style opacity (synthetic) |" in card
    assert objects["datamodule"].labels == "rsna"
    text = (Path(cfg.paths.output_dir) / "report.md").read_text()
    for title in (
        "NIH label (NLP)",
        "Adjudicated-style opacity (synthetic)",
        "RSNA-style opacity (synthetic)",
    ):
        assert f"| {title} |" in text


def test_explain_scores_and_draws_every_box_reference(
    tiny_ckpt: Path, demo_root: Path, tmp_path: Path
) -> None:
    """explain on the demo's test images: a pointing game against NIH-style and RSNA-style boxes, each with
    its patient-bootstrap interval, and overlays outlining each reference's boxes in its own colour."""
    from PIL import Image

    from pneumo.pipelines.explain import ExplainSettings, explain_images, format_summary
    from pneumo.xai.overlay import BOX_COLOR, reference_color

    settings = ExplainSettings(ckpt_path=str(tiny_ckpt), out_dir=str(tmp_path / "out"), split="test",
                               num_workers=0, progress=False, device="cpu")  # fmt: skip
    result = explain_images(settings)
    by_ref = result.summary["references"]
    written = pd.read_csv(demo_root / "rsna_pneumonia.csv")
    test = set(read_image_list(str(demo_root / "test_list.txt")))
    rsna_boxed = set(written.loc[(written["Target"] == 1) & written["Image Index"].isin(test), "Image Index"])
    assert by_ref["rsna"]["n"] == len(rsna_boxed) > 0 and by_ref["nih"]["n"] > 0
    for name in ("nih", "rsna"):
        lo, hi = by_ref[name]["hit_rate_ci"]
        assert lo <= by_ref[name]["hit_rate"] <= hi and by_ref[name]["unit"] == "patient"
        assert len(by_ref[name]["wang"]["iobb"]) == 5
    lines = format_summary(result.summary)
    assert any(line.startswith("pointing game vs nih:") for line in lines)
    assert any(line.startswith("pointing game vs rsna:") for line in lines)
    # an image boxed by both: its overlay has both outline colours
    nih_boxed = set(pd.read_csv(demo_root / "BBox_List_2017.csv").iloc[:, 0]) & test
    both = sorted(nih_boxed & rsna_boxed)[0]
    picture = np.asarray(
        Image.open(tmp_path / "out" / "overlays" / both.replace(".png", ".png")).convert("RGB")
    )
    colours = {tuple(c) for c in picture.reshape(-1, 3)}
    assert BOX_COLOR in colours and reference_color("rsna") in colours
