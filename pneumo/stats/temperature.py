"""Temperature scaling (Guo et al. 2017): one scalar ``T`` that divides the logits, fitted on validation by NLL.

Dividing every logit by ``T > 0`` keeps the ranking (AUROC, the ROC curve) and only moves probabilities
towards 0.5 (``T > 1``, an over-confident model) or away from it (``T < 1``). For a binary model the
pneumonia probability is ``sigmoid(logit / T)`` with ``logit`` = pneumonia logit - no-pneumonia logit (the
2-class softmax); a multi-label model applies ``sigmoid(logit / T)`` to each finding's logit. Either way the
negative log-likelihood is the binary cross-entropy of those probabilities, which ``fit_temperature``
minimises over ``log T`` by golden-section search (the loss is convex in ``1 / T``, so unimodal in ``log T``).

Example:
    >>> y = np.array([0, 0, 1, 1, 0, 1]); z = np.array([-8.0, 4.0, 6.0, 9.0, -5.0, -3.0])
    >>> fit = fit_temperature(z, y)
    >>> fit.value > 1.0, fit.nll_after < fit.nll_before   # over-confident logits: T > 1 lowers the NLL
    (True, True)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

#: Search range of ``T``. A fit at the lower bound means validation is perfectly separated: the NLL falls
#: without end as ``T`` shrinks, and probabilities saturate at 0 and 1 (ties that would change the ranking).
BOUNDS = (0.05, 20.0)
_GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0


def _golden_section(f: Callable[[float], float], lo: float, hi: float, tol: float = 1e-7) -> float:
    """The minimiser of a unimodal ``f`` on ``[lo, hi]``."""
    a, b = lo, hi
    c, d = b - _GOLDEN * (b - a), a + _GOLDEN * (b - a)
    fc, fd = f(c), f(d)
    while b - a > tol:
        if fc <= fd:
            b, d, fd = d, c, fc
            c = b - _GOLDEN * (b - a)
            fc = f(c)
        else:
            a, c, fc = c, d, fd
            d = a + _GOLDEN * (b - a)
            fd = f(d)
    return (a + b) / 2.0


def scaled_probability(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """``sigmoid(logits / temperature)`` in float64."""
    z = np.asarray(logits, dtype=np.float64) / float(temperature)
    return np.exp(-np.logaddexp(0.0, -z))


def logit_of(probability: np.ndarray) -> np.ndarray:
    """The logit ``log(p / (1 - p))`` of probabilities (infinite at exactly 0 or 1)."""
    p = np.asarray(probability, dtype=np.float64)
    with np.errstate(divide="ignore"):
        return np.log(p) - np.log1p(-p)


def nll(logits: np.ndarray, targets: np.ndarray, temperature: float = 1.0) -> float:
    """Mean binary cross-entropy of ``sigmoid(logits / temperature)`` against 0/1 ``targets``."""
    z = np.asarray(logits, dtype=np.float64) / float(temperature)
    y = np.asarray(targets, dtype=np.float64)
    return float(np.mean(np.logaddexp(0.0, z) - y * z))


def probability_nll(targets: np.ndarray, probability: np.ndarray) -> float:
    """Mean binary cross-entropy of probabilities (clipped to [1e-15, 1 - 1e-15]) against 0/1 targets."""
    y = np.asarray(targets, dtype=np.float64)
    p = np.clip(np.asarray(probability, dtype=np.float64), 1e-15, 1.0 - 1e-15)
    return float(-np.mean(y * np.log(p) + (1.0 - y) * np.log1p(-p))) if len(y) else math.nan


@dataclass(frozen=True)
class TemperatureFit:
    """The fitted temperature (``None`` when it cannot be fitted: see ``note``) and the NLL before/after."""

    value: float | None
    nll_before: float
    nll_after: float
    images: int
    note: str | None = None


def fit_temperature(logits: np.ndarray, targets: np.ndarray) -> TemperatureFit:
    """Fit ``T`` minimising the NLL of ``sigmoid(logits / T)`` (any shape; every element counts once).

    Returns ``value=None`` with a note when the targets hold one class only or are perfectly separated by the
    logits (no finite optimum: the NLL keeps falling as ``T`` shrinks).
    """
    z = np.asarray(logits, dtype=np.float64).ravel()
    y = np.asarray(targets, dtype=np.float64).ravel()
    if z.shape != y.shape:
        raise ValueError(f"temperature: {z.shape} logits for {y.shape} targets")
    if not np.isfinite(z).all():
        raise ValueError("temperature: the logits hold NaN or infinite values")
    n = int(np.asarray(targets).shape[0]) if np.ndim(targets) else 0
    before = nll(z, y) if len(z) else math.nan
    if len(z) == 0 or y.min() == y.max():
        what = (
            "no images"
            if len(z) == 0
            else f"only {'positive' if len(z) and y[0] == 1 else 'negative'} targets"
        )
        return TemperatureFit(None, before, before, n, f"temperature not fitted: validation has {what}")
    lo, hi = math.log(BOUNDS[0]), math.log(BOUNDS[1])
    log_t = _golden_section(lambda s: nll(z, y, math.exp(s)), lo, hi)
    value = float(math.exp(log_t))
    after = nll(z, y, value)
    if after > before:  # never worse than no scaling (a flat loss can stop the search short)
        value, after = 1.0, before
    if log_t - lo < 1e-3:
        separated = z[y == 0].max() < z[y == 1].min()
        why = (
            "the validation logits separate the classes perfectly"
            if separated
            else f"the validation NLL still falls at T = {BOUNDS[0]:g} (logits tiny for how well they rank)"
        )
        return TemperatureFit(None, before, before, n, f"temperature not fitted: {why}")
    note = f"temperature {value:.3g} at its upper search bound {BOUNDS[1]:g}" if hi - log_t < 1e-3 else None
    return TemperatureFit(value, before, after, n, note)
