"""NIHLabelIndex: both NIH CSV layouts, compression, summaries, and the error cases (API and CLI)."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from pneumo.nih.findings import DATA_ENTRY_HEADER, FINDINGS
from pneumo.nih.index import LabelIndexError, NIHLabelIndex
from tests.helpers import run_cli

ROWS_2020 = [
    "00000001_000.png,Cardiomegaly,0,1,58,M,PA,2682,2749,0.143,0.143",
    "00000001_001.png,Cardiomegaly|Emphysema,1,1,58,M,PA,2894,2729,0.143,0.143",
    "00000002_000.png,No Finding,0,2,81,M,PA,2500,2048,0.171,0.171",
    "00000003_000.png,Hernia|Pneumonia,0,3,77,F,AP,2048,2500,0.168,0.168",
    "00000003_001.png,Pneumonia,1,3,414,F,AP,2048,2500,0.168,0.168",
]


def write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def csv_2020(tmp_path: Path, rows=ROWS_2020) -> str:
    return write(tmp_path / "Data_Entry_2017_v2020.csv", "\n".join([DATA_ENTRY_HEADER, *rows]) + "\n")


def csv_2017(tmp_path: Path) -> str:
    # The 2017 release: trailing comma on every line (an empty 12th column), ages like 058Y in early copies.
    rows = [r.replace(",58,", ",058Y,") + "," for r in ROWS_2020]
    return write(tmp_path / "Data_Entry_2017.csv", "\n".join([DATA_ENTRY_HEADER + ",", *rows]) + "\n")


@pytest.mark.parametrize("make", [csv_2020, csv_2017], ids=["v2020", "2017"])
def test_both_layouts_parse_to_the_same_index(tmp_path: Path, make) -> None:
    index = NIHLabelIndex.from_csv(make(tmp_path))
    assert list(index.images) == [r.split(",")[0] for r in ROWS_2020]
    assert list(index.patients) == [1, 1, 2, 3, 3]
    assert list(index.pneumonia) == [0, 0, 0, 1, 1]
    assert list(index.table["view"]) == ["PA", "PA", "PA", "AP", "AP"]
    assert list(index.table["sex"]) == ["M", "M", "M", "F", "F"]
    # 414 is a data-entry error of the 2017 release: treated as missing, not as an age.
    assert index.table["age"].tolist()[:4] == [58, 58, 81, 77] and np.isnan(index.table["age"].iloc[4])
    assert index.findings.shape == (5, 14) and index.findings.dtype == np.uint8
    assert index.findings[1, FINDINGS.index("Emphysema")] == 1
    assert index.findings[1].sum() == 2 and index.findings[2].sum() == 0


def test_ages_in_months_weeks_and_days_become_years_and_unreadable_ones_are_counted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # NIH's 2017 file codes infants' ages in months, weeks or days; a typo is not an age
    ages = ["006M", "010D", "002W", "abc", "045Y", " 12 ", "", "7x"]
    rows = [
        f"0000010{i}_000.png,No Finding,0,{100 + i},{age},F,PA,2048,2048,0.14,0.14"
        for i, age in enumerate(ages)
    ]
    with caplog.at_level("WARNING", logger="pneumo.nih.index"):
        index = NIHLabelIndex.from_csv(csv_2020(tmp_path, rows))
    got = index.table["age"].tolist()
    assert got[:3] == pytest.approx([0.5, 10 / 365.25, 14 / 365.25])
    assert np.isnan(got[3]) and got[4:6] == [45.0, 12.0] and np.isnan(got[6]) and np.isnan(got[7])
    warned = [r.getMessage() for r in caplog.records if "not ages" in r.getMessage()]
    assert len(warned) == 1 and "2 'Patient Age' value(s)" in warned[0] and "'abc'" in warned[0], warned


def test_gzip_and_url(tmp_path: Path) -> None:
    plain = Path(csv_2020(tmp_path))
    gz = tmp_path / "labels.csv.gz"
    gz.write_bytes(gzip.compress(plain.read_bytes()))
    assert list(NIHLabelIndex.from_csv(str(gz)).images) == list(
        NIHLabelIndex.from_csv(f"file://{plain}").images
    )


def test_view_filter(tmp_path: Path) -> None:
    index = NIHLabelIndex.from_csv(csv_2020(tmp_path), views=["ap"])
    assert list(index.images) == ["00000003_000.png", "00000003_001.png"]
    with pytest.raises(LabelIndexError, match="no image has a view"):
        NIHLabelIndex.from_csv(csv_2020(tmp_path), views=["LL"])


BAD_FILES = {
    "missing_column": (
        DATA_ENTRY_HEADER.replace("Patient ID,", "") + "\n" + "a.png,No Finding,0,1,M,PA,1,1,1,1\n",
        "missing column",
    ),
    "unknown_finding": (
        DATA_ENTRY_HEADER + "\n" + ROWS_2020[0].replace("Cardiomegaly", "Covid") + "\n",
        "unknown finding name.*Covid",
    ),
    "duplicate_id": (
        DATA_ENTRY_HEADER + "\n" + ROWS_2020[0] + "\n" + ROWS_2020[0] + "\n",
        "duplicate image id",
    ),
    "empty": ("", "empty"),
    "header_only": (DATA_ENTRY_HEADER + "\n", "no rows"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_csv_raises_naming_the_file(tmp_path: Path, case: str) -> None:
    text, pattern = BAD_FILES[case]
    path = write(tmp_path / f"{case}.csv", text)
    with pytest.raises(LabelIndexError, match=pattern) as err:
        NIHLabelIndex.from_csv(path)
    assert path in str(err.value)


def test_non_csv_binary_file(tmp_path: Path) -> None:
    path = tmp_path / "image.csv"
    path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)) * 4)
    with pytest.raises(LabelIndexError, match=str(path)):
        NIHLabelIndex.from_csv(str(path))


def test_summary_counts(demo_root: Path) -> None:
    index = NIHLabelIndex.from_csv(str(demo_root / "Data_Entry_2017.csv"))
    tv = (demo_root / "train_val_list.txt").read_text().split()
    te = (demo_root / "test_list.txt").read_text().split()
    s = index.summary({"train_val": tv, "test": te})
    t = index.table
    assert s["images"] == len(t) == len(tv) + len(te)
    assert s["patients"] == t["patient"].nunique()
    assert s["pneumonia"] == int(t["pneumonia"].sum()) == s["findings"]["Pneumonia"]
    assert sum(s["views"].values()) == len(t)
    assert s["splits"]["test"]["images"] == len(te)
    assert s["splits"]["train_val"]["pneumonia"] + s["splits"]["test"]["pneumonia"] == s["pneumonia"]
    assert s["patient_overlap"] == {"train_val/test": 0}


def test_cli_prints_json_summary(demo_root: Path) -> None:
    import json

    proc = run_cli(
        [
            "-m",
            "pneumo",
            "index",
            str(demo_root / "Data_Entry_2017.csv"),
            "--split-lists",
            str(demo_root / "train_val_list.txt"),
            str(demo_root / "test_list.txt"),
        ]
    )
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["images"] == 80 and set(summary["splits"]) == {"train_val", "test"}
    assert summary["patient_overlap"]["train_val/test"] == 0


def test_cli_into_a_closed_pipe_exits_quietly(demo_root: Path) -> None:
    """``python -m pneumo index CSV | head -3``: the reader leaves early, no traceback follows."""
    import os
    import subprocess
    import sys

    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the summary is written
    proc = subprocess.run(
        [sys.executable, "-m", "pneumo", "index", str(demo_root / "Data_Entry_2017.csv")],
        stdout=write_end,
        stderr=subprocess.PIPE,
        text=True,
        timeout=120,
    )
    os.close(write_end)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr


@pytest.mark.parametrize("case", [*sorted(BAD_FILES), "not_csv", "missing_file"])
def test_cli_bad_input_one_clear_line(tmp_path: Path, case: str) -> None:
    path = tmp_path / f"{case}.csv"
    if case == "not_csv":
        path.write_bytes(bytes(range(256)) * 8)
    elif case != "missing_file":
        path.write_text(BAD_FILES[case][0])
    proc = run_cli(["-m", "pneumo", "index", str(path)])
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ") and str(path) in lines[0]
    assert "Traceback" not in proc.stderr
