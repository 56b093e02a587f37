"""Network construction and loading of local initial weights."""

from __future__ import annotations

import logging
from collections.abc import Mapping

import torch
from hydra.utils import instantiate
from torch import nn

from pneumo.errors import ConfigError

log = logging.getLogger(__name__)


def build_net(spec: Mapping) -> nn.Module:
    """Instantiate a network from a ``_target_`` spec, e.g. MONAI's ``DenseNet121`` with 1 input channel."""
    return instantiate(dict(spec), _convert_="all")


def load_initial_weights(net: nn.Module, path: str, prefix: str = "net.") -> None:
    """Initialise ``net`` from a local Lightning checkpoint or a plain ``state_dict`` file.

    Keys may carry the LightningModule prefix (``net.``). Tensors whose shape differs (e.g. a classifier
    head with another number of classes) are skipped and reported, so a 14-finding model can seed a
    binary one. Loading uses ``weights_only=True``: no pickled code runs.
    """
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as err:
        raise ConfigError(f"model.init_weights: {path} does not exist") from err
    state = blob.get("state_dict", blob) if isinstance(blob, Mapping) else None
    if not isinstance(state, Mapping):
        raise ConfigError(f"model.init_weights: {path} holds no state_dict")
    state = {k[len(prefix) :] if k.startswith(prefix) else k: v for k, v in state.items()}
    own = net.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not usable:
        raise ConfigError(
            f"model.init_weights: no tensor of {path} matches the network (wrong architecture?)"
        )
    skipped = sorted(set(own) - set(usable))
    net.load_state_dict(usable, strict=False)
    log.info(
        "initialised %d tensors from %s; %d kept their fresh values: %s",
        len(usable),
        path,
        len(skipped),
        skipped[:5],
    )
