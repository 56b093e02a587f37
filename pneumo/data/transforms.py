"""MONAI transforms of pneumo: the deterministic resize (shared by streaming and cache) and the tensor stage.

Preprocessing is split in two so that a cached and a streamed image give identical tensors:

1. ``ResizeToUint8`` (once per image; the cache stores its output): MONAI ``Resize`` with area
   interpolation to ``image_size x image_size``, rounded back to uint8.
2. ``build_tensor_transforms`` (every epoch): MONAI ``ScaleIntensity`` to [0, 1], ``Resize`` (a no-op
   safeguard), optional train-time augmentation, ``EnsureType`` to a float32 tensor of shape ``(1, H, W)``.

Example:
    >>> resize = ResizeToUint8(64)
    >>> tensor = build_tensor_transforms(64)(resize(np.zeros((1024, 1024), np.uint8))[None])
    >>> tuple(tensor.shape), tensor.dtype
    ((1, 64, 64), torch.float32)
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import torch
from monai.transforms import Compose, EnsureType, RandAffine, RandGaussianNoise, Resize, ScaleIntensity


class ResizeToUint8:
    """Resize a ``(H, W)`` uint8 image to ``(size, size)`` uint8 with MONAI's area interpolation."""

    def __init__(self, size: int) -> None:
        self.size = int(size)
        self._resize = Resize((self.size, self.size), mode="area")

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        if pixels.shape == (self.size, self.size):
            return np.array(pixels, dtype=np.uint8)  # a writable copy (decoded PNGs and memmaps are read-only)
        out = self._resize(torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.float32))[None])
        return np.clip(np.rint(out.numpy()[0]), 0, 255).astype(np.uint8)


def build_tensor_transforms(image_size: int, augment: Mapping | None = None) -> Compose:
    """The per-epoch MONAI pipeline: ``(1, H, W)`` uint8 array -> float32 tensor in [0, 1].

    Args:
        image_size: output side in pixels.
        augment: train-time augmentation (``None`` or ``enabled: false`` for val/test/inference) with keys
            ``prob``, ``rotate_degrees``, ``scale``, ``translate`` (fraction of the side), ``noise_std``.
            Left-right flips are deliberately absent: they move the heart to the wrong side.
    """
    steps: list = [ScaleIntensity(minv=0.0, maxv=1.0), Resize((image_size, image_size), mode="area")]
    if augment and augment.get("enabled", True):
        prob = float(augment.get("prob", 0.5))
        steps.append(
            RandAffine(
                prob=prob,
                rotate_range=math.radians(float(augment.get("rotate_degrees", 0.0))),
                scale_range=float(augment.get("scale", 0.0)),
                translate_range=float(augment.get("translate", 0.0)) * image_size,
                padding_mode="border",
            )
        )
        if float(augment.get("noise_std", 0.0)) > 0:
            steps.append(RandGaussianNoise(prob=prob, std=float(augment["noise_std"])))
    steps.append(EnsureType(data_type="tensor", dtype=torch.float32, track_meta=False))
    return Compose(steps)
