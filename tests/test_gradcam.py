"""Grad-CAM: agreement with MONAI's independent implementation, batching, and leaving the model untouched."""

from __future__ import annotations

import copy
import re

import pytest
import torch
from monai.networks.nets import DenseNet
from monai.visualize import GradCAM as MonaiGradCAM

from pneumo.xai.gradcam import DEFAULT_LAYER, GradCam, GradCamError, normalize_per_image


def _net(seed: int = 0) -> torch.nn.Module:
    """A small MONAI DenseNet: DenseNet121's layer names and layout (4 dense blocks), a fraction of its cost."""
    torch.manual_seed(seed)
    return DenseNet(
        spatial_dims=2,
        in_channels=1,
        out_channels=2,
        init_features=16,
        growth_rate=8,
        block_config=(2, 2, 2, 2),
    )


def _images(n: int = 4, size: int = 64, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, size, size, generator=g)
    x[:, :, 10:30, 8:24] += 1.0  # a bright patch: maps with structure, not noise
    return x


def _pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().flatten().double(), b.detach().flatten().double()
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / (a.norm() * b.norm()))


@pytest.mark.parametrize(
    ("layer", "target"), [(DEFAULT_LAYER, 1), ("features.denseblock3", 1), ("class_layers.relu", 0)]
)
def test_matches_monai_gradcam(layer: str, target: int) -> None:
    net, x = _net(), _images()
    ours = GradCam(net, layer=layer, target=target)(x)
    # MONAI's default post-processing maps (min, max) to (1, 0), i.e. inverts the map: compare raw maps.
    # It also mutates the model (hooks, inplace flags, .grad), hence a copy.
    monai_cam = MonaiGradCAM(nn_module=copy.deepcopy(net), target_layers=layer, postprocessing=lambda m: m)
    theirs = monai_cam(x, class_idx=target)[:, 0].detach()
    low_res = monai_cam.compute_map(x, class_idx=target)[:, 0].detach()
    assert ours.heatmaps.shape == theirs.shape == (4, 64, 64)
    for i in range(len(x)):
        assert theirs[i].std() > 0, "a constant MONAI map would make the comparison vacuous"
        assert _pearson(ours.heatmaps[i], theirs[i]) >= 0.99, (layer, target, i)
    # not only correlated: the same numbers before upsampling
    torch.testing.assert_close(ours.raw, low_res, rtol=1e-4, atol=1e-6 * float(low_res.abs().max()))


def test_heatmaps_are_per_image_unit_range_at_input_resolution() -> None:
    x = _images(3, size=80)
    result = GradCam(_net(), layer="features.denseblock3")(x)
    h = result.heatmaps
    assert h.shape == (3, 80, 80) and h.dtype == torch.float32
    assert result.raw.shape == (3, 5, 5)  # dense block 3 of a DenseNet at 80 px
    assert torch.all(h >= 0) and torch.all(h <= 1)
    for i in range(3):
        assert h[i].max() == pytest.approx(1.0) and h[i].min() == pytest.approx(0.0)
    assert result.logits.shape == (3, 2)
    assert torch.equal(result.targets, torch.ones(3, dtype=torch.long))  # pneumonia of a 2-output net


def test_normalize_per_image_keeps_constant_maps_zero() -> None:
    maps = torch.stack([torch.zeros(4, 4), torch.full((4, 4), 3.0), torch.arange(16.0).reshape(4, 4)])
    out = normalize_per_image(maps)
    assert torch.equal(out[0], torch.zeros(4, 4)) and torch.equal(out[1], torch.zeros(4, 4))
    assert out[2].min() == 0 and out[2].max() == 1 and out[2][1, 1] == pytest.approx(5 / 15)


def test_batched_equals_one_image_at_a_time() -> None:
    net, x = _net(), _images(5)
    batched = GradCam(net, batch_size=64)(x)
    split = GradCam(net, batch_size=2)(x)  # 2 + 2 + 1
    single = [GradCam(net)(x[i : i + 1]) for i in range(len(x))]
    torch.testing.assert_close(batched.heatmaps, split.heatmaps, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(
        batched.heatmaps, torch.cat([s.heatmaps for s in single]), rtol=1e-4, atol=1e-5
    )
    torch.testing.assert_close(batched.logits, torch.cat([s.logits for s in single]), rtol=1e-4, atol=1e-5)


def test_predicted_target_explains_the_argmax_class() -> None:
    net, x = _net(), _images(4)
    result = GradCam(net, target="predicted")(x)
    with torch.no_grad():
        expected = net.eval()(x).argmax(1)
    assert torch.equal(result.targets, expected)
    for cls in (0, 1):
        rows = (expected == cls).nonzero().flatten()
        if len(rows):
            fixed = GradCam(net, target=cls)(x[rows])
            torch.testing.assert_close(result.heatmaps[rows], fixed.heatmaps)


def test_model_state_is_left_untouched() -> None:
    net, x = _net(), _images(2)
    net.train()
    net.features.denseblock1.eval()  # mixed flags must come back exactly as they were
    for p in net.features.conv0.parameters():
        p.requires_grad_(False)  # a frozen stem
    net(x).sum().backward()  # some parameters carry .grad, as between optimizer steps
    flags = {n: m.training for n, m in net.named_modules()}
    state = {k: v.clone() for k, v in net.state_dict().items()}  # weights and BatchNorm running stats
    requires = {n: p.requires_grad for n, p in net.named_parameters()}
    grads = {n: None if p.grad is None else p.grad.clone() for n, p in net.named_parameters()}
    assert any(g is None for g in grads.values()) and any(g is not None for g in grads.values())

    GradCam(net, layer=DEFAULT_LAYER)(x)
    GradCam(net, layer="class_layers.relu", target="predicted")(x)

    assert {n: m.training for n, m in net.named_modules()} == flags
    assert {n: p.requires_grad for n, p in net.named_parameters()} == requires
    for k, v in net.state_dict().items():
        assert torch.equal(v, state[k]), k
    for n, p in net.named_parameters():
        assert (p.grad is None) == (grads[n] is None), n
        if p.grad is not None:
            assert torch.equal(p.grad, grads[n]), n


def test_works_inside_inference_mode_and_with_frozen_parameters() -> None:
    net, x = _net(), _images(2)
    expected = GradCam(net)(x).heatmaps
    for p in net.parameters():
        p.requires_grad_(False)
    with torch.inference_mode():  # as in Lightning's validation loop
        got = GradCam(net)(x).heatmaps
    torch.testing.assert_close(got, expected)


def test_layer_of_a_lightning_module_resolves_through_net() -> None:
    class Wrapper(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = _net()

        def forward(self, x):
            return self.net(x)

    model, x = Wrapper(), _images(2)
    a = GradCam(model, layer="features.denseblock3")(x).heatmaps
    b = GradCam(model, layer="net.features.denseblock3")(x).heatmaps
    torch.testing.assert_close(a, b)


def test_bad_settings_fail_clearly() -> None:
    with pytest.raises(GradCamError, match=r"'features\.denseblock9' is not a submodule.*features"):
        GradCam(_net(), layer="features.denseblock9")
    with pytest.raises(GradCamError, match=r"\(did you mean 'features\.denseblock\d'\?\)$"):
        GradCam(_net(), layer="features.denseblock9")
    with pytest.raises(
        GradCamError,
        match=re.escape("gradcam.target='lungs': choose one of 'pneumonia', 'predicted' or an output index"),
    ):
        GradCam(_net(), target="lungs")
    with pytest.raises(GradCamError, match=re.escape("(did you mean 'predicted'?)")):
        GradCam(_net(), target="predictd")
    with pytest.raises(GradCamError, match=r"\(B, C, H, W\)"):
        GradCam(_net())(torch.rand(1, 64, 64))
    with pytest.raises(GradCamError, match="convolutional feature map"):
        GradCam(_net(), layer="class_layers.out")(torch.rand(1, 1, 64, 64))


def test_pneumonia_target_follows_the_task_of_the_model() -> None:
    from functools import partial

    from pneumo.models.classifier import PneumoniaClassifier
    from pneumo.nih.findings import FINDINGS
    from pneumo.xai.gradcam import pneumonia_probability

    spec = {
        "_target_": "monai.networks.nets.DenseNet",
        "spatial_dims": 2,
        "in_channels": 1,
        "init_features": 16,
        "growth_rate": 8,
        "block_config": [2, 2, 2, 2],
    }
    x = _images(2)
    for task, outputs, index in (("binary", 2, 1), ("multilabel", 14, FINDINGS.index("Pneumonia"))):
        torch.manual_seed(0)
        model = PneumoniaClassifier(
            net={**spec, "out_channels": outputs}, optimizer=partial(torch.optim.Adam, lr=1e-4), task=task
        )
        result = GradCam(model)(x)
        assert torch.equal(result.targets, torch.full((2,), index))
        torch.testing.assert_close(result.heatmaps, GradCam(model, target=index)(x).heatmaps)
        torch.testing.assert_close(pneumonia_probability(model, result.logits), model.eval().predict_proba(x))
