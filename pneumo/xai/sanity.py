"""The sanity check of saliency maps (Adebayo et al. 2018): cascading model-parameter randomization.

The network's blocks are re-initialised one after the other, from the top (the classifier layer) down to the
stem, cumulatively; after each step every explainer explains the same images again and each new map is
compared with the trained model's map of the same image by Spearman rank correlation (of absolute values)
and SSIM. A map that shows what the model learned must change when what it learned is gone.

**Verdict** (Arun et al. 2021's criterion, on both measures): an explainer **passes** when, with every block
randomized, its maps are no more similar to the trained maps than the trained maps of two *different* images
are to each other (the baseline of random image pairs). "No more" allows for chance: the randomized mean may
exceed the baseline mean by at most ``TOLERANCE_SE`` standard errors of their difference (a map that ignores
the model, such as an edge filter, sits near 1.0 and fails by a wide margin; a random map sits at the
baseline and passes). Passing is necessary, not sufficient: a random map passes too.

Example:
    >>> from monai.networks.nets import DenseNet
    >>> from pneumo.xai.explainers import RandomExplainer
    >>> net = DenseNet(spatial_dims=2, in_channels=1, out_channels=2, block_config=(1, 1, 1, 1))
    >>> images = torch.rand(8, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    >>> result = sanity_check(net, images, {"random": RandomExplainer()}, target=1)
    >>> result["random"].steps[0], result["random"].steps[-1], result["random"].verdict
    ('class_layers.out', 'features.conv0', 'pass')
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torchmetrics.functional.image import structural_similarity_index_measure

from pneumo.xai.explainers import Target, explain

#: Standard errors (of the difference of the two means) by which the fully randomized maps' mean similarity
#: may exceed the random-pairs baseline's and still pass.
TOLERANCE_SE = 2.0


def randomization_steps(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The blocks randomized one after the other, top first: the children of the network (``model.net`` of a
    classifier) with parameters, a ``Sequential`` child (DenseNet's ``features``, ``class_layers``) opened
    one level, in reverse order (DenseNet121: ``class_layers.out``, ``features.norm5``,
    ``features.denseblock4``, ... ``features.conv0``)."""
    net = getattr(model, "net", model)
    blocks: list[tuple[str, nn.Module]] = []
    for name, child in net.named_children():
        inner = list(child.named_children()) if isinstance(child, nn.Sequential) else []
        blocks += [(f"{name}.{n}", c) for n, c in inner] if inner else [(name, child)]
    return [(n, b) for n, b in reversed(blocks) if any(True for _ in b.parameters())]


def randomize(block: nn.Module, seed: int) -> None:
    """Re-initialise every layer of ``block`` with its own ``reset_parameters`` (PyTorch's initial
    distributions; batch-norm running statistics reset too), seeded."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for m in block.modules():
            reset = getattr(m, "reset_parameters", None)
            if callable(reset):
                reset()


def average_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks (0-based) of a 1-D array, ties sharing their mean rank.

    Example:
        >>> average_ranks(np.array([3.0, 1.0, 3.0, 2.0])).tolist()
        [2.5, 0.0, 2.5, 1.0]
    """
    order = np.argsort(values, kind="stable")
    _, first, counts = np.unique(values[order], return_index=True, return_counts=True)
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[order] = np.repeat(first + (counts - 1) / 2.0, counts)
    return ranks


def spearman_abs(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    """Per-image Spearman rank correlation of ``|a|`` and ``|b|`` (``(B, H, W)`` each; ties get their mean
    rank, as ``scipy.stats.spearmanr``); a constant map has no ranks to correlate and scores 0.

    Example:
        >>> x = torch.arange(16.0).reshape(1, 4, 4)
        >>> spearman_abs(x, x**2).round(6).tolist(), spearman_abs(x, -x.flip(-1)).round(6).tolist()
        ([1.0], [0.882353])
    """
    out = []
    for x, y in zip(a.abs().flatten(1).cpu().double().numpy(), b.abs().flatten(1).cpu().double().numpy()):
        if x.std() == 0 or y.std() == 0:
            out.append(0.0)
            continue
        out.append(float(np.corrcoef(average_ranks(x), average_ranks(y))[0, 1]))
    return np.array(out)


def ssim(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    """Per-image SSIM of maps in [0, 1] (``(B, H, W)`` each): ``torchmetrics``' structural similarity (Wang
    et al. 2004; Gaussian window, sigma 1.5, 11 pixels, data range 1, reflect-padded and cropped).

    Example:
        >>> x = torch.rand(2, 32, 32, generator=torch.Generator().manual_seed(0))
        >>> ssim(x, x).round(6).tolist(), bool(ssim(x, 1 - x)[0] < 0)
        ([1.0, 1.0], True)
    """
    x, y = a[:, None].detach().double().cpu(), b[:, None].detach().double().cpu()
    values = structural_similarity_index_measure(x, y, data_range=1.0, reduction="none")
    assert isinstance(values, torch.Tensor)  # a tuple only with return_full_image / contrast sensitivity
    return values.reshape(len(x)).numpy()


def _mean_se(values: np.ndarray) -> tuple[float, float]:
    n = len(values)
    return float(np.mean(values)), float(np.std(values, ddof=1) / math.sqrt(n)) if n > 1 else 0.0


@dataclass
class SanityResult:
    """One explainer's randomization curve, baseline and verdict.

    Attributes:
        steps: ``steps[k]`` = the block randomized at step ``k`` (cumulative: every earlier one stays random).
        spearman, ssim: mean similarity of the maps after step ``k`` to the trained maps of the same images.
        spearman_se, ssim_se: their standard errors (over the images).
        baseline_spearman, baseline_ssim (and ``_se``): the same measures between the trained maps of random
            pairs of different images.
    """

    name: str
    steps: list[str] = field(default_factory=list)
    spearman: list[float] = field(default_factory=list)
    ssim: list[float] = field(default_factory=list)
    spearman_se: list[float] = field(default_factory=list)
    ssim_se: list[float] = field(default_factory=list)
    baseline_spearman: float = math.nan
    baseline_spearman_se: float = math.nan
    baseline_ssim: float = math.nan
    baseline_ssim_se: float = math.nan
    n_images: int = 0
    seconds: float = 0.0

    def margin(self, measure: str) -> float:
        """How far the fully randomized mean lies above the baseline, in standard errors of the difference
        (negative: below it; ``measure`` is ``spearman`` or ``ssim``)."""
        mean, se = getattr(self, measure)[-1], getattr(self, f"{measure}_se")[-1]
        base, base_se = getattr(self, f"baseline_{measure}"), getattr(self, f"baseline_{measure}_se")
        spread = math.hypot(se, base_se)
        return (mean - base) / spread if spread > 0 else (math.inf if mean > base else -math.inf)

    @property
    def verdict(self) -> str:
        """``pass`` when, fully randomized, both mean similarities are at most the baseline's (within
        ``TOLERANCE_SE`` standard errors); ``fail`` otherwise; ``n/a`` before any step."""
        if not self.steps:
            return "n/a"
        ok = all(self.margin(m) <= TOLERANCE_SE for m in ("spearman", "ssim"))
        return "pass" if ok else "fail"

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "verdict": self.verdict}


def random_pairs(n: int, seed: int = 0) -> np.ndarray:
    """Index of a different image for each image (a shuffled cycle: no image is paired with itself).

    Example:
        >>> pairs = random_pairs(5, seed=1)
        >>> sorted(pairs.tolist()), bool((pairs != np.arange(5)).all())
        ([0, 1, 2, 3, 4], True)
    """
    order = np.random.default_rng(seed).permutation(n)
    partner = np.empty(n, dtype=np.int64)
    partner[order] = np.roll(order, -1)
    return partner


def _similarities(trained: torch.Tensor, maps: torch.Tensor) -> tuple[float, float, float, float]:
    spearman, spearman_se = _mean_se(spearman_abs(trained, maps))
    structural, structural_se = _mean_se(ssim(trained, maps))
    return spearman, spearman_se, structural, structural_se


def sanity_check(
    model: nn.Module,
    images: torch.Tensor,
    explainers: Mapping[str, Callable[..., Any]],
    target: Target = "pneumonia",
    seed: int = 0,
) -> dict[str, SanityResult]:
    """Cascading randomization of a copy of ``model`` (the model itself is untouched) with each explainer's
    similarity curve, baseline and verdict.

    Args:
        model: the trained classifier (or bare network).
        images: ``(B, C, H, W)``, at least 2 (the baseline pairs different images); the more, the tighter.
        explainers: ``{name: explainer}`` (``pneumo.xai.explainers``; any callable of the interface).
        target: what every map explains (``pneumonia``, ``predicted`` or an output index).
        seed: seed of the re-initialisations and of the image pairs.

    Cost: ``len(randomization_steps(model)) + 1`` explanations of the batch per explainer (DenseNet121: 12).
    """
    if len(images) < 2:
        raise ValueError("the sanity check needs at least 2 images (its baseline pairs different images)")
    pairs = random_pairs(len(images), seed)
    trained, results = {}, {}
    for name, e in explainers.items():
        start = time.perf_counter()
        trained[name] = explain(e, model, images, target).maps
        r = results[name] = SanityResult(name, n_images=len(images))
        r.baseline_spearman, r.baseline_spearman_se, r.baseline_ssim, r.baseline_ssim_se = _similarities(
            trained[name], trained[name][pairs]
        )
        r.seconds = time.perf_counter() - start
    twin = copy.deepcopy(model)
    for k, (block_name, block) in enumerate(randomization_steps(twin)):
        randomize(block, seed + k)
        for name, e in explainers.items():
            start = time.perf_counter()
            sp, sp_se, ss, ss_se = _similarities(trained[name], explain(e, twin, images, target).maps)
            r = results[name]
            r.steps.append(block_name)
            r.spearman.append(sp)
            r.spearman_se.append(sp_se)
            r.ssim.append(ss)
            r.ssim_se.append(ss_se)
            r.seconds += time.perf_counter() - start
    return results


def format_sanity(results: Mapping[str, SanityResult]) -> list[str]:
    """One line per explainer: its verdict, the fully randomized similarities and the random-pairs baselines
    (mean ± standard error), as ``python -m pneumo sanity`` prints them."""
    lines = []
    for r in results.values():
        if not r.steps:
            continue
        lines.append(
            f"{r.name}: {r.verdict.upper()} - fully randomized vs trained maps: Spearman {r.spearman[-1]:.3f} "
            f"± {r.spearman_se[-1]:.3f} (random image pairs {r.baseline_spearman:.3f} ± {r.baseline_spearman_se:.3f}), "
            f"SSIM {r.ssim[-1]:.3f} ± {r.ssim_se[-1]:.3f} (random image pairs {r.baseline_ssim:.3f} ± "
            f"{r.baseline_ssim_se:.3f}); after the top block alone: Spearman {r.spearman[0]:.3f}, SSIM {r.ssim[0]:.3f}"
        )
    return lines
