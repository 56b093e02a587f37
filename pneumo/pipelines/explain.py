"""The pipeline behind ``explain.py``: checkpoint + images -> predictions, Grad-CAM overlays and heatmaps,
and localization scores wherever ground-truth boxes exist.

Outputs under ``out_dir``::

    predictions.csv             image, probability (at the model's temperature), predicted_label (at its threshold),
                                threshold, logit (raw pneumonia logit), temperature, true_label, ...
    boxes.csv                   heatmap regions as boxes in NIH's BBox_List_2017.csv layout (source pixels)
    overlays/<stem>.png         heatmap over the source X-ray (its own resolution, capped), ground-truth boxes
                                green, predicted boxes magenta, probability and labels in the caption
    heatmaps/<stem>.npy         float32 (S, S) in [0, 1], S = the checkpoint's input size
    localization.csv            per image with boxes: hit, iou, iobb, box_fraction, ...   (when boxes exist)
    summary.json                counts, unreadable inputs, the localization summary and Wang et al.'s table

Every file is written whole (a temporary file renamed over it) and ``summary.json`` is written last: a folder
without it holds an interrupted run. A folder that already holds these outputs is refused unless
``overwrite=True``, which deletes them (``summary.json`` first) before anything new is written, so old and
new outputs never sit side by side.

Example:
    >>> result = explain_images(ckpt_path="last.ckpt", inputs="data/nih_demo/images", out_dir="out")  # doctest: +SKIP
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import shutil
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from pneumo.data.inputs import (
    ImageRef,
    LoadedImage,
    Preprocessor,
    StorageOptions,
    load_image,
    options_for,
    resolve_inputs,
)
from pneumo.errors import ConfigError
from pneumo.images.decode import BadImageError
from pneumo.images.dicom import check_voi
from pneumo.io.files import atomic_write_bytes
from pneumo.io.store import location_exists
from pneumo.nih.boxes import load_boxes, scaled_to
from pneumo.nih.findings import BBOX_HEADER, PNEUMONIA
from pneumo.nih.index import NIHLabelIndex
from pneumo.pipelines.runs import load_run
from pneumo.xai.gradcam import DEFAULT_LAYER, GradCam, pneumonia_probability
from pneumo.xai.heatmap_boxes import format_table, heatmap_boxes, localization_table
from pneumo.xai.localization import DEFAULT_THRESHOLD, score_heatmap, summarize
from pneumo.xai.overlay import caption_text, render_overlay, save_png

log = logging.getLogger(__name__)


@dataclass
class ExplainResult:
    """What a run wrote: row dicts of ``predictions.csv`` / ``localization.csv``, the localization summary,
    and the inputs that could not be read (``(location, reason)``)."""

    predictions: list[dict] = field(default_factory=list)
    localization: list[dict] = field(default_factory=list)
    #: rows of ``boxes.csv``: ``(image, finding, x, y, w, h)`` in source pixels, by heat mass within an image
    boxes: list[tuple] = field(default_factory=list)
    summary: dict = field(default_factory=dict)
    failed: list[tuple[str, str]] = field(default_factory=list)
    out_dir: str = ""


# ---------------------------------------------------------------------------------------------- inputs
def _by_stem(names) -> dict[str, str]:
    """Index names by their stem, so that ``x.dcm`` (the bucket's ``dicom/`` copy) finds the labels of ``x.png``."""
    return {os.path.splitext(str(name))[0]: str(name) for name in names}


def _index_name(name: str, known: Mapping, stems: Mapping[str, str]) -> str:
    """``name`` if the index knows it, else the index name with the same stem (``name`` when none)."""
    return name if name in known else stems.get(os.path.splitext(name)[0], name)


def attach_labels(refs: Sequence[ImageRef], labels_url: str | None, storage_options: StorageOptions) -> int:
    """Set ``ref.label`` from a label index (matched by file name); returns how many were found."""
    options = options_for(labels_url, storage_options) if labels_url else {}
    if not labels_url or not location_exists(labels_url, options):
        return 0
    table = NIHLabelIndex.from_csv(labels_url, options).table
    label_of = dict(zip(table["image"].astype(str), table["pneumonia"].astype(int)))
    stems = _by_stem(label_of)
    for ref in refs:
        name = _index_name(ref.name, label_of, stems)
        if name in label_of:
            ref.label = int(label_of[name])
    return sum(ref.label is not None for ref in refs)


def attach_boxes(
    refs: Sequence[ImageRef], bbox_url: str | None, finding: str, storage_options: StorageOptions
) -> int:
    """Set ``ref.boxes`` (of ``finding``) from a ``BBox_List_2017.csv``; returns how many images got boxes."""
    boxes = load_boxes(bbox_url, options_for(bbox_url, storage_options) if bbox_url else None)
    if boxes is None:
        return 0
    known = {str(x): None for x in boxes.table["image"]}
    stems = _by_stem(known)
    for ref in refs:
        ref.boxes = boxes.for_image(_index_name(ref.name, known, stems), finding)
    return sum(len(ref.boxes) > 0 for ref in refs)


#: What ``explain_images`` writes into ``out_dir``; ``summary.json`` first: deleting it marks a folder incomplete.
OUTPUTS = ("summary.json", "predictions.csv", "boxes.csv", "localization.csv", "overlays", "heatmaps")


def prepare_out_dir(out_dir: str | os.PathLike, overwrite: bool = False) -> Path:
    """Make ``out_dir`` ready for a run: created if needed; refused (``ConfigError``) when it holds the
    outputs of an earlier run, unless ``overwrite``, which deletes those outputs (and only those)."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"out_dir={out} is a file; choose a folder")
    found = [name for name in OUTPUTS if (out / name).exists()]
    if found and not overwrite:
        raise ConfigError(
            f"out_dir={out} already holds the outputs of another explain run ({', '.join(found)}): choose a new "
            "out_dir, or pass overwrite=true to delete them first"
        )
    if found:
        log.warning("overwrite=true: deleting the earlier outputs in %s (%s)", out, ", ".join(found))
        for name in OUTPUTS:
            path = out / name
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            elif path.exists() or path.is_symlink():
                path.unlink()
    (out / "overlays").mkdir(parents=True, exist_ok=True)
    (out / "heatmaps").mkdir(parents=True, exist_ok=True)
    return out


def _device(device: str) -> torch.device:
    """``auto`` (CUDA when available), ``cpu``, ``cuda``, ``cuda:1``...; a ConfigError for anything else."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ConfigError(f"device={device!r} is not a device: use auto, cpu, cuda or cuda:N") from err


def _stems(refs: Sequence[ImageRef]) -> list[str]:
    """Output file stems: the image's stem, made unique with ``_2``, ``_3``... when names repeat."""
    seen: dict[str, int] = {}
    out = []
    for ref in refs:
        stem = os.path.splitext(ref.name)[0] or "image"
        seen[stem] = seen.get(stem, 0) + 1
        out.append(stem if seen[stem] == 1 else f"{stem}_{seen[stem]}")
    return out


# ---------------------------------------------------------------------------------------------- pipeline
def explain_images(
    ckpt_path: str,
    out_dir: str,
    inputs: str | None = None,
    split: str | None = None,
    layer: str = DEFAULT_LAYER,
    target: int | str = "pneumonia",
    batch_size: int = 32,
    num_workers: int = 8,
    device: str = "auto",
    labels_url: str | None = None,
    bbox_url: str | None = None,
    finding: str = PNEUMONIA,
    iou_threshold: float = DEFAULT_THRESHOLD,
    overlay: Mapping[str, Any] | None = None,
    box_threshold: float = DEFAULT_THRESHOLD,
    top_k: int = 1,
    storage: Mapping | None = None,
    progress: bool = True,
    dicom_voi: str | None = None,
    overwrite: bool = False,
) -> ExplainResult:
    """Explain every input image; see the module docstring for what is written.

    Args:
        ckpt_path: training checkpoint (``.ckpt``), local or URL.
        out_dir: output folder (created).
        inputs: an image, a folder, or a ``.txt`` list of paths/URLs; or ``None`` with ``split``.
        split: ``train``/``val``/``test`` of the checkpoint's data set instead of ``inputs``.
        layer, target: Grad-CAM layer and class (see ``pneumo.xai.gradcam``).
        batch_size: images per Grad-CAM batch; ``num_workers``: threads reading images.
        device: ``auto`` (CUDA if available), ``cpu``, ``cuda``, ``cuda:1``...
        labels_url, bbox_url: label index / box file; ``None`` = the checkpoint's, ``""`` = none.
        finding: which boxes count as ground truth; ``iou_threshold``: heatmap level for IoU/IoBB.
        overlay: ``max_size`` (overlays are drawn on the source image at its own width, at most this),
            ``alpha``, ``cmap`` of the overlay pictures.
        box_threshold, top_k: ``boxes.csv`` holds the ``top_k`` regions (by heat mass) where the heatmap
            is at least ``box_threshold``; they are scored against ground-truth boxes (Wang et al. 2017).
        storage: ``StorageSettings`` keys (``project``, ``requester_pays``, ``token``, ``options``, I/O limits)
            that replace the checkpoint's ``data.storage``; ``None`` values keep the checkpoint's. Credentials:
            Application Default Credentials, or a token in ``$PNEUMO_GCS_TOKEN`` (never in a config).
        dicom_voi: grey levels of DICOM inputs (``auto``, ``window``, ``full-range``); ``None`` = the
            checkpoint's ``data.dicom_voi`` (``auto`` for checkpoints from before it existed).
        progress: show a progress bar.
        overwrite: delete the outputs of an earlier run in ``out_dir`` instead of refusing the folder.
    """
    if (inputs is None) == (split is None):
        raise ConfigError("give exactly one of inputs=PATH_OR_URL or split=train|val|test")
    out = prepare_out_dir(out_dir, overwrite)
    dev = _device(device)
    run = load_run(ckpt_path, storage=storage, map_location=dev)
    model, settings, dhp = run.model, run.storage, run.datamodule.hparams
    options = settings.options_for

    model.to(dev)
    threshold = float(model.threshold)
    image_size = run.image_size
    temperature = float(model.temperature)
    dicom_voi = check_voi(dhp.get("dicom_voi", "auto") if dicom_voi is None else dicom_voi, "dicom_voi")
    labels_url = dhp.get("labels_url") if labels_url is None else labels_url
    bbox_url = dhp.get("bbox_url") if bbox_url is None else bbox_url

    skipped: list[str] = []
    if split is not None:
        # The split as the run used it: the same images left out as missing or bad (data.on_missing=skip).
        refs = [ImageRef(name, run.image_location(name)) for name in run.datamodule.split_images(split)]
    else:
        settings.probe(str(inputs))  # an unreachable endpoint fails here, in one line
        refs, skipped = resolve_inputs(inputs, options)
    if skipped:
        log.warning(
            "skipped %d file(s) that are not images by name: %s", len(skipped), ", ".join(skipped[:10])
        )
    n_labels = attach_labels(refs, labels_url, options)
    n_boxes = attach_boxes(refs, bbox_url, finding, options)
    log.info(
        "%d image(s) at %d px; true labels for %d, %s boxes for %d; model threshold %.3f; Grad-CAM layer %s",
        len(refs), image_size, n_labels, finding, n_boxes, threshold, layer,
    )  # fmt: skip

    overlay = dict(overlay or {})
    max_size = int(overlay.pop("max_size", 1024))
    if max_size < 16:
        raise ConfigError(f"overlay.max_size must be at least 16 px, got {max_size}")
    cam = GradCam(model, layer=layer, target=target, batch_size=batch_size)
    preprocess = Preprocessor(image_size, display_size=max_size, dicom_voi=dicom_voi)
    wang: tuple[list, list] = ([], [])  # predicted and ground-truth boxes of each image with ground truth
    result = ExplainResult(out_dir=str(out))
    scores = []
    stems = _stems(refs)

    def _load(i: int) -> tuple[int, LoadedImage | None, str | None]:
        try:
            return i, load_image(refs[i], preprocess, options), None
        except (BadImageError, OSError, ValueError, RuntimeError) as err:
            return i, None, str(err).splitlines()[0] if str(err) else type(err).__name__

    bar = tqdm(total=len(refs), desc="explain", unit="img", disable=not progress, dynamic_ncols=True)
    with ThreadPoolExecutor(max_workers=max(1, num_workers)) as pool:
        for start in range(0, len(refs), batch_size):
            loaded = []
            for i, item, error in pool.map(_load, range(start, min(start + batch_size, len(refs)))):
                if item is None:
                    log.error("cannot read %s: %s", refs[i].location, error)
                    result.failed.append((refs[i].location, error or "unreadable"))
                else:
                    loaded.append((i, item))
            if loaded:
                batch = torch.stack([item.tensor for _, item in loaded]).to(dev)
                maps = cam(batch)
                probs = pneumonia_probability(model, maps.logits)
                logits = model.pneumonia_logit(maps.logits)
                for j, (i, item) in enumerate(loaded):
                    heatmap = maps.heatmaps[j].cpu().numpy().astype(np.float32)
                    predicted = heatmap_boxes(heatmap, box_threshold, top_k, source_shape=item.source_shape)
                    predicted_boxes = np.array([b.box for b in predicted]).reshape(-1, 4)
                    row, score = _write_one(
                        item, stems[i], heatmap, predicted_boxes, (float(probs[j]), float(logits[j]), temperature),
                        threshold, out, overlay, iou_threshold,
                    )  # fmt: skip
                    result.predictions.append(row)
                    result.boxes += [(item.ref.name, finding, *map(float, b)) for b in predicted_boxes]
                    if len(item.ref.boxes):
                        wang[0].append(predicted_boxes)
                        wang[1].append(item.ref.boxes)
                    if score is not None:
                        result.localization.append(score)
                        scores.append(score["_score"])
            bar.update(min(batch_size, len(refs) - start))
    bar.close()

    _write_csv(out / "predictions.csv", result.predictions)
    write_box_list(out / "boxes.csv", result.boxes)
    if result.localization:
        for row in result.localization:
            row.pop("_score")
        _write_csv(out / "localization.csv", result.localization)
        result.summary = summarize(scores)
        result.summary.update({"layer": layer, "iou_threshold": iou_threshold, "finding": finding})
        table = localization_table(*wang)
        table.update({"top_k": top_k, "box_threshold": box_threshold})
        result.summary["wang"] = {k: v for k, v in table.items() if not k.startswith("best_")}
    summary = {
        "checkpoint": str(ckpt_path),
        "images": len(refs),
        "explained": len(result.predictions),
        "failed": [{"image": loc, "error": err} for loc, err in result.failed],
        "threshold": threshold,
        "temperature": temperature,
        "image_size": image_size,
        "localization": result.summary or None,
    }
    # Last: its presence says the folder holds a whole run.
    _write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    return result


def _write_one(
    item: LoadedImage,
    stem: str,
    heatmap: np.ndarray,
    predicted_boxes: np.ndarray,
    scores: tuple[float, float, float],
    threshold: float,
    out: Path,
    overlay: Mapping[str, Any],
    iou_threshold: float,
) -> tuple[dict, dict | None]:
    ref = item.ref
    probability, logit, temperature = scores
    predicted = int(probability >= threshold)
    boxes = scaled_to(ref.boxes, item.source_shape, heatmap.shape) if len(ref.boxes) else None
    caption = f"{ref.name}\n{caption_text(probability, predicted, ref.label)}"
    display = item.display  # the source pixels at their own width, capped at overlay.max_size
    shown = display.shape
    save_png(
        render_overlay(
            display,
            heatmap,
            boxes=scaled_to(ref.boxes, item.source_shape, shown) if len(ref.boxes) else None,
            predicted_boxes=scaled_to(predicted_boxes, item.source_shape, shown),
            caption=caption,
            size=shown[1],
            **overlay,
        ),
        out / "overlays" / f"{stem}.png",
    )
    buffer = io.BytesIO()
    np.save(buffer, heatmap)
    atomic_write_bytes(out / "heatmaps" / f"{stem}.npy", buffer.getvalue(), fix=_DISK_FULL_FIX)
    row = {
        "image": ref.name,
        "probability": repr(probability),
        "predicted_label": predicted,
        "threshold": repr(threshold),
        "logit": repr(logit),
        "temperature": repr(temperature),
        "true_label": "" if ref.label is None else ref.label,
        "source": ref.location,
        "overlay": f"overlays/{stem}.png",
        "heatmap": f"heatmaps/{stem}.npy",
    }
    if boxes is None:
        return row, None
    score = score_heatmap(heatmap, boxes, threshold=iou_threshold)
    loc = {
        "image": ref.name,
        "n_boxes": len(boxes),
        **score.as_dict(),
        "probability": f"{probability:.6f}",
        "true_label": row["true_label"],
        "_score": score,
    }
    return row, loc


_DISK_FULL_FIX = "free space there or choose another out_dir"


def _write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode(), fix=_DISK_FULL_FIX)


def _write_csv(path: Path, rows: Sequence[Mapping]) -> None:
    fields = list(rows[0]) if rows else ["image", "probability", "predicted_label", "threshold", "true_label"]
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
    _write_text(path, text.getvalue())


def write_box_list(path: Path, rows: Sequence[tuple]) -> None:
    """Write ``(image, finding, x, y, w, h)`` rows under NIH's ``BBox_List_2017.csv`` header (readable by
    ``pneumo.nih.boxes.BoxList``)."""
    text = io.StringIO(newline="")
    text.write(BBOX_HEADER + "\n")
    writer = csv.writer(text)
    for name, finding, *box in rows:
        writer.writerow([name, finding, *(repr(float(v)) for v in box)])
    _write_text(path, text.getvalue())


def format_summary(summary: Mapping) -> list[str]:
    """Human-readable lines of a localization summary (as printed by ``explain.py``)."""
    if not summary or not summary.get("n"):
        return []
    lo, hi = summary["hit_rate_ci95"]
    return [
        f"pointing game (hit rate): {summary['hit_rate']:.3f} (95% CI {lo:.3f}-{hi:.3f}) on {summary['n']} "
        f"image(s) with {summary.get('finding', '')} boxes, layer {summary.get('layer', '')}",
        f"random-point baseline: {summary['random_hit_rate']:.3f} -> Grad-CAM is "
        f"{summary['hit_rate_vs_random']:.1f}x random",
        f"mean IoU {summary['mean_iou']:.3f}, mean IoBB {summary['mean_iobb']:.3f}, IoBB >= 0.1 for "
        f"{summary['iobb_accuracy']:.3f} (heatmap >= {summary.get('iou_threshold', DEFAULT_THRESHOLD)})",
        *format_table(summary.get("wang") or {}),
    ]
