"""``NIHImageDataset``: one labelled, preprocessed chest X-ray per item."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch.utils.data import Dataset

from pneumo.data.decode import decode_grayscale
from pneumo.data.index import NIHLabelIndex
from pneumo.data.store import ImageStore
from pneumo.data.transforms import ResizeToUint8


class StreamingSource:
    """Fetch, decode and resize image ``i`` of ``names`` on every call (no local copy)."""

    def __init__(self, store: ImageStore, names: np.ndarray, image_size: int) -> None:
        self.store, self.names = store, names
        self.resize = ResizeToUint8(image_size)

    def __call__(self, i: int) -> np.ndarray:
        name = self.names[i]
        return self.resize(decode_grayscale(self.store.read(name), self.store.url(name)))


class NIHImageDataset(Dataset):
    """Items ``{"image": (1, S, S) float32, "label": int64, "findings": (14,) float32, "image_id": str}``.

    Args:
        index: label index of this split (row ``i`` describes item ``i``).
        source: callable giving the ``(S, S)`` uint8 pixels of item ``i`` (streaming or cached).
        transform: tensor transforms (``build_tensor_transforms``).
    """

    def __init__(self, index: NIHLabelIndex, source: Callable[[int], np.ndarray], transform: Callable) -> None:
        self.index, self.source, self.transform = index, source, transform
        self._names = index.images
        self._labels = index.pneumonia.astype(np.int64)
        self._findings = index.findings.astype(np.float32)

    def __len__(self) -> int:
        return len(self._names)

    def __getitem__(self, i: int) -> dict:
        return {
            "image": self.transform(self.source(i)[None]),
            "label": torch.tensor(self._labels[i]),
            "findings": torch.from_numpy(self._findings[i]),
            "image_id": self._names[i],
        }
