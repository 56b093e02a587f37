"""``ExplainSettings`` / ``EvaluateSettings``: built from the composed Hydra config in one call, with the
yaml's keys and defaults, and checked once: a value that cannot work is one line naming its key."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from pneumo.errors import ConfigError, PneumoError
from pneumo.io.storage import StorageSettings
from pneumo.pipelines.evaluate import EvaluateError, EvaluateSettings
from pneumo.pipelines.explain import (
    BoxSettings,
    ExplainSettings,
    GradCamSettings,
    LocalizationSettings,
    OverlaySettings,
)
from pneumo.xai.explainers import GradCamExplainer
from pneumo.xai.gradcam import DEFAULT_LAYER
from tests.helpers import ROOT, run_cli


def test_explain_settings_read_every_key_of_explain_yaml(compose_train) -> None:
    cfg = compose_train(
        ["ckpt_path=run/last.ckpt", "split=test", "boxes.top_k=3", "overlay.alpha=0.3", "storage.project=p",
         "gradcam.layer=features.denseblock4", "localization.finding=Mass", "dicom_voi=window"],
        config_name="explain",
    )  # fmt: skip
    settings = ExplainSettings.from_config(cfg)
    assert settings.ckpt_path == "run/last.ckpt" and settings.split == "test" and settings.inputs is None
    assert settings.out_dir == cfg.paths.output_dir
    assert settings.boxes == BoxSettings(threshold=0.5, top_k=3)
    assert settings.overlay == OverlaySettings(max_size=1024, alpha=0.3, cmap="jet")
    assert settings.gradcam.layer == "features.denseblock4" and settings.localization.finding == "Mass"
    assert settings.dicom_voi == "window" and settings.storage["project"] == "p"


def test_explain_yaml_defaults_are_the_settings_defaults(compose_train) -> None:
    """One default of each: what the yaml says equals what ``ExplainSettings`` says when a key is left out."""
    cfg = compose_train(["ckpt_path=c.ckpt", "inputs=images"], config_name="explain")
    read = ExplainSettings.from_config(cfg)
    made = ExplainSettings(ckpt_path="c.ckpt", out_dir=read.out_dir, inputs="images", storage=read.storage)
    # the yaml selects explainer=gradcam (a spec); left out, the settings build the same Grad-CAM
    assert dataclasses.replace(read, explainer=None) == made
    assert read.explainer is not None and list(read.explainer) == ["gradcam"]
    same = [{n: (type(e), e.layer, e.batch_size) for n, e in s.explainers().items()} for s in (read, made)]
    assert same[0] == same[1] == {"gradcam": (GradCamExplainer, DEFAULT_LAYER, 32)}
    assert (read.gradcam, read.localization) == (GradCamSettings(), LocalizationSettings())


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        ([], "ckpt_path must be given"),
        (["ckpt_path=c", "inputs=x", "split=test"], "give exactly one of inputs=PATH_OR_URL or split="),
        (["ckpt_path=c", "split=tset"], "split='tset': choose one of 'train', 'val', 'test' (did you mean 'test'?)"),
        (["ckpt_path=c", "split=test", "boxes.top_k=0"], "boxes.top_k=0: must be a whole number >= 1"),
        (["ckpt_path=c", "split=test", "overlay.max_size=8"], "overlay.max_size=8: must be a whole number >= 16"),
        (["ckpt_path=c", "split=test", "localization.threshold=2"], "localization.threshold=2"),
        (["ckpt_path=c", "split=test", "batch_size=abc"], "batch_size='abc'"),
        (["ckpt_path=c", "split=test", "device=gpu9"], "device='gpu9' is not a device"),
        (["ckpt_path=c", "split=test", "dicom_voi=windw"], "dicom_voi='windw'"),
    ],
)  # fmt: skip
def test_a_bad_explain_value_is_one_line_naming_its_key(
    compose_train, overrides: list[str], named: str
) -> None:
    cfg = compose_train(overrides, config_name="explain")
    with pytest.raises(ConfigError) as err:
        ExplainSettings.from_config(cfg)
    assert named in str(err.value) and "\n" not in str(err.value)


def test_explain_settings_made_in_python_are_checked_the_same_way() -> None:
    settings = ExplainSettings("c.ckpt", "out", split="val", overlay={"max_size": 512}, boxes={"top_k": 2})
    assert settings.overlay == OverlaySettings(max_size=512) and settings.boxes.top_k == 2
    with pytest.raises(ConfigError, match=r"overlay.colour is not a setting; known: max_size, alpha, cmap"):
        ExplainSettings("c.ckpt", "out", split="val", overlay={"colour": "red"})
    with pytest.raises(ConfigError, match=r"^top_k is not a setting"):
        ExplainSettings.from_config(
            {"ckpt_path": "c", "out_dir": "o", "split": "val", "boxes": {}, "top_k": 2}
        )


def test_evaluate_settings_read_evaluate_yaml(compose_train) -> None:
    cfg = compose_train(
        ["predictions=t.csv", "val_predictions=v.csv", "recalibrate=true", "eval.threshold=sensitivity@0.9",
         "eval.bootstrap.resamples=50", "seed=7", "storage.token=anon"],
        config_name="evaluate",
    )  # fmt: skip
    settings = EvaluateSettings.from_config(cfg)
    assert (settings.predictions, settings.val_predictions, settings.recalibrate) == ("t.csv", "v.csv", True)
    assert settings.eval.threshold == "sensitivity@0.9" and settings.eval.resamples == 50
    assert settings.eval.seed == 7  # eval.bootstrap.seed: ${seed}
    assert isinstance(settings.storage, StorageSettings) and settings.storage.token == "anon"
    assert settings.out_dir == cfg.paths.output_dir and settings.split == "test"


@pytest.mark.parametrize(
    ("overrides", "error", "named"),
    [
        ([], ConfigError, "predictions must be given"),
        (["predictions=t.csv", "recalibrate=true"], EvaluateError, "recalibrate=true fits the temperature"),
        (["predictions=t.csv", "eval.threshold=youdn"], ConfigError, "eval.threshold"),
        (["predictions=t.csv", "eval.calibration_bins=0"], ConfigError, "eval.calibration_bins"),
    ],
)
def test_a_bad_evaluate_value_is_one_line_naming_its_key(
    compose_train, overrides: list[str], error: type, named: str
) -> None:
    cfg = compose_train(overrides, config_name="evaluate")
    with pytest.raises(error) as err:
        EvaluateSettings.from_config(cfg)
    assert isinstance(err.value, PneumoError) and named in str(err.value) and "\n" not in str(err.value)


@pytest.mark.slow
def test_explain_without_a_checkpoint_is_one_line(tmp_path: Path) -> None:
    proc = run_cli(["explain.py", "split=test", f"paths.log_dir={tmp_path}/logs"], cwd=ROOT)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines() == ["error: ckpt_path must be given: pass ckpt_path=..."]
