"""``NIHDataModule``: NIH ChestX-ray14 (or the synthetic demo in the same layout) as Lightning data loaders.

The demo set and the real data take the same code path; only the URLs differ (``conf/data/demo.yaml``,
``conf/data/nih.yaml``). With ``cache=True`` (the default in both configs) ``prepare_data`` fetches, decodes
and resizes every indexed image once into a memory-mapped uint8 cache (``pneumo.data.cache``) and the loaders
read only that; with ``cache=False`` every item is streamed from the image store (fetched concurrently per
batch, in DataLoader workers).

Example:
    >>> dm = NIHDataModule(images_url="data/nih_demo/images", labels_url="data/nih_demo/Data_Entry_2017.csv",
    ...                    image_size=64, cache=True, cache_dir="data/cache")  # doctest: +SKIP
    >>> dm.prepare_data(); dm.setup("fit"); batch = next(iter(dm.train_dataloader()))  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import lightning as L
import numpy as np
from torch.utils.data import DataLoader

from pneumo.config import to_plain
from pneumo.data.cache import BAD, CACHED, MISSING, ImageCache, check_policy
from pneumo.data.dataset import NIHImageDataset, StreamingSource
from pneumo.errors import ConfigError, PneumoError
from pneumo.images.dicom import check_voi
from pneumo.images.preprocess import build_tensor_transforms
from pneumo.io.reading import translate_error
from pneumo.io.storage import StorageSettings, redact_url
from pneumo.io.store import ImageStore, absolute_location, location_exists, object_name
from pneumo.nih.index import NIHLabelIndex
from pneumo.nih.shipped import relocated
from pneumo.nih.splits import PatientSplit, make_splits, read_image_list
from pneumo.synthetic.demo import ensure_synthetic_dataset

log = logging.getLogger(__name__)

#: Split names, in the order of ``PatientSplit``.
SPLITS = ("train", "val", "test")


class DataRootError(PneumoError, FileNotFoundError):
    """The images or labels are not where the configuration says."""


@contextlib.contextmanager
def _explained(url: str) -> Iterator[None]:
    """Re-raise access errors of reading ``url`` (403, Requester Pays, 401) with the setting to fix."""
    try:
        yield
    except (ValueError, OSError) as err:
        text = str(err).lower()
        if (
            "requester pays" in text
            or text.startswith("forbidden")
            or getattr(err, "code", None) in (401, 403)
        ):
            raise translate_error(redact_url(url), err) from err
        raise


class NIHDataModule(L.LightningDataModule):
    """Patient-disjoint train/val/test loaders of 1-channel float images and pneumonia labels.

    Args:
        images_url: folder or fsspec URL holding the images named by ``Image Index`` (``gs://bucket/png``),
            PNG, JPEG or DICOM (``gs://bucket/dicom`` with ``image_suffix=".dcm"``).
        labels_url: NIH ``Data_Entry_2017*.csv`` (path or URL, plain or ``.gz``).
        split_lists: ``{"train_val": URL, "test": URL}`` (NIH's official lists) or ``None`` for a seeded
            patient-grouped split.
        bbox_url: ``BBox_List_2017.csv`` (for Grad-CAM localization), optional.
        synthetic: parameters of ``pneumo.synthetic.demo`` plus ``root``: generate the demo set there
            once (in ``prepare_data``); ``None`` for real data.
        image_size: side of the square network input, pixels.
        views: keep only these view positions (``["PA"]``), ``None`` = all.
        val_fraction: share of train_val patients held out for validation.
        test_fraction: share of patients held out for test when ``split_lists`` is ``None``.
        split_seed: seed of the patient sampling.
        batch_size, num_workers, pin_memory: ``DataLoader`` settings; the cache build decodes in
            ``num_workers`` processes too (0 = threads of the main process).
        augment: train-time augmentation (see ``build_tensor_transforms``), ``None`` for none.
        storage: billing project, Requester Pays, credentials, fsspec options and I/O limits of every read
            (``StorageSettings`` or its config mapping, ``data.storage``); saved without credentials.
        cache: build and read the local uint8 cache (``True``) or stream every item (``False``).
        cache_dir: parent folder of caches (required with ``cache=True``).
        on_missing: ``error`` (stop, naming the object) or ``skip`` (leave it out, count it) for missing objects.
        on_bad_image: the same for objects that are not a usable image (truncated, empty, not an image, ...).
        progress: show the cache build's progress bar on a terminal (log lines otherwise).
        image_suffix: read image ``x.png`` of the index from the object ``x<image_suffix>`` (``.dcm`` for the
            bucket's ``dicom/`` copy or a demo set written as DICOM); ``None`` = the index's names.
        dicom_voi: grey levels of DICOM images: ``auto``, ``window`` or ``full-range`` (``pneumo.images.dicom``).
    """

    def __init__(  # noqa: PLR0913 - until its arguments are grouped in settings objects (issue 21)
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
        storage: StorageSettings | Mapping | None = None,
        cache: bool = False,
        cache_dir: str | None = None,
        on_missing: str = "error",
        on_bad_image: str = "error",
        progress: bool = True,
        image_suffix: str | None = None,
        dicom_voi: str = "auto",
    ) -> None:
        super().__init__()
        split_lists, synthetic, views, augment = map(to_plain, (split_lists, synthetic, views, augment))
        if split_lists is not None and set(split_lists) != {"train_val", "test"}:
            raise ConfigError(
                f"data.split_lists must have keys train_val and test, got {sorted(split_lists)}"
            )
        if cache and not cache_dir:
            raise ConfigError("data.cache=true needs data.cache_dir (a local folder for the image cache)")
        check_policy(on_missing, "data.on_missing")
        check_policy(on_bad_image, "data.on_bad_image")
        check_voi(dicom_voi, "data.dicom_voi")
        if image_suffix and not (str(image_suffix).startswith(".") and len(str(image_suffix)) > 1):
            raise ConfigError(f"data.image_suffix={image_suffix!r}: give a file ending such as .dcm, or null")
        self.images_url = absolute_location(images_url)
        # relocated: a checkpoint from another install names its own copy of the shipped NIH files
        self.labels_url = absolute_location(relocated(labels_url))
        self.split_lists = (
            {k: absolute_location(relocated(v)) for k, v in split_lists.items()} if split_lists else None
        )
        self.bbox_url = absolute_location(relocated(bbox_url)) if bbox_url else None
        self.synthetic = dict(synthetic, root=absolute_location(synthetic["root"])) if synthetic else None
        self.cache_dir = absolute_location(cache_dir) if cache_dir else None
        self.storage = StorageSettings.from_config(storage)
        if (
            self.storage.requester_pays
            and not self.storage.project
            and self.storage.endpoint_of(self.images_url)
        ):
            log.warning(
                "data.storage.requester_pays is true but data.storage.project is not set (nor "
                "GOOGLE_CLOUD_PROJECT): reads bill the project of your credentials, and fail if they have none"
            )
        # Saved in checkpoints so explain/eval rebuild the same preprocessing; credentials stay out.
        self.save_hyperparameters(
            {
                "images_url": redact_url(self.images_url),
                "labels_url": redact_url(self.labels_url),
                "split_lists": {k: redact_url(v) for k, v in self.split_lists.items()}
                if self.split_lists
                else None,
                "bbox_url": redact_url(self.bbox_url) if self.bbox_url else None,
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
                "storage": self.storage.to_config(),
                "cache": bool(cache),
                "cache_dir": self.cache_dir,
                "on_missing": on_missing,
                "on_bad_image": on_bad_image,
                "image_suffix": image_suffix or None,
                "dicom_voi": dicom_voi,
            }
        )
        self.progress = progress
        self.index: NIHLabelIndex | None = None
        self.split: PatientSplit | None = None
        self.image_cache: ImageCache | None = None
        self.skipped: dict[str, list[str]] = {"missing": [], "bad image": []}
        #: Images the run left out (from a checkpoint's data-module state), until ``setup`` works it out.
        self.recorded_skipped: dict[str, list[str]] | None = None
        self.datasets: dict[str, NIHImageDataset] = {}
        self._store: ImageStore | None = None

    # ------------------------------------------------------------------ storage
    @property
    def store(self) -> ImageStore:
        """The image store of ``images_url`` (one per data module; re-connects itself in worker processes)."""
        if self._store is None:
            self._store = ImageStore.from_settings(
                self.storage, self.images_url, suffix=self.hparams.image_suffix
            )
        return self._store

    # ------------------------------------------------------------------ lifecycle
    def prepare_data(self) -> None:
        """Generate the demo set if configured, then build the image cache (once per node).

        Lightning calls this on one process per node and makes the other ranks wait; a process that calls
        ``setup`` while another builds the same cache waits on the cache's lock.
        """
        if self.synthetic:
            params = {k: v for k, v in self.synthetic.items() if k != "root"}
            ensure_synthetic_dataset(self.synthetic["root"], **params)
        if self.hparams.cache:
            self._build_cache(self._image_cache(self._read_index()))

    def planned_split(self) -> PatientSplit:
        """The patient split from the label index and the split settings, before any image is read (images
        that turn out missing or bad are still in it)."""
        self.index = self._read_index()
        lists = self.split_lists or {}
        return make_splits(
            self.index,
            train_val_list=self._read_list(lists["train_val"]) if lists else None,
            test_list=self._read_list(lists["test"]) if lists else None,
            val_fraction=self.hparams.val_fraction,
            test_fraction=self.hparams.test_fraction,
            seed=self.hparams.split_seed,
        )

    def split_images(self, split: str) -> list[str]:
        """The images of ``split`` (``train``/``val``/``test``) as the run used them, without reading an
        image: after ``setup`` its split; else the planned split less the images the run skipped
        (``data.on_missing``/``on_bad_image=skip``), as recorded in its checkpoint or in a complete cache.
        """
        if split not in SPLITS:
            raise ConfigError(f"split={split!r}: choose one of {list(SPLITS)}")
        if self.split is not None:
            return [str(x) for x in self.split.as_dict()[split]]
        planned = self.planned_split().as_dict()[split]
        if self.recorded_skipped is not None:
            left_out = {x for names in self.recorded_skipped.values() for x in names}
        elif self.hparams.cache and (cache := self._image_cache(self.index)).is_complete():
            names = np.asarray(cache.names, dtype=object)
            left_out = set(names[np.isin(cache.status(), (MISSING, BAD))].tolist())
        else:
            left_out = set()
        return [str(x) for x in planned if x not in left_out]

    def state_dict(self) -> dict[str, Any]:
        """Saved in checkpoints: the images left out as missing or bad, so a run rebuilt from its
        checkpoint (``pneumo.pipelines.runs``) has the same splits without reading the images again."""
        return {"skipped": {kind: list(names) for kind, names in self.skipped.items()}}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        skipped = state_dict.get("skipped")
        if isinstance(skipped, Mapping):
            self.recorded_skipped = {str(k): [str(x) for x in v] for k, v in skipped.items()}

    def setup(self, stage: str | None = None) -> None:
        if self.split is None:
            split = self.planned_split()
            if self.hparams.cache:
                cache = self._image_cache(self.index)
                if not cache.is_complete():
                    log.info(
                        "the image cache is not built yet (prepare_data was not called): building it now"
                    )
                    self._build_cache(cache)
                self.image_cache = cache
                split = self._drop_unusable(split, cache.status())
            else:
                self._check_images_present()
            self.split = split
            for name, images in self.split.as_dict().items():
                sub = self.index.subset(images)
                log.info(
                    "%s split: %d images, %d patients, %d pneumonia",
                    name,
                    len(images),
                    sub.table["patient"].nunique(),
                    int(sub.pneumonia.sum()),
                )
        for name in ("train", "val", "test"):
            if name not in self.datasets:
                self.datasets[name] = self.make_dataset(name)

    def make_dataset(self, split: str, augment: bool | None = None) -> NIHImageDataset:
        """The dataset of one split; ``augment`` defaults to True for train only."""
        sub = self.index.subset(self.split.as_dict()[split])
        use_aug = (split == "train") if augment is None else augment
        transform = build_tensor_transforms(
            self.hparams.image_size, self.hparams.augment if use_aug else None
        )
        if self.image_cache is not None:
            source = self.image_cache.source(list(sub.images))
        else:
            source = StreamingSource(
                self.store,
                sub.images,
                self.hparams.image_size,
                on_missing=self.hparams.on_missing,
                on_bad_image=self.hparams.on_bad_image,
                dicom_voi=self.hparams.dicom_voi,
            )
        return NIHImageDataset(sub, source, transform)

    # ------------------------------------------------------------------ cache
    def _image_cache(self, index: NIHLabelIndex) -> ImageCache:
        return ImageCache(
            self.cache_dir,
            self.images_url,
            list(index.images),
            self.hparams.image_size,
            image_suffix=self.hparams.image_suffix,
            dicom_voi=self.hparams.dicom_voi,
        )

    def _build_cache(self, cache: ImageCache) -> dict:
        if not cache.is_complete():
            self._check_images_present(index_names=cache.names)
        return cache.build(
            self.store,
            on_missing=self.hparams.on_missing,
            on_bad_image=self.hparams.on_bad_image,
            progress=self.progress,
            workers=self.hparams.num_workers,
        )

    def _drop_unusable(self, split: PatientSplit, status: np.ndarray) -> PatientSplit:
        """Leave images the cache marked missing/bad out of the splits (policy ``skip``), or fail (``error``)."""
        names = np.asarray(self.image_cache.names, dtype=object)
        for code, kind, key in ((MISSING, "missing", "on_missing"), (BAD, "bad image", "on_bad_image")):
            bad = names[status == code].tolist()
            self.skipped[kind] = bad
            if bad and self.hparams[key] == "error":
                raise DataRootError(
                    f"{len(bad)} image(s) of the cache {self.image_cache.dir} are {kind} (e.g. {bad[:5]}), which "
                    f"an earlier run skipped; data.{key}=error: fix the source or set data.{key}=skip"
                )
        usable = set(names[status == CACHED].tolist())
        kept = {
            k: np.asarray([x for x in v if x in usable], dtype=object) for k, v in split.as_dict().items()
        }
        dropped = sum(len(v) for v in split.as_dict().values()) - sum(len(v) for v in kept.values())
        if dropped:
            log.warning(
                "%d image(s) left out of the splits as missing or bad (data.on_missing/on_bad_image=skip)",
                dropped,
            )
            for name, part in kept.items():
                if len(part) == 0:
                    raise DataRootError(f"the {name} split has no readable image left")
        return PatientSplit(**kept)

    # ------------------------------------------------------------------ inputs
    def _read_index(self) -> NIHLabelIndex:
        """The label index, read once per process (``prepare_data`` and ``setup`` both need it)."""
        if self.index is not None:
            return self.index
        # One small request per storage endpoint first: an unreachable one fails in seconds, in one line.
        for url in (self.images_url, self.labels_url, *(self.split_lists or {}).values()):
            self.storage.probe(url)
        options = self.storage.options_for(self.labels_url)
        with _explained(self.labels_url):
            exists = location_exists(self.labels_url, options, self.storage.io)
        if not exists:
            raise DataRootError(
                f"label file {redact_url(self.labels_url)} does not exist. {self._how_to_get_data()}"
            )
        with _explained(self.labels_url):
            self.index = NIHLabelIndex.from_csv(
                self.labels_url, options, views=self.hparams.views, io=self.storage.io
            )
        return self.index

    def _read_list(self, url: str) -> list[str]:
        with _explained(url):
            return read_image_list(url, self.storage.options_for(url), self.storage.io)

    def _check_images_present(self, index_names: Sequence[str] | None = None) -> None:
        """Fail early when the image root is missing or holds none of a few indexed images."""
        store = self.store
        names = index_names if index_names is not None else self.index.images
        if store.protocol in ("file", "local") and not store.exists():
            raise DataRootError(f"image root {self.images_url} does not exist. {self._how_to_get_data()}")
        sample = [str(name) for name in names[:: max(1, len(names) // 3)][:3]]
        if not any(store.exists(name) for name in sample):
            raise DataRootError(
                f"image root {redact_url(self.images_url)} holds none of the indexed images (looked for "
                f"{', '.join(object_name(n, store.suffix) for n in sample)}). {self._how_to_get_data()}"
            )

    def _how_to_get_data(self) -> str:
        return (
            "Generate the demo set with `python -m pneumo synthetic DIR` (or run `python train.py`, "
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

    def train_finding_counts(self) -> tuple[np.ndarray, int]:
        """Train images with each of the 14 findings, and train images in all, for BCE ``pos_weight``."""
        if self.split is None:
            self.setup("fit")
        findings = self.index.subset(self.split.train).findings
        return findings.sum(axis=0), len(findings)

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

    def teardown(self, stage: str | None = None) -> None:
        if self._store is not None and self._store._state_pid == os.getpid():  # noqa: SLF001 - issue 21
            self._store.close()
