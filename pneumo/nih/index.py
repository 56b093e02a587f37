"""``NIHLabelIndex``: the per-image label table of ChestX-ray14, read from NIH's ``Data_Entry_2017*.csv``.

Both published layouts are accepted: ``Data_Entry_2017_v2020.csv`` (11 columns) and the original 2017 file
(a trailing comma adds an empty 12th column, ages can be implausible). The file may be a local path or any
URL fsspec reads (``gs://``, ``https://``, ``memory://``), plain or compressed (``.gz``).

Example:
    >>> index = NIHLabelIndex.from_csv("data/nih_demo/Data_Entry_2017.csv")  # doctest: +SKIP
    >>> index.pneumonia.mean()  # doctest: +SKIP

Command line (prints a JSON summary; with no CSV, of NIH's files shipped with pneumo and the official split)::

    python -m pneumo index
    python -m pneumo index Data_Entry_2017.csv --split-lists train_val_list.txt test_list.txt
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from pneumo.errors import PneumoError
from pneumo.io.reading import read_csv
from pneumo.nih.findings import FINDINGS, NO_FINDING, PNEUMONIA_INDEX
from pneumo.nih.shipped import verified

log = logging.getLogger(__name__)

_REQUIRED = ("Image Index", "Finding Labels", "Follow-up #", "Patient ID", "Patient Age", "View Position")
_SEX_COLUMNS = ("Patient Gender", "Patient Sex")
#: Ages above this are data-entry errors in the 2017 release (it holds ages up to 414).
MAX_PLAUSIBLE_AGE = 120


#: Years per unit of NIH's age codes: '058Y' (years), '006M' (months), '002W' (weeks), '010D' (days).
AGE_UNITS = {"Y": 1.0, "M": 1 / 12, "W": 7 / 365.25, "D": 1 / 365.25}


def parse_ages(ages: pd.Series, source: str = "ages") -> pd.Series:
    """Ages in years from NIH's ``Patient Age``: plain numbers (v2020) or ``058Y``/``006M``/``002W``/``010D``
    codes (the 2017 release); values that are neither become missing, counted in one warning.

    Example:
        >>> parse_ages(pd.Series(["58", "058Y", "006M", "002W", "010D"])).round(3).tolist()
        [58.0, 58.0, 0.5, 0.038, 0.027]
    """
    text = ages.astype(str).str.strip().str.upper()
    parts = text.str.extract(r"^(\d+(?:\.\d+)?)\s*([YMWD]?)$")
    value = pd.to_numeric(parts[0], errors="coerce")
    years = value * parts[1].map(lambda unit: AGE_UNITS.get(unit or "Y", np.nan)).astype(float)
    unparseable = years.isna() & ages.notna() & (text != "") & (text != "NAN")
    if unparseable.any():
        log.warning(
            "%s: %d 'Patient Age' value(s) are not ages (e.g. %s) and are left missing; expected a number of "
            "years or NIH's 058Y/006M/002W/010D codes",
            source,
            int(unparseable.sum()),
            ", ".join(repr(v) for v in ages[unparseable].unique()[:3]),
        )
    return years


class LabelIndexError(PneumoError, ValueError):
    """A label file that cannot be used; the message names the file and what is wrong."""


@dataclass(frozen=True)
class NIHLabelIndex:
    """Per-image labels and metadata of ChestX-ray14.

    Attributes:
        table: one row per image with columns ``image``, ``patient``, ``follow_up``, ``view``, ``age``
            (float, NaN where missing or implausible), ``sex`` and ``pneumonia`` (0/1).
        findings: ``(n_images, 14)`` uint8 multi-hot matrix in the order of ``FINDINGS``.
        source: where the table was read from (for messages).
    """

    table: pd.DataFrame
    findings: np.ndarray
    source: str = "<memory>"

    # ------------------------------------------------------------------ reading
    @classmethod
    def from_csv(
        cls,
        url: str,
        storage_options: Mapping | None = None,
        views: Sequence[str] | None = None,
        io: Mapping | None = None,
    ) -> NIHLabelIndex:
        """Read a ``Data_Entry_2017*.csv`` from a path or URL.

        Args:
            url: local path or fsspec URL; ``.gz``/``.bz2``/``.zip`` are decompressed by suffix.
            storage_options: passed to fsspec (e.g. ``{"project": ..., "requester_pays": True}``).
            views: keep only these view positions (e.g. ``["PA"]``); ``None`` keeps all.
            io: I/O limits of the read (``StorageSettings.io``; transient failures are retried).

        Raises:
            LabelIndexError: the file is missing, empty, not a CSV, lacks a column, names an unknown
                finding or repeats an image id.
            AccessDeniedError, StoreUnavailableError: ``pneumo.io.reading``'s, naming the URL.
        """
        verified(url)
        try:
            raw = read_csv(
                url, storage_options, io=io, dtype=str, keep_default_na=False, skipinitialspace=True
            )
        except FileNotFoundError as err:
            raise LabelIndexError(f"{url}: label file not found") from err
        except PneumoError:
            raise  # access denied, unreachable: already one line naming the URL and the setting
        except pd.errors.EmptyDataError as err:
            raise LabelIndexError(f"{url}: the label file is empty") from err
        except (UnicodeDecodeError, pd.errors.ParserError, EOFError, OSError) as err:
            detail = " ".join(str(err).split())  # parser messages span lines; keep one
            raise LabelIndexError(
                f"{url}: not a readable CSV label file ({type(err).__name__}: {detail})"
            ) from err
        return cls.from_frame(raw, source=url, views=views)

    @classmethod
    def from_frame(
        cls, raw: pd.DataFrame, source: str = "<memory>", views: Sequence[str] | None = None
    ) -> NIHLabelIndex:
        """Build the index from the raw NIH table (all columns as strings)."""
        raw = raw.rename(columns=lambda c: str(c).strip())
        # The 2017 file ends each line with a comma: an unnamed, empty column.
        unnamed = [c for c in raw.columns if c.startswith("Unnamed:") or c == ""]
        raw = raw.drop(columns=[c for c in unnamed if (raw[c].astype(str).str.strip() == "").all()])
        if raw.empty:
            raise LabelIndexError(f"{source}: the label file has a header but no rows")
        sex_col = next((c for c in _SEX_COLUMNS if c in raw.columns), None)
        missing = [c for c in _REQUIRED if c not in raw.columns] + ([] if sex_col else [_SEX_COLUMNS[0]])
        if missing:
            raise LabelIndexError(
                f"{source}: missing column(s) {missing}; expected NIH's Data_Entry_2017 header "
                f"({', '.join(_REQUIRED)}, {_SEX_COLUMNS[0]}, ...); found {list(raw.columns)[:12]}"
            )

        images = raw["Image Index"].str.strip()
        if (images == "").any():
            row = int(np.flatnonzero((images == "").to_numpy())[0]) + 2
            raise LabelIndexError(f"{source}: empty 'Image Index' on line {row}")
        dup = images[images.duplicated()]
        if len(dup):
            raise LabelIndexError(
                f"{source}: {len(dup)} duplicate image id(s) in 'Image Index', e.g. {sorted(set(dup))[:3]}"
            )

        labels = raw["Finding Labels"].str.strip()
        multi_hot = labels.str.get_dummies(sep="|")
        multi_hot.columns = [c.strip() for c in multi_hot.columns]
        unknown = sorted(set(multi_hot.columns) - set(FINDINGS) - {NO_FINDING, ""})
        if unknown:
            first = labels[multi_hot[unknown[0]] > 0].index[0]
            raise LabelIndexError(
                f"{source}: unknown finding name(s) {unknown} in 'Finding Labels' (first on line {first + 2}: "
                f"{labels[first]!r}); known findings: {', '.join(FINDINGS)}, or '{NO_FINDING}'"
            )
        findings = multi_hot.reindex(columns=list(FINDINGS), fill_value=0).to_numpy(dtype=np.uint8)
        findings = np.minimum(findings, 1)

        patient = pd.to_numeric(raw["Patient ID"].str.strip(), errors="coerce")
        if patient.isna().any():
            bad = raw.loc[patient.isna(), "Patient ID"].iloc[0]
            raise LabelIndexError(f"{source}: non-numeric 'Patient ID' {bad!r}")
        age = parse_ages(raw["Patient Age"], source)
        implausible = int((age > MAX_PLAUSIBLE_AGE).sum())
        if implausible:
            log.warning("%s: %d age(s) above %d set to missing", source, implausible, MAX_PLAUSIBLE_AGE)
        age = age.where(age <= MAX_PLAUSIBLE_AGE)

        table = pd.DataFrame(
            {
                "image": images.to_numpy(dtype=object),
                "patient": patient.astype(np.int64).to_numpy(),
                "follow_up": pd.to_numeric(raw["Follow-up #"], errors="coerce").fillna(-1).astype(np.int64),
                "view": raw["View Position"].str.strip().str.upper().to_numpy(dtype=object),
                "age": age.astype(float).to_numpy(),
                "sex": raw[sex_col].str.strip().str.upper().to_numpy(dtype=object),
                "pneumonia": findings[:, PNEUMONIA_INDEX].astype(np.int64),
            }
        )
        index = cls(table=table, findings=findings, source=source)
        return index.filter_views(views) if views else index

    # ------------------------------------------------------------------ access
    def __len__(self) -> int:
        return len(self.table)

    @property
    def images(self) -> np.ndarray:
        """Image file names (``Image Index``), e.g. ``00000001_000.png``."""
        return self.table["image"].to_numpy()

    @property
    def patients(self) -> np.ndarray:
        return self.table["patient"].to_numpy()

    @property
    def pneumonia(self) -> np.ndarray:
        """Binary pneumonia target per image."""
        return self.table["pneumonia"].to_numpy()

    def filter_views(self, views: Iterable[str]) -> NIHLabelIndex:
        """Keep only images whose ``View Position`` is in ``views`` (case-insensitive)."""
        wanted = {v.upper() for v in views}
        known = set(self.table["view"])
        if not wanted & known:
            raise LabelIndexError(
                f"{self.source}: no image has a view in {sorted(wanted)}; views present: {sorted(known)}"
            )
        return self._take(self.table["view"].isin(wanted).to_numpy())

    def subset(self, images: Iterable[str]) -> NIHLabelIndex:
        """The rows of ``images``, in the given order; unknown names raise ``LabelIndexError``."""
        pos = pd.Index(self.table["image"]).get_indexer(list(images))
        if (pos < 0).any():
            raise LabelIndexError(f"{self.source}: {(pos < 0).sum()} image(s) not in the label index")
        return self._take(pos)

    def _take(self, rows: np.ndarray) -> NIHLabelIndex:
        return NIHLabelIndex(self.table.iloc[rows].reset_index(drop=True), self.findings[rows], self.source)

    # ------------------------------------------------------------------ summary
    def summary(self, splits: Mapping[str, Sequence[str]] | None = None) -> dict:
        """Counts of images, patients, findings and views, and per split with the patient overlaps."""
        t = self.table
        out: dict = {
            "source": self.source,
            "images": len(t),
            "patients": int(t["patient"].nunique()),
            "pneumonia": int(t["pneumonia"].sum()),
            "no_finding": int((self.findings.sum(axis=1) == 0).sum()),
            "findings": {f: int(n) for f, n in zip(FINDINGS, self.findings.sum(axis=0))},
            "views": {str(k): int(v) for k, v in t["view"].value_counts().sort_index().items()},
        }
        if splits:
            position = pd.Index(t["image"])
            patients_of: dict[str, set] = {}
            out["splits"] = {}
            for name, images in splits.items():
                pos = position.get_indexer(list(images))
                known = pos[pos >= 0]
                patients_of[name] = set(t["patient"].to_numpy()[known].tolist())
                out["splits"][name] = {
                    "images": int(len(known)),
                    "patients": len(patients_of[name]),
                    "pneumonia": int(t["pneumonia"].to_numpy()[known].sum()),
                    "not_in_index": int((pos < 0).sum()),
                }
            names = list(splits)
            out["patient_overlap"] = {
                f"{a}/{b}": len(patients_of[a] & patients_of[b])
                for i, a in enumerate(names)
                for b in names[i + 1 :]
            }
        return out
