"""The pipeline behind ``explain.py``: checkpoint + images -> predictions, Grad-CAM overlays and heatmaps,
and localization scores wherever ground-truth boxes exist.

Outputs under ``out_dir``::

    predictions.csv             image, probability, predicted_label (at the model's threshold), true_label, ...
    boxes.csv                   heatmap regions as boxes in NIH's BBox_List_2017.csv layout (source pixels)
    overlays/<stem>.png         heatmap over the source X-ray (its own resolution, capped), ground-truth boxes
                                green, predicted boxes magenta, probability and labels in the caption
    heatmaps/<stem>.npy         float32 (S, S) in [0, 1], S = the checkpoint's input size
    localization.csv            per image with boxes: hit, iou, iobb, box_fraction, ...   (when boxes exist)
    summary.json                counts, unreadable inputs, the localization summary and Wang et al.'s table

Example:
    >>> result = explain_images(ckpt_path="last.ckpt", inputs="data/nih_demo/images", out_dir="out")  # doctest: +SKIP
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import pickle
import re
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
import torch
from tqdm.auto import tqdm

from pneumo.data.boxes import BoxList, scaled_to
from pneumo.data.decode import BadImageError
from pneumo.data.dicom import check_voi
from pneumo.data.findings import BBOX_HEADER, PNEUMONIA
from pneumo.data.index import NIHLabelIndex
from pneumo.data.splits import make_splits, read_image_list
from pneumo.data.storage import StorageSettings
from pneumo.data.store import absolute_location, location_exists, object_name
from pneumo.errors import ConfigError, PneumoError
from pneumo.models.classifier import PneumoniaClassifier
from pneumo.xai.gradcam import DEFAULT_LAYER, GradCam, pneumonia_probability
from pneumo.xai.heatmap_boxes import format_table, heatmap_boxes, localization_table
from pneumo.xai.inputs import (
    ImageRef,
    LoadedImage,
    Preprocessor,
    StorageOptions,
    load_image,
    options_for,
    resolve_inputs,
)
from pneumo.xai.localization import DEFAULT_THRESHOLD, score_heatmap, summarize
from pneumo.xai.overlay import caption_text, render_overlay, save_png

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


class CheckpointError(PneumoError, ValueError):
    """A checkpoint that is missing or does not hold a pneumo classifier; the message names it."""


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


# ---------------------------------------------------------------------------------------------- checkpoint
def load_classifier(
    ckpt_path: str, map_location: str | torch.device = "cpu", storage_options: StorageOptions = None
) -> tuple[PneumoniaClassifier, dict]:
    """Rebuild the classifier of a training checkpoint and return it (eval mode) with the data module's
    saved hyperparameters (image size, URLs, split settings).

    Loads with ``weights_only=True``: tensors and plain containers only, no pickled code runs.

    Raises:
        CheckpointError: the file is missing, not a checkpoint, or not a pneumo classifier's (one line).
    """
    location = absolute_location(str(ckpt_path))
    options = options_for(location, storage_options)
    if not location_exists(location, options):
        raise CheckpointError(
            f"checkpoint {ckpt_path} not found: set ckpt_path to a .ckpt written by train.py "
            "(logs/train/runs/<timestamp>/checkpoints/)"
        )
    try:
        with fsspec.open(location, "rb", **options) as fh:
            blob = torch.load(io.BytesIO(fh.read()), map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(err))
        what = f"it holds a {found.group(1)} object" if found else "it holds objects other than tensors"
        raise CheckpointError(
            f"checkpoint {ckpt_path} cannot be loaded safely with weights_only=True: {what}; "
            "only checkpoints from train.py (or a source you trust, re-saved as tensors) are accepted"
        ) from err
    except Exception as err:  # torch raises RuntimeError, KeyError, EOFError... for non-checkpoint bytes
        raise CheckpointError(
            f"checkpoint {ckpt_path} is not a PyTorch checkpoint ({type(err).__name__})"
        ) from err
    hp = blob.get("hyper_parameters") if isinstance(blob, Mapping) else None
    dhp = blob.get("datamodule_hyper_parameters") if isinstance(blob, Mapping) else None
    if not isinstance(hp, Mapping) or "net" not in hp or "state_dict" not in blob:
        raise CheckpointError(
            f"checkpoint {ckpt_path} is not a pneumo classifier checkpoint (no hyper_parameters.net/state_dict)"
        )
    if not isinstance(dhp, Mapping) or "image_size" not in dhp:
        raise CheckpointError(
            f"checkpoint {ckpt_path} lacks datamodule_hyper_parameters.image_size (not written by train.py)"
        )
    try:
        # The checkpoint holds the weights: pretrained is not read again (nor the retired init_weights key).
        rebuilt = {k: v for k, v in hp.items() if k != "init_weights"}
        model = PneumoniaClassifier(**{**rebuilt, "pretrained": None})
    except Exception as err:
        raise CheckpointError(f"checkpoint {ckpt_path}: its model cannot be rebuilt ({err})") from err
    try:
        missing, unexpected = model.load_state_dict(blob["state_dict"], strict=False)
    except RuntimeError as err:  # shape mismatches raise even with strict=False
        detail = next((ln.strip() for ln in str(err).splitlines() if "size mismatch" in ln), str(err)[:200])
        raise CheckpointError(
            f"checkpoint {ckpt_path} does not fit the classifier it describes: {detail}"
        ) from err
    if "threshold" in missing:  # checkpoints from before the operating-point buffer existed
        log.warning("checkpoint %s has no threshold; using %.2f", ckpt_path, float(model.threshold))
        missing = [k for k in missing if k != "threshold"]
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint {ckpt_path} does not fit the classifier it describes: "
            f"{len(missing)} missing tensor(s) {missing[:3]}, {len(unexpected)} unexpected {unexpected[:3]}"
        )
    return model.eval(), dict(dhp)


# ---------------------------------------------------------------------------------------------- inputs
def split_refs(dhp: Mapping, split: str, storage_options: StorageOptions = None) -> list[ImageRef]:
    """The images of one split of the checkpoint's data set, rebuilt from its saved settings."""
    if split not in SPLITS:
        raise ConfigError(f"split={split!r}: choose one of {list(SPLITS)}")
    so = lambda url: options_for(url, storage_options)  # noqa: E731
    index = NIHLabelIndex.from_csv(dhp["labels_url"], so(dhp["labels_url"]), views=dhp.get("views"))
    lists = dhp.get("split_lists") or {}
    parts = make_splits(
        index,
        train_val_list=read_image_list(lists["train_val"], so(lists["train_val"])) if lists else None,
        test_list=read_image_list(lists["test"], so(lists["test"])) if lists else None,
        val_fraction=float(dhp.get("val_fraction", 0.1)),
        test_fraction=float(dhp.get("test_fraction", 0.2)),
        seed=int(dhp.get("split_seed", 0)),
    ).as_dict()
    names = [str(x) for x in parts[split]]
    root, suffix = str(dhp["images_url"]).rstrip("/"), dhp.get("image_suffix")
    return [ImageRef(name, f"{root}/{object_name(name, suffix)}") for name in names]


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
    options = options_for(bbox_url, storage_options) if bbox_url else {}
    if not bbox_url or not location_exists(bbox_url, options):
        return 0
    boxes = BoxList.from_csv(bbox_url, options).subset(finding)
    known = {str(x): None for x in boxes.table["image"]}
    stems = _by_stem(known)
    for ref in refs:
        ref.boxes = boxes.for_image(_index_name(ref.name, known, stems))
    return sum(len(ref.boxes) > 0 for ref in refs)


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
    """
    if (inputs is None) == (split is None):
        raise ConfigError("give exactly one of inputs=PATH_OR_URL or split=train|val|test")
    dev = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device)
    given = {k: v for k, v in dict(storage or {}).items() if v is not None}
    model, dhp = load_classifier(ckpt_path, dev, StorageSettings.from_config(given).options_for)
    # checkpoints from before data.storage saved project / requester_pays at the top level
    saved = dhp.get("storage") or {k: dhp[k] for k in ("project", "requester_pays") if k in dhp}
    settings = StorageSettings.from_config({**dict(saved), **given})
    options = settings.options_for

    model.to(dev)
    threshold = float(model.threshold)
    image_size = int(dhp["image_size"])
    dicom_voi = check_voi(dhp.get("dicom_voi", "auto") if dicom_voi is None else dicom_voi, "dicom_voi")
    labels_url = dhp.get("labels_url") if labels_url is None else labels_url
    bbox_url = dhp.get("bbox_url") if bbox_url is None else bbox_url

    skipped: list[str] = []
    if split is not None:
        refs = split_refs(dhp, split, options)
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

    out = Path(out_dir)
    (out / "overlays").mkdir(parents=True, exist_ok=True)
    (out / "heatmaps").mkdir(parents=True, exist_ok=True)
    overlay = dict(overlay or {})
    max_size = int(overlay.pop("max_size", 1024))
    if max_size < 16:
        raise ValueError(f"overlay.max_size must be at least 16 px, got {max_size}")
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
                for j, (i, item) in enumerate(loaded):
                    heatmap = maps.heatmaps[j].cpu().numpy().astype(np.float32)
                    predicted = heatmap_boxes(heatmap, box_threshold, top_k, source_shape=item.source_shape)
                    predicted_boxes = np.array([b.box for b in predicted]).reshape(-1, 4)
                    row, score = _write_one(
                        item, stems[i], heatmap, predicted_boxes, float(probs[j]), threshold, out, overlay,
                        iou_threshold,
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
        "image_size": image_size,
        "localization": result.summary or None,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return result


def _write_one(
    item: LoadedImage,
    stem: str,
    heatmap: np.ndarray,
    predicted_boxes: np.ndarray,
    probability: float,
    threshold: float,
    out: Path,
    overlay: Mapping[str, Any],
    iou_threshold: float,
) -> tuple[dict, dict | None]:
    ref = item.ref
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
    np.save(out / "heatmaps" / f"{stem}.npy", heatmap)
    row = {
        "image": ref.name,
        "probability": f"{probability:.6f}",
        "predicted_label": predicted,
        "threshold": f"{threshold:.6f}",
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


def _write_csv(path: Path, rows: Sequence[Mapping]) -> None:
    fields = list(rows[0]) if rows else ["image", "probability", "predicted_label", "threshold", "true_label"]
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def write_box_list(path: Path, rows: Sequence[tuple]) -> None:
    """Write ``(image, finding, x, y, w, h)`` rows under NIH's ``BBox_List_2017.csv`` header (readable by
    ``pneumo.data.boxes.BoxList``)."""
    with open(path, "w", newline="") as fh:
        fh.write(BBOX_HEADER + "\n")
        writer = csv.writer(fh)
        for name, finding, *box in rows:
            writer.writerow([name, finding, *(repr(float(v)) for v in box)])


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
