"""The shortcut demo (issue 23): Grad-CAM's share of heat in the lung fields, clean demo vs marker demo.

For each seed, trains the same small DenseNet on the demo set and on its ``shortcut=marker`` twin (the same
images plus a bright corner tag on every pneumonia image) and prints, on the test split, the test AUROC and the
share of Grad-CAM heat inside the lung masks (all test images, and the pneumonia ones) beside the lungs' area.
Not a test: on networks small enough for CI the clean model's heat is not reliably in the lungs
(docs/explanations.md, "Heat in the lung fields"; the figures are in docs/BENCHMARKS.md).

    python benchmarks/shortcut.py                          # 300 images at 96 px, 25 epochs, seeds 0,1,2
    python benchmarks/shortcut.py --size 64 --images 200 --epochs 20
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
from pathlib import Path

import numpy as np
import torch

#: A DenseNet with two layers per block: small enough for a CPU, large enough to learn the opacity.
NET = [
    "model.net._target_=monai.networks.nets.DenseNet",
    "+model.net.init_features=16",
    "+model.net.growth_rate=8",
    "+model.net.block_config=[2,2,2,2]",
    "+model.net.bn_size=2",
    "model.optimizer.lr=3e-3",
    "model.temperature=1.0",
]


def _train(root: Path, out: Path, shortcut: str, args: argparse.Namespace, seed: int) -> Path:
    import pneumo.conf
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import open_dict

    from pneumo.pipelines.train import train

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=os.path.dirname(pneumo.conf.__file__), version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[
                f"data.synthetic.root={root}", f"data.synthetic.n={args.images}", f"data.synthetic.size={args.size}",
                f"data.synthetic.shortcut={shortcut}", "data.synthetic.pneumonia_fraction=0.5",
                f"data.images.size={args.size}", "data.loader.batch_size=16", "data.loader.num_workers=0",
                f"paths.log_dir={out}", f"paths.data_dir={out}/cache", "trainer.accelerator=cpu",
                f"trainer.max_epochs={args.epochs}", "callbacks.progress_bar.refresh_rate=0", "test=false",
                "logger=none", f"seed={seed}", *NET,
            ],
        )  # fmt: skip
    GlobalHydra.instance().clear()
    with open_dict(cfg):
        cfg.paths.output_dir = str(out / "run")
        cfg.callbacks.gradcam_overlay = None
        cfg.callbacks.lr_monitor = None
        cfg.callbacks.early_stopping = None
    train(cfg)
    return out / "run" / "checkpoints" / "last.ckpt"


def _shares(ckpt: Path) -> tuple[float, float, float, float]:
    """Test AUROC, lung share (all test images, pneumonia ones) and the lungs' area."""
    from sklearn.metrics import roc_auc_score

    from pneumo.pipelines.runs import load_run
    from pneumo.pipelines.saliency import load_batch, lung_share
    from pneumo.xai.explainers import GradCamExplainer, explain

    run = load_run(str(ckpt), map_location="cpu")
    batch = load_batch(run, run.datamodule.split_images("test"), torch.device("cpu"))
    assert batch.lungs is not None
    explained = explain(GradCamExplainer(), run.model, batch.images, "pneumonia")
    share = lung_share(explained.maps.numpy(), batch.lungs)
    probability = torch.softmax(explained.logits, 1)[:, 1].detach().numpy()
    pos = batch.labels == 1
    auroc = float(roc_auc_score(batch.labels, probability))
    return auroc, float(np.nanmean(share)), float(np.nanmean(share[pos])), float(batch.lungs.mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--epochs", type=int, default=25)
    parser.add_argument("--seeds", default="0,1,2")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    from pneumo.synthetic.demo import ensure_synthetic_dataset

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        roots = {}
        for shortcut in ("none", "marker"):
            roots[shortcut] = Path(tmp) / f"demo_{shortcut}"
            ensure_synthetic_dataset(
                str(roots[shortcut]), n=args.images, size=args.size, seed=0, shortcut=shortcut,
                pneumonia_fraction=0.5,
            )  # fmt: skip
        for seed in seeds:
            row = {"seed": seed}
            for shortcut in ("none", "marker"):
                ckpt = _train(roots[shortcut], Path(tmp) / f"run_{shortcut}_{seed}", shortcut, args, seed)
                row[shortcut] = _shares(ckpt)
            rows.append(row)
    print(
        f"# {args.images} images at {args.size} px, {args.epochs} epochs; Grad-CAM lung share on the test split"
    )
    print(
        "| seed | clean AUROC | clean share (pneumonia) | marker AUROC | marker share (pneumonia) | lung area |"
    )
    print("|---|---|---|---|---|---|")
    for r in rows:
        c, m = r["none"], r["marker"]
        print(
            f"| {r['seed']} | {c[0]:.3f} | {c[1]:.3f} ({c[2]:.3f}) | {m[0]:.3f} | {m[1]:.3f} ({m[2]:.3f}) | {c[3]:.3f} |"
        )
    for k, what in ((1, "all test images"), (2, "pneumonia test images")):
        clean = statistics.median(r["none"][k] for r in rows)
        marker = statistics.median(r["marker"][k] for r in rows)
        print(f"median over seeds, {what}: clean {clean:.3f}, marker {marker:.3f}")


if __name__ == "__main__":
    main()
