"""Grad-CAM cost: a batch vs a forward pass of the same batch, and batched vs one image at a time.

Prints one table; the figures go to docs/BENCHMARKS.md ("Explainability"). All timings are medians of
interleaved repeats in one process, so a busy machine slows both sides of each ratio alike.

    python benchmarks/gradcam.py                      # DenseNet121, 96 px (the demo), batch 32
    python benchmarks/gradcam.py --size 224 --batch 16
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch
from monai.networks.nets import DenseNet121

from pneumo.xai.gradcam import DEFAULT_LAYER, GradCam


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=96, help="image side, pixels")
    parser.add_argument("--batch", type=int, default=32, help="images per batch")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved repeats (median reported)")
    parser.add_argument("--layer", default=DEFAULT_LAYER)
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0 = torch's default)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    net = DenseNet121(spatial_dims=2, in_channels=1, out_channels=2).to(device).eval()
    x = torch.rand(args.batch, 1, args.size, args.size, device=device)
    cam = GradCam(net, layer=args.layer, batch_size=args.batch)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def forward() -> None:
        with torch.inference_mode():
            net(x)
        sync()

    def batched() -> None:
        cam(x)
        sync()

    def per_image() -> None:
        for i in range(len(x)):
            cam(x[i : i + 1])
        sync()

    for fn in (forward, batched, per_image):  # warm-up (allocator, oneDNN primitives)
        fn()
    times: dict[str, list[float]] = {"forward": [], "batched": [], "per_image": []}
    for _ in range(args.repeats):
        times["forward"].append(_timed(forward))
        times["batched"].append(_timed(batched))
        times["per_image"].append(_timed(per_image))
    med = {k: statistics.median(v) for k, v in times.items()}

    print(
        f"DenseNet121 (1 channel), {args.size} px, batch {args.batch}, layer {args.layer}, device {device}, "
        f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), {platform.machine()}, "
        f"median of {args.repeats}"
    )
    print(f"{'what':38s} {'s / batch':>10s} {'ms / image':>11s} {'ratio':>8s}")
    rows = [
        ("forward pass (inference_mode)", med["forward"], 1.0),
        ("Grad-CAM, batched", med["batched"], med["batched"] / med["forward"]),
        ("Grad-CAM, one image at a time", med["per_image"], med["per_image"] / med["forward"]),
    ]
    for name, seconds, ratio in rows:
        print(f"{name:38s} {seconds:10.3f} {1000 * seconds / args.batch:11.1f} {ratio:7.2f}x")
    print(f"Grad-CAM batch cost vs forward: {med['batched'] / med['forward']:.2f}x (target <= 3x)")
    print(f"batched vs one at a time: {med['per_image'] / med['batched']:.2f}x faster (target >= 3x)")


if __name__ == "__main__":
    main()
