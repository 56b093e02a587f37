"""Batch prediction through Lightning (issue 26): ``Trainer.predict`` + ``PredictionWriter`` on 2 CPU
processes (DDP, gloo) writes every input exactly once, with a single process's probabilities."""

from __future__ import annotations

import shutil
import textwrap
from pathlib import Path

import pandas as pd
import pytest

from pneumo.pipelines.batch_predict import predict_images
from pneumo.pipelines.explain import ExplainSettings, explain_images
from tests.helpers import ROOT, run_cli


@pytest.mark.slow
def test_two_ddp_processes_write_each_image_once_with_single_process_probabilities(
    tiny_ckpt: Path, demo_root: Path, tmp_path: Path
) -> None:
    images = tmp_path / "images"
    images.mkdir()
    for path in sorted((demo_root / "images").iterdir())[:11]:  # odd: the shards differ by one image
        shutil.copy(path, images / path.name)
    script = tmp_path / "ddp_predict.py"
    script.write_text(
        textwrap.dedent(f"""
        from pneumo.pipelines.batch_predict import predict_images
        if __name__ == "__main__":
            ddp = {{"strategy": "ddp", "accelerator": "cpu", "devices": 2}}  # gloo on CPU
            predict_images({str(tiny_ckpt)!r}, {str(images)!r}, {str(tmp_path / "ddp")!r}, trainer=ddp, batch_size=4)
    """)
    )
    proc = run_cli([str(script)], cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ddp = pd.read_csv(tmp_path / "ddp" / "predictions.csv")
    single = pd.read_csv(
        predict_images(str(tiny_ckpt), str(images), tmp_path / "one", trainer={"accelerator": "cpu"})
    )
    names = sorted(p.name for p in images.iterdir())
    assert ddp.image.tolist() == names and ddp["index"].tolist() == list(
        range(len(names))
    )  # each once, in order
    assert list((tmp_path / "ddp").iterdir()) == [tmp_path / "ddp" / "predictions.csv"]  # the parts are gone
    assert (ddp.probability - single.probability).abs().max() <= 1e-6
    assert (ddp.predicted_label == single.predicted_label).all()
    # and they are explain's probabilities
    explained = explain_images(ExplainSettings(ckpt_path=str(tiny_ckpt), out_dir=str(tmp_path / "ex"),
                                               inputs=str(images), progress=False))  # fmt: skip
    by_name = {row["image"]: float(row["probability"]) for row in explained.predictions}
    assert max(abs(by_name[n] - p) for n, p in zip(ddp.image, ddp.probability)) <= 1e-6
