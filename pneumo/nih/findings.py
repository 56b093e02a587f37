"""The 14 ChestX-ray14 findings and the column names of the NIH label files (facts of the data set)."""

from __future__ import annotations

FINDINGS: tuple[str, ...] = (
    "Atelectasis",
    "Cardiomegaly",
    "Effusion",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pneumonia",
    "Pneumothorax",
    "Consolidation",
    "Edema",
    "Emphysema",
    "Fibrosis",
    "Pleural_Thickening",
    "Hernia",
)
NO_FINDING = "No Finding"
PNEUMONIA = "Pneumonia"
#: Column of Pneumonia among the 14 findings (label matrices, multi-label model outputs).
PNEUMONIA_INDEX = FINDINGS.index(PNEUMONIA)

#: Header of ``Data_Entry_2017*.csv`` exactly as NIH writes it (the bracketed names split into columns).
DATA_ENTRY_HEADER = (
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
    "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]"
)
#: Header of ``BBox_List_2017.csv``: the bracketed name split in four, then three empty columns.
BBOX_HEADER = "Image Index,Finding Label,Bbox [x,y,w,h],,,"
#: ``BBox_List_2017.csv`` spells Infiltration differently.
BBOX_LABEL_ALIASES = {"Infiltrate": "Infiltration"}
