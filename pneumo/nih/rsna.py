"""The RSNA Pneumonia Detection Challenge's radiologist labels and boxes, keyed by the NIH image they were drawn on.

In 2018 the RSNA and the Society of Thoracic Radiology had radiologists relabel 26,684 NIH ChestX-ray14 images
for "lung opacity suggestive of pneumonia" and box every opacity (Shih et al., Radiology: AI 2019). pneumo
ships them as ``rsna_pneumonia_nih.csv.gz`` (sha256-checked on read), matched to NIH's file names by
torchxrayvision's pixel matching; see ``files/ATTRIBUTION.md`` and docs/data-and-gcs.md for provenance,
terms and the citations to keep.

The layout (one row per box; one row with empty box columns for an image without opacity)::

    Image Index,patientId,class,Target,x,y,width,height[,match_mse]

``Target`` 1 = lung opacity (the row carries a box, pixels of the image the box was drawn on: 1024 x 1024 for
NIH's PNGs); an image is positive when any of its rows has Target 1. The synthetic writers
(``pneumo.synthetic``) write the same layout over their own images; a user's own file in this layout is a
reference too (docs/evaluation.md, "Reference standards").

Example:
    >>> rsna = RSNALabels.from_csv()
    >>> len(rsna.images), int(rsna.images["opacity"].sum()), len(rsna.boxes)
    (26585, 5997, 9534)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

from pneumo.errors import PneumoError
from pneumo.io.reading import read_csv
from pneumo.nih.boxes import BoxList
from pneumo.nih.shipped import location, verified

#: The shipped file.
RSNA_FILE = "rsna_pneumonia_nih.csv.gz"
#: The columns of the layout (``match_mse`` and others may follow).
RSNA_COLUMNS = ("Image Index", "patientId", "class", "Target", "x", "y", "width", "height")
#: The finding name of RSNA's boxes.
OPACITY = "Lung Opacity"
#: What reports and docs say about the reference.
RSNA_TEXT = (
    "RSNA Pneumonia Detection Challenge (Shih et al., Radiology: AI 2019): radiologists relabelled NIH images "
    "for 'lung opacity suggestive of pneumonia' and boxed every opacity; matched to NIH's file names by "
    "torchxrayvision (Cohen et al., MIDL 2022)."
)
RSNA_CITATION = (
    "Shih G, Wu CC, Halabi SS, et al. Augmenting the National Institutes of Health Chest Radiograph Dataset "
    "with Expert Annotations of Possible Pneumonia. Radiology: Artificial Intelligence 2019;1(1):e180041. "
    "NIH-name matching: Cohen JP et al., TorchXRayVision, MIDL 2022 (Apache-2.0)."
)


class RSNAFileError(PneumoError, ValueError):
    """An RSNA-layout file that cannot be used; the message names the file and what is wrong."""


@dataclass(frozen=True)
class RSNALabels:
    """An RSNA-layout file read into a per-image table and its boxes.

    Attributes:
        images: one row per image: ``image``, ``opacity`` (0/1: any row with Target 1), ``rsna_class``
            (RSNA's class of the image), ``rows`` (rows of the file: boxes, or 1 for a negative image).
        boxes: the opacity boxes (``BoxList``, finding ``Lung Opacity``), pixels of the boxed image.
        source: where the file was read from.
    """

    images: pd.DataFrame
    boxes: BoxList
    source: str = "<memory>"

    @classmethod
    def from_csv(
        cls, url: str | None = None, storage_options: Mapping | None = None, io: Mapping | None = None
    ) -> RSNALabels:
        """Read an RSNA-layout file (``None``: the shipped one) from a path or fsspec URL.

        Raises:
            RSNAFileError: the file is missing, not in the layout, or holds a Target other than 0/1 or a
                positive row without a usable box.
        """
        url = url or location(RSNA_FILE)
        verified(url)
        try:
            raw = read_csv(url, storage_options, io=io, dtype=str, keep_default_na=False)
        except FileNotFoundError as err:
            raise RSNAFileError(f"{url}: RSNA label file not found") from err
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
            raise RSNAFileError(f"{url}: not an RSNA-layout CSV ({' '.join(str(err).split())})") from err
        return cls.from_frame(raw, source=url)

    @classmethod
    def from_frame(cls, raw: pd.DataFrame, source: str = "<memory>") -> RSNALabels:
        """Build from the raw table (every column a string)."""
        raw = raw.rename(columns=lambda c: str(c).strip())
        missing = [c for c in RSNA_COLUMNS if c not in raw.columns]
        if missing:
            raise RSNAFileError(
                f"{source}: missing column(s) {missing}; expected the RSNA layout {','.join(RSNA_COLUMNS)}"
            )
        target = raw["Target"].str.strip()
        bad = ~target.isin(["0", "1"])
        if bad.any():
            line = int(np.flatnonzero(bad.to_numpy())[0]) + 2
            raise RSNAFileError(f"{source}, line {line}: Target = {target[bad].iloc[0]!r}; expected 0 or 1")
        image = raw["Image Index"].str.strip()
        positive = (target == "1").to_numpy()
        box = raw.loc[positive, ["x", "y", "width", "height"]].apply(
            lambda col: pd.to_numeric(col.str.strip(), errors="coerce")
        )
        unusable = box.isna().any(axis=1) | (box["width"] <= 0) | (box["height"] <= 0)
        if unusable.any():
            line = int(np.flatnonzero(positive)[np.flatnonzero(unusable.to_numpy())[0]]) + 2
            raise RSNAFileError(
                f"{source}, line {line}: Target 1 needs a box with x, y and width, height > 0"
            )
        boxes = pd.DataFrame(
            {
                "image": image[positive].to_numpy(dtype=object),
                "finding": OPACITY,
                "x": box["x"].to_numpy(np.float64),
                "y": box["y"].to_numpy(np.float64),
                "w": box["width"].to_numpy(np.float64),
                "h": box["height"].to_numpy(np.float64),
            }
        )
        per_image = pd.DataFrame(
            {"image": image, "opacity": positive.astype(np.int64), "rsna_class": raw["class"].str.strip()}
        )
        images = per_image.groupby("image", sort=True).agg(
            opacity=("opacity", "max"), rsna_class=("rsna_class", "first"), rows=("opacity", "size")
        )
        return cls(images.reset_index(), BoxList(boxes, source=source), source)

    def summary(self, lists: Mapping[str, Iterable[str]] | None = None) -> dict:
        """Rows, images, positive images and boxes; the same per image list (``{"test": names}``).

        Example:
            >>> RSNALabels.from_csv().summary()["boxes"]
            9534
        """
        t = self.images
        out: dict = {
            "source": self.source,
            "rows": int(t["rows"].sum()),
            "images": len(t),
            "positives": int(t["opacity"].sum()),
            "boxes": len(self.boxes),
        }
        for name, names in (lists or {}).items():
            wanted = set(map(str, names))
            part = t[t["image"].isin(wanted)]
            out[name] = {
                "images": len(part),
                "positives": int(part["opacity"].sum()),
                "boxes": int(self.boxes.table["image"].isin(wanted).sum()),
            }
        return out
