"""Grad-CAM heatmaps of a classifier with Captum's ``LayerGradCam``, batched, at the input resolution.

For a batch ``x`` of shape ``(B, C, H, W)`` and a target class, ``GradCam`` returns one map per image:
Captum ``LayerGradCam`` on the configured layer (channel weights = spatially averaged gradients of the target
logit), ReLU, bilinear upsampling to ``H x W``, then per-image normalisation to [0, 1] (an all-zero map
stays zero). The model is run in eval mode for the call and handed back untouched: the training flags of
its modules, its parameters, their ``requires_grad`` flags and their ``.grad`` are as they were
(gradients are taken with ``torch.autograd.grad`` w.r.t. the layer's output only).

Example:
    >>> from monai.networks.nets import DenseNet121
    >>> net = DenseNet121(spatial_dims=2, in_channels=1, out_channels=2)
    >>> result = GradCam(net, layer="features.transition2.conv")(torch.rand(2, 1, 64, 64))
    >>> tuple(result.heatmaps.shape), float(result.heatmaps.max()) <= 1.0
    ((2, 64, 64), True)
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from captum.attr import LayerGradCam
from torch import nn

from pneumo.config import choice, suggestion
from pneumo.errors import PneumoError
from pneumo.models.tasks import pneumonia_column, task_of

#: Default Grad-CAM layer of MONAI's DenseNet121: the 1x1 convolution of transition block 2, before its
#: pooling - a feature map at 1/8 of the input side (12 x 12 at the demo's 96 px, 28 x 28 at 224 px). The
#: last feature map (``class_layers.relu``, 1/32: 3 x 3 at 96 px) is too coarse to point inside a
#: pneumonia-sized box; see docs/BENCHMARKS.md, "Explainability", for the pointing game per layer.
DEFAULT_LAYER = "features.transition2.conv"
#: The named Grad-CAM targets (``gradcam.target``); an output index is the other form a target takes.
TARGETS = ("pneumonia", "predicted")
#: The target explained unless one is given: the model's pneumonia output.
DEFAULT_TARGET = "pneumonia"


def pneumonia_output(model: nn.Module) -> int:
    """Index of the pneumonia logit of ``model`` (``Task.pneumonia_output``; a bare network: binary)."""
    return task_of(model).pneumonia_output


def pneumonia_probability(model: nn.Module, logits: torch.Tensor) -> torch.Tensor:
    """``(B,)`` pneumonia probability from logits: softmax (binary) or sigmoid (multi-label)."""
    if hasattr(model, "probabilities"):  # a classifier: its temperature applies
        return pneumonia_column(model.probabilities(logits))
    return task_of(model).pneumonia_probability(logits)


class GradCamError(PneumoError, ValueError):
    """A Grad-CAM setting that cannot work (unknown layer, bad target); the message says which."""


@dataclass(frozen=True)
class GradCamResult:
    """Grad-CAM of a batch.

    Attributes:
        heatmaps: ``(B, H, W)`` float32 in [0, 1], at the input resolution.
        logits: ``(B, K)`` from the same forward pass (``pneumonia_probability`` turns them into
            probabilities).
        targets: ``(B,)`` output index each map explains.
        raw: ``(B, h, w)`` ReLU'd Grad-CAM at the layer's resolution, before upsampling and normalisation.
    """

    heatmaps: torch.Tensor
    logits: torch.Tensor
    targets: torch.Tensor
    raw: torch.Tensor


def resolve_layer(model: nn.Module, layer: str) -> nn.Module:
    """The submodule named ``layer`` of ``model``, or of ``model.net`` (so both ``net.features.denseblock3``
    and ``features.denseblock3`` name the same layer of a ``PneumoniaClassifier``)."""
    for root in (model, getattr(model, "net", None)):
        if isinstance(root, nn.Module):
            with contextlib.suppress(AttributeError):
                return root.get_submodule(layer)
    net = model.net if isinstance(getattr(model, "net", None), nn.Module) else model
    names = [n for n, _ in net.named_modules() if n]
    top = sorted({n.rsplit(".", 1)[0] for n in names if n.count(".") <= 1})
    raise GradCamError(
        f"Grad-CAM layer {layer!r} is not a submodule of {type(model).__name__}; try one of {top}"
        f"{suggestion(layer, names)}"
    )


def check_target(target: int | str, key: str = "gradcam.target") -> int | str:
    """``target`` if it is an output index or one of ``TARGETS``, else ``GradCamError`` naming ``key``.

    Example:
        >>> check_target("pneumonia"), check_target(1)
        ('pneumonia', 1)
    """
    if isinstance(target, int) and not isinstance(target, bool):
        return target
    return choice(target, key, TARGETS, also="an output index", error=GradCamError)


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put every module in eval mode for the block, then restore each module's own training flag."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, was_training in flags:
            m.training = was_training


def normalize_per_image(maps: torch.Tensor) -> torch.Tensor:
    """Scale each ``(H, W)`` map of a ``(B, H, W)`` batch to [0, 1]; constant maps become all zeros."""
    flat = maps.flatten(1)
    lo = flat.min(dim=1).values[:, None, None]
    span = flat.max(dim=1).values[:, None, None] - lo
    return torch.where(
        span > 0, (maps - lo) / span.clamp_min(torch.finfo(maps.dtype).tiny), torch.zeros_like(maps)
    )


class GradCam:
    """Batched Grad-CAM of one layer of a classifier.

    Args:
        model: a classifier returning logits ``(B, K)`` (e.g. ``PneumoniaClassifier`` or its ``net``).
        layer: dotted name of the layer whose output is explained (relative to ``model`` or ``model.net``).
        target: ``"pneumonia"`` (the model's pneumonia output, see ``pneumonia_output``), an output index,
            or ``"predicted"`` for each image's highest logit.
        batch_size: images per forward/backward pass; larger batches are split.
    """

    def __init__(
        self,
        model: nn.Module,
        layer: str = DEFAULT_LAYER,
        target: int | str = DEFAULT_TARGET,
        batch_size: int = 64,
    ) -> None:
        if check_target(target) == "pneumonia":
            target = pneumonia_output(model)
        if batch_size < 1:
            raise GradCamError(f"Grad-CAM batch_size must be >= 1, got {batch_size}")
        self.model, self.layer_name, self.target, self.batch_size = model, layer, target, int(batch_size)
        self.layer = resolve_layer(model, layer)

    def __call__(self, images: torch.Tensor) -> GradCamResult:
        """Grad-CAM of ``images`` ``(B, C, H, W)`` (on the model's device)."""
        if images.ndim != 4:
            raise GradCamError(f"Grad-CAM expects a (B, C, H, W) batch, got shape {tuple(images.shape)}")
        parts = [self._batch(chunk) for chunk in images.split(self.batch_size)]
        return GradCamResult(*(torch.cat(tensors) for tensors in zip(*parts)))

    def _batch(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        logits: list[torch.Tensor] = []

        def forward(x: torch.Tensor) -> torch.Tensor:
            out = self.model(x)
            logits.append(out.detach())
            return out

        # inference_mode(False)/enable_grad: callers may run inside Lightning's validation (inference) loop.
        with eval_mode(self.model), torch.inference_mode(False), torch.enable_grad():
            x = images.detach().clone().requires_grad_(True)  # a graph even when every parameter is frozen
            if self.target == "predicted":
                with torch.no_grad():
                    target = self.model(x).argmax(dim=1)
            else:
                target = torch.full((len(x),), int(self.target), dtype=torch.long, device=x.device)
            cam = LayerGradCam(forward, self.layer).attribute(x, target=target, relu_attributions=True)
        if cam.ndim != 4 or cam.shape[1] != 1:
            raise GradCamError(
                f"Grad-CAM layer {self.layer_name!r} gives maps of shape {tuple(cam.shape)}; choose a layer "
                "with a (B, C, h, w) output (a convolutional feature map)"
            )
        cam = cam.detach().float()
        up = F.interpolate(cam, size=images.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
        return normalize_per_image(up.clamp_min(0)), logits[-1], target, cam[:, 0]
