"""``python -m pneumo index [CSV] [--split-lists TRAIN_VAL TEST] [--views PA AP]``: an NIH label index summarised.

Example:
    >>> main([])  # doctest: +SKIP
    {"source": ".../Data_Entry_2017_v2020.csv.gz", "images": 112120, ...}
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from pneumo.console import print_json, user_errors
from pneumo.nih.index import NIHLabelIndex
from pneumo.nih.shipped import location
from pneumo.nih.splits import read_image_list


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m pneumo index [CSV] [--split-lists TRAIN_VAL TEST] [--views PA AP]``.

    Without ``CSV`` it summarises the NIH files shipped with pneumo: ``Data_Entry_2017_v2020.csv.gz`` and
    the official split (``train_val_list.txt``, ``test_list.txt``), nothing downloaded.
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
    print_json(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
