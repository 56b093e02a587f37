"""The pipeline behind ``pneumo-export``: a run's classifier as TorchScript, ONNX or a MONAI bundle, with a
``model_meta.json`` that says how to feed it and read it.

Formats (``format=``) and what ``out_dir`` holds:

=============  ==========================================================================================
``torchscript`` ``model.ts`` (``torch.jit.trace`` of the classifier in eval mode; ``torch.jit.load`` it)
``onnx``        ``model.onnx`` (opset ``ONNX_OPSET``, dynamic batch axis; input ``image``, output ``logits``)
``bundle``      a MONAI bundle: ``configs/metadata.json``, ``configs/inference.json``, ``models/model.pt``,
                ``docs/README.md``, ``LICENSE`` (``pneumo.pipelines.bundle``)
=============  ==========================================================================================

Every export takes grey ``(B, 1, S, S)`` float32 images in [0, 1], preprocessed as pneumo preprocesses them
(``model_meta.json``, "preprocessing"), and returns the raw logits: the probability is
``softmax(logits / T)[:, 1]`` (binary) or ``sigmoid(logits / T)`` (multi-label) with the temperature ``T``
of ``model_meta.json``, and an image is called positive when its pneumonia probability is at least the
threshold there. ``heatmap=true`` adds a second output, ``heatmap`` ``(B, S, S)``: the class activation map
of the pneumonia output at the last feature layer (``pneumo.xai.cam``), equal to pneumo's Grad-CAM with
``gradcam.layer=class_layers.relu``.

TorchScript and ONNX exports are checked before anything is written: the exported model is run (TorchScript
loaded back, ONNX through onnxruntime) on real images (``inputs=``, or the first ``check_images`` of the
checkpoint's test split) and compared with the PyTorch model; the largest logit difference is printed and
above ``TOLERANCE`` the export fails.

Example:
    >>> settings = ExportSettings(ckpt_path="last.ckpt", format="onnx", out_dir="export")  # doctest: +SKIP
    >>> export_model(settings).max_logit_difference  # doctest: +SKIP
    2.4e-07
"""

from __future__ import annotations

import inspect
import io
import json
import logging
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pneumo.config import checked_number, choice, settings_from, to_plain
from pneumo.data.inputs import ImageRef, load_image, resolve_inputs
from pneumo.errors import ConfigError, PneumoError
from pneumo.images.dicom import check_voi
from pneumo.images.preprocess import Preprocessor
from pneumo.io.files import atomic_write_bytes, sha256_of
from pneumo.models.classifier import PneumoniaClassifier
from pneumo.nih.findings import FINDINGS, PNEUMONIA
from pneumo.pipelines.runs import Run, load_run
from pneumo.reporting.model_card import code_version
from pneumo.xai.cam import CAM_LAYER, ClassActivationModel

log = logging.getLogger(__name__)

#: ``format=`` values.
FORMATS = ("torchscript", "onnx", "bundle")
#: The ONNX opset of ``model.onnx``.
ONNX_OPSET = 17
#: Largest logit difference (exported vs PyTorch) an export may have.
TOLERANCE = 1e-4
#: Largest heatmap difference (values in [0, 1]; the per-image normalisation divides by the map's range).
HEATMAP_TOLERANCE = 1e-3
#: What every export says about its use.
NOT_FOR_CLINICAL_USE = (
    "Not for clinical use: research software, not a medical device; not cleared or approved for diagnosis or "
    "treatment decisions."
)
#: What an export writes into ``out_dir`` (``overwrite=true`` deletes these, and only these).
OUTPUTS = ("model_meta.json", "model.ts", "model.onnx", "configs", "models", "docs", "LICENSE", "predictions")


class ExportError(PneumoError, RuntimeError):
    """An export that cannot be made or does not reproduce the model; the message says which and why."""


@dataclass
class ExportSettings:
    """The keys of ``conf/export.yaml``, checked once (a bad value is a one-line ``ConfigError``).

    Attributes:
        ckpt_path: training checkpoint (``.ckpt``) written by ``train.py``, local or URL.
        format: ``torchscript``, ``onnx`` or ``bundle``.
        out_dir: the export's folder; an existing folder that is not empty is refused unless ``overwrite``.
        heatmap: add the class activation map output (``pneumo.xai.cam``).
        overwrite: delete an earlier export's files in ``out_dir`` first.
        inputs: images the export is checked on (an image, a folder, a ``.txt`` list); ``None`` = the first
            ``check_images`` images of the checkpoint's test split.
        check_images: how many images the check runs on.
        storage: ``StorageSettings`` keys replacing the checkpoint's (``None`` values keep them).

    Example:
        >>> ExportSettings(ckpt_path="last.ckpt", format="onxx", out_dir="x")
        Traceback (most recent call last):
        ...
        pneumo.errors.ConfigError: format='onxx': choose one of 'torchscript', 'onnx', 'bundle' (did you mean 'onnx'?)
    """

    ckpt_path: str
    format: str
    out_dir: str
    heatmap: bool = False
    overwrite: bool = False
    inputs: str | None = None
    check_images: int = 8
    storage: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        self.format = choice(self.format, "format", FORMATS)
        self.ckpt_path, self.out_dir = str(self.ckpt_path), str(self.out_dir)
        if self.heatmap and self.format == "bundle":
            raise ConfigError(
                "heatmap=true is for format=torchscript or onnx: the bundle writes probabilities (explain.py "
                "draws heatmaps from the checkpoint)"
            )
        self.check_images = int(checked_number(self.check_images, "check_images", int, 1))
        self.storage = dict(to_plain(self.storage)) if self.storage is not None else None

    @classmethod
    def from_config(cls, cfg: Any) -> ExportSettings:
        """The settings of a ``conf/export.yaml`` config (its ``task_name``, ``paths``, ``hydra`` left out)."""
        plain = to_plain(cfg)
        return settings_from(
            cls, {k: v for k, v in plain.items() if k not in ("task_name", "paths", "hydra")}
        )


@dataclass
class ExportResult:
    """What an export wrote: its folder, the model file, ``model_meta.json``'s content and the check's figures."""

    out_dir: str
    model_file: str
    meta: dict = field(default_factory=dict)
    max_logit_difference: float | None = None
    max_heatmap_difference: float | None = None
    checked_images: int = 0


def prepare_out_dir(out_dir: str, overwrite: bool) -> Path:
    """``out_dir`` created, or emptied of an earlier export's files with ``overwrite``; a folder that
    already holds something is refused otherwise (one line)."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"out_dir={out} is a file; choose a folder")
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise ConfigError(
                f"out_dir={out} already exists and is not empty: choose a new out_dir, or pass overwrite=true "
                f"to replace an earlier export there ({', '.join(OUTPUTS)})"
            )
        for name in OUTPUTS:
            path = out / name
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            elif path.exists() or path.is_symlink():
                path.unlink()
    out.mkdir(parents=True, exist_ok=True)
    return out


def export_model(settings: ExportSettings) -> ExportResult:
    """Export the classifier of ``settings.ckpt_path`` (see the module docstring).

    Example:
        >>> export_model(ExportSettings(ckpt_path="last.ckpt", format="torchscript", out_dir="ts"))  # doctest: +SKIP
    """
    run = load_run(settings.ckpt_path, storage=settings.storage, storage_key="storage")
    model = run.model.cpu().eval()
    module = exported_module(model, settings.heatmap)
    images = check_batch(run, settings)
    out = prepare_out_dir(settings.out_dir, settings.overwrite)
    meta = model_meta(run, settings)
    result = ExportResult(out_dir=str(out), model_file="", meta=meta, checked_images=len(images))
    if settings.format == "bundle":
        from pneumo.pipelines.bundle import write_bundle  # MONAI's bundle layout only when asked for

        result.model_file = write_bundle(run, out, meta)
        meta["file"] = result.model_file
        atomic_write_bytes(out / "model_meta.json", (json.dumps(meta, indent=2) + "\n").encode())
        return result
    blob = _torchscript(module, images) if settings.format == "torchscript" else _onnx(module, images)
    differences = _check(settings.format, blob, module, images)
    result.max_logit_difference, result.max_heatmap_difference = differences
    meta["check"] = {
        "images": len(images),
        "max_abs_logit_difference": differences[0],
        "max_abs_heatmap_difference": differences[1],
        "tolerance": TOLERANCE,
    }
    name = "model.ts" if settings.format == "torchscript" else "model.onnx"
    atomic_write_bytes(out / name, blob, fix="free space there or choose another out_dir")
    result.model_file = name
    meta["file"] = result.model_file
    atomic_write_bytes(out / "model_meta.json", (json.dumps(meta, indent=2) + "\n").encode())
    return result


def exported_module(model: PneumoniaClassifier, heatmap: bool) -> nn.Module:
    """What is exported: ``image -> logits`` (the classifier's ``forward``, input normalisation included), or
    ``image -> (logits, heatmap)`` with ``heatmap``."""
    if heatmap:
        return ClassActivationModel(model, target=model.task.pneumonia_output).eval()
    return _Logits(model).eval()


class _Logits(nn.Module):
    """The classifier's ``forward`` alone (no Lightning machinery in the traced graph)."""

    def __init__(self, model: PneumoniaClassifier) -> None:
        super().__init__()
        self.adapter, self.net = model.input_adapter, model.net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.adapter(x))


def check_batch(run: Run, settings: ExportSettings) -> torch.Tensor:
    """``(N, 1, S, S)``: the images the export is checked on, preprocessed as pneumo does (``inputs``, or the
    first ``check_images`` of the test split)."""
    if settings.inputs is not None:
        refs, _ = resolve_inputs(str(settings.inputs), run.storage)
    else:
        names = run.datamodule.split_images("test")
        refs = [ImageRef(name, run.image_location(name)) for name in names]
    refs = refs[: settings.check_images]
    if not refs:
        raise ConfigError(
            f"no image to check the export on: pass inputs=FOLDER_OR_LIST (checkpoint {settings.ckpt_path})"
        )
    preprocess = Preprocessor(run.image_size, dicom_voi=check_voi(run.dicom_voi))
    try:
        return torch.stack([load_image(ref, preprocess, run.storage).tensor for ref in refs])
    except (OSError, ValueError) as err:
        raise ConfigError(
            f"cannot read the images the export is checked on ({str(err).splitlines()[0]}): pass "
            "inputs=FOLDER_OR_LIST of images this machine can read"
        ) from err


def _torchscript(module: nn.Module, images: torch.Tensor) -> bytes:
    with torch.no_grad():
        traced = torch.jit.trace(module, images[:1], check_trace=False)
    buffer = io.BytesIO()
    torch.jit.save(traced, buffer)
    return buffer.getvalue()


def output_names(heatmap: bool) -> list[str]:
    """The exported outputs' names (ONNX output names, TorchScript tuple order)."""
    return ["logits", "heatmap"] if heatmap else ["logits"]


def _onnx(module: nn.Module, images: torch.Tensor) -> bytes:
    try:
        import onnx  # noqa: F401 - torch.onnx needs it; a missing extra is said in one line
    except ModuleNotFoundError as err:
        raise ExportError('format=onnx needs the export extra: pip install "pneumo[export]"') from err
    names = output_names(isinstance(module, ClassActivationModel))
    kwargs: dict[str, Any] = {}
    if "dynamo" in inspect.signature(torch.onnx.export).parameters:
        kwargs["dynamo"] = False  # the TorchScript-based exporter: no onnxscript, dynamic_axes as written
    buffer = io.BytesIO()
    with torch.no_grad():
        torch.onnx.export(
            module,
            (images[:1],),
            buffer,  # type: ignore[arg-type]  # a file object works too (torch.onnx's own docs)
            opset_version=ONNX_OPSET,
            input_names=["image"],
            output_names=names,
            dynamic_axes={name: {0: "batch"} for name in ["image", *names]},
            **kwargs,
        )
    return buffer.getvalue()


def run_exported(fmt: str, blob: bytes, images: torch.Tensor) -> list[np.ndarray]:
    """The outputs of an exported model (``model.ts`` / ``model.onnx`` bytes) on ``images``."""
    if fmt == "torchscript":
        loaded = torch.jit.load(io.BytesIO(blob), map_location="cpu")
        with torch.no_grad():
            outputs = loaded(images)
        outputs = outputs if isinstance(outputs, tuple) else (outputs,)
        return [o.numpy() for o in outputs]
    try:
        import onnxruntime
    except ModuleNotFoundError as err:
        raise ExportError('format=onnx needs the export extra: pip install "pneumo[export]"') from err
    session = onnxruntime.InferenceSession(blob, providers=["CPUExecutionProvider"])
    return [np.asarray(o) for o in session.run(None, {"image": images.numpy()})]


def _check(fmt: str, blob: bytes, module: nn.Module, images: torch.Tensor) -> tuple[float, float | None]:
    """Run the export and the PyTorch model on ``images``; the largest logit (and heatmap) difference, or
    ``ExportError`` above the tolerance."""
    with torch.no_grad():
        reference = module(images)
    reference = reference if isinstance(reference, tuple) else (reference,)
    exported = run_exported(fmt, blob, images)
    logit = float(np.abs(exported[0] - reference[0].numpy()).max())
    heat = float(np.abs(exported[1] - reference[1].numpy()).max()) if len(reference) > 1 else None
    log.info(
        "%s check on %d image(s): max abs logit difference %.3g%s", fmt, len(images), logit,
        "" if heat is None else f", max abs heatmap difference {heat:.3g}",
    )  # fmt: skip
    if not logit <= TOLERANCE or (heat is not None and not heat <= HEATMAP_TOLERANCE):
        raise ExportError(
            f"the {fmt} export does not reproduce the PyTorch model: max abs logit difference {logit:.3g} "
            f"(tolerance {TOLERANCE:g})"
            + ("" if heat is None else f", heatmap {heat:.3g}")
            + "; nothing written"
        )
    return logit, heat


def model_meta(run: Run, settings: ExportSettings) -> dict[str, Any]:
    """``model_meta.json``: what another program needs to feed the export and read its outputs."""
    model, size = run.model, run.image_size
    task = model.task
    card = dict(model.model_card or {})
    return {
        "notice": NOT_FOR_CLINICAL_USE,
        "format": settings.format,
        "file": None,
        "input": {
            "name": "image",
            "shape": ["batch", 1, size, size],
            "dtype": "float32",
            "channels": 1,
            "value_range": [0.0, 1.0],
        },
        "preprocessing": preprocessing_meta(run),
        "outputs": _outputs_meta(model, settings.heatmap, size),
        "task": task.name,
        "temperature": {"value": float(model.temperature), **_plain(model.calibration)},
        "threshold": {
            "value": float(model.threshold),
            "applies_to": f"the {PNEUMONIA} probability (positive when probability >= threshold)",
            "how_chosen": _plain(model.operating_point),
            **(
                {"per_finding": dict(zip(FINDINGS, map(float, model.thresholds.tolist())))}
                if task.findings
                else {}
            ),
        },
        "training": _training_meta(run, card),
        "pneumo": code_version(),
        "torch_version": torch.__version__,
        "onnx_opset": ONNX_OPSET if settings.format == "onnx" else None,
        "checkpoint": {
            "path": run.checkpoint,
            "sha256": sha256_of(run.checkpoint),
            "epoch": model.checkpoint_epoch,
        },
        "exported_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def preprocessing_meta(run: Run) -> dict[str, Any]:
    """pneumo's preprocessing chain (``pneumo.images.preprocess``), spelled out so another program repeats it."""
    size = run.image_size
    norm = run.model.hparams.get("input_norm")
    return {
        "summary": f"decode to 8-bit grey -> box-filter resize to {size}x{size} uint8 -> min-max scale to [0, 1] "
        "float32 -> (B, 1, H, W)",
        "steps": [
            {
                "step": "decode",
                "how": "8-bit grey (H, W) uint8: 'L' images as they are; RGB(A), palette and LA become luminance "
                "with Pillow's Image.convert('L') (ITU-R 601-2: L = R*299/1000 + G*587/1000 + B*114/1000); "
                "16/32-bit images are scaled over their own range, round((x - min) * 255 / (max - min)); DICOM "
                f"through its VOI LUT/window (data.images.dicom_voi={run.dicom_voi}) to 8 bits",
            },
            {
                "step": "resize",
                "how": f"Pillow Image.resize(({size}, {size}), Image.Resampling.BOX) on the uint8 image: area "
                "averaging (each output pixel the mean of the source area it covers, rounded to uint8); "
                "non-square images are stretched; skipped when the image is already that size",
                "output": f"({size}, {size}) uint8",
            },
            {
                "step": "scale_intensity",
                "how": "float32 (x - min(x)) / (max(x) - min(x)) over the image (MONAI ScaleIntensity(minv=0, "
                "maxv=1)); a constant image becomes all zeros",
                "output": f"(1, {size}, {size}) float32 in [0, 1]",
            },
            {"step": "batch", "how": f"stack to (B, 1, {size}, {size}) float32"},
        ],
        "input_normalisation": (
            "none: the network takes grey [0, 1] as it is"
            if norm is None
            else f"{norm} (inside the exported model: the grey image is replicated to 3 channels, minus the "
            "mean, over the std); feed grey [0, 1]"
        ),
    }


def _outputs_meta(model: PneumoniaClassifier, heatmap: bool, size: int) -> list[dict[str, Any]]:
    task = model.task
    classes = list(task.findings) if task.findings else ["no pneumonia", "pneumonia"]
    probability = (
        "sigmoid(logits / temperature): one probability per finding"
        if task.findings
        else "softmax(logits / temperature, axis=1)[:, 1]: the pneumonia probability"
    )
    outputs: list[dict[str, Any]] = [
        {
            "name": "logits",
            "shape": ["batch", task.outputs],
            "classes": classes,
            "pneumonia_output": task.pneumonia_output,
            "probability": probability,
            "note": "raw logits, before the temperature",
        }
    ]
    if heatmap:
        outputs.append(
            {
                "name": "heatmap",
                "shape": ["batch", size, size],
                "value_range": [0.0, 1.0],
                "what": f"class activation map of output {task.pneumonia_output} ({PNEUMONIA}) at the last "
                f"feature layer ({CAM_LAYER}): ReLU(sum_c w_c A_c), bilinear to the input size, normalised per "
                "image to [0, 1] (an all-zero map stays zero); equals pneumo's Grad-CAM with "
                f"gradcam.layer={CAM_LAYER}. Normalised per image: a confident negative still has a hottest spot",
            }
        )
    return outputs


def _training_meta(run: Run, card: Mapping) -> dict[str, Any]:
    """The training data's reference standard and split, from the run's model card (else its data settings)."""
    hp = run.datamodule.hparams
    data = dict(card.get("data") or {})
    labels = data.get("labels") or {"url": hp.get("labels_url")}
    target = data.get("target") or {"labels": "nih"}
    trained_on = (
        f"{PNEUMONIA} labels of {labels.get('url')} (NIH ChestX-ray14: labels mined from radiology reports "
        "by NLP, not a radiologist's reading)"
        if target["labels"] == "nih"
        else f"{target.get('title')} ({target.get('url')}), on the images it covers; {target.get('citation')}"
    )
    return {
        "reference_standard": trained_on,
        "labels": _plain(labels),
        "split": data.get("split_rule") or _plain(hp.get("split")),
        "split_counts": _plain(data.get("splits") or data.get("counts")),
        "synthetic": data.get("synthetic"),
        "image_size": run.image_size,
        "seed": card.get("seed"),
        "code": _plain(card.get("pneumo")),
    }


def _plain(value: Any) -> Any:
    """JSON-ready copy (numbers, strings, lists, dicts; anything else as its string)."""
    return json.loads(json.dumps(to_plain(value), default=str)) if value is not None else None
