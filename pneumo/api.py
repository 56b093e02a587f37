"""pneumo's Python API: load a trained run, predict and explain images, evaluate a predictions table.

``from pneumo import load_run, predict, explain, evaluate_predictions`` (imported on first use: ``import
pneumo`` alone loads no torch). The same work as the commands: ``predict`` scores images as ``pneumo-explain``
writes them into ``predictions.csv``, ``explain`` computes its Grad-CAM heatmaps, ``evaluate_predictions``
writes and returns the report of ``pneumo-evaluate``.

``evaluate_predictions`` needs labelled images: NIH's image names (their labels ship with pneumo) or
``labels_url=`` a ``Data_Entry`` CSV naming them; and an operating point: a number (``eval={"threshold":
0.5}``) or a rule chosen on ``val_predictions=`` (the default rule, Youden's J, needs them).

Example:
    >>> from pneumo import load_run, predict, explain, evaluate_predictions
    >>> run = load_run("logs/train/runs/<timestamp>/checkpoints/last.ckpt")  # doctest: +SKIP
    >>> table = predict(run, ["chest.png"])  # image, probability, logit, predicted_label... # doctest: +SKIP
    >>> maps = explain(run, ["chest.png"])  # maps[0].heatmap: (H, W) in [0, 1]  # doctest: +SKIP
    >>> table.to_csv("predictions.csv", index=False)  # doctest: +SKIP
    >>> report = evaluate_predictions("predictions.csv", eval={"threshold": 0.5})  # doctest: +SKIP
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

import pandas as pd

from pneumo.pipelines.evaluate import EvaluateSettings, evaluate_files
from pneumo.pipelines.predict import Explanation, Images, explain_heatmaps, predict_table
from pneumo.pipelines.runs import Run, load_run
from pneumo.xai.gradcam import DEFAULT_LAYER

__all__ = ["Explanation", "Run", "evaluate_predictions", "explain", "load_run", "predict"]


def predict(run: Run, images: Images, batch_size: int = 32, num_workers: int = 8) -> pd.DataFrame:
    """Pneumonia scores of images, one row each, in input order.

    Args:
        run: a run from ``load_run`` (its model on the device given there: ``map_location="cuda"``).
        images: paths or URLs (PNG, JPEG, DICOM; ``gs://`` through the run's storage settings), numpy uint8
            images (``(H, W)`` grey or ``(H, W, 3)`` colour), a list mixing them, or one path: an image, a
            folder of images or a ``.txt`` list (as ``pneumo-explain inputs=``).
        batch_size: images per forward pass; ``num_workers``: threads reading images.

    Returns:
        A DataFrame with ``image`` (file name, or ``array_<i>``), ``probability`` (at the run's
        temperature), ``logit`` (raw pneumonia logit), ``predicted_label`` (at the run's threshold),
        ``threshold``, ``temperature`` and ``source``: ``evaluate_predictions`` reads it once saved.

    Raises:
        PneumoError: an image that cannot be read or decoded (one line naming it).

    Example:
        >>> predict(run, ["chest.png"]).loc[0, "probability"]  # doctest: +SKIP
    """
    return predict_table(run, images, batch_size=batch_size, num_workers=num_workers)


def explain(
    run: Run,
    images: Images,
    layer: str = DEFAULT_LAYER,
    target: int | str = "pneumonia",
    batch_size: int = 32,
    num_workers: int = 8,
) -> list[Explanation]:
    """Grad-CAM heatmaps of images (as ``pneumo-explain`` computes them), with their scores.

    Args:
        run, images, batch_size, num_workers: as for ``predict``.
        layer: the explained layer (``gradcam.layer`` of ``pneumo-explain``); ``target``: ``pneumonia``,
            ``predicted`` or an output index.

    Returns:
        One ``Explanation`` per image, in input order: ``image``, ``probability``, ``logit``,
        ``predicted_label`` and ``heatmap``, an ``(H, W)`` float32 array in [0, 1] at the input image's size.

    Example:
        >>> explain(run, ["chest.png"])[0].heatmap.max()  # doctest: +SKIP
        1.0
    """
    return explain_heatmaps(
        run, images, layer=layer, target=target, batch_size=batch_size, num_workers=num_workers
    )


def evaluate_predictions(
    predictions: str | os.PathLike[str] | pd.DataFrame,
    out_dir: str | os.PathLike[str] | None = None,
    **settings: Any,
) -> dict:
    """The evaluation report of a predictions table (``pneumo-evaluate``'s), as a dict.

    Args:
        predictions: a predictions CSV (path or URL; ``image`` and ``probability`` columns, see
            ``pneumo.reporting.predictions.read_predictions``) or a DataFrame such as ``predict``'s.
        out_dir: where ``report.md``, ``report.json``, ``predictions.csv`` and the figures are written;
            ``None``: a temporary folder, deleted on return (only the dict is kept).
        **settings: the other keys of ``pneumo-evaluate`` (``pneumo.pipelines.evaluate.EvaluateSettings``):
            ``val_predictions``, ``labels_url`` (default: NIH's labels, shipped), ``recalibrate``,
            ``choose_on_evaluated``, ``split``, ``storage``, and ``eval`` (a mapping of ``eval:`` keys,
            e.g. ``{"threshold": 0.5, "bootstrap": {"resamples": 200}}``).

    Raises:
        PneumoError: an unknown setting (with the closest name), a file or a value that cannot be used.

    Example:
        >>> evaluate_predictions("test.csv", val_predictions="val.csv")["metrics"]["auroc"]  # doctest: +SKIP
    """
    with tempfile.TemporaryDirectory(prefix="pneumo-evaluate-") as tmp:
        if isinstance(predictions, pd.DataFrame):
            source = os.path.join(tmp, "input_predictions.csv")
            predictions.to_csv(source, index=False)
        else:
            source = os.fspath(predictions)
        target = os.path.join(tmp, "report") if out_dir is None else os.fspath(out_dir)
        values = {**settings, "predictions": source, "out_dir": target}
        report = evaluate_files(EvaluateSettings.from_config(values))
    if isinstance(predictions, pd.DataFrame):
        report["source"]["predictions"] = "DataFrame"
    return report
