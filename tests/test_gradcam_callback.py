"""GradCamOverlayCallback in a real training run: overlays read back from the TensorBoard event files."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from omegaconf import open_dict
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import IMAGES, EventAccumulator

from pneumo.callbacks import GradCamOverlayCallback
from pneumo.nih.index import NIHLabelIndex
from pneumo.pipelines.train import train
from tests.helpers import tiny_overrides


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

    acc = EventAccumulator(str(Path(cfg.paths.output_dir) / "tensorboard"), size_guidance={IMAGES: 0})
    acc.Reload()
    assert "val/gradcam" in acc.Tags()[IMAGES]
    events = acc.Images("val/gradcam")
    assert len(events) == 2  # one grid per validation epoch (sanity check excluded)
    assert events[0].step < events[1].step
    for event in events:
        grid = np.asarray(Image.open(io.BytesIO(event.encoded_image_string)).convert("RGB"))
        assert grid.shape == (event.height, event.width, 3)
        # 2 x 2 tiles of 96 px (plus caption strips), 2 px apart
        assert event.width == 2 * 96 + 2 and event.height > 2 * 96 + 2
        assert grid.std() > 10  # a picture, not a blank
    # the same images in the same places: the overlay grids differ only where the heatmaps changed
    a, b = (np.asarray(Image.open(io.BytesIO(e.encoded_image_string)).convert("L"), float) for e in events)
    assert a.shape == b.shape and np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.5
