"""Localization scores (pointing game, IoU, IoBB, random-point baseline) and the BBox_List_2017.csv reader."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pneumo.nih.boxes import BoxList, BoxListError, scaled_to
from pneumo.nih.findings import BBOX_HEADER
from pneumo.xai.localization import box_mask, score_heatmap, summarize, wilson_interval


def test_box_mask_uses_pixel_centres_and_unions_boxes() -> None:
    mask = box_mask(np.array([[1.0, 2.0, 2.0, 1.0], [1.4, 2.0, 0.2, 3.0]]), (6, 5))
    expected = np.zeros((6, 5), bool)
    expected[2, 1:3] = True  # x in [1, 3), y in [2, 3): centres 1.5, 2.5 / 2.5
    # the thin box (x 1.4..1.6) still holds the centres 1.5 of column 1, rows 2..4
    expected[2:5, 1] = True
    assert np.array_equal(mask, expected)


def test_pointing_game_iou_and_iobb_by_hand() -> None:
    heat = np.zeros((10, 10), np.float32)
    heat[2:4, 2:6] = 0.6  # highlighted region: 8 pixels
    heat[3, 4] = 1.0  # the peak, inside the box
    box = np.array([[4.0, 2.0, 4.0, 4.0]])  # columns 4..7, rows 2..5: 16 pixels
    s = score_heatmap(heat, box, threshold=0.5)
    assert s.hit and (s.peak_row, s.peak_col) == (3, 4)
    # region ∩ box = rows 2..3, columns 4..5 = 4 pixels; union = 8 + 16 - 4 = 20
    assert s.iou == pytest.approx(4 / 20)
    assert s.iobb == pytest.approx(4 / 8)
    assert s.box_fraction == pytest.approx(16 / 100)

    heat[8, 8] = 2.0  # a stronger peak outside the box
    miss = score_heatmap(heat, box, threshold=0.5)
    assert not miss.hit and (miss.peak_row, miss.peak_col) == (8, 8)


def test_all_zero_heatmap_scores_zero_overlap() -> None:
    s = score_heatmap(np.zeros((8, 8)), np.array([[0.0, 0.0, 4.0, 4.0]]))
    assert s.iou == 0.0 and s.iobb == 0.0


def test_box_outside_the_heatmap_is_an_error() -> None:
    with pytest.raises(ValueError, match="no box covers a pixel"):
        score_heatmap(np.ones((8, 8)), np.array([[20.0, 20.0, 4.0, 4.0]]))


def test_random_point_baseline_matches_simulation() -> None:
    rng = np.random.default_rng(0)
    boxes = [np.array([[10.0, 12.0, 14.0, 17.0]]), np.array([[40.0, 5.0, 20.0, 30.0], [0.0, 0.0, 8.0, 8.0]])]
    scores = [score_heatmap(rng.random((64, 64)), b) for b in boxes]
    summary = summarize(scores)
    points = rng.integers(0, 64, size=(20000, 2))
    simulated = np.mean([box_mask(b, (64, 64))[points[:, 0], points[:, 1]].mean() for b in boxes])
    assert summary["random_hit_rate"] == pytest.approx(simulated, abs=0.01)
    assert summary["random_hit_rate"] == pytest.approx(np.mean([14 * 17, 20 * 30 + 64]) / 64**2)


def test_summary_hit_rate_and_wilson_interval() -> None:
    heat = np.zeros((10, 10))
    heat[1, 1] = 1.0
    hit_box, miss_box = np.array([[0.0, 0.0, 3.0, 3.0]]), np.array([[5.0, 5.0, 3.0, 3.0]])
    scores = [score_heatmap(heat, hit_box)] * 7 + [score_heatmap(heat, miss_box)] * 3
    s = summarize(scores)
    assert s["n"] == 10 and s["hits"] == 7 and s["hit_rate"] == pytest.approx(0.7)
    assert s["random_hit_rate"] == pytest.approx(0.09)
    assert s["hit_rate_vs_random"] == pytest.approx(0.7 / 0.09)
    lo, hi = s["hit_rate_ci95"]
    assert lo == pytest.approx(0.3968, abs=1e-3) and hi == pytest.approx(0.8922, abs=1e-3)  # Wilson, z=1.96
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(0, 10)[1] == pytest.approx(0.2775, abs=1e-3)
    assert summarize([]) == {"n": 0}


# ---------------------------------------------------------------------------------------------- boxes
NIH_ROWS = [
    "00013118_008.png,Atelectasis,225.084745762712,547.019216763771,86.7796610169491,79.1864406779661,,,",
    "00014716_007.png,Infiltrate,441.08,331.87,216.9,317.6,,,",
    "00029817_009.png,Pneumonia,105.472,491.52,255.36,277.76,,,",
    "00029817_009.png,Pneumonia,600.0,500.0,100.0,120.0,,,",
]


def _write(path: Path, header: str, rows: list[str]) -> Path:
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def test_reads_nih_box_file_with_real_header_and_aliases(tmp_path: Path) -> None:
    boxes = BoxList.from_csv(str(_write(tmp_path / "BBox_List_2017.csv", BBOX_HEADER, NIH_ROWS)))
    assert len(boxes) == 4 and boxes.images == {"00013118_008.png", "00014716_007.png", "00029817_009.png"}
    assert boxes.table.loc[1, "finding"] == "Infiltration"  # "Infiltrate" in NIH's file
    two = boxes.for_image("00029817_009.png")
    assert two.shape == (2, 4) and two[0].tolist() == [105.472, 491.52, 255.36, 277.76]
    assert boxes.for_image("00014716_007.png").shape == (0, 4)  # no pneumonia box there
    assert boxes.for_image("00014716_007.png", finding=None).shape == (1, 4)
    assert len(boxes.subset("Pneumonia")) == 2


def test_scaled_to_maps_source_pixels_to_the_network_input() -> None:
    got = scaled_to(np.array([[105.472, 491.52, 255.36, 277.76]]), (1024, 1024), (224, 224))
    np.testing.assert_allclose(got, [[23.072, 107.52, 55.86, 60.76]], rtol=1e-6)
    # non-square sources stretch like ResizeToUint8 does: x and y scale separately
    np.testing.assert_allclose(
        scaled_to(np.array([[10.0, 10.0, 20.0, 20.0]]), (200, 100), (64, 64)), [[6.4, 3.2, 12.8, 6.4]]
    )


def test_reads_the_demo_box_file(demo_root: Path) -> None:
    boxes = BoxList.from_csv(str(demo_root / "BBox_List_2017.csv"))
    assert len(boxes) > 0 and set(boxes.table["finding"]) == {"Pneumonia"}
    assert (boxes.table[["w", "h"]] > 0).all().all() and (boxes.table[["x", "y"]] >= 0).all().all()


@pytest.mark.parametrize(
    ("header", "rows", "message"),
    [
        ("Image,Label,x,y,w,h", NIH_ROWS[:1], "expected the header"),
        (BBOX_HEADER, ["a.png,Pneumonia,1,2,abc,4,,,"], r"line 2: w = 'abc' is not a number"),
        (
            BBOX_HEADER,
            ["a.png,Pneumonia,1,2,3,4,,,", "b.png,Pneumonia,1,2,0,4,,,"],
            "line 3: box with no area",
        ),
        (BBOX_HEADER, ["a.png,Pneumonitis,1,2,3,4,,,"], r"unknown finding label\(s\) \['Pneumonitis'\]"),
    ],
)
def test_bad_box_files_name_the_problem(tmp_path: Path, header: str, rows: list[str], message: str) -> None:
    path = _write(tmp_path / "boxes.csv", header, rows)
    with pytest.raises(BoxListError, match=message) as err:
        BoxList.from_csv(str(path))
    assert str(path) in str(err.value)


def test_missing_box_file(tmp_path: Path) -> None:
    with pytest.raises(BoxListError, match=r"absent\.csv: box file not found"):
        BoxList.from_csv(str(tmp_path / "absent.csv"))


# ---------------------------------------------------------------------------------------------- boxes from heatmaps
def test_boxes_from_a_hand_made_heatmap_and_their_iobb() -> None:
    from pneumo.xai.heatmap_boxes import connected_regions, heatmap_boxes, localization_table

    heat = np.zeros((10, 10))
    heat[1:3, 1:5] = 0.6  # region A: rows 1-2, columns 1-4 (8 pixels) ...
    heat[2, 5] = 0.9  # ... and its right neighbour: 9 pixels, columns 1-5, mass 5.7
    heat[6:9, 7:9] = 1.0  # region B: rows 6-8, columns 7-8, 6 pixels, mass 6.0
    heat[8, 1] = 0.55  # region C: one pixel, mass 0.55
    heat[5, 5] = 0.4  # below the threshold
    labels = connected_regions(heat >= 0.5)
    assert (
        labels.max() == 3
        and labels[1, 1] == 1
        and labels[2, 5] == 1
        and labels[6, 7] == 2
        and labels[8, 1] == 3
    )
    boxes = heatmap_boxes(heat, threshold=0.5, top_k=3)
    assert [b.box.tolist() for b in boxes] == [[7, 6, 2, 3], [1, 1, 5, 2], [1, 8, 1, 1]]
    assert [b.mass for b in boxes] == pytest.approx([6.0, 5.7, 0.55])
    assert [b.pixels for b in boxes] == [6, 9, 1]
    # to a 1000 x 500 (H x W) source: x, w scale by 50, y, h by 100
    top = heatmap_boxes(heat, threshold=0.5, top_k=1, source_shape=(1000, 500))
    assert len(top) == 1 and top[0].box.tolist() == [350.0, 600.0, 100.0, 300.0]
    # a ground-truth box over B's lower two rows and one more column: IoBB = 4 / 6, IoU = 4 / (6 + 6 - 4)
    truth = np.array([[7.0, 7.0, 3.0, 2.0]])
    table = localization_table([boxes[0].box[None]], [truth], thresholds=(0.5, 0.6, 0.7))
    assert table["best_iobb"] == [pytest.approx(4 / 6)] and table["best_iou"] == [pytest.approx(0.5)]
    assert table["iobb"] == [1.0, 1.0, 0.0] and table["iou"] == [1.0, 0.0, 0.0]
    # any of the top-k boxes may localise; an image without a box is a miss
    both = localization_table(
        [np.stack([b.box for b in boxes]), np.zeros((0, 4))], [np.array([[1.0, 1.0, 2.0, 2.0]])] * 2
    )
    assert both["best_iobb"] == [pytest.approx(4 / 10), 0.0]  # A (area 10) ∩ truth = 2 x 2
    assert heatmap_boxes(np.zeros((4, 4))) == []
