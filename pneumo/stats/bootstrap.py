"""Cluster (patient-level) bootstrap confidence intervals.

Images of one patient are correlated (follow-ups, same anatomy), so resampling images treats a patient with
many images as many independent cases and gives intervals that are too narrow. ``ClusterBootstrap`` draws
**patients** with replacement; each image is weighted by how many times its patient was drawn, and every
statistic is computed on those weights (``pneumo.stats.metrics`` accepts a ``(B, n)`` weight matrix),
so a thousand resamples cost a few vectorised passes.

Example:
    >>> from pneumo.stats.metrics import auroc
    >>> y = np.array([0, 1, 0, 1, 1, 0]); p = np.array([.2, .9, .4, .7, .3, .1])
    >>> boot = ClusterBootstrap(units=np.array([1, 1, 2, 3, 3, 4]), resamples=200, seed=0)
    >>> ci = boot.intervals(lambda w: {"auroc": auroc(y, p, w)})["auroc"]
    >>> 0.0 <= ci.low <= ci.high <= 1.0, ci.valid  # 16 resamples drew one class only
    (True, 184)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

import numpy as np

from pneumo.config import checked_number

#: Resamples and confidence level of an interval unless told (``eval.bootstrap.resamples`` / ``level``).
DEFAULT_RESAMPLES, DEFAULT_LEVEL = 1000, 0.95
#: Most resamples an interval may ask for: each statistic keeps one float per resample (a billion would fill
#: the memory), and 100,000 already pins a 95% percentile bound far below any reported digit.
MAX_RESAMPLES = 100_000
#: Below this share of resamples with a defined statistic, no interval is reported.
MIN_VALID_SHARE = 0.5


@dataclass(frozen=True)
class Interval:
    """A percentile bootstrap interval.

    Attributes:
        low, high: interval bounds (``NaN`` when too few resamples had a defined value).
        valid: resamples in which the statistic was defined (e.g. held both classes for AUROC).
        resamples: resamples drawn.
        reason: why there is no interval (``None`` when there is one).
    """

    low: float
    high: float
    valid: int
    resamples: int
    reason: str | None = None

    @property
    def defined(self) -> bool:
        return bool(np.isfinite(self.low) and np.isfinite(self.high))


class ClusterBootstrap:
    """Seeded bootstrap resampling clusters (patients) with replacement.

    Args:
        units: cluster id of each image (e.g. patient id); ``None`` = every image is its own unit
            (ordinary image-level bootstrap).
        n: number of images (only needed when ``units`` is ``None``).
        resamples: number of bootstrap resamples.
        seed: seed of the resampling; the same seed gives the same intervals.
        level: confidence level of the percentile intervals (0.95 = 2.5th to 97.5th percentile).
        chunk: resamples drawn per vectorised pass (bounds memory at ``chunk * n`` floats).
        unit_name: what a unit is, for messages (``"patient"``).
    """

    def __init__(
        self,
        units: np.ndarray | None = None,
        n: int | None = None,
        resamples: int = DEFAULT_RESAMPLES,
        seed: int = 0,
        level: float = DEFAULT_LEVEL,
        chunk: int = 100,
        unit_name: str = "patient",
    ) -> None:
        resamples = int(checked_number(resamples, "eval.bootstrap.resamples", int, 1, MAX_RESAMPLES))
        level = float(
            checked_number(level, "eval.bootstrap.level", float, 0, 1, low_open=True, high_open=True)
        )
        units_were_images = units is None
        if units is None:
            if n is None:
                raise ValueError("ClusterBootstrap needs units or n")
            units = np.arange(n)
        _, self.unit_of_image = np.unique(np.asarray(units), return_inverse=True)
        self.n_units = int(self.unit_of_image.max()) + 1 if len(self.unit_of_image) else 0
        self.resamples, self.seed, self.level, self.chunk = (
            int(resamples),
            int(seed),
            float(level),
            int(chunk),
        )
        self.unit_name = "image" if units_were_images else unit_name

    def weights(self) -> Iterator[np.ndarray]:
        """Yield ``(b, n_images)`` float32 weights (draw counts of each image's unit), ``resamples`` rows in all."""
        rng = np.random.default_rng(self.seed)
        if self.n_units == 0:
            return
        done = 0
        while done < self.resamples:
            b = min(self.chunk, self.resamples - done)
            drawn = rng.integers(0, self.n_units, size=(b, self.n_units))
            flat = (drawn + np.arange(b)[:, None] * self.n_units).ravel()
            counts = np.bincount(flat, minlength=b * self.n_units).reshape(b, self.n_units).astype(np.float32)
            yield counts[:, self.unit_of_image]
            done += b

    def distributions(
        self, statistic: Callable[[np.ndarray], Mapping[str, np.ndarray]]
    ) -> dict[str, np.ndarray]:
        """The ``(resamples,)`` bootstrap distribution of each statistic, all on the same resamples.

        Args:
            statistic: function of a ``(b, n)`` weight matrix returning ``{name: (b,) values}``
                (``NaN`` where a statistic is undefined in a resample, e.g. AUROC without positives).
        """
        parts: dict[str, list[np.ndarray]] = {}
        for w in self.weights():
            for name, values in statistic(w).items():
                parts.setdefault(name, []).append(np.asarray(values, dtype=np.float64).reshape(len(w)))
        return {name: np.concatenate(p) for name, p in parts.items()}

    def intervals(self, statistic: Callable[[np.ndarray], Mapping[str, np.ndarray]]) -> dict[str, Interval]:
        """Percentile intervals of the statistics returned by ``statistic`` (see ``distributions``)."""
        return {name: self.interval_of(v) for name, v in self.distributions(statistic).items()}

    def interval_of(self, values: np.ndarray) -> Interval:
        """Percentile interval of a bootstrap distribution (NaN entries are undefined resamples)."""
        finite = values[np.isfinite(values)]
        if self.n_units < 2:
            reason = f"no interval: a single {self.unit_name}" if self.n_units else "no interval: no data"
            return Interval(np.nan, np.nan, len(finite), self.resamples, reason)
        if len(finite) == 0 or len(finite) < MIN_VALID_SHARE * self.resamples:
            reason = (
                f"no interval: only {len(finite)} of {self.resamples} {self.unit_name} resamples had it defined "
                f"(too few {self.unit_name}s of one class)"
            )
            return Interval(np.nan, np.nan, len(finite), self.resamples, reason)
        alpha = (1.0 - self.level) / 2.0
        low, high = np.quantile(finite, [alpha, 1.0 - alpha])
        return Interval(float(low), float(high), len(finite), self.resamples)
