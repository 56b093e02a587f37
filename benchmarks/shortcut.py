"""The shortcut demo (issue 23): Grad-CAM's share of heat in the lung fields, clean demo vs marker demo.

For each seed, trains the same small DenseNet on the demo set and on its ``shortcut=marker`` twin (the same
images plus a bright corner tag on every pneumonia image) and prints, on the test split, the test AUROC and the
share of Grad-CAM heat inside the lung masks (all test images, and the pneumonia ones) beside the lungs' area,
and whether the saliency report's shortcut warning fires (``pneumo.reporting.saliency``: the pneumonia images'
share under 1.25x the lungs' area). tests/test_saliency.py asserts the same at 64 px on seeds 0-2; this repeats
it at a larger size and on any seeds (docs/explanations.md, "Heat in the lung fields"; the figures are in
docs/BENCHMARKS.md).

    python benchmarks/shortcut.py                          # 300 images at 96 px, 25 epochs, seeds 0,1,2
    python benchmarks/shortcut.py --size 64 --epochs 20 --seeds 0,1,2,3,4,5,6   # the test's runs
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import numpy as np
import torch


def _train(root: Path, out: Path, shortcut: str, args: argparse.Namespace, seed: int) -> Path:
    from pneumo.testing.tiny_run import SALIENCY_NET, train_demo_checkpoint

    # DenseNet(16, 8, [2,2,2,2]): small enough for a CPU, large enough to learn the opacity
    return train_demo_checkpoint(
        out, n=args.images, size=args.size, epochs=args.epochs, seed=seed, data_root=root,
        net=SALIENCY_NET, overrides=[f"data.synthetic.shortcut={shortcut}"],
    )  # fmt: skip


def _shares(ckpt: Path) -> tuple[float, float, float, float, bool]:
    """Test AUROC, lung share (all test images, pneumonia ones), the lungs' area on the pneumonia images and
    whether the report's shortcut warning fires."""
    from sklearn.metrics import roc_auc_score

    from pneumo.pipelines.runs import load_run
    from pneumo.pipelines.saliency import load_batch, lung_share
    from pneumo.reporting.saliency import warnings
    from pneumo.xai.explainers import GradCamExplainer, explain

    run = load_run(str(ckpt), map_location="cpu")
    batch = load_batch(run, run.datamodule.split_images("test"), torch.device("cpu"))
    assert batch.lungs is not None
    explained = explain(GradCamExplainer(), run.model, batch.images, "pneumonia")
    share = lung_share(explained.maps.numpy(), batch.lungs)
    probability = torch.softmax(explained.logits, 1)[:, 1].detach().numpy()
    pos = batch.labels == 1
    auroc = float(roc_auc_score(batch.labels, probability))
    share_pos, area = float(np.nanmean(share[pos])), float(batch.lungs[pos].mean())
    # the report's own rule, on the row it would write
    flagged = any(
        "Shortcut warning" in w for w in warnings({"gradcam": {"lung_share": share_pos, "lung_area": area}})
    )
    return auroc, float(np.nanmean(share)), share_pos, area, flagged


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
        "| seed | clean AUROC | clean share (pneumonia) | warning | marker AUROC | marker share (pneumonia) "
        "| warning | lung area (pneumonia) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    yes = {True: "yes", False: "no"}
    for r in rows:
        c, m = r["none"], r["marker"]
        print(
            f"| {r['seed']} | {c[0]:.3f} | {c[1]:.3f} ({c[2]:.3f}) | {yes[c[4]]} | {m[0]:.3f} "
            f"| {m[1]:.3f} ({m[2]:.3f}) | {yes[m[4]]} | {c[3]:.3f} |"
        )
    for k, what in ((1, "all test images"), (2, "pneumonia test images")):
        clean = statistics.median(r["none"][k] for r in rows)
        marker = statistics.median(r["marker"][k] for r in rows)
        print(f"median over seeds, {what}: clean {clean:.3f}, marker {marker:.3f}")


if __name__ == "__main__":
    main()
