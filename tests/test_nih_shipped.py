"""NIH's metadata shipped in the package: the index CLI, `data=nih` resolving to it, the sha256 check where the
files are read, and a run on a GCS emulator bucket that holds only images (labels and lists from pneumo)."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path
from urllib.parse import unquote

import pytest
import torch
import yaml
from omegaconf import OmegaConf

import pneumo.nih.shipped as nih
from pneumo.cli.index import main as index_main
from pneumo.data.datamodule import NIHDataModule
from pneumo.io.files import sha256_of
from pneumo.nih.index import NIHLabelIndex
from pneumo.pipelines.runs import load_run
from pneumo.synthetic.like_index import write_like_index
from tests.helpers import BILLING_PROJECT, ROOT, TINY_NET, run_cli

#: Published facts of NIH ChestX-ray14 (ATTRIBUTION.md; NIH's release notes), not computed by pneumo.
NIH_IMAGES, NIH_PATIENTS, NIH_PNEUMONIA, NIH_TRAIN_VAL, NIH_TEST = 112_120, 30_805, 1_431, 86_524, 25_596
LOCATIONS = {
    "labels_url": "Data_Entry_2017_v2020.csv.gz",
    "bbox_url": "BBox_List_2017.csv.gz",
    "train_val": "train_val_list.txt",
    "test": "test_list.txt",
}


def test_index_cli_without_a_csv_summarises_the_shipped_index_and_the_official_split() -> None:
    proc = run_cli(["-m", "pneumo", "index"], timeout=120)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["source"] == str(nih.HERE / "Data_Entry_2017_v2020.csv.gz")  # a package file: no download
    assert (summary["images"], summary["patients"], summary["pneumonia"]) == (
        NIH_IMAGES,
        NIH_PATIENTS,
        NIH_PNEUMONIA,
    )
    splits = summary["splits"]
    assert (splits["train_val"]["images"], splits["test"]["images"]) == (NIH_TRAIN_VAL, NIH_TEST)
    assert splits["train_val"]["not_in_index"] == splits["test"]["not_in_index"] == 0
    assert summary["patient_overlap"] == {"train_val/test": 0}
    # RSNA's radiologists beside NIH's label (SOURCES.md of the RSNA file: counts and the disagreement)
    rsna = summary["rsna"]
    assert (rsna["images"], rsna["positives"], rsna["boxes"]) == (26_585, 5_997, 9_534)
    test = rsna["splits"]["test"]
    assert (test["images"], test["patients"], test["positives"], test["boxes"]) == (
        7_170,
        1_249,
        2_583,
        4_220,
    )
    assert (test["both_positive"], test["index_only"], test["reference_only"]) == (174, 132, 2_409)
    assert (rsna["splits"]["train_val"]["images"], rsna["splits"]["train_val"]["positives"]) == (
        19_415,
        3_414,
    )


def test_train_cfg_job_resolves_every_nih_location_to_the_shipped_files() -> None:
    proc = run_cli(["train.py", "data=nih", "--cfg", "job", "--resolve"], timeout=120)
    assert proc.returncode == 0, proc.stderr
    data = yaml.safe_load(proc.stdout)["data"]
    shown = {"labels_url": data["labels_url"], "bbox_url": data["bbox_url"], **data["split_lists"]}
    for key, name in LOCATIONS.items():
        assert Path(shown[key]) == nih.HERE / name, key
        assert sha256_of(shown[key]) == nih.SHIPPED[name]  # the very bytes NIH published
    assert data["images_url"] == "gs://gcs-public-data--healthcare-nih-chest-xray/png"
    assert data["storage"]["requester_pays"] is True


def test_a_location_given_on_the_command_line_wins(compose_train) -> None:
    # unresolved (`--cfg job` without `--resolve`), a default names the shipped file it stands for
    assert "labels_url: ${nih:Data_Entry_2017_v2020.csv.gz}" in OmegaConf.to_yaml(compose_train(["data=nih"]))
    cfg = compose_train(
        ["data=nih", "data.labels_url=gs://mine/labels.csv", "data.split_lists.test=/x/test.txt"]
    )
    assert cfg.data.labels_url == "gs://mine/labels.csv" and cfg.data.split_lists.test == "/x/test.txt"
    assert cfg.data.split_lists.train_val == str(nih.HERE / "train_val_list.txt")
    with pytest.raises(Exception, match=r"no shipped NIH file 'Data_Entry\.csv'.*shipped: BBox_List_2017"):
        OmegaConf.to_container(OmegaConf.create({"x": "${nih:Data_Entry.csv}"}), resolve=True)


@pytest.fixture()
def corrupted_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the shipped files in which one byte of the label index differs; pneumo pointed at it."""
    copy = tmp_path / "nih"
    shutil.copytree(nih.HERE, copy)
    target = copy / "Data_Entry_2017_v2020.csv.gz"
    raw = bytearray(target.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    target.write_bytes(bytes(raw))
    monkeypatch.setattr(nih, "HERE", copy.resolve())
    return copy


def test_a_changed_shipped_file_is_a_one_line_error_where_it_is_read(
    corrupted_package: Path, capsys: pytest.CaptureFixture
) -> None:
    with pytest.raises(SystemExit) as stopped:
        index_main([])
    assert stopped.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith(f"error: {corrupted_package.resolve() / 'Data_Entry_2017_v2020.csv.gz'}: sha256 ")
    assert "differs from NIH's release" in err and "reinstall pneumo" in err
    # the data module of data=nih stops on it too; the untouched files still pass their check
    dm = NIHDataModule(
        images_url=str(corrupted_package),  # a local folder: nothing to probe or bill
        labels_url=nih.location("Data_Entry_2017_v2020.csv.gz"),
        split_lists={"train_val": nih.location("train_val_list.txt"), "test": nih.location("test_list.txt")},
        cache={"enabled": False},
    )
    with pytest.raises(nih.ShippedFileError, match="sha256"):
        dm.setup("fit")
    assert nih.verified(nih.location("test_list.txt")).endswith("test_list.txt")
    # a file of the same name elsewhere is the user's own: read as given, never compared with NIH's
    own = corrupted_package.parent / "own" / "Data_Entry_2017_v2020.csv.gz"
    own.parent.mkdir()
    header = "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position"
    own.write_bytes(gzip.compress(f"{header}\n00000001_000.png,Pneumonia,0,1,50,M,PA\n".encode()))
    assert len(NIHLabelIndex.from_csv(str(own))) == 1


@pytest.mark.slow
def test_data_nih_trains_from_an_emulator_bucket_holding_only_images(gcs_emulator, tmp_path: Path) -> None:
    """`data=nih data.images_url=gs://...` and no label/list override: labels, split and boxes are pneumo's.

    The bucket holds the first 400 images of NIH's index, drawn synthetic (`--like-index`); the other 111,720
    are missing and skipped (`data.images.on_missing=skip`, streamed: no cache build over all of them). Lightning's
    `overfit_batches` trains on the first sorted batch instead of a random one, which lies among them."""
    first = tmp_path / "first_rows.csv"
    with gzip.open(nih.HERE / "Data_Entry_2017_v2020.csv.gz", "rt") as fh:
        first.write_text("".join(next(fh) for _ in range(401)))
    write_like_index(str(tmp_path / "like"), index_csv=str(first), size=48, workers=0)
    bucket = "nih-images-only"
    gcs_emulator.create_bucket(bucket, requester_pays_projects={BILLING_PROJECT})
    with gcs_emulator.billing_checks_off():
        fs = gcs_emulator.gcsfs()
        for png in sorted((tmp_path / "like" / "images").glob("*.png")):
            fs.pipe_file(f"{bucket}/png/{png.name}", png.read_bytes())
    gcs_emulator.requests.clear()

    proc = run_cli(
        [
            "train.py",
            "data=nih",
            f"data.images_url=gs://{bucket}/png",
            "data.cache.enabled=false",
            "data.images.on_missing=skip",
            "data.images.size=48",
            "data.loader.batch_size=16",
            "data.loader.num_workers=0",
            "seed=42",
            f"paths.log_dir={tmp_path}/logs",
            "trainer.accelerator=cpu",
            "trainer.max_epochs=1",
            "+trainer.overfit_batches=1",
            "+trainer.limit_test_batches=2",
            "callbacks.progress_bar.refresh_rate=0",
            *TINY_NET,
        ],
        cwd=ROOT,
        timeout=600,
        env={
            "STORAGE_EMULATOR_HOST": gcs_emulator.endpoint,
            "GOOGLE_CLOUD_PROJECT": BILLING_PROJECT,
            "PNEUMO_GCS_TOKEN": "ya29.fake",
            "FETCH_RAW_TOKEN_EXPIRY": "false",
        },
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "test/auroc" in out
    # the official split, from the shipped lists: all of NIH's test list, 25,596 images of 2,797 patients
    assert f"test split: {NIH_TEST} images, 2797 patients" in out
    seen = gcs_emulator.requests_for(bucket)
    keys = [
        unquote(r.path).split("/o/")[1] if "/o/" in r.path else r.query.get("prefix", [""])[0] for r in seen
    ]
    assert keys and all(key.startswith("png/0") for key in keys), (
        keys
    )  # images only: no CSV or list asked for
    assert {tuple(r.query.get("userProject", [])) for r in seen} == {(BILLING_PROJECT,)}
    # the checkpoint records the shipped files as its data (explain.py and train=false read them from there)
    ckpt = torch.load(next((tmp_path / "logs").rglob("*.ckpt")), map_location="cpu", weights_only=False)
    data = ckpt["datamodule_hyper_parameters"]
    assert data["labels_url"] == str(nih.HERE / "Data_Entry_2017_v2020.csv.gz")
    assert data["split_lists"] == {k: str(nih.HERE / f"{k}_list.txt") for k in ("train_val", "test")}
    assert data["bbox_url"] == str(nih.HERE / "BBox_List_2017.csv.gz")

    # A checkpoint from another machine names that install's copies; loaded here, they are this install's.
    elsewhere = "/home/someone/venv/lib/python3.11/site-packages/pneumo/data/nih"
    data["labels_url"] = f"{elsewhere}/Data_Entry_2017_v2020.csv.gz"
    data["split_lists"] = {k: f"{elsewhere}/{k}_list.txt" for k in ("train_val", "test")}
    data["bbox_url"] = f"{elsewhere}/BBox_List_2017.csv.gz"
    moved = tmp_path / "from_elsewhere.ckpt"
    torch.save(ckpt, moved)
    run = load_run(str(moved), storage={"token": "anon"})
    assert run.datamodule.labels_url == str(nih.HERE / "Data_Entry_2017_v2020.csv.gz")
    assert run.datamodule.split_lists == {k: str(nih.HERE / f"{k}_list.txt") for k in ("train_val", "test")}
    assert run.datamodule.bbox_url == str(nih.HERE / "BBox_List_2017.csv.gz")


def test_shipped_files_of_another_install_are_read_from_this_one(tmp_path: Path) -> None:
    """Paths of another install's shipped files (a checkpoint's saved data) map to this install's; a file of
    the same name elsewhere, a URL, or a look-alike folder are left alone."""
    other = "/opt/other-env/lib/python3.12/site-packages/pneumo/data/nih"
    dm = NIHDataModule(
        images_url=str(tmp_path / "images"),
        labels_url=f"{other}/Data_Entry_2017_v2020.csv.gz",
        split_lists={"train_val": f"{other}/train_val_list.txt", "test": f"{other}/test_list.txt"},
        bbox_url=f"file://{other}/BBox_List_2017.csv.gz",
        cache={"enabled": False},
    )
    assert dm.labels_url == str(nih.HERE / "Data_Entry_2017_v2020.csv.gz")
    assert dm.split_lists == {k: str(nih.HERE / f"{k}_list.txt") for k in ("train_val", "test")}
    assert dm.bbox_url == str(nih.HERE / "BBox_List_2017.csv.gz")
    assert len(NIHLabelIndex.from_csv(dm.labels_url)) == NIH_IMAGES
    for kept in (
        str(tmp_path / "Data_Entry_2017_v2020.csv.gz"),  # the user's own copy
        "/data/pneumo/nih/test_list.txt",  # not pneumo/data/nih
        "gs://bucket/pneumo/nih/files/test_list.txt",
    ):
        assert nih.relocated(kept) == kept
