"""A run's data identity: what a checkpoint recorded about the data it was trained on, checked against what a
command that rebuilds the run reads.

``train.py`` records in every checkpoint's model card (``pneumo.reporting.model_card``) the sha256 of the label
file (of a ``bq://`` table: of its rows as read) and of each split list, and the sha256 of each split's image
list. ``pneumo.pipelines.runs.load_run`` hands them to the rebuilt data module (``RecordedData``), which compares
them with the files and splits it reads: a file changed since (a demo set written again with other parameters,
a label file edited, a table reloaded) stops the command with one line naming the file, both hashes and the
fix, instead of explaining or testing another data set under the run's name.

Example:
    >>> card = {"labels": {"url": "d/Data_Entry_2017.csv", "sha256": "a" * 64}, "splits": {"test": {"sha256": "b" * 64}}}
    >>> recorded = RecordedData.from_card(card, "last.ckpt")
    >>> recorded.check_file("labels", "d/Data_Entry_2017.csv", "a" * 64)  # the same bytes: nothing happens
    >>> recorded.check_file("labels", "d/Data_Entry_2017.csv", "c" * 64)
    Traceback (most recent call last):
    ...
    pneumo.data.identity.DataIdentityError: d/Data_Entry_2017.csv has sha256 cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc, but ckpt_path=last.ckpt was trained on sha256 aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa: the file changed since; restore the file the run was trained on, or train again on it as it is
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pneumo.errors import PneumoError

#: The fix when a file changed and nothing more is known about it.
RESTORE = "restore the file the run was trained on, or train again on it as it is"


class DataIdentityError(PneumoError, ValueError):
    """A file or split read while rebuilding a run is not the one its checkpoint was trained on."""


def image_list_sha256(images: Iterable[Any]) -> str:
    """sha256 of a split's image names, sorted, one per line: equal lists give equal digests, whatever the
    label source (CSV, table) or order.

    Example:
        >>> image_list_sha256(["b.png", "a.png"]) == image_list_sha256(["a.png", "b.png"])
        True
    """
    text = "\n".join(sorted(str(x) for x in images)) + "\n"
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class RecordedData:
    """The data identity a checkpoint recorded (its model card's ``data`` section).

    Args:
        checkpoint: the checkpoint's path or URL (named in the errors).
        files: sha256 by role: ``labels``, ``split_lists.train_val``, ``split_lists.test``.
        splits: sha256 of each split's sorted image list (``image_list_sha256``), by split name.
    """

    checkpoint: str
    files: dict[str, str] = field(default_factory=dict)
    splits: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_card(cls, data: Mapping | None, checkpoint: str) -> RecordedData | None:
        """From a model card's ``data`` section (``None`` when the checkpoint recorded none: older runs)."""
        if not isinstance(data, Mapping):
            return None
        files: dict[str, str] = {}
        if isinstance(data.get("labels"), Mapping) and data["labels"].get("sha256"):
            files["labels"] = str(data["labels"]["sha256"])
        for name, entry in (data.get("split_lists") or {}).items():
            if isinstance(entry, Mapping) and entry.get("sha256"):
                files[f"split_lists.{name}"] = str(entry["sha256"])
        splits = {
            str(name): str(entry["sha256"])
            for name, entry in (data.get("splits") or {}).items()
            if isinstance(entry, Mapping) and entry.get("sha256")
        }
        return cls(checkpoint=str(checkpoint), files=files, splits=splits) if files or splits else None

    def check_file(self, role: str, location: str, sha256: str | None, fix: str = RESTORE) -> None:
        """Stop when the file read as ``role`` (at ``location``) is not the one the run was trained on."""
        recorded = self.files.get(role)
        if recorded is None or sha256 is None or sha256 == recorded:
            return
        raise DataIdentityError(
            f"{location} has sha256 {sha256}, but ckpt_path={self.checkpoint} was trained on sha256 {recorded}: "
            f"the file changed since; {fix}"
        )

    def check_split(self, name: str, images: Iterable[Any], fix: str = RESTORE) -> None:
        """Stop when the ``name`` split rebuilt from the data is not the run's (its image list's sha256)."""
        recorded = self.splits.get(name)
        if recorded is None:
            return
        actual = image_list_sha256(images)
        if actual != recorded:
            raise DataIdentityError(
                f"the {name} split rebuilt from ckpt_path={self.checkpoint}'s data holds other images (sha256 "
                f"of its image list {actual}, recorded {recorded}): the data changed since; {fix}"
            )
