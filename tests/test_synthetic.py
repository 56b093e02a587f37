"""The synthetic NIH-layout generator: layout, determinism, box statistics, fsspec targets."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import fsspec
import numpy as np
import pandas as pd
from PIL import Image

from pneumo.nih.boxes import BoxList
from pneumo.nih.findings import BBOX_HEADER, DATA_ENTRY_HEADER
from pneumo.nih.index import NIHLabelIndex
from pneumo.synthetic.demo import MANIFEST, ensure_synthetic_dataset, write_synthetic_dataset


def digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(p.name.encode() + p.read_bytes())
    return h.hexdigest()


def test_layout_matches_nih(demo_root: Path) -> None:
    assert (demo_root / "Data_Entry_2017.csv").read_text().splitlines()[0] == DATA_ENTRY_HEADER
    assert (demo_root / "BBox_List_2017.csv").read_text().splitlines()[0] == BBOX_HEADER
    table = pd.read_csv(demo_root / "Data_Entry_2017.csv")
    assert len(table.columns) == 11
    names = table["Image Index"].tolist()
    assert all(len(n) == len("00000001_000.png") and n.endswith(".png") for n in names)
    img = Image.open(demo_root / "images" / names[0])
    assert img.mode == "L" and img.size == (64, 64)
    labels = table["Finding Labels"]
    assert (labels == "No Finding").any() and labels.str.contains("|", regex=False).any()
    # several images per patient, numbered follow-ups
    per_patient = table.groupby("Patient ID").size()
    assert per_patient.max() >= 2 and (table["Follow-up #"] > 0).any()
    tv = set((demo_root / "train_val_list.txt").read_text().split())
    te = set((demo_root / "test_list.txt").read_text().split())
    assert tv | te == set(names) and not tv & te
    pid = dict(zip(table["Image Index"], table["Patient ID"]))
    assert not {pid[x] for x in tv} & {pid[x] for x in te}


def test_boxes_mark_the_pneumonia_images_and_are_sized_like_nih(tmp_path: Path) -> None:
    manifest = write_synthetic_dataset(str(tmp_path), n=400, size=100, seed=1, pneumonia_fraction=0.5)
    index = NIHLabelIndex.from_csv(str(tmp_path / "Data_Entry_2017.csv"))
    boxes = pd.read_csv(tmp_path / "BBox_List_2017.csv", header=None, skiprows=1).iloc[:, :6]
    boxes.columns = ["image", "label", "x", "y", "w", "h"]
    assert set(boxes["image"]) == set(index.images[index.pneumonia == 1])
    assert manifest["pneumonia"] == len(boxes) == int(index.pneumonia.sum())
    assert 0.3 < len(boxes) / len(index) < 0.7
    w, h = boxes["w"] / 100, boxes["h"] / 100
    assert abs(w.median() - 0.22) < 0.03 and abs(h.median() - 0.27) < 0.03
    assert w.std() > 0.02 and h.std() > 0.02  # varied, not one size
    assert (boxes["x"] >= 0).all() and (boxes["x"] + boxes["w"] <= 100).all()


def test_opacity_is_visible_inside_its_box(tmp_path: Path) -> None:
    write_synthetic_dataset(str(tmp_path), n=60, size=128, seed=2, pneumonia_fraction=1.0, noise=0.0)
    boxes = pd.read_csv(tmp_path / "BBox_List_2017.csv", header=None, skiprows=1).iloc[:, :6].to_numpy()
    brighter = 0
    for name, _, x, y, w, h in boxes[:20]:
        px = np.asarray(Image.open(tmp_path / "images" / name), dtype=float)
        inner = px[int(y + h * 0.35) : int(y + h * 0.65), int(x + w * 0.35) : int(x + w * 0.65)].mean()
        mirror = px[
            int(y + h * 0.35) : int(y + h * 0.65), int(128 - x - w * 0.65) : int(128 - x - w * 0.35)
        ].mean()
        brighter += inner > mirror
    assert brighter >= 17  # the opacity brightens its lung compared with the same place on the other side


def test_deterministic_per_seed(tmp_path: Path) -> None:
    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        write_synthetic_dataset(str(tmp_path / name), n=30, size=32, seed=seed)
    assert digest(tmp_path / "a") == digest(tmp_path / "b") != digest(tmp_path / "c")


def test_writes_to_any_fsspec_url_and_is_reused(tmp_path: Path) -> None:
    url = "memory://pneumo-test-demo"
    ensure_synthetic_dataset(url, n=20, size=32, seed=0)
    fs = fsspec.filesystem("memory")
    assert len(fs.ls("/pneumo-test-demo/images")) == 20
    assert fs.exists(f"/pneumo-test-demo/{MANIFEST}")
    stamp = fs.info("/pneumo-test-demo/Data_Entry_2017.csv")["created"]
    ensure_synthetic_dataset(url, n=20, size=32, seed=0)  # same parameters: reused
    assert fs.info("/pneumo-test-demo/Data_Entry_2017.csv")["created"] == stamp
    ensure_synthetic_dataset(url, n=25, size=32, seed=0)  # other parameters: written again
    assert len(fs.ls("/pneumo-test-demo/images")) >= 25
    fs.rm("/pneumo-test-demo", recursive=True)


# ---------------------------------------------------------------- one image per row of NIH's real index
def test_like_index_draws_each_row_of_the_real_index_with_nih_boxes_scaled(tmp_path: Path) -> None:
    """Rows of NIH's shipped index: names, patients, views, ages, labels kept; NIH's box scaled to 64 px."""
    import gzip

    from pneumo.cli.synthetic import main
    from pneumo.nih import shipped as nih

    with gzip.open(nih.HERE / "Data_Entry_2017_v2020.csv.gz", "rt") as fh:
        lines = fh.read().splitlines()
    # patient 150 (00000150_002.png: Pneumonia with an NIH box; 00000150_003.png: RSNA-negative), patient 1
    # (no pneumonia) and 00000032_012.png (NIH Pneumonia without an NIH box, two RSNA opacity boxes)
    rows = [lines[0]] + [
        ln for ln in lines[1:] if ln.startswith(("00000150_", "00000001_", "00000032_012.png"))
    ]
    (tmp_path / "rows.csv").write_text("\n".join(rows) + "\n")
    bbox = nih.HERE / "BBox_List_2017.csv.gz"
    out = tmp_path / "like"
    argv = [str(out), "--like-index", str(tmp_path / "rows.csv"), "--bbox", str(bbox), "--size", "64"]
    assert main([*argv, "--workers", "2"]) == 0

    source = NIHLabelIndex.from_csv(str(tmp_path / "rows.csv"))
    written = NIHLabelIndex.from_csv(str(out / "Data_Entry_2017.csv"))
    assert sorted(p.name for p in (out / "images").iterdir()) == sorted(source.images)
    cols = ["image", "patient", "follow_up", "view", "age", "sex"]
    pd.testing.assert_frame_equal(written.table[cols], source.table[cols])
    assert np.array_equal(written.findings, source.findings)
    for name in source.images:
        with Image.open(out / "images" / name) as im:
            assert im.size == (64, 64) and im.mode == "L"

    # NIH's box of 00000150_002.png, from its own line, scaled from 1024 to 64 px
    with gzip.open(bbox, "rt") as fh:
        nih_line = next(ln for ln in fh if ln.startswith("00000150_002.png,Pneumonia,"))
    expected = np.array([float(v) for v in nih_line.split(",")[2:6]]) * 64 / 1024
    box_rows = (out / "BBox_List_2017.csv").read_text().splitlines()
    assert box_rows[0] == BBOX_HEADER and len(box_rows) == 2
    assert box_rows[1].startswith("00000150_002.png,Pneumonia,")
    np.testing.assert_allclose([float(v) for v in box_rows[1].split(",")[2:6]], expected, atol=1e-3)

    # the RSNA-layout file: the shipped RSNA rows of these images, boxes scaled to 64 px; the manifest's
    # counts of it and of its disagreement with the NIH-style label
    from pneumo.nih.rsna import RSNALabels
    from pneumo.synthetic.like_index import _rows

    shipped = RSNALabels.from_csv()
    written_rsna = RSNALabels.from_csv(str(out / "rsna_pneumonia.csv"))
    wanted = shipped.images[shipped.images["image"].isin(source.images)].reset_index(drop=True)
    assert (
        written_rsna.images["image"].tolist()
        == wanted["image"].tolist()
        == [
            "00000032_012.png",
            "00000150_003.png",
        ]
    )
    assert written_rsna.images["opacity"].tolist() == wanted["opacity"].tolist() == [1, 0]
    rsna_boxes = shipped.boxes.for_image("00000032_012.png", None)
    np.testing.assert_allclose(
        written_rsna.boxes.for_image("00000032_012.png", None), rsna_boxes * 64 / 1024, atol=1e-3
    )
    manifest = json.loads((out / "demo_manifest.json").read_text())["rsna"]["all"]
    assert manifest == {"images": 2, "positives": 1, "boxes": len(rsna_boxes), "both_positive": 1,
                        "nih_only": 0, "rsna_only": 0, "both_negative": 1}  # fmt: skip
    # the opacity of a Pneumonia image NIH did not box is drawn in RSNA's first box (known placement)
    drawn = {r[0]: r[4] for r in _rows(source, BoxList.from_csv(str(bbox)), shipped)}
    np.testing.assert_allclose(drawn["00000032_012.png"], rsna_boxes[0] / 1024)
    np.testing.assert_allclose(drawn["00000150_002.png"], expected / 64)  # NIH's own box first
    assert drawn["00000001_000.png"] is None
    # the opacity is drawn there: brighter than the same place on most of the patient's other images
    x, y, w, h = np.round(expected).astype(int)
    inside = {
        name: np.asarray(Image.open(out / "images" / name), dtype=float)[y : y + h, x : x + w].mean()
        for name in source.images
        if name.startswith("00000150_")
    }
    boxed = inside.pop("00000150_002.png")
    assert boxed > np.median(list(inside.values())) + 8, (boxed, inside)
    # the same rows drawn in this process give the same bytes (each image depends on the seed and its row only)
    again = tmp_path / "again"
    assert main([str(again), *argv[1:], "--workers", "0"]) == 0
    assert digest(again / "images") == digest(out / "images")
    # the official lists, restricted to these rows
    test_list = (out / "test_list.txt").read_text().split()
    assert set(test_list) | set((out / "train_val_list.txt").read_text().split()) == set(source.images)
    assert set(test_list) <= set((nih.HERE / "test_list.txt").read_text().split())
