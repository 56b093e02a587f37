"""``BoxList``: the ground-truth boxes of NIH's ``BBox_List_2017.csv`` (or the demo set's copy of it).

The file's header is ``Image Index,Finding Label,Bbox [x,y,w,h],,,``: the bracketed name splits into four
columns and three empty columns follow. Coordinates are pixels of the image file the box was drawn on
(1024 x 1024 for NIH's PNGs; the written size for the demo set); ``scaled_to`` maps them onto a resized
image. NIH spells Infiltration ``Infiltrate`` here; labels are normalised to ``FINDINGS`` names.

Example:
    >>> boxes = BoxList.from_csv("data/nih_demo/BBox_List_2017.csv")  # doctest: +SKIP
    >>> boxes.for_image("00000001_000.png")  # doctest: +SKIP
    array([[78.346, 33.412, 24.652, 37.077]])
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

from pneumo.errors import PneumoError
from pneumo.io.bigquery import BigQuerySource, is_bigquery, parse_table_url
from pneumo.io.reading import read_csv
from pneumo.io.storage import StorageSettings
from pneumo.io.store import location_exists
from pneumo.nih.findings import BBOX_LABEL_ALIASES, FINDINGS, PNEUMONIA
from pneumo.nih.shipped import verified

_COLUMNS = ("image", "finding", "x", "y", "w", "h")
#: ``BBox_List_2017.csv``'s first six columns under a box table's BigQuery-safe names (``pneumo.nih.tables``).
BOX_COLUMNS = ("image_index", "finding_label", "bbox_x", "bbox_y", "bbox_w", "bbox_h")


class BoxListError(PneumoError, ValueError):
    """A box file that cannot be used; the message names the file and what is wrong."""


@dataclass(frozen=True)
class BoxList:
    """Boxes as a table with columns ``image``, ``finding``, ``x``, ``y``, ``w``, ``h`` (pixels, float)."""

    table: pd.DataFrame
    source: str = "<memory>"

    @classmethod
    def from_csv(cls, url: str, storage_options: Mapping | None = None, io: Mapping | None = None) -> BoxList:
        """Read a ``BBox_List_2017.csv`` from a path or fsspec URL (plain or compressed by suffix; ``io``: I/O
        limits of the read, ``StorageSettings.io``).

        Raises:
            BoxListError: the file is missing, not in the BBox_List layout, names an unknown finding or holds
                a coordinate that is not a number or a box with no area.
        """
        verified(url)
        try:
            raw = read_csv(url, storage_options, io=io, dtype=str, keep_default_na=False, header=0)
        except FileNotFoundError as err:
            raise BoxListError(f"{url}: box file not found") from err
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
            raise BoxListError(f"{url}: not a BBox_List_2017.csv ({err})") from err
        head = [str(c).strip() for c in raw.columns[:3]]
        if (
            len(raw.columns) < 6
            or head[:2] != ["Image Index", "Finding Label"]
            or not head[2].startswith("Bbox")
        ):
            raise BoxListError(
                f"{url}: expected the header 'Image Index,Finding Label,Bbox [x,y,w,h],,,', got "
                f"{','.join(map(str, raw.columns))!r}"
            )
        return cls.from_frame(raw.iloc[:, :6], url)

    @classmethod
    def from_frame(
        cls, raw: pd.DataFrame, source: str = "<memory>", row: str = "line", first: int = 2
    ) -> BoxList:
        """Boxes from a frame of six columns in ``BBox_List_2017.csv``'s order (image, finding, x, y, w, h), as
        the CSV or a ``bq://`` box table (``pneumo.nih.boxes.read_box_table``) gives them. An error names the
        bad row as ``{row} {first + position}`` (a CSV's line: 2 for the first row after the header).

        Example:
            >>> raw = pd.DataFrame([["a.png", "Infiltrate", "1", "2", "3", "4"]])
            >>> BoxList.from_frame(raw).table[["finding", "w"]].values.tolist()
            [['Infiltration', 3.0]]
        """
        url = source
        table = raw.astype(str).copy()
        table.columns = list(_COLUMNS)
        table["image"] = table["image"].str.strip()
        table["finding"] = table["finding"].str.strip().replace(BBOX_LABEL_ALIASES)
        unknown = sorted(set(table["finding"]) - set(FINDINGS))
        if unknown:
            raise BoxListError(f"{url}: unknown finding label(s) {unknown}; expected one of {list(FINDINGS)}")
        for col in ("x", "y", "w", "h"):
            values = pd.to_numeric(table[col].str.strip(), errors="coerce")
            bad = values.isna().to_numpy().nonzero()[0]
            if len(bad):
                where = f"{row} {int(bad[0]) + first}"
                raise BoxListError(f"{url}, {where}: {col} = {table[col].iloc[bad[0]]!r} is not a number")
            table[col] = values.astype(np.float64)
        empty = ((table["w"] <= 0) | (table["h"] <= 0)).to_numpy().nonzero()[0]
        if len(empty):
            raise BoxListError(f"{url}, {row} {int(empty[0]) + first}: box with no area (w or h <= 0)")
        return cls(table.reset_index(drop=True), source=url)

    def __len__(self) -> int:
        return len(self.table)

    @property
    def images(self) -> set[str]:
        """Names of the images that have at least one box."""
        return set(self.table["image"])

    def for_image(self, image: str, finding: str | None = PNEUMONIA) -> np.ndarray:
        """``(k, 4)`` array of ``[x, y, w, h]`` boxes of one image (of one finding; ``None`` = all)."""
        rows = self.table[self.table["image"] == image]
        if finding is not None:
            rows = rows[rows["finding"] == finding]
        return rows[["x", "y", "w", "h"]].to_numpy(dtype=np.float64).reshape(-1, 4)

    def subset(self, finding: str) -> BoxList:
        """Only the boxes of one finding."""
        return BoxList(self.table[self.table["finding"] == finding].reset_index(drop=True), self.source)


def load_boxes(
    bbox_url: str | None,
    storage_options: Mapping | None = None,
    io: Mapping | None = None,
    storage: StorageSettings | None = None,
) -> BoxList | None:
    """The box file of a data set for ``explain.py`` and the Grad-CAM callback: ``None`` when no file is
    configured (``bbox_url`` empty) or it does not exist (boxes are optional); a ``BoxListError`` when it
    exists but cannot be used (``io``: I/O limits of the reads, ``StorageSettings.io``). A ``bq://`` box
    table is read with ``storage``'s credentials and billing project (``pneumo.nih.boxes.read_box_table``).

    Example:
        >>> load_boxes(None) is None, load_boxes("/no/such/BBox_List_2017.csv") is None
        (True, True)
    """
    if bbox_url and is_bigquery(bbox_url):
        return read_box_table(bbox_url, storage)
    if not bbox_url or not location_exists(bbox_url, storage_options, io):
        return None
    return BoxList.from_csv(bbox_url, storage_options, io)


def scaled_to(boxes: np.ndarray, source_shape: tuple[int, int], target_shape: tuple[int, int]) -> np.ndarray:
    """Map ``[x, y, w, h]`` boxes from an image of ``source_shape`` ``(H, W)`` to one of ``target_shape``.

    Example:
        >>> scaled_to(np.array([[512.0, 256.0, 100.0, 200.0]]), (1024, 1024), (64, 64))
        array([[32.  , 16.  ,  6.25, 12.5 ]])
    """
    sy = target_shape[0] / source_shape[0]
    sx = target_shape[1] / source_shape[1]
    return np.asarray(boxes, dtype=np.float64).reshape(-1, 4) * np.array([sx, sy, sx, sy])


def read_box_table(url: str, storage: StorageSettings | None = None) -> BoxList:
    """The boxes of a ``bq://`` table in ``BBox_List_2017``'s layout (``BOX_COLUMNS``: ``image_index``,
    ``finding_label``, ``bbox_x``, ``bbox_y``, ``bbox_w``, ``bbox_h``), as ``BoxList.from_csv`` reads the
    file: same rows, same checks (the one reader of box tables: ``data.bbox_url=bq://...``; google-cloud-bigquery
    is imported only here).

    Example:
        >>> boxes = read_box_table("bq://my-project.nih.boxes")  # doctest: +SKIP
    """
    ref = parse_table_url(url, "data.bbox_url")
    frame, _ = BigQuerySource(storage or StorageSettings(), ref.project).read_table(
        ref, f"data.bbox_url={url}", columns=list(BOX_COLUMNS)
    )
    missing = [c for c in BOX_COLUMNS if c not in frame.columns]
    if missing:
        raise BoxListError(
            f"data.bbox_url={url}: the table lacks column(s) {missing}; a box table has the columns "
            f"{', '.join(BOX_COLUMNS)}"
        )
    # BigQuery returns rows in no set order: NIH's file is sorted by image name.
    rows = frame[list(BOX_COLUMNS)].sort_values(list(BOX_COLUMNS[:2]), kind="stable").reset_index(drop=True)
    text = rows.map(lambda v: "" if v is None or (isinstance(v, float) and np.isnan(v)) else str(v))
    return BoxList.from_frame(text, f"data.bbox_url={url}", row="row", first=1)
