"""The pipeline behind ``explain.py``: checkpoint + images -> predictions, Grad-CAM overlays and heatmaps,
and localization scores wherever ground-truth boxes exist.

Outputs under ``out_dir``::

    predictions.csv             image, probability (at the model's temperature), predicted_label (at its threshold),
                                threshold, logit (raw pneumonia logit), temperature, true_label, ...
    boxes.csv                   heatmap regions as boxes in NIH's BBox_List_2017.csv layout (source pixels)
    index.html                  the gallery: one row per image (original, overlay, boxes, probability, decision,
                                label, localization), sortable and filterable; self-contained (pneumo.reporting.gallery)
    originals/<stem>.png        the source X-ray as shown in the gallery (its own width, capped)
    overlays/<stem>.png         heatmap over the source X-ray (its own resolution, capped), ground-truth boxes
                                green, predicted boxes magenta, probability and labels in the caption
    heatmaps/<stem>.npy         float32 (S, S) in [0, 1], S = the checkpoint's input size (the first explainer)
    heatmaps/<name>/<stem>.npy  the same for each further explainer (``explainer=[gradcam,integrated_gradients]``:
                                its overlay then shows the explainers side by side)
    localization.csv            per image with boxes: hit, iou, iobb, box_fraction, ...   (when boxes exist)
    summary.json                counts, unreadable inputs, the localization summary and Wang et al.'s table
    saliency.md / .json         with saliency.evaluate=true: per explainer the sanity verdict, deletion/insertion
    sanity.png                  AUCs vs random order, CheXlocalize mIoU and hit rate, lung-field share, ms/image

Every file is written whole (a temporary file renamed over it) and ``summary.json`` is written last: a folder
without it holds an interrupted run. A folder that already holds these outputs is refused unless
``overwrite=True``, which deletes them (``summary.json`` first) before anything new is written, so old and
new outputs never sit side by side.

Example:
    >>> settings = ExplainSettings(ckpt_path="last.ckpt", inputs="data/nih_demo/images", out_dir="out")
    >>> result = explain_images(settings)  # doctest: +SKIP
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig
from tqdm.auto import tqdm

from pneumo.config import checked_number, choice, settings_from, to_plain
from pneumo.data.datamodule import SPLITS
from pneumo.data.inputs import (
    ImageRef,
    LoadedImage,
    Preprocessor,
    StorageOptions,
    io_for,
    load_image,
    options_for,
    read_bytes,
    resolve_inputs,
)
from pneumo.errors import ConfigError
from pneumo.images.decode import BadImageError
from pneumo.images.dicom import check_voi
from pneumo.io.bigquery import is_bigquery
from pneumo.io.files import atomic_write_bytes
from pneumo.io.files import prepare_out_dir as prepare_folder
from pneumo.io.storage import StorageSettings
from pneumo.io.store import location_exists
from pneumo.models.classifier import PneumoniaClassifier
from pneumo.nih.boxes import load_boxes, scaled_to
from pneumo.nih.findings import BBOX_HEADER, PNEUMONIA
from pneumo.nih.index import NIHLabelIndex
from pneumo.nih.references import Reference, load_reference, reference_spec
from pneumo.nih.tables import read_label_table
from pneumo.pipelines.runs import Run, load_run
from pneumo.pipelines.saliency import Batch, SaliencySettings, lung_masks, saliency_report, write_saliency
from pneumo.reporting.gallery import write_gallery
from pneumo.reporting.saliency import warnings
from pneumo.xai.explainers import Explanation, GradCamExplainer, explain, instantiate_explainers
from pneumo.xai.gradcam import DEFAULT_LAYER, pneumonia_probability
from pneumo.xai.heatmap_boxes import format_table, heatmap_boxes, localization_table
from pneumo.xai.localization import DEFAULT_THRESHOLD, score_heatmap, summarize
from pneumo.xai.overlay import MIN_WIDTH, caption_text, make_grid, render_overlay, save_png
from pneumo.xai.reference_boxes import (
    ReferenceHit,
    format_by_reference,
    score_references,
    summarize_references,
)

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
    #: per box reference, its scored images (``pneumo.xai.reference_boxes``)
    reference_hits: dict[str, list[ReferenceHit]] = field(default_factory=dict)
    #: image name -> {reference: number of its boxes drawn} (the gallery's reference boxes column)
    box_counts: dict[str, dict[str, int]] = field(default_factory=dict)
    #: the explainers' names, in the overlays' left-to-right order
    explainers: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------- inputs
def _by_stem(names: Iterable[object]) -> dict[str, str]:
    """Index names by their stem, so that ``x.dcm`` (the bucket's ``dicom/`` copy) finds the labels of ``x.png``."""
    return {os.path.splitext(str(name))[0]: str(name) for name in names}


def _index_name(name: str, known: Mapping, stems: Mapping[str, str]) -> str:
    """``name`` if the index knows it, else the index name with the same stem (``name`` when none)."""
    return name if name in known else stems.get(os.path.splitext(name)[0], name)


def read_label_index(labels_url: str | None, storage_options: StorageOptions) -> pd.DataFrame | None:
    """The label index's table (a ``Data_Entry`` CSV read with the session's storage settings, or a ``bq://``
    table read as training reads it: ``pneumo.nih.tables.read_label_table``); ``None`` without one."""
    if labels_url and is_bigquery(labels_url):
        storage = storage_options if isinstance(storage_options, StorageSettings) else None
        return read_label_table(labels_url, storage)[0].table
    options, io = (options_for(labels_url, storage_options) if labels_url else {}), io_for(storage_options)
    if not labels_url or not location_exists(labels_url, options, io):
        return None
    return NIHLabelIndex.from_csv(labels_url, options, io=io).table


def attach_labels(refs: Sequence[ImageRef], table: pd.DataFrame | None) -> int:
    """Set ``ref.label`` from a label index's table (``read_label_index``), matched by file name; returns how
    many were found."""
    if table is None:
        return 0
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
    options = options_for(bbox_url, storage_options) if bbox_url else None
    storage = storage_options if isinstance(storage_options, StorageSettings) else None
    boxes = load_boxes(bbox_url, options, io_for(storage_options), storage)
    if boxes is None:
        return 0
    known = {str(x): None for x in boxes.table["image"]}
    stems = _by_stem(known)
    for ref in refs:
        ref.boxes = boxes.for_image(_index_name(ref.name, known, stems), finding)
    return sum(len(ref.boxes) > 0 for ref in refs)


#: What ``explain_images`` writes into ``out_dir``; ``summary.json`` first: deleting it marks a folder incomplete.
OUTPUTS = (
    "summary.json",
    "predictions.csv",
    "boxes.csv",
    "localization.csv",
    "index.html",
    "originals",
    "overlays",
    "heatmaps",
    "saliency.json",
    "saliency.md",
    "sanity.png",
)


def prepare_out_dir(out_dir: str | os.PathLike, overwrite: bool = False) -> Path:
    """Make ``out_dir`` ready for a run: written-to, created; refused (``ConfigError``) when it holds the
    outputs of an earlier run, unless ``overwrite``, which deletes those outputs (and only those)."""
    if overwrite and any(os.path.lexists(Path(out_dir) / name) for name in OUTPUTS):
        log.warning("overwrite=true: deleting the earlier explain outputs in %s", out_dir)
    out = prepare_folder(out_dir, OUTPUTS, overwrite, "explain")
    (out / "overlays").mkdir(parents=True, exist_ok=True)
    (out / "heatmaps").mkdir(parents=True, exist_ok=True)
    (out / "originals").mkdir(parents=True, exist_ok=True)
    return out


def _stems(refs: Sequence[ImageRef]) -> list[str]:
    """Output file stems: the image's stem, made unique with ``_2``, ``_3``... when names repeat."""
    seen: dict[str, int] = {}
    out = []
    for ref in refs:
        stem = os.path.splitext(ref.name)[0] or "image"
        seen[stem] = seen.get(stem, 0) + 1
        out.append(stem if seen[stem] == 1 else f"{stem}_{seen[stem]}")
    return out


# ---------------------------------------------------------------------------------------------- settings
@dataclass
class GradCamSettings:
    """``gradcam:`` of ``conf/explain.yaml``: the explained ``layer`` (relative to the network) and
    ``target`` (``pneumonia``, ``predicted`` or an output index; see ``pneumo.xai.gradcam``)."""

    layer: str = DEFAULT_LAYER
    target: int | str = "pneumonia"


@dataclass
class LocalizationSettings:
    """``localization:``: the ``finding`` whose boxes are the ground truth, and the heatmap level
    (``threshold``, of its [0, 1] range) above which a pixel counts as highlighted for IoU / IoBB."""

    finding: str = PNEUMONIA
    threshold: float = DEFAULT_THRESHOLD

    def __post_init__(self) -> None:
        self.threshold = float(checked_number(self.threshold, "localization.threshold", float, 0, 1))


@dataclass
class BoxSettings:
    """``boxes:``: ``boxes.csv`` holds the ``top_k`` regions (by heat mass) of each heatmap at or above
    ``threshold``; they are scored against ground-truth boxes (Wang et al. 2017)."""

    threshold: float = DEFAULT_THRESHOLD
    top_k: int = 1

    def __post_init__(self) -> None:
        self.threshold = float(checked_number(self.threshold, "boxes.threshold", float, 0, 1))
        self.top_k = int(checked_number(self.top_k, "boxes.top_k", int, 1))


@dataclass
class OverlaySettings:
    """``overlay:``: overlays are drawn on the source image at its own width, at most ``max_size`` pixels,
    with the heatmap at opacity ``alpha`` in the matplotlib colormap ``cmap``."""

    max_size: int = 1024
    alpha: float = 0.45
    cmap: str = "jet"

    def __post_init__(self) -> None:
        self.max_size = int(checked_number(self.max_size, "overlay.max_size", int, 16))
        self.alpha = float(checked_number(self.alpha, "overlay.alpha", float, 0, 1))


@dataclass
class ExplainSettings:
    """Everything an explain run needs: the keys of ``conf/explain.yaml``, checked once.

    Build it from the config with ``ExplainSettings.from_config(cfg)`` or in Python with keywords; either way
    a value that cannot work is a one-line ``ConfigError`` naming its key.

    Attributes:
        ckpt_path: training checkpoint (``.ckpt``), local or URL.
        out_dir: output folder (created).
        inputs: an image, a folder, or a ``.txt`` list of paths/URLs; or ``None`` with ``split``.
        split: ``train``/``val``/``test`` of the checkpoint's data set instead of ``inputs``.
        overwrite: delete the outputs of an earlier run in ``out_dir`` instead of refusing the folder.
        gradcam: the explained layer and class (the target of every explainer).
        explainer: ``{name: spec}`` of the explainers (``conf/explainer/*.yaml``, Hydra ``_target_`` specs or
            explainer objects); ``None`` = Grad-CAM of ``gradcam.layer``. The first one's maps are the
            heatmaps, boxes and localization scores; every one is drawn in the overlays.
        batch_size: images per Grad-CAM batch.
        num_workers: threads reading images (they may be remote objects).
        device: ``auto`` (CUDA if available), ``cpu``, ``cuda``, ``cuda:1``...
        labels_url: label index for true labels; ``None`` = the checkpoint's, ``""`` = none.
        bbox_url: box file for localization; ``None`` = the checkpoint's, ``""`` = none.
        localization: ground-truth finding and heatmap level of IoU / IoBB.
        references: the box references scored and drawn (``eval.references`` entries: ``nih``, ``rsna``, a
            mapping for your own file; those without boxes are left out); the data set's files are the
            checkpoint's ``data.references``.
        boxes: the predicted boxes of ``boxes.csv``.
        dicom_voi: grey levels of DICOM inputs (``auto``, ``window``, ``full-range``); ``None`` = the
            checkpoint's ``data.images.dicom_voi`` (``auto`` for checkpoints from before it existed).
        overlay: size, opacity and colormap of the overlay pictures.
        storage: ``StorageSettings`` keys (``project``, ``requester_pays``, ``token``, ``options``, I/O limits)
            that replace the checkpoint's ``data.storage``; ``None`` values keep the checkpoint's. Credentials:
            Application Default Credentials, or a token in ``$PNEUMO_GCS_TOKEN`` (never in a config).
        progress: show a progress bar.
        saliency: the saliency checks (``saliency.evaluate=true``; ``pneumo.pipelines.saliency``).
        heatmaps: ``False``: predictions only, through Lightning's ``Trainer.predict`` on every process of
            ``predict`` (``pneumo.pipelines.batch_predict``: one ``predictions.csv``, each image once, in input
            order; no heatmaps, overlays, boxes or gallery), for tens of thousands of images.
        predict: ``lightning.Trainer`` keyword arguments of ``heatmaps=False`` (``accelerator``, ``devices``,
            ``strategy``, ``precision``...); ``None`` = one process on ``device``.

    Example:
        >>> ExplainSettings(ckpt_path="last.ckpt", out_dir="out", split="test").boxes.top_k
        1
        >>> ExplainSettings(ckpt_path="last.ckpt", out_dir="out", split="tset")
        Traceback (most recent call last):
        ...
        pneumo.errors.ConfigError: split='tset': choose one of 'train', 'val', 'test' (did you mean 'test'?)
    """

    ckpt_path: str
    out_dir: str
    inputs: str | None = None
    split: str | None = None
    overwrite: bool = False
    gradcam: GradCamSettings = field(default_factory=GradCamSettings)
    explainer: dict[str, Any] | None = None
    batch_size: int = 32
    num_workers: int = 8
    device: str = "auto"
    labels_url: str | None = None
    bbox_url: str | None = None
    localization: LocalizationSettings = field(default_factory=LocalizationSettings)
    references: list[str | dict] = field(default_factory=lambda: ["nih", "rsna"])
    boxes: BoxSettings = field(default_factory=BoxSettings)
    dicom_voi: str | None = None
    overlay: OverlaySettings = field(default_factory=OverlaySettings)
    storage: dict[str, Any] | None = None
    progress: bool = True
    saliency: SaliencySettings = field(default_factory=SaliencySettings)
    heatmaps: bool = True
    predict: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        # sub-blocks given as mappings (``overlay={"max_size": 1200}``) are checked like the config's
        for name in ("gradcam", "localization", "boxes", "overlay", "saliency"):
            setattr(self, name, settings_from(_BLOCKS[name], getattr(self, name), name))
        if (self.inputs is None) == (self.split is None):
            raise ConfigError("give exactly one of inputs=PATH_OR_URL or split=train|val|test")
        if self.split is not None:
            choice(self.split, "split", SPLITS)
        self.ckpt_path, self.out_dir = str(self.ckpt_path), str(self.out_dir)
        self.batch_size = int(checked_number(self.batch_size, "batch_size", int, 1))
        self.num_workers = int(checked_number(self.num_workers, "num_workers", int, 0))
        self.torch_device()  # a bad device name fails here, before the checkpoint is read
        if self.dicom_voi is not None:
            check_voi(self.dicom_voi, "dicom_voi")
        self.storage = dict(to_plain(self.storage)) if self.storage is not None else None
        self.heatmaps = bool(choice(self.heatmaps, "heatmaps", (True, False)))
        self.predict = dict(to_plain(self.predict)) if self.predict else None
        self.explainer = dict(to_plain(self.explainer)) if self.explainer else None
        self.references = [r if isinstance(r, str) else dict(r) for r in (to_plain(self.references) or [])]
        for entry in self.references:
            reference_spec(entry)  # an unknown name or key fails here

    def explainers(self) -> dict[str, Any]:
        """``{name: explainer}``: the ``explainer`` specs instantiated, or Grad-CAM of ``gradcam.layer``."""
        if not self.explainer:
            return {"gradcam": GradCamExplainer(layer=self.gradcam.layer, batch_size=self.batch_size)}
        return instantiate_explainers(self.explainer)

    @classmethod
    def from_config(cls, cfg: Mapping | DictConfig) -> ExplainSettings:
        """The settings of an ``explain.py`` config (``conf/explain.yaml``); its other keys (``task_name``,
        ``paths``, ``hydra``) are not the pipeline's and are left out."""
        plain = to_plain(cfg)
        return settings_from(cls, {k: v for k, v in plain.items() if k not in _NOT_SETTINGS})

    def torch_device(self) -> torch.device:
        """``auto`` (CUDA when available), ``cpu``, ``cuda``, ``cuda:1``...; a ConfigError for anything else."""
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        try:
            return torch.device(self.device)
        except (RuntimeError, TypeError) as err:
            raise ConfigError(
                f"device={self.device!r} is not a device: use auto, cpu, cuda or cuda:N"
            ) from err


_BLOCKS: dict[str, type] = {
    "gradcam": GradCamSettings,
    "localization": LocalizationSettings,
    "boxes": BoxSettings,
    "overlay": OverlaySettings,
    "saliency": SaliencySettings,
}
#: Keys of ``conf/explain.yaml`` that are the command's, not the pipeline's (any other key is a setting).
_NOT_SETTINGS = {"task_name", "paths", "hydra"}


# ---------------------------------------------------------------------------------------------- pipeline
@dataclass
class _Session:
    """The rebuilt run and what every image of an explain run shares."""

    settings: ExplainSettings
    out: Path
    device: torch.device
    run: Run
    options: StorageOptions  # the run's StorageSettings: the fsspec options of each URL, the I/O limits
    dicom_voi: str
    labels_url: str | None
    bbox_url: str | None
    #: per box reference (other than nih, whose boxes are ``ImageRef.boxes``): image name -> boxes (source px)
    reference_boxes: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    #: image name -> patient (the pointing game's bootstrap clusters)
    patients: dict[str, Any] = field(default_factory=dict)
    #: per box reference, its citation (kept with its pointing game in ``summary.json``)
    citations: dict[str, str] = field(default_factory=dict)

    @property
    def model(self) -> PneumoniaClassifier:
        return self.run.model

    @property
    def threshold(self) -> float:
        return float(self.run.model.threshold)

    @property
    def temperature(self) -> float:
        return float(self.run.model.temperature)


def explain_images(settings: ExplainSettings) -> ExplainResult:
    """Explain every input image; see the module docstring for what is written.

    Example:
        >>> settings = ExplainSettings(ckpt_path="last.ckpt", out_dir="out", inputs="images")  # doctest: +SKIP
        >>> explain_images(settings).predictions[0]["probability"]  # doctest: +SKIP
    """
    if not settings.heatmaps:
        return predict_only(settings)
    out = prepare_out_dir(settings.out_dir, settings.overwrite)
    session = open_session(settings, out)
    refs = image_refs(session)
    result = ExplainResult(out_dir=str(out))
    wang = _explain_all(session, refs, result)
    _write_predictions(session, result)
    if result.localization:
        result.summary = _localization_summary(settings, result, wang)
    if result.reference_hits:
        citations = session.citations  # nih's boxes: the box file's own (NIH's attribution is the data's)
        result.summary = {
            **result.summary,
            "references": summarize_references(result.reference_hits, top_k=settings.boxes.top_k),
            # the sources of the boxes scored: RSNA's attribution goes wherever its boxes are used
            "attribution": {n: citations[n] for n in result.reference_hits if citations.get(n)},
        }
    write_gallery(
        out,
        result.predictions,
        result.localization,
        session.threshold,
        title=str(out.name),
        boxes=result.box_counts,
        explainers=result.explainers,
    )
    summary = {
        "checkpoint": settings.ckpt_path,
        "images": len(refs),
        "explained": len(result.predictions),
        "failed": [{"image": loc, "error": err} for loc, err in result.failed],
        "threshold": session.threshold,
        "temperature": session.temperature,
        "image_size": session.run.image_size,
        "localization": result.summary or None,
    }
    if settings.saliency.evaluate:
        summary["saliency"] = _saliency(session, refs)
    # Last: its presence says the folder holds a whole run.
    _write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    return result


def predict_only(settings: ExplainSettings) -> ExplainResult:
    """``heatmaps=false``: the probabilities of every input through ``Trainer.predict`` on every process of
    ``settings.predict`` (``batch_predict.predict_images``), written to ``predictions.csv`` (``index``,
    ``image``, ``probability``, ``logit``, ``predicted_label``, ``threshold``, ``temperature``) and
    ``summary.json`` by the first process; returns them as ``ExplainResult.predictions``."""
    from lightning.pytorch.utilities import rank_zero_only

    from pneumo.pipelines.batch_predict import predict_images

    out = prepare_folder(settings.out_dir, OUTPUTS, settings.overwrite, "explain")
    device = settings.torch_device()
    trainer = settings.predict or {
        "accelerator": "gpu" if device.type == "cuda" else "cpu",
        **({"devices": [device.index]} if device.type == "cuda" and device.index is not None else {}),
    }
    path = predict_images(
        settings.ckpt_path,
        settings.inputs,
        out,
        trainer={"enable_progress_bar": settings.progress, **trainer},
        batch_size=settings.batch_size,
        num_workers=settings.num_workers,
        split=settings.split,
        storage=settings.storage,
    )
    result = ExplainResult(out_dir=str(out))
    if getattr(rank_zero_only, "rank", 0) != 0:  # rank 0 merged the file and writes the summary
        return result
    with open(path, newline="") as fh:
        result.predictions = list(csv.DictReader(fh))
    first = result.predictions[0] if result.predictions else {}
    summary = {
        "checkpoint": settings.ckpt_path,
        "mode": "predictions only (heatmaps=false, Trainer.predict)",
        "images": len(result.predictions),
        "explained": 0,
        "threshold": float(first["threshold"]) if first else None,
        "temperature": float(first["temperature"]) if first else None,
    }
    _write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    return result


def open_session(settings: ExplainSettings, out: Path) -> _Session:
    """Rebuild the checkpoint's run on the device; settings left ``None`` take the checkpoint's values."""
    device = settings.torch_device()
    run = load_run(settings.ckpt_path, storage=settings.storage, map_location=device, storage_key="storage")
    run.model.to(device)
    saved = run.datamodule.hparams
    return _Session(
        settings=settings,
        out=out,
        device=device,
        run=run,
        options=run.storage,
        dicom_voi=check_voi(
            run.datamodule.image_settings.dicom_voi if settings.dicom_voi is None else settings.dicom_voi
        ),
        labels_url=saved.get("labels_url") if settings.labels_url is None else settings.labels_url,
        bbox_url=saved.get("bbox_url") if settings.bbox_url is None else settings.bbox_url,
    )


def image_refs(session: _Session) -> list[ImageRef]:
    """The images to explain (``inputs``, or the run's ``split`` with the images it left out still left
    out), with their true labels and ground-truth boxes where the label index and box file have them."""
    settings, run = session.settings, session.run
    skipped: list[str] = []
    if settings.split is not None:
        # The split as the run used it: the same images left out as missing or bad (data.images.on_missing=skip).
        refs = [
            ImageRef(name, run.image_location(name)) for name in run.datamodule.split_images(settings.split)
        ]
    else:
        run.storage.probe(str(settings.inputs))  # an unreachable endpoint fails here, in one line
        refs, skipped = resolve_inputs(str(settings.inputs), session.options)
    if skipped:
        log.warning(
            "skipped %d file(s) that are not images by name: %s", len(skipped), ", ".join(skipped[:10])
        )
    finding = settings.localization.finding
    table = read_label_index(session.labels_url, session.options)
    n_labels = attach_labels(refs, table)
    n_boxes = attach_boxes(refs, session.bbox_url, finding, session.options)
    attach_reference_boxes(session, refs, table)
    log.info(
        "%d image(s) at %d px; true labels for %d, %s boxes for %d; model threshold %.3f; Grad-CAM layer %s",
        len(refs), run.image_size, n_labels, finding, n_boxes, session.threshold, settings.gradcam.layer,
    )  # fmt: skip
    return refs


def attach_reference_boxes(session: _Session, refs: Sequence[ImageRef], table: pd.DataFrame | None) -> None:
    """The boxes of every box reference other than ``nih`` for the images it covers (its coverage rule, with
    the images' patient, view, sex and age from the label index's ``table``), and each image's patient."""
    if table is None:
        return
    meta = table[["image", "patient", "view", "sex", "age"]]
    frame = meta[meta["image"].isin({ref.name for ref in refs})]
    session.patients = dict(zip(frame["image"], frame["patient"]))
    files = session.run.datamodule.hparams.get("references") or {}
    for entry in session.settings.references:
        if (entry if isinstance(entry, str) else entry.get("name")) == "nih":
            continue
        reference: Reference = load_reference(entry, files)
        if reference.boxes is None:
            continue
        session.citations[reference.name] = reference.citation
        covered = frame["image"].to_numpy()[reference.covers(frame)[0]]
        session.reference_boxes[reference.name] = {str(x): reference.boxes_for(str(x)) for x in covered}
        log.info(
            "%s boxes for %d image(s)",
            reference.name,
            sum(len(b) > 0 for b in session.reference_boxes[reference.name].values()),
        )


def _explain_all(session: _Session, refs: Sequence[ImageRef], result: ExplainResult) -> tuple[list, list]:
    """Read and explain ``refs`` batch by batch (images read in threads), writing each image's overlay and
    heatmap; returns the predicted and ground-truth boxes of the images with ground truth (Wang's table)."""
    settings = session.settings
    explainers = settings.explainers()
    result.explainers = list(explainers)
    for name in list(explainers)[1:]:
        (session.out / "heatmaps" / name).mkdir(parents=True, exist_ok=True)
    preprocess = Preprocessor(
        session.run.image_size, display_size=settings.overlay.max_size, dicom_voi=session.dicom_voi
    )
    wang: tuple[list, list] = ([], [])
    stems = _stems(refs)

    def _load(i: int) -> tuple[int, LoadedImage | None, str | None]:
        try:
            return i, load_image(refs[i], preprocess, session.options), None
        except (BadImageError, OSError, ValueError, RuntimeError) as err:
            return i, None, str(err).splitlines()[0] if str(err) else type(err).__name__

    size = settings.batch_size
    bar = tqdm(total=len(refs), desc="explain", unit="img", disable=not settings.progress, dynamic_ncols=True)
    with ThreadPoolExecutor(max_workers=max(1, settings.num_workers)) as pool:
        for start in range(0, len(refs), size):
            loaded = []
            for i, item, error in pool.map(_load, range(start, min(start + size, len(refs)))):
                if item is None:
                    log.error("cannot read %s: %s", refs[i].location, error)
                    result.failed.append((refs[i].location, error or "unreadable"))
                else:
                    loaded.append((stems[i], item))
            if loaded:
                _explain_batch(session, explainers, loaded, result, wang)
            bar.update(min(size, len(refs) - start))
    bar.close()
    return wang


def _explain_batch(
    session: _Session,
    explainers: Mapping[str, Any],
    loaded: Sequence[tuple[str, LoadedImage]],
    result: ExplainResult,
    wang: tuple[list, list],
) -> None:
    """The explainers' maps of one batch of read images; each image's outputs written and its rows added to
    ``result`` (the first explainer's maps give the heatmaps, boxes and localization scores)."""
    settings, model = session.settings, session.model
    batch = torch.stack([item.tensor for _, item in loaded]).to(session.device)
    target = settings.gradcam.target
    explained: dict[str, Explanation] = {
        name: explain(e, model, batch, target) for name, e in explainers.items()
    }
    first = next(iter(explained.values()))
    probs = pneumonia_probability(model, first.logits)
    logits = model.pneumonia_logit(first.logits)
    for j, (stem, item) in enumerate(loaded):
        maps = {name: e.maps[j].cpu().numpy().astype(np.float32) for name, e in explained.items()}
        heatmap = next(iter(maps.values()))
        predicted = heatmap_boxes(
            heatmap, settings.boxes.threshold, settings.boxes.top_k, source_shape=item.source_shape
        )
        predicted_boxes = np.array([b.box for b in predicted]).reshape(-1, 4)
        scores = (float(probs[j]), float(logits[j]), session.temperature)
        row, score = _write_one(item, stem, maps, predicted_boxes, scores, session)
        result.predictions.append(row)
        finding = settings.localization.finding
        result.boxes += [(item.ref.name, finding, *map(float, b)) for b in predicted_boxes]
        if len(item.ref.boxes):
            wang[0].append(predicted_boxes)
            wang[1].append(item.ref.boxes)
        if score is not None:
            result.localization.append(score)
        counts = {"nih": len(item.ref.boxes)} | {
            n: len(b) for n, b in _boxes_by_reference(session, item).items()
        }
        result.box_counts[item.ref.name] = {n: c for n, c in counts.items() if c}
        for name, hit in _reference_hits(session, item, heatmap).items():
            result.reference_hits.setdefault(name, []).append(hit)


def _boxes_by_reference(session: _Session, item: LoadedImage) -> dict[str, np.ndarray]:
    """Each box reference's boxes of one image, source pixels (``nih``: the run's box file)."""
    out = {"nih": item.ref.boxes} if _uses_nih(session) else {}
    for name, boxes in session.reference_boxes.items():
        out[name] = boxes.get(item.ref.name, np.zeros((0, 4)))
    return out


def _uses_nih(session: _Session) -> bool:
    return any((e if isinstance(e, str) else e.get("name")) == "nih" for e in session.settings.references)


def _reference_hits(session: _Session, item: LoadedImage, heatmap: np.ndarray) -> dict[str, ReferenceHit]:
    """One heatmap scored against each box reference that boxes its image (heatmap pixels)."""
    settings = session.settings
    scaled = {
        name: scaled_to(boxes, item.source_shape, heatmap.shape)
        for name, boxes in _boxes_by_reference(session, item).items()
        if len(boxes)
    }
    patient = session.patients.get(item.ref.name, item.ref.name)
    return score_references(heatmap, scaled, patient, settings.localization.threshold, settings.boxes.top_k)


def _saliency(session: _Session, refs: Sequence[ImageRef]) -> dict:
    """The saliency checks (``pneumo.pipelines.saliency``) on up to ``saliency.n`` of the images (pneumonia
    first), written as ``saliency.md`` / ``.json`` and ``sanity.png``; returns each explainer's row for
    ``summary.json``."""
    settings = session.settings
    preprocess = Preprocessor(session.run.image_size, dicom_voi=session.dicom_voi)
    items: list[LoadedImage] = []
    for ref in sorted(refs, key=lambda r: r.label != 1):  # stable: positives first, then in order
        if len(items) == settings.saliency.n:
            break
        try:
            items.append(load_image(ref, preprocess, session.options))
        except (BadImageError, OSError, ValueError, RuntimeError):
            continue  # already reported by the main loop
    if len(items) < 2:
        log.warning("saliency.evaluate: %d readable image(s); the checks need 2 or more", len(items))
        return {}
    size = (session.run.image_size, session.run.image_size)
    boxes: dict[str, list[np.ndarray]] = {}
    for j, item in enumerate(items):
        for name, given in _boxes_by_reference(session, item).items():
            per_image = boxes.setdefault(name, [np.zeros((0, 4))] * len(items))
            per_image[j] = scaled_to(given, item.source_shape, size) if len(given) else np.zeros((0, 4))
    batch = Batch(
        images=torch.stack([it.tensor for it in items]).to(session.device),
        labels=np.array([-1 if it.ref.label is None else it.ref.label for it in items]),
        boxes=boxes,
        patients=[str(session.patients.get(it.ref.name, it.ref.name)) for it in items],
        lungs=lung_masks(
            [it.ref.location for it in items], size[0], lambda url: read_bytes(url, session.options)
        ),
    )
    report = saliency_report(
        session.model, batch, settings.explainers(), settings.gradcam.target, settings.saliency
    )
    write_saliency(session.out, report)
    for line in warnings(report["explainers"]):
        log.warning("saliency: %s", line[2:].replace("**", ""))
    return report["explainers"]


def _write_predictions(session: _Session, result: ExplainResult) -> None:
    """``predictions.csv``, ``boxes.csv`` and (when some image has ground truth) ``localization.csv``."""
    _write_csv(session.out / "predictions.csv", result.predictions)
    write_box_list(session.out / "boxes.csv", result.boxes)
    if result.localization:
        _write_csv(session.out / "localization.csv", [
            {k: v for k, v in row.items() if k != "_score"} for row in result.localization
        ])  # fmt: skip


def _localization_summary(settings: ExplainSettings, result: ExplainResult, wang: tuple[list, list]) -> dict:
    """The pointing game and IoU / IoBB summary of the scored images, with Wang et al.'s table."""
    scores = [row.pop("_score") for row in result.localization]
    summary = summarize(scores)
    summary.update(
        {
            "layer": settings.gradcam.layer,
            "iou_threshold": settings.localization.threshold,
            "finding": settings.localization.finding,
        }
    )
    table = localization_table(*wang)
    table.update({"top_k": settings.boxes.top_k, "box_threshold": settings.boxes.threshold})
    summary["wang"] = {k: v for k, v in table.items() if not k.startswith("best_")}
    return summary


def _write_one(
    item: LoadedImage,
    stem: str,
    maps: Mapping[str, np.ndarray],
    predicted_boxes: np.ndarray,
    scores: tuple[float, float, float],
    session: _Session,
) -> tuple[dict, dict | None]:
    """Write one image's overlay (the explainers side by side) and heatmaps; its ``predictions.csv`` row and,
    when it has ground-truth boxes, its ``localization.csv`` row (with the ``LocalizationScore`` under ``_score``)."""
    threshold, out, overlay = session.threshold, session.out, session.settings.overlay
    ref = item.ref
    heatmap = next(iter(maps.values()))
    probability, logit, temperature = scores
    predicted = int(probability >= threshold)
    boxes = scaled_to(ref.boxes, item.source_shape, heatmap.shape) if len(ref.boxes) else None
    drawn = {k: v for k, v in _boxes_by_reference(session, item).items() if len(v) and k != "nih"}
    caption_tail = caption_text(probability, predicted, ref.label)  # the box legend is drawn under it
    display = item.display  # the source pixels at their own width, capped at overlay.max_size
    assert display is not None  # the session's Preprocessor keeps a display copy (display_size is set)
    shown = display.shape
    tiles = []
    for k, (name, heat) in enumerate(maps.items()):
        title = ref.name if len(maps) == 1 else f"{ref.name} - {name}"
        tiles.append(render_overlay(
            display,
            heat,
            boxes=scaled_to(ref.boxes, item.source_shape, shown) if len(ref.boxes) else None,
            predicted_boxes=scaled_to(predicted_boxes, item.source_shape, shown) if k == 0 else None,
            reference_boxes=[(n, scaled_to(b, item.source_shape, shown)) for n, b in drawn.items()],
            caption=f"{title}\n{caption_tail}",
            size=max(shown[1], MIN_WIDTH),
            predicted=predicted,
            alpha=overlay.alpha,
            cmap=overlay.cmap,
        ))  # fmt: skip
    save_png(make_grid(tiles, ncols=len(tiles), pad=0), out / "overlays" / f"{stem}.png")
    save_png(display, out / "originals" / f"{stem}.png")  # the gallery's original (index.html)
    for k, (name, heat) in enumerate(maps.items()):
        buffer = io.BytesIO()
        np.save(buffer, heat)
        path = out / "heatmaps" / (f"{stem}.npy" if k == 0 else f"{name}/{stem}.npy")
        atomic_write_bytes(path, buffer.getvalue(), fix=_DISK_FULL_FIX)
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
    score = score_heatmap(heatmap, boxes, threshold=session.settings.localization.threshold)
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
    by_reference = format_by_reference(summary.get("references") or {}) if summary else []
    if summary and summary.get("attribution"):
        by_reference += [f"boxes of {n}: {c}" for n, c in summary["attribution"].items()]
    if not summary or not summary.get("n"):
        return by_reference
    lo, hi = summary["hit_rate_ci95"]
    return [
        f"pointing game (hit rate): {summary['hit_rate']:.3f} (95% CI {lo:.3f}-{hi:.3f}) on {summary['n']} "
        f"image(s) with {summary.get('finding', '')} boxes, layer {summary.get('layer', '')}",
        f"random-point baseline: {summary['random_hit_rate']:.3f} -> Grad-CAM is "
        f"{summary['hit_rate_vs_random']:.1f}x random",
        f"mean IoU {summary['mean_iou']:.3f}, mean IoBB {summary['mean_iobb']:.3f}, IoBB >= 0.1 for "
        f"{summary['iobb_accuracy']:.3f} (heatmap >= {summary.get('iou_threshold', DEFAULT_THRESHOLD)})",
        *format_table(summary.get("wang") or {}),
        *by_reference,
    ]
