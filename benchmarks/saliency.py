"""Saliency checks per explainer on the demo, with costs as ratios to one Grad-CAM.

Trains a small DenseNet on a demo set (or takes ``--ckpt``), then runs ``explain.py saliency.evaluate=true``'s
checks (``pneumo.pipelines.saliency.saliency_report``) for the six shipped explainers on ``--n`` test images and
prints ``saliency.md`` plus the sanity lines. ``ms / image`` is one explanation of the batch;
``cost vs Grad-CAM`` is that over Grad-CAM's (the sanity check costs about ``blocks + 1`` explanations more).
The figures go to docs/BENCHMARKS.md ("Saliency checks").

    python benchmarks/saliency.py                  # demo: 300 images at 96 px, the tests' DenseNet, 16 images
    python benchmarks/saliency.py --ckpt last.ckpt --n 32
    python benchmarks/saliency.py --captum         # plus Captum's infidelity and max-sensitivity, with costs
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import torch

EXPLAINERS = ("gradcam", "gradcam_pp", "integrated_gradients", "occlusion", "guided_gradcam", "random")


def _train(out: Path, size: int, n: int, epochs: int) -> Path:
    # the network of tests/test_saliency.py: DenseNet(16, 8, [2,2,2,2]), seconds per epoch on 2 cores
    from pneumo.testing.tiny_run import SALIENCY_NET, train_demo_checkpoint

    return train_demo_checkpoint(out, n=n, size=size, epochs=epochs, net=SALIENCY_NET)


def _specs() -> dict:
    import pneumo.conf
    import yaml

    conf = Path(pneumo.conf.__file__).parent / "explainer"
    specs = {}
    for name in EXPLAINERS:
        (key, spec), *_ = yaml.safe_load((conf / f"{name}.yaml").read_text()).items()
        specs[key] = {k: v for k, v in spec.items() if k != "batch_size"}
    return specs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--ckpt", help="a trained checkpoint (default: train the tests' DenseNet on a demo set)"
    )
    parser.add_argument("--size", type=int, default=96, help="demo image side, pixels (the demo's 96)")
    parser.add_argument("--images", type=int, default=300, help="demo set size")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--n", type=int, default=16, help="test images checked")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0 = torch's default)")
    parser.add_argument(
        "--captum",
        action="store_true",
        help="also Captum's infidelity and max-sensitivity (saliency.captum_metrics)",
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from pneumo.pipelines.runs import load_run
    from pneumo.pipelines.saliency import SaliencySettings, load_batch, pick, saliency_report
    from pneumo.reporting.saliency import format_saliency
    from pneumo.xai.explainers import instantiate_explainers
    from pneumo.xai.sanity import format_sanity

    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(args.ckpt) if args.ckpt else _train(Path(tmp), args.size, args.images, args.epochs)
        trained = time.perf_counter() - start
        run = load_run(str(ckpt), map_location="cpu")
        names = pick(run.datamodule.split_images("test"), args.n, seed=0)
        batch = load_batch(run, names, torch.device("cpu"))
        settings = SaliencySettings(evaluate=True, n=args.n, resamples=200, captum_metrics=args.captum)
        report = saliency_report(run.model, batch, instantiate_explainers(_specs()), "pneumonia", settings)
    from pneumo.xai.sanity import SanityResult

    print(
        f"# {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
        f"{'checkpoint ' + args.ckpt if args.ckpt else f'DenseNet(16, 8, [2,2,2,2]), demo {args.images} images at {args.size} px'}, "
        f"{len(names)} test images ({report['positives']} pneumonia); training {trained:.0f} s, "
        f"checks {time.perf_counter() - start - trained:.0f} s"
    )
    for line in format_saliency(report):  # saliency.md, whole
        print(line)
    fields = set(SanityResult.__dataclass_fields__)
    results = {
        name: SanityResult(**{k: v for k, v in row["sanity"].items() if k in fields})
        for name, row in report["explainers"].items()
    }
    print()
    for line in format_sanity(results):
        print(line)


if __name__ == "__main__":
    main()
