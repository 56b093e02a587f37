"""The binary and multi-label tasks: what each output means, losses, weights, and the classifier's delegation."""

from __future__ import annotations

import re
import subprocess
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch

from pneumo.errors import PneumoError
from pneumo.models.classifier import PneumoniaClassifier
from pneumo.models.tasks import TASKS, task_named

# NIH's order of findings (README of ChestX-ray14): Pneumonia is the 7th.
NIH_PNEUMONIA_COLUMN = 6
SMALL_NET = {
    "_target_": "monai.networks.nets.DenseNet",
    "spatial_dims": 2,
    "in_channels": 1,
    "init_features": 8,
    "growth_rate": 4,
    "block_config": [1, 1],
}


class _Counts:
    """A data module reduced to the train counts the automatic weights read."""

    def train_class_counts(self) -> np.ndarray:
        return np.array([30, 10])

    def train_finding_counts(self) -> tuple[np.ndarray, int]:
        positives = np.zeros(14, dtype=np.int64)
        positives[NIH_PNEUMONIA_COLUMN], positives[0] = 5, 20
        return positives, 40


def test_pneumonia_output_and_probabilities_per_task() -> None:
    logits = torch.tensor([[0.0, 2.0], [1.0, -1.0]])
    binary = task_named("binary")
    expected = torch.exp(logits[:, 1]) / torch.exp(logits).sum(dim=1)
    torch.testing.assert_close(binary.pneumonia_probability(logits), expected)
    multi = task_named("multilabel")
    logits14 = torch.zeros(2, 14)
    logits14[:, NIH_PNEUMONIA_COLUMN] = torch.tensor([3.0, -3.0])
    torch.testing.assert_close(multi.pneumonia_probability(logits14), 1 / (1 + torch.exp(-logits14[:, 6])))
    assert (binary.outputs, binary.pneumonia_output) == (2, 1)
    assert (multi.outputs, multi.pneumonia_output) == (14, NIH_PNEUMONIA_COLUMN)


def test_losses_match_torch_definitions() -> None:
    torch.manual_seed(0)
    logits, labels = torch.randn(4, 2), torch.tensor([0, 1, 1, 0])
    weights = torch.tensor([0.5, 2.0])
    by_hand = (
        -(weights[labels] * logits.log_softmax(1)[torch.arange(4), labels]).sum() / weights[labels].sum()
    )
    torch.testing.assert_close(TASKS["binary"].loss(logits, labels, weights), by_hand)
    logits, findings = torch.randn(3, 14), (torch.rand(3, 14) > 0.5).float()
    pos_weight = torch.full((14,), 3.0)
    p = logits.sigmoid()
    by_hand = -(pos_weight * findings * p.log() + (1 - findings) * (1 - p).log()).mean()
    torch.testing.assert_close(TASKS["multilabel"].loss(logits, findings, pos_weight), by_hand)


def test_automatic_weights_from_train_counts() -> None:
    # 30 negatives, 10 positives: inverse frequency 40 / (2 * count).
    torch.testing.assert_close(TASKS["binary"].auto_weights(_Counts()), torch.tensor([40 / 60, 40 / 20]))
    pos_weight = TASKS["multilabel"].auto_weights(_Counts())
    assert pos_weight[NIH_PNEUMONIA_COLUMN].item() == pytest.approx(35 / 5)
    assert pos_weight[0].item() == pytest.approx(20 / 20)
    assert pos_weight[1].item() == 1.0  # no positive: nothing to weigh
    with pytest.raises(PneumoError, match=r"model\.class_weights=null"):
        TASKS["binary"].auto_weights(None)


def test_classifier_delegates_and_keeps_the_task_name_in_hparams() -> None:
    for name, outputs in (("binary", 2), ("multilabel", 14)):
        model = PneumoniaClassifier(
            net={**SMALL_NET, "out_channels": outputs}, optimizer=partial(torch.optim.Adam), task=name
        )
        assert model.hparams.task == name and model.task is TASKS[name]
        x = torch.rand(2, 1, 32, 32)
        torch.testing.assert_close(model.predict_proba(x), model.task.pneumonia_probability(model(x)))


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        (
            {"task": "multiclass"},
            "model.task='multiclass': choose one of 'binary', 'multilabel'",
        ),
        ({"task": "multilabel"}, "model.net.out_channels=2"),
        ({"task": "multilable"}, "(did you mean 'multilabel'?)"),
        (
            {"class_weights": "balanced"},
            "model.class_weights='balanced': choose one of 'auto', null or a list",
        ),
        ({"class_weights": "atuo"}, "(did you mean 'auto'?)"),
        (
            {"temperature": "fitt"},
            "model.temperature='fitt': choose one of 'fit' or a number > 0 (did you mean",
        ),
        ({"temperature": -1.0}, "model.temperature=-1.0: choose one of 'fit' or a number > 0"),
        ({"class_weights": [1.0, -1.0]}, "finite, >= 0"),
        ({"class_weights": [1.0]}, "a list of 2 numbers"),
    ],
)
def test_bad_model_settings_are_user_errors(kwargs: dict, fragment: str) -> None:
    with pytest.raises(PneumoError, match=re.escape(fragment)):
        PneumoniaClassifier(
            net={**SMALL_NET, "out_channels": 2}, optimizer=partial(torch.optim.Adam), **kwargs
        )


def test_no_task_branches_outside_the_task_classes() -> None:
    root = Path(__file__).resolve().parents[1]
    found = subprocess.run(
        ["grep", "-rnE", r"task ?[!=]= ?['\"]|PNEUMONIA_INDEX|FINDINGS\.index\(PNEUMONIA", "pneumo"],
        cwd=root,
        capture_output=True,
        text=True,
    ).stdout.splitlines()
    # The data and nih packages read the label matrix's Pneumonia column; model outputs are the tasks' business.
    allowed = ("pneumo/data/", "pneumo/nih/", "pneumo/models/tasks.py")
    assert [line for line in found if not line.startswith(allowed)] == []
