"""Temperature scaling of a tiny demo run and the run's model card: one tiny run, read back from its files."""

from __future__ import annotations

import hashlib
import json
import subprocess
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from pneumo.models.classifier import PneumoniaClassifier
from tests.conftest import CONF, ROOT, tiny_overrides


@pytest.fixture(scope="module")
def tiny_run(demo_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One epoch of two batches on the tiny demo, tested; temperature fitted on validation (the default).

    The multi-label model: its temperature is fitted on all 14 findings' logits, which two batches of training
    never separate perfectly (the binary model's pneumonia logits already do on the tiny demo, and a perfectly
    separated validation split has no finite temperature: T is then 1, with a note)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import open_dict

    from pneumo.pipelines.train import train

    out = tmp_path_factory.mktemp("card_run")
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[
                *tiny_overrides(demo_root, out),
                "logger=none",
                "eval.bootstrap.resamples=200",
                "model=densenet121_multilabel",
                "model.class_weights=null",
                # after two steps at the default 3e-4 the logits are tiny and no T in range fits: no fit to show
                "model.optimizer.lr=1e-4",
            ],
        )
    GlobalHydra.instance().clear()
    with open_dict(cfg):
        cfg.paths.output_dir = str(out / "run")
        for name in ("gradcam_overlay", "lr_monitor", "early_stopping"):
            cfg.callbacks[name] = None
    _, objects = train(cfg)
    return {"dir": out / "run", **objects}


def test_temperature_is_fitted_on_validation_and_lowers_its_nll(tiny_run: dict) -> None:
    model, run = tiny_run["model"], tiny_run["dir"]
    val = model.predictions["val"]  # one epoch: the tested (best) checkpoint is this epoch's
    t = float(model.temperature)
    assert t != 1.0 and model.calibration["value"] == pytest.approx(t)
    margins = torch.from_numpy(val.logits).double()  # every finding's logit counts once
    y = torch.from_numpy(val.targets).double()
    assert margins.shape == (len(val.image_ids), 14)
    before = F.binary_cross_entropy_with_logits(margins, y).item()
    after = F.binary_cross_entropy_with_logits(margins / t, y).item()
    assert after < before
    assert model.calibration["val_nll_before"] == pytest.approx(before, abs=1e-6)
    assert model.calibration["val_nll_after"] == pytest.approx(after, abs=1e-6)
    blob = torch.load(
        tiny_run["trainer"].checkpoint_callback.best_model_path, map_location="cpu", weights_only=True
    )
    assert blob["state_dict"]["temperature"].item() == pytest.approx(t)
    # the test report: probabilities at that temperature, calibration before and after
    report = json.loads((run / "report.json").read_text())
    preds = pd.read_csv(run / "predictions.csv")
    np.testing.assert_allclose(preds["probability"], 1 / (1 + np.exp(-preds["logit"] / t)), atol=1e-6)
    for phase in ("before", "after"):
        assert set(report["temperature"][phase]) == {"ece", "brier", "nll"}
    assert report["temperature"]["after"]["brier"] == report["calibration"]["brier"]
    assert "Calibration before and after temperature scaling" in (run / "report.md").read_text()


def test_a_fixed_temperature_of_one_gives_the_unscaled_probabilities_exactly() -> None:
    torch.manual_seed(0)
    net = {
        "_target_": "monai.networks.nets.DenseNet121",
        "spatial_dims": 2,
        "in_channels": 1,
        "out_channels": 2,
    }
    model = PneumoniaClassifier(net=net, optimizer=partial(torch.optim.Adam, lr=1e-4), temperature=1.0).eval()
    x = torch.rand(4, 1, 48, 48)
    with torch.no_grad():
        logits = model(x)
    assert torch.equal(model.predict_proba(x), logits.float().softmax(dim=1)[:, 1])
    model.temperature.fill_(2.0)
    assert not torch.equal(model.predict_proba(x), logits.float().softmax(dim=1)[:, 1])
    assert torch.allclose(model.predict_proba(x), (logits / 2.0).softmax(dim=1)[:, 1])


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_model_card_of_a_tiny_run(tiny_run: dict, demo_root: Path) -> None:
    run, datamodule = tiny_run["dir"], tiny_run["datamodule"]
    card = (run / "model_card.md").read_text()
    report = json.loads((run / "report.json").read_text())
    rows = {}
    for line in card.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| ") and len(cells) == 2:
            rows[cells[0]] = cells[1]
    # sha256 of the very files the run read
    assert rows["label file sha256"] == _sha256(demo_root / "Data_Entry_2017.csv")
    assert rows["split list train_val sha256"] == _sha256(demo_root / "train_val_list.txt")
    assert rows["split list test sha256"] == _sha256(demo_root / "test_list.txt")
    assert str(demo_root / "Data_Entry_2017.csv") in rows["label file"]
    # images used and skipped, and the patient-disjoint split's counts
    parts = datamodule.split.as_dict()
    assert int(rows["images used (train + val + test)"]) == sum(len(v) for v in parts.values())
    assert rows["images skipped (missing / unreadable)"] == "missing: 0, bad image: 0"
    index = pd.read_csv(demo_root / "Data_Entry_2017.csv").set_index("Image Index")
    for name, images in parts.items():
        sub = index.loc[list(images)]
        row = f"| {name} | {len(images)} | {sub['Patient ID'].nunique()} | {sub['Finding Labels'].str.contains('Pneumonia').sum()} |"
        assert row in card, row
    assert "Patient-disjoint split" in card
    # initial weights, seed, version, commit, config
    assert rows["initial weights"] == "random" and rows["seed"] == "42" and rows["task"] == "multilabel"
    import importlib.metadata

    import pneumo

    assert rows["pneumo version"] == pneumo.__version__ == importlib.metadata.version("pneumo")
    commit = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    assert rows["git commit"] == commit
    assert "## Composed config" in card and "seed: 42" in card and "threshold: youden" in card
    # test metrics with intervals, the subgroup table, intended use and limits
    auroc = report["metrics"]["auroc"]
    assert f"| AUROC | {auroc['value']:.4f} | {auroc['ci'][0]:.4f} – {auroc['ci'][1]:.4f} |" in card
    assert "| View position | AP |" in card
    assert "Not a medical device" in card and "NLP" in card and "synthetic" in card
    # the same fields in the checkpoint
    blob = torch.load(
        tiny_run["trainer"].checkpoint_callback.best_model_path, map_location="cpu", weights_only=True
    )
    saved = blob["model_card"]
    assert saved["data"]["labels"]["sha256"] == rows["label file sha256"]
    assert saved["data"]["split_lists"]["test"]["sha256"] == rows["split list test sha256"]
    assert saved["seed"] == 42 and saved["pneumo"]["git_commit"] == commit
    assert saved["initial_weights"]["source"] == "random"
    assert saved["test"]["metrics"] == report["metrics"] and saved["test"]["subgroups"] == report["subgroups"]


def test_a_separated_validation_epoch_uses_temperature_1_not_an_earlier_epochs_fit() -> None:
    """T fitted at one epoch belongs to that epoch's weights: a later epoch whose validation logits separate
    the classes perfectly (no finite optimum) uses the unscaled logits, and the report says it was not fitted."""
    import lightning as L

    from pneumo.models.classifier import EvalOutputs
    from pneumo.reporting.report import _temperature_markdown

    net = {
        "_target_": "monai.networks.nets.DenseNet121",
        "spatial_dims": 2,
        "in_channels": 1,
        "out_channels": 2,
    }
    model = PneumoniaClassifier(net=net, optimizer=partial(torch.optim.Adam, lr=1e-4))
    model.trainer = L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False)
    ids = np.array([f"{i:08d}_000.png" for i in range(8)])
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    overlapping = np.stack([np.zeros(8), np.array([-1.0, 0.5, -2.0, 1.0, 2.0, -0.5, 3.0, 0.2])], axis=1)
    model._fit_temperature(EvalOutputs(ids, np.zeros(0), y, overlapping))
    fitted = float(model.temperature)
    assert fitted != pytest.approx(1.0) and model.calibration["note"] is None

    separated = np.stack([np.zeros(8), np.array([-3.0, -2.0, -2.5, -1.0, 1.0, 2.0, 2.5, 3.0])], axis=1)
    model._fit_temperature(EvalOutputs(ids, np.zeros(0), y, separated))
    assert float(model.temperature) == 1.0
    assert model.calibration["value"] == 1.0 and model.calibration["val_nll_after"] is None
    assert model.calibration["note"].endswith("separate the classes perfectly; used temperature 1")
    section = {
        **model.calibration,
        "before": {"ece": 0.1, "brier": 0.1, "nll": 0.3},
        "after": {"ece": 0.1, "brier": 0.1, "nll": 0.3},
    }
    assert (
        "temperature 1.0000, not fitted on val (8 images): see the notes" in _temperature_markdown(section)[0]
    )


def test_a_fit_at_the_lower_bound_says_whether_the_classes_are_separated() -> None:
    """Only logits that separate the classes are called separated; tiny logits that merely rank well (an
    almost untrained model) hit the same bound for another reason, and the note says which."""
    from pneumo.stats.temperature import fit_temperature

    y = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    separated = fit_temperature(np.array([-3.0, -2.0, -1.0, -0.5, 0.5, 1.0, 2.0, 3.0]), y)
    assert separated.value is None and separated.note.endswith("separate the classes perfectly")
    tiny = fit_temperature(1e-3 * np.array([-3.0, -2.0, -1.0, 0.5, -0.2, 1.0, 2.0, 3.0]), y)
    assert tiny.value is None and tiny.note.endswith(
        "still falls at T = 0.05 (logits tiny for how well they rank)"
    )
    unit = fit_temperature(np.array([-3.0, -2.0, -1.0, 0.5, -0.2, 1.0, 2.0, 3.0]), y)
    assert unit.value is not None and 0.05 < unit.value < 20 and unit.nll_after <= unit.nll_before
