"""``GradCamOverlayCallback``: Grad-CAM overlays of a fixed set of validation images in TensorBoard.

At the end of every ``every_n_epochs``-th validation run (sanity checks excluded) the callback computes
Grad-CAM for the same validation images - ``num_positives`` pneumonia and ``num_negatives`` other images,
drawn once with ``seed`` and kept, so epochs can be compared - and logs one grid picture to every
TensorBoard logger under ``tag``. Each tile shows the heatmap over the X-ray, the ground-truth boxes when the
data module has a box file, the predicted probability, the predicted label (at the model's ``threshold``)
and the true label. Runs on global rank 0 only; the model is left as it was (see ``pneumo.xai.gradcam``).

The boxes come from the same list of reference standards as the report (``references``: ``eval.references``
in ``conf/callbacks/gradcam_overlay.yaml``; ``pneumo.nih.references``): ``nih``'s from the data module's box
file, every other box reference's (``rsna``, a labels table with ``x, y, w, h``) on the chosen images it
covers, from the data set's files of the built-ins (``data.references``). Each reference's boxes are drawn in
its own colour (nih green, rsna orange, others yellow; a legend line in the caption) and scored: the first
explainer's maps against each reference's boxes (``pneumo.xai.reference_boxes``: pointing game with a
patient-bootstrap interval, IoU, IoBB at Wang et al.'s thresholds), logged as scalars
``<tag>/pointing_game/<name>``, ``<tag>/iou/<name>``, ``<tag>/iobb/<name>`` and a text ``<tag>/localization``.

Example (``conf/callbacks/gradcam_overlay.yaml`` turns it on in the default callbacks)::

    python train.py callbacks.gradcam_overlay.every_n_epochs=1
    tensorboard --logdir logs/   # IMAGES tab, tag "val/gradcam"
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import lightning as L
import numpy as np
import pandas as pd
import torch
from lightning.pytorch.loggers import TensorBoardLogger

from pneumo.config import to_plain
from pneumo.errors import ConfigError
from pneumo.images.decode import image_shape
from pneumo.nih.boxes import load_boxes, scaled_to
from pneumo.nih.findings import PNEUMONIA
from pneumo.nih.references import load_reference, reference_spec
from pneumo.xai.explainers import GradCamExplainer, explain, instantiate_explainers
from pneumo.xai.gradcam import DEFAULT_LAYER, DEFAULT_TARGET, check_target, pneumonia_probability
from pneumo.xai.overlay import (
    caption_text,
    make_grid,
    render_overlay,
    to_chw_tensor,
)
from pneumo.xai.reference_boxes import (
    ReferenceHit,
    format_by_reference,
    score_references,
    summarize_references,
)

log = logging.getLogger(__name__)


class GradCamOverlayCallback(L.Callback):
    """Log Grad-CAM overlays of fixed validation images to TensorBoard every N validation epochs.

    Args:
        every_n_epochs: log at validation epochs N, 2N, ... (counting only real validation epochs).
        num_positives: pneumonia images in the set (fewer if validation has fewer).
        num_negatives: other images in the set.
        layer: Grad-CAM layer (see ``pneumo.xai.gradcam.DEFAULT_LAYER``).
        target: ``"pneumonia"``, ``"predicted"`` or an output index (see ``pneumo.xai.gradcam``).
        seed: seed of the one-time choice of images.
        tag: TensorBoard image tag.
        tile_size: width of each overlay tile, pixels.
        ncols: tiles per row of the grid (with several explainers: one row per image, one column each).
        explainer: ``{name: explainer or spec}`` (``conf/explainer/*.yaml``) drawn side by side; ``None`` =
            Grad-CAM of ``layer``.
        references: the reference standards whose boxes are drawn and scored (``eval.references`` entries:
            ``nih``, ``rsna``, a mapping; those without boxes are skipped); ``None`` = ``nih`` only.
        resamples: patient-bootstrap resamples of each reference's pointing-game interval.
    """

    def __init__(  # noqa: PLR0913 - one argument per key of conf/callbacks/gradcam_overlay.yaml
        self,
        every_n_epochs: int = 2,
        num_positives: int = 4,
        num_negatives: int = 4,
        layer: str = DEFAULT_LAYER,
        target: int | str = DEFAULT_TARGET,
        seed: int = 0,
        tag: str = "val/gradcam",
        tile_size: int = 192,
        ncols: int = 4,
        explainer: Any = None,
        references: Sequence[str | Mapping[str, Any]] | None = None,
        resamples: int = 200,
    ) -> None:
        super().__init__()
        if every_n_epochs < 1:
            raise ConfigError(f"callbacks.gradcam_overlay.every_n_epochs must be >= 1, got {every_n_epochs}")
        if num_positives < 0 or num_negatives < 0 or num_positives + num_negatives == 0:
            raise ConfigError("callbacks.gradcam_overlay needs num_positives + num_negatives > 0 (both >= 0)")
        self.every_n_epochs, self.num_positives, self.num_negatives = (
            every_n_epochs,
            num_positives,
            num_negatives,
        )
        target = check_target(target, "callbacks.gradcam_overlay.target")  # now, not at the first overlay
        self.layer, self.target, self.seed, self.tag = layer, target, seed, tag
        self.tile_size, self.ncols = tile_size, ncols
        self._val_epochs = 0
        self.explainers = (
            instantiate_explainers(explainer) if explainer else {"gradcam": GradCamExplainer(layer)}
        )
        entries = to_plain(references)
        self.references = [
            r if isinstance(r, str) else dict(r) for r in (["nih"] if entries is None else entries)
        ]
        for entry in self.references:
            reference_spec(entry)  # an unknown name or key fails now, not at the first overlay
        self.resamples = resamples
        #: per reference, the summary of the last logged epoch (``summarize_references``' keys)
        self.localization: dict[str, dict[str, Any]] = {}
        self._fixed: dict[str, Any] | None = None

    # ------------------------------------------------------------------ the fixed set
    @property
    def image_ids(self) -> list[str]:
        """Names of the chosen validation images (empty before the first logged epoch)."""
        return list(self._fixed["image_ids"]) if self._fixed else []

    def _choose(self, trainer: L.Trainer) -> dict[str, Any] | None:
        dataset = self._val_dataset(trainer)
        if dataset is None or len(dataset) == 0:
            log.warning("GradCamOverlayCallback: no validation dataset; no overlays are logged")
            return None
        labels = self._labels(dataset)
        rng = np.random.default_rng(self.seed)
        chosen: list[int] = []
        for value, k in ((1, self.num_positives), (0, self.num_negatives)):
            pool = np.flatnonzero(labels == value)
            chosen += sorted(rng.choice(pool, size=min(k, len(pool)), replace=False).tolist())
        items = [dataset[i] for i in chosen]
        names = [str(it["image_id"]) for it in items]
        index = getattr(dataset, "index", None)
        table = index.table.iloc[chosen].reset_index(drop=True) if index is not None else None
        boxes = self._reference_boxes(trainer, table, names, items[0]["image"].shape[-2:])
        return {
            "images": torch.stack([it["image"] for it in items]),
            "labels": [int(it["label"]) for it in items],
            "image_ids": names,
            "patients": names if table is None else table["patient"].tolist(),
            "boxes": boxes.get("nih") or [np.zeros((0, 4)) for _ in names],  # drawn in NIH's green
            "reference_boxes": boxes,
        }

    @staticmethod
    def _val_dataset(trainer: L.Trainer) -> Any:
        datamodule = getattr(trainer, "datamodule", None)
        datasets = getattr(datamodule, "datasets", None)
        if isinstance(datasets, dict) and "val" in datasets:
            return datasets["val"]
        loaders = trainer.val_dataloaders
        loader = loaders[0] if isinstance(loaders, list | tuple) else loaders
        return getattr(loader, "dataset", None)

    @staticmethod
    def _labels(dataset: Any) -> np.ndarray:
        index = getattr(dataset, "index", None)
        if index is not None and hasattr(index, "pneumonia"):
            return np.asarray(index.pneumonia, dtype=np.int64)
        return np.array([int(dataset[i]["label"]) for i in range(len(dataset))])

    def _reference_boxes(
        self, trainer: L.Trainer, table: pd.DataFrame | None, names: list[str], shape: torch.Size
    ) -> dict[str, list[np.ndarray]]:
        """Per box reference, the boxes of each chosen image in network-input pixels (empty arrays where it
        boxes none): ``nih`` from the data module's box file, the others by their coverage rule."""
        datamodule = getattr(trainer, "datamodule", None)
        if datamodule is None:
            return {}
        sources: dict[str, tuple[int, int]] = {}

        def to_input(name: str, raw: np.ndarray) -> np.ndarray:
            if not len(raw):
                return np.zeros((0, 4))
            if name not in sources:  # header only (PNG or DICOM), once per image
                sources[name] = image_shape(datamodule.store.read(name), name)
            return scaled_to(raw, sources[name], (shape[0], shape[1]))

        out: dict[str, list[np.ndarray]] = {}
        for entry in self.references:
            ref_name = str(entry if isinstance(entry, str) else entry.get("name"))
            try:
                raw = (
                    self._nih_boxes(datamodule, names)
                    if ref_name == "nih"
                    else self._covered_boxes(datamodule, table, names, entry)
                )
                if raw is not None:
                    out[ref_name] = [to_input(name, b) for name, b in zip(names, raw)]
            except Exception as err:  # noqa: BLE001 - boxes are a nicety here; never stop training for them
                log.warning("GradCamOverlayCallback: %s boxes not drawn (%s)", ref_name, err)
        return out

    @staticmethod
    def _nih_boxes(datamodule: Any, names: list[str]) -> list[np.ndarray] | None:
        """The data module's box file's pneumonia boxes of each image (source pixels); ``None`` without one."""
        bbox_url = (getattr(datamodule, "hparams", None) or {}).get("bbox_url")
        if not bbox_url:
            return None
        table = load_boxes(bbox_url, datamodule.storage.options_for(bbox_url), datamodule.storage.io)
        return None if table is None else [table.for_image(name, PNEUMONIA) for name in names]

    @staticmethod
    def _covered_boxes(
        datamodule: Any, table: pd.DataFrame | None, names: list[str], entry: str | Mapping[str, Any]
    ) -> list[np.ndarray] | None:
        """A reference's boxes of each image it covers (its coverage rule on the images' patient, view, sex
        and age), source pixels; ``None`` for a reference without boxes."""
        files = getattr(datamodule, "references", None)
        spec = reference_spec(entry, files)
        if spec.layout == "adjudicated" and not spec.boxes_url:  # Google's labels have no boxes: nothing read
            return None
        own = getattr(datamodule, "index", None)  # the metadata of the coverage check, without a second read
        reference = load_reference(
            spec,
            labels_url=getattr(datamodule, "labels_url", None),
            index=own.table if own is not None and getattr(datamodule, "labels", "nih") == "nih" else None,
        )
        if reference.boxes is None:
            return None
        frame = table if table is not None else pd.DataFrame({"image": names})
        covered, _ = reference.covers(frame)
        return [reference.boxes_for(n) if c else np.zeros((0, 4)) for n, c in zip(names, covered)]

    # ------------------------------------------------------------------ hooks
    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # After the epoch-end hooks: the caption's predicted label uses the threshold chosen this epoch.
        if trainer.sanity_checking:
            return
        self._val_epochs += 1
        if self._val_epochs % self.every_n_epochs or not trainer.is_global_zero:
            return
        writers = [lg.experiment for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)]
        if not writers:
            return
        if self._fixed is None:
            self._fixed = self._choose(trainer)
            if self._fixed is None:
                return
        grid = self.render(pl_module)
        step = trainer.global_step
        lines = format_by_reference(self.localization) + self._sources(trainer)
        for writer in writers:
            writer.add_image(self.tag, to_chw_tensor(grid), global_step=step)
            for name, summary in self.localization.items():
                if summary.get("n"):
                    writer.add_scalar(f"{self.tag}/pointing_game/{name}", summary["hit_rate"], step)
                    writer.add_scalar(f"{self.tag}/iou/{name}", summary["mean_iou"], step)
                    writer.add_scalar(f"{self.tag}/iobb/{name}", summary["mean_iobb"], step)
            if lines:
                writer.add_text(f"{self.tag}/localization", "\n\n".join(lines), global_step=step)
            writer.flush()

    def _sources(self, trainer: L.Trainer) -> list[str]:
        """The citations of the references whose boxes were scored (RSNA's attribution goes with its boxes)."""
        files = getattr(getattr(trainer, "datamodule", None), "references", None)
        scored = {name for name, summary in self.localization.items() if summary.get("n")}
        specs = [reference_spec(entry, files) for entry in self.references]
        return [f"boxes of {s.name}: {s.citation}" for s in specs if s.name in scored and s.citation]

    def render(self, pl_module: torch.nn.Module) -> np.ndarray:
        """The grid of overlays of the fixed images under the model's current weights, ``(H, W, 3)`` uint8;
        the first explainer's maps are scored against each box reference (``self.localization``)."""
        assert self._fixed is not None
        param = next(pl_module.parameters())
        images = self._fixed["images"].to(device=param.device, dtype=param.dtype)
        results = {name: explain(e, pl_module, images, self.target) for name, e in self.explainers.items()}
        threshold = float(getattr(pl_module, "threshold", 0.5))
        probs = pneumonia_probability(pl_module, next(iter(results.values())).logits)
        by_reference: dict[str, list[np.ndarray]] = self._fixed.get("reference_boxes") or {}
        hits: dict[str, list[ReferenceHit]] = {name: [] for name in by_reference}
        tiles = []
        for i, image_id in enumerate(self._fixed["image_ids"]):
            p = float(probs[i])
            drawn = {name: boxes[i] for name, boxes in by_reference.items() if len(boxes[i])}
            heatmap = next(iter(results.values())).maps[i].detach().float().cpu().numpy()
            for name, hit in score_references(heatmap, drawn, self._fixed["patients"][i]).items():
                hits[name].append(hit)
            for name, result in results.items():
                title = image_id if len(results) == 1 else f"{image_id} {name}"
                caption = f"{title}\n{caption_text(p, int(p >= threshold), self._fixed['labels'][i])}"
                tiles.append(
                    render_overlay(
                        images[i, 0].float().cpu(),
                        result.maps[i].cpu(),
                        boxes=drawn.get("nih"),
                        reference_boxes=[(n, b) for n, b in drawn.items() if n != "nih"],
                        caption=caption,
                        size=self.tile_size,
                    )
                )
        self.localization = summarize_references(hits, resamples=self.resamples, seed=self.seed)
        return make_grid(tiles, ncols=self.ncols if len(results) == 1 else len(results))
