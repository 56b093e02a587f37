"""``NIHDataModule``: NIH ChestX-ray14 (or the synthetic demo in the same layout) as Lightning data loaders.

The demo set and the real data take the same code path; only the URLs differ (``conf/data/demo.yaml``,
``conf/data/nih.yaml``).

Example:
    >>> dm = NIHDataModule(images_url="data/nih_demo/images",
    ...                    labels_url="data/nih_demo/Data_Entry_2017.csv", image_size=64)  # doctest: +SKIP
    >>> dm.prepare_data(); dm.setup("fit"); batch = next(iter(dm.train_dataloader()))  # doctest: +SKIP
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import lightning as L
import numpy as np
from torch.utils.data import DataLoader

from pneumo.data.dataset import NIHImageDataset, StreamingSource
from pneumo.data.index import NIHLabelIndex
from pneumo.data.splits import PatientSplit, make_splits, read_image_list
from pneumo.data.store import ImageStore, absolute_location, location_exists
from pneumo.data.synthetic import ensure_synthetic_dataset
from pneumo.data.transforms import build_tensor_transforms
from pneumo.utils.config import to_plain

log = logging.getLogger(__name__)


class DataRootError(FileNotFoundError):
    """The images or labels are not where the configuration says."""


class NIHDataModule(L.LightningDataModule):
    """Patient-disjoint train/val/test loaders of 1-channel float images and pneumonia labels.

    Args:
        images_url: folder or fsspec URL holding the PNGs named by ``Image Index``.
        labels_url: NIH ``Data_Entry_2017*.csv`` (path or URL, plain or ``.gz``).
        split_lists: ``{"train_val": URL, "test": URL}`` (NIH's official lists) or ``None`` for a seeded
            patient-grouped split.
        bbox_url: ``BBox_List_2017.csv`` (for Grad-CAM localization), optional.
        synthetic: parameters of ``pneumo.data.synthetic`` plus ``root``: generate the demo set there
            once (in ``prepare_data``); ``None`` for real data.
        image_size: side of the square network input, pixels.
        views: keep only these view positions (``["PA"]``), ``None`` = all.
        val_fraction: share of train_val patients held out for validation.
        test_fraction: share of patients held out for test when ``split_lists`` is ``None``.
        split_seed: seed of the patient sampling.
        batch_size, num_workers, pin_memory: ``DataLoader`` settings.
        augment: train-time augmentation (see ``build_tensor_transforms``), ``None`` for none.
        storage_options: fsspec options for the URLs (not saved in checkpoints: may hold credentials).
    """

    def __init__(
        self,
        images_url: str,
        labels_url: str,
        split_lists: Mapping[str, str] | None = None,
        bbox_url: str | None = None,
        synthetic: Mapping | None = None,
        image_size: int = 224,
        views: Sequence[str] | None = None,
        val_fraction: float = 0.1,
        test_fraction: float = 0.2,
        split_seed: int = 0,
        batch_size: int = 32,
        num_workers: int = 4,
        pin_memory: bool = False,
        augment: Mapping | None = None,
        storage_options: Mapping | None = None,
    ) -> None:
        super().__init__()
        split_lists, synthetic, views, augment = map(to_plain, (split_lists, synthetic, views, augment))
        if split_lists is not None and set(split_lists) != {"train_val", "test"}:
            raise ValueError(f"data.split_lists must have keys train_val and test, got {sorted(split_lists)}")
        self.images_url = absolute_location(images_url)
        self.labels_url = absolute_location(labels_url)
        self.split_lists = {k: absolute_location(v) for k, v in split_lists.items()} if split_lists else None
        self.bbox_url = absolute_location(bbox_url) if bbox_url else None
        self.synthetic = dict(synthetic, root=absolute_location(synthetic["root"])) if synthetic else None
        self.storage_options = dict(to_plain(storage_options) or {})
        # Saved in checkpoints so explain/eval rebuild the same preprocessing; credentials stay out.
        self.save_hyperparameters(
            {
                "images_url": self.images_url,
                "labels_url": self.labels_url,
                "split_lists": self.split_lists,
                "bbox_url": self.bbox_url,
                "synthetic": self.synthetic,
                "image_size": image_size,
                "views": views,
                "val_fraction": val_fraction,
                "test_fraction": test_fraction,
                "split_seed": split_seed,
                "batch_size": batch_size,
                "num_workers": num_workers,
                "pin_memory": pin_memory,
                "augment": augment,
            }
        )
        self.index: NIHLabelIndex | None = None
        self.split: PatientSplit | None = None
        self.datasets: dict[str, NIHImageDataset] = {}

    # ------------------------------------------------------------------ lifecycle
    def prepare_data(self) -> None:
        """Generate the demo set if configured (once per node; Lightning calls this on one process)."""
        if self.synthetic:
            params = {k: v for k, v in self.synthetic.items() if k != "root"}
            ensure_synthetic_dataset(self.synthetic["root"], **params)

    def setup(self, stage: str | None = None) -> None:
        if self.split is None:
            self.index = self._read_index()
            lists = self.split_lists or {}
            self.split = make_splits(
                self.index,
                train_val_list=read_image_list(lists["train_val"], self.storage_options) if lists else None,
                test_list=read_image_list(lists["test"], self.storage_options) if lists else None,
                val_fraction=self.hparams.val_fraction,
                test_fraction=self.hparams.test_fraction,
                seed=self.hparams.split_seed,
            )
            self._check_images_present()
            for name, images in self.split.as_dict().items():
                log.info(
                    "%s split: %d images, %d patients, %d pneumonia",
                    name,
                    len(images),
                    self.index.subset(images).table["patient"].nunique(),
                    int(self.index.subset(images).pneumonia.sum()),
                )
        for name in ("train", "val", "test"):
            if name not in self.datasets:
                self.datasets[name] = self.make_dataset(name)

    def make_dataset(self, split: str, augment: bool | None = None) -> NIHImageDataset:
        """The dataset of one split; ``augment`` defaults to True for train only."""
        sub = self.index.subset(self.split.as_dict()[split])
        use_aug = (split == "train") if augment is None else augment
        transform = build_tensor_transforms(self.hparams.image_size, self.hparams.augment if use_aug else None)
        source = StreamingSource(self.store, sub.images, self.hparams.image_size)
        return NIHImageDataset(sub, source, transform)

    @property
    def store(self) -> ImageStore:
        return ImageStore(self.images_url, self.storage_options)

    def _read_index(self) -> NIHLabelIndex:
        if not location_exists(self.labels_url, self.storage_options):
            raise DataRootError(f"label file {self.labels_url} does not exist. {self._how_to_get_data()}")
        return NIHLabelIndex.from_csv(self.labels_url, self.storage_options, views=self.hparams.views)

    def _check_images_present(self) -> None:
        """Fail before training when the image root is missing or holds none of the indexed images."""
        store = self.store
        if not store.exists():
            raise DataRootError(f"image root {self.images_url} does not exist. {self._how_to_get_data()}")
        sample = [str(x) for x in self.index.images[:: max(1, len(self.index) // 3)][:3]]
        if not any(store.exists(name) for name in sample):
            raise DataRootError(
                f"image root {self.images_url} holds none of the indexed images (looked for {', '.join(sample)}). "
                f"{self._how_to_get_data()}"
            )

    def _how_to_get_data(self) -> str:
        return (
            "Generate the demo set with `python -m pneumo.data.synthetic DIR` (or run `python train.py`, "
            "which writes it under paths.data_dir), or set data.images_url / data.labels_url to NIH's data "
            "(see README, 'Real NIH data')."
        )

    # ------------------------------------------------------------------ loaders
    def train_class_counts(self) -> np.ndarray:
        """Images per class (negative, positive) in the train split, for class weighting."""
        if self.split is None:
            self.setup("fit")
        y = self.index.subset(self.split.train).pneumonia
        return np.bincount(y, minlength=2)

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        workers = self.hparams.num_workers
        return DataLoader(
            self.datasets[split],
            batch_size=self.hparams.batch_size,
            shuffle=shuffle,
            num_workers=workers,
            pin_memory=self.hparams.pin_memory,
            persistent_workers=workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)
