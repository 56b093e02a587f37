"""The per-batch tensor stage: a whole ``(B, 1, S, S)`` uint8 batch -> float32 network input, augmented or not.

The loaders hand out uint8 batches (50 KB per image at 224 px, a quarter of float32's 200 KB) and this stage
runs once per batch after the copy to the device (``NIHDataModule.on_after_batch_transfer``: on the GPU when
there is one). It is ``build_tensor_transforms`` applied to a batch:

- ``scale_batch``: MONAI ``ScaleIntensity(minv=0, maxv=1)`` per image (each image's own minimum and maximum),
  in the same float32 operations, so the result is bit-identical to the per-item chain (the ``Resize`` there is
  a no-op at the cached size).
- ``BatchAugment``: the train augmentation of ``data.images.augment`` with the parameters and distributions of
  MONAI's ``RandAffine`` and ``RandGaussianNoise`` as ``build_tensor_transforms`` configures them, drawn per
  image from a generator seeded per batch: each image is transformed with probability ``prob``; the rotation is
  uniform in ``±rotate_degrees``; the scale ``1 + uniform(±scale)`` and the shift ``uniform(±translate · S)``
  pixels apply to the first spatial axis (rows) only, as MONAI does with the scalar ranges it is given; bilinear
  sampling with border padding about the image centre (``F.affine_grid`` / ``F.grid_sample``, MONAI's
  ``Resample`` with ``align_corners=False``); noise: with probability ``prob``, Gaussian with a standard
  deviation uniform in ``[0, noise_std)`` (MONAI's ``sample_std``).

Example:
    >>> images = torch.randint(0, 256, (4, 1, 32, 32), dtype=torch.uint8)
    >>> x = BatchTransform(32, {"enabled": True, "prob": 1.0, "rotate_degrees": 5})(images, seed=0)
    >>> tuple(x.shape), x.dtype
    ((4, 1, 32, 32), torch.float32)
    >>> torch.equal(x, BatchTransform(32, {"enabled": True, "prob": 1.0, "rotate_degrees": 5})(images, seed=0))
    True
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F


def scale_batch(images: torch.Tensor) -> torch.Tensor:
    """``(B, C, H, W)`` images (uint8 or any dtype) -> float32, each image min-max scaled to [0, 1] exactly as
    MONAI ``ScaleIntensity(minv=0.0, maxv=1.0)`` scales one image (a constant image becomes zeros).

    Example:
        >>> scale_batch(torch.tensor([[[[10, 20], [30, 50]]], [[[7, 7], [7, 7]]]], dtype=torch.uint8))[:, 0]
        tensor([[[0.0000, 0.2500],
                 [0.5000, 1.0000]],
        <BLANKLINE>
                [[0.0000, 0.0000],
                 [0.0000, 0.0000]]])
    """
    x = images.to(torch.float32)
    low = x.amin(dim=(1, 2, 3), keepdim=True)
    high = x.amax(dim=(1, 2, 3), keepdim=True)
    # MONAI: (x - min) / (max - min), and x * 0 for a constant image; integer pixels make max - min >= 1 in
    # the first case and x - min == 0 in the second, so one division serves both, bit for bit.
    span = torch.where(high > low, high - low, torch.ones_like(high))
    return (x - low) / span


@dataclass(frozen=True)
class BatchAugment:
    """The train augmentation of one batch (see the module docstring for the distributions).

    Attributes:
        prob: probability of the affine transform of an image, and (separately) of its noise.
        rotate: largest rotation, radians.
        scale: largest relative change of scale (first spatial axis).
        translate: largest shift, pixels (first spatial axis).
        noise_std: largest standard deviation of the Gaussian noise; 0 = no noise.
    """

    prob: float = 0.5
    rotate: float = 0.0
    scale: float = 0.0
    translate: float = 0.0
    noise_std: float = 0.0

    @classmethod
    def from_settings(cls, augment: Mapping | None, image_size: int) -> BatchAugment | None:
        """From ``data.images.augment`` (``None`` when absent or ``enabled: false``), as
        ``build_tensor_transforms`` reads it.

        Example:
            >>> BatchAugment.from_settings({"prob": 1, "translate": 0.5}, 32).translate
            16.0
        """
        if not augment or not augment.get("enabled", True):
            return None
        return cls(
            prob=float(augment.get("prob", 0.5)),
            rotate=math.radians(float(augment.get("rotate_degrees", 0.0))),
            scale=float(augment.get("scale", 0.0)),
            translate=float(augment.get("translate", 0.0)) * image_size,
            noise_std=float(augment.get("noise_std", 0.0)),
        )

    def draw(self, n: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """The random parameters of ``n`` images (always all of them, in a fixed order, so that a batch's
        draws do not depend on which images are transformed): float64 on the CPU."""

        def uniform(low: float, high: float) -> torch.Tensor:
            return low + (high - low) * torch.rand(n, generator=generator, dtype=torch.float64)

        return {
            "affine": torch.rand(n, generator=generator, dtype=torch.float64) < self.prob,
            "angle": uniform(-self.rotate, self.rotate),
            "shift": uniform(-self.translate, self.translate),
            "scale": 1.0 + uniform(-self.scale, self.scale),
            "noise": torch.rand(n, generator=generator, dtype=torch.float64) < self.prob,
            "noise_std": uniform(0.0, self.noise_std),
        }

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Augment the float batch ``x`` ``(B, C, H, W)``; ``generator`` (a CPU one) gives every random draw."""
        params = self.draw(x.shape[0], generator)
        chosen = torch.nonzero(params["affine"]).flatten()
        if len(chosen) and (self.rotate or self.scale or self.translate):
            theta = affine_theta(
                params["angle"][chosen], params["shift"][chosen], params["scale"][chosen], x.shape[-2:]
            )
            part = x[chosen.to(x.device)]
            grid = F.affine_grid(theta.to(x.device, part.dtype), list(part.shape), align_corners=False)
            sampled = F.grid_sample(part, grid, mode="bilinear", padding_mode="border", align_corners=False)
            x = x.index_copy(0, chosen.to(x.device), sampled)
        if self.noise_std > 0:
            # The noise itself is drawn where the batch is (no host round trip), from a seed of this batch.
            device_gen = torch.Generator(device=x.device)
            device_gen.manual_seed(int(torch.randint(0, 2**62, (1,), generator=generator)))
            noise = torch.randn(x.shape, generator=device_gen, device=x.device, dtype=x.dtype)
            std = torch.where(params["noise"], params["noise_std"], 0.0).to(x.device, x.dtype)
            x = x + noise * std.view(-1, *([1] * (x.dim() - 1)))
        return x


def affine_theta(
    angle: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, size: tuple[int, int] | torch.Size
) -> torch.Tensor:
    """``(n, 2, 3)`` ``F.affine_grid`` matrices of MONAI's 2-D affine ``rotate @ translate @ scale``, which maps
    output to input pixel coordinates about the image centre in (row, column) order, with ``shift`` and
    ``scale`` on the row axis; converted to ``grid_sample``'s normalised (x, y) coordinates.

    Example:
        >>> theta = affine_theta(torch.tensor([math.pi / 2]), torch.zeros(1), torch.ones(1), (8, 8))
        >>> (theta[0].round(decimals=6) + 0.0).tolist()  # a quarter turn
        [[0.0, 1.0, 0.0], [-1.0, 0.0, 0.0]]
    """
    height, width = int(size[0]), int(size[1])
    cos, sin = torch.cos(angle), torch.sin(angle)
    # MONAI, (row, col): [[cos, -sin], [sin, cos]] @ [[scale, 0], [0, 1]], offset rotate @ (shift, 0).
    rr, rc, cr, cc = cos * scale, -sin, sin * scale, cos
    t_row, t_col = cos * shift, sin * shift
    # To (x = col, y = row), and pixels -> normalised units (2 / side per axis, align_corners=False).
    theta = torch.zeros(len(angle), 2, 3, dtype=torch.float64)
    theta[:, 0, 0], theta[:, 0, 1], theta[:, 0, 2] = cc, cr * height / width, t_col * 2 / width
    theta[:, 1, 0], theta[:, 1, 1], theta[:, 1, 2] = rc * width / height, rr, t_row * 2 / height
    return theta


class BatchTransform:
    """``build_tensor_transforms(image_size, augment)`` for a whole batch: ``scale_batch``, then (given a seed)
    ``BatchAugment``; without a seed, or without augmentation settings, the scaling only.

    Args:
        image_size: side of the images (the translation is a fraction of it).
        augment: ``data.images.augment`` (``None`` = none).
    """

    def __init__(self, image_size: int, augment: Mapping | None = None) -> None:
        self.augment = BatchAugment.from_settings(augment, image_size)

    def __call__(self, images: torch.Tensor, seed: int | None = None) -> torch.Tensor:
        x = scale_batch(images)
        if self.augment is None or seed is None:
            return x
        generator = torch.Generator()
        generator.manual_seed(int(seed))
        return self.augment(x, generator)
