"""Batch prediction through Lightning: ``Trainer.predict`` over many images, every process of a DDP run
scoring its own shard, one predictions file (``pneumo.callbacks.prediction_writer.PredictionWriter``).

``predict_images`` reads the inputs as ``explain.py`` does (``resolve_inputs`` + ``load_image``: the run's
preprocessing and storage settings) in a ``DataLoader`` (worker processes decode), scores them with
``PneumoniaClassifier.predict_step`` (probability at the run's temperature, decision at its threshold) and
writes ``predictions.csv``: ``index`` (input order), ``image``, ``probability``, ``logit``,
``predicted_label``, ``threshold``, ``temperature``. With ``trainer={"strategy": "ddp", "devices": N}`` the N
processes score disjoint shards (for prediction Lightning's own distributed sampler does not repeat images)
and rank 0 writes the file: each image once, in input order, with the probabilities of a single-process run.

Example:
    >>> path = predict_images("last.ckpt", "images/", "out")  # doctest: +SKIP
    >>> ddp = {"strategy": "ddp", "accelerator": "cpu", "devices": 2}
    >>> path = predict_images("last.ckpt", "images/", "out", trainer=ddp)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
from torch.utils.data import DataLoader, Dataset

from pneumo.callbacks.prediction_writer import PredictionWriter
from pneumo.data.inputs import ImageRef, StorageOptions, load_image, resolve_inputs
from pneumo.images.dicom import check_voi
from pneumo.images.preprocess import Preprocessor
from pneumo.pipelines.runs import load_run


class ImagesDataset(Dataset):
    """``{"image": (1, S, S) tensor, "image_id": name, "index": position}`` of each input, preprocessed as
    pneumo preprocesses it; an unreadable image raises its one-line error naming it."""

    def __init__(self, refs: Sequence[ImageRef], preprocess: Preprocessor, storage: StorageOptions) -> None:
        self.refs, self.preprocess, self.storage = list(refs), preprocess, storage

    def __len__(self) -> int:
        return len(self.refs)

    def __getitem__(self, index: int) -> dict[str, Any]:
        loaded = load_image(self.refs[index], self.preprocess, self.storage)
        return {"image": loaded.tensor, "image_id": self.refs[index].name, "index": index}


def predict_images(  # noqa: PLR0913 - the inputs, then one keyword per setting of the run
    ckpt_path: str,
    inputs: str | None,
    out_dir: str | Path,
    trainer: Mapping[str, Any] | None = None,
    batch_size: int = 32,
    num_workers: int = 0,
    callbacks: Sequence[L.Callback] = (),
    split: str | None = None,
    storage: Mapping[str, Any] | None = None,
) -> Path:
    """Score ``inputs`` (an image, a folder, a ``.txt`` list) or ``split`` (``train``/``val``/``test`` of the
    checkpoint's data set, as ``explain.py split=`` lists it) with the checkpoint's classifier through
    ``Trainer.predict``; returns the written ``predictions.csv`` (module docstring). ``trainer``: keyword
    arguments of ``lightning.Trainer`` (accelerator, devices, strategy, callbacks...); ``callbacks``: more
    Lightning callbacks beside the writer; ``storage``: ``StorageSettings`` keys replacing the checkpoint's."""
    run = load_run(ckpt_path, storage=storage, storage_key="storage")
    if inputs is not None:
        refs, _ = resolve_inputs(str(inputs), run.storage)
    else:
        names = run.datamodule.split_images(str(split))
        refs = [ImageRef(name, run.image_location(name)) for name in names]
    preprocess = Preprocessor(run.image_size, dicom_voi=check_voi(run.dicom_voi))
    loader = DataLoader(
        ImagesDataset(refs, preprocess, run.storage),
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
    )
    model = run.model
    writer = PredictionWriter(out_dir, threshold=float(model.threshold), temperature=float(model.temperature))
    options = {
        "logger": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        **dict(trainer or {}),
    }
    more = list(options.pop("callbacks", None) or [])
    L.Trainer(callbacks=[writer, *callbacks, *more], **options).predict(
        model, dataloaders=loader, return_predictions=False
    )
    return writer.path
