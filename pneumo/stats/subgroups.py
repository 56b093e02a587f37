"""Subgroups of a prediction table: view position, sex and age bands.

Every image falls in exactly one row of each attribute (missing values form an ``unknown`` row), so the rows
of an attribute always sum to the whole split.

Example:
    >>> frame = pd.DataFrame({"view": ["PA", "AP", "PA"], "sex": ["M", "F", "F"], "age": [30, 65, None]})
    >>> [(value, int(mask.sum())) for value, mask in subgroup_masks(frame, [40, 60])["age"]]
    [('<40', 1), ('60+', 1), ('unknown', 1)]
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from pneumo.errors import ConfigError

UNKNOWN = "unknown"


def age_band_labels(edges: Sequence[float]) -> list[str]:
    """Labels of the bands cut at ``edges``: ``[40, 60]`` -> ``<40``, ``40-59``, ``60+``."""
    edges = [float(e) for e in edges]
    if any(b <= a for a, b in zip(edges, edges[1:])):
        raise ConfigError(f"eval.age_bands must be increasing ages, got {edges}")
    if not edges:
        return ["all ages"]
    labels = [f"<{edges[0]:g}"]
    labels += [f"{a:g}-{b - 1:g}" for a, b in zip(edges, edges[1:])]
    return labels + [f"{edges[-1]:g}+"]


def _categorical(values: pd.Series) -> list[tuple[str, np.ndarray]]:
    text = values.astype(object).where(values.notna(), UNKNOWN).astype(str).str.strip()
    text = text.where(text != "", UNKNOWN)
    names = sorted(set(text) - {UNKNOWN}) + ([UNKNOWN] if (text == UNKNOWN).any() else [])
    return [(name, (text == name).to_numpy()) for name in names]


def _age_bands(ages: pd.Series, edges: Sequence[float]) -> list[tuple[str, np.ndarray]]:
    age = pd.to_numeric(ages, errors="coerce").to_numpy(dtype=np.float64)
    labels = age_band_labels(edges)
    band = np.searchsorted(np.asarray(edges, dtype=np.float64), age, side="right")
    rows = [(label, (band == i) & np.isfinite(age)) for i, label in enumerate(labels)]
    rows.append((UNKNOWN, ~np.isfinite(age)))
    return [(label, mask) for label, mask in rows if mask.any()]


def subgroup_masks(
    frame: pd.DataFrame, age_bands: Sequence[float]
) -> dict[str, list[tuple[str, np.ndarray]]]:
    """``{"view": [(value, mask), ...], "sex": [...], "age": [...]}`` for the columns the table has.

    Only non-empty rows are listed; within an attribute the masks partition the table.
    """
    out: dict[str, list[tuple[str, np.ndarray]]] = {}
    if "view" in frame.columns:
        out["view"] = _categorical(frame["view"])
    if "sex" in frame.columns:
        out["sex"] = _categorical(frame["sex"])
    if "age" in frame.columns:
        out["age"] = _age_bands(frame["age"], age_bands)
    return out
