"""The Python API (``from pneumo import load_run, predict, explain, evaluate_predictions``) and
``Trainer.predict``, on the tiny checkpoint: the same numbers as the explain and evaluate commands."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, TensorDataset

import pneumo
from pneumo.errors import PneumoError
from pneumo.pipelines.evaluate import EvaluateSettings, evaluate_files
from pneumo.pipelines.explain import ExplainSettings, explain_images
from pneumo.pipelines.predict import preprocessor


@dataclass
class Explained:
    """Five demo images in a folder and what ``explain_images`` wrote for them."""

    paths: list[Path]
    out: Path
    written: pd.DataFrame  # predictions.csv, by image


@pytest.fixture(scope="module")
def explained(tiny_ckpt: Path, demo_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Explained:
    """The explain pipeline's outputs for the first five demo images (by name), run once for this module."""
    root = tmp_path_factory.mktemp("api")
    (root / "images").mkdir()
    paths = []
    for source in sorted((demo_root / "images").iterdir())[:5]:
        shutil.copy(source, root / "images" / source.name)
        paths.append(root / "images" / source.name)
    explain_images(ExplainSettings(ckpt_path=str(tiny_ckpt), out_dir=str(root / "out"),
                                   inputs=str(root / "images"), progress=False))  # fmt: skip
    return Explained(paths, root / "out", pd.read_csv(root / "out" / "predictions.csv").set_index("image"))


def test_the_evaluate_command_loads_no_torch() -> None:
    """Scoring a predictions CSV (``pneumo-evaluate``, ``python -m pneumo.evaluation``) needs pandas and
    matplotlib, not torch or Lightning: their import alone took ~5 s of the command's 8."""
    code = (
        "import sys, pneumo.pipelines.evaluate, pneumo.cli.evaluate, pneumo.reporting.gallery\n"
        "print([m for m in ('torch', 'lightning', 'monai') if m in sys.modules])\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "[]"


def test_import_pneumo_loads_no_torch_and_the_api_loads_on_first_use() -> None:
    code = (
        "import sys, pneumo, pneumo.errors\n"
        "heavy = [m for m in ('torch', 'lightning', 'monai', 'pandas') if m in sys.modules]\n"
        "assert heavy == [], heavy\n"
        "assert {'load_run', 'predict', 'explain', 'evaluate_predictions'} <= set(dir(pneumo))\n"
        "from pneumo import predict\n"
        "assert 'torch' in sys.modules and predict.__module__ == 'pneumo.api'\n"
        "try:\n"
        "    pneumo.predcit\n"
        "except AttributeError as err:\n"
        "    print(err)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "module 'pneumo' has no attribute 'predcit'"


def test_predict_gives_explain_predictions_for_paths_a_folder_and_arrays(
    tiny_ckpt: Path, explained: Explained, tmp_path: Path
) -> None:
    paths, written = explained.paths, explained.written

    run = pneumo.load_run(str(tiny_ckpt))
    table = pneumo.predict(run, [str(p) for p in paths], batch_size=2)
    assert table.columns.tolist() == [
        "image", "probability", "logit", "predicted_label", "threshold", "temperature", "source"
    ]  # fmt: skip
    assert table["image"].tolist() == [p.name for p in paths]
    for column in ("probability", "logit", "predicted_label", "threshold", "temperature"):
        np.testing.assert_allclose(table[column], written.loc[table["image"], column], rtol=1e-5, atol=1e-6)

    folder = pneumo.predict(run, str(paths[0].parent))  # one path: an image, a folder or a list
    np.testing.assert_allclose(folder["probability"], table["probability"], rtol=1e-6)
    pixels = [np.asarray(Image.open(p)) for p in paths]
    arrays = pneumo.predict(run, [*pixels[:3], np.stack([pixels[3]] * 3, axis=-1), paths[4]])
    assert arrays["image"].tolist() == ["array_0", "array_1", "array_2", "array_3", paths[4].name]
    np.testing.assert_allclose(arrays["probability"], table["probability"], rtol=1e-6)
    # DICOM grey levels as the run read them (data.images.dicom_voi), like the explain command.
    run.datamodule.image_settings.dicom_voi = "window"
    assert preprocessor(run).dicom_voi == "window" and preprocessor(run).image_size == 64
    with pytest.raises(PneumoError, match=r"images\[0\]: a numpy image must be .* uint8, got float64"):
        pneumo.predict(run, [np.zeros((8, 8))])
    with pytest.raises(PneumoError, match=r"nowhere\.png"):
        pneumo.predict(run, [str(tmp_path / "nowhere.png")])


def test_explain_gives_explain_heatmaps_at_the_input_size(tiny_ckpt: Path, explained: Explained) -> None:
    paths, written = explained.paths[:3], explained.written

    run = pneumo.load_run(str(tiny_ckpt))
    maps = pneumo.explain(run, [str(p) for p in paths])
    assert [m.image for m in maps] == [p.name for p in paths]
    for m, path in zip(maps, paths):
        # demo images are the network's size (64 px): the map is explain's heatmaps/<stem>.npy itself
        np.testing.assert_allclose(
            m.heatmap, np.load(explained.out / "heatmaps" / f"{path.stem}.npy"), atol=1e-6
        )
        assert m.probability == pytest.approx(written.loc[m.image, "probability"], rel=1e-5)
        assert m.predicted_label == written.loc[m.image, "predicted_label"]
    wide = np.asarray(Image.open(paths[0]).resize((96, 80)))  # (80, 96): not the network's 64 x 64
    (big,) = pneumo.explain(run, [wide])
    assert big.heatmap.shape == (80, 96) and big.heatmap.dtype == np.float32
    assert big.heatmap.min() >= 0.0 and big.heatmap.max() <= 1.0


def test_trainer_predict_scores_like_test_and_like_predict(tiny_ckpt: Path) -> None:
    run = pneumo.load_run(str(tiny_ckpt))
    run.datamodule.setup("test")
    trainer = L.Trainer(
        accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False
    )
    batches = trainer.predict(run.model, dataloaders=run.datamodule.test_dataloader())
    assert batches
    ids = [name for batch in batches for name in batch["image_id"]]
    probability = torch.cat([batch["probability"] for batch in batches]).numpy()
    logit = torch.cat([batch["logit"] for batch in batches]).numpy()
    predicted = torch.cat([batch["predicted_label"] for batch in batches]).numpy()
    np.testing.assert_array_equal(predicted, probability >= float(run.model.threshold))
    table = pneumo.predict(run, [run.image_location(name) for name in ids])
    np.testing.assert_allclose(probability, table["probability"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(logit, table["logit"], rtol=1e-5, atol=1e-5)
    # Batches of bare tensors work too (no image names then).
    loader = DataLoader(TensorDataset(torch.zeros(3, 1, 64, 64)), batch_size=3)
    (only,) = trainer.predict(run.model, dataloaders=loader)
    assert only["image_id"] is None and only["probability"].shape == (3,)


def test_evaluate_predictions_is_the_evaluate_commands_report(
    tiny_ckpt: Path, demo_root: Path, tmp_path: Path
) -> None:
    run = pneumo.load_run(str(tiny_ckpt))
    names = sorted(p.name for p in (demo_root / "images").iterdir())[:40]
    table = pneumo.predict(run, [str(demo_root / "images" / n) for n in names])
    settings = {
        "labels_url": str(demo_root / "Data_Entry_2017.csv"),
        "eval": {"threshold": 0.5, "bootstrap": {"resamples": 20}, "figures": False},
    }
    report = pneumo.evaluate_predictions(table, out_dir=tmp_path / "api", **settings)
    assert report["counts"]["images"] == 40 and report["source"]["predictions"] == "DataFrame"
    assert (tmp_path / "api" / "report.md").exists()

    table.to_csv(tmp_path / "predictions.csv", index=False)
    command = evaluate_files(EvaluateSettings.from_config(
        {"predictions": str(tmp_path / "predictions.csv"), "out_dir": str(tmp_path / "cmd"), **settings}
    ))  # fmt: skip
    assert json.dumps(report["metrics"], sort_keys=True) == json.dumps(command["metrics"], sort_keys=True)
    kept = pneumo.evaluate_predictions(
        str(tmp_path / "predictions.csv"), **settings
    )  # no out_dir: a temp folder
    assert kept["metrics"] == command["metrics"]
    with pytest.raises(PneumoError, match=r"recalibate is not a setting.*did you mean 'recalibrate'"):
        pneumo.evaluate_predictions(table, recalibate=True)
