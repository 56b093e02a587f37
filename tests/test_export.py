"""pneumo-export (issue 26): TorchScript, ONNX and the MONAI bundle of the tiny checkpoint reproduce the
PyTorch model on real demo images; model_meta.json carries the checkpoint's temperature and threshold; the
exported heatmap equals pneumo's Grad-CAM at the last feature layer; bad input gets one line."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from pneumo.cli.export import FORMATS as cli_formats
from pneumo.errors import PneumoError
from pneumo.images.preprocess import Preprocessor
from pneumo.pipelines.explain import ExplainSettings, explain_images
from pneumo.pipelines.export import FORMATS, ExportSettings, export_model
from pneumo.pipelines.runs import load_run
from pneumo.xai.cam import CAM_LAYER
from pneumo.xai.gradcam import GradCam
from tests.helpers import ROOT, run_cli

ONNX_INSTALL = 'the ONNX tests need the export extra: pip install -e ".[export]"'


@pytest.fixture(scope="module")
def test_images(tiny_ckpt: Path, demo_root: Path) -> tuple[list[Path], torch.Tensor]:
    """The checkpoint's first eight test images (files) and their preprocessed batch (pneumo's chain)."""
    run = load_run(str(tiny_ckpt))
    names = run.datamodule.split_images("test")[:8]
    paths = [Path(run.image_location(name)) for name in names]
    pre = Preprocessor(run.image_size)
    return paths, torch.stack([pre(p.read_bytes(), p.name)[0] for p in paths])


def test_torchscript_export_runs_in_a_process_without_pneumo(
    tiny_ckpt: Path, test_images, tmp_path: Path
) -> None:
    out = tmp_path / "ts"
    proc = run_cli(["-m", "pneumo.export", f"ckpt_path={tiny_ckpt}", "format=torchscript", f"out_dir={out}",
                    f"hydra.run.dir={tmp_path / 'log'}"])  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "max abs logit difference" in proc.stderr + proc.stdout
    _, batch = test_images
    np.save(tmp_path / "x.npy", batch.numpy())
    code = (
        "import sys, numpy as np, torch\n"
        f"m = torch.jit.load({str(out / 'model.ts')!r})\n"
        f"np.save({str(tmp_path / 'y.npy')!r}, m(torch.from_numpy(np.load({str(tmp_path / 'x.npy')!r}))).detach().numpy())\n"
        "assert not [n for n in sys.modules if n.split('.')[0] == 'pneumo'], 'pneumo was imported'\n"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert loaded.returncode == 0, loaded.stderr[-2000:]
    run = load_run(str(tiny_ckpt))
    with torch.no_grad():
        expected = run.model(batch).numpy()
    assert np.abs(np.load(tmp_path / "y.npy") - expected).max() <= 1e-4
    meta = json.loads((out / "model_meta.json").read_text())
    blob = torch.load(tiny_ckpt, map_location="cpu", weights_only=True)
    assert meta["temperature"]["value"] == float(blob["state_dict"]["temperature"])
    assert meta["threshold"]["value"] == float(blob["state_dict"]["threshold"])
    assert meta["threshold"]["how_chosen"]["rule"] == blob["operating_point"]["rule"]
    assert meta["input"]["shape"] == ["batch", 1, run.image_size, run.image_size]
    assert meta["outputs"][0]["classes"] == ["no pneumonia", "pneumonia"]
    assert "Not for clinical use" in meta["notice"] and len(meta["checkpoint"]["sha256"]) == 64
    assert meta["check"]["max_abs_logit_difference"] <= 1e-4 and meta["file"] == "model.ts"


def test_onnx_export_with_heatmap_equals_pytorch_and_gradcam_at_the_last_layer(
    tiny_ckpt: Path, test_images, tmp_path: Path
) -> None:
    ort = pytest.importorskip("onnxruntime", reason=ONNX_INSTALL)
    pytest.importorskip("onnx", reason=ONNX_INSTALL)
    paths, batch = test_images
    result = export_model(ExportSettings(ckpt_path=str(tiny_ckpt), format="onnx", out_dir=str(tmp_path / "onnx"),
                                         heatmap=True))  # fmt: skip
    assert result.max_logit_difference is not None and result.max_logit_difference <= 1e-4
    session = ort.InferenceSession(str(tmp_path / "onnx" / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["logits", "heatmap"]
    logits, heat = session.run(None, {"image": batch.numpy()})  # the whole batch: the batch axis is dynamic
    run = load_run(str(tiny_ckpt))
    cam = GradCam(run.model, layer=CAM_LAYER)(batch)
    assert np.abs(logits - cam.logits.numpy()).max() <= 1e-4
    for j in range(len(batch)):
        a, b = heat[j].ravel(), cam.heatmaps[j].numpy().ravel()
        assert np.corrcoef(a, b)[0, 1] >= 0.999, (paths[j].name, np.corrcoef(a, b)[0, 1])
    meta = json.loads((tmp_path / "onnx" / "model_meta.json").read_text())
    # docs/export.md's ten lines of plain onnxruntime give the model's probability of an image
    snippet = (ROOT / "docs" / "export.md").read_text().split("```python\n")[1].split("```")[0]
    assert len(snippet.strip().splitlines()) <= 10
    shutil.copy(paths[0], tmp_path / "onnx" / "chest.png")
    plain = subprocess.run([sys.executable, "-c", snippet], cwd=tmp_path / "onnx", capture_output=True, text=True,
                           timeout=300)  # fmt: skip
    assert plain.returncode == 0, plain.stderr[-2000:]
    probability = float(run.model.predict_proba(batch[:1])[0])
    assert (
        f"pneumonia probability {probability:.3f}, positive: {probability >= float(run.model.threshold)}"
        in plain.stdout
    )
    assert meta["onnx_opset"] == 17 and [o["name"] for o in meta["outputs"]] == ["logits", "heatmap"]


def test_bad_input_is_one_line(tiny_ckpt: Path, tmp_path: Path) -> None:
    not_ours = tmp_path / "other.ckpt"
    torch.save({"weights": torch.zeros(2)}, not_ours)
    with pytest.raises(PneumoError, match=r"not a pneumo classifier checkpoint") as err:
        export_model(ExportSettings(ckpt_path=str(not_ours), format="onnx", out_dir=str(tmp_path / "a")))
    assert "\n" not in str(err.value)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x.txt").write_text("mine")
    with pytest.raises(PneumoError, match=r"out_dir=.*full already exists.*overwrite=true"):
        export_model(
            ExportSettings(ckpt_path=str(tiny_ckpt), format="torchscript", out_dir=str(tmp_path / "full"))
        )
    assert (tmp_path / "full" / "x.txt").read_text() == "mine"
    proc = run_cli(["-m", "pneumo", "export", f"ckpt_path={tiny_ckpt}", "format=tflite", f"out_dir={tmp_path / 'b'}",
                    f"hydra.run.dir={tmp_path / 'log'}"])  # fmt: skip
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert lines[-1].endswith("format='tflite': choose one of 'torchscript', 'onnx', 'bundle'"), proc.stderr
    assert not (tmp_path / "b").exists()
    assert cli_formats == FORMATS


@pytest.mark.slow
def test_the_bundle_runs_with_monai_alone_and_gives_explains_probabilities(
    tiny_ckpt: Path, test_images, tmp_path: Path
) -> None:
    pytest.importorskip("fire", reason=ONNX_INSTALL)
    paths, _ = test_images
    images = tmp_path / "images"
    images.mkdir()
    for path in paths[:4]:
        shutil.copy(path, images / path.name)
    # a colour image of another shape: the grey conversion and a resize by a non-integer factor
    rgb = np.array(Image.open(paths[0]).convert("RGB").resize((70, 50)))
    rgb[..., 0] = 255 - rgb[..., 0]
    Image.fromarray(rgb).save(images / "colour_70x50.png")
    bundle = tmp_path / "bundle"
    export_model(ExportSettings(ckpt_path=str(tiny_ckpt), format="bundle", out_dir=str(bundle)))
    for name in (
        "configs/metadata.json",
        "configs/inference.json",
        "models/model.pt",
        "docs/README.md",
        "LICENSE",
        "model_meta.json",
    ):
        assert (bundle / name).is_file(), name
    offline = {"NO_PROXY": "*", "HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9"}
    command = ["-m", "monai.bundle", "run", "--config_file", "configs/inference.json", "--input_dir", str(images),
               "--output_dir", str(tmp_path / "pred")]  # fmt: skip
    proc = run_cli(command, cwd=bundle, timeout=300, env=offline)  # MONAI alone reads the bundle
    assert proc.returncode == 0, proc.stderr[-3000:]
    # MONAI's own check of the network against metadata.json's input and output (in this process: one
    # interpreter start fewer; it reads the bundle's files as the command line does)
    from monai.bundle import verify_net_in_out

    verify_net_in_out(
        net_id="network_def",
        meta_file=str(bundle / "configs" / "metadata.json"),
        config_file=str(bundle / "configs" / "inference.json"),
        bundle_root=str(bundle),
    )
    explained = explain_images(ExplainSettings(ckpt_path=str(tiny_ckpt), out_dir=str(tmp_path / "ex"),
                                               inputs=str(images), progress=False))  # fmt: skip
    expected = {row["image"]: float(row["probability"]) for row in explained.predictions}
    got = pd.read_csv(tmp_path / "pred" / "probabilities.csv").set_index("image")
    assert sorted(got.index) == sorted(expected)
    for name, p in expected.items():
        assert abs(got.probability[name] - p) <= 1e-5, (name, got.probability[name], p)
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    assert meta["network_data_format"]["outputs"]["pred"]["num_channels"] == 2
