"""One interface for every saliency method: ``explainer(model, images, target) -> Explanation``.

An explainer is any callable taking a classifier (returning logits ``(B, K)``), a batch ``(B, C, H, W)`` and
a target (``"pneumonia"``, ``"predicted"`` or an output index) and returning either an ``Explanation`` or a
``(B, H, W)`` tensor; ``explain`` calls one and checks what comes back: maps at the input resolution with
values in [0, 1] (per-image min-max normalised), the logits of the batch and the output each map explains.
Each shipped explainer has a ``name`` and a ``passes`` figure (forward+backward passes per image: its cost
relative to one Grad-CAM) and is instantiated by Hydra from ``conf/explainer/<name>.yaml``:

=====================  =====================================================================  ==========
``gradcam``            Grad-CAM (``pneumo.xai.gradcam.GradCam``, Captum ``LayerGradCam``)      1
``gradcam_pp``         Grad-CAM++ (Chattopadhay et al. 2018), written here, tested vs MONAI    1
``integrated_gradients`` Captum ``IntegratedGradients``, zero baseline, ``|attribution|``      n_steps
``occlusion``          Captum ``Occlusion``, zero patches; drop of the target logit, ReLU      windows
``guided_gradcam``     Captum ``GuidedGradCam`` (fails the sanity check: the cautionary one)   2
``random``             smooth random maps (the floor every check is compared with)             0
=====================  =====================================================================  ==========

DenseNet's in-place ReLUs break backward hooks (torchvision #4164, Captum #156): every explainer runs with
the model's ``inplace`` flags turned off (``out_of_place``) and restored afterwards.

Example:
    >>> from monai.networks.nets import DenseNet121
    >>> net = DenseNet121(spatial_dims=2, in_channels=1, out_channels=2)
    >>> e = explain(IntegratedGradientsExplainer(n_steps=4), net, torch.rand(2, 1, 32, 32), target=1)
    >>> tuple(e.maps.shape), float(e.maps.min()) >= 0.0, float(e.maps.max()) <= 1.0
    ((2, 32, 32), True, True)
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from captum.attr import GuidedGradCam, IntegratedGradients, Occlusion
from torch import nn

from pneumo.xai.gradcam import (
    DEFAULT_LAYER,
    DEFAULT_TARGET,
    GradCam,
    GradCamError,
    check_target,
    eval_mode,
    normalize_per_image,
    pneumonia_output,
    resolve_layer,
)

Target = int | str


@dataclass(frozen=True)
class Explanation:
    """Saliency of a batch.

    Attributes:
        maps: ``(B, H, W)`` float32 in [0, 1] at the input resolution (higher = more evidence for the target).
        logits: ``(B, K)`` of the explained batch.
        targets: ``(B,)`` output index each map explains.
    """

    maps: torch.Tensor
    logits: torch.Tensor
    targets: torch.Tensor


@runtime_checkable
class ExplainerLike(Protocol):
    """What ``explain`` accepts: ``(model, images, target)`` to an ``Explanation`` or ``(B, H, W)`` maps."""

    def __call__(self, model: nn.Module, images: torch.Tensor, target: Target = ...) -> Any: ...


@contextlib.contextmanager
def out_of_place(model: nn.Module) -> Iterator[nn.Module]:
    """Turn off every ``inplace`` flag (ReLU of DenseNet) for the block and restore each one afterwards:
    backward hooks (Captum's guided backprop, layer gradients) fail on tensors modified in place."""
    flags = [(m, m.inplace) for m in model.modules() if isinstance(getattr(m, "inplace", None), bool)]
    for m, _ in flags:
        m.inplace = False  # type: ignore[assignment]
    try:
        yield model
    finally:
        for m, flag in flags:
            m.inplace = flag


def target_indices(model: nn.Module, logits: torch.Tensor, target: Target) -> torch.Tensor:
    """``(B,)`` output index per image: the pneumonia output, each image's top logit, or a fixed index."""
    target = check_target(target, "target")
    if target == "predicted":
        return logits.argmax(dim=1)
    index = pneumonia_output(model) if target == "pneumonia" else int(target)
    if not 0 <= index < logits.shape[1]:
        raise GradCamError(f"target={index} is not an output of a model with {logits.shape[1]} outputs")
    return torch.full((len(logits),), index, dtype=torch.long, device=logits.device)


def to_maps(attributions: torch.Tensor, size: tuple[int, ...], mode: str = "abs") -> torch.Tensor:
    """``(B, H, W)`` maps in [0, 1] from ``(B, C, h, w)`` attributions: channels summed after ``abs`` (or
    ``relu``), upsampled bilinearly to ``size`` when needed, then min-max normalised per image."""
    a = attributions.detach().float()
    a = a.abs() if mode == "abs" else a.clamp_min(0)
    a = a.sum(dim=1, keepdim=True)
    if tuple(a.shape[-2:]) != tuple(size):
        a = F.interpolate(a, size=size, mode="bilinear", align_corners=False)
    return normalize_per_image(a[:, 0])


def explainer_name(explainer: object) -> str:
    """An explainer's ``name``, else its function's or class's name (a ``functools.partial`` too)."""
    name = getattr(explainer, "name", None) or getattr(getattr(explainer, "func", None), "__name__", None)
    return str(name or getattr(explainer, "__name__", None) or type(explainer).__name__)


def explain(
    explainer: Callable[..., Any], model: nn.Module, images: torch.Tensor, target: Target = DEFAULT_TARGET
) -> Explanation:
    """Run ``explainer`` on ``images`` and check its maps (shape ``(B, H, W)``, finite, in [0, 1]).

    A plain function returning maps gets the logits and targets filled in here (one forward pass).

    Example:
        >>> net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
        >>> explain(lambda m, x, t: x[:, 0], net, torch.rand(1, 1, 8, 8), target=1).targets.tolist()
        [1]
    """
    if images.ndim != 4:
        raise GradCamError(f"an explainer takes a (B, C, H, W) batch, got shape {tuple(images.shape)}")
    out = explainer(model, images, target)
    if not isinstance(out, Explanation):
        with torch.no_grad(), eval_mode(model):
            logits = model(images)
        out = Explanation(
            torch.as_tensor(out).detach().float(), logits, target_indices(model, logits, target)
        )
    want = (images.shape[0], *images.shape[-2:])
    name = explainer_name(explainer)
    if tuple(out.maps.shape) != want:
        raise GradCamError(
            f"explainer {name!r} returned maps of shape {tuple(out.maps.shape)}, expected {want}"
        )
    if not torch.isfinite(out.maps).all() or out.maps.min() < 0 or out.maps.max() > 1:
        raise GradCamError(f"explainer {name!r} returned maps outside [0, 1] (normalise each map)")
    return out


class Explainer:
    """Base of the shipped explainers: eval mode, out-of-place activations, gradients on, the targets
    resolved, batches of ``batch_size``; subclasses implement ``attribute`` (``(B, H, W)`` maps in [0, 1]).

    Attributes:
        name: short name (report rows, overlay captions, ``heatmaps/<name>/``).
        passes: forward+backward passes per image, the cost relative to one Grad-CAM.
    """

    name = "explainer"
    passes: float = 1.0

    def __init__(self, batch_size: int = 32) -> None:
        if batch_size < 1:
            raise GradCamError(f"explainer batch_size must be >= 1, got {batch_size}")
        self.batch_size = int(batch_size)

    def __call__(
        self, model: nn.Module, images: torch.Tensor, target: Target = DEFAULT_TARGET
    ) -> Explanation:
        parts = [self._one(model, chunk, target) for chunk in images.split(self.batch_size)]
        return Explanation(*(torch.cat(t) for t in zip(*parts)))

    def _one(self, model: nn.Module, images: torch.Tensor, target: Target) -> tuple[torch.Tensor, ...]:
        # inference_mode(False)/enable_grad: callers may run inside Lightning's validation (inference) loop.
        with eval_mode(model), out_of_place(model), torch.inference_mode(False), torch.enable_grad():
            x = images.detach().clone()
            with torch.no_grad():
                logits = model(x)
            targets = target_indices(model, logits, target)
            maps = self.attribute(model, x, targets)
        return maps.detach().float(), logits.detach(), targets

    def attribute(self, model: nn.Module, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """``(B, H, W)`` maps in [0, 1] of ``images`` for ``targets`` (model in eval mode, grad enabled)."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


class GradCamExplainer(Explainer):
    """Grad-CAM of ``layer`` (``pneumo.xai.gradcam.GradCam``: today's maps, bit for bit)."""

    name = "gradcam"
    passes = 1.0

    def __init__(self, layer: str = DEFAULT_LAYER, batch_size: int = 32) -> None:
        super().__init__(batch_size)
        self.layer = layer

    def __call__(
        self, model: nn.Module, images: torch.Tensor, target: Target = DEFAULT_TARGET
    ) -> Explanation:
        result = GradCam(model, layer=self.layer, target=target, batch_size=self.batch_size)(images)
        return Explanation(result.heatmaps, result.logits, result.targets)


class GradCamPlusPlusExplainer(Explainer):
    """Grad-CAM++ (Chattopadhay et al. 2018) of ``layer``: channel weights ``sum(alpha * relu(dS/dA))`` with
    ``alpha = g^2 / (2 g^2 + sum(A) g^3)`` (the exponential-score closed form), ReLU, upsampled, normalised."""

    name = "gradcam_pp"
    passes = 1.0

    def __init__(self, layer: str = DEFAULT_LAYER, batch_size: int = 32) -> None:
        super().__init__(batch_size)
        self.layer = layer

    def attribute(self, model: nn.Module, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        saved: list[torch.Tensor] = []
        handle = resolve_layer(model, self.layer).register_forward_hook(lambda m, i, o: saved.append(o))
        try:
            x = images.requires_grad_(True)  # a graph even when every parameter is frozen
            score = model(x).gather(1, targets[:, None]).sum()
        finally:
            handle.remove()
        acts = saved[-1]
        (grads,) = torch.autograd.grad(score, acts)
        g2 = grads.pow(2)
        denom = 2 * g2 + (acts * grads.pow(3)).sum(dim=(2, 3), keepdim=True)
        alpha = g2 / torch.where(denom != 0, denom, torch.ones_like(denom))
        weights = (alpha * grads.clamp_min(0)).sum(dim=(2, 3), keepdim=True)
        cam = (weights * acts).sum(dim=1, keepdim=True).clamp_min(0)
        return to_maps(cam.detach(), tuple(images.shape[-2:]), mode="relu")


class IntegratedGradientsExplainer(Explainer):
    """Captum ``IntegratedGradients`` from a constant ``baseline`` image with ``n_steps`` (Gauss-Legendre);
    the map is ``|attribution|`` summed over channels, normalised."""

    name = "integrated_gradients"

    def __init__(self, n_steps: int = 32, baseline: float = 0.0, batch_size: int = 32) -> None:
        super().__init__(batch_size)
        if n_steps < 1:
            raise GradCamError(f"integrated_gradients n_steps must be >= 1, got {n_steps}")
        self.n_steps, self.baseline = int(n_steps), float(baseline)
        self.passes = float(n_steps)

    def attribute(self, model: nn.Module, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        ig = IntegratedGradients(model)
        attr = ig.attribute(
            images, baselines=self.baseline, target=targets, n_steps=self.n_steps,
            internal_batch_size=self.batch_size * 4,
        )  # fmt: skip
        return to_maps(attr, tuple(images.shape[-2:]), mode="abs")


def occlusion_geometry(
    shape: torch.Size, window: float, stride: float
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Captum's ``sliding_window_shapes`` and ``strides`` for a ``(B, C, H, W)`` batch, from fractions of the
    side (so that the number of windows, hence the cost, does not grow with the image size)."""
    _, c, h, w = shape
    win = (c, max(1, round(window * h)), max(1, round(window * w)))
    step = (c, max(1, round(stride * h)), max(1, round(stride * w)))
    return win, step


class OcclusionExplainer(Explainer):
    """Captum ``Occlusion``: square patches (``window`` of the side, moved by ``stride`` of the side) set to
    ``baseline``; the map is the drop of the target logit, ReLU'd (evidence for the target), normalised."""

    name = "occlusion"

    def __init__(
        self, window: float = 0.25, stride: float = 0.125, baseline: float = 0.0, batch_size: int = 32
    ) -> None:
        super().__init__(batch_size)
        if not (0 < window <= 1 and 0 < stride <= 1):
            raise GradCamError(
                f"occlusion window and stride are fractions of the side in (0, 1], got {window}, {stride}"
            )
        self.window, self.stride, self.baseline = float(window), float(stride), float(baseline)
        per_side = int((1 - self.window) / self.stride) + 1
        self.passes = float(per_side * per_side)  # forward passes only

    def attribute(self, model: nn.Module, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        win, step = occlusion_geometry(images.shape, self.window, self.stride)
        with torch.no_grad():
            attr = Occlusion(model).attribute(
                images, sliding_window_shapes=win, strides=step, baselines=self.baseline, target=targets,
                perturbations_per_eval=16,
            )  # fmt: skip
        return to_maps(attr, tuple(images.shape[-2:]), mode="relu")


class GuidedGradCamExplainer(Explainer):
    """Captum ``GuidedGradCam`` of ``layer``: guided backpropagation times the upsampled Grad-CAM;
    ``|attribution|`` summed over channels, normalised. Adebayo et al. 2018: it barely changes when the
    weights are randomized (it shows edges) - shipped as the sanity check's cautionary example."""

    name = "guided_gradcam"
    passes = 2.0

    def __init__(self, layer: str = DEFAULT_LAYER, batch_size: int = 32) -> None:
        super().__init__(batch_size)
        self.layer = layer

    def attribute(self, model: nn.Module, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        ggc = GuidedGradCam(model, resolve_layer(model, self.layer))
        attr = ggc.attribute(images.requires_grad_(True), target=targets, interpolate_mode="bilinear")
        return to_maps(attr, tuple(images.shape[-2:]), mode="abs")


class RandomExplainer(Explainer):
    """Smooth random maps (a ``cells x cells`` uniform grid upsampled bilinearly), ignoring the model: the
    floor of every check. Deterministic given ``seed``: a new explainer with the same seed draws the same
    sequence of maps; successive calls draw new ones (so a randomized model gets a new map too)."""

    name = "random"
    passes = 0.0

    def __init__(self, seed: int = 0, cells: int = 8, batch_size: int = 32) -> None:
        super().__init__(batch_size)
        self.seed, self.cells = int(seed), int(cells)
        self.generator = torch.Generator().manual_seed(self.seed)

    def attribute(self, model: nn.Module, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        grid = torch.rand(len(images), 1, self.cells, self.cells, generator=self.generator)
        return to_maps(grid.to(images.device), tuple(images.shape[-2:]), mode="relu")


def instantiate_explainers(specs: Mapping[str, Any] | None) -> dict[str, Callable[..., Any]]:
    """``{name: explainer}`` from the ``explainer`` config node (``{name: {_target_: ...}}``; Hydra selects
    several with ``explainer=[gradcam,integrated_gradients]``); an empty node gives Grad-CAM."""
    from hydra.utils import instantiate

    out: dict[str, Callable[..., Any]] = {}
    for key, spec in (specs or {}).items():
        if spec is None:
            continue
        obj = spec if callable(spec) else instantiate(dict(spec), _convert_="all")
        if not callable(obj):
            raise GradCamError(
                f"explainer.{key}: {type(obj).__name__} is not callable (model, images, target)"
            )
        out[str(key)] = obj
    return out or {"gradcam": GradCamExplainer()}
