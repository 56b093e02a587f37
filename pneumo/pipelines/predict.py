"""Predictions and Grad-CAM heatmaps of a loaded run, for images at paths/URLs or in memory: the work behind
``pneumo.predict`` and ``pneumo.explain`` (``pneumo.api``).

Images are read and preprocessed as ``explain.py`` reads them (``pneumo.data.inputs.load_image`` with the one
``Preprocessor``: decode -> ``ResizeToUint8`` -> tensor transforms, at the run's image size and DICOM grey
levels, through the run's storage settings); a numpy image skips only the decoding. Scores are those of
explain's ``predictions.csv``: ``probability`` at the run's temperature, ``logit`` the raw pneumonia logit,
``predicted_label`` at the run's threshold.

Example:
    >>> run = load_run("logs/train/runs/<timestamp>/checkpoints/last.ckpt")  # doctest: +SKIP
    >>> predict_table(run, ["00000001_000.png"]).columns.tolist()  # doctest: +SKIP
    ['image', 'probability', 'logit', 'predicted_label', 'threshold', 'temperature', 'source']
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeAlias

import numpy as np
import pandas as pd
import torch
from PIL import Image

from pneumo.data.inputs import ImageRef, InputError, load_image, resolve_inputs
from pneumo.images.decode import to_uint8
from pneumo.images.dicom import check_voi
from pneumo.images.preprocess import Preprocessor
from pneumo.io.store import absolute_location
from pneumo.pipelines.runs import Run
from pneumo.xai.gradcam import DEFAULT_LAYER, GradCam, eval_mode, pneumonia_probability
from pneumo.xai.overlay import resize_map

#: One image: a path or URL (PNG, JPEG, DICOM...), or a numpy ``(H, W)`` grey or ``(H, W, 3|4)`` colour uint8 array.
ImageInput: TypeAlias = "str | os.PathLike[str] | np.ndarray"
#: What ``predict_table`` and ``explain_heatmaps`` take: a list of images, one numpy image, or one path/URL
#: (an image, a folder of images or a ``.txt`` list of paths/URLs, as explain's ``inputs=``).
Images: TypeAlias = "ImageInput | Sequence[ImageInput]"

#: Columns of ``predict_table``: those of explain's ``predictions.csv`` that need no labels or files.
COLUMNS = ("image", "probability", "logit", "predicted_label", "threshold", "temperature", "source")


@dataclass
class Explanation:
    """Grad-CAM of one image (``explain_heatmaps``).

    Attributes:
        image: the file name, or ``array_<i>`` for the ``i``-th input given as an array.
        probability: pneumonia probability at the run's temperature.
        logit: raw pneumonia logit (before the temperature).
        predicted_label: 1 when ``probability`` is at least the run's threshold.
        heatmap: ``(H, W)`` float32 in [0, 1] at the input image's size (the network's map, resized as
            explain's overlays draw it).
    """

    image: str
    probability: float
    logit: float
    predicted_label: int
    heatmap: np.ndarray


@dataclass
class _Item:
    """One input: where it comes from, and either a location to read or pixels already in memory."""

    name: str
    source: str
    ref: ImageRef | None = None
    pixels: np.ndarray | None = None


def _grey(array: np.ndarray, where: str) -> np.ndarray:
    """A numpy image as ``(H, W)`` uint8 grey: colour becomes luminance as ``decode_grayscale`` does it."""
    if array.dtype == np.uint8 and array.ndim == 2:
        return array
    if array.dtype == np.uint8 and array.ndim == 3 and array.shape[2] in (3, 4):
        return to_uint8(Image.fromarray(np.ascontiguousarray(array)))  # the decode step's own conversion
    raise InputError(
        f"{where}: a numpy image must be (H, W) or (H, W, 3|4) uint8, got {array.dtype} {array.shape}; "
        "convert it (e.g. np.clip(x * 255, 0, 255).astype(np.uint8)) or pass the file's path"
    )


def _items(images: Images, run: Run) -> list[_Item]:
    """The inputs, in order: one path/URL is expanded as explain's ``inputs=`` (an image, a folder, a list)."""
    if isinstance(images, (str, os.PathLike)):
        refs, _ = resolve_inputs(str(images), run.storage)
        return [_Item(ref.name, ref.location, ref=ref) for ref in refs]
    if isinstance(images, np.ndarray) and images.ndim == 2:
        images = [images]
    if isinstance(images, np.ndarray):
        raise InputError(
            f"images: a {images.ndim}-D array is ambiguous (one colour image or a batch?); pass a list of "
            "(H, W) or (H, W, 3) uint8 arrays"
        )
    items = []
    for i, image in enumerate(images):
        if isinstance(image, np.ndarray):
            items.append(_Item(f"array_{i}", f"images[{i}]", pixels=_grey(image, f"images[{i}]")))
        elif isinstance(image, (str, os.PathLike)):
            location = absolute_location(str(image))
            name = posixpath.basename(location.rstrip("/"))
            items.append(_Item(name, location, ref=ImageRef(name, location)))
        else:
            raise InputError(f"images[{i}]: {type(image).__name__} is not a path, URL or numpy image")
    if not items:
        raise InputError("images: no image given")
    return items


def preprocessor(run: Run) -> Preprocessor:
    """The run's preprocessing of one image: its input size and its DICOM grey levels."""
    return Preprocessor(run.image_size, dicom_voi=check_voi(run.dicom_voi))


def _batches(
    run: Run, images: Images, batch_size: int, num_workers: int
) -> Iterator[tuple[list[_Item], torch.Tensor, list[tuple[int, int]]]]:
    """``(items, (B, 1, S, S) tensor on the model's device, source shapes)`` per batch; images are read in
    ``num_workers`` threads. An image that cannot be read raises its one-line error naming it."""
    if batch_size < 1:
        raise InputError(f"batch_size must be >= 1, got {batch_size}")
    items = _items(images, run)
    preprocess = preprocessor(run)
    device = next(run.model.parameters()).device

    def load(item: _Item) -> tuple[torch.Tensor, tuple[int, int]]:
        if item.ref is not None:
            loaded = load_image(item.ref, preprocess, run.storage)
            return loaded.tensor, loaded.source_shape
        assert item.pixels is not None
        shape = (int(item.pixels.shape[0]), int(item.pixels.shape[1]))
        return preprocess.tensor(preprocess.resize(item.pixels)), shape

    with ThreadPoolExecutor(max_workers=max(1, num_workers)) as pool:
        for start in range(0, len(items), batch_size):
            chunk = items[start : start + batch_size]
            loaded = list(pool.map(load, chunk))
            yield chunk, torch.stack([t for t, _ in loaded]).to(device), [s for _, s in loaded]


def predict_table(run: Run, images: Images, batch_size: int = 32, num_workers: int = 8) -> pd.DataFrame:
    """Pneumonia scores of ``images`` (see ``Images``): one row per image, ``COLUMNS``, in input order.

    Example:
        >>> predict_table(run, ["a.png", np.zeros((512, 512), np.uint8)])  # doctest: +SKIP
    """
    model = run.model
    threshold, temperature = float(model.threshold), float(model.temperature)
    rows = []
    with eval_mode(model), torch.no_grad():
        for items, batch, _ in _batches(run, images, batch_size, num_workers):
            logits = model(batch)
            probs, raw = pneumonia_probability(model, logits), model.pneumonia_logit(logits)
            for j, item in enumerate(items):
                p = float(probs[j])
                rows.append(
                    (item.name, p, float(raw[j]), int(p >= threshold), threshold, temperature, item.source)
                )
    return pd.DataFrame(rows, columns=list(COLUMNS))


def explain_heatmaps(
    run: Run,
    images: Images,
    layer: str = DEFAULT_LAYER,
    target: int | str = "pneumonia",
    batch_size: int = 32,
    num_workers: int = 8,
) -> list[Explanation]:
    """Grad-CAM of ``images`` (see ``Images``) as ``explain.py`` computes it (``GradCam`` of ``layer`` for
    ``target``), with the scores of the same forward pass; in input order.

    Example:
        >>> maps = explain_heatmaps(run, ["a.png"]); maps[0].heatmap.shape  # doctest: +SKIP
        (1024, 1024)
    """
    model = run.model
    threshold = float(model.threshold)
    cam = GradCam(model, layer=layer, target=target, batch_size=batch_size)
    out = []
    for items, batch, shapes in _batches(run, images, batch_size, num_workers):
        maps = cam(batch)
        probs = pneumonia_probability(model, maps.logits)
        raw = model.pneumonia_logit(maps.logits)
        for j, item in enumerate(items):
            heatmap = resize_map(maps.heatmaps[j].detach().cpu().numpy().astype(np.float32), shapes[j])
            p = float(probs[j])
            out.append(
                Explanation(item.name, p, float(raw[j]), int(p >= threshold), heatmap.astype(np.float32))
            )
    return out
