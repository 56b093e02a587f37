"""``GradCamOverlayCallback``: Grad-CAM overlays of a fixed set of validation images in TensorBoard.

At the end of every ``every_n_epochs``-th validation run (sanity checks excluded) the callback computes
Grad-CAM for the same validation images - ``num_positives`` pneumonia and ``num_negatives`` other images,
drawn once with ``seed`` and kept, so epochs can be compared - and logs one grid picture to every
TensorBoard logger under ``tag``. Each tile shows the heatmap over the X-ray, the ground-truth boxes when the
data module has a box file, the predicted probability, the predicted label (at the model's ``threshold``)
and the true label. Runs on global rank 0 only; the model is left as it was (see ``pneumo.xai.gradcam``).

Example (``conf/callbacks/gradcam_overlay.yaml`` turns it on in the default callbacks)::

    python train.py callbacks.gradcam_overlay.every_n_epochs=1
    tensorboard --logdir logs/   # IMAGES tab, tag "val/gradcam"
"""

from __future__ import annotations

import logging
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.loggers import TensorBoardLogger

from pneumo.errors import ConfigError
from pneumo.images.decode import image_shape
from pneumo.nih.boxes import load_boxes, scaled_to
from pneumo.xai.explainers import GradCamExplainer, explain, instantiate_explainers
from pneumo.xai.gradcam import DEFAULT_LAYER, DEFAULT_TARGET, check_target, pneumonia_probability
from pneumo.xai.overlay import caption_text, make_grid, render_overlay, to_chw_tensor

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
        boxes = self._boxes(trainer, [str(it["image_id"]) for it in items], items[0]["image"].shape[-2:])
        return {
            "images": torch.stack([it["image"] for it in items]),
            "labels": [int(it["label"]) for it in items],
            "image_ids": [str(it["image_id"]) for it in items],
            "boxes": boxes,
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

    @staticmethod
    def _boxes(trainer: L.Trainer, names: list[str], shape: torch.Size) -> list[np.ndarray]:
        """Ground-truth boxes of each chosen image in network-input pixels (empty arrays if none)."""
        empty = [np.zeros((0, 4)) for _ in names]
        datamodule = getattr(trainer, "datamodule", None)
        bbox_url = (getattr(datamodule, "hparams", None) or {}).get("bbox_url")
        if datamodule is None or not bbox_url:
            return empty
        try:
            table = load_boxes(bbox_url, datamodule.storage.options_for(bbox_url), datamodule.storage.io)
            if table is None:
                return empty
            store = datamodule.store
            out = []
            for name in names:
                raw = table.for_image(name)
                if len(raw):
                    source = image_shape(store.read(name), name)  # header only (PNG or DICOM)
                    raw = scaled_to(raw, source, (shape[0], shape[1]))
                out.append(raw)
            return out
        except Exception as err:  # noqa: BLE001 - boxes are a nicety here; never stop training for them
            log.warning("GradCamOverlayCallback: boxes from %s not drawn (%s)", bbox_url, err)
            return empty

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
        for writer in writers:
            writer.add_image(self.tag, to_chw_tensor(grid), global_step=trainer.global_step)
            writer.flush()

    def render(self, pl_module: torch.nn.Module) -> np.ndarray:
        """The grid of overlays of the fixed images under the model's current weights, ``(H, W, 3)`` uint8."""
        assert self._fixed is not None
        param = next(pl_module.parameters())
        images = self._fixed["images"].to(device=param.device, dtype=param.dtype)
        results = {name: explain(e, pl_module, images, self.target) for name, e in self.explainers.items()}
        threshold = float(getattr(pl_module, "threshold", 0.5))
        probs = pneumonia_probability(pl_module, next(iter(results.values())).logits)
        tiles = []
        for i, image_id in enumerate(self._fixed["image_ids"]):
            p = float(probs[i])
            for name, result in results.items():
                title = image_id if len(results) == 1 else f"{image_id} {name}"
                caption = f"{title}\n{caption_text(p, int(p >= threshold), self._fixed['labels'][i])}"
                tiles.append(
                    render_overlay(
                        images[i, 0].float().cpu(),
                        result.maps[i].cpu(),
                        boxes=self._fixed["boxes"][i],
                        caption=caption,
                        size=self.tile_size,
                    )
                )
        return make_grid(tiles, ncols=self.ncols if len(results) == 1 else len(results))
