"""The explainer interface: every shipped explainer's maps (shape, range, determinism), agreement with Captum's
direct calls and with MONAI's Grad-CAM++, DenseNet's in-place ReLUs, Hydra configs, and explain.py with several."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from captum.attr import GuidedGradCam, IntegratedGradients, Occlusion
from hydra.utils import instantiate
from monai.networks.nets import DenseNet
from monai.visualize import GradCAMpp
from omegaconf import OmegaConf
from PIL import Image

from pneumo.errors import PneumoError
from pneumo.xai.explainers import (
    Explanation,
    GradCamExplainer,
    GradCamPlusPlusExplainer,
    GuidedGradCamExplainer,
    IntegratedGradientsExplainer,
    OcclusionExplainer,
    RandomExplainer,
    explain,
    normalize_per_image,
    occlusion_geometry,
)
from pneumo.xai.gradcam import DEFAULT_LAYER, GradCam
from tests.helpers import CONF


def _net(seed: int = 0) -> torch.nn.Module:
    """A small MONAI DenseNet: DenseNet121's layer names, in-place ReLUs and layout, a fraction of its cost."""
    torch.manual_seed(seed)
    return DenseNet(
        spatial_dims=2,
        in_channels=1,
        out_channels=2,
        init_features=16,
        growth_rate=8,
        block_config=(2, 2, 2, 2),
    ).eval()


def _images(n: int = 3, size: int = 32) -> torch.Tensor:
    x = torch.rand(n, 1, size, size, generator=torch.Generator().manual_seed(1))
    x[:, :, 6:16, 4:12] += 1.0
    return x


def _r(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(
        np.corrcoef(a.detach().flatten().double().numpy(), b.detach().flatten().double().numpy())[0, 1]
    )


SHIPPED = {
    "gradcam": lambda: GradCamExplainer(),
    "gradcam_pp": lambda: GradCamPlusPlusExplainer(),
    "integrated_gradients": lambda: IntegratedGradientsExplainer(n_steps=8),
    "occlusion": lambda: OcclusionExplainer(window=0.25, stride=0.25),
    "guided_gradcam": lambda: GuidedGradCamExplainer(),
    "random": lambda: RandomExplainer(seed=3),
}


@pytest.mark.parametrize("name", list(SHIPPED))
def test_each_explainer_gives_b_h_w_maps_in_0_1_deterministically(name: str) -> None:
    net, x = _net(), _images()
    flags = [m.inplace for m in net.modules() if hasattr(m, "inplace")]
    first = explain(SHIPPED[name](), net, x, target=1)
    again = explain(SHIPPED[name](), net, x, target=1)  # a fresh explainer: the same seed, the same maps
    assert isinstance(first, Explanation) and first.maps.shape == (3, 32, 32)
    assert float(first.maps.min()) == 0.0 and float(first.maps.max()) == 1.0  # per-image min-max
    assert first.targets.tolist() == [1, 1, 1] and first.logits.shape == (3, 2)
    torch.testing.assert_close(first.maps, again.maps)
    assert all(float(m.std()) > 0 for m in first.maps), "a constant map would make these checks vacuous"
    assert [m.inplace for m in net.modules() if hasattr(m, "inplace")] == flags  # DenseNet's flags restored


def test_gradcam_explainer_is_todays_gradcam_and_batches_the_same() -> None:
    net, x = _net(), _images(5)
    ours = explain(GradCamExplainer(batch_size=2), net, x, target="pneumonia")
    today = GradCam(net, layer=DEFAULT_LAYER, target="pneumonia")(x)
    torch.testing.assert_close(ours.maps, today.heatmaps)


def test_integrated_gradients_and_occlusion_equal_captums_direct_call() -> None:
    net, x = _net(), _images()
    target = torch.tensor([1, 1, 1])
    ours = explain(IntegratedGradientsExplainer(n_steps=16), net, x, target=1).maps
    direct = IntegratedGradients(net).attribute(x, baselines=0.0, target=target, n_steps=16)
    theirs = normalize_per_image(direct.abs().sum(1))
    assert min(_r(ours[i], theirs[i]) for i in range(3)) >= 0.999
    ours = explain(OcclusionExplainer(window=0.25, stride=0.125), net, x, target=1).maps
    win, step = occlusion_geometry(x.shape, 0.25, 0.125)
    assert (win, step) == ((1, 8, 8), (1, 4, 4))
    direct = Occlusion(net).attribute(
        x, sliding_window_shapes=win, strides=step, baselines=0.0, target=target
    )
    theirs = normalize_per_image(direct.clamp_min(0).sum(1))
    assert min(_r(ours[i], theirs[i]) for i in range(3)) >= 0.999


@pytest.mark.parametrize("layer", [DEFAULT_LAYER, "features.denseblock3"])
def test_gradcam_pp_matches_monais_independent_gradcampp(layer: str) -> None:
    net, x = _net(), _images(4, 64)
    ours = explain(GradCamPlusPlusExplainer(layer=layer), net, x, target=1).maps
    # MONAI's default post-processing inverts the map and it mutates the model: raw maps, on a copy. One image
    # per call: MONAI multiplies by exp(score) of shape (B,) broadcast over the map's last axis (fine for B = 1).
    monai = GradCAMpp(copy.deepcopy(net), target_layers=layer, postprocessing=lambda m: m)
    theirs = normalize_per_image(
        torch.cat([monai(x[i : i + 1], class_idx=1) for i in range(len(x))])[:, 0].detach()
    )
    assert min(_r(ours[i], theirs[i]) for i in range(len(x))) >= 0.999, layer
    # and Grad-CAM++ is not Grad-CAM under another name: plain Grad-CAM agrees with MONAI's far less
    plain = explain(GradCamExplainer(layer=layer), net, x, target=1).maps
    assert min(_r(plain[i], theirs[i]) for i in range(len(x))) < 0.99


def test_densenets_in_place_relus_give_the_maps_of_an_out_of_place_copy() -> None:
    net, x = _net(), _images()
    assert any(getattr(m, "inplace", False) for m in net.modules())  # the pitfall is present
    twin = copy.deepcopy(net)
    for m in twin.modules():
        if hasattr(m, "inplace"):
            m.inplace = False
    ours = explain(GuidedGradCamExplainer(), net, x, target=1).maps
    direct = GuidedGradCam(twin, twin.get_submodule(DEFAULT_LAYER)).attribute(
        x.clone().requires_grad_(True), target=1, interpolate_mode="bilinear"
    )
    theirs = normalize_per_image(direct.abs().sum(1).detach())
    assert min(_r(ours[i], theirs[i]) for i in range(3)) >= 0.999
    assert all(m.inplace for m in net.modules() if hasattr(m, "inplace"))


def test_random_explainer_draws_new_maps_per_call_and_a_plain_function_is_an_explainer() -> None:
    net, x = _net(), _images()
    random = RandomExplainer(seed=0)
    first, second = explain(random, net, x).maps, explain(random, net, x).maps
    assert not torch.allclose(first, second)

    def edges(model: torch.nn.Module, images: torch.Tensor, target: object) -> torch.Tensor:
        gx = (images[:, 0, :, 1:] - images[:, 0, :, :-1]).abs()
        return normalize_per_image(torch.nn.functional.pad(gx, (0, 1)))

    e = explain(edges, net, x, target="predicted")
    assert e.maps.shape == (3, 32, 32) and e.logits.shape == (3, 2)
    with pytest.raises(PneumoError, match="outside \\[0, 1\\]"):
        explain(lambda m, imgs, t: imgs[:, 0] * 5, net, x)
    with pytest.raises(PneumoError, match="shape"):
        explain(lambda m, imgs, t: imgs, net, x)


def test_every_conf_explainer_instantiates_and_names_itself() -> None:
    files = sorted((CONF / "explainer").glob("*.yaml"))
    assert {f.stem for f in files} == set(SHIPPED)
    for f in files:
        node = OmegaConf.load(f)
        assert list(node) == [f.stem]  # one key per file, its own name: explainer=[a,b] selects several
        root = OmegaConf.create({"explainer": node})  # where Hydra puts it (gradcam.layer: none, the default)
        spec = OmegaConf.to_container(root.explainer[f.stem], resolve=True)
        explainer = instantiate(spec)
        assert explainer.name == f.stem and explainer.passes >= 0


def test_explain_images_draws_several_explainers_side_by_side(
    tiny_ckpt: Path, demo_root: Path, tmp_path: Path
) -> None:
    from pneumo.pipelines.explain import ExplainSettings, explain_images

    images = sorted((demo_root / "images").glob("*.png"))[:2]
    listing = tmp_path / "two.txt"
    listing.write_text("\n".join(map(str, images)) + "\n")
    common = {"ckpt_path": str(tiny_ckpt), "inputs": str(listing), "progress": False, "num_workers": 0}
    one = explain_images(ExplainSettings(out_dir=str(tmp_path / "one"), **common))
    spec = {"_target_": "pneumo.xai.explainers.RandomExplainer", "seed": 1}
    two = explain_images(
        ExplainSettings(
            out_dir=str(tmp_path / "two"),
            explainer={"gradcam": {"_target_": "pneumo.xai.explainers.GradCamExplainer"}, "random": spec},
            **common,
        )
    )
    assert [r["probability"] for r in one.predictions] == [r["probability"] for r in two.predictions]
    stem = images[0].stem
    # the first explainer's heatmaps are today's Grad-CAM; the second's sit in heatmaps/random/
    np.testing.assert_array_equal(
        np.load(tmp_path / "one" / "heatmaps" / f"{stem}.npy"),
        np.load(tmp_path / "two" / "heatmaps" / f"{stem}.npy"),
    )
    assert np.load(tmp_path / "two" / "heatmaps" / "random" / f"{stem}.npy").shape == (64, 64)
    w1 = Image.open(tmp_path / "one" / "overlays" / f"{stem}.png").size
    w2 = Image.open(tmp_path / "two" / "overlays" / f"{stem}.png").size
    assert w2 == (2 * w1[0], w1[1])
