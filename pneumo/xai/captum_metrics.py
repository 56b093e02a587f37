"""Captum's infidelity and max-sensitivity of saliency maps (Yeh et al., NeurIPS 2019), seeded and batched.

**Infidelity** asks whether the map predicts how the output moves when the image is perturbed: for Gaussian
noise ``I`` it is the mean of ``(I . map - (f(x) - f(x - I)))^2`` over ``n`` draws, with the map rescaled by the
best factor (``normalize=True``: pneumo's maps are min-max normalised, so only their shape counts). Lower is
better. Cost: ``n`` forward passes per image.

**Max-sensitivity** asks whether the map is stable: the largest relative change of the map (Frobenius norm)
over ``n`` images drawn uniformly in an L-infinity ball of ``radius`` around the input. Lower is better, and 0
for a map that ignores its input; so it is read beside the other checks, never alone. Cost: ``n`` explanations
per image.

Both run under ``torch.random.fork_rng`` with ``seed``: the same numbers on every call, the caller's random
state untouched.

Example:
    >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 2))
    >>> x = torch.rand(2, 1, 4, 4)
    >>> exact = net[1].weight[1].detach().view(1, 4, 4).expand(2, 4, 4)
    >>> bool((infidelity_scores(net, x, exact, torch.tensor([1, 1])).abs() < 1e-6).all())  # a linear model's weights
    True
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from pneumo.xai.gradcam import eval_mode

#: Standard deviation of infidelity's Gaussian noise, as a share of the image's grey-level spread.
NOISE_FRACTION = 0.1
#: Radius of max-sensitivity's L-infinity ball, as a share of the image's grey-level spread (Captum's 0.02).
RADIUS_FRACTION = 0.02


def _spread(images: torch.Tensor) -> torch.Tensor:
    """``(B, 1, 1, 1)`` grey-level range of each image (1 for a flat one)."""
    flat = images.flatten(1)
    spread = (flat.amax(1) - flat.amin(1)).clamp_min(1e-6)
    return spread.view(-1, 1, 1, 1)


def _first(inputs: torch.Tensor | tuple[torch.Tensor]) -> torch.Tensor:
    """Captum hands the batch over as a tensor or as a 1-tuple of it."""
    return inputs[0] if isinstance(inputs, tuple) else inputs


def _as_attributions(maps: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """``(B, H, W)`` maps as ``(B, C, H, W)`` attributions (each channel gets the map)."""
    return maps.to(images.dtype).unsqueeze(1).expand_as(images)


def infidelity_scores(
    model: nn.Module,
    images: torch.Tensor,
    maps: torch.Tensor,
    targets: torch.Tensor,
    n: int = 10,
    seed: int = 0,
) -> torch.Tensor:
    """``(B,)`` Captum infidelity of ``maps`` (``(B, H, W)``) for the ``targets`` logits of ``model``.

    The noise has a standard deviation of ``NOISE_FRACTION`` of each image's grey-level range.
    """
    from captum.metrics import infidelity

    sigma = NOISE_FRACTION * _spread(images)

    def perturb(inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # captum repeats each image n times; the rows of `inputs` follow the batch's order, image by image
        noise = torch.randn_like(inputs) * sigma.repeat_interleave(len(inputs) // len(images), 0)
        return noise, inputs - noise

    with torch.random.fork_rng(devices=[]), eval_mode(model):
        torch.manual_seed(seed)
        scores = infidelity(
            model, perturb, images, _as_attributions(maps, images), target=targets, n_perturb_samples=n,
            normalize=True,
        )  # fmt: skip
    return scores.detach().float()


def max_sensitivity(
    explain_maps: Callable[[torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    n: int = 10,
    seed: int = 0,
) -> torch.Tensor:
    """``(B,)`` Captum max-sensitivity of ``explain_maps`` (a batch ``(B, C, H, W)`` to maps ``(B, H, W)``)
    within an L-infinity ball of ``RADIUS_FRACTION`` of each image's grey-level range."""
    from captum.metrics import sensitivity_max

    radius = RADIUS_FRACTION * _spread(images)

    def perturb(inputs: torch.Tensor | tuple[torch.Tensor], perturb_radius: float = 0.0) -> torch.Tensor:
        x = _first(inputs)
        scale = radius.repeat_interleave(len(x) // len(images), 0)
        return x + (torch.rand_like(x) * 2 - 1) * scale

    def attributions(inputs: torch.Tensor | tuple[torch.Tensor]) -> tuple[torch.Tensor]:
        # Captum calls this under no_grad (gradient explainers need it back) and iterates over what it gets
        # (a bare tensor would be taken row by row: hence the 1-tuple)
        x = _first(inputs)
        with torch.enable_grad():
            maps = explain_maps(x)
        return (_as_attributions(maps.detach(), x),)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        scores = sensitivity_max(attributions, images, perturb_func=perturb, n_perturb_samples=n)
    return scores.detach().float()
