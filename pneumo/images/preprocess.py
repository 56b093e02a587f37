"""The one preprocessing chain of pneumo: object bytes -> decoded grey pixels -> resized uint8 -> tensor.

Training, test, the cache, ``explain.py`` and the Grad-CAM callback all preprocess through this module
(``Preprocessor`` for one image end to end; ``Preprocessor.pixels`` is what the cache stores and streaming
yields; ``build_tensor_transforms`` the per-epoch stage the data module applies, with augmentation for
training), so every path feeds the network the same tensors. Decoding is ``pneumo.images.decode``.

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
    >>> import io; png = io.BytesIO(); Image.fromarray(np.zeros((1024, 1024), np.uint8)).save(png, format="PNG")
    >>> torch.equal(Preprocessor(64)(png.getvalue(), "x.png")[0], tensor)
    True
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from functools import cached_property

import numpy as np
import torch
from monai.transforms import Compose, EnsureType, RandAffine, RandGaussianNoise, Resize, ScaleIntensity
from PIL import Image

from pneumo.images.decode import decode_grayscale


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


class Preprocessor:
    """Training's preprocessing of one image without augmentation: ``decode_grayscale`` -> ``ResizeToUint8``
    (``pixels``: what the cache stores) -> ``build_tensor_transforms(image_size)`` (``tensor``).

    Args:
        image_size: the network's input side.
        display_size: also keep the source pixels for overlays, shrunk (aspect kept) to at most this width;
            ``None`` keeps none.
        dicom_voi: grey levels of DICOM images (``auto``, ``window``, ``full-range``; ``pneumo.images.dicom``).

    Example:
        >>> pre = Preprocessor(32)
        >>> pre.tensor(pre.resize(np.full((100, 80), 255, np.uint8))).shape
        torch.Size([1, 32, 32])
    """

    def __init__(self, image_size: int, display_size: int | None = None, dicom_voi: str = "auto") -> None:
        self.image_size, self.dicom_voi = int(image_size), dicom_voi
        self.display_size = None if display_size is None else int(display_size)
        self.resize = ResizeToUint8(self.image_size)

    @cached_property
    def transform(self) -> Compose:
        """The tensor stage (built on first use: the cache's decoders never need it)."""
        return build_tensor_transforms(self.image_size, None)

    def pixels(self, data: bytes, name: str) -> np.ndarray:
        """Object bytes -> ``(S, S)`` uint8: decoded and resized; ``BadImageError`` names ``name``."""
        return self.resize(decode_grayscale(data, name, self.dicom_voi))

    def tensor(self, pixels: np.ndarray) -> torch.Tensor:
        """``(S, S)`` uint8 pixels (``pixels``' output) -> the ``(1, S, S)`` float32 network input."""
        return self.transform(pixels[None])

    def __call__(self, data: bytes, name: str) -> tuple[torch.Tensor, tuple[int, int]]:
        tensor, shape, _ = self.with_display(data, name)
        return tensor, shape

    def with_display(self, data: bytes, name: str) -> tuple[torch.Tensor, tuple[int, int], np.ndarray | None]:
        """The network tensor, the source ``(H, W)`` and the display copy of the source pixels."""
        source = decode_grayscale(data, name, self.dicom_voi)
        shape = (int(source.shape[0]), int(source.shape[1]))
        display = None
        if self.display_size is not None:
            display = source
            if shape[1] > self.display_size:
                height = max(1, round(shape[0] * self.display_size / shape[1]))
                display = np.asarray(
                    Image.fromarray(source).resize((self.display_size, height), Image.Resampling.BOX)
                )
        return self.tensor(self.resize(source)), shape, display
