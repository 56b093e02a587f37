"""explain.py: a tiny checkpoint (the ``tiny_ckpt`` fixture) explained from a folder, a list and the test split."""

from __future__ import annotations

import csv
import json
import shutil
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from pneumo.data.settings import GROUPS, MOVED
from pneumo.io.checkpoints import CheckpointError
from pneumo.nih.boxes import BoxList
from pneumo.nih.index import NIHLabelIndex
from pneumo.pipelines.explain import ExplainSettings, explain_images
from pneumo.pipelines.runs import load_run
from pneumo.testing.gcs_emulator import GCSEmulator  # noqa: F401 - first: turns gcsfs's gRPC probe off before gcsfs loads
from tests.helpers import ROOT, run_cli, start_cli


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _reference_probabilities(ckpt: Path, names: list[str]) -> dict[str, float]:
    """Probabilities from the training data pipeline (NIHDataModule's test-time transforms)."""
    run = load_run(str(ckpt))
    model, dm, dhp = run.model, run.datamodule, run.datamodule.hparams
    index = NIHLabelIndex.from_csv(dhp["labels_url"]).subset(names)
    from pneumo.data.dataset import NIHImageDataset, StreamingSource
    from pneumo.images.preprocess import build_tensor_transforms

    ds = NIHImageDataset(
        index,
        StreamingSource(dm.store, index.images, dm.image_settings.size),
        build_tensor_transforms(dm.image_settings.size),
    )
    x = torch.stack([ds[i]["image"] for i in range(len(ds))])
    return dict(zip(index.images.tolist(), model.predict_proba(x).tolist()))


def copy_demo_images(demo_root: Path, folder: Path, n: int) -> list[str]:
    """Copy the first ``n`` demo images (by name) into a new ``folder``; returns their names."""
    folder.mkdir()
    names = sorted(p.name for p in (demo_root / "images").iterdir())[:n]
    for name in names:
        shutil.copy(demo_root / "images" / name, folder / name)
    return names


def test_folder_of_images(tiny_ckpt: Path, demo_root: Path, tmp_path: Path) -> None:
    folder = tmp_path / "in"
    names = copy_demo_images(demo_root, folder, 5)
    (folder / "notes.md").write_text("not an image")
    out = tmp_path / "out"
    result = explain_images(
        ExplainSettings(str(tiny_ckpt), str(out), inputs=str(folder), batch_size=2, progress=False)
    )

    assert not result.failed
    assert sorted(p.name for p in (out / "overlays").iterdir()) == names
    assert sorted(p.name for p in (out / "heatmaps").iterdir()) == [n.replace(".png", ".npy") for n in names]
    rows = _rows(out / "predictions.csv")
    assert [r["image"] for r in rows] == names
    for name in names:
        heat = np.load(out / "heatmaps" / name.replace(".png", ".npy"))
        assert heat.dtype == np.float32 and heat.shape == (64, 64)
        assert heat.min() >= 0.0 and heat.max() <= 1.0
    # same preprocessing as training: probabilities match the training data pipeline
    reference = _reference_probabilities(tiny_ckpt, names)
    index = NIHLabelIndex.from_csv(str(demo_root / "Data_Entry_2017.csv")).subset(names)
    truth = dict(zip(index.images.tolist(), index.pneumonia.tolist()))
    for row in rows:
        assert float(row["probability"]) == pytest.approx(reference[row["image"]], abs=1e-5)
        assert int(row["true_label"]) == truth[row["image"]]  # from the checkpoint's label index
        assert int(row["predicted_label"]) == int(float(row["probability"]) >= float(row["threshold"]))
    saved = torch.load(tiny_ckpt, map_location="cpu", weights_only=True)["state_dict"]["threshold"]
    assert [float(r["threshold"]) for r in rows] == pytest.approx([float(saved)] * len(rows), abs=1e-6)


def test_predicted_label_uses_the_checkpoints_threshold(moved_threshold_explain: tuple[Path, float]) -> None:
    out, threshold = moved_threshold_explain  # a checkpoint whose threshold was moved (conftest.py)
    rows = _rows(out / "predictions.csv")
    predicted = [int(r["predicted_label"]) for r in rows]
    assert 0 < sum(predicted) < len(predicted)
    for row in rows:
        assert int(row["predicted_label"]) == int(float(row["probability"]) >= threshold)
        assert float(row["threshold"]) == pytest.approx(threshold, abs=1e-6)
        assert row["true_label"] in ("0", "1", 0, 1)


def test_a_checkpoint_with_the_flat_data_layout_is_rebuilt_the_same(tiny_ckpt: Path, tmp_path: Path) -> None:
    """Checkpoints from before the settings groups (issue 21) hold every data setting flat in
    datamodule_hyper_parameters (image_size, batch_size, cache, cache_dir, ...): load_run (explain.py,
    train.py train=false) rebuilds the same data module from them, and explain gives the same predictions."""
    blob = torch.load(tiny_ckpt, map_location="cpu", weights_only=True)
    grouped = blob["datamodule_hyper_parameters"]
    flat = {k: v for k, v in grouped.items() if k not in GROUPS}
    for old, new in MOVED.items():
        group, key = new.split(".")
        if old != "progress":  # never saved in the flat layout
            flat[old] = grouped[group][key]
    assert isinstance(flat["cache"], bool) and "image_size" in flat and "images" not in flat
    blob["datamodule_hyper_parameters"] = flat
    old = tmp_path / "flat.ckpt"
    torch.save(blob, old)
    was, now = load_run(str(old)).datamodule, load_run(str(tiny_ckpt)).datamodule
    for settings in ("split_settings", "image_settings", "loader_settings", "cache_settings"):
        assert getattr(was, settings) == getattr(now, settings), settings
    assert was.hparams == now.hparams  # saved again in the grouped layout
    assert was.split_images("val") == now.split_images("val")
    rows = [
        explain_images(
            ExplainSettings(str(ckpt), str(tmp_path / name), split="val", progress=False)
        ).predictions
        for ckpt, name in ((old, "old"), (tiny_ckpt, "new"))
    ]
    assert [(r["image"], r["probability"]) for r in rows[0]] == [
        (r["image"], r["probability"]) for r in rows[1]
    ]


def test_test_split_scores_localization(tiny_ckpt: Path, demo_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = explain_images(ExplainSettings(str(tiny_ckpt), str(out), split="test", progress=False))
    test_names = (demo_root / "test_list.txt").read_text().split()
    boxes = BoxList.from_csv(str(demo_root / "BBox_List_2017.csv"))
    with_boxes = sorted(set(test_names) & boxes.images)
    assert len(_rows(out / "predictions.csv")) == len(test_names)
    loc = _rows(out / "localization.csv")
    assert sorted(r["image"] for r in loc) == with_boxes
    for row in loc:  # the hit flag agrees with the saved heatmap and the box file (64-px demo: no rescale)
        heat = np.load(out / "heatmaps" / row["image"].replace(".png", ".npy"))
        r, c = np.unravel_index(np.argmax(heat), heat.shape)
        inside = any(
            x <= c + 0.5 < x + w and y <= r + 0.5 < y + h for x, y, w, h in boxes.for_image(row["image"])
        )
        assert (row["hit"] == "True") == inside
    summary = json.loads((out / "summary.json").read_text())["localization"]
    assert summary["n"] == len(with_boxes) == result.summary["n"]
    assert summary["hit_rate"] == pytest.approx(np.mean([r["hit"] == "True" for r in loc]))
    lo, hi = summary["hit_rate_ci95"]
    assert 0.0 <= lo <= summary["hit_rate"] <= hi <= 1.0
    area = np.mean([min(1.0, (b[:, 2] * b[:, 3]).sum() / 64**2) for b in map(boxes.for_image, with_boxes)])
    assert summary["random_hit_rate"] == pytest.approx(area, rel=0.15)


def test_list_of_paths(tiny_ckpt: Path, demo_root: Path, tmp_path: Path) -> None:
    names = sorted(p.name for p in (demo_root / "images").iterdir())[:3]
    (tmp_path / "imgs").mkdir()
    shutil.copy(demo_root / "images" / names[0], tmp_path / "imgs" / names[0])
    listing = tmp_path / "list.txt"
    listing.write_text(
        f"imgs/{names[0]}\n\n{demo_root / 'images' / names[1]}\nfile://{demo_root / 'images' / names[2]}\n"
    )
    result = explain_images(
        ExplainSettings(str(tiny_ckpt), str(tmp_path / "out"), inputs=str(listing), progress=False)
    )
    assert [r["image"] for r in result.predictions] == names and not result.failed


def test_incompatible_checkpoints_fail_with_one_clear_line(tiny_ckpt: Path, tmp_path: Path) -> None:
    torch.save({"foo": torch.zeros(1)}, tmp_path / "other.ckpt")
    (tmp_path / "text.ckpt").write_text("hello")
    blob = torch.load(tiny_ckpt, map_location="cpu", weights_only=True)
    blob["hyper_parameters"]["net"]["out_channels"] = 3
    torch.save(blob, tmp_path / "shape.ckpt")
    blob = torch.load(tiny_ckpt, map_location="cpu", weights_only=True)
    del blob["datamodule_hyper_parameters"]["images"]
    torch.save(blob, tmp_path / "no_data.ckpt")
    torch.save(
        {"hyper_parameters": {"net": {}}, "state_dict": {}, "evil": Path("/")}, tmp_path / "pickled.ckpt"
    )
    cases = {
        "other.ckpt": "is not a pneumo classifier checkpoint",
        "text.ckpt": "is not a PyTorch checkpoint",
        "shape.ckpt": "does not fit the classifier|cannot be rebuilt",
        "pickled.ckpt": "cannot be loaded safely",
        "no_data.ckpt": r"lacks datamodule_hyper_parameters\.images\.size \(not written by train\.py\)",
    }
    for name, message in cases.items():
        with pytest.raises(CheckpointError, match=message) as err:
            load_run(str(tmp_path / name))
        assert str(tmp_path / name) in str(err.value) and "\n" not in str(err.value)


@pytest.mark.slow
def test_cli_unreadable_file_and_missing_checkpoint(tiny_ckpt: Path, demo_root: Path, tmp_path: Path) -> None:
    folder = tmp_path / "in"
    names = copy_demo_images(demo_root, folder, 3)
    (folder / "00099999_000.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    out = tmp_path / "out"
    args = [f"paths.log_dir={tmp_path}/logs", "progress=false"]
    proc = run_cli(
        ["explain.py", f"ckpt_path={tiny_ckpt}", f"inputs={folder}", f"out_dir={out}", *args], cwd=ROOT
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 1, log[-3000:]
    assert "00099999_000.png" in log and "could not be read" in log
    assert sorted(p.name for p in (out / "overlays").iterdir()) == names
    assert len(_rows(out / "predictions.csv")) == 3
    assert json.loads((out / "summary.json").read_text())["failed"][0]["image"].endswith("00099999_000.png")

    missing = tmp_path / "absent.ckpt"
    proc = run_cli(["explain.py", f"ckpt_path={missing}", f"inputs={folder}", *args], cwd=ROOT)
    lines = [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.strip()]
    assert proc.returncode == 2
    assert len(lines) == 1 and f"ckpt_path={missing}: no such file" in lines[0], lines


def _rewritten(folder: Path, old: dict[str, int]) -> list[str]:
    """PNGs in ``folder`` that are not the earlier run's (new names, or rewritten since)."""
    found = []
    for path in folder.glob("*.png") if folder.is_dir() else []:
        try:
            if path.stat().st_mtime_ns != old.get(path.name):
                found.append(path.name)
        except FileNotFoundError:  # being deleted or renamed right now
            pass
    return found


@pytest.mark.slow
def test_a_killed_run_into_a_reused_out_dir_never_mixes_old_and_new_outputs(
    tiny_ckpt: Path, demo_root: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    explain_images(
        ExplainSettings(str(tiny_ckpt), str(out), inputs=str(demo_root / "images"), progress=False)
    )
    old_overlays = {p.name: p.stat().st_mtime_ns for p in (out / "overlays").iterdir()}
    assert (out / "summary.json").exists() and (out / "predictions.csv").exists() and len(old_overlays) == 80

    # Reusing the folder without overwrite=true is refused before anything is touched.
    args = [f"ckpt_path={tiny_ckpt}", f"inputs={demo_root / 'images'}", f"out_dir={out}", "progress=false",
            f"paths.log_dir={tmp_path}/logs", "batch_size=1", "num_workers=1"]  # fmt: skip
    proc = run_cli(["explain.py", *args], cwd=ROOT)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "overwrite=true" in proc.stderr
    assert {p.name: p.stat().st_mtime_ns for p in (out / "overlays").iterdir()} == old_overlays

    # With overwrite=true, killed (SIGKILL) once it has written its first overlays.
    run = start_cli(["explain.py", *args, "overwrite=true"], cwd=ROOT)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and run.poll() is None:
            if len(_rewritten(out / "overlays", old_overlays)) >= 3:
                break
            time.sleep(0.05)
        assert run.poll() is None, "the run ended before it could be killed"
        run.send_signal(signal.SIGKILL)
    finally:
        run.kill()
        run.wait()
    left = sorted(p.name for p in out.iterdir())
    assert "summary.json" not in left and "predictions.csv" not in left, left  # nothing says "complete"
    overlays = list((out / "overlays").glob("*.png"))
    assert 3 <= len(overlays) < 80 and len(_rewritten(out / "overlays", old_overlays)) == len(overlays)
    for png in overlays:  # every overlay there is whole
        assert png.read_bytes()[-8:] == b"IEND\xaeB`\x82"


def test_list_of_gs_urls_on_a_requester_pays_bucket(
    tiny_ckpt: Path, gcs_emulator, nih_bucket: str, demo_root: Path, tmp_path: Path
) -> None:
    from tests.helpers import BILLING_PROJECT

    names = (demo_root / "test_list.txt").read_text().split()[:4]
    listing = tmp_path / "gs_list.txt"
    listing.write_text("".join(f"gs://{nih_bucket}/png/{n}\n" for n in names))
    result = explain_images(
        ExplainSettings(
            str(tiny_ckpt),
            str(tmp_path / "gs"),
            inputs=str(listing),
            labels_url=f"gs://{nih_bucket}/Data_Entry_2017.csv",
            bbox_url=f"gs://{nih_bucket}/BBox_List_2017.csv",
            storage={
                "project": BILLING_PROJECT,
                "requester_pays": True,
                "token": "anon",
                "options": {"endpoint_url": gcs_emulator.endpoint},
            },
            progress=False,
        )
    )
    assert not result.failed and [r["image"] for r in result.predictions] == names
    reference = _reference_probabilities(tiny_ckpt, names)  # the same images read locally
    for row in result.predictions:
        assert float(row["probability"]) == pytest.approx(reference[row["image"]], abs=1e-5)
        assert row["true_label"] in (0, 1)
    boxes = BoxList.from_csv(str(demo_root / "BBox_List_2017.csv"))
    assert len(result.localization) == len(set(names) & boxes.images)
    seen = gcs_emulator.requests_for(nih_bucket)
    assert sum(r.path.endswith(".png") for r in seen) >= len(names)
    assert {tuple(r.query.get("userProject", [])) for r in seen} == {(BILLING_PROJECT,)}


def test_a_bucket_folder_is_listed_in_one_request(gcs_emulator, nih_bucket: str) -> None:
    from pneumo.data.inputs import resolve_inputs
    from pneumo.io.storage import StorageSettings
    from tests.helpers import BILLING_PROJECT

    options = StorageSettings(BILLING_PROJECT, True, "anon").options_for(f"gs://{nih_bucket}")
    # a private gcsfs instance: its listing cache must not answer other tests' requests
    options.update(endpoint_url=gcs_emulator.endpoint, skip_instance_cache=True)
    before = len(gcs_emulator.requests_for(nih_bucket))
    refs, skipped = resolve_inputs(f"gs://{nih_bucket}/png", options)
    assert len(refs) == 80 and not skipped
    assert all(r.location.startswith(f"gs://{nih_bucket}/png/") and r.name.endswith(".png") for r in refs)
    # existence/type checks and one listing: a handful of requests, not one per image (80)
    assert len(gcs_emulator.requests_for(nih_bucket)) - before < 10


def test_overlay_on_the_source_image_and_boxes_csv(tiny_ckpt: Path, demo_root: Path, tmp_path: Path) -> None:
    from PIL import Image

    from pneumo.xai.heatmap_boxes import heatmap_boxes

    folder = tmp_path / "in"
    folder.mkdir()
    name = sorted(p.name for p in (demo_root / "images").iterdir())[0]
    with Image.open(demo_root / "images" / name) as img:  # NIH's size: 1024 x 1024
        img.resize((1024, 1024), Image.Resampling.BILINEAR).save(folder / name)
    with Image.open(demo_root / "images" / name) as img:  # a wide 1500 x 600 source: capped at 1200 px
        img.resize((1500, 600), Image.Resampling.BILINEAR).save(folder / "wide.png")
    out = tmp_path / "out"
    settings = ExplainSettings(str(tiny_ckpt), str(out), inputs=str(folder), overlay={"max_size": 1200},
                               boxes={"top_k": 2}, labels_url="", bbox_url="", progress=False)  # fmt: skip
    explain_images(settings)
    with Image.open(out / "overlays" / name) as overlay:
        assert overlay.width == 1024 and overlay.height > 1024  # the caption strip below the image
    with Image.open(out / "overlays" / "wide.png") as overlay:
        assert overlay.width == 1200
    heat = np.load(out / "heatmaps" / name.replace(".png", ".npy"))
    assert heat.shape == (64, 64)  # the network's resolution
    boxes = BoxList.from_csv(str(out / "boxes.csv"))  # NIH's layout, pneumo's own reader
    expected = heatmap_boxes(heat, 0.5, 2, source_shape=(1024, 1024))
    assert 1 <= len(expected) <= 2
    np.testing.assert_allclose(boxes.for_image(name), np.stack([b.box for b in expected]), rtol=1e-12)
    wide = heatmap_boxes(np.load(out / "heatmaps" / "wide.npy"), 0.5, 2, source_shape=(600, 1500))
    np.testing.assert_allclose(boxes.for_image("wide.png"), np.stack([b.box for b in wide]), rtol=1e-12)


@pytest.mark.slow
def test_cli_prints_the_wang_table_on_the_test_positives(
    tiny_ckpt: Path, demo_root: Path, tmp_path: Path
) -> None:
    from pneumo.xai.heatmap_boxes import localization_table

    out = tmp_path / "out"
    args = [
        f"ckpt_path={tiny_ckpt}",
        "split=test",
        f"out_dir={out}",
        f"paths.log_dir={tmp_path}/logs",
        "progress=false",
    ]
    proc = run_cli(["explain.py", *args], cwd=ROOT)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-3000:]
    wang = json.loads((out / "summary.json").read_text())["localization"]["wang"]
    truth = BoxList.from_csv(str(demo_root / "BBox_List_2017.csv"))
    predicted = BoxList.from_csv(str(out / "boxes.csv"))
    boxed = sorted(set((demo_root / "test_list.txt").read_text().split()) & truth.images)
    assert wang["n"] == len(boxed) > 0 and wang["thresholds"] == [0.1, 0.25, 0.5, 0.75, 0.9]
    again = localization_table([predicted.for_image(n) for n in boxed], [truth.for_image(n) for n in boxed])
    assert wang["iobb"] == again["iobb"] and wang["iou"] == again["iou"]
    assert "Wang et al. 2017 localisation accuracy on" in log
    assert "IOBB   " + "  ".join(f"{v:<7.3f}" for v in wang["iobb"]) in log


def test_cli_heatmaps_false_predicts_the_split_through_trainer_predict(
    tiny_ckpt: Path, demo_root: Path, tmp_path: Path
) -> None:
    """``explain.py split=test heatmaps=false``: Lightning's ``Trainer.predict`` scores the split (every
    test image once, in the split's order) with the probabilities and decisions of a full explain run, and
    writes no heatmaps, overlays or gallery."""
    out = tmp_path / "fast"
    args = [f"ckpt_path={tiny_ckpt}", "split=test", f"out_dir={out}", "heatmaps=false",
            "+predict.accelerator=cpu", f"paths.log_dir={tmp_path}/logs", "progress=false"]  # fmt: skip
    proc = run_cli(["explain.py", *args], cwd=ROOT)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert "predicted" in proc.stdout + proc.stderr and "heatmaps=false" in proc.stdout + proc.stderr
    assert sorted(p.name for p in out.iterdir()) == ["predictions.csv", "summary.json"]
    fast = _rows(out / "predictions.csv")
    full = explain_images(
        ExplainSettings(str(tiny_ckpt), str(tmp_path / "full"), split="test", progress=False)
    ).predictions
    assert [r["image"] for r in fast] == [r["image"] for r in full] and len(fast) > 0
    assert [int(r["index"]) for r in fast] == list(range(len(fast)))
    for a, b in zip(fast, full):
        assert float(a["probability"]) == pytest.approx(float(b["probability"]), abs=1e-6)
        assert int(a["predicted_label"]) == int(b["predicted_label"])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["images"] == len(fast) and summary["explained"] == 0


def test_a_folder_of_symlinked_images_is_read(demo_root: Path, tmp_path: Path) -> None:
    from pneumo.data.inputs import Preprocessor, load_image, resolve_inputs

    names = sorted(p.name for p in (demo_root / "images").glob("*.png"))[:3]
    links = tmp_path / "links"
    links.mkdir()
    for name in names:
        (links / name).symlink_to(demo_root / "images" / name)
    (links / "dangling.png").symlink_to(tmp_path / "gone.png")  # points nowhere: listed, its read names it
    refs, skipped = resolve_inputs(str(links))
    assert [r.name for r in refs] == [*names, "dangling.png"] and not skipped
    with pytest.raises(OSError, match=r"dangling\.png: a broken symbolic link"):
        load_image(refs[-1], Preprocessor(32))
    loaded = load_image(refs[0], Preprocessor(32))
    assert tuple(loaded.tensor.shape) == (1, 32, 32) and loaded.source_shape == (64, 64)


def test_explain_through_the_emulator_retries_503s_on_the_checkpoint_and_the_images(
    tiny_ckpt: Path, gcs_emulator, nih_bucket: str, demo_root: Path, tmp_path: Path
) -> None:
    """Issue 21's acceptance: every read goes through one retry core, the checkpoint's included."""
    from pneumo.errors import PneumoError
    from pneumo.io.reading import StoreUnavailableError
    from tests.helpers import BILLING_PROJECT

    with gcs_emulator.billing_checks_off():
        gcs_emulator.gcsfs().pipe_file(f"{nih_bucket}/runs/last.ckpt", tiny_ckpt.read_bytes())
    ckpt_url = f"gs://{nih_bucket}/runs/last.ckpt"
    names = (demo_root / "test_list.txt").read_text().split()[:4]
    listing = tmp_path / "gs_list.txt"
    listing.write_text("".join(f"gs://{nih_bucket}/png/{n}\n" for n in names))
    storage = {
        "project": BILLING_PROJECT,
        "requester_pays": True,
        "token": "anon",
        "options": {"endpoint_url": gcs_emulator.endpoint},
        # short limits so that the test takes seconds (the 84 MB checkpoint reads in ~0.1 s; gcsfs's own
        # retries sleep 1-2 s and more, and an attempt that takes longer is cut and retried by pneumo)
        "request_timeout_s": 2.0,
        "retry_deadline_s": 30.0,
        "retry_backoff_s": 0.05,
        "retry_backoff_max_s": 0.2,
    }

    def explain(out: Path, **changes):
        return explain_images(
            ExplainSettings(
                ckpt_url,
                str(out),
                inputs=str(listing),
                labels_url=f"gs://{nih_bucket}/Data_Entry_2017.csv",
                storage={**storage, **changes},
                progress=False,
            )
        )

    ckpt_503 = gcs_emulator.fail_requests(r"/o/runs/last\.ckpt$", times=2)
    images_503 = gcs_emulator.fail_requests(r"/o/png/.*\.png$", times=3)
    out = tmp_path / "retried"
    result = explain(out)
    assert ckpt_503.hits == 2 and images_503.hits == 3  # the 503s were answered, then retried
    assert not result.failed and [r["image"] for r in result.predictions] == names
    reference = _reference_probabilities(tiny_ckpt, names)  # the same images and weights read locally
    for row in result.predictions:
        assert float(row["probability"]) == pytest.approx(reference[row["image"]], abs=1e-5)
    assert [r["image"] for r in _rows(out / "predictions.csv")] == names
    assert json.loads((out / "summary.json").read_text())["explained"] == len(names)
    stems = sorted(Path(n).stem for n in names)
    assert sorted(p.stem for p in (out / "overlays").glob("*.png")) == stems
    assert sorted(p.stem for p in (out / "heatmaps").glob("*.npy")) == stems

    # A checkpoint that never answers: one line naming it, its key and the deadline, once the deadline passed.
    gcs_emulator.fail_requests(r"/o/runs/last\.ckpt$", times=None)
    with pytest.raises(StoreUnavailableError) as caught:
        explain(tmp_path / "dead_ckpt", retry_deadline_s=1.5)
    message = str(caught.value)
    assert isinstance(caught.value, PneumoError) and "\n" not in message
    assert f"ckpt_path={ckpt_url}: unreachable" in message and "retry_deadline_s=1.5" in message
    gcs_emulator.clear_faults()

    # An image that never answers: the others are explained, the run names it in one line.
    dead = f"gs://{nih_bucket}/png/{names[1]}"
    gcs_emulator.fail_requests(f"/o/png/{names[1]}$", times=None)
    result = explain(tmp_path / "dead_image", retry_deadline_s=1.5)
    assert [r["image"] for r in result.predictions] == [n for n in names if n != names[1]]
    [(location, error)] = result.failed
    assert location == dead and error.startswith(f"{dead}: unreachable") and "\n" not in error
