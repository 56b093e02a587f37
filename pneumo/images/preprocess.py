"""MONAI transforms of pneumo: the deterministic resize (shared by streaming and cache) and the tensor stage.

Preprocessing is split in two so that a cached and a streamed image give identical tensors:

1. ``ResizeToUint8`` (once per image; the cache stores its output): area-averaging resize (Pillow's box
   filter, on the 8-bit pixels) to ``image_size x image_size`` uint8. It runs once per image on the full
   1024-px radiograph, which makes it the costliest step after PNG decoding: Pillow does it in 1.0 ms where
   MONAI ``Resize(mode="area")`` on a float copy takes 1.7 ms (``benchmarks/loader.py``, issue 3).
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
from PIL import Image


class ResizeToUint8:
    """Resize a ``(H, W)`` uint8 image to ``(size, size)`` uint8 by area averaging (Pillow's box filter).

    Each output pixel is the mean of the source pixels whose centres fall in its footprint, rounded; a
    non-square source is stretched (x and y scale separately), as NIH's images are square.
    """

    def __init__(self, size: int) -> None:
        self.size = int(size)

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        pixels = np.ascontiguousarray(pixels, dtype=np.uint8)
        if pixels.shape == (self.size, self.size):
            return pixels.copy()  # writable (decoded PNGs and memmaps are read-only)
        resized = Image.fromarray(pixels).resize((self.size, self.size), Image.Resampling.BOX)
        return np.array(resized, dtype=np.uint8)


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
