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
import statistics
import tempfile
from pathlib import Path

import numpy as np
import torch


def _train(root: Path, out: Path, shortcut: str, args: argparse.Namespace, seed: int) -> Path:
    from pneumo.testing.tiny_run import densenet_overrides, train_demo_checkpoint

    # DenseNet(16, 8, [2,2,2,2]): small enough for a CPU, large enough to learn the opacity
    return train_demo_checkpoint(
        out, n=args.images, size=args.size, epochs=args.epochs, seed=seed, data_root=root,
        net=densenet_overrides(16, 8, 2), overrides=[f"data.synthetic.shortcut={shortcut}"],
    )  # fmt: skip


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
