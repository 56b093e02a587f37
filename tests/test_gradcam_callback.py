"""GradCamOverlayCallback in a real training run: overlays read back from the TensorBoard event files."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import open_dict
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import IMAGES, EventAccumulator

from pneumo.callbacks import GradCamOverlayCallback
from pneumo.nih.index import NIHLabelIndex
from pneumo.pipelines.train import train
from pneumo.xai.overlay import BOX_COLOR, reference_color
from tests.helpers import TINY_DEMO, tiny_overrides


def test_overlays_reach_tensorboard_for_a_fixed_set_of_val_images(
    compose_train, demo_root: Path, tmp_path: Path
) -> None:
    cfg = compose_train(
        [
            *tiny_overrides(demo_root, tmp_path),
            "trainer.max_epochs=2",
            "test=false",
            "callbacks.gradcam_overlay.every_n_epochs=1",
            "callbacks.gradcam_overlay.num_positives=2",
            "callbacks.gradcam_overlay.num_negatives=2",
            "callbacks.gradcam_overlay.tile_size=96",
            "callbacks.gradcam_overlay.ncols=2",
        ]
    )
    with open_dict(cfg):
        cfg.callbacks.model_checkpoint = None
        cfg.callbacks.early_stopping = None
    _, objects = train(cfg)
    trainer = objects["trainer"]
    callback = next(c for c in trainer.callbacks if isinstance(c, GradCamOverlayCallback))

    # the set is fixed, drawn from validation, and holds both classes
    val_names = set(objects["datamodule"].split.val.tolist())
    ids = callback.image_ids
    assert len(ids) == 4 and set(ids) <= val_names
    labels = NIHLabelIndex.from_csv(str(demo_root / "Data_Entry_2017.csv")).subset(ids).pneumonia.tolist()
    assert sorted(labels) == [0, 0, 1, 1]
    # the pneumonia images carry their ground-truth boxes (drawn on the tiles), the others none
    boxes = dict(zip(ids, callback._fixed["boxes"]))
    for name, label in zip(ids, labels):
        assert (len(boxes[name]) > 0) == bool(label), name
    # eval.references' box references too: the demo's RSNA-style boxes of each chosen image (64-px input)
    assert callback.references == ["nih", "adjudicated", "rsna"]
    written = pd.read_csv(demo_root / "rsna_pneumonia.csv").query("Target == 1")
    rsna = callback._fixed["reference_boxes"]["rsna"]
    assert "adjudicated" not in callback._fixed["reference_boxes"]  # no boxes
    scale = 64 / TINY_DEMO["size"]
    for name, got in zip(ids, rsna):
        expected = (
            written.loc[written["Image Index"] == name, ["x", "y", "width", "height"]].to_numpy() * scale
        )
        np.testing.assert_allclose(got.reshape(-1, 4), expected.reshape(-1, 4), atol=1e-3)
    boxed = {n: sum(len(b[i]) > 0 for i in range(4)) for n, b in callback._fixed["reference_boxes"].items()}
    assert boxed["rsna"] > 0 and boxed["nih"] > 0
    for name in ("nih", "rsna"):  # scored on the images it boxes, with a patient-bootstrap interval
        summary = callback.localization[name]
        assert summary["n"] == boxed[name] and summary["unit"] == "patient"
        assert summary["hit_rate_ci"][0] <= summary["hit_rate"] <= summary["hit_rate_ci"][1]

    acc = EventAccumulator(str(Path(cfg.paths.output_dir) / "tensorboard"), size_guidance={IMAGES: 0})
    acc.Reload()
    assert "val/gradcam" in acc.Tags()[IMAGES]
    for name in ("nih", "rsna"):
        points = acc.Scalars(f"val/gradcam/pointing_game/{name}")
        assert len(points) == 2 and 0 <= points[-1].value <= 1
    text = acc.Tensors("val/gradcam/localization/text_summary")[-1].tensor_proto.string_val[0].decode()
    assert "pointing game vs rsna:" in text and "pointing game vs nih:" in text
    events = acc.Images("val/gradcam")
    assert len(events) == 2  # one grid per validation epoch (sanity check excluded)
    assert events[0].step < events[1].step
    for event in events:
        grid = np.asarray(Image.open(io.BytesIO(event.encoded_image_string)).convert("RGB"))
        assert grid.shape == (event.height, event.width, 3)
        # 2 x 2 tiles of 96 px (plus caption strips), 2 px apart
        assert event.width == 2 * 96 + 2 and event.height > 2 * 96 + 2
        assert grid.std() > 10  # a picture, not a blank
        colours = {tuple(c) for c in grid.reshape(-1, 3)}
        assert BOX_COLOR in colours and reference_color("rsna") in colours  # both references' outlines
    # the same images in the same places: the overlay grids differ only where the heatmaps changed
    a, b = (np.asarray(Image.open(io.BytesIO(e.encoded_image_string)).convert("L"), float) for e in events)
    assert a.shape == b.shape and np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.5
