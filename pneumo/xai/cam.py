"""Class activation maps without gradients: the exportable heatmap of a global-average-pool + linear head.

For a network that ends in ``ReLU -> global average pool -> linear`` (MONAI's DenseNet121: ``class_layers``
``relu``, ``pool``, ``flatten``, ``out``), the logit of class ``k`` is ``sum_c w_kc mean_xy A_c(x, y) + b_k``,
with ``A`` the last feature map (the output of ``class_layers.relu``). Its gradient with respect to
``A_c(x, y)`` is ``w_kc / (h w)`` everywhere, so Grad-CAM at that layer (channel weights = the spatially
averaged gradients) is ``ReLU(sum_c w_kc A_c) / (h w)``: Zhou et al.'s class activation map (CAM), up to a
positive factor that the per-image normalisation removes. One forward pass gives it, which is what an ONNX or
TorchScript runtime without backward passes can run.

``ClassActivationModel`` returns the logits and that map, upsampled to the input size (bilinear, as
``pneumo.xai.gradcam.GradCam``) and normalised per image to [0, 1] (an all-zero map stays zero): the same
numbers as ``GradCam(model, layer=CAM_LAYER)``. The default Grad-CAM layer (``features.transition2.conv``,
at 1/8 of the input side) has no such closed form: the layers between it and the head are not linear, so
its channel weights need the gradient, and it is not exported.

Example:
    >>> from monai.networks.nets import DenseNet121
    >>> net = DenseNet121(spatial_dims=2, in_channels=1, out_channels=2).eval()
    >>> logits, heat = ClassActivationModel(net, target=1)(torch.rand(2, 1, 64, 64))
    >>> tuple(logits.shape), tuple(heat.shape), float(heat.max()) <= 1.0
    ((2, 2), (2, 64, 64), True)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pneumo.xai.gradcam import GradCamError, normalize_per_image

#: The Grad-CAM layer (``gradcam.layer``) whose map ``ClassActivationModel`` reproduces: the last feature map.
CAM_LAYER = "class_layers.relu"
#: The head a network needs for a gradient-free map: ``class_layers`` with these modules, in this order.
CAM_HEAD = ("relu", "pool", "flatten", "out")


def cam_head(net: nn.Module) -> dict[str, nn.Module]:
    """``features`` and the ``CAM_HEAD`` modules of a network with a CAM head, or ``GradCamError`` saying why
    not (a network without a global-average-pool + linear head has no gradient-free map)."""
    features, head = getattr(net, "features", None), getattr(net, "class_layers", None)
    parts = dict(head.named_children()) if isinstance(head, nn.Module) else {}
    pool, out = parts.get("pool"), parts.get("out")
    if (
        not isinstance(features, nn.Module)
        or tuple(parts) != CAM_HEAD
        or not isinstance(out, nn.Linear)
        or not isinstance(pool, (nn.AdaptiveAvgPool2d, nn.AvgPool2d))
    ):
        raise GradCamError(
            f"heatmap=true needs a network ending in features -> class_layers ({', '.join(CAM_HEAD)}): a global "
            f"average pool and one linear layer, as MONAI's DenseNet121; {type(net).__name__} has "
            f"class_layers {tuple(parts) or 'none'}. Export without heatmap=true"
        )
    return {"features": features, **parts}


class ClassActivationModel(nn.Module):
    """``x -> (logits, heatmap)`` of a classifier with a CAM head, in one forward pass (module docstring).

    Args:
        model: a ``PneumoniaClassifier`` (its ``input_adapter`` is applied) or a bare network.
        target: the output whose map is drawn (the pneumonia output of the classifier's task).
    """

    def __init__(self, model: nn.Module, target: int) -> None:
        super().__init__()
        parts = cam_head(getattr(model, "net", model))
        self.features, self.relu, self.pool, self.flatten = (
            parts["features"], parts["relu"], parts["pool"], parts["flatten"]
        )  # fmt: skip
        out = parts["out"]
        assert isinstance(out, nn.Linear)  # cam_head checked it
        self.out: nn.Linear = out
        adapter = getattr(model, "input_adapter", None)
        self.adapter = adapter if isinstance(adapter, nn.Module) else nn.Identity()
        outputs = int(self.out.weight.shape[0])
        if not 0 <= int(target) < outputs:
            raise GradCamError(f"heatmap target {target} is not an output of a {outputs}-output head")
        self.target = int(target)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits ``(B, K)`` and heatmaps ``(B, H, W)`` in [0, 1] of grey images ``(B, 1, H, W)`` in [0, 1]."""
        act = self.relu(self.features(self.adapter(x)))
        logits = self.out(self.flatten(self.pool(act)))
        weights = self.out.weight[self.target]
        # Grad-CAM's channel weights at this layer are the linear weights over h*w (module docstring).
        cam = torch.einsum("c,bchw->bhw", weights, act).clamp_min(0)[:, None]
        up = F.interpolate(cam, size=(x.shape[-2], x.shape[-1]), mode="bilinear", align_corners=False)[:, 0]
        return logits, normalize_per_image(up.clamp_min(0))
