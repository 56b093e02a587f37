"""Evaluation a reviewer accepts: patient-bootstrap intervals, a validation-chosen operating point, calibration,
subgroups, figures and report files.

Modules (one job each): ``metrics`` (AUROC, AUPRC, rates, calibration; weighted, scikit-learn conventions),
``bootstrap`` (patient-level percentile intervals), ``threshold`` (operating-point rules), ``subgroups``
(view, sex, age bands), ``predictions`` (the per-image table), ``report`` (dict / JSON / Markdown),
``figures`` (ROC, PR, reliability, confusion matrix), ``evaluate`` (after ``trainer.test``: write it all).
"""

from __future__ import annotations

from pneumo.evaluation.bootstrap import ClusterBootstrap, Interval
from pneumo.evaluation.report import EvalSettings, build_report, report_markdown, write_report
from pneumo.evaluation.threshold import ThresholdRule, select_threshold

__all__ = [
    "ClusterBootstrap",
    "EvalSettings",
    "Interval",
    "ThresholdRule",
    "build_report",
    "report_markdown",
    "select_threshold",
    "write_report",
]
