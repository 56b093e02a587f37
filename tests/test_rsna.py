"""The RSNA Pneumonia Challenge's labels and boxes shipped in pneumo: the file, its reader, its counts."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

import pneumo.nih.shipped as nih
from pneumo.io.files import sha256_of
from pneumo.nih.index import NIHLabelIndex
from pneumo.nih.rsna import RSNA_FILE, RSNAFileError, RSNALabels
from pneumo.nih.splits import read_image_list

#: Facts of the file, from /work/shared/rsna/SOURCES.md (checked when the file was made), not computed here.
SHA256 = "1204a411e5d617863379e85d1fbdcf193102350e3731c8bad3c2ad41f16570c6"
ROWS, IMAGES, POSITIVES, BOXES = 30_123, 26_585, 5_997, 9_534
TEST_IMAGES, TEST_PATIENTS, TEST_POSITIVES, TEST_BOXES = 7_170, 1_249, 2_583, 4_220
#: NIH "Pneumonia" vs RSNA opacity on the test-list images RSNA covers: both, NIH only, RSNA only.
TEST_AGREEMENT = (174, 132, 2_409)


def test_the_shipped_rsna_file_has_the_published_sha256_and_counts() -> None:
    path = nih.shipped_path(RSNA_FILE)
    assert sha256_of(path) == SHA256 == nih.SHIPPED[RSNA_FILE]
    rsna = RSNALabels.from_csv()
    test = read_image_list(nih.location("test_list.txt"))
    summary = rsna.summary({"test": test})
    assert (summary["rows"], summary["images"], summary["positives"], summary["boxes"]) == (
        ROWS,
        IMAGES,
        POSITIVES,
        BOXES,
    )
    assert summary["test"] == {"images": TEST_IMAGES, "positives": TEST_POSITIVES, "boxes": TEST_BOXES}
    index = NIHLabelIndex.from_csv(nih.location("Data_Entry_2017_v2020.csv.gz")).table.set_index("image")
    covered = rsna.images[rsna.images["image"].isin(set(test))].set_index("image")
    assert index.loc[covered.index, "patient"].nunique() == TEST_PATIENTS
    both = covered["opacity"] & index.loc[covered.index, "pneumonia"]
    nih_only = index.loc[covered.index, "pneumonia"] & (1 - covered["opacity"])
    rsna_only = covered["opacity"] & (1 - index.loc[covered.index, "pneumonia"])
    assert (int(both.sum()), int(nih_only.sum()), int(rsna_only.sum())) == TEST_AGREEMENT
    # every box is a positive image's, in the 1024-px space of NIH's PNGs
    boxes = rsna.boxes.table
    assert set(boxes["image"]) == set(rsna.images.loc[rsna.images["opacity"] == 1, "image"])
    assert (boxes[["x", "y"]] >= 0).all().all() and ((boxes["x"] + boxes["w"]) <= 1024).all()
    assert rsna.boxes.for_image(str(boxes["image"].iloc[0]), None).shape[1] == 4


def test_a_broken_rsna_layout_file_is_a_one_line_error(tmp_path: Path) -> None:
    header = "Image Index,patientId,class,Target,x,y,width,height"
    cases = {
        "cols.csv": ("Image Index,Target\na.png,1\n", "missing column"),
        "target.csv": (f"{header}\na.png,r1,Normal,0,,,,\nb.png,r2,Normal,2,,,,\n", "line 3: Target = '2'"),
        "box.csv.gz": (f"{header}\na.png,r1,Lung Opacity,1,10,10,0,5\n", "line 2: Target 1 needs a box"),
    }
    for name, (text, message) in cases.items():
        path = tmp_path / name
        path.write_bytes(gzip.compress(text.encode()) if name.endswith(".gz") else text.encode())
        with pytest.raises(RSNAFileError, match=message) as err:
            RSNALabels.from_csv(str(path))
        assert str(path) in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(RSNAFileError, match="not found"):
        RSNALabels.from_csv(str(tmp_path / "absent.csv"))
