"""pneumo: train, evaluate and explain chest X-ray pneumonia classifiers on NIH ChestX-ray14."""

from __future__ import annotations

__version__ = "0.1.0"
