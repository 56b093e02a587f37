"""Turn Hydra/OmegaConf values into plain Python containers (safe to save in checkpoints)."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf


def to_plain(value: Any) -> Any:
    """``DictConfig``/``ListConfig`` -> ``dict``/``list`` (resolved); anything else unchanged."""
    if isinstance(value, DictConfig | ListConfig):
        return OmegaConf.to_container(value, resolve=True)
    return value
