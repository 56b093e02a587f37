"""Reference standards: the labels (and boxes) a model's pneumonia scores are measured against.

NIH's pneumonia label was mined from report text by NLP; radiologists contradict it. pneumo scores every
evaluation against each reference of one list (``eval.references``, default ``[nih, adjudicated, rsna]``):

* ``nih``: the label index's ``Pneumonia`` (NIH's NLP label, or the demo set's NIH-style label); every
  evaluated image; boxes from the data set's ``BBox_List_2017.csv``.
* ``adjudicated``: Google's radiologist-adjudicated "Airspace opacity" (Majkowska et al. 2019), its 1,962
  ``test`` images of NIH's test list; no boxes.
* ``rsna``: the RSNA Pneumonia Challenge's "lung opacity suggestive of pneumonia" (Shih et al. 2019) on
  26,585 NIH images, with 9,534 boxes; not a random sample of NIH (enriched with pneumonia-like findings).

A ``Reference`` is the contract: a name, a title, a citation, a description, an optional caveat (``note``),
a per-image label table and the boxes where it has them, and the **coverage rule** (``covers``): an
evaluated image counts when its name is in the reference and its patient, view, sex and age (within a year)
agree with the metadata the reference's images have in their label index (NIH's ``Data_Entry`` for the
shipped files), wherever both sides know them. A synthetic image that only carries an NIH file name (the
demo's names follow NIH's pattern, patient id included) therefore never counts.

A reference is described by a ``ReferenceSpec`` (what a config entry holds): ``layout`` (``index``: a
``Data_Entry`` CSV's Pneumonia; ``rsna``: the RSNA layout; ``adjudicated``: Google's layout; ``table``: any
CSV with ``image`` (or ``Image Index``) and ``label`` 0/1 columns, optionally ``x, y, w, h`` boxes) and
``url``; ``index_url`` names the ``Data_Entry`` CSV that holds the reference images' patient, view, sex and
age (left out: only names are matched). A hospital's own labels are one more entry (docs/evaluation.md,
"Reference standards")::

    eval:
      references:
        - nih
        - rsna
        - {name: site, layout: table, url: /data/site_labels.csv, title: "Site radiologists"}

Example:
    >>> rsna = load_reference("rsna")
    >>> rsna.name, len(rsna.labels), int(rsna.labels["label"].sum())
    ('rsna', 26585, 5997)
    >>> frame = pd.DataFrame({"image": ["00000001_000.png"], "patient": [1], "label": [1]})
    >>> load_reference("nih").covers(frame)[0].tolist()  # NIH's label covers every image of the index
    [True]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace
from functools import cache
from typing import Any

import numpy as np
import pandas as pd

from pneumo.config import choice
from pneumo.errors import ConfigError, PneumoError
from pneumo.io.bigquery import is_bigquery
from pneumo.io.reading import read_csv
from pneumo.nih.boxes import BoxList, load_boxes
from pneumo.nih.findings import PNEUMONIA, PNEUMONIA_INDEX
from pneumo.nih.index import NIHLabelIndex
from pneumo.nih.rsna import RSNA_CITATION, RSNA_FILE, RSNA_TEXT, RSNALabels
from pneumo.nih.shipped import location, verified

#: The training targets of ``data.labels``: NIH's label, or a reference's on the images it covers.
TRAINING_LABELS = ("nih", "rsna")
#: The references reported unless ``eval.references`` says otherwise, in report order.
DEFAULT_REFERENCES = ("nih", "adjudicated", "rsna")
LAYOUTS = ("index", "rsna", "adjudicated", "table")
#: NIH's label index, whose metadata the shipped reference files are checked against.
NIH_INDEX = "Data_Entry_2017_v2020.csv.gz"
ADJUDICATED_FILE = "google2019_nih-chest-xray-labels.csv.gz"
#: The metadata an evaluated image must share with a reference image (age: within ``AGE_TOLERANCE`` years).
MATCHED = ("patient", "view", "sex", "age")
AGE_TOLERANCE = 1.0

NIH_TEXT = (
    "NIH ChestX-ray14's 'Pneumonia' label, mined by NLP from the radiology reports (Wang et al., CVPR 2017): "
    "report wording such as 'cannot exclude pneumonia' becomes a label; pneumonia is a clinical diagnosis "
    "that a radiograph alone does not make."
)
NIH_CITATION = (
    "Wang X, Peng Y, Lu L, Lu Z, Bagheri M, Summers RM. ChestX-ray8: Hospital-scale Chest X-ray Database and "
    "Benchmarks on Weakly-Supervised Classification and Localization of Common Thorax Diseases. IEEE CVPR "
    "2017. Data: NIH Clinical Center."
)
ADJUDICATED_TEXT = (
    "Radiologist-adjudicated 'Airspace opacity' (Majkowska et al., Radiology 2019: three radiologists per "
    "image, disagreements adjudicated; their 1,962 'test' images of NIH's test list): what a radiologist "
    "sees on the image (pneumonia, but also oedema, haemorrhage, atelectasis)."
)
ADJUDICATED_CITATION = (
    "Majkowska A, Mittal S, Steiner DF, et al. Chest Radiograph Interpretation with Deep Learning Models: "
    "Assessment with Radiologist-adjudicated Reference Standards and Population-adjusted Evaluation. "
    "Radiology 2019;294(2):421-431."
)
RSNA_NOTE = (
    "RSNA's images were not drawn at random from NIH (about half carry an NIH Pneumonia, Consolidation or "
    "Infiltration label, a fifth across NIH): its prevalence is not NIH's, and PPV or NPV measured against it "
    "do not carry over to NIH or to a clinic; AUROC, sensitivity and specificity do not depend on prevalence."
)


class ReferenceError(PneumoError, ValueError):
    """A reference that cannot be used; the message names it, its file and the fix."""


@dataclass(frozen=True)
class ReferenceSpec:
    """How to build one reference (one entry of ``eval.references``; a name stands for a built-in spec).

    Attributes:
        name: short name (report keys, ``localization.csv`` columns).
        layout: ``index``, ``rsna``, ``adjudicated`` or ``table`` (see the module docstring).
        url: the labels file; ``None`` = the shipped file of a built-in (``index``: the evaluated data's
            own label index).
        index_url: ``Data_Entry`` CSV with the reference images' patient, view, sex and age (the coverage
            check); ``None`` = NIH's shipped index for the shipped files, none (names only) otherwise.
        title, citation, description, note: what the report says (``note``: a caveat such as enrichment).
        boxes_url: a ``BBox_List_2017.csv`` (``index`` layout: the data set's ``bbox_url``).
    """

    name: str
    layout: str = "table"
    url: str | None = None
    index_url: str | None = None
    title: str = ""
    citation: str = ""
    description: str = ""
    note: str = ""
    boxes_url: str | None = None

    def __post_init__(self) -> None:
        choice(self.layout, f"eval.references[{self.name}].layout", LAYOUTS)
        if self.layout in ("table",) and not self.url:
            raise ConfigError(f"eval.references[{self.name}]: layout {self.layout} needs url=PATH_OR_URL")


BUILTIN: dict[str, ReferenceSpec] = {
    "nih": ReferenceSpec(
        "nih", "index", title="NIH label (NLP)", citation=NIH_CITATION, description=NIH_TEXT
    ),
    "adjudicated": ReferenceSpec(
        "adjudicated",
        "adjudicated",
        title="Adjudicated airspace opacity (radiologists)",
        citation=ADJUDICATED_CITATION,
        description=ADJUDICATED_TEXT,
    ),
    "rsna": ReferenceSpec(
        "rsna",
        "rsna",
        title="RSNA lung opacity (radiologists)",
        citation=RSNA_CITATION,
        description=RSNA_TEXT,
        note=RSNA_NOTE,
    ),
}


def reference_spec(entry: str | Mapping[str, Any], files: Mapping[str, Any] | None = None) -> ReferenceSpec:
    """The spec of one ``eval.references`` entry: a built-in name, or a mapping (``name`` plus any field of
    ``ReferenceSpec``; a mapping whose name is built-in replaces only the fields it gives). ``files``: the
    data set's locations for built-ins (``{"rsna": {"url": ..., "index_url": ...}}``, ``data.references``).

    Example:
        >>> reference_spec("rsna", {"rsna": {"url": "demo/rsna_pneumonia.csv"}}).url
        'demo/rsna_pneumonia.csv'
        >>> reference_spec("radiologists")
        Traceback (most recent call last):
        ...
        pneumo.nih.references.ReferenceError: eval.references: unknown reference 'radiologists'; built-in: nih, adjudicated, rsna, or a mapping {name, layout, url, ...}
    """
    given = dict(entry) if isinstance(entry, Mapping) else {"name": str(entry)}
    name = str(given.get("name") or "")
    known = {f.name for f in fields(ReferenceSpec)}
    unknown = sorted(set(given) - known)
    if unknown:
        raise ReferenceError(f"eval.references[{name}]: unknown key(s) {unknown}; known: {sorted(known)}")
    # a data set's entry (data.references): None values keep the built-in's (data=nih nulls what demo sets)
    data_files = {k: v for k, v in dict((files or {}).get(name) or {}).items() if v is not None}
    unknown = sorted(set(data_files) - known)
    if unknown:
        raise ReferenceError(
            f"data.references.{name}: unknown key(s) {unknown}; known: {sorted(known - {'name'})}"
        )
    base = BUILTIN.get(name)
    if base is None and len(given) == 1 and not data_files:
        raise ReferenceError(
            f"eval.references: unknown reference {name!r}; built-in: {', '.join(BUILTIN)}, "
            "or a mapping {name, layout, url, ...}"
        )
    if base is None:
        return ReferenceSpec(**{**data_files, **given})
    return replace(base, **{**data_files, **{k: v for k, v in given.items() if k != "name"}})


@dataclass(frozen=True)
class Reference:
    """One reference standard: who says which evaluated images are positive, and where (boxes).

    Attributes:
        name, title, citation, description, note: as in ``ReferenceSpec``.
        labels: one row per covered image: ``image``, ``label`` (0/1) and, where known, the metadata of the
            coverage check (``patient``, ``view``, ``sex``, ``age``); ``None`` = the evaluated table's own
            ``label`` column (covers every image).
        boxes: the reference's boxes (pixels of the image they were drawn on), or ``None``.
        source: the labels file.
    """

    name: str
    title: str
    citation: str = ""
    description: str = ""
    note: str = ""
    labels: pd.DataFrame | None = None
    boxes: BoxList | None = None
    source: str | None = None

    def covers(self, frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """Which rows of an evaluated table (``image`` and, where known, ``patient``, ``view``, ``sex``,
        ``age``) the reference covers, and their reference labels.

        Returns:
            ``(mask, labels)``: a boolean row mask of ``frame`` and the 0/1 labels of the covered rows.
        """
        if self.labels is None:
            return np.ones(len(frame), dtype=bool), frame["label"].to_numpy().astype(np.int64)
        ref = self.labels.set_index("image")
        images = frame["image"].astype(str)
        known = images.isin(ref.index).to_numpy()
        rows = ref.reindex(images[known])
        agree = np.ones(int(known.sum()), dtype=bool)
        for column in MATCHED:
            if column not in frame.columns or column not in ref.columns:
                continue
            ours, theirs = frame.loc[known, column], rows[column]
            if column == "age":
                a, b = pd.to_numeric(ours, errors="coerce").to_numpy(), theirs.to_numpy(dtype=float)
                agree &= ~(np.isfinite(a) & np.isfinite(b) & (np.abs(a - b) > AGE_TOLERANCE))
            else:
                agree &= _same(ours, theirs)
        mask = known.copy()
        mask[np.flatnonzero(known)[~agree]] = False
        return mask, rows["label"].to_numpy()[agree].astype(np.int64)

    def boxes_for(self, image: str) -> np.ndarray:
        """``(k, 4)`` ``[x, y, w, h]`` boxes of one image (pixels of the boxed image; empty if none); the
        ``nih`` reference's are its Pneumonia boxes (NIH boxes other findings too)."""
        if self.boxes is None:
            return np.zeros((0, 4))
        return self.boxes.for_image(image, PNEUMONIA if self.name == "nih" else None)


def _same(ours: pd.Series, theirs: pd.Series) -> np.ndarray:
    """Row-wise equality of two metadata columns: as numbers where both sides are numbers (patient ids,
    read as ints, floats or strings), else as ``_normalised`` strings."""
    a = pd.to_numeric(pd.Series(ours.to_numpy()), errors="coerce").to_numpy(dtype=np.float64)
    b = pd.to_numeric(pd.Series(theirs.to_numpy()), errors="coerce").to_numpy(dtype=np.float64)
    numeric = np.isfinite(a) & np.isfinite(b)
    same = np.zeros(len(a), dtype=bool)
    same[numeric] = a[numeric] == b[numeric]
    rest = ~numeric
    if rest.any():
        same[rest] = _normalised(ours[rest]) == _normalised(theirs[rest])
    return same


def _normalised(values: pd.Series) -> np.ndarray:
    """Strings compared case-blind; whole numbers without a trailing ``.0`` (patient ids read as floats).
    Each distinct value is normalised once (a view or sex column has two or three)."""
    distinct, inverse = np.unique(values.astype(str).to_numpy(), return_inverse=True)
    text = pd.Series(distinct, dtype=object).str.strip().str.upper()
    return text.str.replace(r"^(\d+)\.0$", r"\1", regex=True).to_numpy()[inverse.reshape(-1)]


# ---------------------------------------------------------------------------------------------- loading
@cache
def index_metadata(url: str) -> pd.DataFrame:
    """``image``, ``patient``, ``view``, ``sex``, ``age`` of a ``Data_Entry`` CSV or a ``bq://`` label table
    (read once per process)."""
    if is_bigquery(url):
        from pneumo.nih.tables import read_label_table  # google-cloud-bigquery only when a table is named

        table = read_label_table(url)[0].table
    else:
        table = NIHLabelIndex.from_csv(url).table
    return table[["image", "patient", "view", "sex", "age", "pneumonia"]].copy()


@cache
def _labels_of(layout: str, url: str) -> tuple[pd.DataFrame, BoxList | None]:
    """The per-image labels (``image``, ``label``) and boxes of a labels file (read once per process)."""
    if layout == "rsna":
        rsna = RSNALabels.from_csv(url)
        return rsna.images[["image"]].assign(label=rsna.images["opacity"].to_numpy()), rsna.boxes
    if layout == "index":
        table = index_metadata(url)
        return table[["image"]].assign(label=table["pneumonia"].to_numpy()), None
    verified(url)
    try:
        raw = read_csv(url, dtype=str, keep_default_na=False)
    except FileNotFoundError as err:
        raise ReferenceError(f"{url}: reference labels file not found") from err
    raw = raw.rename(columns=lambda c: str(c).strip())
    if layout == "adjudicated":
        return _adjudicated_labels(raw, url), None
    return _table_labels(raw, url)


def _adjudicated_labels(raw: pd.DataFrame, url: str) -> pd.DataFrame:
    """Google's layout: ``Image Index``, ``Set Id`` (only ``test`` is the reference), ``Airspace opacity``."""
    missing = [c for c in ("Image Index", "Airspace opacity") if c not in raw.columns]
    if missing:
        raise ReferenceError(f"{url}: missing column(s) {missing} of Google's adjudicated-label layout")
    if "Set Id" in raw.columns:
        raw = raw[raw["Set Id"].str.strip() == "test"]
    label = (raw["Airspace opacity"].str.strip().str.upper() == "YES").astype(np.int64)
    return pd.DataFrame({"image": raw["Image Index"].str.strip(), "label": label}).reset_index(drop=True)


def _table_labels(raw: pd.DataFrame, url: str) -> tuple[pd.DataFrame, BoxList | None]:
    """``image`` (or ``Image Index``) and ``label`` 0/1 per row; rows with ``x, y, w, h`` are boxes."""
    image_col = "image" if "image" in raw.columns else "Image Index"
    if image_col not in raw.columns or "label" not in raw.columns:
        raise ReferenceError(
            f"{url}: a reference table needs an 'image' (or 'Image Index') and a 'label' column (0/1); "
            f"found {list(raw.columns)[:8]}"
        )
    label = raw["label"].str.strip()
    if not label.isin(["0", "1"]).all():
        raise ReferenceError(
            f"{url}: 'label' must be 0 or 1, found {label[~label.isin(['0', '1'])].iloc[0]!r}"
        )
    frame = pd.DataFrame({"image": raw[image_col].str.strip(), "label": label.astype(np.int64)})
    boxes = None
    if {"x", "y", "w", "h"} <= set(raw.columns):
        coords = raw[["x", "y", "w", "h"]].apply(lambda c: pd.to_numeric(c.str.strip(), errors="coerce"))
        has = coords.notna().all(axis=1).to_numpy()
        boxes = BoxList(
            pd.DataFrame({"image": frame["image"][has], "finding": PNEUMONIA, **{c: coords[c][has] for c in "xywh"}})
            .reset_index(drop=True),
            source=url,
        )  # fmt: skip
    return frame.groupby("image", sort=True)["label"].max().reset_index(), boxes


def load_reference(
    entry: str | Mapping[str, Any] | ReferenceSpec,
    files: Mapping[str, Any] | None = None,
    labels_url: str | None = None,
    bbox_url: str | None = None,
    index: pd.DataFrame | None = None,
) -> Reference:
    """Build one reference from an ``eval.references`` entry (see ``reference_spec``).

    Args:
        entry: a name, a mapping or a ``ReferenceSpec``.
        files: the data set's locations of the built-ins (``data.references``).
        labels_url: the evaluated data's label index (the ``nih`` reference's labels; ``None``: the
            evaluated table's ``label`` column).
        bbox_url: the evaluated data's box list (the ``nih`` reference's boxes).
        index: the table already read from ``labels_url`` (``image``, ``patient``, ``view``, ``sex``,
            ``age``, ``pneumonia``: a data module's index, restricted or not, holding every evaluated image),
            used instead of reading ``labels_url`` again (``nih``'s labels, and the metadata of a reference
            whose ``index_url`` is ``labels_url``: NIH's 112,120-row index is read once per run).
    """
    spec = entry if isinstance(entry, ReferenceSpec) else reference_spec(entry, files)
    boxes: BoxList | None = None

    def metadata(url: str) -> pd.DataFrame:
        if index is not None and url == labels_url:
            return index[["image", *MATCHED, "pneumonia"]]
        return index_metadata(url)

    if spec.layout == "index" and not spec.url:
        labels = None
        if labels_url is not None:
            table = metadata(labels_url)
            labels = table[["image"]].assign(label=table["pneumonia"].to_numpy())
        url = labels_url
    else:
        shipped = {"rsna": RSNA_FILE, "adjudicated": ADJUDICATED_FILE, "index": NIH_INDEX}.get(spec.layout)
        url = spec.url or (location(shipped) if shipped else None)
        if url is None:
            raise ReferenceError(f"eval.references[{spec.name}]: no url for layout {spec.layout}")
        labels, boxes = _labels_of(spec.layout, url)
        index_url = spec.index_url or (location(NIH_INDEX) if not spec.url else None)
        if index_url:
            meta = metadata(index_url).drop(columns="pneumonia")
            labels = labels.merge(meta, on="image", how="inner")
    box_source = spec.boxes_url or (bbox_url if spec.layout == "index" else None)
    if box_source:
        boxes = load_boxes(box_source)
    return Reference(
        name=spec.name,
        title=spec.title or spec.name,
        citation=spec.citation,
        description=spec.description,
        note=spec.note,
        labels=labels,
        boxes=boxes,
        source=url,
    )


def load_references(
    entries: Sequence[str | Mapping[str, Any]] = DEFAULT_REFERENCES,
    files: Mapping[str, Any] | None = None,
    labels_url: str | None = None,
    bbox_url: str | None = None,
    index: pd.DataFrame | None = None,
) -> list[Reference]:
    """Every reference of ``eval.references``, in order (names must be unique; arguments as
    ``load_reference``'s)."""
    refs = [load_reference(e, files, labels_url, bbox_url, index) for e in entries]
    names = [r.name for r in refs]
    if len(set(names)) < len(names):
        raise ReferenceError(f"eval.references: names must be unique, got {names}")
    return refs


def relabelled(index: NIHLabelIndex, reference: Reference) -> NIHLabelIndex:
    """``index`` restricted to the images ``reference`` covers, with its label as the Pneumonia target
    (``data.labels=rsna``); the patient split is made on what remains, so it stays patient-disjoint.

    Raises:
        ReferenceError: the reference covers none of the index's images (one line, naming both files).
    """
    mask, labels = reference.covers(index.table)
    if not mask.any():
        raise ReferenceError(
            f"data.labels={reference.name}: the {reference.name} reference ({reference.source}) covers none of "
            f"the {len(index)} images of {index.source} (name, patient, view, sex and age must agree); use "
            f"data.labels=nih, or a data set it covers (data=nih, or data=demo, which writes its own)"
        )
    rows = np.flatnonzero(mask)
    table = index.table.iloc[rows].reset_index(drop=True)
    table["pneumonia"] = labels
    findings = index.findings[rows].copy()
    findings[:, PNEUMONIA_INDEX] = labels
    return NIHLabelIndex(table, findings, f"{index.source} ({reference.name} labels)")


def coverage_summary(
    reference: Reference, index: NIHLabelIndex, splits: Mapping[str, Sequence[str]] | None = None
) -> dict[str, Any]:
    """What ``reference`` says about a label index's images, beside the index's own Pneumonia label: the
    images it covers (its coverage rule), their patients, positives and boxes, and how its label and the
    index's agree there (``both_positive``, ``index_only``, ``reference_only``, ``both_negative``); the same
    per split (``{"test": names}``). ``python -m pneumo index`` prints it under the reference's name.

    Example:
        >>> index = NIHLabelIndex.from_csv(location(NIH_INDEX))
        >>> rsna = coverage_summary(load_reference("rsna"), index)
        >>> rsna["images"], rsna["positives"], rsna["boxes"], rsna["both_positive"]
        (26585, 5997, 9534, 364)
    """
    mask, labels = reference.covers(index.table)
    covered = index.table.loc[mask, ["image", "patient", "pneumonia"]].assign(reference=labels)
    box_counts = (
        reference.boxes.table["image"].value_counts()
        if reference.boxes is not None
        else pd.Series(dtype=np.int64)
    )

    def counts(part: pd.DataFrame) -> dict[str, Any]:
        ours, theirs = part["pneumonia"].to_numpy(), part["reference"].to_numpy()
        return {
            "images": len(part),
            "patients": int(part["patient"].nunique()),
            "positives": int(theirs.sum()),
            "boxes": int(box_counts.reindex(part["image"]).fillna(0).sum()),
            "both_positive": int(((ours == 1) & (theirs == 1)).sum()),
            "index_only": int(((ours == 1) & (theirs == 0)).sum()),
            "reference_only": int(((ours == 0) & (theirs == 1)).sum()),
            "both_negative": int(((ours == 0) & (theirs == 0)).sum()),
        }

    out: dict[str, Any] = {"name": reference.name, "source": reference.source, **counts(covered)}
    if splits:
        out["splits"] = {
            name: counts(covered[covered["image"].isin(set(map(str, images)))])
            for name, images in splits.items()
        }
    return out
