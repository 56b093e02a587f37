"""Network construction from a ``_target_`` spec (initial weights: ``pneumo.models.pretrained``)."""

from __future__ import annotations

from collections.abc import Mapping

from hydra.utils import instantiate
from torch import nn


def build_net(spec: Mapping) -> nn.Module:
    """Instantiate a network from a ``_target_`` spec, e.g. MONAI's ``DenseNet121`` with 1 input channel."""
    return instantiate(dict(spec), _convert_="all")
