"""A run's classifier as a MONAI bundle (``pneumo-export format=bundle``): what the MONAI ecosystem (Model Zoo,
MONAI Deploy, MONAI Label) takes, run with ``python -m monai.bundle run --config_file configs/inference.json``.

The bundle folder::

    configs/metadata.json    MONAI's metadata: versions, network_data_format (input/output), intended use
    configs/inference.json   MONAI components: LoadImaged -> grey 8-bit -> box-filter resize -> ScaleIntensityd
                             -> Resized -> EnsureTyped, the network (its ``_target_`` as trained), SimpleInferer;
                             reads ``input_dir`` (PNGs) and writes ``output_dir/probabilities.csv``
    models/model.pt          the network's state dict (``torch.load(weights_only=True)`` reads it)
    docs/README.md           what it is, how to run it, the preprocessing, temperature and threshold
    LICENSE                  Apache-2.0 (pneumo's), with the data's terms
    model_meta.json          as every pneumo export (``pneumo.pipelines.export.model_meta``)

The preprocessing is pneumo's, step for step (``pneumo.images.preprocess``): MONAI's ``Resized(mode="area")``
alone is not the same resize (adaptive average pooling takes whole source pixels where Pillow's box filter
weighs the partial ones, and it does not round to 8 bits), so the box-filter resize is Pillow's own call in a
``Lambdad``, and ``Resized`` follows as pneumo's no-op safeguard. The probabilities equal ``explain.py``'s.

Example:
    >>> write_bundle(run, Path("bundle"), meta)  # doctest: +SKIP
    'models/model.pt'
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import monai
import numpy as np
import PIL
import torch

from pneumo.io.files import atomic_write_bytes
from pneumo.models.pretrained import INPUT_NORMS
from pneumo.pipelines.runs import Run

#: The MONAI bundle metadata schema the metadata follows.
META_SCHEMA = (
    "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20240725.json"
)
#: Where ``inference.json`` writes, under ``output_dir``.
PROBABILITIES = "probabilities.csv"


def write_bundle(run: Run, out: Path, meta: dict[str, Any]) -> str:
    """Write the bundle of ``run`` into ``out`` (see the module docstring); returns the weights' path in it."""
    model = run.model
    buffer = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in model.net.state_dict().items()}, buffer)
    atomic_write_bytes(out / "models" / "model.pt", buffer.getvalue())
    _write_json(out / "configs" / "inference.json", inference_config(run))
    _write_json(out / "configs" / "metadata.json", metadata(run, meta))
    atomic_write_bytes(out / "docs" / "README.md", readme(run, meta).encode())
    atomic_write_bytes(out / "LICENSE", LICENSE.encode())
    return "models/model.pt"


def _write_json(path: Path, value: Any) -> None:
    atomic_write_bytes(path, (json.dumps(value, indent=2) + "\n").encode())


def inference_config(run: Run) -> dict[str, Any]:
    """``configs/inference.json``: a folder of PNGs -> ``probabilities.csv`` (image, probability, label)."""
    model, size = run.model, run.image_size
    net = dict(model.hparams["net"])
    norm = model.hparams.get("input_norm")
    steps: list[dict[str, Any]] = [
        # (H, W) grey as Pillow decodes it: colour to luminance as pneumo's decode does (convert("L"))
        {"_target_": "LoadImaged", "keys": "image", "reader": "PILReader", "reverse_indexing": False,
         "converter": "$lambda im: im if im.mode == 'L' else im.convert('L')", "image_only": True,
         "ensure_channel_first": True},
        # pneumo's ResizeToUint8: Pillow's box filter on the 8-bit image (see the module docstring)
        {"_target_": "Lambdad", "keys": "image",
         "func": "$lambda x: numpy.asarray(Image.fromarray(numpy.asarray(x[0], dtype=numpy.uint8))"
                 ".resize((@image_size, @image_size), Image.Resampling.BOX))[None]"},
        {"_target_": "ScaleIntensityd", "keys": "image", "minv": 0.0, "maxv": 1.0},
        {"_target_": "Resized", "keys": "image", "spatial_size": [size, size], "mode": "area"},
    ]  # fmt: skip
    if norm is not None:  # what the classifier's input adapter does inside pneumo's forward
        mean, std = INPUT_NORMS[norm]
        steps += [
            {"_target_": "RepeatChanneld", "keys": "image", "repeats": len(mean)},
            {"_target_": "NormalizeIntensityd", "keys": "image", "subtrahend": list(mean), "divisor": list(std),
             "channel_wise": True},
        ]  # fmt: skip
    steps.append({"_target_": "EnsureTyped", "keys": "image", "dtype": "$torch.float32", "track_meta": False})
    task = model.task
    probability = (
        "$lambda logits: torch.sigmoid(logits.float() / @temperature)[:, @pneumonia_output]"
        if task.findings
        else "$lambda logits: torch.softmax(logits.float() / @temperature, dim=1)[:, @pneumonia_output]"
    )
    return {
        "imports": ["$import glob", "$import os", "$import pathlib", "$import numpy", "$import torch",
                    "$from PIL import Image"],
        "bundle_root": ".",
        "input_dir": "$os.path.join(@bundle_root, 'images')",
        "output_dir": "$os.path.join(@bundle_root, 'predictions')",
        "device": "$torch.device('cuda' if torch.cuda.is_available() else 'cpu')",
        "image_size": size,
        "temperature": float(model.temperature),
        "threshold": float(model.threshold),
        "pneumonia_output": task.pneumonia_output,
        "network_def": net,
        "network": "$@network_def.to(@device)",
        "checkpoint": "$torch.load(os.path.join(@bundle_root, 'models', 'model.pt'), map_location=@device, "
                      "weights_only=True)",
        "datalist": "$[{'image': f, 'name': os.path.basename(f)} for f in "
                    "sorted(glob.glob(os.path.join(@input_dir, '*.png')))]",
        "preprocessing": {"_target_": "Compose", "transforms": steps},
        "dataset": {"_target_": "Dataset", "data": "@datalist", "transform": "@preprocessing"},
        "dataloader": {"_target_": "DataLoader", "dataset": "@dataset", "batch_size": 16, "shuffle": False,
                       "num_workers": 0},
        "inferer": {"_target_": "SimpleInferer"},
        "probability": probability,
        "predictions": "$[(n, float(p)) for b in @dataloader for n, p in zip(b['name'], "
                       "@probability(@inferer(b['image'].to(@device), @network)))]",
        "initialize": ["$torch.set_grad_enabled(False)", "$@network.load_state_dict(@checkpoint)",
                       "$@network.eval()"],
        "run": [
            "$os.makedirs(@output_dir, exist_ok=True)",
            "$pathlib.Path(@output_dir, 'probabilities.csv').write_text('image,probability,predicted_label\\n' + "
            "''.join('%s,%r,%d\\n' % (n, p, p >= @threshold) for n, p in @predictions))",
        ],
    }  # fmt: skip


def metadata(run: Run, meta: dict[str, Any]) -> dict[str, Any]:
    """``configs/metadata.json`` in MONAI's bundle metadata schema."""
    model, size = run.model, run.image_size
    task = model.task
    classes = list(task.findings) if task.findings else ["no pneumonia", "pneumonia"]
    version = str((meta.get("pneumo") or {}).get("version") or "0")
    sha = str(meta["checkpoint"]["sha256"])
    return {
        "schema": META_SCHEMA,
        "version": "0.1.0",
        "changelog": {"0.1.0": f"exported by pneumo {version} from checkpoint sha256 {sha[:12]}"},
        "monai_version": monai.__version__,
        "pytorch_version": torch.__version__.split("+")[0],
        "numpy_version": np.__version__,
        "required_packages_version": {"pillow": PIL.__version__},
        "name": "pneumo chest X-ray pneumonia classifier",
        "task": f"Chest X-ray classification ({task.name}): probability of pneumonia",
        "description": "A pneumo classifier (DenseNet121 on NIH ChestX-ray14) exported with its temperature and "
        "operating threshold. Research only: " + meta["notice"],
        "authors": "pneumo",
        "copyright": "pneumo contributors, Apache-2.0",
        "data_source": str(meta["training"].get("reference_standard")),
        "data_type": "png",
        "intended_use": meta["notice"],
        "image_classes": "one channel grey chest X-ray (frontal view), intensity scaled to [0, 1]",
        "label_classes": ", ".join(f"{i}: {c}" for i, c in enumerate(classes)),
        "pred_classes": ", ".join(f"{i}: {c}" for i, c in enumerate(classes)),
        "references": [
            "Wang X. et al. ChestX-ray8, CVPR 2017",
            "Guo C. et al. On calibration of modern neural networks, ICML 2017 (temperature scaling)",
        ],
        "network_data_format": {
            "inputs": {
                "image": {
                    "type": "image",
                    "format": "magnitude",
                    "modality": "xray",
                    "num_channels": int(model.hparams["net"].get("in_channels", 1)),
                    "spatial_shape": [size, size],
                    "dtype": "float32",
                    "value_range": [0, 1],
                    "is_patch_data": False,
                    "channel_def": {"0": "image"},
                }
            },
            "outputs": {
                "pred": {
                    "type": "probabilities",
                    "format": "classes",
                    "num_channels": task.outputs,
                    "spatial_shape": [1],
                    "dtype": "float32",
                    "value_range": [],
                    "is_patch_data": False,
                    "channel_def": {str(i): c for i, c in enumerate(classes)},
                }
            },
        },
        "pneumo": {
            "temperature": meta["temperature"]["value"],
            "threshold": meta["threshold"]["value"],
            "model_meta": "../model_meta.json",
        },
    }


def readme(run: Run, meta: dict[str, Any]) -> str:
    """``docs/README.md``: what the bundle is and how to run it."""
    size, t, thr = run.image_size, meta["temperature"]["value"], meta["threshold"]["value"]
    steps = "\n".join(
        f"{i}. **{s['step']}**: {s['how']}" for i, s in enumerate(meta["preprocessing"]["steps"], 1)
    )
    return f"""# pneumo chest X-ray pneumonia classifier (MONAI bundle)

**{meta["notice"]}**

A classifier trained with pneumo, exported with `pneumo-export format=bundle` from checkpoint
`{meta["checkpoint"]["path"]}` (sha256 `{meta["checkpoint"]["sha256"]}`).

## Run it

```bash
cd <this folder>
python -m monai.bundle run --config_file configs/inference.json --input_dir /path/to/pngs --output_dir out
python -m monai.bundle verify_net_in_out network_def --meta_file configs/metadata.json --config_file configs/inference.json
```

`out/{PROBABILITIES}` has one row per PNG: `image`, `probability` (of pneumonia, at temperature {t:.6g}) and
`predicted_label` (1 when the probability is at least the operating threshold {thr:.6g}). These are the
probabilities of pneumo's `explain.py` on the same images.

## Input and preprocessing ({size} x {size})

{steps}

The network takes `(B, C, {size}, {size})` float32; outputs are logits (before the temperature). The
threshold was chosen by: `{json.dumps(meta["threshold"]["how_chosen"])}`.

## Training data

{meta["training"]["reference_standard"]}. Split: {meta["training"]["split"]}. `../model_meta.json` holds
everything pneumo knows about this model.
"""


LICENSE = """pneumo exported model bundle

Code and configuration: Apache License 2.0 (https://www.apache.org/licenses/LICENSE-2.0), as pneumo.

The weights were trained on NIH ChestX-ray14 (NIH Clinical Center), whose terms ask that users acknowledge
the NIH Clinical Center as the data provider and cite Wang et al., CVPR 2017. Not for clinical use.
"""
