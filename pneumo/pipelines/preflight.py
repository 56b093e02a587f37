"""Checks of a ``train.py`` run that need no data, done before the first image is fetched.

A typo such as ``data.batch_size=0`` or ``data.image_size=7`` must not cost the hours of building the image
cache of 112,120 NIH images before it shows. ``train`` calls ``check_train_config`` on the composed config
before anything is instantiated, and ``check_network_input`` on the model before ``fit``: each bad value
stops the run with one ``ConfigError`` line naming the key and the fix.

Example:
    >>> from omegaconf import OmegaConf
    >>> check_train_config(OmegaConf.create({"train": True, "data": {"batch_size": 0}}))
    Traceback (most recent call last):
    ...
    pneumo.errors.ConfigError: data.batch_size=0: must be a whole number >= 1
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig

from pneumo.config import checked_number
from pneumo.errors import ConfigError
from pneumo.io.store import is_url

if TYPE_CHECKING:  # torch is imported when a network is checked: config checks stay fast
    from torch import nn

#: Largest side tried when looking for the smallest input a network takes (doubling, then a bisection).
_LARGEST_TRIED = 1024


def _check_numbers(section: Any, prefix: str, rules: dict[str, tuple]) -> None:
    """Check each key of ``rules`` present (and not null) in ``section``: ``key: (kind, low, high, open)``."""
    for key, (kind, low, high, low_open, high_open) in rules.items():
        if section is not None and section.get(key) is not None:
            checked_number(section.get(key), f"{prefix}.{key}", kind, low, high, low_open=low_open,
                           high_open=high_open)  # fmt: skip


def _check_parent_writable(path: str | None, key: str) -> None:
    """A local output folder must be creatable: its nearest existing ancestor is a writable folder."""
    if not path or is_url(str(path)):
        return
    here = Path(str(path)).expanduser().absolute()
    while not here.exists():
        here = here.parent
    if not here.is_dir():
        raise ConfigError(f"{key}={path}: {here} is a file, not a folder; choose another {key}")
    if not os.access(here, os.W_OK | os.X_OK):
        raise ConfigError(f"{key}={path}: {here} is not writable; choose a folder you may write to")


def check_train_config(cfg: DictConfig) -> None:
    """Check every value of a ``train.py`` config that can be checked without data.

    Raises:
        ConfigError: the first bad value (one line: key, value, what is valid).
    """
    data, trainer = cfg.get("data"), cfg.get("trainer")
    _check_numbers(data, "data", {
        "image_size": (int, 1, None, False, False),
        "batch_size": (int, 1, None, False, False),
        "num_workers": (int, 0, None, False, False),
        "val_fraction": (float, 0, 1, True, True),
        "test_fraction": (float, 0, 1, False, True),
    })  # fmt: skip
    if data is not None:
        if data.get("split_lists") is None and data.get("val_fraction") is not None:
            total = float(data.val_fraction) + float(data.get("test_fraction") or 0)
            if total >= 1:
                raise ConfigError(
                    f"data.val_fraction + data.test_fraction = {total:g} leaves no train patient: keep the sum < 1"
                )
        _check_numbers(data.get("synthetic"), "data.synthetic", {
            "n": (int, 10, None, False, False),
            "size": (int, 8, None, False, False),
            "pneumonia_fraction": (float, 0, 1, True, True),
        })  # fmt: skip
        augment = data.get("augment")
        if augment is not None and augment.get("enabled", True):
            _check_numbers(augment, "data.augment", {
                "prob": (float, 0, 1, False, False),
                "rotate_degrees": (float, 0, 180, False, False),
                "scale": (float, 0, 1, False, True),
                "translate": (float, 0, 1, False, True),
                "noise_std": (float, 0, None, False, False),
            })  # fmt: skip
        if data.get("cache"):
            _check_parent_writable(data.get("cache_dir"), "data.cache_dir")
    _check_numbers(trainer, "trainer", {
        "max_epochs": (int, -1, None, False, False),
        "min_epochs": (int, 0, None, False, False),
        "max_steps": (int, -1, None, False, False),
        "accumulate_grad_batches": (int, 1, None, False, False),
        "check_val_every_n_epoch": (int, 1, None, False, False),
        "log_every_n_steps": (int, 1, None, False, False),
        "gradient_clip_val": (float, 0, None, False, False),
    })  # fmt: skip
    if cfg.get("train") and trainer is not None:
        _check_trains_something(trainer)
    model = cfg.get("model")
    optimizer = model.get("optimizer") if model is not None else None
    if isinstance(optimizer, DictConfig):
        _check_numbers(optimizer, "model.optimizer", {
            "lr": (float, 0, None, True, False),
            "weight_decay": (float, 0, None, False, False),
        })  # fmt: skip
    _check_parent_writable(cfg.get("paths", {}).get("log_dir"), "paths.log_dir")


def _check_trains_something(trainer: DictConfig) -> None:
    """``train=true`` with settings under which Lightning would train no batch is a mistake, not a run."""
    evaluate = "to evaluate a checkpoint without training use train=false ckpt_path=CKPT"
    if trainer.get("max_epochs") == 0:
        raise ConfigError(f"trainer.max_epochs=0 trains nothing: set trainer.max_epochs >= 1, or {evaluate}")
    if trainer.get("max_steps") == 0:
        raise ConfigError(
            f"trainer.max_steps=0 trains nothing: set trainer.max_steps >= 1 (or -1), or {evaluate}"
        )
    if trainer.get("limit_train_batches") is not None:
        limit = checked_number(trainer.limit_train_batches, "trainer.limit_train_batches", float, 0)
        if limit == 0:
            raise ConfigError(
                f"trainer.limit_train_batches=0 trains nothing: set a fraction in (0, 1] or a batch count, or {evaluate}"
            )


def check_network_input(
    net: nn.Module, image_size: int, in_channels: int = 1, key: str = "data.image_size"
) -> None:
    """Run ``net`` once on a blank ``in_channels x image_size x image_size`` image (no gradients, eval
    mode, then its mode restored): a size the network cannot take (MONAI's DenseNet121 halves the side
    five times: it needs 29 px) or a channel mismatch fails here, in a second, instead of after the cache
    build.

    Example:
        >>> from monai.networks.nets import DenseNet121
        >>> check_network_input(DenseNet121(spatial_dims=2, in_channels=1, out_channels=2), 7)
        Traceback (most recent call last):
        ...
        pneumo.errors.ConfigError: data.image_size=7 is too small for the network model.net (monai DenseNet121): it needs at least 29 px
    """
    size = int(image_size)
    if _takes(net, size, in_channels):
        return
    name = f"{type(net).__module__.split('.')[0]} {type(net).__name__}"
    low, high = size, size  # double from the failing size (small inputs are cheap to try) ...
    while not _takes(net, high, in_channels):
        low, high = high, high * 2
        if low >= _LARGEST_TRIED:
            raise ConfigError(
                f"the network model.net ({name}) cannot take {in_channels}-channel images of {size} to "
                f"{low} px: check model.net.in_channels (the data has {in_channels} channel) and model.net"
            )
    while high - low > 1:  # ... then bisect: low fails, high works
        mid = (low + high) // 2
        low, high = (low, mid) if _takes(net, mid, in_channels) else (mid, high)
    raise ConfigError(
        f"{key}={size} is too small for the network model.net ({name}): it needs at least {high} px"
        if size < high
        else f"{key}={size} does not fit the network model.net ({name}): try {high} px or more"
    )


def _takes(net: nn.Module, size: int, in_channels: int) -> bool:
    import torch

    was_training = net.training
    net.eval()
    try:
        with torch.no_grad():
            net(torch.zeros(1, in_channels, size, size))
        return True
    except (RuntimeError, ValueError):
        return False
    finally:
        net.train(was_training)
