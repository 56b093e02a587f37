"""``python -m pneumo index [CSV] [--split-lists TRAIN_VAL TEST] [--views PA AP] [--rsna [FILE]]``: an NIH
label index summarised, with the RSNA radiologists' counts beside NIH's (``rsna``: the images RSNA's labels
cover, their positives and boxes, and how RSNA's opacity and the index's Pneumonia agree there, in total and
per split; ``pneumo.nih.references.coverage_summary``).

Example:
    >>> main([])  # doctest: +SKIP
    {"source": ".../Data_Entry_2017_v2020.csv.gz", "images": 112120, ..., "rsna": {"images": 26585, ...}}
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from pneumo.console import print_json, user_errors
from pneumo.nih.index import NIHLabelIndex
from pneumo.nih.references import coverage_summary, load_reference, reference_spec
from pneumo.nih.shipped import location
from pneumo.nih.splits import read_image_list


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m pneumo index [CSV] [--split-lists TRAIN_VAL TEST] [--views PA AP]``.

    Without ``CSV`` it summarises the NIH files shipped with pneumo: ``Data_Entry_2017_v2020.csv.gz`` and
    the official split (``train_val_list.txt``, ``test_list.txt``), with the shipped RSNA labels' counts,
    nothing downloaded. ``--rsna FILE`` counts an RSNA-layout file over ``CSV``'s images (a look-alike or
    demo set's ``rsna_pneumonia.csv``, checked against ``CSV``'s patients, views, sexes and ages).
    """
    parser = argparse.ArgumentParser(
        prog="python -m pneumo index",
        description="Summarise an NIH label index (images, patients, findings, views, splits) as JSON.",
    )
    parser.add_argument(
        "csv",
        nargs="?",
        help="Data_Entry_2017*.csv (path or URL, plain or .gz); default: the shipped NIH file",
    )
    parser.add_argument(
        "--split-lists",
        nargs=2,
        metavar=("TRAIN_VAL", "TEST"),
        help="split lists; default without CSV: NIH's official lists shipped with pneumo",
    )
    parser.add_argument("--views", nargs="+", help="keep only these view positions (PA, AP)")
    parser.add_argument(
        "--rsna",
        nargs="?",
        const="",
        metavar="FILE",
        help="RSNA counts beside NIH's: an RSNA-layout file over CSV's images; without FILE the shipped RSNA "
        "labels (checked against NIH's index). Default: the shipped ones when CSV is not given",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    csv, lists = args.csv, args.split_lists
    if csv is None:
        csv = location("Data_Entry_2017_v2020.csv.gz")
        lists = lists or [location("train_val_list.txt"), location("test_list.txt")]
    with user_errors():
        index = NIHLabelIndex.from_csv(csv, views=args.views)
        splits = None
        if lists:
            splits = {"train_val": read_image_list(lists[0]), "test": read_image_list(lists[1])}
        summary = index.summary(splits)
        if args.rsna is not None or args.csv is None:
            # a data set's own RSNA-layout file is checked against its own index, the shipped one against NIH's
            files = {"rsna": {"url": args.rsna, "index_url": csv}} if args.rsna else None
            summary["rsna"] = coverage_summary(load_reference(reference_spec("rsna", files)), index, splits)
    print_json(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
