"""Choosing the operating point (the probability threshold) on the validation split.

Rules (``eval.threshold`` in ``conf/train.yaml``):

- ``youden``: maximise sensitivity + specificity - 1 (Youden's J).
- ``sensitivity@0.90``: the highest threshold whose sensitivity is at least 0.90 (so the most specific
  such operating point).
- ``specificity@0.90``: the lowest threshold whose specificity is at least 0.90.
- a number in [0, 1], e.g. ``0.5``: fixed, not chosen on data.

An image is positive when its probability is ``>= threshold``. A chosen threshold lies halfway between the
two neighbouring distinct validation scores, so it gives exactly the validation sensitivity/specificity
it was chosen for without sitting on a validation score.

Example:
    >>> y = np.array([0, 0, 0, 1, 1]); p = np.array([0.1, 0.2, 0.6, 0.5, 0.9])
    >>> select_threshold(y, p, "youden").value  # sensitivity 1.0, specificity 0.67
    0.35
    >>> select_threshold(y, p, "sensitivity@0.5").value  # sensitivity 0.5, specificity 1.0
    0.75
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from pneumo.config import choice_error
from pneumo.errors import ConfigError
from pneumo.stats.metrics import RankedScores

_TARGET = re.compile(r"^(sensitivity|specificity)@([0-9]*\.?[0-9]+)$")
#: The named rules (``sensitivity@`` / ``specificity@`` take any target in (0, 1]) and the other form a rule takes.
RULES, FIXED = ("youden", "sensitivity@0.90", "specificity@0.90"), "a number in [0, 1]"
#: The rule unless one is given (``eval.threshold``, ``PneumoniaClassifier(operating_point=...)``).
DEFAULT_RULE = "youden"


@dataclass(frozen=True)
class ThresholdRule:
    """A parsed ``eval.threshold`` value: ``kind`` is youden | sensitivity | specificity | fixed."""

    kind: str
    target: float | None = None

    @classmethod
    def parse(cls, rule: str | float | int | ThresholdRule) -> ThresholdRule:
        """Parse ``youden``, ``sensitivity@0.9``, ``specificity@0.95`` or a number; clear error otherwise."""
        if isinstance(rule, ThresholdRule):
            return rule
        if isinstance(rule, bool):
            raise choice_error(rule, "eval.threshold", RULES, also=FIXED)
        if isinstance(rule, int | float):
            value = float(rule)
        else:
            text = str(rule).strip().lower()
            if text == "youden":
                return cls("youden")
            match = _TARGET.match(text.replace(" ", ""))
            if match:
                target = float(match.group(2))
                if not 0.0 < target <= 1.0:
                    raise ConfigError(
                        f"eval.threshold={rule!r}: the target must be in (0, 1], got {target:g}"
                    )
                return cls(match.group(1), target)
            try:
                value = float(text)
            except ValueError:
                raise choice_error(rule, "eval.threshold", RULES, also=FIXED) from None
        if not 0.0 <= value <= 1.0 or not np.isfinite(value):
            raise ConfigError(f"eval.threshold={rule!r}: a fixed threshold must be in [0, 1]")
        return cls("fixed", value)

    def __str__(self) -> str:
        if self.kind == "youden":
            return "youden"
        if self.kind == "fixed":
            return f"fixed {self.target:g}"
        return f"{self.kind}@{self.target:g}"


@dataclass(frozen=True)
class ThresholdChoice:
    """The outcome of applying a rule: ``value`` is ``None`` when the rule could not be applied (see ``note``)."""

    value: float | None
    rule: str
    note: str | None = None


def _between(thresholds: np.ndarray, k: int) -> float:
    """Halfway between distinct score ``k`` and the next lower one (score ``k`` itself if it is the lowest)."""
    if k + 1 < len(thresholds):
        return float((thresholds[k] + thresholds[k + 1]) / 2.0)
    return float(thresholds[k])


def select_threshold(y: np.ndarray, probs: np.ndarray, rule: str | float | ThresholdRule) -> ThresholdChoice:
    """Apply a threshold rule to validation labels and probabilities.

    Args:
        y: 0/1 labels of the validation images.
        probs: their predicted probabilities.
        rule: see the module docstring.

    Returns:
        The threshold, or ``value=None`` with a note when the validation split lacks a class (a data-driven
        rule then cannot be applied; the caller keeps its previous threshold).
    """
    parsed = ThresholdRule.parse(rule)
    if parsed.kind == "fixed":
        return ThresholdChoice(parsed.target, str(parsed))
    y = np.asarray(y)
    pos, neg = int((y == 1).sum()), int((y == 0).sum())
    if pos == 0 or neg == 0:
        missing = "positive" if pos == 0 else "negative"
        return ThresholdChoice(
            None,
            str(parsed),
            f"the validation split has no {missing} images ({len(y)} images): rule {parsed} cannot be applied",
        )
    ranked = RankedScores.of(y, probs)
    tp, fp = (a[0] for a in ranked.cumulative())
    tpr, fpr = tp / pos, fp / neg
    if parsed.kind == "youden":
        k = int(np.argmax(tpr - fpr))
        return ThresholdChoice(_between(ranked.thresholds, k), str(parsed))
    # sensitivity / specificity: parse() always gives these a target.
    assert parsed.target is not None
    if parsed.kind == "sensitivity":
        k = int(np.flatnonzero(tpr >= parsed.target - 1e-12)[0])
    else:  # specificity: the lowest threshold with fpr <= 1 - target
        ok = np.flatnonzero(fpr <= 1.0 - parsed.target + 1e-12)
        if len(ok) == 0:
            # Even the highest score gives too many false positives: call everything negative.
            top = float(ranked.thresholds[0])
            return ThresholdChoice(
                float(np.nextafter(top, np.inf)),
                str(parsed),
                f"no validation threshold reaches specificity {parsed.target:g}; every image is called negative",
            )
        k = int(ok[-1])
    return ThresholdChoice(_between(ranked.thresholds, k), str(parsed))
