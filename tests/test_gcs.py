"""The NIH data path against a GCS emulator: billing project on every request, same tensors as a local
folder (streamed with workers, cached, and fed by `python train.py data=nih`), no credential in any output."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pneumo.data.datamodule import NIHDataModule
from pneumo.testing.gcs_emulator import nih_urls
from tests.helpers import (
    BILLING_PROJECT,
    ROOT,
    TINY_NET,
    TINY_TRAINER,
    closed_port,
    demo_datamodule,
    emulator_datamodule,
    run_cli,
)

FAKE_TOKEN = "ya29.FAKE-planted-token-0123456789abcdef"


def _sized(kw: dict) -> dict:
    """64 px and batches of 16 unless ``kw``'s groups say otherwise."""
    images, loader = kw.get("images") or {}, kw.get("loader") or {}
    return {**kw, "images": {"size": 64, **images}, "loader": {"batch_size": 16, **loader}}


def local_dm(demo_root: Path, **kw) -> NIHDataModule:
    return demo_datamodule(demo_root, **_sized(kw))


def gs_dm(em, bucket: str, **kw) -> NIHDataModule:
    return emulator_datamodule(em, bucket, **_sized(kw))


def assert_same_eval_batches(a: NIHDataModule, b: NIHDataModule) -> int:
    n = 0
    for split in ("val", "test"):
        for x, y in zip(
            getattr(a, f"{split}_dataloader")(), getattr(b, f"{split}_dataloader")(), strict=True
        ):
            assert x["image_id"] == y["image_id"]
            assert torch.equal(x["image"], y["image"]) and torch.equal(x["label"], y["label"])
            n += len(x["image_id"])
    return n


def test_every_request_to_the_requester_pays_bucket_bills_the_project(
    gcs_emulator, nih_bucket: str, demo_root: Path, tmp_path: Path
) -> None:
    dm = gs_dm(
        gcs_emulator,
        nih_bucket,
        cache={"enabled": True, "dir": str(tmp_path / "cache")},
        loader={"num_workers": 2},
    )
    dm.prepare_data()  # decoded in 2 worker processes
    dm.setup("fit")
    assert dm.image_cache.manifest()["cached"] == 80
    streamed = gs_dm(gcs_emulator, nih_bucket)  # streaming: one request per item, every epoch
    streamed.setup("fit")
    batch = next(iter(streamed.val_dataloader()))
    seen = gcs_emulator.requests_for(nih_bucket)
    images = [r for r in seen if r.path.startswith("/download/") and r.path.endswith(".png")]
    assert len(images) >= 80 + len(batch["image_id"])
    assert any(r.path.endswith("Data_Entry_2017.csv") for r in seen)
    assert {tuple(r.query.get("userProject", [])) for r in seen} == {(BILLING_PROJECT,)}
    # without a project the bucket refuses, and the error says what to set
    with pytest.raises(
        PermissionError, match=r"Data_Entry_2017\.csv.*Requester Pays.*data\.storage\.project"
    ):
        gs_dm(gcs_emulator, nih_bucket, storage={"project": None}).setup("fit")


def test_the_label_file_is_downloaded_once_for_prepare_data_and_setup(
    gcs_emulator, nih_bucket: str, tmp_path: Path
) -> None:
    before = len(gcs_emulator.requests_for(nih_bucket))
    dm = gs_dm(gcs_emulator, nih_bucket, cache={"enabled": True, "dir": str(tmp_path / "cache")})
    dm.prepare_data()
    dm.setup("fit")
    dm.setup("test")
    new = gcs_emulator.requests_for(nih_bucket)[before:]
    csv = [r for r in new if r.path.startswith("/download/") and r.path.endswith("Data_Entry_2017.csv")]
    assert len(csv) == 1, [r.path for r in csv]


def test_streaming_with_workers_feeds_the_tensors_of_a_local_folder(
    gcs_emulator, nih_bucket: str, demo_root: Path
) -> None:
    remote = gs_dm(
        gcs_emulator, nih_bucket, loader={"num_workers": 2}
    )  # forked workers re-connect to the store
    remote.setup("fit")
    local = local_dm(demo_root)
    local.setup("fit")
    assert assert_same_eval_batches(remote, local) == len(local.split.val) + len(local.split.test)


@pytest.mark.slow
def test_train_cli_on_the_emulator_bucket_no_token_anywhere(
    gcs_emulator, nih_bucket: str, demo_root: Path, tmp_path: Path
) -> None:
    cache_dir = tmp_path / "cache"
    urls = nih_urls(nih_bucket)
    env = {
        "STORAGE_EMULATOR_HOST": gcs_emulator.endpoint,
        "GOOGLE_CLOUD_PROJECT": BILLING_PROJECT,  # data.storage.project's default
        "PNEUMO_GCS_TOKEN": FAKE_TOKEN,  # a raw access token, as from `gcloud auth print-access-token`
        # Any HTTPS request to Google (gcsfs looked raw tokens up at oauth2.googleapis.com/tokeninfo?access_token=
        # ...) goes to a closed loopback port: it fails at once, offline or not, and its error quotes the URL.
        "HTTPS_PROXY": f"http://127.0.0.1:{closed_port()}",
        "NO_PROXY": "127.0.0.1,localhost",
    }
    proc = run_cli(
        [
            "train.py",
            "data=nih",
            f"data.images_url={urls['images_url']}",
            f"data.labels_url={urls['labels_url']}",
            f"data.split_lists.train_val={urls['split_lists']['train_val']}",
            f"data.split_lists.test={urls['split_lists']['test']}",
            f"data.bbox_url=gs://{nih_bucket}/BBox_List_2017.csv",
            f"data.cache.dir={cache_dir}",
            "data.images.size=64",
            "data.loader.batch_size=16",
            "data.loader.num_workers=0",
            "data.split.val_fraction=0.2",
            f"paths.log_dir={tmp_path}/logs",
            *TINY_TRAINER,
            *TINY_NET,
        ],
        cwd=ROOT,
        timeout=600,
        env=env,
    )
    # nothing printed the token, whatever the outcome (before the fix: gcsfs's failed tokeninfo lookup did)
    assert FAKE_TOKEN not in proc.stdout + proc.stderr, proc.stdout[-3000:]
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "test/auroc" in proc.stdout + proc.stderr

    # the run used the bucket: the billing project and the token reached the emulator with every request
    seen = gcs_emulator.requests_for(nih_bucket)
    assert len({r.path for r in seen if r.path.startswith("/download/") and r.path.endswith(".png")}) == 80
    assert {tuple(r.query.get("userProject", [])) for r in seen} == {(BILLING_PROJECT,)}
    assert {r.headers.get("authorization") for r in seen} == {f"Bearer {FAKE_TOKEN}"}

    # the tensors it fed (from the cache it built) equal those of the same images in a local folder
    gcs_emulator.requests.clear()
    cached = gs_dm(gcs_emulator, nih_bucket, cache={"enabled": True, "dir": str(cache_dir)})
    cached.setup("fit")
    local = local_dm(demo_root)
    local.setup("fit")
    assert assert_same_eval_batches(cached, local) == len(local.split.val) + len(local.split.test)
    assert not [r for r in gcs_emulator.requests if r.path.endswith(".png")]  # all from the run's cache

    # no credential anywhere: logs, saved configs, hparams, checkpoints, TensorBoard events, cache metadata
    outputs = [p for p in (tmp_path / "logs").rglob("*") if p.is_file()]
    outputs += [p for p in cache_dir.rglob("*") if p.is_file() and not p.name.endswith(".u8")]
    assert any(p.suffix == ".ckpt" for p in outputs) and any("tfevents" in p.name for p in outputs)
    assert any(p.name == "hparams.yaml" for p in outputs) and any(p.name == "config.yaml" for p in outputs)
    leaks = [str(p) for p in outputs if FAKE_TOKEN.encode() in p.read_bytes()]
    assert not leaks, leaks

    # explain.py on a gs:// image when the server rejects the token and quotes it back (as a proxy or a
    # hostile endpoint may): one line naming the object and the fix, exit 2, and the token nowhere
    name = (demo_root / "test_list.txt").read_text().split()[0]
    gcs_emulator.fault = lambda rec: (
        (401, f"Unauthorized: {rec.headers.get('authorization')} rejected")
        if rec.path.endswith(".png")
        else None
    )
    ckpt = next((tmp_path / "logs").rglob("last.ckpt"))
    out = tmp_path / "explain"
    explain = run_cli(
        [
            "explain.py",
            f"ckpt_path={ckpt}",
            f"inputs=gs://{nih_bucket}/png/{name}",
            f"out_dir={out}",
            f"paths.log_dir={tmp_path}/logs",
        ],
        cwd=ROOT,
        timeout=300,
        env=env,
    )
    assert any(FAKE_TOKEN in r.headers.get("authorization", "") for r in gcs_emulator.requests)
    assert FAKE_TOKEN not in explain.stdout + explain.stderr, explain.stderr[-3000:]
    lines = [ln for ln in (explain.stdout + explain.stderr).splitlines() if ln.strip()]
    assert explain.returncode == 2, explain.stderr[-3000:]
    assert len(lines) == 1 and f"gs://{nih_bucket}/png/{name}: not authenticated (401)" in lines[0], lines
    leaks = [str(p) for p in [*out.rglob("*"), *(tmp_path / "logs").rglob("*")] if p.is_file()]
    assert not [p for p in leaks if FAKE_TOKEN.encode() in Path(p).read_bytes()]
