"""Train a chest X-ray pneumonia classifier: ``python train.py [overrides]`` (see README and conf/)."""

from __future__ import annotations

import logging

import hydra
from omegaconf import DictConfig

from pneumo.training import metric_value, train

log = logging.getLogger("train")


@hydra.main(version_base="1.3", config_path="conf", config_name="train.yaml")
def main(cfg: DictConfig) -> float | None:
    try:
        metrics, _ = train(cfg)
    except Exception:
        log.exception("training failed")
        raise
    value = metric_value(metrics, cfg.get("optimized_metric"))
    for name in ("val/auroc", "test/auroc", "test/auprc"):
        if name in metrics:
            log.info("%s = %.4f", name, float(metrics[name]))
    return value


if __name__ == "__main__":
    main()
