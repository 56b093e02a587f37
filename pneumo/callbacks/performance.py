"""``PerformanceTuning``: the GPU speed settings of a model, applied as a callback (model code untouched).

- ``channels_last``: NHWC weights, the layout tensor cores and cuDNN's fastest convolutions want. The
  network input has one channel, for which NCHW and NHWC are the same memory, so batches need no change.
- ``compile``: ``torch.compile`` of the network in place (``nn.Module.compile``): the state dict keeps its
  names, so checkpoints load with or without it. The first steps are slow while it compiles.
- ``matmul_precision``: ``torch.set_float32_matmul_precision`` ("high" = TF32 on Ampere and later) for
  what still runs in float32 under ``bf16-mixed``.

Used by ``experiment=nih_densenet121_224`` (``conf/callbacks/performance.yaml``); with any other config:
``python train.py trainer=gpu 'callbacks=[default,performance]'``.

Example:
    >>> import lightning as L
    >>> trainer = L.Trainer(callbacks=[PerformanceTuning(channels_last=True, compile=False)])  # doctest: +SKIP
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import lightning as L
import torch

from pneumo.config import choice

log = logging.getLogger(__name__)


def tune_module(
    module: torch.nn.Module,
    channels_last: bool = True,
    compile: bool = False,
    compile_options: Mapping[str, Any] | None = None,
) -> torch.nn.Module:
    """Apply the layout and compile settings to ``module`` (and return it); shared with benchmarks/.

    Example:
        >>> net = tune_module(torch.nn.Conv2d(1, 4, 3), channels_last=True)
        >>> net.weight.is_contiguous(memory_format=torch.channels_last)
        True
    """
    if channels_last:
        module.to(memory_format=torch.channels_last)
    if compile:
        target = getattr(module, "net", module)  # the network, so the LightningModule's hooks stay eager
        target.compile(**dict(compile_options or {}))
    return module


class PerformanceTuning(L.Callback):
    """Speed settings applied when the trainer sets the model up (see the module docstring).

    Args:
        channels_last: convert the model's 4-D weights to NHWC.
        compile: ``torch.compile`` the model's ``net`` in place for fitting.
        compile_options: keyword arguments of ``torch.compile`` (e.g. ``{mode: max-autotune}``).
        matmul_precision: ``"highest"``, ``"high"`` or ``"medium"``; ``None`` leaves it.
    """

    def __init__(
        self,
        channels_last: bool = True,
        compile: bool = False,
        compile_options: Mapping[str, Any] | None = None,
        matmul_precision: str | None = "high",
    ) -> None:
        choice(
            matmul_precision, "callbacks.performance.matmul_precision", ("highest", "high", "medium", None)
        )
        self.channels_last, self.compile = channels_last, compile
        self.compile_options = dict(compile_options or {})
        self.matmul_precision = matmul_precision
        self._compiled = False

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.matmul_precision:
            torch.set_float32_matmul_precision(self.matmul_precision)
        compile_now = self.compile and stage == "fit" and not self._compiled
        tune_module(pl_module, self.channels_last, compile_now, self.compile_options)
        self._compiled = self._compiled or compile_now
        log.info(
            "performance: channels_last=%s compile=%s matmul_precision=%s",
            self.channels_last,
            self._compiled,
            self.matmul_precision,
        )
