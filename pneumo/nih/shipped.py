"""NIH ChestX-ray14's own metadata files, shipped inside pneumo (no images).

See ``files/ATTRIBUTION.md`` beside this file (and docs/data-and-gcs.md) for provenance and the attribution
the data providers require. Each file is verified by its sha256 when it is read (``verified``, called by the
readers of labels, lists and boxes) or when its path is asked for (``shipped_path``): a changed or truncated
file is an error that says so, never a silently different table.

Configs name the files with the OmegaConf resolver ``${nih:NAME}`` (registered when pneumo is imported), e.g.
``labels_url: ${nih:Data_Entry_2017_v2020.csv.gz}`` in ``conf/data/nih.yaml``; it resolves to the file's path
without reading it, so the check happens once, where the file is read, and fails there as one line.

Example:
    >>> path = shipped_path("test_list.txt")
    >>> path.endswith("pneumo/nih/files/test_list.txt")
    True
    >>> from omegaconf import OmegaConf
    >>> OmegaConf.create({"labels": "${nih:test_list.txt}"}).labels == path
    True
    >>> verified(path) == path  # the sha256 matches NIH's release
    True
    >>> shipped_path("nope.csv")
    Traceback (most recent call last):
    ...
    pneumo.nih.shipped.ShippedFileError: no shipped NIH file 'nope.csv'; shipped: BBox_List_2017.csv.gz, Data_Entry_2017_v2020.csv.gz, google2019_nih-chest-xray-labels.csv.gz, rsna_pneumonia_nih.csv.gz, test_list.txt, train_val_list.txt
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

from omegaconf import OmegaConf

from pneumo.errors import PneumoError
from pneumo.io.files import sha256_of

#: The folder of the shipped files (package data of ``pneumo.nih``).
HERE = Path(__file__).resolve().parent / "files"
#: Name of the OmegaConf resolver giving a shipped file's path: ``${nih:test_list.txt}``.
RESOLVER = "nih"

#: Shipped file -> sha256 of its bytes, as published (see ATTRIBUTION.md).
SHIPPED: dict[str, str] = {
    "BBox_List_2017.csv.gz": "cf9dc6029f65daa8b389415b0546af0eeeb91fbac7d63ec49d7f8de2fd8f40cd",
    "Data_Entry_2017_v2020.csv.gz": "9d4de640ee4f760215d8be98376b20387ca52f9c6b4d1b727cb588fb82f40b80",
    "google2019_nih-chest-xray-labels.csv.gz": "1d1b846e463753ed0219f67e21b10c8aef381897dbd64865c8191aa5794e8048",
    # RSNA Pneumonia Detection Challenge labels and boxes keyed by NIH image (not NIH's release; see ATTRIBUTION.md)
    "rsna_pneumonia_nih.csv.gz": "1204a411e5d617863379e85d1fbdcf193102350e3731c8bad3c2ad41f16570c6",
    "test_list.txt": "38ca5ef7f756092946f57c1a59faca882ed589a1ab1f72590b45dc06c6d5e1cc",
    "train_val_list.txt": "61fbe896321c1c1c8b75f3e4f3a08e4fef6486d95ef8a667c31d4d60dca6cb81",
}


class ShippedFileError(PneumoError, ValueError):
    """A shipped NIH file that is unknown, missing or not byte-identical to its published release."""


@cache
def _verified(path: str, expected: str) -> str:
    if not Path(path).is_file():
        raise ShippedFileError(f"{path}: the shipped NIH file is missing; reinstall pneumo")
    found = sha256_of(path)
    if found != expected:
        raise ShippedFileError(
            f"{path}: sha256 {found[:12]}... differs from NIH's release ({expected[:12]}...); "
            "the file was changed or truncated: reinstall pneumo"
        )
    return path


def location(name: str) -> str:
    """Path of the shipped file ``name`` (not read, not checked: ``verified`` does that when it is read)."""
    if name not in SHIPPED:
        raise ShippedFileError(f"no shipped NIH file {name!r}; shipped: {', '.join(sorted(SHIPPED))}")
    return str(HERE / name)


def shipped_path(name: str) -> str:
    """Local path of the shipped file ``name``, after checking its sha256 (once per process and path)."""
    return _verified(location(name), SHIPPED[name])


def verified(url: str) -> str:
    """``url`` unchanged; if it is one of the shipped files, only after checking that file's sha256.

    Readers call this on every location they open, so a shipped file is checked wherever it is read from
    (a config's ``${nih:...}``, a path typed by hand, a checkpoint's saved location); other paths and URLs
    pass untouched.
    """
    text = str(url)
    if "://" in text and not text.startswith("file://"):
        return url
    path = Path(text.removeprefix("file://")).expanduser()
    if path.name in SHIPPED and path.absolute().parent.resolve() == HERE:
        shipped_path(path.name)
    return url


def relocated(url: str) -> str:
    """``url``, or this install's copy of it if it names a shipped file of any pneumo install.

    Checkpoints save the resolved path of ``${nih:NAME}`` (``.../site-packages/pneumo/nih/files/NAME``); a
    checkpoint trained on another machine, venv or checkout names a path that does not exist here. The
    shipped files are identical everywhere (sha256-pinned), so such a path is mapped to ``location(NAME)``.

    Example:
        >>> relocated("/elsewhere/venv/lib/python3.11/site-packages/pneumo/nih/files/test_list.txt") == location("test_list.txt")
        True
        >>> relocated("/old/checkout/pneumo/data/nih/test_list.txt") == location("test_list.txt")  # before 0.2.0
        True
        >>> relocated("gs://bucket/test_list.txt")
        'gs://bucket/test_list.txt'
    """
    text = str(url)
    if "://" in text and not text.startswith("file://"):
        return url
    path = Path(text.removeprefix("file://"))
    # pneumo/data/nih/ before 0.2.0, pneumo/nih/files/ since.
    if path.name in SHIPPED and path.parent.parts[-3:] in (
        ("pneumo", "data", "nih"),
        ("pneumo", "nih", "files"),
    ):
        return location(path.name)
    return url


def register_resolver() -> None:
    """Register ``${nih:NAME}`` with OmegaConf (once per process; ``import pneumo`` calls this)."""
    if not OmegaConf.has_resolver(RESOLVER):
        OmegaConf.register_new_resolver(RESOLVER, location)
