"""pneumo: train, evaluate and explain chest X-ray pneumonia classifiers on NIH ChestX-ray14.

The Python API (``pneumo.api``): ``load_run``, ``predict``, ``explain``, ``evaluate_predictions``. They are
imported on first use, so ``import pneumo`` (and ``pneumo.errors``, the configs) loads no torch.

Example:
    >>> from pneumo import load_run, predict  # doctest: +SKIP
    >>> predict(load_run("last.ckpt"), ["chest.png"])  # doctest: +SKIP
"""

from __future__ import annotations

__version__ = "0.2.0"

import pneumo.io  # noqa: F401 - first: sets gcsfs's environment before anything imports gcsfs
from pneumo.nih.shipped import register_resolver as _register_nih_resolver

# ``${nih:NAME}`` in conf/data/nih.yaml: registered by any import of pneumo, before Hydra resolves a config.
_register_nih_resolver()

#: The public API, in ``pneumo.api``: imported by the first ``pneumo.<name>`` (PEP 562).
__all__ = ["evaluate_predictions", "explain", "load_run", "predict"]


def __getattr__(name: str) -> object:
    if name in __all__:
        import pneumo.api

        return getattr(pneumo.api, name)
    raise AttributeError(f"module 'pneumo' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
