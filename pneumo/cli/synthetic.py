"""``python -m pneumo synthetic OUT [--n N] [--size S] ...``: a synthetic set in NIH's layout.

``OUT --like-index [CSV] [--bbox CSV]`` draws one image per row of a real index (default: NIH's shipped one);
``--format dicom`` writes the demo set as DICOM files.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from pneumo.console import print_json, user_errors
from pneumo.synthetic.demo import IMAGE_FORMATS, SHORTCUTS, SyntheticConfig, write_synthetic_dataset
from pneumo.synthetic.like_index import write_like_index


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m pneumo synthetic OUT [--n N] [--size S] ...`` or ``OUT --like-index [CSV] [--bbox CSV]``."""
    parser = argparse.ArgumentParser(
        prog="python -m pneumo synthetic",
        description="Write a synthetic chest X-ray set in NIH's exact layout.",
    )
    parser.add_argument("out", help="output folder or fsspec URL")
    defaults = SyntheticConfig()
    parser.add_argument("--n", type=int, default=defaults.n, help="number of images")
    parser.add_argument("--size", type=int, default=defaults.size, help="image side in pixels")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--pneumonia-fraction", type=float, default=defaults.pneumonia_fraction)
    parser.add_argument("--test-fraction", type=float, default=defaults.test_fraction)
    parser.add_argument("--noise", type=float, default=defaults.noise, help="film grain, grey levels")
    parser.add_argument(
        "--format", choices=IMAGE_FORMATS, default=defaults.format, help="png, or dicom (.dcm files)"
    )
    parser.add_argument(
        "--shortcut", choices=SHORTCUTS, default=defaults.shortcut,
        help="marker: a corner tag on every pneumonia image and no other (a shortcut to catch)",
    )  # fmt: skip
    like = parser.add_argument_group("one image per row of a real index (--n and the fractions do not apply)")
    like.add_argument(
        "--like-index",
        nargs="?",
        const="",
        metavar="CSV",
        help="a Data_Entry_2017*.csv; without CSV, NIH's file shipped with pneumo (and its boxes)",
    )
    like.add_argument(
        "--bbox", help="NIH's BBox_List_2017.csv (1024-px boxes) whose pneumonia boxes are drawn"
    )
    like.add_argument("--workers", type=int, help="rendering processes (default: the CPUs available)")
    args = parser.parse_args(argv)
    if args.like_index is not None and args.format != "png":
        parser.error("--format dicom writes the --n demo set; --like-index writes PNGs only")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    with user_errors():
        if args.like_index is not None:
            manifest = write_like_index(
                args.out,
                index_csv=args.like_index or None,
                bbox_csv=args.bbox,
                size=args.size,
                seed=args.seed,
                noise=args.noise,
                workers=args.workers,
            )
        else:
            manifest = write_synthetic_dataset(
                args.out,
                n=args.n,
                size=args.size,
                seed=args.seed,
                pneumonia_fraction=args.pneumonia_fraction,
                test_fraction=args.test_fraction,
                noise=args.noise,
                format=args.format,
                shortcut=args.shortcut,
            )
    print_json({k: v for k, v in manifest.items() if k != "findings"})
    return 0


if __name__ == "__main__":
    sys.exit(main())
