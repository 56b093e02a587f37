"""BigQuery as a label and cohort source: ``bq://`` label and split-list tables, cohorts by SQL, uploads.

- ``data.labels_url=bq://PROJECT.DATASET.TABLE``: a table in NIH's layout (snake_case columns,
  ``pneumo.nih.tables.LABEL_COLUMNS``) read into the same ``NIHLabelIndex`` the CSV gives;
  ``data.split_lists.{train_val,test}`` may be tables with a column ``image_index``.
- ``data.cohort.query`` (+ ``params``, ``maximum_bytes_billed``): the images a query returns restrict the
  index before the patient-disjoint split. The query is dry-run first (its byte estimate is logged and checked
  against ``maximum_bytes_billed``, which the job gets too); its text, parameters, the tables' last-modified
  times and the row count go into the model card, the images into ``cohort.csv`` in the run folder.
- ``python -m pneumo.data.bigquery upload --dataset PROJECT.DATASET [--from DIR_OR_URL]``: tables from NIH's
  files shipped with pneumo (labels, boxes, both split lists, the radiologists' adjudicated labels) or from a
  data set in NIH's layout (``--from data/nih_demo``), with descriptions and NIH's attribution.
- ``python -m pneumo.data.bigquery dry-run --query SQL [--param name=value ...]``: the bytes a query would scan.

Credentials, billing project and the emulator come from ``data.storage`` and the environment
(``pneumo.io.bigquery``); every failure is one line, exit status 2.

Example:
    >>> Cohort("SELECT image_index FROM `p.d.t`", {}, ["a.png"], ["a.png"], {}, 0, None).record()["rows"]
    1
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from pneumo.errors import PneumoError
from pneumo.io.bigquery import (
    BigQueryError,
    BigQuerySource,
    TableRef,
    bigquery_module,
    check_bytes,
    parse_table_url,
)
from pneumo.io.files import atomic_write_text
from pneumo.io.reading import read_csv, read_text
from pneumo.io.storage import StorageSettings
from pneumo.nih.index import NIHLabelIndex
from pneumo.nih.shipped import shipped_path
from pneumo.nih.tables import (
    IMAGE_COLUMN,
    box_table,
    label_table,
    list_table,
    read_label_table,
    typed_table,
)

log = logging.getLogger(__name__)

#: Where the attribution NIH requires comes from (kept with every uploaded table's description).
ATTRIBUTION = (
    "NIH ChestX-ray14, NIH Clinical Center (https://nihcc.app.box.com/v/ChestXray-NIHCC). Cite Wang X, Peng Y, "
    "Lu L, Lu Z, Bagheri M, Summers RM. ChestX-ray8: Hospital-scale Chest X-ray Database and Benchmarks on "
    "Weakly-Supervised Classification and Localization of Common Thorax Diseases. IEEE CVPR 2017, pp. "
    "3462-3471. Acknowledge the NIH Clinical Center as the data provider."
)
ADJUDICATED_ATTRIBUTION = (
    "Majkowska A, Mittal S, Steiner DF, et al. Chest Radiograph Interpretation with Deep Learning Models: "
    "Assessment with Radiologist-adjudicated Reference Standards and Population-adjusted Evaluation. "
    "Radiology 2019;294(2):421-431."
)
_TABLE_IN_SQL = re.compile(r"`([A-Za-z0-9][A-Za-z0-9\-:]*)\.([A-Za-z_]\w*)\.([\w\-]+)`")


def require_bigquery(key: str) -> None:
    """Fail now (naming ``key`` and the extra to install) when google-cloud-bigquery is missing."""
    try:
        bigquery_module()
    except BigQueryError as err:
        raise BigQueryError(f"{key}: {err}") from None


def check_table_url(url: str, key: str) -> TableRef:
    """A ``bq://`` location checked before any work: well formed, and the client library installed."""
    ref = parse_table_url(url, key)
    require_bigquery(f"{key}={url}")
    return ref


def _digest(frame: pd.DataFrame) -> str:
    """sha256 of a table's rows as CSV, sorted (BigQuery returns rows in no set order)."""
    ordered = frame.sort_values(list(frame.columns), kind="stable") if len(frame.columns) else frame
    return hashlib.sha256(ordered.to_csv(index=False).encode("utf-8")).hexdigest()


def _record(frame: pd.DataFrame, table: Any) -> dict[str, Any]:
    modified = getattr(table, "modified", None)
    return {
        "modified": modified.isoformat() if modified else None,
        "rows": len(frame),
        "sha256": _digest(frame),
    }


def read_table_index(
    url: str, storage: StorageSettings, views: Sequence[str] | None = None
) -> tuple[NIHLabelIndex, dict[str, Any]]:
    """The label index of a ``bq://`` table in NIH's layout, and the table's record (last modified, rows,
    sha256 of the rows) for the model card."""
    index, frame, table = read_label_table(url, storage, list(views) if views else None)
    return index, _record(frame, table)


def read_table_list(url: str, storage: StorageSettings) -> tuple[list[str], dict[str, Any]]:
    """The image names of a split-list table (column ``image_index``), and its record."""
    ref = parse_table_url(url, "data.split_lists")
    what = f"split list {url}"
    frame, table = BigQuerySource(storage, ref.project).read_table(ref, what)
    if IMAGE_COLUMN not in frame.columns:
        raise BigQueryError(f"{what}: the table lacks column '{IMAGE_COLUMN}'; it has {list(frame.columns)}")
    names = sorted(str(x).strip() for x in frame[IMAGE_COLUMN] if x is not None and str(x).strip())
    if not names:
        raise BigQueryError(f"{what}: the table holds no image names")
    return names, _record(frame[[IMAGE_COLUMN]], table)


@dataclass
class Cohort:
    """What a cohort query chose: the query and its parameters, the images it returned (and those of them
    in the label index), the tables it read with their last-modified times, and its dry-run estimate."""

    query: str
    params: dict[str, Any]
    images: list[str]
    images_in_index: list[str]
    tables: dict[str, str | None]
    bytes_estimate: int
    maximum_bytes_billed: int | None

    def record(self) -> dict[str, Any]:
        """Plain data for the model card."""
        return {
            "query": self.query,
            "params": self.params,
            "rows": len(self.images),
            "images_in_index": len(self.images_in_index),
            "tables_modified": self.tables,
            "bytes_estimate": self.bytes_estimate,
            "maximum_bytes_billed": self.maximum_bytes_billed,
            "sha256": hashlib.sha256("\n".join(sorted(self.images)).encode()).hexdigest(),
        }

    def write_csv(self, folder: str | Path) -> Path:
        """``cohort.csv`` (one column ``image_index``, sorted) in ``folder``; returns its path."""
        path = Path(folder) / "cohort.csv"
        atomic_write_text(path, pd.DataFrame({IMAGE_COLUMN: sorted(self.images)}).to_csv(index=False))
        return path


def tables_in(sql: str, referenced: Sequence[str] = ()) -> list[str]:
    """The tables a query reads: the dry run's list, else the backquoted names in its text.

    Example:
        >>> tables_in("SELECT image_index FROM `p.nih.labels` JOIN `p.nih.reads` USING (image_index)")
        ['p.nih.labels', 'p.nih.reads']
    """
    found = list(referenced) or [".".join(m) for m in _TABLE_IN_SQL.findall(sql)]
    return list(dict.fromkeys(found))


def select_cohort(index: NIHLabelIndex, settings: Any, storage: StorageSettings, labels_url: str) -> Cohort:
    """Run ``data.cohort.query`` (dry run first, refused above ``maximum_bytes_billed``) and keep the images
    it returns that are in ``index``; one-line errors for a query that fails or returns no usable image."""
    sql, params, limit = settings.query, dict(settings.params or {}), settings.maximum_bytes_billed
    what = f"data.cohort.query {sql!r}"
    tables = tables_in(sql)
    project = (
        tables[0].split(".")[0]
        if tables
        else (parse_table_url(labels_url).project if labels_url.startswith("bq://") else None)
    )
    source = BigQuerySource(storage, project)
    estimate, referenced = source.dry_run(sql, params, what)
    log.info("cohort query: dry run estimates %s bytes scanned", f"{estimate:,}")
    check_bytes(estimate, limit, "data.cohort.query")
    frame = source.query(sql, params, what, maximum_bytes_billed=limit)
    if IMAGE_COLUMN not in frame.columns:
        raise BigQueryError(
            f"{what}: the result lacks column '{IMAGE_COLUMN}' (it has {list(frame.columns)}); select it"
        )
    images = sorted({str(x).strip() for x in frame[IMAGE_COLUMN] if x is not None and str(x).strip()})
    if not images:
        raise BigQueryError(f"{what} with params {params} returned no images")
    known = set(index.images.tolist())
    kept = [x for x in images if x in known]
    if not kept:
        raise BigQueryError(
            f"{what} returned {len(images)} image(s), none of them in the label index {index.source} "
            f"(e.g. {images[:3]}): check the query and data.labels_url / data.split.views"
        )
    if len(kept) < len(images):
        log.warning(
            "cohort: %d of the %d images the query returned are not in the label index",
            len(images) - len(kept),
            len(images),
        )
    modified = {}
    for table_id in tables_in(sql, referenced):
        parts = table_id.replace(":", ".").split(".")
        ref = TableRef(".".join(parts[:-2]) if len(parts) > 3 else parts[0], parts[-2], parts[-1])
        meta = source.table(ref, what)
        modified[table_id] = meta.modified.isoformat() if getattr(meta, "modified", None) else None
    log.info(
        "cohort: %d images (%d in the label index) from %s",
        len(images),
        len(kept),
        ", ".join(modified) or "the query",
    )
    return Cohort(sql, params, images, kept, modified, estimate, limit)


# ---------------------------------------------------------------------------------------------- upload
#: Table name -> (file of a data set in NIH's layout, what it holds). The labels file may be the v2020 one.
LAYOUT = {
    "labels": (
        ("Data_Entry_2017_v2020.csv", "Data_Entry_2017.csv"),
        "NIH ChestX-ray14 labels and metadata (Data_Entry_2017), one row per image",
    ),
    "boxes": (
        ("BBox_List_2017.csv",),
        "NIH ChestX-ray14 hand-drawn boxes (BBox_List_2017), pixels of the 1024 x 1024 PNG",
    ),
    "train_val_list": (("train_val_list.txt",), "NIH ChestX-ray14 official train+validation list"),
    "test_list": (("test_list.txt",), "NIH ChestX-ray14 official test list"),
}
RSNA_ATTRIBUTION = (
    "Shih G, Wu CC, Halabi SS, et al. Augmenting the National Institutes of Health Chest Radiograph Dataset "
    "with Expert Annotations of Possible Pneumonia. Radiology: Artificial Intelligence 2019;1(1):e180041. "
    "Matched to NIH file names by torchxrayvision (Cohen JP et al., MIDL 2022; Apache-2.0)."
)
#: The radiologists' references shipped with pneumo: table -> (shipped file, what it holds, attribution).
REFERENCES = {
    "adjudicated_google2019": (
        "google2019_nih-chest-xray-labels.csv.gz",
        "Radiologist-adjudicated labels of 4,376 NIH test images (Fracture, Pneumothorax, Airspace opacity, "
        "Nodule or mass; three radiologists each)",
        ADJUDICATED_ATTRIBUTION,
    ),
    "rsna_pneumonia": (
        "rsna_pneumonia_nih.csv.gz",
        "RSNA Pneumonia Detection Challenge radiologist labels and lung-opacity boxes, keyed by NIH image (one "
        "row per box; Target 1 = opacity)",
        RSNA_ATTRIBUTION,
    ),
}


def _find(folder: str, names: Sequence[str], storage: StorageSettings) -> str | None:
    """The first of ``names`` (plain or ``.gz``) that exists in ``folder``."""
    from pneumo.io.store import location_exists

    for name in names:
        for candidate in (name, name + ".gz"):
            url = f"{folder.rstrip('/')}/{candidate}"
            if location_exists(url, storage.options_for(url), storage.io):
                return url
    return None


def _frames_of(source: str | None, storage: StorageSettings) -> dict[str, tuple[pd.DataFrame, list, str]]:
    """Table name -> (rows, schema, description) from the shipped files (``source=None``) or a folder/URL."""
    files: dict[str, str | None]
    if source is None:
        files = {"labels": shipped_path("Data_Entry_2017_v2020.csv.gz"), "boxes": shipped_path("BBox_List_2017.csv.gz"),
                 "train_val_list": shipped_path("train_val_list.txt"), "test_list": shipped_path("test_list.txt")}  # fmt: skip
    else:
        files = {table: _find(source, names, storage) for table, (names, _) in LAYOUT.items()}
        if files["labels"] is None:
            raise PneumoError(
                f"--from {source}: no Data_Entry_2017.csv (or _v2020, .gz) there: not NIH's layout"
            )
    out: dict[str, tuple[pd.DataFrame, list, str]] = {}
    for table, url in files.items():
        if url is None:
            continue
        options, io = storage.options_for(url), storage.io
        about = f"{LAYOUT[table][1]}. From {'pneumo (shipped copy of NIH file)' if source is None else url}. {ATTRIBUTION}"
        if table.endswith("_list"):
            names = [x.strip() for x in read_text(url, options, io=io).splitlines() if x.strip()]
            out[table] = (*list_table(names), about)
        else:
            raw = read_csv(url, options, io=io, dtype=str, keep_default_na=False, skipinitialspace=True)
            out[table] = (*(label_table(raw) if table == "labels" else box_table(raw)), about)
    if source is None:
        for table, (name, what, cite) in REFERENCES.items():
            raw = read_csv(shipped_path(name), dtype=str, keep_default_na=False)
            out[table] = (*typed_table(raw), f"{what}. {cite} Images: {ATTRIBUTION}")
    return out


def upload(dataset: str, source: str | None = None, storage: StorageSettings | None = None) -> dict[str, int]:
    """Create (or replace) the tables of ``dataset`` (``PROJECT.DATASET``) from NIH's shipped files or a data
    set in NIH's layout at ``source``; returns rows per table (``bq://`` URL -> rows)."""
    match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9\-:]*)\.([A-Za-z_]\w*)", dataset.strip())
    if not match:
        raise BigQueryError(f"--dataset {dataset}: expected PROJECT.DATASET (e.g. my-project.nih)")
    project, name = match.groups()
    storage = storage or StorageSettings()
    storage.probe(f"bq://{project}.{name}.labels")
    frames = _frames_of(source, storage)
    client = BigQuerySource(storage, project)
    client.ensure_dataset(
        project, name, f"NIH ChestX-ray14 metadata in NIH's layout, uploaded by pneumo. {ATTRIBUTION}"
    )
    rows = {}
    for table, (frame, schema, about) in frames.items():
        ref = TableRef(project, name, table)
        rows[ref.url] = client.load_frame(frame, ref, schema, about)
        log.info("%s: %d rows", ref.url, rows[ref.url])
    return rows


def _params(pairs: Sequence[str]) -> dict[str, Any]:
    """``name=value`` pairs; values parsed as JSON when they are (numbers, booleans, lists), else strings."""
    out: dict[str, Any] = {}
    for pair in pairs:
        name, sep, text = pair.partition("=")
        if not sep:
            raise BigQueryError(f"--param {pair}: expected name=value")
        try:
            out[name] = json.loads(text)
        except ValueError:
            out[name] = text
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m pneumo.data.bigquery {upload,dry-run} ...``; one-line errors, exit status 2."""
    from pneumo.console import print_json, user_errors
    from pneumo.io.storage import protect_output

    protect_output()
    parser = argparse.ArgumentParser(
        prog="python -m pneumo.data.bigquery", description=__doc__.split("\n\n")[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("upload", help="create tables in NIH's layout from the shipped files or a data set")
    up.add_argument("--dataset", required=True, help="PROJECT.DATASET (created when missing)")
    up.add_argument("--from", dest="source", default=None, help="folder or URL of a data set in NIH's layout")
    dry = sub.add_parser("dry-run", help="the bytes a query would scan")
    dry.add_argument("--query", required=True)
    dry.add_argument("--param", action="append", default=[], help="name=value (repeatable)")
    dry.add_argument(
        "--project", default=None, help="billing project (default $GOOGLE_CLOUD_PROJECT or the table's)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    with user_errors(log):
        import os

        storage = StorageSettings(project=os.environ.get("GOOGLE_CLOUD_PROJECT"))
        if args.command == "upload":
            print_json({"tables": upload(args.dataset, args.source, storage)})
        else:
            tables = tables_in(args.query)
            storage.probe("bq://x.y.z")
            source = BigQuerySource(storage, args.project or (tables[0].split(".")[0] if tables else None))
            estimate, _ = source.dry_run(args.query, _params(args.param), "--query")
            print_json({"bytes_estimate": estimate, "tables": tables})
    return 0


if __name__ == "__main__":
    sys.exit(main())
