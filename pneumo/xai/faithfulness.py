"""Faithfulness of saliency maps: deletion and insertion curves (Petsiuk et al. 2018, RISE), patch-wise.

The image is cut into a ``grid x grid`` patches ranked by their mean heat. **Deletion** replaces the patches
with a baseline (the image's darkest grey level, a blurred copy of the image, or its mean) in heat order,
hottest first, and follows the target's probability: a faithful map makes it fall fast (low area under the
curve). **Insertion** starts from the baseline and puts the patches back in heat order: the probability should
rise fast (high area). Both are compared with the same curves in a random patch order, which any map should
beat.

Example:
    >>> from monai.networks.nets import DenseNet
    >>> net = DenseNet(spatial_dims=2, in_channels=1, out_channels=2, block_config=(1, 1, 1, 1)).eval()
    >>> x = torch.rand(2, 1, 32, 32)
    >>> curves = deletion_insertion(net, x, torch.rand(2, 32, 32), torch.tensor([1, 1]), grid=4, steps=4)
    >>> tuple(curves["deletion"].shape), tuple(curves["insertion_random_curve"].shape)
    ((2,), (2, 5))
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pneumo.models.tasks import MultiLabelTask, task_of
from pneumo.xai.gradcam import eval_mode

#: ``black`` first: on a radiograph the darkest level is air, with no tissue and no opacity to read, while a
#: blurred copy keeps a smooth opacity and the mean turns dark lungs grey, both of which can look like pneumonia
#: (docs/explanations.md, "Faithfulness").
BASELINES = ("black", "blur", "mean")


def blurred(images: torch.Tensor, sigma_fraction: float = 1 / 16) -> torch.Tensor:
    """A Gaussian blur of ``(B, C, H, W)`` images (sigma = ``sigma_fraction`` of the side, reflect padding)."""
    sigma = max(0.5, sigma_fraction * images.shape[-1])
    radius = min(int(3 * sigma), images.shape[-1] // 2 - 1, images.shape[-2] // 2 - 1)
    t = torch.arange(-radius, radius + 1, dtype=images.dtype, device=images.device)
    g = torch.exp(-(t**2) / (2 * sigma**2))
    g = g / g.sum()
    c = images.shape[1]
    x = F.pad(images, (radius, radius, radius, radius), mode="reflect")
    x = F.conv2d(x, g.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    return F.conv2d(x, g.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)


def baseline_images(images: torch.Tensor, baseline: str) -> torch.Tensor:
    """What deletion puts in place of the removed patches of ``(B, C, H, W)`` images (one of ``BASELINES``).

    Example:
        >>> x = torch.tensor([[[[0.25, 0.75], [0.5, 0.5]]]])
        >>> baseline_images(x, "black").flatten().tolist(), baseline_images(x, "mean").flatten().tolist()
        ([0.25, 0.25, 0.25, 0.25], [0.5, 0.5, 0.5, 0.5])
    """
    if baseline == "blur":
        return blurred(images)
    level = images.amin(dim=(1, 2, 3), keepdim=True) if baseline == "black" else images.mean((1, 2, 3), True)
    return level.expand_as(images)


def target_probability(model: nn.Module, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``(B,)`` probability of each image's target output: sigmoid of it (a multi-label model) or the
    softmax over the outputs (binary; a bare network counts as binary), before any temperature.

    Example:
        >>> target_probability(torch.nn.Identity(), torch.tensor([[0.0, 0.0], [0.0, 2.0]]), torch.tensor([1, 0]))
        tensor([0.5000, 0.1192])
    """
    if isinstance(task_of(model), MultiLabelTask):
        return torch.sigmoid(logits).gather(1, targets[:, None])[:, 0]
    return torch.softmax(logits, dim=1).gather(1, targets[:, None])[:, 0]


def _patch_order(maps: torch.Tensor, grid: int, generator: torch.Generator | None) -> torch.Tensor:
    """``(B, grid*grid)`` patch indices, hottest first (or shuffled with ``generator``)."""
    heat = F.adaptive_avg_pool2d(maps[:, None].float(), grid).flatten(1)
    if generator is not None:
        return torch.stack([torch.randperm(heat.shape[1], generator=generator) for _ in range(len(heat))])
    return heat.argsort(dim=1, descending=True, stable=True)


def _curves(
    model: nn.Module, images: torch.Tensor, base: torch.Tensor, order: torch.Tensor, targets: torch.Tensor,
    grid: int, steps: int,
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """Deletion and insertion curves ``(B, steps + 1)`` (the target's probability after each step) for one
    patch order."""
    b, n = order.shape
    h, w = images.shape[-2:]
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(n, device=order.device).expand(b, n))
    deletion, insertion = [], []
    for k in range(steps + 1):
        cut = round(k * n / steps)
        gone = (rank < cut).float().view(b, 1, grid, grid)
        mask = F.interpolate(gone, size=(h, w), mode="nearest").to(images.dtype)
        with torch.no_grad():
            d = model(images * (1 - mask) + base * mask)
            i = model(base * (1 - mask) + images * mask)
        deletion.append(target_probability(model, d, targets))
        insertion.append(target_probability(model, i, targets))
    return torch.stack(deletion, 1), torch.stack(insertion, 1)


def deletion_insertion(
    model: nn.Module,
    images: torch.Tensor,
    maps: torch.Tensor,
    targets: torch.Tensor,
    grid: int = 8,
    steps: int = 16,
    baseline: str = "black",
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """Deletion and insertion of ``images`` in the heat order of ``maps`` and in a seeded random patch order.

    Args:
        model: the classifier (logits ``(B, K)``); run in eval mode, without gradients.
        images: ``(B, C, H, W)``; maps: ``(B, H, W)`` (any scale: only their order counts); targets: ``(B,)``.
        grid: the image is cut into ``grid x grid`` patches, ranked by their mean heat.
        steps: points of each curve after the start (``steps + 1`` in all, evenly spaced in patches).
        baseline: ``black`` (every pixel at the image's darkest grey level), ``blur`` (a Gaussian blur of the
            image) or ``mean`` (its mean grey level).
        seed: seed of the random order.

    Returns:
        Per-image AUCs ``(B,)`` (``deletion``, ``insertion``, ``deletion_random``, ``insertion_random``; the
        curve's x axis runs from 0 to 1, so an AUC is a mean probability) and the curves ``(B, steps + 1)``
        under the same names with ``_curve`` appended. Cost: ``4 * (steps + 1)`` forward passes per image.
    """
    if baseline not in BASELINES:
        raise ValueError(f"baseline={baseline!r}: choose one of {', '.join(BASELINES)}")
    base = baseline_images(images, baseline)
    generator = torch.Generator().manual_seed(seed)
    heat_order = _patch_order(maps.to(images.device), grid, None).to(images.device)
    random_order = _patch_order(maps, grid, generator).to(images.device)
    out: dict[str, torch.Tensor] = {}
    with eval_mode(model):
        for suffix, order in (("", heat_order), ("_random", random_order)):
            deletion, insertion = _curves(model, images, base, order, targets.to(images.device), grid, steps)
            out[f"deletion{suffix}_curve"], out[f"insertion{suffix}_curve"] = deletion, insertion
    for name in ("deletion", "insertion", "deletion_random", "insertion_random"):
        out[name] = torch.trapezoid(out[f"{name}_curve"], dx=1.0 / steps)
    return out
