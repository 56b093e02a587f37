"""Patient-disjoint splits: official lists, grouped seeded splits, validation keeps positives."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pneumo.nih.index import NIHLabelIndex
from pneumo.nih.splits import PatientSplit, SplitError, carve_patients, make_splits, read_image_list


@pytest.fixture(scope="module")
def index(demo_root: Path) -> NIHLabelIndex:
    return NIHLabelIndex.from_csv(str(demo_root / "Data_Entry_2017.csv"))


def patients(index: NIHLabelIndex, images) -> set[int]:
    return set(index.subset(images).patients.tolist())


def test_official_lists_are_used_and_val_is_carved_by_patient(index: NIHLabelIndex, demo_root: Path) -> None:
    tv = read_image_list(str(demo_root / "train_val_list.txt"))
    te = read_image_list(str(demo_root / "test_list.txt"))
    split = make_splits(index, tv, te, val_fraction=0.2, seed=3)
    assert sorted(split.test) == sorted(te)
    assert sorted([*split.train, *split.val]) == sorted(tv)
    p = {k: patients(index, v) for k, v in split.as_dict().items()}
    assert not (p["train"] & p["val"]) and not (p["train"] & p["test"]) and not (p["val"] & p["test"])
    assert index.subset(split.val).pneumonia.sum() > 0, "validation must keep pneumonia cases"


def test_grouped_split_without_lists_is_seeded_and_disjoint(index: NIHLabelIndex) -> None:
    a = make_splits(index, val_fraction=0.2, test_fraction=0.25, seed=7)
    b = make_splits(index, val_fraction=0.2, test_fraction=0.25, seed=7)
    c = make_splits(index, val_fraction=0.2, test_fraction=0.25, seed=8)
    assert all(np.array_equal(x, y) for x, y in zip(a.as_dict().values(), b.as_dict().values()))
    assert not np.array_equal(a.test, c.test)
    assert sum(len(v) for v in a.as_dict().values()) == len(index)
    for name in ("val", "test"):
        assert index.subset(a.as_dict()[name]).pneumonia.sum() > 0
    p = {k: patients(index, v) for k, v in a.as_dict().items()}
    assert not (p["train"] & p["val"] | p["train"] & p["test"] | p["val"] & p["test"])


def test_carve_fraction_is_of_patients(index: NIHLabelIndex) -> None:
    rest, held = carve_patients(index, 0.3, seed=0)
    n_patients = index.table["patient"].nunique()
    assert abs(len(patients(index, held)) - 0.3 * n_patients) <= 2
    assert len(rest) + len(held) == len(index)


def test_overlap_is_detected_not_assumed(index: NIHLabelIndex) -> None:
    images = index.images
    leaky = PatientSplit(train=images[:-1], val=images[-2:-1], test=images[-1:])  # shares an image
    with pytest.raises(SplitError, match="share"):
        leaky.check_disjoint(index)
    # Lists that put one patient's images on both sides must be rejected.
    first_patient = index.table.loc[index.patients == index.patients[0], "image"].tolist()
    assert len(first_patient) >= 2
    tv = [x for x in images if x != first_patient[0]]
    with pytest.raises(SplitError, match="patient"):
        make_splits(index, tv, [first_patient[0]], val_fraction=0.2)


def test_lists_that_match_nothing(index: NIHLabelIndex, tmp_path: Path) -> None:
    with pytest.raises(SplitError, match="wrong lists"):
        make_splits(index, ["x.png"], ["y.png"])
    (tmp_path / "empty.txt").write_text("\n")
    with pytest.raises(SplitError, match="empty"):
        read_image_list(str(tmp_path / "empty.txt"))
    with pytest.raises(SplitError, match="not found"):
        read_image_list(str(tmp_path / "absent.txt"))
