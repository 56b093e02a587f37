"""Radiologist-style reference files over a synthetic data set, with deliberate, documented disagreements.

The demo set (``pneumo.synthetic.demo``) carries an NIH-style label (``Data_Entry_2017.csv``); real NIH images
also have radiologists' references that disagree with it (``pneumo.nih.references``). So that the report's
"Reference standards" section, its cross-tab and its enrichment note are exercised with known answers, the
demo writer adds two files in the real layouts, over its own images:

``rsna_pneumonia.csv`` (RSNA layout, one row per box; boxes in pixels of the written image). Which images it
covers and how it labels them follows fixed rules (``RSNA_RULES``), as RSNA's selection was enriched:

* covered: every image labelled Pneumonia, Consolidation or Infiltration, and each other image with
  probability ``OTHER_COVER`` (a generator seeded with ``[seed, 22]``, one draw per image in name order, so
  the images themselves are unchanged);
* a Pneumonia image is positive with the drawn opacity's box (the box of ``BBox_List_2017.csv``: the
  placement is known), except every ``NIH_ONLY_EVERY``-th one in name order (``nih_only``: the radiologists
  see no opacity where the report said pneumonia);
* a Consolidation or Infiltration image without Pneumonia is negative, except every ``RSNA_ONLY_EVERY``-th
  one in name order (``rsna_only``), boxed at ``RSNA_ONLY_BOX`` (fractions of the side: the right lung field);
* any other covered image is negative.

``adjudicated_labels.csv`` (Google's adjudicated-label layout, ``Set Id`` ``test``): every second test-split
image (name order) that the RSNA file covers, with ``Airspace opacity`` equal to the RSNA label there.

The counts the rules produced (per split: images, positives, boxes, and the cross-tab against the NIH-style
label: ``both_positive``, ``nih_only``, ``rsna_only``, ``both_negative``) are returned for the manifest, so
tests compare a report with what was written.

Example:
    >>> rows = ["00000001_000.png,Pneumonia,0,1,50,M,PA,64,64,1,1", "00000001_001.png,No Finding,1,1,51,M,PA,64,64,1,1"]
    >>> files = reference_files(rows, {"00000001_000.png": (10.0, 12.0, 14.0, 16.0)}, {"00000001_000.png"}, 64, 0)
    >>> files.rsna[1]
    '00000001_000.png,synthetic-00000001_000,Lung Opacity,1,10.000,12.000,14.000,16.000,0'
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np

from pneumo.nih.findings import NO_FINDING, PNEUMONIA
from pneumo.nih.rsna import RSNALabels

RSNA_NAME = "rsna_pneumonia.csv"
ADJUDICATED_NAME = "adjudicated_labels.csv"
RSNA_HEADER = "Image Index,patientId,class,Target,x,y,width,height,match_mse"
ADJUDICATED_HEADER = (
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
    "Fracture,Pneumothorax,Airspace opacity,Nodule or mass,Set Id"
)
#: Findings whose images RSNA-style covers always (its enrichment).
ENRICHED = (PNEUMONIA, "Consolidation", "Infiltration")
OTHER_COVER = 0.3
NIH_ONLY_EVERY = 4
RSNA_ONLY_EVERY = 2
RSNA_ONLY_BOX = (0.12, 0.30, 0.28, 0.35)
RSNA_RULES = {
    "enriched": list(ENRICHED),
    "other_cover": OTHER_COVER,
    "nih_only_every": NIH_ONLY_EVERY,
    "rsna_only_every": RSNA_ONLY_EVERY,
    "rsna_only_box": list(RSNA_ONLY_BOX),
    "adjudicated": "every second test image the RSNA file covers; Airspace opacity = its RSNA label",
}


@dataclass
class ReferenceFiles:
    """The lines of both files (headers first) and the counts they hold (``counts[split]``)."""

    rsna: list[str] = field(default_factory=lambda: [RSNA_HEADER])
    adjudicated: list[str] = field(default_factory=lambda: [ADJUDICATED_HEADER])
    counts: dict = field(default_factory=dict)


def _empty_counts() -> dict[str, int]:
    keys = ("images", "positives", "boxes", "both_positive", "nih_only", "rsna_only", "both_negative")
    return dict.fromkeys(keys, 0)


def reference_files(
    index_rows: Iterable[str],
    boxes: Mapping[str, tuple[float, float, float, float]],
    test: set[str],
    size: int,
    seed: int,
) -> ReferenceFiles:
    """Both files over a data set's ``Data_Entry`` rows (lines without the header) and its drawn pneumonia
    boxes (pixels), by the module's rules; ``test``: the test split's image names."""
    parsed = sorted(line.split(",") for line in index_rows)
    rng = np.random.default_rng([seed, 22])
    out = ReferenceFiles(
        counts={"all": _empty_counts(), "test": _empty_counts(), "adjudicated": _empty_counts()}
    )
    seen = {"pneumonia": 0, "enriched": 0, "covered_test": 0}
    for fields in parsed:
        name, labels = fields[0], set(fields[1].split("|"))
        draw = rng.random()  # one draw per image, covered or not: the rules do not shift the stream
        if not labels & set(ENRICHED) and draw >= OTHER_COVER:
            continue
        target, box = _rsna_label(labels, boxes.get(name), seen, size)
        nih = int(PNEUMONIA in labels)
        cls = (
            "Lung Opacity"
            if target
            else ("Normal" if labels == {NO_FINDING} else "No Lung Opacity / Not Normal")
        )
        coords = ",".join(f"{v:.3f}" for v in box) if target and box else ",,,"
        out.rsna.append(f"{name},synthetic-{name.rsplit('.', 1)[0]},{cls},{target},{coords},0")
        for split in ("all", "test") if name in test else ("all",):
            _count(out.counts[split], nih, target)
        if name in test:
            seen["covered_test"] += 1
            if seen["covered_test"] % 2 == 1:
                opacity = "YES" if target else "NO"
                out.adjudicated.append(",".join([*fields[:7], "NO", "NO", opacity, "NO", "test"]))
                _count(out.counts["adjudicated"], nih, target)
    return out


def _rsna_label(
    labels: set[str], drawn: tuple[float, float, float, float] | None, seen: dict[str, int], size: int
) -> tuple[int, tuple[float, ...] | None]:
    """The RSNA-style label and box of one covered image (``seen``: running counts of the rules)."""
    if PNEUMONIA in labels:
        seen["pneumonia"] += 1
        nih_only = seen["pneumonia"] % NIH_ONLY_EVERY == 0 or drawn is None  # no box, no RSNA opacity
        return (0, None) if nih_only else (1, drawn)
    if labels & set(ENRICHED):
        seen["enriched"] += 1
        if seen["enriched"] % RSNA_ONLY_EVERY == 0:
            return 1, tuple(v * size for v in RSNA_ONLY_BOX)
    return 0, None


def _count(counts: dict[str, int], nih: int, target: int) -> None:
    counts["images"] += 1
    counts["positives"] += target
    counts["boxes"] += target
    key = {(1, 1): "both_positive", (1, 0): "nih_only", (0, 1): "rsna_only", (0, 0): "both_negative"}
    counts[key[(nih, target)]] += 1


def rsna_like_index(
    names: Iterable[str], size: int, side: int = 1024, rsna: RSNALabels | None = None
) -> tuple[list[str], dict[str, int]]:
    """The shipped RSNA file (or ``rsna``) restricted to ``names`` (a look-alike set's images: NIH's own
    names), its boxes scaled from NIH's ``side`` px to the written ``size``: the lines (header first) and
    their counts.

    Example:
        >>> lines, counts = rsna_like_index(["00000013_005.png", "00000001_000.png"], size=64)
        >>> counts["images"] <= 2, lines[0] == RSNA_HEADER
        (True, True)
    """
    rsna = rsna or RSNALabels.from_csv()
    wanted = set(names)
    images = rsna.images[rsna.images["image"].isin(wanted)]
    boxes = rsna.boxes.table[rsna.boxes.table["image"].isin(wanted)]
    by_image = {str(k): g[["x", "y", "w", "h"]].to_numpy() * (size / side) for k, g in boxes.groupby("image")}
    lines = [RSNA_HEADER]
    for name, opacity, cls in zip(images["image"], images["opacity"], images["rsna_class"]):
        stem = f"nih-{str(name).rsplit('.', 1)[0]}"
        if opacity:
            lines += [
                f"{name},{stem},{cls},1,{','.join(f'{v:.3f}' for v in box)},0" for box in by_image[name]
            ]
        else:
            lines.append(f"{name},{stem},{cls},0,,,,,0")
    counts = {"images": len(images), "positives": int(images["opacity"].sum()), "boxes": len(boxes)}
    return lines, counts
