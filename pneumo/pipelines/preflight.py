"""Checks of a ``train.py`` run that need no data, done before the first image is fetched.

A typo such as ``data.loader.batch_size=0`` or ``data.images.size=7`` must not cost the hours of building the image
cache of 112,120 NIH images before it shows. ``train`` calls ``check_train_config`` on the composed config
before anything is instantiated, and ``check_network_input`` on the model before ``fit``: each bad value
stops the run with one ``ConfigError`` line naming the key and the fix.

Example:
    >>> from omegaconf import OmegaConf
    >>> check_train_config(OmegaConf.create({"train": True, "data": {"loader": {"batch_size": 0}}}))
    Traceback (most recent call last):
    ...
    pneumo.errors.ConfigError: data.loader.batch_size=0: must be a whole number >= 1
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig

from pneumo.config import checked_number, choice, to_plain
from pneumo.data.settings import MOVED, group_settings
from pneumo.errors import ConfigError
from pneumo.io.files import check_writable

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


def check_train_config(cfg: DictConfig) -> None:
    """Check every value of a ``train.py`` config that can be checked without data.

    Raises:
        ConfigError: the first bad value (one line: key, value, what is valid).
    """
    data, trainer = cfg.get("data"), cfg.get("trainer")
    if cfg.get("seed") is not None:  # before data: data.split.seed interpolates it, and the user wrote seed=
        checked_number(cfg.seed, "seed", int, 0, SEED_MAX)
    if data is not None:
        _check_data(data)
    if trainer is not None:
        check_trainer(trainer, fits=bool(cfg.get("train")), tests=bool(cfg.get("test")))
    if cfg.get("eval") is not None:  # the test report's settings (bootstrap bound, threshold rule) too
        from pneumo.reporting.report import EvalSettings  # pandas, not torch: imported when checked

        EvalSettings.from_config(to_plain(cfg.get("eval")))
    model = cfg.get("model")
    optimizer = model.get("optimizer") if model is not None else None
    if isinstance(optimizer, DictConfig):
        _check_numbers(optimizer, "model.optimizer", {
            "lr": (float, 0, None, True, False),
            "weight_decay": (float, 0, None, False, False),
        })  # fmt: skip
    check_writable(cfg.get("paths", {}).get("log_dir"), "paths.log_dir")


#: Largest seed: torch, numpy and Lightning take seeds in [0, 2**32 - 1] (Lightning picks a random seed
#: for one outside it, with only a warning: the run would not be reproducible).
SEED_MAX = 2**32 - 1

#: ``trainer.accelerator`` names Lightning takes; ``gpu``/``cuda``/``mps`` are checked against the machine.
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps", "tpu")

#: ``trainer.precision`` values Lightning 2 takes.
PRECISIONS = ("32-true", "16-mixed", "bf16-mixed", "16-true", "bf16-true", "64-true", "transformer-engine",
              "transformer-engine-float16", "64", "32", "16", "bf16", 64, 32, 16)  # fmt: skip

_DEVICES_HELP = "'auto', a number of devices >= 1 (-1 = all), or a list of device indices such as [0,1]"


def check_trainer(trainer: Any, fits: bool = True, tests: bool = True) -> None:
    """The ``trainer.*`` values Lightning would refuse (or misread) only once the trainer is built, after
    the model and the data: accelerator (and that the machine has it), devices, precision, batch limits.
    ``fits``/``tests``: the run trains / tests (validation then picks the checkpoint and the threshold).

    Example:
        >>> check_trainer({"accelerator": "cpu", "devices": "abc"})
        Traceback (most recent call last):
        ...
        pneumo.errors.ConfigError: trainer.devices='abc': choose 'auto', a number of devices >= 1 (-1 = all), or a list of device indices such as [0,1]
    """
    _check_numbers(trainer, "trainer", {
        "max_epochs": (int, -1, None, False, False),
        "min_epochs": (int, 0, None, False, False),
        "max_steps": (int, -1, None, False, False),
        "num_nodes": (int, 1, None, False, False),
        "accumulate_grad_batches": (int, 1, None, False, False),
        "check_val_every_n_epoch": (int, 1, None, False, False),
        "log_every_n_steps": (int, 1, None, False, False),
        "gradient_clip_val": (float, 0, None, False, False),
    })  # fmt: skip
    for key in (
        "deterministic",
        "benchmark",
        "sync_batchnorm",
        "enable_progress_bar",
        "enable_checkpointing",
    ):
        if trainer.get(key) is not None:
            choice(
                trainer.get(key),
                f"trainer.{key}",
                (True, False, "warn") if key == "deterministic" else (True, False),
            )
    if trainer.get("precision") is not None:
        choice(trainer.get("precision"), "trainer.precision", PRECISIONS)
    _check_devices(trainer.get("devices"))
    for split in ("train", "val", "test", "predict"):
        _check_limit(trainer, f"limit_{split}_batches")
    if fits:
        _check_trains_something(trainer)
    if fits or tests:
        _check_validates(trainer, fits)
    accelerator = trainer.get("accelerator")
    if isinstance(accelerator, str):
        _check_accelerator(choice(accelerator, "trainer.accelerator", ACCELERATORS))


def _check_devices(devices: Any) -> None:
    """``trainer.devices``: ``auto``, a count (``-1`` = all), or indices (a list, or ``"0,1"``)."""
    if devices is None or devices == "auto":
        return
    items = to_plain(devices) if not isinstance(devices, str) else devices.replace(" ", "").split(",")
    if isinstance(items, bool) or not isinstance(items, int | list):
        raise ConfigError(f"trainer.devices={devices!r}: choose {_DEVICES_HELP}")
    values = items if isinstance(items, list) else [items]
    try:
        numbers = [checked_number(v, "trainer.devices", int, -1) for v in values]
    except ConfigError:
        raise ConfigError(f"trainer.devices={to_plain(devices)!r}: choose {_DEVICES_HELP}") from None
    if not numbers or (len(numbers) == 1 and numbers[0] == 0 and not isinstance(to_plain(devices), list)):
        raise ConfigError(f"trainer.devices={to_plain(devices)!r}: choose {_DEVICES_HELP}")


def _check_limit(trainer: Any, key: str) -> None:
    """``limit_*_batches``: a fraction in [0, 1] or a whole number of batches (Lightning's rule)."""
    value = trainer.get(key)
    if value is None:
        return
    number = checked_number(value, f"trainer.{key}", float, 0)
    if number > 1 and not float(number).is_integer():
        raise ConfigError(
            f"trainer.{key}={value!r}: must be a fraction in [0, 1] or a whole number of batches"
        )


def _check_validates(trainer: Any, fits: bool) -> None:
    """Validation picks the tested checkpoint (``monitor.metric``), the operating point and the temperature:
    a run that would never validate is refused before anything is built (it crashed after a whole epoch)."""
    why = "validation picks the checkpoint, the threshold (eval.threshold) and the temperature"
    if trainer.get("limit_val_batches") is not None and float(trainer.get("limit_val_batches")) == 0:
        raise ConfigError(
            f"trainer.limit_val_batches=0 turns validation off, but {why}: give it a fraction in (0, 1] or a "
            "number of batches >= 1 (a fixed threshold needs no validation at evaluation: "
            "python -m pneumo.evaluation ... eval.threshold=0.5)"
        )
    every, epochs = trainer.get("check_val_every_n_epoch"), trainer.get("max_epochs")
    if fits and every is not None and epochs is not None and int(epochs) > 0 and int(every) > int(epochs):
        raise ConfigError(
            f"trainer.check_val_every_n_epoch={every} > trainer.max_epochs={epochs}: the run would never "
            f"validate, but {why}; set trainer.check_val_every_n_epoch <= {epochs}"
        )


def _check_accelerator(accelerator: str) -> None:
    """A GPU accelerator on a machine without one fails in Lightning inside Hydra's instantiate: say so here."""
    if accelerator not in ("gpu", "cuda", "mps"):
        return
    import torch  # only for a GPU accelerator: a CPU config stays checkable without torch

    if accelerator == "mps":
        if not torch.backends.mps.is_available():
            raise ConfigError("trainer.accelerator=mps: this machine has no Apple GPU (MPS); use trainer=cpu")
        return
    if not torch.cuda.is_available():
        build = "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
        raise ConfigError(
            f"trainer.accelerator={accelerator}: no CUDA GPU is visible here (torch {torch.__version__}, "
            f"{build}); run with trainer=cpu or trainer.accelerator=auto, or check nvidia-smi and CUDA_VISIBLE_DEVICES"
        )


def check_moved_keys(data: Any) -> None:
    """A data config that still uses a key of the flat layout (before the settings groups of issue 21, e.g.
    from an old experiment file or ``+data.batch_size=8``) is a ``ConfigError`` saying where it went.

    Example:
        >>> check_moved_keys({"batch_size": 8})
        Traceback (most recent call last):
        ...
        pneumo.errors.ConfigError: data.batch_size moved to data.loader.batch_size: write data.loader.batch_size=8
    """
    for key, value in (data or {}).items():
        if key in MOVED and not (key == "cache" and isinstance(value, Mapping)):
            raise ConfigError(
                f"data.{key} moved to data.{MOVED[key]}: write data.{MOVED[key]}={_override_value(value)}"
            )


def check_overrides(args: Sequence[str]) -> None:
    """Command-line overrides of a key of the flat data layout (``data.batch_size=8``) are a
    ``ConfigError`` saying where the key went, before Hydra refuses them with a longer message.

    Example:
        >>> check_overrides(["data.loader.batch_size=8", "trainer.max_epochs=1"])
        >>> check_overrides(["data.image_size=64,96"])
        Traceback (most recent call last):
        ...
        pneumo.errors.ConfigError: data.image_size moved to data.images.size: write data.images.size=64,96
    """
    for arg in args:
        if arg.startswith("-") or ("=" not in arg and not arg.startswith("~")):
            continue
        key, _, value = arg.lstrip("+~").partition("=")
        parts = key.split(".")
        if len(parts) == 2 and parts[0] == "data" and parts[1] in MOVED and not value.startswith("{"):
            new = f"data.{MOVED[parts[1]]}"
            raise ConfigError(f"{key} moved to {new}: write {new}={value or '...'}")


def _override_value(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    return "null" if value is None else str(value)


def _check_data(data: DictConfig) -> None:
    """The data settings groups built and checked (``pneumo.data.settings``), the synthetic set's numbers,
    and a writable cache folder."""
    check_moved_keys(data)
    groups = group_settings(data)
    _check_numbers(data.get("synthetic"), "data.synthetic", {
        "n": (int, 10, None, False, False),
        "size": (int, 8, None, False, False),
        "pneumonia_fraction": (float, 0, 1, True, True),
    })  # fmt: skip
    if groups["cache"].enabled:
        check_writable(
            groups["cache"].dir,
            "data.cache.dir",
            "choose a folder you may write to, or data.cache.enabled=false",
        )


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
        limit = checked_number(trainer.get("limit_train_batches"), "trainer.limit_train_batches", float, 0)
        if limit == 0:
            raise ConfigError(
                f"trainer.limit_train_batches=0 trains nothing: set a fraction in (0, 1] or a batch count, or {evaluate}"
            )


def check_network_input(
    net: nn.Module, image_size: int, in_channels: int = 1, key: str = "data.images.size"
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
        pneumo.errors.ConfigError: data.images.size=7 is too small for the network model.net (monai DenseNet121): it needs at least 29 px
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
