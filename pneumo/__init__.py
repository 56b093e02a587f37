"""pneumo: train, evaluate and explain chest X-ray pneumonia classifiers on NIH ChestX-ray14."""

from __future__ import annotations

__version__ = "0.1.0"

import pneumo.io  # noqa: F401 - first: sets gcsfs's environment before anything imports gcsfs
from pneumo.nih.shipped import register_resolver as _register_nih_resolver

# ``${nih:NAME}`` in conf/data/nih.yaml: registered by any import of pneumo, before Hydra resolves a config.
_register_nih_resolver()
