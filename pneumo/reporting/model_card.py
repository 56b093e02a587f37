"""A model card per run: which data, split, seed, initial weights and code a checkpoint came from, how it
scored, and what it is not for.

``card_fields`` collects the provenance at the start of training (sha256 of the label file and split lists
as read, images used and skipped, the patient-disjoint split's counts, initial weights, seed, the composed
config, pneumo's version and git commit); the classifier saves them in every checkpoint
(``checkpoint["model_card"]``). After the test, ``write_model_card`` writes ``model_card.md`` into the run
directory with the test metrics, their intervals and the subgroup table from the report, and
``record_test_results`` adds the same figures to the tested checkpoint's card (``model_card.test``).

Example:
    >>> fields = {"pneumo": {"version": "0.1.0", "git_commit": None}, "seed": 42}
    >>> "## Intended use and limits" in card_markdown(fields, None)
    True
"""

from __future__ import annotations

import importlib.metadata
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

from omegaconf import OmegaConf

from pneumo.data.identity import image_list_sha256
from pneumo.io.checkpoints import AtomicCheckpointIO
from pneumo.io.files import atomic_write_text, sha256_of
from pneumo.io.storage import redact_secrets, redact_url
from pneumo.nih.references import load_reference
from pneumo.reporting.report import metrics_table, subgroup_table

LIMITS = (
    "Research use only. **Not a medical device**: not cleared or approved for clinical use, and not to be "
    "used for diagnosis or treatment decisions.",
    "NIH ChestX-ray14's labels were **mined from radiology reports by NLP** (Wang et al. 2017); the "
    "pneumonia label is the noisiest of the 14. Figures against it measure agreement with report text, not "
    "with a radiologist's reading (see the report's \"Reference standards\" section: radiologists' labels where they cover the images).",
    "The demo data set (`data=demo`) is **synthetic**: drawn shapes in NIH's file layout. Any figure from "
    "it says the pipeline works, nothing about chest X-rays.",
    "One hospital's images (NIH Clinical Center, 1992-2015): performance on another site's images, "
    "scanners and population is unknown until measured there (docs/evaluation.md, 'A new site').",
)


def code_version() -> dict:
    """pneumo's installed version and, when the package lives in a git work tree, its commit (and whether
    the tree had uncommitted changes)."""
    try:
        version = importlib.metadata.version("pneumo")
    except importlib.metadata.PackageNotFoundError:
        version = None
    here = Path(__file__).resolve().parent
    commit, dirty = None, None
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip() or None  # fmt: skip
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                                capture_output=True, text=True, timeout=10, check=True).stdout  # fmt: skip
        dirty = bool(status.strip())
    except (OSError, subprocess.SubprocessError):
        pass
    return {"version": version, "git_commit": commit, "uncommitted_changes": dirty}


def data_fields(datamodule: Any) -> dict:
    """Label file and split lists (URL, sha256), images used and skipped, split counts of a set-up
    ``NIHDataModule``."""
    options, io = datamodule.storage.options_for, datamodule.storage.io
    hp = datamodule.hparams
    lists = dict(hp.get("split_lists") or {})
    raw_lists = dict(getattr(datamodule, "split_lists", None) or {})
    index, split, split_settings = datamodule.index, datamodule.split, datamodule.split_settings
    parts = split.as_dict()
    split.check_disjoint(index)  # raises if a patient is in two splits: never a card that claims otherwise
    counts: dict[str, dict[str, Any]] = {}
    for name, images in parts.items():
        sub = index.subset(images)
        counts[name] = {
            "images": len(images),
            "patients": int(sub.table["patient"].nunique()),
            "pneumonia": int(sub.pneumonia.sum()),
            "sha256": image_list_sha256(images),
        }
    used = sum(int(c["images"]) for c in counts.values())
    tables, cohort = dict(getattr(datamodule, "tables", None) or {}), getattr(datamodule, "cohort", None)

    def digest(url: str) -> str | None:
        # A bq:// table: the sha256 of its rows as read (sorted CSV); a file: of its bytes.
        return tables[url]["sha256"] if url in tables else sha256_of(url, options(url), io=io)

    skipped = {kind: len(names) for kind, names in getattr(datamodule, "skipped", {}).items()}
    return {
        "target": training_target(datamodule, digest),
        "labels": {
            "url": hp["labels_url"],
            "sha256": digest(datamodule.labels_url),
            **({"table": tables[datamodule.labels_url]} if datamodule.labels_url in tables else {}),
        },
        "split_lists": {name: {"url": lists[name], "sha256": digest(url)} for name, url in raw_lists.items()}
        or None,
        "cohort": cohort.record() if cohort is not None else None,
        "split_rule": (
            "official lists (patient-disjoint), validation carved from train_val by patient"
            if raw_lists
            else f"random patient split (val {split_settings.val_fraction}, test {split_settings.test_fraction})"
        )
        + f", split seed {split_settings.seed}",
        "views": split_settings.views,
        "images": {
            "indexed": len(index),
            "used": used,
            "not_in_any_split": len(index) - used - sum(skipped.values()),
            "skipped": skipped,
        },
        "splits": counts,
        "patient_disjoint": True,
        "images_url": hp["images_url"],
        "synthetic": bool(hp.get("synthetic")),
    }


def training_target(datamodule: Any, digest: Any = None) -> dict[str, Any]:
    """What the model was trained to predict (``data.labels``): ``nih`` (the label file's Pneumonia) or a
    reference's labels on the images it covers, with its file, sha256 and citation (``data.labels=rsna``:
    the RSNA radiologists, Shih et al. 2019, whose attribution goes with the model).

    Example:
        >>> training_target(type("DM", (), {"labels": "nih"})())["labels"]
        'nih'
    """
    name = str(getattr(datamodule, "labels", "nih") or "nih")
    if name == "nih":
        return {
            "labels": "nih",
            "title": "Pneumonia of the label file (NIH ChestX-ray14: NLP-mined from reports)",
        }
    reference = load_reference(
        name, getattr(datamodule, "references", None), getattr(datamodule, "labels_url", None)
    )
    return {
        "labels": name,
        "title": reference.title,
        "url": reference.source,
        "sha256": digest(reference.source) if digest is not None and reference.source else None,
        "citation": reference.citation,
    }


def initial_weights(model: Any) -> dict:
    """Where the network's first weights came from: the model's own record (``model.initial_weights``) when
    it keeps one, else the ``pretrained`` / ``init_weights`` file with its sha256, else random."""
    record = getattr(model, "initial_weights", None)
    if isinstance(record, Mapping):
        return dict(record)
    hp = getattr(model, "hparams", {}) or {}
    source = hp.get("pretrained") or hp.get("init_weights")
    if not source:
        return {
            "source": "random",
            "sha256": None,
            "note": "MONAI's default initialisation, seeded by `seed`",
        }
    try:
        return {"source": redact_url(str(source)), "sha256": sha256_of(str(source))}
    except (OSError, ValueError) as err:
        return {"source": redact_url(str(source)), "sha256": None, "note": f"not hashed: {err}"}


def determinism(trainer: Mapping) -> dict:
    """Whether the run can be repeated bit for bit: the trainer's ``deterministic`` and ``benchmark``
    settings, the device kind, and what that means (docs/scaling-and-sweeps.md, "Reproducibility").

    Example:
        >>> determinism({"accelerator": "cpu", "deterministic": False})["repeatable"]
        'bitwise on CPU: the same seed and config give the same weights and predictions'
    """
    import torch

    accelerator = str(trainer.get("accelerator") or "auto")
    gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    deterministic = trainer.get("deterministic")
    if not gpu:
        repeatable = "bitwise on CPU: the same seed and config give the same weights and predictions"
    elif deterministic in (True, "true"):
        repeatable = (
            "bitwise on GPU with deterministic algorithms (trainer.deterministic=true), on the same GPU model "
            "and library versions"
        )
    else:
        repeatable = (
            "not bitwise on GPU: fast non-deterministic algorithms (trainer.deterministic="
            f"{deterministic}); a rerun differs slightly. trainer.deterministic=true repeats bit for bit"
        )
    return {
        "device": "gpu" if gpu else "cpu",
        "deterministic": deterministic,
        "cudnn_benchmark": trainer.get("benchmark"),
        "repeatable": repeatable,
    }


def card_fields(cfg: Any, datamodule: Any, model: Any) -> dict:
    """Everything the card records before training (see the module docstring); plain data."""
    config: dict[str, Any]
    if OmegaConf.is_config(cfg):  # the run's DictConfig: its container is a dict
        try:
            config = cast("dict[str, Any]", OmegaConf.to_container(cfg, resolve=True))
        except Exception:  # noqa: BLE001 - outside a Hydra job ${hydra:...} cannot resolve: record it as written
            config = cast("dict[str, Any]", OmegaConf.to_container(cfg, resolve=False))
    else:
        config = dict(cfg)
    data = data_fields(datamodule) if getattr(datamodule, "split", None) is not None else None
    return {
        "model": {
            "task": str(getattr(model, "hparams", {}).get("task", "binary")),
            "net": (getattr(model, "hparams", {}) or {}).get("net", {}).get("_target_"),
        },
        "data": data,
        "initial_weights": initial_weights(model),
        "seed": config.get("seed"),
        "determinism": determinism(config.get("trainer") or {}),
        "pneumo": code_version(),
        "config": redact_secrets(config),
    }


def _row(name: str, value: Any) -> str:
    return f"| {name} | {'n/a' if value in (None, '') else value} |"


def card_markdown(fields: Mapping, report: Mapping | None) -> str:
    """``model_card.md``'s text from ``card_fields`` and the test report (``None``: not tested)."""
    lines = ["# Model card", "", *_model_lines(fields)]
    if fields.get("data"):
        lines += _data_lines(fields["data"])
    lines += ["## Test results", "", *(_test_lines(report) if report else ["Not tested (`test=false`).", ""])]
    lines += ["## Intended use and limits", "", *[f"- {line}" for line in LIMITS], ""]
    lines += [
        "## Composed config",
        "",
        "```yaml",
        OmegaConf.to_yaml(OmegaConf.create(dict(fields.get("config") or {}))).rstrip(),
        "```",
        "",
    ]
    return "\n".join(lines)


def _model_lines(fields: Mapping) -> list[str]:
    """The card's "Model" section: task, network, first weights, seed, code version."""
    code, weights = fields.get("pneumo") or {}, fields.get("initial_weights") or {}
    lines = ["## Model", "", "| field | value |", "|---|---|"]
    lines += [
        _row("task", (fields.get("model") or {}).get("task")),
        _row("network", (fields.get("model") or {}).get("net")),
        _row("initial weights", weights.get("source")),
        _row("initial weights sha256", weights.get("sha256")),
        _row("seed", fields.get("seed")),
        _row("repeatable", (fields.get("determinism") or {}).get("repeatable")),
        _row("pneumo version", code.get("version")),
        _row("git commit", code.get("git_commit")),
        _row("uncommitted changes", code.get("uncommitted_changes")),
        "",
    ]
    if weights.get("note"):
        lines += [f"Initial weights: {weights['note']}.", ""]
    return lines


def _data_lines(data: Mapping) -> list[str]:
    """The card's "Data" section: the files (with sha256), the images used and skipped, the split."""
    lines = ["## Data", "", "| field | value |", "|---|---|"]
    lines += [
        _row("label file", f"`{data['labels']['url']}`"),
        _row("label file sha256", data["labels"]["sha256"]),
    ]
    target = data.get("target") or {"labels": "nih"}
    if target["labels"] != "nih":
        lines += [
            _row("training target", f"{target['labels']}: {target.get('title')}"),
            _row("training labels file", f"`{target.get('url')}`"),
            _row("training labels file sha256", target.get("sha256")),
        ]
    for name, entry in (data.get("split_lists") or {}).items():
        lines += [
            _row(f"split list {name}", f"`{entry['url']}`"),
            _row(f"split list {name} sha256", entry["sha256"]),
        ]
    img = data["images"]
    lines += [
        _row(
            "images", f"`{data['images_url']}`" + (" (synthetic demo set)" if data.get("synthetic") else "")
        ),
        _row("split", data["split_rule"]),
        _row("views", data.get("views") or "all"),
        _row("images in the label index", img["indexed"]),
        _row("images used (train + val + test)", img["used"]),
        _row(
            "images skipped (missing / unreadable)", ", ".join(f"{k}: {v}" for k, v in img["skipped"].items())
        ),
        _row("indexed images in no split", img["not_in_any_split"]),
        "",
        *_cohort_lines(data.get("cohort")),
        "Patient-disjoint split (no patient in two splits; checked when this card was written):",
        "",
        "| split | images | patients | pneumonia | sha256 of the image list |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {n} | {c['images']} | {c['patients']} | {c['pneumonia']} | {c.get('sha256') or 'n/a'} |"
        for n, c in data["splits"].items()
    ]
    if target.get("citation"):
        lines += [
            "",
            f"Trained on {target.get('title')}, on the images it covers; cite: {target['citation']}",
        ]
    return [*lines, ""]


def _cohort_lines(cohort: Mapping | None) -> list[str]:
    """The cohort query (``data.cohort``): its text, parameters, tables' last-modified times, rows."""
    if not cohort:
        return []
    tables = ", ".join(f"`{t}` ({m or 'n/a'})" for t, m in (cohort.get("tables_modified") or {}).items())
    return [
        "Cohort (BigQuery; the images are in `cohort.csv` in the run folder):",
        "",
        "```sql",
        str(cohort["query"]),
        "```",
        "",
        "| field | value |",
        "|---|---|",
        _row("query parameters", f"`{cohort.get('params')}`"),
        _row("tables read (last modified)", tables),
        _row("rows returned", cohort.get("rows")),
        _row("of them in the label index", cohort.get("images_in_index")),
        _row("dry-run estimate, bytes", cohort.get("bytes_estimate")),
        _row("maximum_bytes_billed", cohort.get("maximum_bytes_billed")),
        _row("sha256 of the image list", cohort.get("sha256")),
        "",
    ]


def _test_lines(report: Mapping) -> list[str]:
    """The card's test results: counts, operating point, metrics with intervals, AUROC by subgroup."""
    t = report["threshold"]
    return [
        f"{report['counts']['images']} test images, {report['counts']['patients']} patients; operating point "
        f"probability ≥ {t['value']:.4f} (rule {t['rule']}, chosen on {t.get('chosen_on') or 'val'}); 95% "
        f"intervals: bootstrap over {report['bootstrap']['resamples']} resamples of {report['bootstrap']['unit']}s. "
        "Full report: `report.md`.",
        "",
        *metrics_table(report),
        "",
        "AUROC by subgroup:",
        "",
        *subgroup_table(report),
        "",
    ]


def figures_of_test(report: Mapping) -> dict:
    """The card's test figures from a report: counts, operating point, metrics with intervals, calibration,
    subgroups (plain data)."""
    return {k: report.get(k) for k in ("counts", "threshold", "metrics", "calibration", "subgroups")}


def record_test_results(checkpoint: str | Path, report: Mapping) -> None:
    """Add the test figures to the card inside a checkpoint this run wrote (``model_card.test``), atomically."""
    path = str(checkpoint)
    io = AtomicCheckpointIO()
    blob = io.load_checkpoint(path, map_location="cpu", weights_only=True)
    blob.setdefault("model_card", {})["test"] = figures_of_test(report)
    io.save_checkpoint(blob, path)


def write_model_card(fields: Mapping, report: Mapping | None, out_dir: str | Path) -> Path:
    """Write ``model_card.md`` into ``out_dir``; returns its path."""
    path = Path(out_dir) / "model_card.md"
    atomic_write_text(path, card_markdown(fields, report))
    return path
