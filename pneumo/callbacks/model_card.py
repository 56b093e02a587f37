"""``ModelCardCallback``: a run's provenance (``pneumo.reporting.model_card.card_fields``) into every checkpoint."""

from __future__ import annotations

from typing import Any

import lightning as L

from pneumo.reporting.model_card import card_fields


class ModelCardCallback(L.Callback):
    """Collects ``card_fields`` once the data module is set up (before the first checkpoint) into
    ``pl_module.model_card``, which the classifier saves in every checkpoint.

    Args:
        cfg: the run's composed config (recorded, secrets redacted).
    """

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit" and getattr(pl_module, "model_card", None) is None:
            pl_module.model_card = card_fields(self.cfg, trainer.datamodule, pl_module)
