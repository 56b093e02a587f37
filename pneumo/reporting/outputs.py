"""After ``trainer.test``: turn the model's gathered test predictions into the report files and TensorBoard entries.

Writes into the run directory: ``predictions.csv``, ``report.json``, ``report.md`` and the figures
(``roc.png``, ``pr.png``, ``reliability.png``, ``confusion_matrix.png``; ``roc_findings.png`` for multi-label
runs), and logs the figures, the Markdown report and the interval/calibration scalars to every
TensorBoard logger. Only the global-zero process writes (the predictions are already gathered).

Example:
    >>> trainer.test(model, datamodule)  # doctest: +SKIP
    >>> report = write_evaluation(model, datamodule, trainer, EvalSettings(), "logs/run")  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from pneumo.nih.references import load_references
from pneumo.reporting.figures import report_figures, save_figures
from pneumo.reporting.predictions import predictions_frame, write_predictions
from pneumo.reporting.report import (
    EvalSettings,
    build_report,
    describe_data,
    references_markdown,
    report_markdown,
    report_scalars,
    write_report,
)

if TYPE_CHECKING:  # imported where a trainer's run writes its report, not for a predictions CSV's report
    import lightning as L

log = logging.getLogger(__name__)

#: The files of a report, ``report.md`` first (written last, its presence marks a whole report), and its
#: figures' names (``<name>.png``).
REPORT_FILES = ("report.md", "report.json", "predictions.csv")
FIGURE_NAMES = ("roc", "pr", "reliability", "confusion_matrix", "roc_findings")


def report_outputs(out_dir: str | Path) -> list[str]:
    """Names of the outputs a report may have left in ``out_dir``: its files, the known figures and any other
    figure its ``report.json`` lists (so that an overwritten folder keeps no figure of the earlier report).

    Example:
        >>> report_outputs("/nonexistent")[:3]
        ['report.md', 'report.json', 'predictions.csv']
    """
    names = [*REPORT_FILES, *(f"{name}.png" for name in FIGURE_NAMES)]
    with contextlib.suppress(OSError, ValueError, TypeError, AttributeError):  # no (readable) earlier report
        listed = json.loads((Path(out_dir) / "report.json").read_text()).get("figures") or []
        names += [str(name) for name in listed if "/" not in str(name) and str(name) not in ("", ".", "..")]
    return list(dict.fromkeys(names))


def split_metadata(datamodule: Any, split: str) -> tuple[pd.DataFrame | None, dict | None]:
    """Label-index rows (image, patient, view, sex, age) and counts of ``split``, if the data module has them."""
    index, splits = getattr(datamodule, "index", None), getattr(datamodule, "split", None)
    if index is None or splits is None:
        return None, None
    images = splits.as_dict()[split]
    table = index.subset(images).table
    columns = [c for c in ("image", "patient", "view", "sex", "age") if c in table.columns]
    counts = {
        "images": len(table),
        "patients": int(table["patient"].nunique()),
        "positives": int(table["pneumonia"].sum()) if "pneumonia" in table.columns else None,
    }
    return table[columns].reset_index(drop=True), counts


def _log_to_tensorboard(trainer: L.Trainer, report: dict, figures: dict, split: str) -> None:
    already = set(trainer.callback_metrics)
    scalars = {k: v for k, v in report_scalars(report, prefix=split).items() if k not in already}
    for lg in trainer.loggers:
        experiment = getattr(lg, "experiment", None)
        if experiment is None or not hasattr(experiment, "add_figure"):
            continue
        step = trainer.global_step
        for name, fig in figures.items():
            experiment.add_figure(f"{split}/{name}", fig, global_step=step, close=False)
        experiment.add_text(f"{split}/report", report_markdown(report), global_step=step)
        if report.get("reference_standards"):
            experiment.add_text(f"{split}/reference_standards", references_markdown(report), global_step=step)
        for name, value in scalars.items():
            experiment.add_scalar(name, value, global_step=step)
        experiment.close()  # Lightning already finalized the logger; close the file we reopened


def write_outputs(
    frame: pd.DataFrame, report: dict, settings: EvalSettings, out_dir: str | Path
) -> tuple[dict, Path]:
    """Write ``predictions.csv``, the figures (listed in ``report["figures"]``), ``report.json`` and
    ``report.md`` into ``out_dir``; returns the figures and the Markdown path."""
    out = Path(out_dir)
    write_predictions(frame, out / "predictions.csv")
    threshold = report["threshold"]["value"]
    figures = report_figures(frame, threshold, settings.calibration_bins) if settings.figures else {}
    save_figures(figures, out)
    report["figures"] = [f"{name}.png" for name in figures]
    _, md_path = write_report(report, out)
    return figures, md_path


def write_evaluation(
    model: Any,
    datamodule: Any,
    trainer: L.Trainer,
    settings: EvalSettings,
    out_dir: str | Path,
    split: str = "test",
    checkpoint: str | None = None,
) -> dict | None:
    """Build and write the report of ``split`` from ``model.predictions[split]``; ``None`` on non-zero ranks.

    Raises:
        RuntimeError: the model holds no predictions of ``split`` (run ``trainer.test`` first).
    """
    outputs = getattr(model, "predictions", {}).get(split)
    if outputs is None:
        raise RuntimeError(f"the model holds no {split} predictions: run trainer.test(...) before the report")
    if not trainer.is_global_zero:
        return None
    metadata, split_counts = split_metadata(datamodule, split)
    logits = None
    if getattr(outputs, "logits", None) is not None and hasattr(model, "pneumonia_logit"):
        import torch

        logits = model.pneumonia_logit(torch.from_numpy(outputs.logits)).double().numpy()
    frame = predictions_frame(outputs.image_ids, outputs.probs, outputs.targets, metadata, logits=logits)
    threshold = float(model.threshold)
    own = getattr(datamodule, "index", None) if getattr(datamodule, "labels", "nih") == "nih" else None
    references = load_references(
        settings.references,
        files=getattr(datamodule, "references", None),
        labels_url=getattr(datamodule, "labels_url", None) if metadata is not None else None,
        index=own.table if own is not None and metadata is not None else None,  # read once: not again here
    )
    report = build_report(
        frame,
        threshold,
        settings,
        operating_point=getattr(model, "operating_point", None),
        split=split,
        split_counts=split_counts,
        checkpoint=checkpoint,
        temperature=getattr(model, "calibration", None),
        references=references,
        data_source=describe_data(
            getattr(datamodule, "images_url", None),
            getattr(datamodule, "labels_url", None),
            synthetic=bool(getattr(datamodule, "synthetic", None)),
        ),
    )
    figures, md_path = write_outputs(frame, report, settings, out_dir)
    _log_to_tensorboard(trainer, report, figures, split)
    entries = [(f"{report['target']} AUROC", report["metrics"]["auroc"])]
    if report.get("mean_auroc"):
        entries.insert(0, (f"mean AUROC ({report['mean_auroc']['findings']} findings)", report["mean_auroc"]))
    for name, entry in entries:
        ci = entry["ci"]
        log.info(
            "%s %s %s%s",
            split,
            name,
            "n/a" if entry["value"] is None else f"{entry['value']:.4f}",
            f" (95% CI {ci[0]:.4f}-{ci[1]:.4f}, patient bootstrap)" if ci else "",
        )
    log.info("report: %s", md_path)
    for message in report["messages"]:
        log.warning("report: %s", message)
    return report
