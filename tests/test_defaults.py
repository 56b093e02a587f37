"""One copy of each default: the Python constant or signature owns it; a yaml file that must spell the value
out (so ``--cfg job`` shows it and a command-line override needs no ``+``) holds the same value, checked here,
so the two cannot drift apart."""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Mapping
from typing import Any

import pytest
import yaml

from tests.helpers import CONF


def conf(name: str) -> dict:
    return yaml.safe_load((CONF / name).read_text())


def signature_defaults(target: Any) -> dict[str, Any]:
    """``{parameter: default}`` of a class's ``__init__`` (or a function)."""
    params = inspect.signature(target).parameters.values()
    return {p.name: p.default for p in params if p.default is not inspect.Parameter.empty}


def drift(node: Mapping, defaults: Mapping[str, Any], deliberate: frozenset[str] = frozenset()) -> list[str]:
    """The keys of ``node`` whose literal value differs from the Python default (``${...}`` interpolations
    and keys without a default are not copies; ``deliberate`` ones differ on purpose)."""
    found = []
    for key, value in node.items():
        if key == "_target_" or key in deliberate or key not in defaults:
            continue
        if isinstance(value, str) and "${" in value:
            continue
        default = defaults[key]
        same = value == default or (value == {} and default is None)  # an empty mapping = none given
        if isinstance(value, list) and isinstance(default, tuple):
            same = tuple(value) == default
        if not same:
            found.append(f"{key}: yaml {value!r} != python {default!r}")
    return found


def test_explain_config_spells_the_xai_defaults() -> None:
    from pneumo.xai.gradcam import DEFAULT_LAYER, DEFAULT_TARGET
    from pneumo.xai.heatmap_boxes import DEFAULT_TOP_K
    from pneumo.xai.localization import DEFAULT_THRESHOLD
    from pneumo.xai.overlay import DEFAULT_ALPHA, DEFAULT_CMAP

    cfg = conf("explain.yaml")
    assert cfg["gradcam"] == {"layer": DEFAULT_LAYER, "target": DEFAULT_TARGET}
    assert cfg["localization"]["threshold"] == DEFAULT_THRESHOLD
    assert cfg["boxes"] == {"threshold": DEFAULT_THRESHOLD, "top_k": DEFAULT_TOP_K}
    assert (cfg["overlay"]["alpha"], cfg["overlay"]["cmap"]) == (DEFAULT_ALPHA, DEFAULT_CMAP)


@pytest.mark.parametrize(
    ("path", "key", "target"),
    [
        ("callbacks/gradcam_overlay.yaml", "gradcam_overlay", "pneumo.callbacks.GradCamOverlayCallback"),
        ("callbacks/performance.yaml", "performance", "pneumo.callbacks.performance.PerformanceTuning"),
    ],
)
def test_pneumo_callback_configs_equal_the_python_defaults(path: str, key: str, target: str) -> None:
    from hydra.utils import get_class

    node = conf(path)[key]
    assert node["_target_"] == target
    defaults = signature_defaults(get_class(target))
    assert set(node) - {"_target_"} <= set(defaults), "a yaml key the class does not take"
    assert drift(node, defaults) == []


def test_storage_block_equals_the_io_defaults() -> None:
    from pneumo.io.storage import IO_DEFAULTS, StorageSettings
    from pneumo.io.store import ImageStore

    storage = conf("data/demo.yaml")["storage"]
    assert {k: storage[k] for k in IO_DEFAULTS} == IO_DEFAULTS
    # ImageStore's keyword arguments default to None: IO_DEFAULTS' value
    assert {k: v for k, v in signature_defaults(ImageStore).items() if k in IO_DEFAULTS} == dict.fromkeys(
        IO_DEFAULTS
    )
    # project defaults to $GOOGLE_CLOUD_PROJECT (an interpolation): the others are StorageSettings' own
    assert drift(storage, signature_defaults(StorageSettings)) == []
    # data=nih raises concurrency on purpose (a bucket of 112,120 objects); every other key is the demo's
    assert set(conf("data/nih.yaml")["storage"]) == {"requester_pays", "concurrency"}


def test_demo_synthetic_block_equals_the_synthetic_defaults() -> None:
    from pneumo.synthetic.demo import SyntheticConfig

    synthetic = conf("data/demo.yaml")["synthetic"]
    assert drift(synthetic, {f.name: f.default for f in dataclasses.fields(SyntheticConfig)}) == []
    assert set(synthetic) - {"root"} <= {f.name for f in dataclasses.fields(SyntheticConfig)}


def test_eval_config_equals_the_report_defaults() -> None:
    from pneumo.reporting.report import EvalSettings
    from pneumo.stats.threshold import DEFAULT_RULE

    cfg = conf("eval/default.yaml")
    defaults = EvalSettings()
    flat = {k: v for k, v in cfg.items() if k != "bootstrap"} | {
        k: v
        for k, v in cfg["bootstrap"].items()
        if k != "seed"  # the run's ${seed}
    }
    assert drift(flat, dataclasses.asdict(defaults)) == []
    assert set(flat) == {f.name for f in dataclasses.fields(EvalSettings)} - {"seed"}
    # a config that leaves the eval block out gets the same settings
    assert EvalSettings.from_config({}) == defaults
    # the classifier's rule follows eval.threshold, falling back on the same default
    assert (
        conf("model/densenet121.yaml")["operating_point"] == f"${{oc.select:eval.threshold,{DEFAULT_RULE}}}"
    )


def test_model_config_equals_the_classifier_defaults() -> None:
    from pneumo.models.classifier import PneumoniaClassifier

    node = conf("model/densenet121.yaml")
    # temperature: the recipe fits it on validation; a classifier built in Python is unscaled unless told
    assert drift(node, signature_defaults(PneumoniaClassifier), deliberate=frozenset({"temperature"})) == []
