"""Patient-disjoint train/val/test splits.

With NIH's official lists, test is ``test_list.txt`` and validation is carved out of ``train_val_list.txt``
**by patient**; without lists, test and validation are both carved by patient from the whole index. Either
way the carving is seeded and stratified (patients with a pneumonia image are sampled separately, so
validation keeps positives), and zero patient overlap is checked, not assumed.

Example:
    >>> split = make_splits(index, val_fraction=0.1, test_fraction=0.2, seed=0)  # doctest: +SKIP
    >>> len(split.train), len(split.val), len(split.test)  # doctest: +SKIP
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from pneumo.errors import PneumoError
from pneumo.io.reading import read_text
from pneumo.nih.index import NIHLabelIndex
from pneumo.nih.shipped import verified

log = logging.getLogger(__name__)


class SplitError(PneumoError, ValueError):
    """Split lists that cannot be used, or splits that share patients."""


@dataclass(frozen=True)
class PatientSplit:
    """Image names of the train, val and test splits (each a ``np.ndarray`` of str)."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray

    def as_dict(self) -> dict[str, np.ndarray]:
        return {"train": self.train, "val": self.val, "test": self.test}

    def check_disjoint(self, index: NIHLabelIndex) -> None:
        """Raise ``SplitError`` if two splits share an image or a patient."""
        patient_of = dict(zip(index.table["image"], index.table["patient"]))
        parts = {k: set(v.tolist()) for k, v in self.as_dict().items()}
        names = list(parts)
        for i, a in enumerate(names):
            for b in names[i + 1 :]:
                shared_images = parts[a] & parts[b]
                shared = {patient_of[x] for x in parts[a]} & {patient_of[x] for x in parts[b]}
                if shared_images or shared:
                    raise SplitError(
                        f"splits {a!r} and {b!r} share {len(shared)} patient(s) "
                        f"(e.g. {sorted(shared)[:5]}) and {len(shared_images)} image(s): results would leak"
                    )


def read_image_list(url: str, storage_options: Mapping | None = None, io: Mapping | None = None) -> list[str]:
    """Read an NIH split list (one image name per line) from a path or URL (plain or compressed by suffix;
    ``io``: I/O limits of the read, ``StorageSettings.io``)."""
    verified(url)
    try:
        names = [line.strip() for line in read_text(url, storage_options, io=io).splitlines() if line.strip()]
    except FileNotFoundError as err:
        raise SplitError(f"{url}: split list not found") from err
    except UnicodeDecodeError as err:
        raise SplitError(f"{url}: not a text file of image names") from err
    if not names:
        raise SplitError(f"{url}: the split list is empty")
    return names


def carve_patients(index: NIHLabelIndex, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split ``index`` by patient into (rest, held) image names with ``fraction`` of patients held out.

    Patients with at least one pneumonia image and the others are sampled separately, so the held-out part
    keeps positives whenever at least two positive patients exist.
    """
    if not 0.0 < fraction < 1.0:
        raise SplitError(f"split fraction must be in (0, 1), got {fraction}")
    t = index.table
    positive = t.groupby("patient")["pneumonia"].max()
    rng = np.random.default_rng(seed)
    held: list[np.ndarray] = []
    for group in (positive[positive > 0].index.to_numpy(), positive[positive == 0].index.to_numpy()):
        if len(group) == 0:
            continue
        k = int(round(fraction * len(group)))
        if len(group) >= 2:
            k = min(max(k, 1), len(group) - 1)
        held.append(rng.choice(np.sort(group), size=k, replace=False))
    held_patients = np.concatenate(held) if held else np.array([], dtype=np.int64)
    mask = t["patient"].isin(held_patients).to_numpy()
    return t["image"].to_numpy()[~mask], t["image"].to_numpy()[mask]


def make_splits(
    index: NIHLabelIndex,
    train_val_list: Sequence[str] | None = None,
    test_list: Sequence[str] | None = None,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> PatientSplit:
    """Build patient-disjoint splits, from the official lists when given.

    Args:
        index: the label index (already filtered by view, if wanted).
        train_val_list: image names of NIH's ``train_val_list.txt`` (or ``None``).
        test_list: image names of NIH's ``test_list.txt`` (or ``None``).
        val_fraction: share of train_val patients held out for validation.
        test_fraction: share of all patients held out for test when no lists are given.
        seed: seed of the patient sampling.
    """
    if (train_val_list is None) != (test_list is None):
        raise SplitError("give both split lists (train_val and test) or neither")
    if train_val_list is not None and test_list is not None:  # both or neither (checked above)
        known = set(index.table["image"])
        tv = [x for x in train_val_list if x in known]
        te = [x for x in test_list if x in known]
        if not tv or not te:
            raise SplitError(
                f"the split lists name {len(train_val_list)} train_val and {len(test_list)} test images, "
                f"of which {len(tv)} and {len(te)} are in the label index {index.source}: wrong lists?"
            )
        outside = len(index) - len(set(tv) | set(te))
        if outside:
            log.warning("%d indexed image(s) are in neither split list and are not used", outside)
        train_val, test = index.subset(tv), np.asarray(te, dtype=object)
    else:
        rest, test = carve_patients(index, test_fraction, seed)
        train_val = index.subset(rest)
    train, val = carve_patients(train_val, val_fraction, seed + 1)
    split = PatientSplit(train=np.sort(train), val=np.sort(val), test=np.sort(test))
    split.check_disjoint(index)
    for name, part in split.as_dict().items():
        if len(part) == 0:
            raise SplitError(f"the {name} split is empty ({len(index)} images in {index.source})")
    return split
