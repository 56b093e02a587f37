"""Saliency checks of a checkpoint: the sanity check, faithfulness, CheXlocalize localization and the share of
heat in the lung fields, per explainer.

``saliency_report`` runs them on a batch of images (tensors at the checkpoint's input size, their labels,
each box reference's boxes, patients, lung masks); ``write_saliency`` writes ``saliency.json``, ``saliency.md``
and ``sanity.png``. Used by ``explain.py saliency.evaluate=true`` and by ``python -m pneumo sanity``
(``run_sanity``: the sanity check alone on ``n`` images of a split). What each check means and how to read
its verdict: docs/explanations.md.

Example:
    >>> report = run_sanity(SanitySettings(ckpt_path="last.ckpt", split="test", n=16, out_dir="out"))  # doctest: +SKIP
    >>> report["explainers"]["gradcam"]["sanity"]["verdict"]  # doctest: +SKIP
    'pass'
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pneumo.config import checked_number, choice, settings_from, to_plain
from pneumo.data.datamodule import SPLITS
from pneumo.errors import ConfigError
from pneumo.io.files import atomic_write_bytes, prepare_out_dir
from pneumo.io.reading import read_bytes
from pneumo.reporting.saliency import format_saliency, plot_sanity
from pneumo.xai.captum_metrics import infidelity_scores, max_sensitivity
from pneumo.xai.chexlocalize import localize_by_reference
from pneumo.xai.explainers import Explanation, explain, explainer_name, instantiate_explainers
from pneumo.xai.faithfulness import BASELINES, deletion_insertion
from pneumo.xai.sanity import format_sanity, sanity_check

log = logging.getLogger(__name__)

#: Files of a saliency run (``sanity`` command: ``sanity.*``; explain: ``saliency.*`` and ``sanity.png``).
SANITY_OUTPUTS = ("sanity.json", "sanity.md", "sanity.png")


@dataclass
class SaliencySettings:
    """``saliency:`` of ``conf/explain.yaml``.

    Attributes:
        evaluate: run the checks and write ``saliency.md`` / ``.json`` (and ``sanity.png``).
        n: images checked (the explained ones, pneumonia first).
        sanity: run the sanity check (about 12 explanations per image and explainer on DenseNet121).
        grid, steps, baseline: faithfulness: ``grid x grid`` patches, ``steps`` points per curve, ``black``
            (the image's darkest level), ``blur`` or ``mean`` baseline.
        resamples: patient-bootstrap resamples of the localization intervals.
        seed: seed of the random orders, image pairs and re-initialisations.
        captum_metrics: also Captum's infidelity and max-sensitivity (``pneumo.xai.captum_metrics``), each
            with ``perturbations`` draws per image: that many forward passes, and that many explanations.
    """

    evaluate: bool = False
    n: int = 16
    sanity: bool = True
    grid: int = 8
    steps: int = 16
    baseline: str = "black"
    resamples: int = 1000
    seed: int = 0
    captum_metrics: bool = False
    perturbations: int = 10

    def __post_init__(self) -> None:
        self.n = int(checked_number(self.n, "saliency.n", int, 2))
        self.grid = int(checked_number(self.grid, "saliency.grid", int, 2))
        self.steps = int(checked_number(self.steps, "saliency.steps", int, 1))
        self.resamples = int(checked_number(self.resamples, "saliency.resamples", int, 10, 100_000))
        self.perturbations = int(checked_number(self.perturbations, "saliency.perturbations", int, 1, 1000))
        choice(self.baseline, "saliency.baseline", BASELINES)


@dataclass
class Batch:
    """The images the checks run on.

    Attributes:
        images: ``(B, C, H, W)`` at the network's input size.
        labels: ``(B,)`` true labels (``-1`` unknown).
        boxes: per box reference (``nih``, ``rsna``...), one ``(k, 4)`` array per image in tensor pixels.
        patients: patient of each image (the bootstrap's clusters).
        lungs: ``(B, H, W)`` lung-field masks, ``None`` when unknown (real data; the demo set writes them).
    """

    images: torch.Tensor
    labels: np.ndarray
    boxes: dict[str, list[np.ndarray]] = field(default_factory=dict)
    patients: list[str] = field(default_factory=list)
    lungs: np.ndarray | None = None


def lung_share(maps: np.ndarray, lungs: np.ndarray) -> np.ndarray:
    """Per image, the share of the map's total heat inside the lung fields (``(B, H, W)`` maps and masks;
    ``NaN`` for an all-zero map). A uniform map scores the lungs' share of the image.

    Example:
        >>> heat = np.zeros((1, 4, 4)); heat[0, 0, 0] = 3.0; heat[0, 3, 3] = 1.0
        >>> lungs = np.zeros((1, 4, 4), bool); lungs[0, 2:, 2:] = True
        >>> lung_share(heat, lungs).tolist()
        [0.25]
    """
    total = maps.reshape(len(maps), -1).sum(1)
    inside = (maps * lungs).reshape(len(maps), -1).sum(1)
    return np.divide(inside, total, out=np.full(len(maps), np.nan), where=total > 0)


def _finite(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def _positives(batch: Batch) -> np.ndarray:
    """Indices of the batch's positives (all images when no label says pneumonia)."""
    keep = np.flatnonzero(batch.labels == 1)
    return keep if len(keep) else np.arange(len(batch.labels))


def _faithfulness(
    model: nn.Module, batch: Batch, keep: np.ndarray, explained: Explanation, s: SaliencySettings
) -> dict:
    """Mean deletion/insertion AUCs and curves (heat order and random order) on the images ``keep``."""
    idx = torch.as_tensor(keep, device=batch.images.device)
    curves = deletion_insertion(
        model,
        batch.images[idx],
        explained.maps[idx],
        explained.targets[idx],
        s.grid,
        s.steps,
        s.baseline,
        s.seed,
    )
    out: dict[str, Any] = {"n": len(keep), "baseline": s.baseline, "grid": s.grid, "steps": s.steps}
    for name, values in curves.items():
        mean = values.float().mean(0).cpu()
        out[name] = mean.tolist() if mean.ndim else float(mean)
    return out


def _captum_metrics(
    model: nn.Module, batch: Batch, keep: np.ndarray, explainer: Callable[..., Any], target: Any,
    explained: Explanation, s: SaliencySettings,
) -> dict[str, Any]:  # fmt: skip
    """Mean infidelity and max-sensitivity on the images ``keep``, with what each cost per image."""
    idx = torch.as_tensor(keep, device=batch.images.device)
    images = batch.images[idx]
    start = time.perf_counter()
    infidelity = infidelity_scores(
        model, images, explained.maps[idx], explained.targets[idx], s.perturbations, s.seed
    )
    middle = time.perf_counter()
    sensitivity = max_sensitivity(
        lambda x: explain(explainer, model, x, target).maps, images, s.perturbations, s.seed
    )
    end = time.perf_counter()
    return {
        "n": len(keep),
        "perturbations": s.perturbations,
        "infidelity": float(infidelity.mean()),
        "sensitivity_max": float(sensitivity.mean()),
        "infidelity_ms_per_image": 1000.0 * (middle - start) / len(keep),
        "sensitivity_ms_per_image": 1000.0 * (end - middle) / len(keep),
    }


def explainer_row(
    model: nn.Module, batch: Batch, explainer: Callable[..., Any], target: Any, settings: SaliencySettings
) -> dict[str, Any]:
    """One explainer's checks except the sanity check: ms per image, faithfulness (and, when asked, Captum's
    infidelity and max-sensitivity), localization by reference (images with boxes), lung-field share (when
    masks are known)."""
    start = time.perf_counter()
    explained = explain(explainer, model, batch.images, target)
    row: dict[str, Any] = {"ms_per_image": 1000.0 * (time.perf_counter() - start) / len(batch.images)}
    row["passes"] = getattr(explainer, "passes", None)
    # faithfulness, Captum's metrics and the lung share on the positives: the heat of a pneumonia output on
    # a normal film shows nothing the model read
    keep = _positives(batch)
    row["faithfulness"] = _faithfulness(model, batch, keep, explained, settings)
    if settings.captum_metrics:
        row["captum"] = _captum_metrics(model, batch, keep, explainer, target, explained, settings)
    maps = explained.maps.cpu().numpy()
    if any(len(b) for per_image in batch.boxes.values() for b in per_image):
        row["localization"] = localize_by_reference(
            list(maps), batch.boxes, batch.patients or None, resamples=settings.resamples, seed=settings.seed
        )
    if batch.lungs is not None:
        shares = lung_share(maps[keep], batch.lungs[keep])
        row["lung_share"] = _finite(float(np.nanmean(shares))) if np.isfinite(shares).any() else None
        row["lung_area"] = float(batch.lungs[keep].mean())
    return row


def saliency_report(
    model: nn.Module,
    batch: Batch,
    explainers: Mapping[str, Callable[..., Any]],
    target: Any,
    settings: SaliencySettings,
) -> dict[str, Any]:
    """Per explainer: ``explainer_row``'s checks and (``settings.sanity``) the sanity check; with
    ``cost_vs_gradcam`` (ms per image over Grad-CAM's) when ``gradcam`` is among them."""
    out = {name: explainer_row(model, batch, e, target, settings) for name, e in explainers.items()}
    if settings.sanity:
        for name, result in sanity_check(model, batch.images, explainers, target, settings.seed).items():
            out[name]["sanity"] = result.as_dict()
    reference = out.get("gradcam", {}).get("ms_per_image")
    if reference:
        for row in out.values():
            row["cost_vs_gradcam"] = row["ms_per_image"] / reference
    return {
        "n_images": len(batch.images),
        "positives": int((batch.labels == 1).sum()),
        "target": target,
        "settings": asdict(settings),
        "explainers": out,
    }


def write_saliency(out: Path, report: Mapping, stem: str = "saliency") -> None:
    """``<stem>.json``, ``<stem>.md`` and (with a sanity check) ``sanity.png`` in ``out``."""
    atomic_write_bytes(out / f"{stem}.json", (json.dumps(report, indent=2) + "\n").encode())
    atomic_write_bytes(out / f"{stem}.md", ("\n".join(format_saliency(report)) + "\n").encode())
    if any("sanity" in row for row in report["explainers"].values()):
        plot_sanity(report, out / "sanity.png")


def lung_masks(
    locations: Sequence[str], size: int, read: Callable[[str], bytes] = read_bytes
) -> np.ndarray | None:
    """``(B, size, size)`` lung-field masks of images from the demo set's ``lung_masks/<stem>.png`` beside
    their ``images/`` folder, or ``None`` when some image has none (real data: no masks)."""
    from PIL import Image

    masks = []
    for location in locations:
        path = location.replace(os.sep, "/")
        if "/images/" not in path:
            return None
        root, name = path.rsplit("/images/", 1)
        try:
            data = read(f"{root}/lung_masks/{os.path.splitext(name)[0]}.png")
        except (OSError, ValueError):
            return None
        mask = Image.open(io.BytesIO(data)).convert("L").resize((size, size), Image.Resampling.NEAREST)
        masks.append(np.asarray(mask) > 127)
    return np.stack(masks) if masks else None


# ---------------------------------------------------------------------------------------------- the command
@dataclass
class SanitySettings:
    """``python -m pneumo sanity`` (``conf/sanity.yaml``): the sanity check on ``n`` images of the
    checkpoint's ``split``, drawn with ``seed``; ``explainer``: ``{name: spec}`` (``None``: ``DEFAULT_SANITY``)."""

    ckpt_path: str
    out_dir: str
    split: str = "test"
    n: int = 16
    explainer: dict[str, Any] | None = None
    target: int | str = "pneumonia"
    seed: int = 0
    device: str = "cpu"
    overwrite: bool = False

    def __post_init__(self) -> None:
        choice(self.split, "split", SPLITS)
        self.n = int(checked_number(self.n, "n", int, 2))
        self.explainer = dict(to_plain(self.explainer)) if self.explainer else None
        self.ckpt_path, self.out_dir = str(self.ckpt_path), str(self.out_dir)

    @classmethod
    def from_config(cls, cfg: Any) -> SanitySettings:
        plain = to_plain(cfg)
        return settings_from(
            cls, {k: v for k, v in plain.items() if k not in ("task_name", "paths", "hydra")}
        )


def load_batch(run: Any, names: Sequence[str], device: torch.device) -> Batch:
    """The named images of ``run``'s data set at its input size, with labels (``-1`` unknown), patients, the
    data set's NIH pneumonia boxes (``nih``, in tensor pixels; when it has a box file) and lung masks (when the
    data set has them)."""
    from pneumo.data.inputs import ImageRef, Preprocessor, io_for, load_image, options_for, read_bytes
    from pneumo.nih.boxes import load_boxes, scaled_to
    from pneumo.nih.index import NIHLabelIndex

    refs = [ImageRef(n, run.image_location(n)) for n in names]
    labels_url = run.datamodule.hparams.get("labels_url")
    label_of: dict[str, int] = {}
    patient_of: dict[str, str] = {}
    if labels_url:
        options = options_for(labels_url, run.storage)
        table = NIHLabelIndex.from_csv(labels_url, options, io=io_for(run.storage)).table
        label_of = dict(zip(table["image"].astype(str), table["pneumonia"].astype(int)))
        patient_of = dict(zip(table["image"].astype(str), table["patient"].astype(str)))
    prep = Preprocessor(run.image_size, dicom_voi=run.dicom_voi)
    loaded = [load_image(r, prep, run.storage) for r in refs]
    boxes: dict[str, list[np.ndarray]] = {}
    bbox_url = run.datamodule.hparams.get("bbox_url")
    given = (
        load_boxes(bbox_url, options_for(bbox_url, run.storage), io_for(run.storage)) if bbox_url else None
    )
    if given is not None:
        size = (run.image_size, run.image_size)
        boxes["nih"] = [scaled_to(given.for_image(n), it.source_shape, size) for n, it in zip(names, loaded)]
    return Batch(
        torch.stack([it.tensor for it in loaded]).to(device),
        np.array([label_of.get(n, -1) for n in names]),
        boxes=boxes,
        patients=[patient_of.get(n, n) for n in names],
        lungs=lung_masks(
            [r.location for r in refs], run.image_size, lambda url: read_bytes(url, run.storage)
        ),
    )


def pick(names: Sequence[str], n: int, seed: int) -> list[str]:
    """``n`` of ``names``, drawn with ``seed`` (all of them when there are fewer), in their own order.

    Example:
        >>> pick(["a", "b", "c", "d"], 2, seed=0), pick(["a"], 2, seed=0)
        (['c', 'd'], ['a'])
    """
    if len(names) <= n:
        return list(names)
    chosen = np.random.default_rng(seed).choice(len(names), size=n, replace=False)
    return [names[i] for i in sorted(chosen)]


def run_sanity(settings: SanitySettings) -> dict:
    """The sanity check of ``settings.explainer`` (default ``DEFAULT_SANITY``) on ``n`` images of the split;
    writes ``sanity.json``, ``sanity.md`` and ``sanity.png`` into ``out_dir`` and logs one line per explainer."""
    from pneumo.pipelines.runs import load_run

    out = prepare_out_dir(settings.out_dir, SANITY_OUTPUTS, settings.overwrite, "sanity")
    device = torch.device(settings.device)
    run = load_run(settings.ckpt_path, map_location=device)
    model = run.model.to(device)
    names = pick(run.datamodule.split_images(settings.split), settings.n, settings.seed)
    if len(names) < 2:
        raise ConfigError(
            f"split={settings.split} has {len(names)} image(s); the sanity check needs 2 or more"
        )
    batch = load_batch(run, names, device)
    explainers = instantiate_explainers(settings.explainer or DEFAULT_SANITY)
    results = sanity_check(model, batch.images, explainers, settings.target, settings.seed)
    report = {
        "checkpoint": settings.ckpt_path,
        "split": settings.split,
        "n_images": len(names),
        "target": settings.target,
        "explainers": {name: {"sanity": r.as_dict()} for name, r in results.items()},
        "explainer_classes": {name: explainer_name(e) for name, e in explainers.items()},
    }
    write_saliency(out, report, stem="sanity")
    for line in format_sanity(results):
        log.info("%s", line)
    return report


#: The explainers of the sanity command unless told: the ones the literature tells apart, and the floor.
DEFAULT_SANITY: dict[str, Any] = {
    "gradcam": {"_target_": "pneumo.xai.explainers.GradCamExplainer"},
    "integrated_gradients": {"_target_": "pneumo.xai.explainers.IntegratedGradientsExplainer", "n_steps": 16},
    "guided_gradcam": {"_target_": "pneumo.xai.explainers.GuidedGradCamExplainer"},
    "random": {"_target_": "pneumo.xai.explainers.RandomExplainer"},
}
