"""A second reference standard: radiologist-adjudicated "Airspace opacity" labels of NIH test images.

NIH's pneumonia label was mined from radiology reports by NLP (Wang et al. 2017); it is the noisiest of the
14 (report wording such as "cannot exclude pneumonia" becomes a label, and pneumonia is a clinical diagnosis
that a radiograph alone does not make). Majkowska et al. (Radiology 2019) had a panel of radiologists
label 4,376 NIH test-list images for four findings, each read by three radiologists and adjudicated to
agreement; "Airspace opacity" (consolidation or ground-glass opacity: what a pneumonia looks like on a
radiograph) is the closest of the four to pneumonia. The file ships with pneumo
(``google2019_nih-chest-xray-labels.csv.gz``, sha256-checked).

Only its 1,962 images of ``Set Id == test`` are the reference: Majkowska et al. report their models on
those; the other 2,414 (``val``) tuned their models' operating points. An evaluated image counts when its
name, patient id, view and sex all agree with the file, so a synthetic image that happens to carry an NIH
file name (the demo set's names follow NIH's pattern) never does.

Example:
    >>> ref = adjudicated_reference()
    >>> len(ref), int(ref["airspace_opacity"].sum()) > 0
    (1962, True)
"""

from __future__ import annotations

from functools import cache

import numpy as np
import pandas as pd

from pneumo.io.reading import read_csv
from pneumo.nih.shipped import shipped_path

#: The shipped file and its reference column.
ADJUDICATED_FILE = "google2019_nih-chest-xray-labels.csv.gz"
REFERENCE_COLUMN = "Airspace opacity"
REFERENCE_SET = "test"
#: What the report says about the reference.
REFERENCE_TEXT = (
    "Radiologist-adjudicated 'Airspace opacity' (Majkowska et al., Radiology 2019: three radiologists per "
    "image, disagreements adjudicated; their 1,962 'test' images of NIH's test list). It differs from NIH's "
    "pneumonia label, which was mined from report text by NLP: pneumonia is a clinical diagnosis, airspace "
    "opacity is what a radiologist sees on the image (pneumonia, but also oedema, haemorrhage, atelectasis)."
)


@cache
def adjudicated_reference() -> pd.DataFrame:
    """The reference table: ``image``, ``patient``, ``view``, ``sex``, ``airspace_opacity`` (0/1), one row per
    image of the file's ``test`` set."""
    raw = read_csv(shipped_path(ADJUDICATED_FILE), dtype=str, keep_default_na=False)
    raw = raw[raw["Set Id"].str.strip() == REFERENCE_SET]
    table = pd.DataFrame(
        {
            "image": raw["Image Index"].str.strip(),
            "patient": raw["Patient ID"].astype(int),
            "view": raw["View Position"].str.strip(),
            "sex": raw["Patient Gender"].str.strip(),
            "airspace_opacity": (raw[REFERENCE_COLUMN].str.strip().str.upper() == "YES").astype(np.int64),
        }
    )
    return table.reset_index(drop=True)


def match_reference(frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Which rows of a prediction table are adjudicated images, and their reference labels: the coverage rule
    of ``pneumo.nih.references.Reference.covers`` (name, and patient, view, sex and age where known).

    Returns:
        ``(mask, labels)``: a boolean row mask of ``frame`` and the 0/1 reference of the matched rows.
    """
    from pneumo.nih.references import load_reference  # references builds on this module's neighbours

    return load_reference("adjudicated").covers(frame)
