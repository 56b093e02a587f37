"""``NIHDataModule``: NIH ChestX-ray14 (or the synthetic demo in the same layout) as Lightning data loaders.

The demo set and the real data take the same code path; only the URLs differ (``conf/data/demo.yaml``,
``conf/data/nih.yaml``). Its settings come in groups (``pneumo.data.settings``: ``split``, ``images``,
``loader``, ``cache``) beside the flat locations. With ``cache.enabled`` (the default in both configs)
``prepare_data`` fetches, decodes and resizes every indexed image once into a memory-mapped uint8 cache
(``pneumo.data.cache``) and the loaders read only that; otherwise every item is streamed from the image store
(fetched concurrently per batch, in DataLoader workers).

The loaders hand out whole batches of uint8 pixels (``UInt8Batches``: one read per batch from the cache, a
quarter of float32's bytes to copy to the device); ``on_after_batch_transfer`` turns them into the network's
float32 input where they arrived (on the GPU when there is one): scaled to [0, 1] exactly as the per-item
transforms do and, for training batches, augmented per batch with the same distributions, seeded from the
run's seed and the batch's index (``pneumo.images.batch``). The datasets themselves (``dm.datasets``) keep their
per-item contract: float32 items with the transforms applied.

Example:
    >>> dm = NIHDataModule(images_url="data/nih_demo/images", labels_url="data/nih_demo/Data_Entry_2017.csv",
    ...                    images={"size": 64}, cache={"enabled": True, "dir": "data/cache"})  # doctest: +SKIP
    >>> dm.prepare_data(); dm.setup("fit"); batch = next(iter(dm.train_dataloader()))  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.fabric.utilities.seed import pl_worker_init_function
from monai.data.utils import set_rnd
from torch.utils.data import DataLoader

from pneumo.config import choice, to_plain
from pneumo.data.bigquery import (
    Cohort,
    check_table_url,
    read_table_index,
    read_table_list,
    require_bigquery,
    select_cohort,
)
from pneumo.data.cache import BAD, CACHED, MISSING, CachedSource, ImageCache
from pneumo.data.dataset import NIHImageDataset, StreamingSource, UInt8Batches, collated
from pneumo.data.identity import RESTORE, RecordedData
from pneumo.data.settings import (
    CacheSettings,
    CohortSettings,
    ImageSettings,
    LoaderSettings,
    SplitSettings,
    as_config,
    group_settings,
)
from pneumo.errors import ConfigError, PneumoError
from pneumo.images.batch import BatchTransform
from pneumo.images.preprocess import build_tensor_transforms
from pneumo.io.files import sha256_of
from pneumo.io.reading import read_bytes, translate_error
from pneumo.io.storage import StorageSettings, redact_url
from pneumo.io.store import ImageStore, absolute_location, location_exists, object_name
from pneumo.nih.index import NIHLabelIndex
from pneumo.nih.references import TRAINING_LABELS, load_reference, relabelled
from pneumo.nih.shipped import relocated
from pneumo.nih.splits import PatientSplit, make_splits, read_image_list
from pneumo.synthetic.demo import (
    MANIFEST,
    SyntheticConfig,
    command_line,
    differences,
    ensure_synthetic_dataset,
)

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
            PNG, JPEG or DICOM (``gs://bucket/dicom`` with ``images.suffix=".dcm"``).
        labels_url: NIH ``Data_Entry_2017*.csv`` (path or URL, plain or ``.gz``), or a BigQuery table in NIH's
            layout, ``bq://PROJECT.DATASET.TABLE`` (``pneumo.data.bigquery``).
        split_lists: ``{"train_val": URL, "test": URL}`` (NIH's official lists; files or ``bq://`` tables with
            a column ``image_index``) or ``None`` for a seeded patient-grouped split.
        bbox_url: ``BBox_List_2017.csv`` (for Grad-CAM localization), optional.
        synthetic: parameters of ``pneumo.synthetic.demo`` plus ``root``: generate the demo set there
            once (in ``prepare_data``); ``None`` for real data.
        storage: billing project, Requester Pays, credentials, fsspec options and I/O limits of every read
            (``StorageSettings`` or its config mapping, ``data.storage``); saved without credentials.
        split: the patient split (``SplitSettings`` or its mapping: views, fractions, seed).
        images: image size, object suffix, DICOM grey levels, augmentation, missing/bad image policies
            (``ImageSettings`` or its mapping).
        loader: ``DataLoader`` batch size, workers, pinned memory (``LoaderSettings`` or its mapping).
        cache: the local uint8 image cache (``CacheSettings`` or its mapping: enabled, dir, progress).
        cohort: a BigQuery query restricting the index before the split (``CohortSettings`` or its mapping:
            query, params, maximum_bytes_billed).
        labels: the training target: ``nih`` (the label index's Pneumonia) or ``rsna`` (the RSNA reference's
            lung opacity, on the images it covers only; see ``pneumo.nih.references``).
        references: this data set's files of the built-in references (``{"rsna": {"url", "index_url"},
            "adjudicated": {...}}``; ``None`` = the shipped files), for the report and ``labels=rsna``.
    """

    def __init__(  # noqa: PLR0913 - one argument per key of conf/data/*.yaml: 6 locations, 4 settings groups
        self,
        images_url: str,
        labels_url: str,
        split_lists: Mapping[str, str] | None = None,
        bbox_url: str | None = None,
        synthetic: Mapping | None = None,
        storage: StorageSettings | Mapping | None = None,
        split: SplitSettings | Mapping | None = None,
        images: ImageSettings | Mapping | None = None,
        loader: LoaderSettings | Mapping | None = None,
        cache: CacheSettings | Mapping | None = None,
        cohort: CohortSettings | Mapping | None = None,
        labels: str = "nih",
        references: Mapping | None = None,
    ) -> None:
        super().__init__()
        self.labels = choice(labels, "data.labels", TRAINING_LABELS)
        self.references = {str(k): dict(v or {}) for k, v in (to_plain(references) or {}).items()}
        groups = group_settings(
            {"split_lists": to_plain(split_lists), "split": split, "images": images, "loader": loader,
             "cache": cache, "cohort": cohort}
        )  # fmt: skip
        self.split_settings: SplitSettings = groups["split"]
        self.image_settings: ImageSettings = groups["images"]
        self.loader_settings: LoaderSettings = groups["loader"]
        self.cohort_settings: CohortSettings = groups["cohort"]
        if self.cohort_settings.query:
            require_bigquery("data.cohort.query")
        cache_dir = groups["cache"].dir
        self.cache_settings: CacheSettings = dataclasses.replace(
            groups["cache"], dir=absolute_location(cache_dir) if cache_dir else None
        )
        self._set_locations(images_url, labels_url, to_plain(split_lists), bbox_url, to_plain(synthetic))
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
        # Saved in checkpoints so explain/eval rebuild the same data and preprocessing; credentials stay out.
        self.save_hyperparameters(self.saved_settings())
        self.index: NIHLabelIndex | None = None
        #: What the cohort query returned (``pneumo.data.bigquery.Cohort``), and how each bq:// table read
        #: looked (``{url: {"modified", "rows", "sha256"}}``) for the model card.
        self.cohort: Cohort | None = None
        self.tables: dict[str, dict[str, Any]] = {}
        self.split: PatientSplit | None = None
        self.image_cache: ImageCache | None = None
        self.skipped: dict[str, list[str]] = {"missing": [], "bad image": []}
        #: Images the run left out (from a checkpoint's data-module state), until ``setup`` works it out.
        self.recorded_skipped: dict[str, list[str]] | None = None
        self.datasets: dict[str, NIHImageDataset] = {}
        self._store: ImageStore | None = None
        #: Seed of the per-batch augmentation (torch's seed at ``setup``: ``seed_everything``'s).
        self.augment_seed: int | None = None
        self._batch_transform: BatchTransform | None = None
        #: The data identity of the run this module rebuilds (``pneumo.pipelines.runs.load_run``): files and
        #: splits read are checked against it (``pneumo.data.identity``); ``None`` for a new run.
        self.recorded: RecordedData | None = None

    def _set_locations(
        self,
        images_url: str,
        labels_url: str,
        split_lists: Mapping[str, str] | None,
        bbox_url: str | None,
        synthetic: Mapping | None,
    ) -> None:
        """The data's locations as absolute paths or URLs (``relocated``: a checkpoint from another install
        names its own copy of the shipped NIH files)."""
        if split_lists is not None and set(split_lists) != {"train_val", "test"}:
            raise ConfigError(
                f"data.split_lists must have keys train_val and test, got {sorted(split_lists)}"
            )
        for key, url in (
            ("data.labels_url", labels_url),
            *((f"data.split_lists.{k}", v) for k, v in (split_lists or {}).items()),
        ):
            if str(url).startswith("bq://"):
                check_table_url(str(url), key)  # a malformed URL or a missing extra: now, not after the cache
        self.images_url = absolute_location(images_url)
        self.labels_url = absolute_location(relocated(labels_url))
        self.split_lists = (
            {k: absolute_location(relocated(v)) for k, v in split_lists.items()} if split_lists else None
        )
        self.bbox_url = absolute_location(relocated(bbox_url)) if bbox_url else None
        self.synthetic = dict(synthetic, root=absolute_location(synthetic["root"])) if synthetic else None
        located = [self.images_url, self.labels_url, *(self.split_lists or {}).values(), self.bbox_url or ""]
        if self.synthetic and not any(url.startswith(self.synthetic["root"]) for url in located):
            # every location is the user's own: no demo set is written, and none is claimed (card, report)
            log.info("data.synthetic is not used: no data location is under %s", self.synthetic["root"])
            self.synthetic = None

    def saved_settings(self) -> dict[str, Any]:
        """The arguments that rebuild this data module (``NIHDataModule(**saved)``), URLs redacted and
        storage without credentials: its hyperparameters, saved in every checkpoint."""
        return {
            "images_url": redact_url(self.images_url),
            "labels_url": redact_url(self.labels_url),
            "split_lists": {k: redact_url(v) for k, v in self.split_lists.items()}
            if self.split_lists
            else None,
            "bbox_url": redact_url(self.bbox_url) if self.bbox_url else None,
            "synthetic": self.synthetic,
            "storage": self.storage.to_config(),
            "split": as_config(self.split_settings),
            "images": as_config(self.image_settings),
            "loader": as_config(self.loader_settings),
            "cache": as_config(self.cache_settings),
            "cohort": as_config(self.cohort_settings),
            "labels": self.labels,
            "references": self.references,
        }

    # ------------------------------------------------------------------ storage
    @property
    def store(self) -> ImageStore:
        """The image store of ``images_url`` (one per data module; re-connects itself in worker processes)."""
        if self._store is None:
            self._store = ImageStore.from_settings(
                self.storage, self.images_url, suffix=self.image_settings.suffix
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
            # rebuilding a trained run: never write over a set another run may have been trained on
            ensure_synthetic_dataset(self.synthetic["root"], keep_other=self.recorded is not None, **params)
        if self.cache_settings.enabled:
            self._build_cache(self._image_cache(self._read_index()))

    def planned_split(self) -> PatientSplit:
        """The patient split from the label index and the split settings, before any image is read (images
        that turn out missing or bad are still in it)."""
        self.index = self._read_index()
        lists = {name: self._read_list(url, name) for name, url in (self.split_lists or {}).items()}
        if lists and not (self.split_settings.views or self.cohort_settings.query or self.labels != "nih"):
            unknown_list_names(lists, self.index)  # with no filter, every listed name should be indexed
        return make_splits(
            self.index,
            train_val_list=lists["train_val"] if lists else None,
            test_list=lists["test"] if lists else None,
            val_fraction=self.split_settings.val_fraction,
            test_fraction=self.split_settings.test_fraction,
            seed=self.split_settings.seed,
        )

    def split_images(self, split: str) -> list[str]:
        """The images of ``split`` (``train``/``val``/``test``) as the run used them, without reading an
        image: after ``setup`` its split; else the planned split less the images the run skipped
        (``data.images.on_missing``/``on_bad_image=skip``), as recorded in its checkpoint or in a complete cache.
        """
        if split not in SPLITS:
            raise ConfigError(f"split={split!r}: choose one of {list(SPLITS)}")
        if self.split is not None:
            return [str(x) for x in self.split.as_dict()[split]]
        planned = self.planned_split().as_dict()[split]
        if self.recorded_skipped is not None:
            left_out = {x for names in self.recorded_skipped.values() for x in names}
        elif self.cache_settings.enabled and (cache := self._image_cache(self._read_index())).is_complete():
            names = np.asarray(cache.names, dtype=object)
            left_out = set(names[np.isin(cache.status(), (MISSING, BAD))].tolist())
        else:
            left_out = set()
        images = [str(x) for x in planned if x not in left_out]
        if self.recorded is not None:
            self.recorded.check_split(split, images, self.identity_fix())
        return images

    def state_dict(self) -> dict[str, Any]:
        """Saved in checkpoints: the images left out as missing or bad, so a run rebuilt from its
        checkpoint (``pneumo.pipelines.runs``) has the same splits without reading the images again."""
        return {"skipped": {kind: list(names) for kind, names in self.skipped.items()}}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        skipped = state_dict.get("skipped")
        if isinstance(skipped, Mapping):
            self.recorded_skipped = {str(k): [str(x) for x in v] for k, v in skipped.items()}

    def setup(self, stage: str | None = None) -> None:
        if self.augment_seed is None:
            self.augment_seed = torch.initial_seed()
        if self.split is None:
            split, index = self.planned_split(), self._read_index()
            if self.cache_settings.enabled:
                cache = self._image_cache(index)
                if not cache.is_complete():
                    log.info(
                        "the image cache is not built yet (prepare_data was not called): building it now"
                    )
                    self._build_cache(cache)
                self.image_cache = cache
                split = self._drop_unusable(split, cache)
            else:
                self._check_images_present()
            self.split = split
            for name, images in split.as_dict().items():
                if self.recorded is not None:
                    self.recorded.check_split(name, images, self.identity_fix())
                sub = index.subset(images)
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
        index, splits = self._set_up()
        sub = index.subset(splits.as_dict()[split])
        use_aug = (split == "train") if augment is None else augment
        transform = build_tensor_transforms(
            self.image_settings.size, self.image_settings.augment if use_aug else None
        )
        # MONAI's random transforms draw from their own RandomState, seeded from the OS unless set: seed it
        # from torch's seed (``seed_everything``), so a run's augmentations repeat with its seed.
        set_rnd(transform, seed=torch.initial_seed())
        source: CachedSource | StreamingSource
        if self.image_cache is not None:
            source = self.image_cache.source(list(sub.images))
        else:
            source = StreamingSource(
                self.store,
                sub.images,
                self.image_settings.size,
                on_missing=self.image_settings.on_missing,
                on_bad_image=self.image_settings.on_bad_image,
                dicom_voi=self.image_settings.dicom_voi,
            )
        return NIHImageDataset(sub, source, transform)

    # ------------------------------------------------------------------ cache
    def _image_cache(self, index: NIHLabelIndex) -> ImageCache:
        assert self.cache_settings.dir is not None  # CacheSettings: enabled needs a dir
        return ImageCache(
            self.cache_settings.dir,
            self.images_url,
            list(index.images),
            self.image_settings.size,
            image_suffix=self.image_settings.suffix,
            dicom_voi=self.image_settings.dicom_voi,
        )

    def _build_cache(self, cache: ImageCache) -> dict:
        if not cache.is_complete():
            self._check_images_present(index_names=cache.names)
        return cache.build(
            self.store,
            on_missing=self.image_settings.on_missing,
            on_bad_image=self.image_settings.on_bad_image,
            progress=self.cache_settings.progress,
            workers=self.loader_settings.workers(decoding=True),
        )

    def _drop_unusable(self, split: PatientSplit, cache: ImageCache) -> PatientSplit:
        """Leave images the cache marked missing/bad out of the splits (policy ``skip``), or fail (``error``)."""
        status = cache.status()
        names = np.asarray(cache.names, dtype=object)
        for code, kind, key in ((MISSING, "missing", "on_missing"), (BAD, "bad image", "on_bad_image")):
            bad = names[status == code].tolist()
            self.skipped[kind] = bad
            if bad and getattr(self.image_settings, key) == "error":
                raise DataRootError(
                    f"{len(bad)} image(s) of the cache {cache.dir} are {kind} (e.g. {bad[:5]}), which "
                    f"an earlier run skipped; data.images.{key}=error: fix the source or set data.images.{key}=skip"
                )
        usable = set(names[status == CACHED].tolist())
        kept = {
            k: np.asarray([x for x in v if x in usable], dtype=object) for k, v in split.as_dict().items()
        }
        dropped = sum(len(v) for v in split.as_dict().values()) - sum(len(v) for v in kept.values())
        if dropped:
            log.warning(
                "%d image(s) left out of the splits as missing or bad (data.images.on_missing/on_bad_image=skip)",
                dropped,
            )
            for name, part in kept.items():
                if len(part) == 0:
                    raise DataRootError(f"the {name} split has no readable image left")
        return PatientSplit(**kept)

    # ------------------------------------------------------------------ inputs
    def _read_index(self) -> NIHLabelIndex:
        """The label index (restricted to the cohort, when a query chooses one), read once per process
        (``prepare_data`` and ``setup`` both need it)."""
        if self.index is not None:
            return self.index
        # One small request per storage endpoint first: an unreachable one fails in seconds, in one line.
        for url in (self.images_url, self.labels_url, *(self.split_lists or {}).values()):
            self.storage.probe(url)
        views = self.split_settings.views
        if self.labels_url.startswith("bq://"):
            index, self.tables[self.labels_url] = read_table_index(self.labels_url, self.storage, views)
        else:
            index = self._read_csv_index(views)
        self._check_identity("labels", self.labels_url)
        if self.cohort_settings.query:
            self.cohort = select_cohort(index, self.cohort_settings, self.storage, self.labels_url)
            index = index.subset(self.cohort.images_in_index)
        # data.labels=rsna: the reference's images and labels (pneumo.nih.references)
        if self.labels != "nih":
            index = relabelled(index, load_reference(self.labels, self.references, self.labels_url))
        self.index = index
        return index

    def _read_csv_index(self, views: list[str] | None) -> NIHLabelIndex:
        options = self.storage.options_for(self.labels_url)
        with _explained(self.labels_url):
            exists = location_exists(self.labels_url, options, self.storage.io)
        if not exists:
            raise DataRootError(
                f"label file {redact_url(self.labels_url)} does not exist. {self._how_to_get_data()}"
            )
        with _explained(self.labels_url):
            return NIHLabelIndex.from_csv(self.labels_url, options, views=views, io=self.storage.io)

    def _read_list(self, url: str, name: str) -> list[str]:
        if url.startswith("bq://"):
            names, self.tables[url] = read_table_list(url, self.storage)
        else:
            with _explained(url):
                names = read_image_list(url, self.storage.options_for(url), self.storage.io)
        self._check_identity(f"split_lists.{name}", url)
        return names

    # ------------------------------------------------------------------ the run's data identity
    def _check_identity(self, role: str, url: str) -> None:
        """Stop when the file (or ``bq://`` table) read as ``role`` is not the one the rebuilt run recorded."""
        if self.recorded is None or role not in self.recorded.files:
            return
        if url in self.tables:  # a table: the sha256 of its rows as read, as the model card records it
            digest = self.tables[url]["sha256"]
        else:
            digest = sha256_of(url, self.storage.options_for(url), io=self.storage.io)
        self.recorded.check_file(role, redact_url(url), digest, self.identity_fix(url))

    def identity_fix(self, url: str | None = None) -> str:
        """What to do when the data read is not the rebuilt run's: for the demo set, the command that writes
        the run's set back (with what differs); for a table, reload it; else restore the file."""
        if self.synthetic:
            root = str(self.synthetic["root"])
            cfg = SyntheticConfig(**{k: v for k, v in self.synthetic.items() if k != "root"})
            try:
                written = json.loads(read_bytes(f"{root.rstrip('/')}/{MANIFEST}"))
            except (OSError, ValueError):
                written = None
            made = f" (it was made with {differences(written, cfg)})" if written else ""
            return (
                f"the demo set at {root} was written again since{made}: write the run's set back with "
                f"`{command_line(root, cfg)}` (a run trained on the set there now then needs its own back)"
            )
        if url is not None and url.startswith("bq://"):
            return "the table's rows changed since: restore them, or train again on the table as it is"
        return RESTORE

    def _check_images_present(self, index_names: Sequence[str] | None = None) -> None:
        """Fail early when the image root is missing or holds none of a few indexed images."""
        store = self.store
        names = index_names if index_names is not None else self._read_index().images
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
            "(see docs/data-and-gcs.md)."
        )

    # ------------------------------------------------------------------ loaders
    def _set_up(self) -> tuple[NIHLabelIndex, PatientSplit]:
        """The label index and the split (``setup`` first when it has not run)."""
        if self.split is None:
            self.setup("fit")
        assert self.index is not None and self.split is not None
        return self.index, self.split

    def train_class_counts(self) -> np.ndarray:
        """Images per class (negative, positive) in the train split, for class weighting."""
        index, split = self._set_up()
        y = index.subset(split.train).pneumonia
        return np.bincount(y, minlength=2)

    def train_finding_counts(self) -> tuple[np.ndarray, int]:
        """Train images with each of the 14 findings, and train images in all, for BCE ``pos_weight``."""
        index, split = self._set_up()
        findings = index.subset(split.train).findings
        return findings.sum(axis=0), len(findings)

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        """Whole uint8 batches (``UInt8Batches``); ``on_after_batch_transfer`` finishes them on the device."""
        workers = self.loader_settings.workers(decoding=self.image_cache is None)
        return DataLoader(
            UInt8Batches(self.datasets[split]),
            batch_size=self.loader_settings.batch_size,
            shuffle=shuffle,
            num_workers=workers,
            collate_fn=collated,
            pin_memory=self.loader_settings.pinned(),
            persistent_workers=workers > 0,
            worker_init_fn=seed_worker if workers > 0 else None,
        )

    # ------------------------------------------------------------------ the per-batch step
    def finish_batch(self, batch: dict, step: int | None = None, rank: int = 0) -> dict:
        """A loader's uint8 batch -> the network's float32 batch, where it is (``pneumo.images.batch``): each
        image scaled to [0, 1] as ``build_tensor_transforms`` does (bit-identical without augmentation) and,
        given the train ``step`` (the batch's index in the run), the train augmentation drawn from a seed of
        the run's seed, ``rank`` and ``step``. A batch that is not uint8 is returned as it is.

        Example:
            >>> batch = dm.finish_batch(next(iter(dm.train_dataloader())), step=0)  # doctest: +SKIP
        """
        images = batch.get("image") if isinstance(batch, Mapping) else None
        if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8:
            return batch
        if self._batch_transform is None:
            self._batch_transform = BatchTransform(self.image_settings.size, self.image_settings.augment)
        seed = None
        if step is not None:
            base = self.augment_seed if self.augment_seed is not None else torch.initial_seed()
            seed = int(np.random.SeedSequence([base, rank, step]).generate_state(1, np.uint64)[0] >> 1)
        return {**batch, "image": self._batch_transform(images, seed)}

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Lightning's hook after a batch reached the device: ``finish_batch`` there (on the GPU when training
        runs on one), augmenting training batches, seeded by the run's seed, the process's rank and the batch's
        index in the fit (Lightning's progress counter, kept in checkpoints, so a resumed run goes on with the
        same seeds)."""
        trainer = self.trainer
        if trainer is None:
            return self.finish_batch(batch)
        step = None
        if trainer.training:
            step = int(trainer.fit_loop.epoch_loop.batch_progress.total.ready)
        batch = self.finish_batch(batch, step=step, rank=trainer.global_rank)
        # "true" half precision casts float inputs before the transfer, when the images were still uint8.
        return trainer.precision_plugin.convert_input(batch)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def teardown(self, stage: str | None = None) -> None:
        if self._store is not None and self._store._state_pid == os.getpid():  # noqa: SLF001 - issue 21
            self._store.close()


def unknown_list_names(lists: Mapping[str, Sequence[str]], index: NIHLabelIndex, shown: int = 5) -> int:
    """Count the split lists' names that the label index lacks and name the first few in a warning (the
    split leaves them out); an error when the index holds none of a list's names. Returns the count.

    Example:
        >>> unknown_list_names({"test": ["a.png", "gone.png"]}, index)  # doctest: +SKIP
        1
    """
    known = set(index.table["image"].astype(str))
    missing = {name: [x for x in names if x not in known] for name, names in lists.items()}
    for name, names in lists.items():
        if names and len(missing[name]) == len(names):
            raise DataRootError(
                f"none of the {len(names)} image(s) of split list {name} is in the label index {redact_url(str(index.source))} "
                f"(e.g. {', '.join(missing[name][:shown])}): a list of another data set?"
            )
    total = sum(len(v) for v in missing.values())
    if total:
        first = [x for names in missing.values() for x in names][:shown]
        log.warning(
            "%d image name(s) of the split lists are not in the label index %s and are left out: %s%s",
            total, redact_url(str(index.source)), ", ".join(first), ", ..." if total > shown else "",
        )  # fmt: skip
    return total


def seed_worker(worker_id: int) -> None:
    """``worker_init_fn`` of the data loaders: Lightning's per-worker seeds (numpy, random, torch) and a seed of
    each worker's own for the MONAI random transforms of its dataset copy (else every worker would repeat the
    same augmentations); both follow the run's seed. Only the dataset's transforms are walked (MONAI's own
    ``worker_init_fn`` walks the whole dataset, image store and filesystem included, and recurses too deep)."""
    pl_worker_init_function(worker_id)
    info = torch.utils.data.get_worker_info()
    if info is not None and hasattr(info.dataset, "transform"):
        set_rnd(info.dataset.transform, seed=info.seed)
