"""pneumo.pipelines.runs: a run rebuilt from its checkpoint has the split the report was computed on."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest
from omegaconf import open_dict

from pneumo.pipelines.explain import ExplainSettings, explain_images
from pneumo.pipelines.runs import load_run
from pneumo.pipelines.train import train
from tests.helpers import tiny_overrides


def _images_of(predictions_csv: Path) -> list[str]:
    with open(predictions_csv, newline="") as fh:
        return sorted(row["image"] for row in csv.DictReader(fh))


@pytest.mark.slow
def test_explain_split_is_the_reports_split_when_images_were_skipped(
    compose_train, demo_root: Path, tmp_path: Path
) -> None:
    # A copy of the demo set with 3 test images and 2 train/val images deleted, trained with on_missing=skip.
    data = tmp_path / "nih_demo"
    shutil.copytree(demo_root, data)
    test_list = (data / "test_list.txt").read_text().split()
    train_val = (data / "train_val_list.txt").read_text().split()
    deleted = sorted(test_list[:3] + train_val[:2])
    for name in deleted:
        (data / "images" / name).unlink()
    overrides = [
        *tiny_overrides(data, tmp_path),
        "data.on_missing=skip",
        "logger=none",
        "trainer.max_epochs=1",
    ]
    overrides = [o for o in overrides if not o.startswith("+trainer.limit_test_batches")]  # test every image
    cfg = compose_train(overrides)
    with open_dict(cfg):
        cfg.callbacks.gradcam_overlay = None
        cfg.callbacks.lr_monitor = None
    train(cfg)
    run_dir = Path(cfg.paths.output_dir)
    reported = _images_of(run_dir / "predictions.csv")
    assert reported == sorted(set(test_list) - set(deleted))  # the report left the 3 missing images out

    ckpt = run_dir / "checkpoints" / "last.ckpt"
    run = load_run(str(ckpt))
    assert sorted(run.datamodule.split_images("test")) == reported
    shutil.rmtree(tmp_path / "data" / "cache")  # the checkpoint itself says which images were skipped
    assert sorted(load_run(str(ckpt)).datamodule.split_images("test")) == reported

    result = explain_images(
        ExplainSettings(str(ckpt), str(tmp_path / "explain"), split="test", progress=False)
    )
    assert not result.failed, result.failed
    assert _images_of(tmp_path / "explain" / "predictions.csv") == reported
