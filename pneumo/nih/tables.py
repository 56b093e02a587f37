"""NIH's files as tables with BigQuery-safe column names: the one mapping between the two.

NIH's header (``Image Index``, ``Follow-up #``, ``OriginalImage[Width`` ...) cannot name BigQuery columns; a
table in NIH's layout uses the snake_case names of ``LABEL_COLUMNS`` (the last four optional). The same
mapping turns a shipped or user CSV into a table (``label_table``, ``box_table``, ``list_table``) and a table's
rows back into the raw frame ``NIHLabelIndex.from_frame`` reads (``label_frame``), so the index built from a
table is the one the CSV builds.

Example:
    >>> raw = pd.DataFrame({"Image Index": ["a.png"], "Finding Labels": ["Pneumonia"], "Follow-up #": ["0"],
    ...                     "Patient ID": ["7"], "Patient Age": ["58"], "Patient Gender": ["F"],
    ...                     "View Position": ["PA"]})
    >>> table, schema = label_table(raw)
    >>> list(table.columns)[:3], dict(schema)["patient_age"]
    (['image_index', 'finding_labels', 'follow_up'], 'INT64')
    >>> NIHLabelIndex.from_frame(label_frame(table, "t")).table["age"].tolist()
    [58.0]
"""

from __future__ import annotations

import math
import re
from typing import Any

import pandas as pd

from pneumo.io.bigquery import BigQuerySource, parse_table_url
from pneumo.io.storage import StorageSettings
from pneumo.nih.index import LabelIndexError, NIHLabelIndex

#: NIH's label header -> the table's column (``Patient Sex`` is accepted for ``Patient Gender``).
LABEL_COLUMNS = {
    "Image Index": "image_index",
    "Finding Labels": "finding_labels",
    "Follow-up #": "follow_up",
    "Patient ID": "patient_id",
    "Patient Age": "patient_age",
    "Patient Gender": "patient_gender",
    "View Position": "view_position",
    "OriginalImage[Width": "original_image_width",
    "Height]": "original_image_height",
    "OriginalImagePixelSpacing[x": "original_image_pixel_spacing_x",
    "y]": "original_image_pixel_spacing_y",
}
#: Columns a label table must have (the index reads them); the last four of ``LABEL_COLUMNS`` are optional.
REQUIRED_LABEL_COLUMNS = tuple(list(LABEL_COLUMNS.values())[:7])
#: ``BBox_List_2017.csv``'s first six columns -> the box table's.
BOX_COLUMNS = ("image_index", "finding_label", "bbox_x", "bbox_y", "bbox_w", "bbox_h")
#: The one column of a split-list table (and of a cohort query's result).
IMAGE_COLUMN = "image_index"


def snake_case(name: str) -> str:
    """A BigQuery-safe column name: NIH's own mapping when it has one, else lower case with ``_``.

    Example:
        >>> snake_case("Follow-up #"), snake_case("Airspace opacity")
        ('follow_up', 'airspace_opacity')
    """
    if name in LABEL_COLUMNS:
        return LABEL_COLUMNS[name]
    text = re.sub(r"[^0-9a-zA-Z]+", "_", name.strip()).strip("_").lower()
    return text if text and not text[0].isdigit() else f"c_{text}"


def _sql_type(values: pd.Series) -> str:
    """INT64 / FLOAT64 when every non-empty value is one, else STRING (the 2017 file's ``058Y`` ages)."""
    text = values.astype(str).str.strip()
    filled = text[text != ""]
    if filled.empty:
        return "STRING"
    if filled.str.fullmatch(r"-?\d+").all():
        return "INT64"
    if filled.str.fullmatch(r"-?\d*\.?\d+(?:[eE][-+]?\d+)?").all():
        return "FLOAT64"
    return "STRING"


def typed_table(raw: pd.DataFrame) -> tuple[pd.DataFrame, list[tuple[str, str]]]:
    """``raw`` (strings) with snake_case columns and each column's SQL type; empty unnamed columns dropped."""
    raw = raw.rename(columns=lambda c: str(c).strip())
    unnamed = [c for c in raw.columns if c.startswith("Unnamed:") or c == ""]
    raw = raw.drop(columns=[c for c in unnamed if (raw[c].astype(str).str.strip() == "").all()])
    table = raw.rename(columns=snake_case)
    return table, [(c, _sql_type(table[c])) for c in table.columns]


def label_table(raw: pd.DataFrame) -> tuple[pd.DataFrame, list[tuple[str, str]]]:
    """A ``Data_Entry_2017*.csv`` frame as a label table and its schema (required columns checked)."""
    table, schema = typed_table(raw)
    missing = [c for c in REQUIRED_LABEL_COLUMNS if c not in table.columns and c != "patient_gender"]
    if missing:
        raise LabelIndexError(f"not NIH's label layout: missing {missing}; found {list(raw.columns)[:12]}")
    return table, schema


def box_table(raw: pd.DataFrame) -> tuple[pd.DataFrame, list[tuple[str, str]]]:
    """A ``BBox_List_2017.csv`` frame (``Image Index,Finding Label,Bbox [x,y,w,h],,,``) as a box table."""
    table = raw.iloc[:, :6].copy()
    table.columns = list(BOX_COLUMNS)
    return table, [(c, "STRING" if i < 2 else "FLOAT64") for i, c in enumerate(BOX_COLUMNS)]


def list_table(names: list[str]) -> tuple[pd.DataFrame, list[tuple[str, str]]]:
    """A split list (image names) as a one-column table."""
    return pd.DataFrame({IMAGE_COLUMN: names}), [(IMAGE_COLUMN, "STRING")]


def _text(value: Any) -> str:
    """A table value as the CSV would hold it: missing -> ``""``, numbers without a type's decoration."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return str(value)


def label_frame(table: pd.DataFrame, source: str) -> pd.DataFrame:
    """A label table's rows as NIH's raw frame (NIH's header, strings), ready for ``from_frame``;
    a missing required column is a ``LabelIndexError`` naming it."""
    columns = set(table.columns)
    sex = "patient_gender" if "patient_gender" in columns else "patient_sex"
    missing = [
        c
        for c in REQUIRED_LABEL_COLUMNS
        if c not in columns and not (c == "patient_gender" and sex in columns)
    ]
    if missing:
        raise LabelIndexError(
            f"{source}: the table lacks column(s) {missing}; a label table has NIH's columns in snake_case "
            f"({', '.join(REQUIRED_LABEL_COLUMNS)}, ...); it has {sorted(columns)[:12]}"
        )
    back = {v: k for k, v in LABEL_COLUMNS.items()}
    back["patient_sex"] = "Patient Sex"
    raw = pd.DataFrame({back[c]: table[c].map(_text) for c in table.columns if c in back})
    # BigQuery returns rows in no set order: NIH's files (and the demo set's) are sorted by image name.
    return raw.sort_values("Image Index", kind="stable").reset_index(drop=True)


def index_from_table(table: pd.DataFrame, source: str, views: list[str] | None = None) -> NIHLabelIndex:
    """The ``NIHLabelIndex`` of a label table's rows (the same as the CSV of the same rows gives)."""
    return NIHLabelIndex.from_frame(label_frame(table, source), source=source, views=views)


def read_label_table(
    url: str, storage: StorageSettings | None = None, views: list[str] | None = None
) -> tuple[NIHLabelIndex, pd.DataFrame, Any]:
    """The label index of a ``bq://`` table in NIH's layout, its rows and the table's metadata (the one
    reader of label tables: training, explain and the references' index all read through it).

    Example:
        >>> index, rows, table = read_label_table("bq://my-project.nih.labels")  # doctest: +SKIP
    """
    ref = parse_table_url(url, "data.labels_url")
    frame, table = BigQuerySource(storage or StorageSettings(), ref.project).read_table(
        ref, f"data.labels_url={url}", columns=list(LABEL_COLUMNS.values()) + ["patient_sex"]
    )
    if frame.empty:
        raise LabelIndexError(f"data.labels_url={url}: the table has no rows")
    return index_from_table(frame, url, views), frame, table
