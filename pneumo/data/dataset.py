"""``NIHImageDataset``: one labelled, preprocessed chest X-ray per item, from the cache or streamed.

Example:
    >>> source = StreamingSource(ImageStore("data/nih_demo/images"), index.images, image_size=64)  # doctest: +SKIP
    >>> ds = NIHImageDataset(index, source, build_tensor_transforms(64))  # doctest: +SKIP
    >>> ds[0]["image"].shape  # doctest: +SKIP
    torch.Size([1, 64, 64])
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, default_collate

from pneumo.data.cache import PixelDecoder
from pneumo.data.settings import check_policy
from pneumo.errors import PneumoError
from pneumo.images.decode import BadImageError
from pneumo.io.reading import ObjectNotFoundError
from pneumo.io.store import ImageStore
from pneumo.nih.index import NIHLabelIndex

log = logging.getLogger(__name__)


class SkippedBatchError(PneumoError, RuntimeError):
    """Every image of a batch was skipped (``data.images.on_missing``/``on_bad_image=skip``): the images are not
    where ``data.images_url`` says, most likely."""

    def __init__(self, message: str) -> None:
        # A DataLoader worker's error is re-raised in the main process as ``type(err)(message=<the worker's
        # whole traceback>)``: keep only the original message, so that the user still gets one line.
        marker = f"{type(self).__name__}: "
        if "Original Traceback" in message and marker in message:
            message = message.rsplit(marker, 1)[1].strip()
        super().__init__(message)


class StreamingSource:
    """Fetch, decode and resize images of ``names`` on every call (no local copy: the seed's mode).

    ``many(indices)`` fetches a whole batch with ``store.concurrency`` requests in flight and applies the
    policies: with ``skip`` an unreadable image comes back as ``None`` (and is counted), with ``error`` its
    exception (naming the object) is raised.

    Args:
        store: where the images are read.
        names: image names; item ``i`` is ``names[i]``.
        image_size: side of the resized image.
        on_missing: ``error`` or ``skip`` for objects that do not exist.
        on_bad_image: ``error`` or ``skip`` for objects that are not a usable image.
        dicom_voi: grey levels of DICOM images (``data.images.dicom_voi``, see ``pneumo.images.dicom``).
    """

    def __init__(
        self,
        store: ImageStore,
        names: np.ndarray,
        image_size: int,
        on_missing: str = "error",
        on_bad_image: str = "error",
        dicom_voi: str = "auto",
    ) -> None:
        self.store, self.names = store, names
        self.decode = PixelDecoder(store, image_size, dicom_voi)
        self.on_missing = check_policy(on_missing, "data.images.on_missing")
        self.on_bad_image = check_policy(on_bad_image, "data.images.on_bad_image")
        self.skipped: list[str] = []

    def __len__(self) -> int:
        return len(self.names)

    def __call__(self, i: int) -> np.ndarray:
        name = self.names[i]
        return self.decode(name, self.store.read(name))

    def many(self, indices: Sequence[int]) -> list[np.ndarray | None]:
        """Pixels of ``indices`` (fetched concurrently); ``None`` where an image was skipped by policy."""
        names = [self.names[i] for i in indices]
        out: list[np.ndarray | None] = []
        for name, result in zip(names, self.store.map_ordered(names, self.decode)):
            if isinstance(result, np.ndarray):
                out.append(result)
                continue
            skip = (isinstance(result, ObjectNotFoundError) and self.on_missing == "skip") or (
                isinstance(result, BadImageError) and self.on_bad_image == "skip"
            )
            if not skip:
                raise result
            self.skipped.append(name)
            if len(self.skipped) <= 5 or len(self.skipped) % 100 == 0:
                log.warning(
                    "skipped %d image(s) so far in this process; latest: %s", len(self.skipped), result
                )
            out.append(None)
        return out

    def __getstate__(self) -> dict:
        return {**self.__dict__, "skipped": []}


class NIHImageDataset(Dataset):
    """Items ``{"image": (1, S, S) float32, "label": int64, "findings": (14,) float32, "image_id": str}``.

    Args:
        index: label index of this split (row ``i`` describes item ``i``).
        source: callable giving the ``(S, S)`` uint8 pixels of item ``i`` (``CachedSource`` or
            ``StreamingSource``); a source with ``many(indices)`` serves whole batches at once.
        transform: tensor transforms (``build_tensor_transforms``).
    """

    def __init__(
        self, index: NIHLabelIndex, source: Callable[[int], np.ndarray], transform: Callable
    ) -> None:
        self.index, self.source, self.transform = index, source, transform
        self._names = index.images
        self._labels = index.pneumonia.astype(np.int64)
        self._findings = index.findings.astype(np.float32)

    def __len__(self) -> int:
        return len(self._names)

    def _item(self, i: int, pixels: np.ndarray) -> dict:
        return {
            "image": self.transform(pixels[None]),
            "label": torch.tensor(self._labels[i]),
            "findings": torch.from_numpy(self._findings[i]),
            "image_id": self._names[i],
        }

    def __getitem__(self, i: int) -> dict:
        return self._item(i, self.source(i))

    def batch(self, indices: Sequence[int]) -> dict:
        """A whole collated batch as the loaders give it: ``{"image": (B, 1, S, S) uint8, "label": (B,) int64,
        "findings": (B, 14) float32, "image_id": [str]}``, untransformed (``pneumo.images.batch`` finishes it).

        A cached source reads the batch in one call (``CachedSource.many``); a streamed one fetches it
        concurrently. Images skipped by policy are left out, their labels with them; a batch in which every
        image was skipped raises ``SkippedBatchError``.
        """
        rows = np.asarray(indices, dtype=np.int64)
        many = getattr(self.source, "many", None)
        pixels = many(rows.tolist()) if many is not None else np.stack([self.source(i) for i in rows])
        if not isinstance(pixels, np.ndarray):  # a streamed batch: a list with None where skipped
            kept = [k for k, p in enumerate(pixels) if p is not None]
            if not kept:
                self._all_skipped(rows)
            rows = rows[kept]
            pixels = np.stack([pixels[k] for k in kept])
        return {
            "image": torch.from_numpy(pixels).unsqueeze(1),
            "label": torch.from_numpy(self._labels[rows]),
            "findings": torch.from_numpy(self._findings[rows]),
            "image_id": [str(x) for x in self._names[rows]],
        }

    def _all_skipped(self, indices: Sequence[int] | np.ndarray) -> None:
        first = self._names[indices[0]] if len(indices) else "?"
        raise SkippedBatchError(
            f"all {len(indices)} images of a batch were skipped as missing or bad (first: {first}): "
            "check data.images_url and the label index"
        )

    def __getitems__(self, indices: Sequence[int]) -> list[dict]:
        """A batch of items (the DataLoader calls this): streamed sources fetch the batch concurrently.

        Images skipped by policy are left out of the batch; a batch in which every image was skipped raises,
        since an empty batch cannot be collated.
        """
        many = getattr(self.source, "many", None)
        if many is None:
            return [self[i] for i in indices]
        pixels = many(list(indices))
        items = [self._item(i, p) for i, p in zip(indices, pixels) if p is not None]
        if not items:
            self._all_skipped(indices)
        return items


class UInt8Batches(Dataset):
    """What the data module's loaders read: ``dataset``'s whole uint8 batches (``NIHImageDataset.batch``), one
    call per batch (the ``DataLoader`` passes a batch's indices to ``__getitems__``; use ``collate_fn=
    collated``). The per-item dataset (float32 items, transforms applied) stays as it is for other callers.

    Example:
        >>> loader = DataLoader(UInt8Batches(ds), batch_size=32, collate_fn=collated)  # doctest: +SKIP
        >>> next(iter(loader))["image"].dtype  # doctest: +SKIP
        torch.uint8
    """

    def __init__(self, dataset: NIHImageDataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> dict:
        batch = self.dataset.batch([i])
        return {"image": batch["image"][0], "label": batch["label"][0], "findings": batch["findings"][0],
                "image_id": batch["image_id"][0]}  # fmt: skip

    def __getitems__(self, indices: Sequence[int]) -> dict:
        return self.dataset.batch(indices)


def collated(batch: dict | list) -> dict:
    """The loaders' ``collate_fn``: a batch from ``UInt8Batches.__getitems__`` is collated already; a list of
    items (a dataset without ``__getitems__``) goes through torch's ``default_collate``."""
    if isinstance(batch, dict):
        return batch
    return default_collate(batch)
