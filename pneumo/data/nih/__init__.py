"""NIH ChestX-ray14's own metadata files, shipped inside pneumo (no images).

See ``ATTRIBUTION.md`` beside this file (and README, "Real NIH data") for provenance and the attribution
the data providers require. Each file is verified by its sha256 when its path is asked for: a changed or
truncated file is an error that says so, never a silently different table.

Example:
    >>> path = shipped_path("test_list.txt")
    >>> path.endswith("pneumo/data/nih/test_list.txt")
    True
    >>> shipped_path("nope.csv")
    Traceback (most recent call last):
    ...
    pneumo.data.nih.ShippedFileError: no shipped NIH file 'nope.csv'; shipped: BBox_List_2017.csv.gz, Data_Entry_2017_v2020.csv.gz, google2019_nih-chest-xray-labels.csv.gz, test_list.txt, train_val_list.txt
"""

from __future__ import annotations

import hashlib
from functools import cache
from pathlib import Path

from pneumo.errors import PneumoError

HERE = Path(__file__).resolve().parent

#: Shipped file -> sha256 of its bytes, as published (see ATTRIBUTION.md).
SHIPPED: dict[str, str] = {
    "BBox_List_2017.csv.gz": "cf9dc6029f65daa8b389415b0546af0eeeb91fbac7d63ec49d7f8de2fd8f40cd",
    "Data_Entry_2017_v2020.csv.gz": "9d4de640ee4f760215d8be98376b20387ca52f9c6b4d1b727cb588fb82f40b80",
    "google2019_nih-chest-xray-labels.csv.gz": "1d1b846e463753ed0219f67e21b10c8aef381897dbd64865c8191aa5794e8048",
    "test_list.txt": "38ca5ef7f756092946f57c1a59faca882ed589a1ab1f72590b45dc06c6d5e1cc",
    "train_val_list.txt": "61fbe896321c1c1c8b75f3e4f3a08e4fef6486d95ef8a667c31d4d60dca6cb81",
}


class ShippedFileError(PneumoError, ValueError):
    """A shipped NIH file that is unknown, missing or not byte-identical to NIH's release."""


def sha256_of(path: str | Path) -> str:
    """The sha256 (hex) of a local file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@cache
def _verified(name: str) -> str:
    path = HERE / name
    if not path.is_file():
        raise ShippedFileError(f"{path}: the shipped NIH file is missing; reinstall pneumo")
    found = sha256_of(path)
    if found != SHIPPED[name]:
        raise ShippedFileError(
            f"{path}: sha256 {found[:12]}... differs from NIH's release ({SHIPPED[name][:12]}...); "
            "the file was changed or truncated: reinstall pneumo"
        )
    return str(path)


def shipped_path(name: str) -> str:
    """Local path of the shipped file ``name``, after checking its sha256 (once per process)."""
    if name not in SHIPPED:
        raise ShippedFileError(f"no shipped NIH file {name!r}; shipped: {', '.join(sorted(SHIPPED))}")
    return _verified(name)
