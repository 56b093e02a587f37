"""``NIHDataModule``'s settings groups (``pneumo.data.settings``): built from ``data.split`` / ``data.images`` /
``data.loader`` / ``data.cache``, checked once with one-line errors naming the key; the flat layout of older
configs and checkpoints is rebuilt (checkpoints) or refused with where the key went (configs, command lines)."""

from __future__ import annotations

from pathlib import Path

import hydra
import pytest
from omegaconf import OmegaConf

from pneumo.data.datamodule import NIHDataModule
from pneumo.data.settings import (
    MOVED,
    CacheSettings,
    ImageSettings,
    LoaderSettings,
    SplitSettings,
    group_settings,
    grouped,
    is_flat,
)
from pneumo.errors import ConfigError
from pneumo.pipelines.preflight import check_overrides, check_train_config
from pneumo.pipelines.runs import with_runtime
from tests.helpers import ROOT, demo_datamodule, run_cli

#: A data module's hyperparameters as checkpoints before the settings groups saved them.
FLAT = {
    "images_url": "/d/images",
    "labels_url": "/d/Data_Entry_2017.csv",
    "split_lists": None,
    "bbox_url": None,
    "synthetic": None,
    "image_size": 64,
    "views": ["PA"],
    "val_fraction": 0.15,
    "test_fraction": 0.25,
    "split_seed": 3,
    "batch_size": 16,
    "num_workers": 2,
    "pin_memory": True,
    "augment": {"enabled": False},
    "storage": {"project": None},
    "cache": True,
    "cache_dir": "/d/cache",
    "on_missing": "skip",
    "on_bad_image": "error",
    "image_suffix": ".dcm",
    "dicom_voi": "window",
}


def test_the_flat_layout_is_regrouped_key_by_key() -> None:
    assert is_flat(FLAT) and set(MOVED) - set(FLAT) == {"progress"}  # progress was never saved
    regrouped = grouped(FLAT)
    assert not is_flat(regrouped)
    assert regrouped["split"] == {"views": ["PA"], "val_fraction": 0.15, "test_fraction": 0.25, "seed": 3}
    assert regrouped["images"] == {
        "size": 64, "suffix": ".dcm", "dicom_voi": "window", "augment": {"enabled": False},
        "on_missing": "skip", "on_bad_image": "error",
    }  # fmt: skip
    assert regrouped["loader"] == {"batch_size": 16, "num_workers": 2, "pin_memory": True}
    assert regrouped["cache"] == {"enabled": True, "dir": "/d/cache"}
    assert {k: regrouped[k] for k in ("images_url", "labels_url", "storage")} == {
        k: FLAT[k] for k in ("images_url", "labels_url", "storage")
    }
    groups = group_settings(regrouped)
    assert groups["split"] == SplitSettings(views=["PA"], val_fraction=0.15, test_fraction=0.25, seed=3)
    assert groups["cache"] == CacheSettings(enabled=True, dir="/d/cache", progress=True)


def test_a_data_module_rebuilds_from_its_hyperparameters(demo_root: Path, tmp_path: Path) -> None:
    dm = demo_datamodule(
        demo_root,
        images={"suffix": ".png", "on_missing": "skip"},
        cache={"enabled": True, "dir": str(tmp_path)},
    )
    again = NIHDataModule(**dm.hparams)
    assert again.hparams == dm.hparams
    assert (
        again.image_settings == dm.image_settings == ImageSettings(size=48, suffix=".png", on_missing="skip")
    )
    assert again.loader_settings == LoaderSettings(batch_size=8, num_workers=0)
    assert again.cache_settings == CacheSettings(enabled=True, dir=str(tmp_path), progress=False)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"loader": {"batchsize": 8}}, "data.loader.batchsize is not a setting (did you mean 'batch_size'?)"),
        ({"loader": {"batch_size": 0}}, "data.loader.batch_size=0: must be a whole number >= 1"),
        ({"loader": {"num_workers": -1}}, "data.loader.num_workers=-1: must be a whole number >= 0"),
        ({"images": {"size": "big"}}, "data.images.size='big': must be a whole number >= 1"),
        ({"images": {"on_missing": "skp"}}, "data.images.on_missing='skp': choose one of 'error', 'skip'"),
        ({"images": {"augment": {"prob": 2}}}, "data.images.augment.prob=2: must be a number >= 0 and <= 1"),
        ({"split": {"val_fraction": 0}}, "data.split.val_fraction=0: must be a number > 0 and < 1"),
        ({"split": {"val_fraction": 0.5, "test_fraction": 0.5}}, "data.split.val_fraction + data.split.test_fraction = 1"),
        ({"cache": {"enabled": True}}, "data.cache.enabled=true needs data.cache.dir"),
        ({"cache": True}, "data.cache=True: must be a mapping of enabled, dir, progress"),
    ],
)  # fmt: skip
def test_a_bad_group_value_is_one_line_naming_its_key(data: dict, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        group_settings(data)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_with_split_lists_the_fractions_only_carve_validation() -> None:
    groups = group_settings(
        {"split_lists": {"train_val": "a", "test": "b"}, "split": {"val_fraction": 0.5, "test_fraction": 0.6}}
    )
    assert groups["split"].test_fraction == 0.6


def test_only_how_the_data_is_read_comes_from_the_command() -> None:
    saved = grouped(FLAT)
    given = {
        "loader": {"batch_size": 4, "num_workers": None},
        "images": {"size": 224},
        "cache": {"dir": "/x"},
    }
    args = with_runtime(saved, given)
    assert args["loader"] == {"batch_size": 4, "num_workers": 2, "pin_memory": True}
    assert args["images"]["size"] == 64 and args["cache"] == {"enabled": True, "dir": "/x"}
    assert saved["loader"]["batch_size"] == 16  # the saved settings are left as they were


@pytest.mark.parametrize(("old", "new"), sorted(MOVED.items()))
def test_an_old_key_says_where_it_went(old: str, new: str) -> None:
    with pytest.raises(ConfigError, match=rf"^data\.{old} moved to data\.{new}: write data\.{new}=1$"):
        check_overrides([f"data.{old}=1"])
    value = {"enabled": True} if old == "cache" else 1
    cfg = OmegaConf.create({"data": {old: 1}})  # e.g. an experiment file written for the flat layout
    with pytest.raises(ConfigError, match=rf"^data\.{old} moved to data\.{new}"):
        check_train_config(cfg)
    if old == "cache":  # data.cache is a group now: as a mapping it is no old key
        check_overrides(["data.cache.enabled=false", "data.cache={enabled: false}"])
        assert not is_flat({"cache": value})


def test_the_configs_compose_into_groups(compose_train) -> None:
    for data in ("demo", "nih"):
        cfg = compose_train([f"data={data}", "data.loader.batch_size=4", "data.images.size=64"])
        check_train_config(cfg)
        dm = hydra.utils.instantiate(cfg.data)
        assert (dm.loader_settings.batch_size, dm.image_settings.size) == (4, 64)
        assert (
            dm.cache_settings.enabled
            and Path(dm.cache_settings.dir) == (Path(cfg.paths.data_dir) / "cache").absolute()
        )
    cfg = compose_train(["debug=overfit"])
    assert cfg.data.images.augment.enabled is False and cfg.data.loader.num_workers == 0


def test_train_with_an_old_key_is_one_line_saying_where_it_went(tmp_path: Path) -> None:
    proc = run_cli(["train.py", "data.batch_size=8", f"paths.log_dir={tmp_path}"], cwd=ROOT, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines() == [
        "error: data.batch_size moved to data.loader.batch_size: write data.loader.batch_size=8"
    ]
    proc = run_cli(["train.py", "data.cache=false", f"paths.log_dir={tmp_path}"], cwd=ROOT, timeout=120)
    assert proc.stderr.strip().splitlines() == [
        "error: data.cache moved to data.cache.enabled: write data.cache.enabled=false"
    ]
