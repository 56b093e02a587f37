"""The settings groups of ``NIHDataModule`` (``conf/data/*.yaml``), each checked once when it is made.

The locations stay flat at ``data.`` (``images_url``, ``labels_url``, ``split_lists``, ``bbox_url``,
``synthetic``, ``storage``: what users override most); the rest is grouped by what it decides:

- ``data.split`` (``SplitSettings``): which images go where: ``views``, ``val_fraction``, ``test_fraction``,
  ``seed``;
- ``data.images`` (``ImageSettings``): how one image is read and turned into the network input: ``size``,
  ``suffix``, ``dicom_voi``, ``augment``, and what a missing or unusable one does (``on_missing``,
  ``on_bad_image``: with or without the cache);
- ``data.loader`` (``LoaderSettings``): ``batch_size``, ``num_workers``, ``pin_memory`` (both may be ``auto``);
- ``data.cache`` (``CacheSettings``): the local uint8 image cache: ``enabled``, ``dir``, ``progress``;
- ``data.cohort`` (``CohortSettings``): a BigQuery query choosing the images (``query``, ``params``,
  ``maximum_bytes_billed``; ``pneumo.data.bigquery``).

``MOVED`` maps every key of the flat layout (before issue 21) to its new place: ``grouped`` rebuilds a
checkpoint saved with the flat layout, and a run given an old key is told where it went.

Example:
    >>> LoaderSettings(batch_size=8).num_workers
    4
    >>> grouped({"images_url": "x", "image_size": 64, "batch_size": 8, "cache": True, "cache_dir": "c"})
    {'images_url': 'x', 'images': {'size': 64}, 'loader': {'batch_size': 8}, 'cache': {'enabled': True, 'dir': 'c'}}
    >>> SplitSettings(val_fraction=1.5)
    Traceback (most recent call last):
    ...
    pneumo.errors.ConfigError: data.split.val_fraction=1.5: must be a number > 0 and < 1
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pneumo.config import checked_number, choice, choice_error, settings_from, to_plain
from pneumo.errors import ConfigError
from pneumo.images.dicom import check_voi

#: What a missing object or an unusable image does: stop naming it, or leave it out and count it.
POLICIES = ("error", "skip")


def check_policy(value: str, key: str) -> str:
    """``value`` if it is one of ``POLICIES`` (``error``, ``skip``), else ``pneumo.config.choice``'s error."""
    return choice(value, key, POLICIES)


@dataclass
class SplitSettings:
    """``data.split``: the patient split.

    Attributes:
        views: keep only these view positions (``["PA"]``); ``None`` = all.
        val_fraction: share of train_val patients held out for validation.
        test_fraction: share of patients held out for test when ``data.split_lists`` is ``None``.
        seed: seed of the patient sampling (``${seed}`` in the configs).
    """

    views: list[str] | None = None
    val_fraction: float = 0.1
    test_fraction: float = 0.2
    seed: int = 0

    def __post_init__(self) -> None:
        self.views = _views(self.views)
        key = "data.split."
        self.val_fraction = float(checked_number(self.val_fraction, key + "val_fraction", float, 0, 1,
                                                 low_open=True, high_open=True))  # fmt: skip
        self.test_fraction = float(checked_number(self.test_fraction, key + "test_fraction", float, 0, 1,
                                                  high_open=True))  # fmt: skip
        self.seed = int(checked_number(self.seed, key + "seed", int))


def _views(value: Any) -> list[str] | None:
    """``data.split.views`` as a list of view positions: one name (``PA``, from ``data.split.views=PA``) is a
    list of one, never its characters; anything but names is an error naming the key and the form.

    Example:
        >>> _views("PA"), _views(["PA", "AP"]), _views(None)
        (['PA'], ['PA', 'AP'], None)
    """
    value = to_plain(value)
    if value is None:
        return None
    items = value.split(",") if isinstance(value, str) else value
    names = [str(v).strip() for v in items] if isinstance(items, list | tuple) else []
    if not names or not all(names) or any(isinstance(v, bool | dict | list) for v in items):
        raise ConfigError(
            f"data.split.views={value!r}: give a list of view positions, e.g. data.split.views=[PA] or [PA,AP] "
            "(null = every view)"
        )
    return names


#: ``data.images.augment``'s numbers: ``key: (low, high, high_open)``.
_AUGMENT_RANGES = {
    "prob": (0, 1, False),
    "rotate_degrees": (0, 180, False),
    "scale": (0, 1, True),
    "translate": (0, 1, True),
    "noise_std": (0, None, False),
}


@dataclass
class ImageSettings:
    """``data.images``: one image, from the object to the network input.

    Attributes:
        size: side of the square network input, pixels.
        suffix: read image ``x.png`` of the index from the object ``x<suffix>`` (``.dcm`` for the bucket's
            ``dicom/`` copy or a demo set written as DICOM); ``None`` = the index's names.
        dicom_voi: grey levels of DICOM images: ``auto``, ``window`` or ``full-range`` (``pneumo.images.dicom``).
        augment: train-time augmentation (``enabled``, ``prob``, ``rotate_degrees``, ``scale``, ``translate``,
            ``noise_std``; see ``build_tensor_transforms``), ``None`` for none.
        on_missing: ``error`` (stop, naming the object) or ``skip`` (leave it out, count it) for missing objects.
        on_bad_image: the same for objects that are not a usable image (truncated, empty, not an image, ...).
    """

    size: int = 224
    suffix: str | None = None
    dicom_voi: str = "auto"
    augment: dict[str, Any] | None = None
    on_missing: str = "error"
    on_bad_image: str = "error"

    def __post_init__(self) -> None:
        self.size = int(checked_number(self.size, "data.images.size", int, 1))
        suffix = self.suffix or None
        if suffix is not None and not (str(suffix).startswith(".") and len(str(suffix)) > 1):
            raise ConfigError(f"data.images.suffix={suffix!r}: give a file ending such as .dcm, or null")
        self.suffix = None if suffix is None else str(suffix)
        check_voi(self.dicom_voi, "data.images.dicom_voi")
        check_policy(self.on_missing, "data.images.on_missing")
        check_policy(self.on_bad_image, "data.images.on_bad_image")
        self.augment = dict(to_plain(self.augment)) if self.augment is not None else None
        if self.augment is not None and self.augment.get("enabled", True):
            for name, (low, high, high_open) in _AUGMENT_RANGES.items():
                if self.augment.get(name) is not None:
                    checked_number(self.augment[name], f"data.images.augment.{name}", float, low, high,
                                   high_open=high_open)  # fmt: skip


#: Most loader processes ``num_workers=auto`` gives a cached source: each reads ~70,000 uint8 images/s
#: (``benchmarks/loader.py``), and the scaling and augmentation run after the copy to the device.
AUTO_CACHED_WORKERS = 2
#: Most loader processes ``num_workers=auto`` gives streaming (decoding, ~110 images/s per core).
AUTO_STREAMING_WORKERS = 16


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask: containers and ``taskset`` limit it)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


@dataclass
class LoaderSettings:
    """``data.loader``: the ``DataLoader`` settings; the cache build decodes in ``num_workers`` processes
    too (0 = threads of the main process).

    ``num_workers: auto`` chooses from the machine (``workers``): the cores of this process's affinity mask,
    shared among the training processes of the node (``LOCAL_WORLD_SIZE``), less one for the main process;
    at most ``AUTO_CACHED_WORKERS`` (2) reading the cache, at most ``AUTO_STREAMING_WORKERS`` (16) decoding
    (streaming and the cache build). ``pin_memory: auto`` pins the loaders' batches when CUDA is available
    (Lightning's copy to a GPU is then asynchronous: ``non_blocking``).
    """

    batch_size: int = 32
    num_workers: int | str = 4
    pin_memory: bool | str = False

    def __post_init__(self) -> None:
        self.batch_size = int(checked_number(self.batch_size, "data.loader.batch_size", int, 1))
        if _is_auto(self.num_workers):
            self.num_workers = "auto"
        else:
            try:
                self.num_workers = int(checked_number(self.num_workers, "data.loader.num_workers", int, 0))
            except ConfigError as err:
                raise ConfigError(f"{err} or auto (chosen from the machine)") from None
        if _is_auto(self.pin_memory):
            self.pin_memory = "auto"
        elif not isinstance(self.pin_memory, bool):
            raise choice_error(self.pin_memory, "data.loader.pin_memory", (True, False, "auto"))

    def workers(self, decoding: bool = False) -> int:
        """The loader (``decoding``: decode) processes to start: ``num_workers``, or the ``auto`` rule.

        Example:
            >>> LoaderSettings(num_workers=3).workers()
            3
            >>> 0 <= LoaderSettings(num_workers="auto").workers() <= AUTO_CACHED_WORKERS
            True
        """
        if self.num_workers != "auto":
            return int(self.num_workers)
        ranks = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
        spare = max(0, usable_cores() // ranks - 1)
        return min(spare, AUTO_STREAMING_WORKERS if decoding else AUTO_CACHED_WORKERS)

    def pinned(self) -> bool:
        """Whether the loaders pin their batches (``pin_memory``; ``auto``: when CUDA is available)."""
        if self.pin_memory == "auto":
            import torch

            return bool(torch.cuda.is_available())
        return bool(self.pin_memory)


def _is_auto(value: Any) -> bool:
    return isinstance(value, str) and value.strip().lower() == "auto"


@dataclass
class CacheSettings:
    """``data.cache``: decode and resize every indexed image once into a memory-mapped uint8 cache
    (``enabled``) under ``dir``, or stream every item every epoch; ``progress``: the build's progress bar
    (on a terminal; log lines otherwise)."""

    enabled: bool = False
    dir: str | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        self.enabled, self.progress = bool(self.enabled), bool(self.progress)
        if self.enabled and not self.dir:
            raise ConfigError(
                "data.cache.enabled=true needs data.cache.dir (a local folder for the image cache)"
            )


@dataclass
class CohortSettings:
    """``data.cohort``: restrict the label index to the images a BigQuery query returns (before the split).

    Attributes:
        query: Standard SQL returning a column ``image_index`` (``null``: no cohort); values come in as query
            parameters (``@name``), never by string formatting.
        params: the query parameters, ``{name: value}`` (strings, numbers, booleans or lists of one type).
        maximum_bytes_billed: refuse the query when its dry run estimates more bytes (and pass the limit to
            the job); ``null`` = no limit.
    """

    query: str | None = None
    params: dict[str, Any] | None = None
    maximum_bytes_billed: int | None = None

    def __post_init__(self) -> None:
        self.query = str(self.query).strip() or None if self.query is not None else None
        self.params = dict(to_plain(self.params) or {})
        if self.params and not self.query:
            raise ConfigError("data.cohort.params are set but data.cohort.query is not: give the query")
        if self.maximum_bytes_billed is not None:
            self.maximum_bytes_billed = int(
                checked_number(self.maximum_bytes_billed, "data.cohort.maximum_bytes_billed", int, 1)
            )


#: The groups: ``NIHDataModule``'s argument (and ``data.<name>`` key) -> its settings class.
GROUPS: dict[str, type] = {
    "split": SplitSettings,
    "images": ImageSettings,
    "loader": LoaderSettings,
    "cache": CacheSettings,
    "cohort": CohortSettings,
}

#: Every key of the flat ``data.`` layout (checkpoints and configs before issue 21) -> its place now.
MOVED = {
    "views": "split.views",
    "val_fraction": "split.val_fraction",
    "test_fraction": "split.test_fraction",
    "split_seed": "split.seed",
    "image_size": "images.size",
    "image_suffix": "images.suffix",
    "dicom_voi": "images.dicom_voi",
    "augment": "images.augment",
    "on_missing": "images.on_missing",
    "on_bad_image": "images.on_bad_image",
    "batch_size": "loader.batch_size",
    "num_workers": "loader.num_workers",
    "pin_memory": "loader.pin_memory",
    "cache": "cache.enabled",
    "cache_dir": "cache.dir",
    "progress": "cache.progress",
}

#: Settings a command may change without changing the data (how, not what, is read): ``group.key``.
RUNTIME_KEYS = (
    "loader.batch_size",
    "loader.num_workers",
    "loader.pin_memory",
    "cache.dir",
    "cache.progress",
)


def is_flat(data: Mapping) -> bool:
    """Whether ``data`` (a data config or a checkpoint's data-module hyperparameters) has the flat layout:
    a key of ``MOVED`` at the top (``cache`` only as the old true/false)."""
    return any(k in data and not (k == "cache" and isinstance(data[k], Mapping)) for k in MOVED)


def grouped(data: Mapping) -> dict[str, Any]:
    """``data`` in the grouped layout: each flat key of ``MOVED`` moved into its group (the groups' other
    keys and every key already grouped kept as they are). Checkpoints written before the groups existed
    are rebuilt through this."""
    out: dict[str, Any] = {}
    moved: dict[str, dict[str, Any]] = {}
    for key, value in dict(data).items():
        if key in MOVED and not (key == "cache" and isinstance(value, Mapping)):
            group, name = MOVED[key].split(".")
            moved.setdefault(group, {})[name] = value
        else:
            out[key] = value
    for group, values in moved.items():
        out[group] = {**dict(out.get(group) or {}), **values}
    return out


def group_settings(data: Mapping) -> dict[str, Any]:
    """The groups of a (grouped) data config, built and checked: ``{"split": SplitSettings, ...}``;
    a group absent from ``data`` takes its defaults, a key that is not a setting is a ``ConfigError``
    naming ``data.<group>.<key>``. The fractions must leave train patients when there are no split lists.
    """
    settings: dict[str, Any] = {
        name: settings_from(cls, data.get(name), f"data.{name}") for name, cls in GROUPS.items()
    }
    split = settings["split"]
    if data.get("split_lists") is None and split.val_fraction + split.test_fraction >= 1:
        total = split.val_fraction + split.test_fraction
        raise ConfigError(
            f"data.split.val_fraction + data.split.test_fraction = {total:g} leaves no train patient: "
            "keep the sum < 1"
        )
    return settings


def as_config(settings: Any) -> dict[str, Any]:
    """A settings group as a plain mapping (saved in checkpoints, read back by ``settings_from``)."""
    return dataclasses.asdict(settings)
