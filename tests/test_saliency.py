"""Saliency checks: the sanity check (an image-only explainer fails it), faithfulness curves, CheXlocalize
localization, the report, and ``explain.py saliency.evaluate=true`` / ``python -m pneumo sanity``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torchmetrics.functional.image import structural_similarity_index_measure

from pneumo.pipelines.saliency import SanitySettings, lung_share, run_sanity
from pneumo.xai.chexlocalize import localize, otsu_threshold
from pneumo.xai.faithfulness import deletion_insertion
from pneumo.xai.gradcam import normalize_per_image
from pneumo.xai.sanity import random_pairs, randomization_steps, spearman_abs, ssim
from tests.helpers import ROOT

EDGES = {"_target_": "tests.test_saliency.edge_filter", "_partial_": True}
GRADCAM = {"_target_": "pneumo.xai.explainers.GradCamExplainer"}
RANDOM = {"_target_": "pneumo.xai.explainers.RandomExplainer", "seed": 0}


def edge_filter(model: torch.nn.Module, images: torch.Tensor, target: object) -> torch.Tensor:
    """An 'explainer' that never looks at the model: the image's gradient magnitude (what the sanity check
    exists to catch)."""
    x = images[:, 0]
    gx = torch.nn.functional.pad((x[:, :, 1:] - x[:, :, :-1]).abs(), (0, 1))
    gy = torch.nn.functional.pad((x[:, 1:] - x[:, :-1]).abs(), (0, 0, 0, 1))
    return normalize_per_image(gx + gy)


def test_the_sanity_check_fails_an_image_only_explainer_and_passes_gradcam(
    tiny_ckpt: Path, tmp_path: Path
) -> None:
    settings = SanitySettings(
        ckpt_path=str(tiny_ckpt), out_dir=str(tmp_path), split="test", n=6,
        explainer={"gradcam": GRADCAM, "edges": EDGES, "random": RANDOM},
    )  # fmt: skip
    report = run_sanity(settings)["explainers"]
    edges, gradcam, rand = (report[k]["sanity"] for k in ("edges", "gradcam", "random"))
    assert edges["verdict"] == "fail" and edges["spearman"][-1] > 0.99 and edges["ssim"][-1] > 0.99
    assert gradcam["verdict"] == "pass"
    assert gradcam["steps"][0] == "class_layers.out" and gradcam["steps"][-1] == "features.conv0"
    # the random maps sit at the baseline: randomizing the model changes nothing about them
    assert abs(rand["spearman"][-1] - rand["baseline_spearman"]) < 0.2
    assert rand["verdict"] == "pass"
    written = json.loads((tmp_path / "sanity.json").read_text())
    assert written["explainers"]["edges"]["sanity"]["verdict"] == "fail"
    md = (tmp_path / "sanity.md").read_text()
    assert "edges: **fails the sanity check**" in md
    assert (tmp_path / "sanity.png").read_bytes()[:4] == b"\x89PNG"


def test_similarity_measures_and_randomization_order() -> None:
    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(3, 32, 32, generator=g), torch.rand(3, 32, 32, generator=g)
    theirs = [float(structural_similarity_index_measure(a[i : i + 1, None].double(), b[i : i + 1, None].double(), data_range=1.0)) for i in range(3)]  # fmt: skip
    np.testing.assert_allclose(ssim(a, b), theirs, atol=1e-6)
    np.testing.assert_allclose(ssim(a, a), 1.0)
    np.testing.assert_allclose(spearman_abs(a, a**3), 1.0)  # ranks only
    assert spearman_abs(torch.zeros(1, 4, 4), a[:1, :4, :4])[0] == 0.0  # a constant map: nothing to rank
    pairs = random_pairs(7, seed=3)
    assert sorted(pairs.tolist()) == list(range(7)) and all(pairs != np.arange(7))
    from monai.networks.nets import DenseNet

    names = [
        n
        for n, _ in randomization_steps(
            DenseNet(spatial_dims=2, in_channels=1, out_channels=2, block_config=(1, 1, 1, 1))
        )
    ]
    assert (
        names[:3] == ["class_layers.out", "features.norm5", "features.denseblock4"]
        and names[-1] == "features.conv0"
    )


class _Quadrant(torch.nn.Module):
    """A 'model' whose pneumonia logit is the brightness of the top-left quadrant."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x[:, 0, :16, :16].mean(dim=(1, 2)) * 20
        return torch.stack([-s, s], dim=1)


def test_deletion_and_insertion_beat_random_order_for_the_true_evidence() -> None:
    x = torch.rand(4, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    truth = torch.zeros(4, 32, 32)
    truth[:, :16, :16] = 1.0
    truth += 0.01 * torch.rand(4, 32, 32, generator=torch.Generator().manual_seed(1))
    curves = deletion_insertion(
        _Quadrant(), x, truth, torch.ones(4, dtype=torch.long), grid=4, steps=8, baseline="mean"
    )
    assert (curves["deletion"] < curves["deletion_random"]).all()
    assert (curves["insertion"] > curves["insertion_random"]).all()
    wrong = torch.flip(truth, dims=(1, 2))  # heat on the bottom-right: worse than random
    worse = deletion_insertion(
        _Quadrant(), x, wrong, torch.ones(4, dtype=torch.long), grid=4, steps=8, baseline="mean"
    )
    assert (worse["deletion"] > worse["deletion_random"]).all()


def test_chexlocalize_miou_otsu_and_hit_rate_with_a_patient_bootstrap() -> None:
    heat = np.full((16, 16), 0.1)
    heat[2:8, 2:8] = 0.9
    assert 0.1 < otsu_threshold(heat) <= 0.9
    box = np.array([[2.0, 2.0, 6.0, 6.0]])
    far = np.array([[10.0, 10.0, 4.0, 4.0]])
    scores = localize([heat, heat, heat], [box, box, far], patients=["p1", "p1", "p2"], resamples=200)
    assert scores["miou_otsu"] == pytest.approx(2 / 3) and scores["hit_rate"] == pytest.approx(2 / 3)
    assert scores["miou_fixed"] == pytest.approx(2 / 3)
    lo, hi = scores["hit_rate_ci95"]
    assert lo == 0.0 and hi == 1.0  # two patients: a resample of p2 alone misses, of p1 alone hits
    share = lung_share(np.stack([heat, heat]), np.stack([heat > 0.5, heat < 0.5]))
    assert share[0] == pytest.approx(36 * 0.9 / heat.sum()) and share.sum() == pytest.approx(1.0)


@pytest.mark.slow
def test_sanity_command_prints_each_verdict(tiny_ckpt: Path, tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "pneumo", "sanity", f"ckpt_path={tiny_ckpt}", "split=test", "n=4",
         f"out_dir={tmp_path}", "explainer=[gradcam,guided_gradcam,random]", "+explainer.edges._target_=tests.test_saliency.edge_filter",
         "+explainer.edges._partial_=true", f"hydra.run.dir={tmp_path}"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout + proc.stderr
    for name in ("gradcam", "guided_gradcam", "random", "edges"):
        assert f"{name}: " in out
    assert "edges: FAIL" in out and "gradcam: PASS" in out
    assert (tmp_path / "sanity.md").exists()
